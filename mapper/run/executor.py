"""Apply a Plan: check everything first, then read the source in bounded batches and assign the target's variables."""

from __future__ import annotations

import difflib
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mapper.errors import ApplyError, TargetError
from mapper.plan import Assignment, Plan
from mapper.run.batches import (
    DEFAULT_BATCH_BYTES,
    Batch,
    Sources,
    check_batch_bytes,
    check_plan,
    check_sources,
    plan_batches,
    resolve_sources,
)
from mapper.run.values import assignment_value, spec_text, transform
from mapper.sources.base import Source
from mapper.targets.base import VariableTarget
from mapper.text import first_line, quoted, s

Method = Literal["assign", "init_from_checkpoint"]
METHODS: tuple[Method, ...] = ("assign", "init_from_checkpoint")


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
    slice, split, rearrange) and assigned; a tensor that feeds several targets (a split) is read once.
    A large tensor is copied once, its transforms done while copying into an aligned buffer that the
    variable adopts; an untransformed one read from a safetensors or TF checkpoint source, which hand
    over their buffers, is not copied at all. Each batch is released before the next is read.
    ``method="init_from_checkpoint"`` hands the same batches to ``tf.compat.v1.train.init_from_checkpoint``:
    it needs TensorFlow checkpoint sources (ones with a ``checkpoint_prefix``) and a plan that neither
    transforms nor joins tensors; in TF1 graph mode it sets the variables' initializers instead of assigning
    (run ``tf.compat.v1.global_variables_initializer()`` afterwards).

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


def _check_init_from_checkpoint_plan(plan: Plan) -> None:
    transformed = [a for a in plan.assignments if a.transformed]
    if transformed:
        first = transformed[0]
        steps = ", ".join(step.describe() for step in ((first.combine,) if first.combine else ()) + first.operations)
        raise ApplyError(
            f"method='init_from_checkpoint' cannot transform or join tensors, and {len(transformed)} assignment"
            f"{s(len(transformed))} of the plan do (first: {first.source!r} -> {first.target!r} via {steps}, "
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
                f"variable {name!r} of {target.description} is {spec_text(shape, dtype)}, but the plan assigns it "
                f"{spec_text(assignment.target_shape, assignment.target_dtype)} from {assignment.source!r} "
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
        self.step = f"reading batch {number} of {count} ({quoted(batch.names)}) from {where}"
        values = chosen.read(list(batch.names))
        self.step = f"batch {number} of {count}"
        handed = _handed_over(batch, chosen)
        assign = tf.raw_ops.AssignVariableOp
        slots = self.slots
        value: Any = None
        # Per-tensor work is kept to the minimum: about 10 us of Python per variable besides the assign op.
        for assignment in batch.assignments:
            self.current, self.action = assignment, "transforming"
            if assignment.combine is None:
                value = values[assignment.source]
                if assignment.operations or not isinstance(value, tf.Tensor):
                    value = transform((value,), assignment, where, tf, adopt=assignment.source in handed)
            else:
                value = assignment_value(assignment, values, where, tf)
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
            f"({quoted([a.source for a in batch.assignments])}) from {chosen.description}"
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
        head += first_line(error)
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
                f"{head}\nrestoring the previous values failed too for {len(failed)} variable{s(len(failed))} "
                f"({quoted(failed)}): {self.target.description} may be partly assigned; reload it"
            )
        if nothing:
            return ApplyError(unchanged)
        return ApplyError(
            f"{head}\nthe {self.touched} variable{s(self.touched)} assigned before the failure{more} "
            f"{'was' if self.touched == 1 and not more else 'were'} restored to their previous values, so "
            f"{self.target.description} is unchanged; fix the cause and apply again"
        )


def _handed_over(batch: Batch, source: Source) -> frozenset[str]:
    """The batch's source names whose arrays a variable may adopt as its buffer, without a copy.

    Only a source that says its ``read`` returns new buffers nothing else holds (``hands_over_reads``: the
    safetensors and TF checkpoint sources) hands them over, and only names read for one assignment: a tensor
    that feeds two variables would otherwise become the buffer of both, and training one would change the other.
    """
    if not source.hands_over_reads:
        return frozenset()
    uses = Counter(name for assignment in batch.assignments for name in assignment.source_names)
    return frozenset(name for name, count in uses.items() if count == 1)


def _init_map(assignments: Sequence[Assignment], slots: Mapping[str, _Slot]) -> dict[str, Any] | list[tuple[str, Any]]:
    pairs = [(a.source, slots[a.target].variable) for a in assignments]
    mapping = dict(pairs)
    return mapping if len(mapping) == len(pairs) else pairs


# The batching and checking names are re-exported: they lived here before run/batches.py and run/values.py.
__all__ = ["METHODS", "ApplyResult", "Method", "apply_plan", "init_from_checkpoint_map"]
