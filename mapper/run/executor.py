"""Apply a Plan: check everything first, then read the source in bounded batches and assign the target's variables."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mapper.dtypes import dtype_name
from mapper.errors import ApplyError, PartialApplyError
from mapper.naming import group_names
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
from mapper.run.deferral import signals_deferred
from mapper.run.direct import DirectBuffers, is_plain_copy, split_batch, write_direct
from mapper.run.slots import Slots, check_targets
from mapper.run.values import assignment_value, check_reads, host_value, tensor_bytes, to_tensor, transform
from mapper.sources.base import ChunkedSource, PositionedSource, Source, VerifyingSource
from mapper.targets.base import VariableTarget
from mapper.text import first_line, quoted, s

Method = Literal["assign", "init_from_checkpoint"]
# Batches the verify pass checks at once: reading from the page cache and checksumming scale to the two cores
# measured here; more threads would only queue behind them.
VERIFY_THREADS = 2
METHODS: tuple[Method, ...] = ("assign", "init_from_checkpoint")
Rollback = Literal["verify", "memory", "off"]
ROLLBACKS: tuple[Rollback, ...] = ("verify", "memory", "off")
_INSTALL_TF = "pip install 'weight-mapper[tensorflow]' (or tensorflow-cpu)"


@dataclass(frozen=True)
class ApplyResult:
    """What ``apply_plan`` did.

    ``assigned`` counts target variables given a value (in TF1 graph mode: given an initializer that
    will, when run, read the value); ``bytes_read`` counts source bytes, each source tensor once (the
    ``"verify"`` pass reads them once more); ``rollback`` is the mode the apply ran in.

    Example:
        >>> result = ApplyResult(assigned=2, bytes_read=48, batches=1, method="assign", seconds=0.01)
        >>> result.assigned, result.method, result.rollback
        (2, 'assign', 'verify')
    """

    assigned: int
    bytes_read: int
    batches: int
    method: Method
    seconds: float
    rollback: Rollback = "verify"


def apply_plan(
    plan: Plan,
    source: Sources,
    target: VariableTarget,
    *,
    method: Method = "assign",
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    rollback: Rollback | bool = "verify",
    progress: Callable[[int, int], None] | None = None,
) -> ApplyResult:
    """Give every variable the plan assigns its value from ``source``, all or nothing.

    Everything checkable is checked before the first variable changes: the plan has no errors and is
    consistent, every target variable exists with the planned shape and dtype (and, sharded under JAX, a
    layout that holds it) and is a variable of the active Keras backend, every source tensor (every member
    of a concat or stack) exists with the planned shape and dtype in the source it is planned from, and the
    method fits the plan and the sources.

    With ``method="assign"`` source tensors are read in batches of at most ``batch_bytes`` bytes (and
    ``MAX_BATCH_TENSORS`` tensors; a tensor, or a concat/stack group, larger than the budget is read
    alone), one ``read`` call per batch, joined (concat, stack), transformed (transpose, reshape, cast,
    slice, split, rearrange) and assigned; a tensor that feeds several targets (a split) is read once.
    A tensor of ``DIRECT_MIN_BYTES`` or more that a source can read into a buffer (TF checkpoints, safetensors)
    goes straight into the variable (``mapper/run/direct.py``): into the parameter's own memory on torch, one
    reused staging buffer then a scatter into the variable's buffer on TensorFlow, the new array's one host
    buffer on JAX; its transforms are fused into that copy. Other large tensors are copied once, their
    transforms done while copying into an aligned buffer that the variable adopts. Each batch is released
    before the next is read.
    ``method="init_from_checkpoint"`` hands the same batches to ``tf.compat.v1.train.init_from_checkpoint``:
    it needs TensorFlow, TensorFlow variables, TensorFlow checkpoint sources (ones with a ``checkpoint_prefix``)
    and a plan that neither transforms nor joins tensors; in TF1 graph mode it sets the variables' initializers
    instead of assigning (run ``tf.compat.v1.global_variables_initializer()`` afterwards).

    Any Keras 3 backend's variables are assigned with what that backend provides: TensorFlow variables through
    ``AssignVariableOp`` (TensorFlow is imported only for them, for ``init_from_checkpoint`` and for checkpoint
    tensors only ``RestoreV2`` can read); Keras variables on JAX from an array built shard by shard in the
    variable's own sharding (``jax.make_array_from_callback``: each device gets its slice, nothing is gathered,
    the layout is kept); on torch from a tensor sharing the host array's memory, which Keras copies into the
    parameter.

    ``rollback`` chooses what "all or nothing" costs:

    - ``"verify"`` (the default): before the first assignment every planned tensor is read once, in the same
      bounded batches, checked (length; crc32c for TF checkpoints; shape and dtype against the plan) and
      discarded; then the assignment pass runs with SIGINT and SIGTERM held back (delivered, e.g. as
      ``KeyboardInterrupt``, once it ends; only in the main thread: elsewhere Python does not deliver signals
      to this thread anyway). Extra memory: one batch plus the largest tensor; extra time: one more read of
      the source (from the page cache, usually). If the assignment pass still fails (a file changed between
      the passes, EIO), PartialApplyError names the variables assigned and those not.
    - ``"memory"``: the value each variable had is kept and put back on any failure, ``KeyboardInterrupt``
      included (then re-raised). Free on TensorFlow (variables are copy-on-write; the old buffers stay alive
      until the apply ends) and JAX (arrays are immutable); on torch, whose parameters change in place, every
      assigned variable is copied first (the model's size in extra memory).
    - ``"off"``: no verification, no restore; the fastest. A failure raises PartialApplyError saying how many
      variables were assigned.

    ``True`` means ``"memory"`` and ``False`` ``"off"`` (the former boolean option).

    Args:
        plan: a plan from ``build_plan`` (or ``Plan.from_json``) for this source and target.
        source: where tensors are read from: one Source, or for a plan over several named sources a
            mapping ``{source id: Source}`` (assignments without a source id read the only source).
        target: the variables to assign.
        method: ``"assign"`` (the default; any source, any plan) or ``"init_from_checkpoint"``.
        batch_bytes: upper bound on the source bytes read at once.
        rollback: ``"verify"``, ``"memory"`` or ``"off"`` (see above).
        progress: called as ``progress(done, total)`` with counts of assignments after each batch.

    Returns:
        An ApplyResult with counts and timing.

    Raises:
        PlanError: the plan has error-level problems, or an assignment's join and operations do not
            produce its target shape and dtype.
        TargetError: a planned target variable is missing, has another shape or dtype, a layout that cannot
            hold it, or is not a variable of the active Keras backend (e.g. a tf.Variable under JAX).
        SourceError: a planned source, or a tensor of it, is missing or has another shape or dtype.
        ApplyError: the method or rollback mode does not fit, or applying failed and the target is unchanged
            (the cause is chained). PartialApplyError: applying failed and the target is partly assigned.

    Example:
        >>> import keras, numpy as np
        >>> from mapper.plan import Assignment, Plan, RuleRef
        >>> from mapper.ops import Transpose
        >>> from mapper.sources.memory import MemorySource
        >>> from mapper.specs import TargetMap, TensorSpec, VariableMap
        >>> variable = keras.Variable(np.zeros((3, 2), "float32"))
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
    started = time.perf_counter()
    mode = rollback_mode(rollback)
    sources = resolve_sources(plan, source)
    slots, tf = _check(plan, sources, target, method=method, batch_bytes=batch_bytes)
    positions = {key: chosen.position for key, chosen in sources.items() if isinstance(chosen, PositionedSource)}
    batches = plan_batches(plan, batch_bytes, positions)
    if method == "init_from_checkpoint" and not tf.executing_eagerly():
        for source_id, chosen in sources.items():
            mine = [a for a in plan.assignments if a.source_id == source_id]
            if mine:
                tf.compat.v1.train.init_from_checkpoint(chosen.checkpoint_prefix, _init_map(mine, slots.by_name))
        if progress is not None:
            progress(len(plan.assignments), len(plan.assignments))
        read = sum(batch.nbytes for batch in batches)
        return ApplyResult(len(plan.assignments), read, len(batches), method, time.perf_counter() - started, mode)
    run = _Run(plan, sources, target, slots, mode=mode, tf=tf)
    run.prepare(batches, method)
    if mode == "verify":
        run.verify(batches)
        with signals_deferred():
            run.execute(batches, method, progress)
    else:
        run.execute(batches, method, progress)
    return ApplyResult(run.assigned, run.bytes_read, len(batches), method, time.perf_counter() - started, mode)


def rollback_mode(rollback: Rollback | bool) -> Rollback:
    """The rollback mode ``rollback`` names: one of ROLLBACKS, or ``True`` ("memory") / ``False`` ("off").

    Example:
        >>> rollback_mode(True), rollback_mode(False), rollback_mode("verify")
        ('memory', 'off', 'verify')
        >>> rollback_mode("undo")
        Traceback (most recent call last):
        mapper.errors.ApplyError: unknown rollback mode 'undo': use one of 'verify', 'memory', 'off' (or True / False)
    """
    if rollback is True:
        return "memory"
    if rollback is False:
        return "off"
    if rollback in ROLLBACKS:
        return rollback
    raise ApplyError(
        f"unknown rollback mode {rollback!r}: use one of {', '.join(map(repr, ROLLBACKS))} (or True / False)"
    )


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
            several named sources (one map serves one checkpoint), or TensorFlow is missing or the target's
            variables are not TensorFlow variables.

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
    check_plan(plan)
    _check_init_from_checkpoint_plan(plan)
    ids = list(dict.fromkeys(a.source_id for a in plan.assignments))
    if len(ids) > 1:
        raise ApplyError(
            f"the plan reads {len(ids)} sources ({', '.join(repr(i) for i in ids)}), and one init_from_checkpoint map "
            "serves one checkpoint; use apply_plan(plan, {name: source, ...}, target, method='init_from_checkpoint')"
        )
    tf = _import_tensorflow()
    slots = check_targets(plan, target, eager=tf.executing_eagerly())
    _check_tensorflow_slots(slots, target)
    return _init_map(plan.assignments, slots.by_name)


# --- checks ---------------------------------------------------------------------------------------


def _check(
    plan: Plan, sources: Mapping[str | None, Source], target: VariableTarget, *, method: str, batch_bytes: int
) -> tuple[Slots, Any]:
    """Every check that can run before the first assignment; the target's slots and TensorFlow if it is used."""
    check_plan(plan)
    if method not in METHODS:
        raise ApplyError(f"unknown method {method!r}: use one of {', '.join(map(repr, METHODS))}")
    check_batch_bytes(batch_bytes)
    tf = sys.modules.get("tensorflow")
    if method == "init_from_checkpoint":
        _check_init_from_checkpoint_plan(plan)
        tf = _import_tensorflow()
        for chosen in sources.values():
            if chosen.checkpoint_prefix is None:
                raise ApplyError(
                    f"method='init_from_checkpoint' reads TensorFlow checkpoints only, and {chosen.description} is a "
                    f"{type(chosen).__name__} with no checkpoint prefix; use method='assign', which reads any source"
                )
    eager = tf is None or tf.executing_eagerly()
    if method == "assign" and not eager:
        raise ApplyError(
            "method='assign' needs eager execution, but TensorFlow is building a graph here; in TF1 graph code use "
            "method='init_from_checkpoint' and run tf.compat.v1.global_variables_initializer() in a session"
        )
    slots = check_targets(plan, target, eager=eager)
    if method == "init_from_checkpoint":
        _check_tensorflow_slots(slots, target)
    check_sources(plan, sources)
    return slots, tf


def _import_tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ApplyError(
            f"method='init_from_checkpoint' runs TensorFlow's own restore, and TensorFlow cannot be imported "
            f"({error}); {_INSTALL_TF}, or use method='assign', which needs no TensorFlow"
        ) from error
    return tf


def _check_tensorflow_slots(slots: Slots, target: VariableTarget) -> None:
    if slots.by_name and not slots.tensorflow:
        raise ApplyError(
            f"method='init_from_checkpoint' assigns TensorFlow variables, and the variables of {target.description} "
            f"are Keras variables on the {slots.kind!r} backend; use method='assign', which reads TensorFlow "
            "checkpoints into any backend"
        )


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


# --- running --------------------------------------------------------------------------------------


class _Run:
    """One application of a plan: verifies, then assigns batch after batch, remembering what to restore on failure."""

    def __init__(
        self,
        plan: Plan,
        sources: Mapping[str | None, Source],
        target: VariableTarget,
        slots: Slots,
        *,
        mode: Rollback,
        tf: Any,
    ) -> None:
        self.plan = plan
        self.sources = sources
        self.target = target
        self.slots = slots
        self.mode = mode
        self.tf = tf
        # (slot, what its snapshot kept) for every slot about to be or already assigned ("memory" mode).
        self.saved: list[tuple[Any, Any]] = []
        self.order: list[str] = []  # target names in the order they are assigned
        self.touched = 0  # assignments done, in earlier batches and in this one
        self.partial = False  # an init_from_checkpoint batch was running: some of it may be assigned
        self.assigned = 0
        self.bytes_read = 0
        self.step = "starting"
        # The assignment being transformed or assigned, if any: the error message is built from it only on failure.
        self.current: Assignment | None = None
        self.action = ""
        self.writing: str | None = None  # a variable being written in place: it may hold part of its new value
        self.buffers = DirectBuffers()  # reused by the direct writes
        self.split: list[tuple[tuple[Assignment, ...], Batch]] = []  # per batch, from prepare(): (direct, the rest)

    def prepare(self, batches: Sequence[Batch], method: str) -> None:
        """Decide which tensors are written directly, and start making the staging buffer they need present."""
        self.split = [self._split(batch, method) for batch in batches]
        slots = self.slots.by_name
        staged = [
            tensor_bytes(a.target_shape, a.target_dtype)
            for direct, _ in self.split
            for a in direct
            if slots[a.target].uses_staging
        ]
        if staged:
            self.buffers.staging.prepare(max(staged))

    def verify(self, batches: Sequence[Batch]) -> None:
        """Read every batch once and check what it gives, changing nothing; ApplyError (target unchanged) if one fails.

        A source that can verify (``VerifyingSource``: TF checkpoints, safetensors) checks the bytes through one
        small reused buffer, ``VERIFY_THREADS`` batches at a time (positional reads and crc32c run without
        Python's lock, so the pass takes the time of reading the file once over that many cores); any other
        source's batch is read and checked like the assignment pass reads it. The first failing batch in order
        is the one reported.
        """
        count = len(batches)
        with ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="weight-mapper verify") as pool:
            checks = {
                number: pool.submit(chosen.verify, list(batch.names))
                for number, batch in enumerate(batches, 1)
                if isinstance(chosen := self.sources[batch.source_id], VerifyingSource)
            }
            try:
                for number, batch in enumerate(batches, 1):
                    chosen = self.sources[batch.source_id]
                    where = chosen.description
                    self.step = (
                        f"verifying the source: reading batch {number} of {count} ({quoted(batch.names)}) from {where}"
                    )
                    self._verify_batch(batch, checks.get(number))
            finally:
                for check in checks.values():  # after a failure or an interrupt, start no more
                    check.cancel()

    def _verify_batch(self, batch: Batch, check: Future[None] | None) -> None:
        chosen = self.sources[batch.source_id]
        try:
            if check is not None:
                check.result()
                return
            values = chosen.read(list(batch.names))
            for assignment in batch.assignments:
                check_reads(assignment, values, chosen.description)
        except Exception as error:
            raise self._failed(error) from error

    def execute(self, batches: Sequence[Batch], method: str, progress: Callable[[int, int], None] | None) -> None:
        """The assignment pass."""
        total = len(self.plan.assignments)
        split = self.split  # zip(strict=True) below refuses a run whose prepare() did not see these batches
        self.order = [a.target for direct, rest in split for a in (*direct, *rest.assignments)]
        assign = self._assign_tf if self.slots.tensorflow else self._assign_host
        try:
            for number, (batch, (direct, rest)) in enumerate(zip(batches, split, strict=True), 1):
                if self.mode == "memory":
                    self.step = f"saving the previous values of batch {number} of {len(batches)}"
                    self._save(batch.assignments)
                if method == "assign":
                    self._write_direct(number, len(batches), batch, direct)
                    if rest.assignments:
                        assign(number, len(batches), rest)
                else:
                    self._init_batch(number, len(batches), batch)
                self.bytes_read += batch.nbytes
                self.assigned += len(batch.assignments)
                if progress is not None:
                    self.step = f"reporting progress after batch {number} of {len(batches)}"
                    progress(self.assigned, total)
        except Exception as error:
            raise self._failed(error) from error
        except BaseException:  # KeyboardInterrupt, SystemExit: undo if we can, then let it stop the program
            if self.mode == "memory":
                self._restore()
            raise

    def _split(self, batch: Batch, method: str) -> tuple[tuple[Assignment, ...], Batch]:
        """The batch's assignments written directly (not in "memory" mode, whose snapshots keep the old buffers)."""
        if method != "assign" or self.mode == "memory":
            return (), batch
        return split_batch(batch, self.sources[batch.source_id], self.slots.by_name)

    def _write_direct(self, number: int, count: int, batch: Batch, direct: Sequence[Assignment]) -> None:
        if not direct:
            return
        chosen = self.sources[batch.source_id]
        if not isinstance(chosen, ChunkedSource):  # split_batch writes directly only from one
            raise ApplyError(f"{chosen.description} cannot be read in chunks, so nothing is written from it directly")
        self.step = f"batch {number} of {count} (read straight into the variables) from {chosen.description}"
        slots = self.slots.by_name
        for assignment in direct:
            self.current, self.action = assignment, "reading into the variable"
            slot = slots[assignment.target]
            # A slot that fills its variable's own memory leaves it partly written if the read fails midway. While
            # nothing is assigned the tensor is read whole first, so that a failure still leaves the target unchanged.
            own = slot.fills_own_memory
            whole_first = own and not self.touched
            self.writing = assignment.target if own and not whole_first and is_plain_copy(assignment) else None
            write_direct(assignment, chosen, slot, self.buffers, whole_first=whole_first)
            self.writing = None
            self.touched += 1
        self.current = None

    def _save(self, assignments: Sequence[Assignment]) -> None:
        slots = self.slots.by_name
        for assignment in assignments:
            slot = slots[assignment.target]
            self.saved.append((slot, slot.snapshot()))

    def _read(self, number: int, count: int, batch: Batch) -> tuple[Mapping[str, Any], str, frozenset[str]]:
        chosen = self.sources[batch.source_id]
        where = chosen.description
        self.step = f"reading batch {number} of {count} ({quoted(batch.names)}) from {where}"
        values = chosen.read(list(batch.names))
        self.step = f"batch {number} of {count}"
        return values, where, _handed_over(batch, chosen)

    def _assign_tf(self, number: int, count: int, batch: Batch) -> None:
        values, where, handed = self._read(number, count, batch)
        tf = self.tf
        tensor = tf.Tensor
        slots = self.slots.by_name
        value: Any = None
        # Per-tensor work is kept to the minimum: about 10 us of Python per variable besides the assign op.
        for assignment in batch.assignments:
            self.current, self.action = assignment, "transforming"
            if assignment.combine is None:
                value = values[assignment.source]
                if (
                    not assignment.operations
                    and type(value) is np.ndarray
                    and value.shape == assignment.source_shape
                    and dtype_name(value.dtype) == assignment.source_dtype
                ):  # the common case, checked here: transform's general checks cost more than the assign
                    value = to_tensor(value, tf, adopt=assignment.source in handed)
                elif assignment.operations or not isinstance(value, tensor):
                    value = transform((value,), assignment, where, tf, adopt=assignment.source in handed)
            else:
                value = assignment_value(assignment, values, where, tf)
            self.action = "assigning"
            slots[assignment.target].assign(value)
            self.touched += 1
        self.current = None
        del values, value  # release the batch before the next one is read

    def _assign_host(self, number: int, count: int, batch: Batch) -> None:
        values, where, handed = self._read(number, count, batch)
        slots = self.slots.by_name
        host: Any = None
        for assignment in batch.assignments:
            self.current, self.action = assignment, "transforming"
            members = [values[name] for name in assignment.source_names]
            adopt = assignment.combine is None and assignment.source in handed
            host, owned = host_value(members, assignment, where, adopt=adopt)
            self.action = "assigning"
            slots[assignment.target].assign(host, owned=owned)
            self.touched += 1
        self.current = None
        del values, host  # release the batch before the next one is read

    def _init_batch(self, number: int, count: int, batch: Batch) -> None:
        chosen = self.sources[batch.source_id]
        self.step = (
            f"init_from_checkpoint on batch {number} of {count} "
            f"({quoted([a.source for a in batch.assignments])}) from {chosen.description}"
        )
        self.partial = True
        self.tf.compat.v1.train.init_from_checkpoint(
            chosen.checkpoint_prefix, _init_map(batch.assignments, self.slots.by_name)
        )
        self.partial = False
        self.touched += len(batch.assignments)

    def _restore(self) -> list[str]:
        """Put back every saved value (each slot was saved once, before its first change); returns failures."""
        failed: list[str] = []
        for slot, saved in reversed(self.saved):
            try:
                slot.restore(saved)
            except Exception:  # keep restoring the others; the names are reported
                failed.append(slot.name)
        self.saved.clear()
        return failed

    def _failed(self, error: Exception) -> ApplyError:
        step = self.step
        if self.current is not None:
            current = self.current
            step = f"{self.action} {current.source!r} for {current.target!r} ({current.rule}) in {step}"
        head = f"applying the plan to {self.target.description} failed while {step}: {type(error).__name__}: "
        head += first_line(error)
        nothing = not self.touched and not self.partial and self.writing is None
        unchanged = f"{head}\nno variable had been assigned yet, so {self.target.description} is unchanged; fix the "
        unchanged += "cause and apply again"
        if self.mode != "memory":
            return ApplyError(unchanged) if nothing else self._partly(head)
        # Restore even when nothing is known to be assigned: a failed assign to a distributed variable
        # may have changed some of its replicas.
        failed = self._restore()
        if failed:
            return self._partly(
                f"{head}\nrestoring the previous values failed too for {len(failed)} variable{s(len(failed))} "
                f"({quoted(failed)}): {self.target.description} may be partly assigned; reload it"
            )
        if nothing:
            return ApplyError(unchanged)
        more = " (and possibly some of the failing batch)" if self.partial else ""
        return ApplyError(
            f"{head}\nthe {self.touched} variable{s(self.touched)} assigned before the failure{more} "
            f"{'was' if self.touched == 1 and not more else 'were'} restored to their previous values, so "
            f"{self.target.description} is unchanged; fix the cause and apply again"
        )

    def _partly(self, message: str) -> PartialApplyError:
        """The error for a target left partly assigned: which variables were assigned, which not."""
        done, rest = self.order[: self.touched], self.order[self.touched :]
        if self.mode == "memory":
            return PartialApplyError(message, assigned=done, not_assigned=rest)
        total = len(self.plan.assignments)
        more = " (and possibly some of the failing batch)" if self.partial else ""
        if self.writing is not None:
            more = f" ({self.writing!r}, being read into its own memory, holds part of its new value)"
        why = (
            "with rollback='off' nothing is restored"
            if self.mode == "off"
            else "the source was verified before the first assignment, so it changed or failed to read since"
        )
        return PartialApplyError(
            f"{message}\n{why}: {self.target.description} is partly assigned: {len(done)} of {total} variables"
            f"{more} have their new values ({_names(done)}), {len(rest)} do not ({_names(rest)}); fix the cause and "
            "apply again, or reload the model",
            assigned=done,
            not_assigned=rest,
        )


def _names(names: Sequence[str]) -> str:
    """A long list of variable names, folded into patterns (``layer_{0..11}/w``) and cut to a few."""
    return quoted(group_names(names)) if names else "none"


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


def _init_map(assignments: Sequence[Assignment], slots: Mapping[str, Any]) -> dict[str, Any] | list[tuple[str, Any]]:
    pairs = [(a.source, slots[a.target].variable) for a in assignments]
    mapping = dict(pairs)
    return mapping if len(mapping) == len(pairs) else pairs


# The batching and checking names are re-exported: they lived here before run/batches.py and run/values.py.
__all__ = [
    "METHODS",
    "ROLLBACKS",
    "ApplyResult",
    "Method",
    "Rollback",
    "apply_plan",
    "init_from_checkpoint_map",
    "rollback_mode",
]
