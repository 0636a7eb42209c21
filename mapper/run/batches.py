"""Reading a plan's sources without TensorFlow: which source serves what, every check, and the batches to read."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mapper.errors import ApplyError, OperationError, PlanError, SourceError
from mapper.ops import NUMPY, apply_operations, combine_values, infer_all
from mapper.plan import Assignment, Plan
from mapper.run.values import fused_array, spec_text, tensor_bytes
from mapper.sources.base import Source
from mapper.text import quoted, s

DEFAULT_BATCH_BYTES = 64 * 2**20
# Tensors per read, whatever their size: one RestoreV2 over thousands of small tensors is slower than
# several over a few dozen each (FIELD-NOTES: 0.33 s against 0.14 s for 5,000 variables).
MAX_BATCH_TENSORS = 64

Sources = Source | Mapping[str, Source]
# A source tensor of a plan over several sources: (source id, name).
_Key = tuple[str | None, str]


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
                f"the plan reads source {source_id!r} ({count} assignment{s(count)}, first {first.source!r} -> "
                f"{first.target!r}, {first.rule}), but the sources given are {', '.join(map(repr, given))}; "
                f"pass it as {source_id}=PATH ({{{source_id!r}: source}} in Python)",
                path=source_id,
            )
    return resolved


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
    if plan.errors:
        raise PlanError.from_plan(plan, executor=True)
    for assignment in plan.assignments:
        _check_assignment(plan, assignment)


def _check_assignment(plan: Plan, assignment: Assignment) -> None:
    where = f"assignment {assignment.source!r} -> {assignment.target!r} ({assignment.rule}) is inconsistent"
    again = "the plan was edited or made by another version, so plan again"
    combine = assignment.combine
    members = assignment.members
    try:
        shape, dtype = assignment.source_shape, assignment.source_dtype
        if combine is not None:
            shape, dtype = combine.infer(assignment.source_shapes, dtype)
        shape, dtype = infer_all(assignment.operations, shape, dtype)
    except OperationError as error:
        raise PlanError(f"{where}: {error}; {again}", problems=(), plan=plan) from error
    if shape != assignment.target_shape or dtype != assignment.target_dtype:
        start = spec_text(assignment.source_shape, assignment.source_dtype)
        if combine is not None:
            start = f"{len(members)} members {start}, ..."
        raise PlanError(
            f"{where}: its {'join and ' if combine is not None else ''}operations turn {start} into "
            f"{spec_text(shape, dtype)}, not the planned {spec_text(assignment.target_shape, assignment.target_dtype)}; {again}",
            problems=(),
            plan=plan,
        )


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
        shapes = assignment.source_shapes
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
                    f"tensor {name!r} of {chosen.description} is {spec_text(spec.shape, spec.dtype)}, but the plan "
                    f"expects {spec_text(shape, assignment.source_dtype)} {role}for {assignment.target!r} "
                    f"({assignment.rule}); the source changed since the plan was made, so plan again against this source",
                    path=chosen.description,
                )


def plan_batches(
    plan: Plan, batch_bytes: int, positions: Mapping[str | None, Callable[[str], tuple[int, int]]] | None = None
) -> list[Batch]:
    """Cut the plan's reads into batches of at most ``batch_bytes`` bytes and ``MAX_BATCH_TENSORS`` tensors.

    Tensors that one assignment reads together (a concat or stack group) stay in one batch, with every
    assignment they feed; each source tensor is read once, whatever number of targets it feeds. Batches
    read one source each, sources in the order the plan first reads them; a group larger than the budget
    is a batch of its own. Within a source that ``positions`` gives a position function for (see
    ``PositionedSource``), groups are read in the order their tensors lie in its files; otherwise in the order
    the plan first reads them.

    Example:
        >>> from mapper.plan import Assignment, RuleRef
        >>> ref = RuleRef("r.toml", 1)
        >>> plan = Plan(("r.toml",), "s", "t", "path", assignments=tuple(
        ...     Assignment(f"t{i}", f"t{i}", f"s{i}", ref, (), (4,), "float32", (4,), "float32") for i in range(3)))
        >>> [batch.names for batch in plan_batches(plan, 32)]
        [('s0', 's1'), ('s2',)]
    """
    by_source: dict[str | None, list[_Group]] = {}
    for group in _read_groups(plan):
        by_source.setdefault(group.source_id, []).append(group)
    for source_id, position in (positions or {}).items():
        if source_id in by_source:
            by_source[source_id] = sorted(by_source[source_id], key=lambda group: min(map(position, group.names)))
    return [batch for source_id, groups in by_source.items() for batch in _cut(source_id, groups, batch_bytes)]


@dataclass(frozen=True, slots=True)
class _Group:
    """Source tensors that must be read together (the members of joins that share a tensor), and what they feed."""

    source_id: str | None
    names: tuple[str, ...]
    nbytes: int
    assignments: tuple[Assignment, ...]


def _read_groups(plan: Plan) -> list[_Group]:
    """The plan's source tensors in groups read together, in the order the plan first reads them."""
    forest = _Forest()  # over the tensors that joins read: the others are groups of one
    sizes: dict[_Key, int] = {}
    for assignment in plan.assignments:
        shapes = assignment.source_shapes
        keys = [(assignment.source_id, name) for name in assignment.source_names]
        for key, shape in zip(keys, shapes, strict=True):
            if key not in sizes:
                sizes[key] = tensor_bytes(shape, assignment.source_dtype)
        if len(keys) > 1:
            forest.join(keys)
    find = forest.find
    members: dict[_Key, list[_Key]] = {}
    for key in sizes:
        members.setdefault(find(key), []).append(key)
    served: dict[_Key, list[Assignment]] = {root: [] for root in members}
    for assignment in plan.assignments:
        served[find((assignment.source_id, assignment.source))].append(assignment)
    return [
        _Group(root[0], (keys[0][1],), sizes[root], tuple(served[root]))
        if len(keys) == 1
        else _Group(root[0], tuple(name for _, name in keys), sum(sizes[key] for key in keys), tuple(served[root]))
        for root, keys in members.items()
    ]


class _Forest:
    """Union-find over source tensors: the tensors one join reads end up with one root."""

    def __init__(self) -> None:
        self._parent: dict[_Key, _Key] = {}

    def root(self, key: _Key) -> _Key:
        """The representative of ``key``'s group (halving the path on the way, so that finds stay short)."""
        parent = self._parent
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def find(self, key: _Key) -> _Key:
        """``key``'s representative; ``key`` itself if no join has read it."""
        return self.root(key) if key in self._parent else key

    def join(self, keys: list[_Key]) -> None:
        """Put ``keys`` in one group."""
        first = self.root(keys[0])
        for key in keys[1:]:
            self._parent[self.root(key)] = first
            first = self.root(first)


def _cut(source_id: str | None, groups: list[_Group], batch_bytes: int) -> list[Batch]:
    """One source's groups cut into batches within ``batch_bytes`` and ``MAX_BATCH_TENSORS``; a group is never split."""
    batches: list[Batch] = []
    names: list[str] = []
    assignments: list[Assignment] = []
    total = 0
    for group in groups:
        if names and (total + group.nbytes > batch_bytes or len(names) + len(group.names) > MAX_BATCH_TENSORS):
            batches.append(Batch(source_id, tuple(names), total, tuple(assignments)))
            names, assignments, total = [], [], 0
        names.extend(group.names)
        assignments.extend(group.assignments)
        total += group.nbytes
    if names:
        batches.append(Batch(source_id, tuple(names), total, tuple(assignments)))
    return batches


class ValueStream:
    """Every value a plan gives its targets, read and transformed batch by batch, for writers without variables.

    Constructing it runs every check that needs no target (the plan, the sources, ``batch_bytes``);
    iterating reads one batch at a time and yields it with ``[(assignment, NumPy array), ...]`` in the
    batch's order. No TensorFlow is needed: an untransformed tensor is handed on as its source read it, and a
    transformed one is copied once with its operations fused into the copy (``fused_array``). A tensor a source
    returns as a ``tf.Tensor`` (TF checkpoint strings, partitioned tensors) is taken as its NumPy array. Drop the
    values before asking for the next batch to keep memory bounded by one batch. ``step`` says what the stream
    was doing, for error messages when iterating fails.

    Args:
        plan: a plan without errors.
        source: one Source, or ``{source id: Source}`` for a plan over named sources.
        batch_bytes: upper bound on the source bytes read at once.

    Raises:
        PlanError: see ``check_plan``. SourceError: see ``resolve_sources`` and ``check_sources``.
        ApplyError: ``batch_bytes`` is not a positive int.

    Example:
        >>> from mapper.plan import Assignment, RuleRef
        >>> from mapper.ops import SplitPart
        >>> from mapper.sources.memory import MemorySource
        >>> ref = RuleRef("r.toml", 1)
        >>> parts = [Assignment(f"p{i}", f"p{i}", "w", ref, (SplitPart(0, i, 2, 2 * i, 2 * i + 2),), (4,), "int64",
        ...                     (2,), "int64") for i in range(2)]
        >>> stream = ValueStream(Plan(("r.toml",), "s", "t", "path", assignments=tuple(parts)),
        ...                      MemorySource({"w": np.arange(4)}))
        >>> [(a.target, value.tolist()) for batch, items in stream for a, value in items]
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

    def __iter__(self) -> Iterator[tuple[Batch, list[tuple[Assignment, np.ndarray]]]]:
        count = len(self.batches)
        for number, batch in enumerate(self.batches, 1):
            chosen = self.sources[batch.source_id]
            self.step = f"reading batch {number} of {count} ({quoted(batch.names)}) from {chosen.description}"
            values = chosen.read(list(batch.names))
            items: list[tuple[Assignment, np.ndarray]] = []
            for assignment in batch.assignments:
                self.step = (
                    f"transforming {assignment.source!r} for {assignment.target!r} ({assignment.rule}) "
                    f"in batch {number} of {count}"
                )
                items.append((assignment, array_value(assignment, values, chosen.description)))
            del values
            self.step = f"writing batch {number} of {count}"
            yield batch, items
            del items  # release the batch before the next one is read


def array_value(assignment: Assignment, values: Mapping[str, Any], where: str) -> np.ndarray:
    """The assignment's target value as a NumPy array, from the batch's values, with no TensorFlow.

    Each member is checked against the shape and dtype the plan read it with. Without a join or operations the
    member itself is returned (no copy); otherwise the result of ``fused_array`` (one copy, operations fused into
    it), or for strings the result of NumPy's own operations.

    Raises:
        SourceError: a member does not have the shape and dtype the plan read it with.

    Example:
        >>> from mapper.ops import Transpose
        >>> from mapper.plan import RuleRef
        >>> a = Assignment("t", "t", "w", RuleRef("r.toml", 1), (Transpose((1, 0)),), (1, 2), "int64", (2, 1), "int64")
        >>> array_value(a, {"w": np.array([[1, 2]])}, "memory").tolist()
        [[1], [2]]
        >>> array_value(a, {"w": np.zeros(2, "int64")}, "memory")
        Traceback (most recent call last):
        mapper.errors.SourceError: reading 'w' from memory gave [2] int64, not the [1, 2] int64 its specs promised; ...
    """
    members = [_as_array(values[name]) for name in assignment.source_names]
    for (array, dtype), name, shape in zip(members, assignment.source_names, assignment.source_shapes, strict=True):
        if tuple(array.shape) != shape or dtype != assignment.source_dtype:
            raise SourceError(
                f"reading {name!r} from {where} gave {spec_text(tuple(array.shape), dtype)}, not the "
                f"{spec_text(shape, assignment.source_dtype)} its specs promised; the source is damaged "
                "or changed while applying",
                path=where,
            )
    arrays = [array for array, _ in members]
    if assignment.combine is None and not assignment.operations:
        return arrays[0]
    if arrays[0].dtype.kind in "OSU":  # strings: NumPy's operations on object arrays (no cast applies to them)
        joined = arrays[0] if assignment.combine is None else combine_values(assignment.combine, arrays, NUMPY)
        return np.asarray(apply_operations(assignment.operations, joined, NUMPY))
    result, _ = fused_array(arrays, assignment)
    return result


def _as_array(value: Any) -> tuple[np.ndarray, str]:
    """A source's value as a NumPy array (a ``tf.Tensor``'s on the CPU without a copy), and its dtype's name."""
    if hasattr(value, "numpy"):  # a tf.Tensor: its dtype name says "string" where NumPy says "object"
        return np.asarray(value.numpy()), str(value.dtype.name)
    array = np.asarray(value)
    return array, str(array.dtype)


__all__ = [
    "DEFAULT_BATCH_BYTES",
    "MAX_BATCH_TENSORS",
    "Batch",
    "Sources",
    "ValueStream",
    "array_value",
    "check_batch_bytes",
    "check_plan",
    "check_sources",
    "plan_batches",
    "resolve_sources",
]
