"""Apply a Plan: check everything first, then read the source in bounded batches and assign the target's variables."""

from __future__ import annotations

import difflib
import functools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mapper.dtypes import DTYPE_SIZES
from mapper.errors import ApplyError, OperationError, PlanError, SourceError, TargetError
from mapper.ops import NUMPY, ArrayBackend, apply_operations, combine_values, infer_all
from mapper.plan import Assignment, Plan
from mapper.sources.base import Source
from mapper.targets.base import VariableTarget

Method = Literal["assign", "init_from_checkpoint"]
METHODS: tuple[Method, ...] = ("assign", "init_from_checkpoint")
DEFAULT_BATCH_BYTES = 64 * 2**20
# Tensors per read, whatever their size: one RestoreV2 over thousands of small tensors is slower than
# several over a few dozen each (FIELD-NOTES: 0.33 s against 0.14 s for 5,000 variables).
MAX_BATCH_TENSORS = 64
# Tensors up to this size are transformed with NumPy, larger ones with TensorFlow ops. Measured here:
# on 16 KiB NumPy takes 55-75 us against 150-250 us for an eager op; at 1 MiB and above TensorFlow wins
# (transpose 1.1 ms against 1.5 ms, reshape 0.2 against 0.2-1 ms, cast 0.17 against 0.44 ms).
NUMPY_OPS_MAX_BYTES = 64 * 2**10
# Names shown in one error message; the error's fields keep them all.
_SHOWN = 5

Sources = Source | Mapping[str, Source]
# A source tensor of a plan over several sources: (source id, name).
_Key = tuple[str | None, str]


@dataclass(frozen=True)
class ApplyResult:
    """What ``apply_plan`` did.

    ``assigned`` counts target variables given a value (in TF1 graph mode: given an initializer that
    will, when run, read the value); ``bytes_read`` counts source bytes, each source tensor once.

    Example:
        >>> result = ApplyResult(assigned=2, bytes_read=48, batches=1, method="assign", seconds=0.01)
        >>> result.assigned, result.method
        (2, 'assign')
    """

    assigned: int
    bytes_read: int
    batches: int
    method: Method
    seconds: float


@dataclass(frozen=True, slots=True)
class Batch:
    """Source tensors read together in one ``read`` call of one source, and the assignments they serve.

    Every tensor an assignment reads (all members of a concat or stack) is in the same batch as the
    assignment, and each tensor is in exactly one batch, however many targets it feeds.

    Example:
        >>> batch = Batch(source_id=None, names=("w",), nbytes=24, assignments=())
        >>> batch.names, batch.nbytes
        (('w',), 24)
    """

    source_id: str | None
    names: tuple[str, ...]
    nbytes: int
    assignments: tuple[Assignment, ...]


def apply_plan(
    plan: Plan,
    source: Sources,
    target: VariableTarget,
    *,
    method: Method = "assign",
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    rollback: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> ApplyResult:
    """Give every variable the plan assigns its value from ``source``, all or nothing.

    Everything checkable is checked before the first variable changes: the plan has no errors and is
    consistent, every target variable exists with the planned shape and dtype, every source tensor
    (every member of a concat or stack) exists with the planned shape and dtype in the source it is
    planned from, and the method fits the plan and the sources.

    With ``method="assign"`` source tensors are read in batches of at most ``batch_bytes`` bytes (and
    ``MAX_BATCH_TENSORS`` tensors; a tensor, or a concat/stack group, larger than the budget is read
    alone), one ``read`` call per batch, joined (concat, stack), transformed (transpose, reshape, cast,
    slice, split, rearrange: NumPy for small tensors, TensorFlow ops for large ones) and assigned; a
    tensor that feeds several targets (a split) is read once. Each batch is released before the next
    is read. ``method="init_from_checkpoint"`` hands the same batches to
    ``tf.compat.v1.train.init_from_checkpoint``: it needs TensorFlow checkpoint sources (ones with a
    ``prefix``) and a plan that neither transforms nor joins tensors; in TF1 graph mode it sets the
    variables' initializers instead of assigning (run ``tf.compat.v1.global_variables_initializer()``
    afterwards).

    If anything fails after the first assignment and ``rollback`` is true, every variable already
    assigned gets its previous value back before the error is raised. The previous values are kept
    without copying (TensorFlow variables are copy-on-write), but they do keep the old buffers alive:
    with ``rollback=False`` memory stays bounded by one batch plus the largest tensor, and a failure
    leaves the target partly assigned. A ``KeyboardInterrupt`` is rolled back too and then re-raised
    as it is, so that Ctrl-C keeps stopping the program.

    Args:
        plan: a plan from ``build_plan`` (or ``Plan.from_json``) for this source and target.
        source: where tensors are read from: one Source, or for a plan over several named sources a
            mapping ``{source id: Source}`` (assignments without a source id read the only source).
        target: the variables to assign.
        method: ``"assign"`` (the default; any source, any plan) or ``"init_from_checkpoint"``.
        batch_bytes: upper bound on the source bytes read at once.
        rollback: restore the assigned variables if applying fails part-way.
        progress: called as ``progress(done, total)`` with counts of assignments after each batch.

    Returns:
        An ApplyResult with counts and timing.

    Raises:
        PlanError: the plan has error-level problems, or an assignment's join and operations do not
            produce its target shape and dtype.
        TargetError: a planned target variable is missing or has another shape or dtype.
        SourceError: a planned source, or a tensor of it, is missing or has another shape or dtype.
        ApplyError: the method does not fit, or applying failed (the cause is chained; the message
            says whether the target was restored).

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> from mapper.plan import Assignment, Plan, RuleRef
        >>> from mapper.ops import Transpose
        >>> from mapper.sources.memory import MemorySource
        >>> from mapper.specs import TargetMap, TensorSpec, VariableMap
        >>> variable = tf.Variable(np.zeros((3, 2), "float32"))
        >>> target = VariableTarget("demo", TargetMap(VariableMap([TensorSpec("d/kernel", (3, 2), "float32")])),
        ...                         {"d/kernel": variable})
        >>> rule = RuleRef("r.toml", 1)
        >>> plan = Plan(("r.toml",), "memory", "demo", "path", assignments=(
        ...     Assignment("d/kernel", "d/kernel", "w", rule, (Transpose((1, 0)),), (2, 3), "float32", (3, 2), "float32"),))
        >>> source = MemorySource({"w": np.arange(6, dtype="float32").reshape(2, 3)})
        >>> apply_plan(plan, source, target).assigned
        1
        >>> variable.numpy().tolist()
        [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    """
    import tensorflow as tf

    started = time.perf_counter()
    eager = tf.executing_eagerly()
    sources = resolve_sources(plan, source)
    slots = _check(plan, sources, target, method=method, batch_bytes=batch_bytes, eager=eager)
    batches = plan_batches(plan, batch_bytes)
    if method == "init_from_checkpoint" and not eager:
        for source_id, chosen in sources.items():
            mine = [a for a in plan.assignments if a.source_id == source_id]
            if mine:
                tf.compat.v1.train.init_from_checkpoint(chosen.checkpoint_prefix, _init_map(mine, slots))
        if progress is not None:
            progress(len(plan.assignments), len(plan.assignments))
        read = sum(batch.nbytes for batch in batches)
        return ApplyResult(len(plan.assignments), read, len(batches), method, time.perf_counter() - started)
    run = _Run(plan, sources, target, slots, rollback=rollback)
    run.execute(batches, method, progress)
    return ApplyResult(run.assigned, run.bytes_read, len(batches), method, time.perf_counter() - started)


def init_from_checkpoint_map(plan: Plan, target: VariableTarget) -> dict[str, Any] | list[tuple[str, Any]]:
    """The assignment map ``tf.compat.v1.train.init_from_checkpoint`` needs to carry out ``plan``.

    Keys are checkpoint keys (the plan's source names), values the ``tf.Variable`` behind each
    target variable (Keras 3 variables are unwrapped). A list of ``(key, variable)`` pairs is returned
    instead of a dict when one checkpoint tensor feeds several variables. Works in TF1 graph mode,
    where ``init_from_checkpoint`` sets initializers for the session to run.

    Args:
        plan: a plan without tensor operations or joins, reading one checkpoint.
        target: the variables the plan fills.

    Returns:
        ``{checkpoint_key: tf.Variable}``, or a list of pairs.

    Raises:
        PlanError: the plan has error-level problems or is inconsistent.
        TargetError: a planned target variable is missing or has another shape or dtype.
        ApplyError: the plan has operations or joins, which ``init_from_checkpoint`` cannot run, or reads
            several named sources (one map serves one checkpoint).

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> from mapper.plan import Assignment, Plan, RuleRef
        >>> from mapper.specs import TargetMap, TensorSpec, VariableMap
        >>> variable = tf.Variable(np.zeros(2, "float32"))
        >>> target = VariableTarget("demo", TargetMap(VariableMap([TensorSpec("b", (2,), "float32")])), {"b": variable})
        >>> plan = Plan(("r.toml",), "ckpt", "demo", "path", assignments=(
        ...     Assignment("b", "b", "layer/bias", RuleRef("r.toml", 1), (), (2,), "float32", (2,), "float32"),))
        >>> mapping = init_from_checkpoint_map(plan, target)
        >>> list(mapping), mapping["layer/bias"] is variable
        (['layer/bias'], True)
    """
    import tensorflow as tf

    check_plan(plan)
    _check_init_from_checkpoint_plan(plan)
    ids = list(dict.fromkeys(a.source_id for a in plan.assignments))
    if len(ids) > 1:
        raise ApplyError(
            f"the plan reads {len(ids)} sources ({', '.join(repr(i) for i in ids)}), and one init_from_checkpoint map "
            "serves one checkpoint; use apply_plan(plan, {name: source, ...}, target, method='init_from_checkpoint')"
        )
    slots = _check_targets(plan, target, eager=tf.executing_eagerly())
    return _init_map(plan.assignments, slots)


def resolve_sources(plan: Plan, source: Sources) -> dict[str | None, Source]:
    """The Source each of the plan's source ids reads from (``None`` for assignments without one).

    A single Source serves a plan that reads one source, named or not. A mapping serves a plan over
    named sources by id; a mapping with one entry also serves assignments without a source id.

    Raises:
        SourceError: the plan reads a named source the mapping does not have, or several sources and
            one Source was given.
        ApplyError: the mapping is empty, or has several entries for a plan made for one unnamed source.

    Example:
        >>> import numpy as np
        >>> from mapper.sources.memory import MemorySource
        >>> from mapper.plan import Assignment, RuleRef
        >>> plan = Plan(("r.toml",), "s", "t", "path", assignments=(
        ...     Assignment("b", "b", "w", RuleRef("r.toml", 1), (), (2,), "float32", (2,), "float32", source_id="head"),))
        >>> sources = resolve_sources(plan, {"head": MemorySource({"w": np.zeros(2, "float32")}, description="h")})
        >>> {key: value.description for key, value in sources.items()}
        {'head': 'h'}
    """
    ids = list(dict.fromkeys(a.source_id for a in plan.assignments))
    if not isinstance(source, Mapping):
        named = [i for i in ids if i is not None]
        if len(ids) > 1:
            raise SourceError(
                f"the plan reads {len(ids)} named sources ({', '.join(map(repr, named))}), but one source was given "
                f"({source.description}); pass them by name: {{{', '.join(f'{i!r}: source' for i in named)}}}",
                path=source.description,
            )
        return {ids[0] if ids else None: source}
    given = dict(source)
    if not given:
        raise ApplyError("no sources were given; pass a Source, or {name: Source} for a plan over named sources")
    resolved: dict[str | None, Source] = {}
    for source_id in ids:
        if source_id is None:
            if len(given) != 1:
                raise ApplyError(
                    f"the plan was made for one unnamed source, but {len(given)} named sources were given "
                    f"({', '.join(map(repr, given))}); pass the single source it was planned from, or plan again "
                    "with the named sources"
                )
            resolved[None] = next(iter(given.values()))
        elif source_id in given:
            resolved[source_id] = given[source_id]
        else:
            count = sum(1 for a in plan.assignments if a.source_id == source_id)
            first = next(a for a in plan.assignments if a.source_id == source_id)
            raise SourceError(
                f"the plan reads source {source_id!r} ({count} assignment{_s(count)}, first {first.source!r} -> "
                f"{first.target!r}, {first.rule}), but the sources given are {', '.join(map(repr, given))}; "
                f"pass it as {source_id}=PATH ({{{source_id!r}: source}} in Python)",
                path=source_id,
            )
    return resolved


# --- checks ---------------------------------------------------------------------------------------


def _check(
    plan: Plan,
    sources: Mapping[str | None, Source],
    target: VariableTarget,
    *,
    method: str,
    batch_bytes: int,
    eager: bool,
) -> dict[str, _Slot]:
    """Every check that can run before the first assignment; returns the unwrapped target variables."""
    check_plan(plan)
    if method not in METHODS:
        raise ApplyError(f"unknown method {method!r}: use one of {', '.join(map(repr, METHODS))}")
    check_batch_bytes(batch_bytes)
    if method == "init_from_checkpoint":
        _check_init_from_checkpoint_plan(plan)
        for chosen in sources.values():
            if chosen.checkpoint_prefix is None:
                raise ApplyError(
                    f"method='init_from_checkpoint' reads TensorFlow checkpoints only, and {chosen.description} is a "
                    f"{type(chosen).__name__} with no checkpoint prefix; use method='assign', which reads any source"
                )
    elif not eager:
        raise ApplyError(
            "method='assign' needs eager execution, but TensorFlow is building a graph here; in TF1 graph code use "
            "method='init_from_checkpoint' and run tf.compat.v1.global_variables_initializer() in a session"
        )
    slots = _check_targets(plan, target, eager=eager)
    check_sources(plan, sources)
    return slots


def check_batch_bytes(batch_bytes: int) -> None:
    """ApplyError unless ``batch_bytes`` is a positive int.

    Example:
        >>> check_batch_bytes(0)
        Traceback (most recent call last):
        mapper.errors.ApplyError: batch_bytes must be a positive number of bytes, not 0
    """
    if isinstance(batch_bytes, bool) or not isinstance(batch_bytes, int) or batch_bytes <= 0:
        raise ApplyError(f"batch_bytes must be a positive number of bytes, not {batch_bytes!r}")


def check_plan(plan: Plan) -> None:
    """PlanError if the plan has errors or an assignment's join and operations do not give its target spec.

    Example:
        >>> from mapper.plan import Assignment, RuleRef
        >>> from mapper.ops import Reshape
        >>> bad = Assignment("t", "t", "s", RuleRef("r.toml", 1), (Reshape((3,)),), (4,), "float32", (3,), "float32")
        >>> check_plan(Plan(("r.toml",), "s", "t", "path", assignments=(bad,)))
        Traceback (most recent call last):
        mapper.errors.PlanError: assignment 's' -> 't' (r.toml rule 1) is inconsistent: cannot reshape [4] ...
    """
    errors = plan.errors
    if errors:
        shown = "\n".join(f"  - {problem.message}" for problem in errors[:_SHOWN])
        more = f"\n  ... and {len(errors) - _SHOWN} more" if len(errors) > _SHOWN else ""
        raise PlanError(
            f"the plan from {plan.source} to {plan.target} has {len(errors)} error{_s(len(errors))}, so nothing "
            f"was applied:\n{shown}{more}\nfix the rule file (see the plan report) and plan again",
            problems=errors,
            plan=plan,
        )
    for assignment in plan.assignments:
        _check_assignment(plan, assignment)


def _check_assignment(plan: Plan, assignment: Assignment) -> None:
    where = f"assignment {assignment.source!r} -> {assignment.target!r} ({assignment.rule}) is inconsistent"
    again = "the plan was edited or made by another version, so plan again"
    combine = assignment.combine
    members = assignment.members
    joined = combine is not None or members or assignment.member_shapes
    if joined and (
        combine is None
        or not members
        or len(members) != len(assignment.member_shapes)
        or members[0] != assignment.source
        or assignment.member_shapes[0] != assignment.source_shape
    ):
        raise PlanError(
            f"{where}: its members {list(members)}, member shapes {[list(s) for s in assignment.member_shapes]} "
            f"and join {combine.describe() if combine else None} do not agree with each other and with its first "
            f"source {assignment.source!r}; {again}",
            problems=(),
            plan=plan,
        )
    try:
        shape, dtype = assignment.source_shape, assignment.source_dtype
        if combine is not None:
            shape, dtype = combine.infer(assignment.member_shapes, dtype)
        shape, dtype = infer_all(assignment.operations, shape, dtype)
    except OperationError as error:
        raise PlanError(f"{where}: {error}; {again}", problems=(), plan=plan) from error
    if shape != assignment.target_shape or dtype != assignment.target_dtype:
        start = _spec(assignment.source_shape, assignment.source_dtype)
        if combine is not None:
            start = f"{len(members)} members {start}, ..."
        raise PlanError(
            f"{where}: its {'join and ' if combine is not None else ''}operations turn {start} into "
            f"{_spec(shape, dtype)}, not the planned {_spec(assignment.target_shape, assignment.target_dtype)}; {again}",
            problems=(),
            plan=plan,
        )


def _check_init_from_checkpoint_plan(plan: Plan) -> None:
    transformed = [a for a in plan.assignments if a.transformed]
    if transformed:
        first = transformed[0]
        steps = ", ".join(step.describe() for step in ((first.combine,) if first.combine else ()) + first.operations)
        raise ApplyError(
            f"method='init_from_checkpoint' cannot transform or join tensors, and {len(transformed)} assignment"
            f"{_s(len(transformed))} of the plan do (first: {first.source!r} -> {first.target!r} via {steps}, "
            f"{first.rule}); use method='assign'"
        )


@dataclass(frozen=True, slots=True)
class _Slot:
    """A target variable ready to assign: the tf.Variable behind it and its per-device parts."""

    name: str
    variable: Any  # the tf.Variable (a MirroredVariable under a distribution strategy)
    parts: tuple[Any, ...]  # plain resource variables holding the values: the variable, or its replicas
    fast: bool  # assign with a raw AssignVariableOp on the handle


def _check_targets(plan: Plan, target: VariableTarget, *, eager: bool) -> dict[str, _Slot]:
    import tensorflow as tf

    slots: dict[str, _Slot] = {}
    for assignment in plan.assignments:
        name = assignment.target
        if name not in target.variables:
            close = difflib.get_close_matches(name, list(target.variables), n=3)
            hint = f"; closest names: {', '.join(map(repr, close))}" if close else ""
            raise TargetError(
                f"{target.description} has no variable {name!r}, which the plan assigns from {assignment.source!r} "
                f"({assignment.rule}){hint}; the model changed since the plan was made, so plan again"
            )
        slot = _slot(name, target.variables[name], tf, eager=eager)
        shape = _shape_of(slot.variable)
        dtype = slot.variable.dtype.base_dtype.name  # base: TF1 reference variables say "float32_ref"
        if shape != assignment.target_shape or dtype != assignment.target_dtype:
            raise TargetError(
                f"variable {name!r} of {target.description} is {_spec(shape, dtype)}, but the plan assigns it "
                f"{_spec(assignment.target_shape, assignment.target_dtype)} from {assignment.source!r} "
                f"({assignment.rule}); the model changed since the plan was made, so plan again"
            )
        slots[name] = slot
    return slots


def _slot(name: str, variable: Any, tf: Any, *, eager: bool) -> _Slot:
    inner = variable
    if not isinstance(inner, tf.Variable):
        # A Keras 3 variable holds its tf.Variable as ``.value`` (outside autocast and stateless scopes).
        inner = getattr(variable, "value", None)
        if not isinstance(inner, tf.Variable):
            raise TargetError(
                f"target variable {name!r} is a {type(variable).__name__}, not a tf.Variable or a built Keras 3 "
                "variable; build the model (call it once or model.build(shape)) before applying, outside any "
                "autocast or stateless scope"
            )
    if isinstance(inner, tf.distribute.DistributedValues):
        return _Slot(name, inner, tuple(inner.values), fast=False)
    return _Slot(name, inner, (inner,), fast=eager and hasattr(inner, "handle"))


def _shape_of(variable: Any) -> tuple[int | None, ...] | None:
    """The variable's static shape; None (and None dimensions) where a TF1 graph leaves it unknown."""
    shape = variable.shape
    return None if shape.rank is None else tuple(shape.as_list())


def check_sources(plan: Plan, sources: Mapping[str | None, Source]) -> None:
    """SourceError unless every tensor the plan reads is in its source with the planned shape and dtype.

    Every member of a concat or stack is checked. ``sources`` comes from ``resolve_sources``.

    Example:
        >>> import numpy as np
        >>> from mapper.sources.memory import MemorySource
        >>> from mapper.plan import Assignment, RuleRef
        >>> plan = Plan(("r.toml",), "s", "t", "path", assignments=(
        ...     Assignment("b", "b", "w", RuleRef("r.toml", 1), (), (2,), "float32", (2,), "float32"),))
        >>> check_sources(plan, {None: MemorySource({"v": np.zeros(2, "float32")}, description="mem")})
        Traceback (most recent call last):
        mapper.errors.SourceError: mem has no tensor 'w', which the plan reads for 'b' (r.toml rule 1); ...
    """
    specs_by_id = {source_id: chosen.specs() for source_id, chosen in sources.items()}
    for assignment in plan.assignments:
        chosen = sources[assignment.source_id]
        specs = specs_by_id[assignment.source_id]
        names = assignment.source_names
        shapes = assignment.member_shapes or (assignment.source_shape,)
        for position, (name, shape) in enumerate(zip(names, shapes, strict=True), 1):
            kind = assignment.combine.kind if assignment.combine else ""
            role = f"as member {position} of {len(names)} of the {kind} " if kind else ""
            spec = specs.get(name)
            if spec is None:
                close = difflib.get_close_matches(name, list(specs), n=3)
                hint = f"; closest names: {', '.join(map(repr, close))}" if close else ""
                raise SourceError(
                    f"{chosen.description} has no tensor {name!r}, which the plan reads {role}for "
                    f"{assignment.target!r} ({assignment.rule}){hint}; the source changed since the plan was made, "
                    "so plan again against this source",
                    path=chosen.description,
                )
            if spec.shape != shape or spec.dtype != assignment.source_dtype:
                raise SourceError(
                    f"tensor {name!r} of {chosen.description} is {_spec(spec.shape, spec.dtype)}, but the plan "
                    f"expects {_spec(shape, assignment.source_dtype)} {role}for {assignment.target!r} "
                    f"({assignment.rule}); the source changed since the plan was made, so plan again against this source",
                    path=chosen.description,
                )


# --- batching -------------------------------------------------------------------------------------


def plan_batches(plan: Plan, batch_bytes: int) -> list[Batch]:
    """Cut the plan's reads into batches of at most ``batch_bytes`` bytes and ``MAX_BATCH_TENSORS`` tensors.

    Tensors that one assignment reads together (a concat or stack group) stay in one batch, with every
    assignment they feed; each source tensor is read once, whatever number of targets it feeds. Batches
    read one source each, sources in the order the plan first reads them; a group larger than the budget
    is a batch of its own.

    Example:
        >>> from mapper.plan import Assignment, RuleRef
        >>> ref = RuleRef("r.toml", 1)
        >>> plan = Plan(("r.toml",), "s", "t", "path", assignments=tuple(
        ...     Assignment(f"t{i}", f"t{i}", f"s{i}", ref, (), (4,), "float32", (4,), "float32") for i in range(3)))
        >>> [batch.names for batch in plan_batches(plan, 32)]
        [('s0', 's1'), ('s2',)]
    """
    parent: dict[_Key, _Key] = {}
    sizes: dict[_Key, int] = {}

    def find(key: _Key) -> _Key:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for assignment in plan.assignments:
        shapes = assignment.member_shapes or (assignment.source_shape,)
        keys = [(assignment.source_id, name) for name in assignment.source_names]
        for key, shape in zip(keys, shapes, strict=True):
            if key not in parent:
                parent[key] = key
                sizes[key] = _bytes(shape, assignment.source_dtype)
        for key in keys[1:]:
            parent[find(key)] = find(keys[0])
    # Groups of tensors read together, in the order the plan first reads them.
    groups: dict[_Key, list[_Key]] = {}
    for key in parent:
        groups.setdefault(find(key), []).append(key)
    served: dict[_Key, list[Assignment]] = {root: [] for root in groups}
    for assignment in plan.assignments:
        served[find((assignment.source_id, assignment.source))].append(assignment)
    by_source: dict[str | None, list[_Key]] = {}
    for root in groups:
        by_source.setdefault(root[0], []).append(root)
    batches: list[Batch] = []
    for source_id, roots in by_source.items():
        names: list[str] = []
        assignments: list[Assignment] = []
        total = 0
        for root in roots:
            members = groups[root]
            nbytes = sum(sizes[key] for key in members)
            if names and (total + nbytes > batch_bytes or len(names) + len(members) > MAX_BATCH_TENSORS):
                batches.append(Batch(source_id, tuple(names), total, tuple(assignments)))
                names, assignments, total = [], [], 0
            names.extend(name for _, name in members)
            assignments.extend(served[root])
            total += nbytes
        if names:
            batches.append(Batch(source_id, tuple(names), total, tuple(assignments)))
    return batches


# --- values without a target: for writers ---------------------------------------------------------


class ValueStream:
    """Every value a plan gives its targets, read and transformed batch by batch, for writers without variables.

    Constructing it runs every check that needs no target (the plan, the sources, ``batch_bytes``);
    iterating reads one batch at a time and yields it with ``[(assignment, tf.Tensor), ...]`` in the
    batch's order. Drop the values before asking for the next batch to keep memory bounded by one batch.
    ``step`` says what the stream was doing, for error messages when iterating fails.

    Args:
        plan: a plan without errors.
        source: one Source, or ``{source id: Source}`` for a plan over named sources.
        batch_bytes: upper bound on the source bytes read at once.

    Raises:
        PlanError: see ``check_plan``. SourceError: see ``resolve_sources`` and ``check_sources``.
        ApplyError: ``batch_bytes`` is not a positive int.

    Example:
        >>> import numpy as np
        >>> from mapper.plan import Assignment, RuleRef
        >>> from mapper.ops import SplitPart
        >>> from mapper.sources.memory import MemorySource
        >>> ref = RuleRef("r.toml", 1)
        >>> parts = [Assignment(f"p{i}", f"p{i}", "w", ref, (SplitPart(0, i, 2, 2 * i, 2 * i + 2),), (4,), "int64",
        ...                     (2,), "int64") for i in range(2)]
        >>> stream = ValueStream(Plan(("r.toml",), "s", "t", "path", assignments=tuple(parts)),
        ...                      MemorySource({"w": np.arange(4)}))
        >>> [(a.target, value.numpy().tolist()) for batch, items in stream for a, value in items]
        [('p0', [0, 1]), ('p1', [2, 3])]
    """

    def __init__(self, plan: Plan, source: Sources, *, batch_bytes: int = DEFAULT_BATCH_BYTES) -> None:
        check_plan(plan)
        check_batch_bytes(batch_bytes)
        self.plan = plan
        self.sources = resolve_sources(plan, source)
        check_sources(plan, self.sources)
        self.batches: list[Batch] = plan_batches(plan, batch_bytes)
        self.step = "starting"

    def __iter__(self) -> Iterator[tuple[Batch, list[tuple[Assignment, Any]]]]:
        import tensorflow as tf

        count = len(self.batches)
        for number, batch in enumerate(self.batches, 1):
            chosen = self.sources[batch.source_id]
            self.step = f"reading batch {number} of {count} ({_names(batch.names)}) from {chosen.description}"
            values = chosen.read(list(batch.names))
            items: list[tuple[Assignment, Any]] = []
            for assignment in batch.assignments:
                self.step = (
                    f"transforming {assignment.source!r} for {assignment.target!r} ({assignment.rule}) "
                    f"in batch {number} of {count}"
                )
                items.append((assignment, _value(assignment, values, chosen.description, tf)))
            del values
            self.step = f"writing batch {number} of {count}"
            yield batch, items
            del items  # release the batch before the next one is read


# --- running --------------------------------------------------------------------------------------


class _Run:
    """One application of a plan: assigns batch after batch, remembering what to restore on failure."""

    def __init__(
        self,
        plan: Plan,
        sources: Mapping[str | None, Source],
        target: VariableTarget,
        slots: Mapping[str, _Slot],
        *,
        rollback: bool,
    ) -> None:
        self.plan = plan
        self.sources = sources
        self.target = target
        self.slots = slots
        self.rollback = rollback
        # (resource variable, its value before we touched it) for every part about to be or already assigned.
        self.saved: list[tuple[Any, Any]] = []
        self.touched = 0  # assignments done, in earlier batches and in this one
        self.partial = False  # an init_from_checkpoint batch was running: some of it may be assigned
        self.assigned = 0
        self.bytes_read = 0
        self.step = "starting"
        # The assignment being transformed or assigned, if any: the error message is built from it only on failure.
        self.current: Assignment | None = None
        self.action = ""

    def execute(self, batches: Sequence[Batch], method: str, progress: Callable[[int, int], None] | None) -> None:
        import tensorflow as tf

        total = len(self.plan.assignments)
        try:
            for number, batch in enumerate(batches, 1):
                if self.rollback:
                    self.step = f"saving the previous values of batch {number} of {len(batches)}"
                    self._save(batch.assignments, tf)
                if method == "assign":
                    self._assign_batch(number, len(batches), batch, tf)
                else:
                    self._init_batch(number, len(batches), batch, tf)
                self.bytes_read += batch.nbytes
                self.assigned += len(batch.assignments)
                if progress is not None:
                    self.step = f"reporting progress after batch {number} of {len(batches)}"
                    progress(self.assigned, total)
        except Exception as error:
            raise self._failed(error, tf) from error
        except BaseException:  # KeyboardInterrupt, SystemExit: undo, then let it stop the program
            self._restore(tf)
            raise

    def _save(self, assignments: Sequence[Assignment], tf: Any) -> None:
        read = tf.raw_ops.ReadVariableOp
        for assignment in assignments:
            for part in self.slots[assignment.target].parts:
                # The read tensor shares the variable's buffer; assigning later allocates a new one
                # because this reference is alive (copy-on-write), so no copy is made here.
                self.saved.append((part, read(resource=part.handle, dtype=part.dtype)))

    def _assign_batch(self, number: int, count: int, batch: Batch, tf: Any) -> None:
        chosen = self.sources[batch.source_id]
        where = chosen.description
        self.step = f"reading batch {number} of {count} ({_names(batch.names)}) from {where}"
        values = chosen.read(list(batch.names))
        self.step = f"batch {number} of {count}"
        assign = tf.raw_ops.AssignVariableOp
        slots = self.slots
        value: Any = None
        # Per-tensor work is kept to the minimum: about 10 us of Python per variable besides the assign op.
        for assignment in batch.assignments:
            self.current, self.action = assignment, "transforming"
            if assignment.combine is None:
                value = values[assignment.source]
                if assignment.operations or not isinstance(value, tf.Tensor):
                    value = _transform((value,), assignment, where, tf)
            else:
                value = _value(assignment, values, where, tf)
            self.action = "assigning"
            slot = slots[assignment.target]
            if slot.fast:  # shape and dtype are checked by the op
                assign(resource=slot.variable.handle, value=value, validate_shape=True)
            else:
                slot.variable.assign(value, read_value=False)
            self.touched += 1
        self.current = None
        del values, value  # release the batch before the next one is read

    def _init_batch(self, number: int, count: int, batch: Batch, tf: Any) -> None:
        chosen = self.sources[batch.source_id]
        self.step = (
            f"init_from_checkpoint on batch {number} of {count} "
            f"({_names([a.source for a in batch.assignments])}) from {chosen.description}"
        )
        self.partial = True
        tf.compat.v1.train.init_from_checkpoint(chosen.checkpoint_prefix, _init_map(batch.assignments, self.slots))
        self.partial = False
        self.touched += len(batch.assignments)

    def _restore(self, tf: Any) -> list[str]:
        """Put back every saved value (each part was saved once, before its first change); returns failures."""
        failed: list[str] = []
        assign = tf.raw_ops.AssignVariableOp
        for part, value in reversed(self.saved):
            try:
                assign(resource=part.handle, value=value, validate_shape=True)
            except Exception:  # keep restoring the others; the names are reported
                failed.append(part.name)
        self.saved.clear()
        return failed

    def _failed(self, error: Exception, tf: Any) -> ApplyError:
        total = len(self.plan.assignments)
        step = self.step
        if self.current is not None:
            current = self.current
            step = f"{self.action} {current.source!r} for {current.target!r} ({current.rule}) in {step}"
        head = f"applying the plan to {self.target.description} failed while {step}: {type(error).__name__}: "
        head += _first_line(error)
        more = " (and possibly some of the failing batch)" if self.partial else ""
        nothing = not self.touched and not self.partial
        unchanged = f"{head}\nno variable had been assigned yet, so {self.target.description} is unchanged; fix the "
        unchanged += "cause and apply again"
        if not self.rollback:
            if nothing:
                return ApplyError(unchanged)
            return ApplyError(
                f"{head}\nwith rollback=False, {self.touched} of {total} variables{more} were already assigned and were "
                f"not restored: {self.target.description} may be partly assigned; fix the cause and apply again"
            )
        # Restore even when nothing is known to be assigned: a failed assign to a distributed variable
        # may have changed some of its replicas.
        failed = self._restore(tf)
        if failed:
            return ApplyError(
                f"{head}\nrestoring the previous values failed too for {len(failed)} variable{_s(len(failed))} "
                f"({_names(failed)}): {self.target.description} may be partly assigned; reload it"
            )
        if nothing:
            return ApplyError(unchanged)
        return ApplyError(
            f"{head}\nthe {self.touched} variable{_s(self.touched)} assigned before the failure{more} "
            f"{'was' if self.touched == 1 and not more else 'were'} restored to their previous values, so "
            f"{self.target.description} is unchanged; fix the cause and apply again"
        )


def _value(assignment: Assignment, values: Mapping[str, Any], where: str, tf: Any) -> Any:
    """The assignment's target value as a tf.Tensor, from the batch's values."""
    return _transform([values[name] for name in assignment.source_names], assignment, where, tf)


def _transform(members: Sequence[Any], assignment: Assignment, where: str, tf: Any) -> Any:
    """Join the members (one unless concat/stack), apply the operations; a tf.Tensor, checked against the plan."""
    shapes = assignment.member_shapes or (assignment.source_shape,)
    for value, name, shape in zip(members, assignment.source_names, shapes, strict=True):
        if isinstance(value, tf.Tensor):
            _check_read(name, shape, (tuple(value.shape), value.dtype.name), assignment, where)
        else:
            found = (tuple(getattr(value, "shape", ())), str(getattr(value, "dtype", type(value).__name__)))
            _check_read(name, shape, found, assignment, where)
    if assignment.combine is None and not assignment.operations:
        only = members[0]
        return only if isinstance(only, tf.Tensor) else _to_tensor(only, tf)
    if _nbytes(assignment) > NUMPY_OPS_MAX_BYTES:
        backend = _tf_backend()
        tensors = [value if isinstance(value, tf.Tensor) else _to_tensor(value, tf) for value in members]
        joined = tensors[0] if assignment.combine is None else combine_values(assignment.combine, tensors, backend)
        return apply_operations(assignment.operations, joined, backend)
    # No copy on CPU; NumPy is faster than TensorFlow ops on small tensors.
    arrays = [value.numpy() if isinstance(value, tf.Tensor) else value for value in members]
    joined = arrays[0] if assignment.combine is None else combine_values(assignment.combine, arrays, NUMPY)
    return tf.convert_to_tensor(apply_operations(assignment.operations, joined, NUMPY))


def _to_tensor(value: Any, tf: Any) -> Any:
    """A tf.Tensor holding a NumPy array's values, in one copy.

    ``tf.convert_to_tensor`` copies a NumPy array twice (into a 16-byte-aligned buffer, then a 64-byte-aligned
    one): measured here, 0.11 s and twice the memory for an 89 MiB embedding. One copy into a 64-byte-aligned
    array handed over through DLPack takes 0.02 s, and the assign then adopts that buffer. Small tensors, and
    dtypes DLPack does not carry (bfloat16 and float8 from ml_dtypes), take the ordinary path.
    """
    array = np.asarray(value)
    if array.nbytes <= NUMPY_OPS_MAX_BYTES or array.dtype.kind not in "biuf" or array.dtype.type.__module__ != "numpy":
        return tf.convert_to_tensor(array)
    buffer = np.empty(array.nbytes + _ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % _ALIGNMENT
    aligned = buffer[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    np.copyto(aligned, array)
    try:
        return tf.experimental.dlpack.from_dlpack(aligned.__dlpack__())
    except (TypeError, ValueError, RuntimeError, BufferError, tf.errors.InvalidArgumentError):
        return tf.convert_to_tensor(aligned)


_ALIGNMENT = 64  # what TensorFlow's CPU allocator gives its own tensors


@functools.cache
def _tf_backend() -> ArrayBackend:
    """The TensorFlow ArrayBackend: ops run eagerly on whatever device holds the tensors."""
    import tensorflow as tf

    return ArrayBackend(
        transpose=tf.transpose,
        reshape=tf.reshape,
        cast=lambda value, dtype: tf.cast(value, tf.as_dtype(dtype)),
        concat=tf.concat,
        stack=tf.stack,
    )


def _bytes(shape: Sequence[int], dtype: str) -> int:
    nbytes = DTYPE_SIZES.get(dtype, 0)
    for dim in shape:
        nbytes *= dim
    return nbytes


def _nbytes(assignment: Assignment) -> int:
    """Source bytes the assignment reads: every member of a join."""
    shapes = assignment.member_shapes or (assignment.source_shape,)
    return sum(_bytes(shape, assignment.source_dtype) for shape in shapes)


def _check_read(
    name: str, expected: tuple[int, ...], found: tuple[tuple[Any, ...], str], assignment: Assignment, where: str
) -> None:
    shape, dtype = found
    if shape != expected or dtype != assignment.source_dtype:
        raise SourceError(
            f"reading {name!r} from {where} gave {_spec(shape, dtype)}, not the "
            f"{_spec(expected, assignment.source_dtype)} its specs promised; the source is damaged "
            "or changed while applying",
            path=where,
        )


def _init_map(assignments: Sequence[Assignment], slots: Mapping[str, _Slot]) -> dict[str, Any] | list[tuple[str, Any]]:
    pairs = [(a.source, slots[a.target].variable) for a in assignments]
    mapping = dict(pairs)
    return mapping if len(mapping) == len(pairs) else pairs


# --- messages -------------------------------------------------------------------------------------


def _spec(shape: Sequence[int | None] | None, dtype: str) -> str:
    if shape is None:
        return f"[unknown shape] {dtype}"
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + f"] {dtype}"


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(map(repr, names[:_SHOWN]))
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def _s(count: int) -> str:
    return "" if count == 1 else "s"
