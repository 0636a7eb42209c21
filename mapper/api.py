"""The Python API: make_plan(), apply(), transfer() which does both, convert() without a model, invert() and export()."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from mapper.errors import PlanError
from mapper.plan import Plan
from mapper.plan.planner import build_plan
from mapper.rules import RuleSet, load_rules
from mapper.sources import SourceLike, SourcesLike, source_specs
from mapper.sources.base import Source
from mapper.specs import SourceSet, TargetMap, TensorSpec
from mapper.targets.base import VariableTarget

if TYPE_CHECKING:
    from mapper.plan.inverse import Inverse
    from mapper.run.convert import ConvertResult
    from mapper.run.executor import ApplyResult
    from mapper.run.export import ExportResult

RulesLike = RuleSet | str | os.PathLike[str]
Method = Literal["assign", "init_from_checkpoint"]


def as_rules(rules: RulesLike) -> RuleSet:
    """A RuleSet as given, or loaded from a path.

    Example:
        >>> from mapper.rules import parse_rules
        >>> as_rules(parse_rules("format = 1")).rules
        ()
    """
    return rules if isinstance(rules, RuleSet) else load_rules(rules)


def as_source(source: SourceLike, *, format: str | None = None) -> Source:
    """A Source as given, or opened from a path (format detected from the files unless ``format`` is given).

    Example:
        >>> from mapper.sources.memory import MemorySource
        >>> import numpy as np
        >>> as_source(MemorySource({"w": np.zeros(1)})).description
        'memory'
    """
    if isinstance(source, (str, os.PathLike)):
        from mapper.sources import open_source

        return open_source(source, format=format)
    return source


def as_sources(source: SourcesLike, *, format: str | Mapping[str, str] | None = None) -> Source | dict[str, Source]:
    """One Source, or ``{name: Source}`` for named sources, each opened from its path if given one.

    Args:
        source: a Source or path, or ``{name: Source or path}``.
        format: the format of every source, or ``{name: format}`` per named source; None to detect.

    Example:
        >>> from mapper.sources.memory import MemorySource
        >>> import numpy as np
        >>> opened = as_sources({"head": MemorySource({"w": np.zeros(1)}, description="head.npz")})
        >>> {name: value.description for name, value in opened.items()}
        {'head': 'head.npz'}
    """
    if isinstance(source, Mapping):
        return {
            name: as_source(value, format=format.get(name) if isinstance(format, Mapping) else format)
            for name, value in source.items()
        }
    return as_source(source, format=None if isinstance(format, Mapping) else format)


def as_target(target: object, *, checkpoint_root: str = "model") -> VariableTarget:
    """A VariableTarget as given, or built from a Keras model, ``tf.Module``, or dict/list of variables.

    Example:
        >>> from mapper.specs import VariableMap
        >>> as_target(VariableTarget("t", TargetMap(VariableMap([])), {})).description
        't'
    """
    if isinstance(target, VariableTarget):
        return target
    from mapper.targets.variables import target_from

    return target_from(target, checkpoint_root=checkpoint_root)


def make_plan(
    rules: RulesLike,
    source: SourcesLike | Mapping[str, TensorSpec] | SourceSet,
    target: object,
    *,
    lints: bool = True,
) -> Plan:
    """Plan how ``rules`` move ``source`` into ``target``, without reading a tensor or changing anything.

    Args:
        rules: a RuleSet or the path of a rule file.
        source: a Source, a checkpoint path, or a plain ``{name: TensorSpec}`` map; for rule files that read
            several sources (``source = "name"``), ``{name: Source or path}`` or a SourceSet.
        target: a VariableTarget, a TargetMap, a Keras model, a ``tf.Module``, or a dict/list of variables.
        lints: add the lint findings (``mapper.authoring.lint``: shadowed and overlapping rules, odd templates) to the
            plan's problems, as warnings.

    Returns:
        The Plan; check ``plan.ok`` and render it with ``mapper.report``.

    Example:
        >>> from mapper.rules import parse_rules
        >>> from mapper.specs import VariableMap
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "a"\\ntarget = "b"\\n')
        >>> plan = make_plan(rules, VariableMap([TensorSpec("a", (2,), "float32")]),
        ...                  TargetMap(VariableMap([TensorSpec("b", (2,), "float32")])))
        >>> plan.ok, plan.assignments[0].target
        (True, 'b')
    """
    rule_set = as_rules(rules)
    source_map, source_description = source_specs(source)
    if isinstance(target, TargetMap):
        target_map, target_description = target, "target"
    else:
        variable_target = as_target(target, checkpoint_root=rule_set.target.checkpoint_root)
        target_map, target_description = variable_target.map, variable_target.description
    plan = build_plan(
        rule_set,
        source_map,
        target_map,
        source_description=source_description,
        target_description=target_description,
    )
    if not lints:
        return plan
    from mapper.authoring.lint import lint

    return dataclasses.replace(plan, problems=(*plan.problems, *lint(rule_set, source_map)))


def apply(
    plan: Plan,
    source: SourcesLike,
    target: object,
    *,
    method: Method = "assign",
    checkpoint_root: str = "model",
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> ApplyResult:
    """Apply a plan: read the planned tensors, transform them, assign them; all or nothing.

    Args:
        plan: a Plan without errors.
        source: the Source (or its path) the plan was made from; ``{name: Source or path}`` for a plan over
            named sources.
        target: the target (model, module, variables) the plan was made for.
        method: ``"assign"`` (batched reads, any operations) or ``"init_from_checkpoint"``
            (TensorFlow checkpoints, plans without operations).
        checkpoint_root: for targets given as objects, the root keyword of the checkpoint namespace.
        progress: called as ``progress(done, total)`` after each batch.
        **options: passed to ``mapper.run.executor.apply_plan``: ``batch_bytes``, and ``rollback``:
            ``"verify"`` (the default: every planned tensor is read and checked once before the first
            assignment, then the variables are assigned with Ctrl-C and SIGTERM held back until the pass ends),
            ``"memory"`` (replaced values are kept and restored on failure; on torch that copies each assigned
            variable) or ``"off"`` (neither; the fastest). ``True`` / ``False`` mean ``"memory"`` / ``"off"``.

    Returns:
        What was done: counts, bytes read, time taken.

    Raises:
        PlanError: the plan has errors. ApplyError (the target is unchanged), PartialApplyError (it is partly
        assigned, and the error names which variables), SourceError, TargetError: see ``apply_plan``.

    Example:
        >>> import keras, numpy as np
        >>> from mapper.rules import parse_rules
        >>> from mapper.sources.memory import MemorySource
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")], name="m")
        >>> source = MemorySource({"d/kernel": np.ones((2, 1), "float32"), "d/bias": np.full(1, 0.5, "float32")})
        >>> plan = make_plan(parse_rules('format = 1\\n[[rules]]\\nmatch = "(?P<n>.+)"\\ntarget = "m/{n}"'), source, model)
        >>> apply(plan, source, model).assigned, model.get_layer("d").bias.numpy().tolist()
        (2, [0.5])
    """
    from mapper.run.executor import apply_plan

    return apply_plan(
        plan,
        as_sources(source),
        as_target(target, checkpoint_root=checkpoint_root),
        method=method,
        progress=progress,
        **options,
    )


def transfer(
    rules: RulesLike,
    source: SourcesLike,
    target: object,
    *,
    method: Method = "assign",
    **options: Any,
) -> Plan:
    """Plan and apply in one call; raises PlanError (changing nothing) when the plan has errors.

    Example:
        >>> import keras, numpy as np
        >>> from mapper.report import render_text
        >>> from mapper.rules import parse_rules
        >>> from mapper.sources.memory import MemorySource
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="d")], name="m")
        >>> source = MemorySource({"d/kernel": np.ones((2, 1), "float32"), "d/bias": np.full(1, 0.5, "float32")})
        >>> plan = transfer(parse_rules('format = 1\\n[[rules]]\\nmatch = "(?P<n>.+)"\\ntarget = "m/{n}"'), source, model)
        >>> plan.counts()["mapped"], model.get_layer("d").kernel.numpy().tolist(), render_text(plan).startswith("Plan")
        (2, [[1.0], [1.0]], True)
    """
    rule_set = as_rules(rules)
    opened = as_sources(source)
    variable_target = as_target(target, checkpoint_root=rule_set.target.checkpoint_root)
    plan = make_plan(rule_set, opened, variable_target)
    if not plan.ok:
        raise PlanError.from_plan(plan)
    apply(plan, opened, variable_target, method=method, **options)
    return plan


def convert(
    rules: RulesLike,
    source: SourcesLike,
    output: str | os.PathLike[str],
    *,
    target: object | None = None,
    format: str | None = None,
    source_format: str | Mapping[str, str] | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> ConvertResult:
    """Convert a checkpoint into a new file, no model needed: the rules' target names become the output's tensors.

    Without ``target``, every name a rule produces is written with whatever shape and dtype its operations
    give (``[[keep]]`` rules do not apply). With ``target`` (a model, module, variables or TargetMap), the plan is
    checked against it as for ``transfer``: shapes must match the model's and unfilled variables are reported;
    the output names are the target names in the rule file's namespace. Streams in bounded memory, writes under a
    temporary name and moves the file into place only when complete; never touches the source.

    Args:
        rules: a RuleSet or the path of a rule file.
        source: a Source or path; ``{name: Source or path}`` for rule files that read several sources.
        output: the output: ``.safetensors``, ``.weights.h5`` / ``.h5`` (Keras HDF5), else a TF checkpoint prefix.
        target: optionally, the model whose variables the output must cover.
        format: ``"tf-checkpoint"``, ``"safetensors"`` or ``"keras-h5"``, overriding the output's suffix.
        source_format: the format to open source paths in (or ``{name: format}``); None to detect.
        overwrite: replace an existing output.
        progress: called as ``progress(done, total)`` after each batch.
        **options: passed to ``mapper.run.convert.write_plan`` (``batch_bytes``).

    Returns:
        A ConvertResult; its ``plan`` is the plan that was carried out.

    Raises:
        PlanError: the plan has errors (nothing is written). TargetError: the output is refused (it exists, its
        directory is missing, it is a source file, or its format cannot hold a tensor). SourceError: a source is
        missing or damaged. ApplyError: converting failed part-way; no output was left behind.

    Example:
        >>> import tempfile, numpy as np
        >>> from mapper.rules import parse_rules
        >>> from mapper.sources.memory import MemorySource
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "torch/(?P<n>.*)"\\ntarget = "{n}"\\nops = [{ transpose = [1, 0] }]')
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     result = convert(rules, MemorySource({"torch/w": np.ones((2, 3), "float32")}), f"{tmp}/w.safetensors")
        >>> result.written, result.plan.assignments[0].target_shape
        (1, (3, 2))
    """
    from mapper.outputs.files import check_output, output_format
    from mapper.plan.conversion import plan_conversion
    from mapper.run.convert import write_plan

    rule_set = as_rules(rules)
    chosen = output_format(output, format)
    check_output(output, chosen, overwrite=overwrite)
    opened = as_sources(source, format=source_format)
    target_map: TargetMap | None = None
    if isinstance(target, TargetMap):
        target_map = target
    elif target is not None:
        target_map = as_target(target, checkpoint_root=rule_set.target.checkpoint_root).map
    plan = plan_conversion(rule_set, opened, target_map, target_description=f"{output} ({chosen})")
    if not plan.ok:
        raise PlanError.from_plan(plan)
    return write_plan(plan, opened, output, format=chosen, overwrite=overwrite, progress=progress, **options)


def invert(
    rules: RulesLike, like: SourceLike | Mapping[str, TensorSpec], model: object, *, lossy_casts: bool | None = None
) -> Inverse:
    """The plan from ``like`` into ``model``, run backwards: how the model's variables give back ``like``'s tensors.

    Args:
        rules: a RuleSet or the path of a rule file (its ``[export]`` table is used).
        like: the checkpoint the model was imported from (or one with its names, shapes and dtypes; no tensor is
            read), or its specs.
        model: the model (a Keras model, ``tf.Module``, variables, or a TargetMap).
        lossy_casts: allow (True) or refuse (False) casts back that round, overriding ``[export] lossy_casts``.

    Returns:
        The Inverse: the tensors an export writes, what it drops (with the skip reasons), and the blockers.

    Raises:
        PlanError: the plan from ``like`` into ``model`` has errors (the model does not fit the rule file).

    Example:
        >>> from mapper.rules import parse_rules
        >>> from mapper.specs import VariableMap
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "w"\\ntarget = "d/kernel"\\nops = [{ cast = "float32" }]')
        >>> inverse = invert(rules, VariableMap([TensorSpec("w", (2,), "bfloat16")]),
        ...                  TargetMap(VariableMap([TensorSpec("d/kernel", (2,), "float32")])))
        >>> inverse.ok, str(inverse.blockers[0]).split(";")[0]
        (False, '<string> rule 1: the import casts bfloat16 to float32')
    """
    from mapper.plan.inverse import invert as invert_plan

    rule_set = as_rules(rules)
    reference = as_source(like) if isinstance(like, (str, os.PathLike)) else like
    plan = make_plan(rule_set, reference, model, lints=False)
    if not plan.ok:
        raise PlanError.from_plan(plan)
    specs, _ = source_specs(reference)  # the skipped tensors [[export.restore]] copies whole: their shapes and dtypes
    sources = None if isinstance(specs, SourceSet) else specs
    return invert_plan(plan, rule_set.export, lossy_casts=lossy_casts, sources=sources)


def export(
    rules: RulesLike,
    model: object,
    output: str | os.PathLike[str],
    *,
    like: SourceLike | Mapping[str, TensorSpec],
    weights: str | os.PathLike[str] | None = None,
    max_shard_bytes: int | None = None,
    overwrite: bool = False,
    lossy_casts: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Write a model's variables back under the source names a rule file reads: a Hugging Face safetensors checkpoint.

    The plan from ``like`` (the checkpoint the model was imported from: only its names, shapes and dtypes are
    used) into ``model`` is run backwards (``invert``) and the result written to ``output/model.safetensors``, or
    to shards and ``model.safetensors.index.json`` above ``max_shard_bytes``. Tensors the rules skip are not
    written, except the tied ones ``[[export.tied]]`` declares and the ones ``[[export.restore]]`` declares (copied
    whole from ``like``). No ``config.json`` is written: copy the one the model was imported with.

    Args:
        rules: a RuleSet or the path of a rule file.
        model: the Keras model (or ``tf.Module``, variables) to export.
        output: the output directory (created if missing).
        like: the reference checkpoint (path or Source), or its specs.
        weights: a ``.weights.h5`` file to load into ``model`` first (it changes the model).
        max_shard_bytes: the most tensor bytes per shard (default 5 GB, as the Hugging Face hub).
        overwrite: replace a checkpoint already in ``output``.
        lossy_casts: allow (True) or refuse (False) casts back that round, overriding the rule file.
        progress: called as ``progress(done, total)`` in tensors.

    Returns:
        An ExportResult.

    Raises:
        PlanError: the model does not fit the rule file (NotInvertibleError, a PlanError: the rules cannot be run
        backwards, each rule in the way named). OutputError: the output holds a checkpoint (without overwrite) or
        cannot be written. Nothing is written in any of these cases.

    Example:
        >>> import tempfile, keras, numpy as np
        >>> from mapper.rules import parse_rules
        >>> from mapper.sources.safetensors import SafetensorsSource
        >>> from mapper.specs import VariableMap
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="d")], name="m")
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "(?P<n>.+)[.]weight"\\ntarget = "m/{n}/kernel"\\n'
        ...                     'ops = [{ transpose = [1, 0] }]\\n[[rules]]\\nmatch = "(?P<n>.+)[.]bias"\\ntarget = "m/{n}/bias"')
        >>> like = VariableMap([TensorSpec("d.weight", (3, 2), "float32"), TensorSpec("d.bias", (3,), "float32")])
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     result = export(rules, model, f"{tmp}/hf", like=like)
        ...     weight = SafetensorsSource(f"{tmp}/hf/model.safetensors").read(["d.weight"])["d.weight"]
        >>> result.files, np.array_equal(weight, model.get_layer("d").kernel.numpy().T)
        (('model.safetensors',), True)
    """
    from mapper.run.export import DEFAULT_MAX_SHARD_BYTES, check_export_output, check_not_like, write_export

    check_export_output(output, overwrite=overwrite)
    rule_set = as_rules(rules)
    variable_target = as_target(model, checkpoint_root=rule_set.target.checkpoint_root)
    if weights is not None:
        load_weights = getattr(variable_target.obj, "load_weights", None)
        if load_weights is None:
            from mapper.errors import TargetError

            raise TargetError(f"cannot load {weights} into {variable_target.description}: it is not a Keras model")
        load_weights(os.fspath(weights))
    reference = as_source(like) if isinstance(like, (str, os.PathLike)) else like
    if isinstance(reference, Source):
        check_not_like(output, reference)
    inverse = invert(
        rule_set,
        reference,
        variable_target,
        lossy_casts=lossy_casts,
    )
    return write_export(
        inverse,
        variable_target,
        output,
        max_shard_bytes=DEFAULT_MAX_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes,
        overwrite=overwrite,
        progress=progress,
        like=reference if isinstance(reference, Source) else None,
    )


__all__ = [
    "apply",
    "as_rules",
    "as_source",
    "as_sources",
    "as_target",
    "convert",
    "export",
    "invert",
    "make_plan",
    "source_specs",
    "transfer",
]
