"""Convert checkpoints without a model: the rules' target names become a new file's tensors, streamed batch by batch.

Without a model there is no target to plan against, so ``open_target`` makes one from the rules themselves: every
name a rule produces from a source tensor becomes a target variable whose shape and dtype are what the rule's
join and operations make of that tensor. The ordinary planner then checks the plan against it (dead rules,
unused sources, double fills, bad operations and groups), so a conversion is planned and reported exactly like a
transfer into a model. With a model's TargetMap instead, the model's shapes are checked and unfilled variables
reported, as for ``mapper apply``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mapper.errors import ApplyError, OperationError, PlanError, SourceError, TargetError
from mapper.ops import (
    Cast,
    Concat,
    Operation,
    Rearrange,
    Slice,
    SplitPart,
    Stack,
    Transpose,
    infer_all,
    resolve_reshape,
    split_parts,
)
from mapper.outputs.writers import OutputFormat, check_output, open_writer, output_files, output_format
from mapper.plan import Plan, Problem, ProblemKind, Severity
from mapper.plan.planner import RuleMatcher, build_plan
from mapper.rules import CastSpec, RearrangeSpec, ReshapeSpec, RuleSet, SliceSpec, TemplateError, TransposeSpec
from mapper.run.executor import DEFAULT_BATCH_BYTES, Sources, ValueStream
from mapper.sources.base import Source
from mapper.specs import CHECKPOINT_NAMESPACE, SourceSet, TargetMap, TensorSpec, VariableMap

OPEN_TARGET = "the names the rules produce"
_SHOWN = 5


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion wrote.

    ``written`` counts tensors in the output, ``bytes_read`` source bytes (each source tensor once),
    ``bytes_written`` the tensors' bytes in the output.

    Example:
        >>> from mapper.plan import Plan
        >>> plan = Plan(rule_files=("r.toml",), source="s", target="t", namespace="path")
        >>> result = ConvertResult(plan, "out.safetensors", "safetensors", 2, 48, 48, 1, 0.01)
        >>> result.written, result.format
        (2, 'safetensors')
    """

    plan: Plan
    output: str
    format: OutputFormat
    written: int
    bytes_read: int
    bytes_written: int
    batches: int
    seconds: float


def open_target(rules: RuleSet, source: Mapping[str, TensorSpec] | SourceSet) -> tuple[TargetMap, tuple[Problem, ...]]:
    """The target of a conversion without a model: one variable per name the rules produce from ``source``.

    Each variable's shape and dtype are what the rule's split part, join (concat/stack) and operations make of
    its source tensors. The first rule to produce a name decides its spec; whatever else is wrong (two rules
    producing one name, a group with a member missing, an operation that does not fit) is left to
    ``build_plan`` to report. The only problems returned here are the ones a model would have solved:
    ``reshape = "target"`` takes its shape from the target, which an open target does not have.

    Args:
        rules: the rule file.
        source: the source's specs, or a SourceSet of named sources.

    Returns:
        The TargetMap (names in the rule file's namespace, which is also each variable's canonical name), and
        the problems to add to the plan.

    Example:
        >>> from mapper.rules import parse_rules
        >>> rules = parse_rules('''
        ... format = 1
        ... [[rules]]
        ... match = "h.0.c_attn.weight"
        ... split = { axis = -1, parts = 3 }
        ... targets = ["q/kernel", "k/kernel", "v/kernel"]
        ... ops = [{ transpose = [1, 0] }]
        ... ''')
        >>> target, problems = open_target(rules, VariableMap([TensorSpec("h.0.c_attn.weight", (4, 12), "float32")]))
        >>> [(spec.name, spec.shape) for spec in target.variables.values()], problems
        ([('q/kernel', (4, 4)), ('k/kernel', (4, 4)), ('v/kernel', (4, 4))], ())
    """
    found: dict[str, TensorSpec] = {}
    needs_target: dict[int, list[str]] = {}
    pending: dict[tuple[int, str | None, str], list[tuple[str, TensorSpec]]] = {}
    maps: list[tuple[str | None, Mapping[str, TensorSpec]]] = (
        list(source.items()) if isinstance(source, SourceSet) else [(None, source)]
    )
    for source_id, specs in maps:
        only = {index for index, rule in enumerate(rules.rules) if rule.source in (None, source_id)}
        matcher = RuleMatcher(rules.rules, only=only)
        for name, spec in specs.items():
            matched_rule = matcher.first(name)
            if matched_rule is None:
                continue
            index, matched = matched_rule
            rule = rules.rules[index]
            if rule.skip is not None:
                continue
            parts: list[SplitPart | None] = [None]
            if rule.split is not None:
                try:
                    parts = list(_split_parts(rule.split.axis, rule.split.parts, rule.split.sizes, spec.shape))
                except OperationError:
                    continue  # build_plan reports it
            for number, part in enumerate(parts):
                try:
                    key = rule.render(matched, number)
                except TemplateError:
                    break  # build_plan reports it
                if rule.combine is not None:
                    pending.setdefault((index, source_id, key), []).append((matched.group(rule.combine.by) or "", spec))
                    continue
                if key not in found:
                    found[key] = _result(
                        rules, index, key, (spec,), prefix=(part,) if part else (), needs_target=needs_target
                    )
    for (index, _, key), members in pending.items():
        combine_spec = rules.rules[index].combine
        if combine_spec is None or key in found:  # pragma: no cover - only combine rules are pending
            continue
        by_member: dict[str, list[TensorSpec]] = {}
        for member, spec in members:
            by_member.setdefault(member, []).append(spec)
        expected = combine_spec.expected
        if sorted(by_member) != sorted(expected) or any(len(group) > 1 for group in by_member.values()):
            continue  # build_plan reports the group
        ordered = tuple(by_member[member][0] for member in expected)
        combine = Concat(combine_spec.axis) if rules.rules[index].concat is not None else Stack(combine_spec.axis)
        found[key] = _result(rules, index, key, ordered, combine=combine, needs_target=needs_target)
    keys = {CHECKPOINT_NAMESPACE: {name: name for name in found}} if rules.namespace == CHECKPOINT_NAMESPACE else {}
    target = TargetMap(VariableMap(found.values(), description=OPEN_TARGET), keys)
    problems = []
    for index, names in needs_target.items():
        distinct = list(dict.fromkeys(names))  # a split's parts all name their one source
        problems.append(
            Problem(
                ProblemKind.BAD_OPERATION,
                Severity.ERROR,
                f'{rules.rule_ref(index)} uses reshape = "target", which takes the shape from a target model, and '
                f"this conversion has none (for {_quoted(distinct)}); write the shape, e.g. reshape = [768, 12, -1], "
                "or convert with a model (--target MODULE:FACTORY)",
                rules.rule_ref(index),
                tuple(distinct),
            )
        )
    return target, tuple(problems)


def plan_conversion(
    rules: RuleSet,
    source: Sources | Mapping[str, TensorSpec] | SourceSet,
    target: TargetMap | None = None,
    *,
    source_description: str | None = None,
    target_description: str | None = None,
) -> Plan:
    """Plan a conversion: against a model's TargetMap if given, else against the names the rules produce.

    Without a target, ``[[keep]]`` rules are left out (there is no model whose variables they would keep) and so
    is the unfilled-target check (every target is a name a rule produced); everything else is checked as for a
    model. Pure: reads no tensor.

    Args:
        rules: the rule file.
        source: a Source, ``{name: Source}`` for named sources, specs, or a SourceSet.
        target: a model's TargetMap (as ``mapper.api.as_target(model).map`` gives it), or None for an open target.
        source_description: how reports name the source.
        target_description: how reports name the target (for an open target, the output is a good choice).

    Returns:
        The Plan; an assignment's ``target_key`` is the name its tensor gets in the output.

    Example:
        >>> from mapper.rules import parse_rules
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "bert/(?P<rest>.*)"\\ntarget = "{rest}"\\n'
        ...                     'ops = [{ transpose = [1, 0] }]\\n[[keep]]\\nmatch = "head/.*"\\nreason = "new"\\n')
        >>> plan = plan_conversion(rules, VariableMap([TensorSpec("bert/w", (2, 3), "float32")]))
        >>> plan.ok, [(a.target_key, a.target_shape) for a in plan.assignments]
        (True, [('w', (3, 2))])
    """
    specs, described = _specs(source)
    source_description = source_description or described
    if target is not None:
        return build_plan(
            rules, specs, target, source_description=source_description, target_description=target_description
        )
    without_keeps = rules.model_copy(update={"keep": ()})
    open_map, problems = open_target(without_keeps, specs)
    plan = build_plan(
        without_keeps,
        specs,
        open_map,
        source_description=source_description,
        target_description=target_description or OPEN_TARGET,
    )
    kept = tuple(problem for problem in plan.problems if problem.kind is not ProblemKind.UNFILLED_TARGET)
    return dataclasses.replace(plan, unfilled_targets=(), problems=problems + kept)


def write_plan(
    plan: Plan,
    source: Sources,
    output: str | os.PathLike[str],
    *,
    format: str | None = None,
    overwrite: bool = False,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> ConvertResult:
    """Carry out a plan into a new file: read a batch, transform it, write it, release it; all or nothing.

    Every tensor gets the name its assignment's ``target_key`` gives it. Everything checkable is checked before
    any file is created: the output (its directory exists; it is not there yet unless ``overwrite``; it is not
    one of the source's files), the plan (no errors, consistent), the sources (every tensor there, as planned)
    and the output format (it can hold the names and dtypes). The output is written under a temporary name
    in its directory and moved into place only when complete; if anything fails, the temporary files are
    removed and an existing output is left as it was. The source is only read.

    Args:
        plan: a plan without errors, from ``plan_conversion`` (or ``build_plan`` for a model's target).
        source: the Source the plan was made from, or ``{name: Source}`` for named sources.
        output: the output file, or a TF checkpoint prefix.
        format: ``"tf-checkpoint"``, ``"safetensors"`` or ``"keras-h5"``; None to go by the output's suffix.
        overwrite: replace an existing output.
        batch_bytes: upper bound on the source bytes read at once; memory stays near one batch (twice, for a TF
            checkpoint, which saves a batch at a time) plus the largest tensor.
        progress: called as ``progress(done, total)`` with counts of tensors after each batch.

    Returns:
        A ConvertResult.

    Raises:
        TargetError: the output is refused, or its format cannot hold a name or dtype.
        PlanError: the plan has errors, writes nothing, or is inconsistent.
        SourceError: a planned source tensor is missing or has another shape or dtype.
        ApplyError: reading, transforming or writing failed part-way (the cause is chained); nothing was left
            at the output.

    Example:
        >>> import tempfile, numpy as np
        >>> from mapper.rules import parse_rules
        >>> from mapper.sources.memory import MemorySource
        >>> from mapper.sources.safetensors import SafetensorsSource
        >>> source = MemorySource({"old/w": np.arange(6, dtype="float32").reshape(2, 3)})
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "old/w"\\ntarget = "new/w"\\nops = [{ transpose = [1, 0] }]')
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     result = write_plan(plan_conversion(rules, source), source, f"{tmp}/out.safetensors")
        ...     print(result.written, SafetensorsSource(f"{tmp}/out.safetensors").read(["new/w"])["new/w"].tolist())
        1 [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    """
    started = time.perf_counter()
    path = Path(output)
    chosen = output_format(path, format)
    check_output(path, chosen, overwrite=overwrite)
    stream = ValueStream(plan, source, batch_bytes=batch_bytes)
    if not plan.assignments:
        raise PlanError(
            f"the plan from {plan.source} writes no tensor, so there is nothing to convert: every source tensor "
            "was skipped or matched no rule; check the rule file (see the plan report)",
            problems=(),
            plan=plan,
        )
    _check_not_a_source(path, chosen, stream.sources.values())
    specs = [TensorSpec(a.target_key, a.target_shape, a.target_dtype) for a in plan.assignments]
    existed = bool(output_files(path, chosen))
    writer = open_writer(path, specs, format=chosen, overwrite=overwrite)
    total = len(plan.assignments)
    done = bytes_read = 0
    phase: str | None = None  # what is being done outside the stream; None while the stream reads or transforms
    try:
        for number, (batch, items) in enumerate(stream, 1):
            phase = f"writing batch {number} of {len(stream.batches)} to {path}"
            for assignment, value in items:
                writer.write(assignment.target_key, value)
            del items
            writer.end_batch()
            done += len(batch.assignments)
            bytes_read += batch.nbytes
            if progress is not None:
                phase = f"reporting progress after batch {number} of {len(stream.batches)}"
                progress(done, total)
            phase = None
        phase = f"finishing {path}"
        writer.commit()
    except Exception as error:
        writer.abort()
        left = f"{path} keeps its previous contents" if existed else f"{path} was not created"
        raise ApplyError(
            f"converting {plan.source} to {path} failed while {phase or stream.step}: {type(error).__name__}: "
            f"{_first_line(error)}\nnothing was written: {left}, and the temporary files were removed; fix the cause "
            "and convert again"
        ) from error
    except BaseException:  # KeyboardInterrupt: clean up, then let it stop the program
        writer.abort()
        raise
    return ConvertResult(
        plan,
        str(path),
        chosen,
        total,
        bytes_read,
        writer.bytes_written,
        len(stream.batches),
        time.perf_counter() - started,
    )


def convert(
    rules: RuleSet,
    source: Sources,
    output: str | os.PathLike[str],
    *,
    target: TargetMap | None = None,
    format: str | None = None,
    overwrite: bool = False,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> ConvertResult:
    """Plan and write a conversion in one call; raises PlanError, writing nothing, when the plan has errors.

    See ``plan_conversion`` and ``write_plan``; ``mapper.api.convert`` accepts paths and models too.

    Example:
        >>> import tempfile, numpy as np
        >>> from mapper.rules import parse_rules
        >>> from mapper.sources.memory import MemorySource
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "(?P<n>.*)"\\ntarget = "copy/{n}"')
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     result = convert(rules, MemorySource({"w": np.ones(3, "float32")}), f"{tmp}/out.weights.h5")
        >>> result.format, [a.target_key for a in result.plan.assignments]
        ('keras-h5', ['copy/w'])
    """
    path = Path(output)
    chosen = output_format(path, format)
    check_output(path, chosen, overwrite=overwrite)
    plan = plan_conversion(rules, source, target, target_description=f"{path} ({chosen})")
    if not plan.ok:
        from mapper.api import plan_error

        raise plan_error(plan)
    return write_plan(
        plan, source, path, format=chosen, overwrite=overwrite, batch_bytes=batch_bytes, progress=progress
    )


# --- open target: the spec each produced name gets --------------------------------------------------------------


def _split_parts(
    axis: int, parts: int | None, sizes: tuple[int, ...] | None, shape: tuple[int, ...]
) -> list[SplitPart]:
    if not -len(shape) <= axis < len(shape):
        raise OperationError(f"split along axis {axis} of a rank-{len(shape)} tensor", operation="split")
    return split_parts(shape[axis], axis, parts=parts, sizes=sizes)


def _result(
    rules: RuleSet,
    index: int,
    key: str,
    members: tuple[TensorSpec, ...],
    *,
    prefix: tuple[Operation, ...] = (),
    combine: Concat | Stack | None = None,
    needs_target: dict[int, list[str]],
) -> TensorSpec:
    """The spec of target ``key``: what the rule's join and operations make of ``members``.

    When they do not fit, the first member's spec stands in: ``build_plan`` then reports the operation with
    its own message, as it would for a model.
    """
    first = members[0]
    try:
        shape, dtype = first.shape, first.dtype
        if combine is not None:
            shape, dtype = combine.infer([member.shape for member in members], dtype)
        shape, dtype = infer_all(prefix, shape, dtype)
        for spec in rules.rules[index].ops:
            operation: Operation
            if isinstance(spec, ReshapeSpec):
                if spec.reshape == "target":
                    needs_target.setdefault(index, []).extend(member.name for member in members)
                    return TensorSpec(key, shape, dtype)
                operation = resolve_reshape(spec.reshape, shape)
            elif isinstance(spec, CastSpec):
                operation = Cast(spec.cast)
            elif isinstance(spec, SliceSpec):
                operation = Slice.parse(spec.slice)
            elif isinstance(spec, RearrangeSpec):
                operation = Rearrange(spec.rearrange, spec.sizes)
            elif isinstance(spec, TransposeSpec):
                operation = Transpose(spec.transpose)
            else:  # pragma: no cover - a new operation kind: build_plan will say what is wrong
                return TensorSpec(key, first.shape, first.dtype)
            shape, dtype = operation.infer(shape, dtype)
    except OperationError:
        return TensorSpec(key, first.shape, first.dtype)
    return TensorSpec(key, shape, dtype)


def _specs(source: Sources | Mapping[str, TensorSpec] | SourceSet) -> tuple[Mapping[str, TensorSpec] | SourceSet, str]:
    """The specs to plan with and how to describe them."""
    if isinstance(source, SourceSet):
        return source, source.description
    if isinstance(source, VariableMap):
        return source, source.description
    if not isinstance(source, Mapping):
        return source.specs(), source.description
    specs: dict[str, TensorSpec] = {}
    named: dict[str, VariableMap] = {}
    for name, value in source.items():
        if isinstance(value, TensorSpec):
            specs[name] = value
        elif isinstance(value, VariableMap):
            named[name] = value
        else:
            named[name] = VariableMap(value.specs().values(), description=value.description)
    if not named:
        described = str(getattr(source, "description", "") or "source")
        return VariableMap(specs.values(), description=described), described
    if specs:
        raise SourceError(
            f"the sources mix tensor specs ({_quoted(list(specs))}) with named sources ({_quoted(list(named))}); "
            "give either {name: TensorSpec} for one source or {source name: Source} for several",
            path="source",
        )
    sources = SourceSet(named)
    return sources, sources.description


def _check_not_a_source(path: Path, format: OutputFormat, sources: Iterable[Source]) -> None:
    """TargetError if writing ``path`` would replace a file a source reads."""
    written = {file.resolve() for file in _output_paths(path, format)}
    for source in sources:
        for file in _source_files(source):
            if file.resolve() in written:
                raise TargetError(
                    f"cannot write {path}: it is {file}, which the source {source.description} reads; a conversion "
                    "never touches its source, so write the output somewhere else"
                )


def _output_paths(path: Path, format: OutputFormat) -> list[Path]:
    if format != "tf-checkpoint":
        return [path]
    return [path.with_name(f"{path.name}.index"), *path.parent.glob(f"{path.name}.data-*")]


def _source_files(source: Source) -> list[Path]:
    """The files a source reads, as far as its attributes tell (``prefix``, ``path``, ``files``, ``index``)."""
    files: list[Path] = []
    prefix = getattr(source, "prefix", None)
    if isinstance(prefix, str):
        files.append(Path(f"{prefix}.index"))
        files.extend(Path(prefix).parent.glob(f"{Path(prefix).name}.data-*"))
    for attribute in ("path", "index"):
        value = getattr(source, attribute, None)
        if isinstance(value, (str, os.PathLike)):
            files.append(Path(value))
    listed = getattr(source, "files", None)
    if isinstance(listed, (list, tuple)):
        files.extend(Path(file) for file in listed if isinstance(file, (str, os.PathLike)))
    return files


def _quoted(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


__all__ = ["OPEN_TARGET", "ConvertResult", "convert", "open_target", "plan_conversion", "write_plan"]
