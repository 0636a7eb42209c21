"""The assignment plan: frozen data saying where every target's value comes from, and JSON for it."""

from __future__ import annotations

import enum
import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from mapper.dtypes import DTYPE_SIZES
from mapper.ops import Cast, Combine, Operation, Reshape, Transpose
from mapper.rules.ref import RuleRef

if TYPE_CHECKING:
    from pydantic import TypeAdapter

# Format 2 (this one) describes named sources and joins as records and drops Skip.side; format 1 is still read.
PLAN_FORMAT = 2
READS_FORMATS = (1, 2)


@dataclass(frozen=True, slots=True)
class JoinMember:
    """A source tensor a concat or stack joins after the assignment's own source.

    Example:
        >>> JoinMember("attn.k.weight", (256, 768)).shape
        (256, 768)
    """

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Join:
    """How an assignment joins its source with further tensors (same dtype), before its operations run.

    The assignment's ``source`` and ``source_shape`` are the first member; ``others`` are the rest, in order.

    Example:
        >>> from mapper.ops import Concat
        >>> Join(Concat(0), (JoinMember("k", (1, 4)), JoinMember("v", (1, 4)))).combine.describe()
        'concat[axis 0]'
    """

    combine: Combine
    others: tuple[JoinMember, ...] = ()


@dataclass(frozen=True, slots=True)
class NamedSource:
    """One source of a plan over several named sources: the id rules choose it by, and how reports name it.

    Example:
        >>> NamedSource("backbone", "TensorFlow checkpoint runs/ckpt-1").id
        'backbone'
    """

    id: str
    description: str


def _changes_nothing(operation: Operation, shape: tuple[int, ...], dtype: str) -> bool:
    """Whether ``operation`` leaves a tensor of ``shape`` and ``dtype`` as it is (only casts, reshapes, transposes)."""
    if isinstance(operation, Cast):
        return operation.dtype == dtype
    if isinstance(operation, Reshape):
        return operation.shape == shape
    if isinstance(operation, Transpose):
        return operation.perm == tuple(range(len(operation.perm)))
    return False


@dataclass(frozen=True, slots=True)
class Assignment:
    """One target variable filled from one source tensor, through zero or more operations.

    ``target`` is the variable's canonical (path) name; ``target_key`` the name the rule produced
    in the rule file's namespace. Shapes and dtypes are recorded before and after the operations.

    Example:
        >>> a = Assignment("d/kernel", "d/kernel", "old/w", RuleRef("r.toml", 1), (), (2, 3), "float32", (2, 3), "float32")
        >>> a.transformed
        False
    """

    target: str
    target_key: str
    source: str
    rule: RuleRef
    operations: tuple[Operation, ...]
    source_shape: tuple[int, ...]
    source_dtype: str
    target_shape: tuple[int, ...]
    target_dtype: str
    # Concat/stack: the tensors joined after ``source``, and how.
    join: Join | None = None
    # Plans over several named sources: which one ``source`` (and the join's members) belong to.
    source_id: str | None = None

    @property
    def transformed(self) -> bool:
        """Whether the operations (or a join) change the tensor.

        A cast to its own dtype, a reshape to its own shape or an identity transpose stays in ``operations`` (the
        executor runs what the plan lists) but changes nothing, so it does not make an assignment "transformed".

        Example:
            >>> from mapper.ops import Cast
            >>> a = Assignment("v", "v", "w", RuleRef("r.toml", 1), (Cast("float32"),), (2,), "float32", (2,), "float32")
            >>> a.transformed
            False
        """
        if self.join is not None:
            return True
        shape, dtype = self.source_shape, self.source_dtype
        for operation in self.operations:
            if not _changes_nothing(operation, shape, dtype):
                return True
            shape, dtype = operation.infer(shape, dtype)
        return False

    @property
    def combine(self) -> Combine | None:
        """The join's concat or stack, None for an assignment from one tensor."""
        return None if self.join is None else self.join.combine

    @property
    def source_names(self) -> tuple[str, ...]:
        """Every source tensor this assignment reads, in order."""
        others = () if self.join is None else tuple(member.name for member in self.join.others)
        return (self.source, *others)

    @property
    def source_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shape of each of ``source_names``."""
        others = () if self.join is None else tuple(member.shape for member in self.join.others)
        return (self.source_shape, *others)

    @property
    def members(self) -> tuple[str, ...]:
        """A join's members in order (``source`` first); () for an assignment from one tensor."""
        return () if self.join is None else self.source_names


class SkipKind(str, enum.Enum):
    """Why a name was left alone."""

    RULE = "rule"  # a skip rule took the source name
    GUARD = "guard"  # a rule matched, but its guard failed with on_fail = "skip"
    KEEP = "keep"  # a keep rule leaves the target at its initial value


@dataclass(frozen=True, slots=True)
class Skip:
    """A source tensor or target variable deliberately not used, with the reason a report shows.

    A keep leaves a target variable; the other kinds leave a source tensor (``side`` says which).

    Example:
        >>> Skip("global_step", SkipKind.RULE, "optimizer state", RuleRef("r.toml", 3)).side
        'source'
    """

    name: str
    kind: SkipKind
    reason: str
    rule: RuleRef
    source_shape: tuple[int, ...] | None = None
    target_shape: tuple[int, ...] | None = None
    target: str | None = None  # for a guard skip: the target the rule named
    detail: str | None = None  # for a guard skip: what the guard found, e.g. "shape [10] is not [5]"
    source_id: str | None = None  # plans over several named sources: which one ``name`` belongs to

    @property
    def side(self) -> Literal["source", "target"]:
        """Whether ``name`` is a source tensor or a target variable."""
        return "target" if self.kind is SkipKind.KEEP else "source"


class Severity(str, enum.Enum):
    """How much a problem matters: errors stop ``apply``, warnings are reported."""

    ERROR = "error"
    WARNING = "warning"


class ProblemKind(str, enum.Enum):
    """What kind of thing went wrong while planning."""

    UNUSED_SOURCE = "unused_source"
    UNFILLED_TARGET = "unfilled_target"
    DEAD_RULE = "dead_rule"
    DOUBLE_FILL = "double_fill"
    MISSING_TARGET = "missing_target"
    SHAPE_MISMATCH = "shape_mismatch"
    DTYPE_MISMATCH = "dtype_mismatch"
    GUARD_FAILED = "guard_failed"
    BAD_OPERATION = "bad_operation"
    BAD_TEMPLATE = "bad_template"
    BAD_GROUP = "bad_group"  # a concat/stack group with a missing or duplicated member
    UNKNOWN_SOURCE = "unknown_source"  # a rule names a source the plan was not given
    LINT = (
        "lint"  # a rule that works but is probably not what was meant (see mapper.authoring.lint; ``code`` says which)
    )


@dataclass(frozen=True, slots=True)
class Problem:
    """Something the planner found wrong, with the names and rule involved.

    Example:
        >>> p = Problem(ProblemKind.MISSING_TARGET, Severity.ERROR, "no target 'x'", names=("x",))
        >>> p.is_error
        True
    """

    kind: ProblemKind
    severity: Severity
    message: str
    rule: RuleRef | None = None
    names: tuple[str, ...] = ()
    code: str | None = None  # a lint code such as "M102", for problems a rule can silence

    @property
    def is_error(self) -> bool:
        """Whether this problem stops the plan from being applied."""
        return self.severity is Severity.ERROR


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """A name with its shape and dtype, for unused sources and unfilled targets.

    Example:
        >>> TensorEntry("global_step", (), "int64").shape
        ()
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    source_id: str | None = None  # for unused sources of a plan over several named sources


@dataclass(frozen=True)
class Plan:
    """Everything an executor will do and everything it will leave, decided before any tensor is read.

    ``source`` describes the one source, or lists the named sources of a plan over several.

    Example:
        >>> plan = Plan(rule_files=("r.toml",), source="ckpt", target="model", namespace="path")
        >>> plan.ok, plan.counts()["mapped"]
        (True, 0)
    """

    rule_files: tuple[str, ...]
    source: str | tuple[NamedSource, ...]
    target: str
    namespace: str
    assignments: tuple[Assignment, ...] = ()
    skips: tuple[Skip, ...] = ()
    unused_sources: tuple[TensorEntry, ...] = ()
    unfilled_targets: tuple[TensorEntry, ...] = ()
    problems: tuple[Problem, ...] = ()
    format: int = PLAN_FORMAT
    _by_target: dict[str, Assignment] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_target", {a.target: a for a in self.assignments})

    @property
    def ok(self) -> bool:
        """True when no problem is an error, so the plan can be applied."""
        return not any(problem.is_error for problem in self.problems)

    @property
    def errors(self) -> tuple[Problem, ...]:
        """The error-level problems."""
        return tuple(problem for problem in self.problems if problem.is_error)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        """The warning-level problems."""
        return tuple(problem for problem in self.problems if not problem.is_error)

    @property
    def has_operations(self) -> bool:
        """Whether any assignment transforms its tensor (``init_from_checkpoint`` cannot)."""
        return any(assignment.transformed for assignment in self.assignments)

    def assignment_for(self, target: str) -> Assignment | None:
        """The assignment filling canonical target name ``target``, if any."""
        return self._by_target.get(target)

    def counts(self) -> dict[str, int]:
        """Counts reports lead with: mapped, transformed, skipped by rule/guard/keep, unused, unfilled, errors, warnings."""
        kinds = Counter(skip.kind for skip in self.skips)
        return {
            "mapped": len(self.assignments),
            "transformed": sum(1 for a in self.assignments if a.transformed),
            "skipped_by_rule": kinds[SkipKind.RULE],
            "skipped_by_guard": kinds[SkipKind.GUARD],
            "kept_by_rule": kinds[SkipKind.KEEP],
            "unused": len(self.unused_sources),
            "unfilled": len(self.unfilled_targets),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
        }

    @cached_property
    def source_bytes(self) -> int:
        """Bytes of source tensors the plan reads, each tensor once (fixed-size dtypes only)."""
        # Each source tensor once: split parts of one tensor are read together.
        sizes = {
            (a.source_id, name): math.prod(shape) * DTYPE_SIZES.get(a.source_dtype, 0)
            for a in self.assignments
            for name, shape in zip(a.source_names, a.source_shapes, strict=True)
        }
        return sum(sizes.values())

    def to_json(self, *, indent: int | None = 2) -> str:
        """Serialise to JSON; ``Plan.from_json`` reads it back into an equal plan.

        Example:
            >>> plan = Plan(rule_files=(), source="s", target="t", namespace="path")
            >>> Plan.from_json(plan.to_json()) == plan
            True
        """
        return _adapter().dump_json(self, indent=indent).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        """Read a plan written by ``to_json`` (this format or format 1); raises PlanError on any other.

        Example:
            >>> old = '{"format": 1, "rule_files": [], "source": "s", "target": "t", "namespace": "path"}'
            >>> Plan.from_json(old) == Plan(rule_files=(), source="s", target="t", namespace="path")
            True
        """
        import json

        from pydantic import ValidationError

        from mapper.errors import PlanError

        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PlanError(f"not a plan: invalid JSON: {error}", problems=(), plan=None) from None
        version = data.get("format") if isinstance(data, dict) else None
        if type(version) is not int or version not in READS_FORMATS:
            raise PlanError(
                f"plan format {version!r} is not supported (this weight-mapper reads formats "
                f"{' and '.join(map(str, READS_FORMATS))}); "
                "re-create the plan with this version",
                problems=(),
                plan=None,
            )
        if version == 1:
            data = _from_format_1(data)
        try:
            return _adapter().validate_python(data)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise PlanError(
                f"not a valid plan: {where}: {first['msg']} ({error.error_count()} problems)", problems=(), plan=None
            ) from None

    @property
    def named_sources(self) -> tuple[NamedSource, ...]:
        """The named sources of a plan over several; () for a plan over one source."""
        return () if isinstance(self.source, str) else self.source


@functools.cache
def _adapter() -> TypeAdapter[Plan]:
    from pydantic import TypeAdapter

    return TypeAdapter(Plan)


# --- format 1 ------------------------------------------------------------------------------------------------------
# Format 1 held named sources as "id=description, id=description", each join in three fields (its first member
# also being the assignment's source) and each skip's side beside the kind that decides it.


def _from_format_1(data: dict[str, Any]) -> dict[str, Any]:
    """Format-1 plan data rewritten as format 2; anything unexpected is left for validation to report."""
    result = {**data, "format": PLAN_FORMAT}
    assignments = data.get("assignments")
    if isinstance(assignments, list):
        result["assignments"] = [_assignment_from_format_1(item) for item in assignments]
    skips = data.get("skips")
    if isinstance(skips, list):
        result["skips"] = [
            {key: value for key, value in item.items() if key != "side"} if isinstance(item, dict) else item
            for item in skips
        ]
    if isinstance(data.get("source"), str):
        named = _named_sources_from_format_1(data["source"], _source_ids(data))
        if named:
            result["source"] = named
    return result


def _assignment_from_format_1(item: object) -> object:
    if not isinstance(item, dict):
        return item
    result = {key: value for key, value in item.items() if key not in ("members", "member_shapes", "combine")}
    members, shapes, combine = item.get("members") or [], item.get("member_shapes") or [], item.get("combine")
    if combine is None:
        result["join"] = None
    elif isinstance(members, list) and isinstance(shapes, list):
        others = [{"name": name, "shape": shape} for name, shape in zip(members[1:], shapes[1:], strict=False)]
        result["join"] = {"combine": combine, "others": others}
    return result


def _source_ids(data: dict[str, Any]) -> set[str]:
    """The source ids format-1 records carry (a plan over one source carries none)."""
    records = [
        record
        for key in ("assignments", "skips", "unused_sources")
        if isinstance(data.get(key), list)
        for record in data[key]
        if isinstance(record, dict)
    ]
    return {record["source_id"] for record in records if isinstance(record.get("source_id"), str)}


def _named_sources_from_format_1(text: str, ids: set[str]) -> list[dict[str, str]]:
    """``[{id, description}]`` from format 1's ``id=description, id=description``.

    An id the text does not name gets ""; a text that names no id is a plain description (a hand-made plan), so
    the result is empty.

    Example:
        >>> _named_sources_from_format_1("a=x.ckpt, b=y, z.npz", {"a", "b"})
        [{'id': 'a', 'description': 'x.ckpt'}, {'id': 'b', 'description': 'y, z.npz'}]
        >>> _named_sources_from_format_1("two sources", {"a", "b"})
        []
    """
    import re

    starts = sorted(
        (found.start(), found.end(), source_id)
        for source_id in ids
        for found in [re.search(rf"(?:^|(?<=, )){re.escape(source_id)}=", text)]
        if found is not None
    )
    if not starts:
        return []
    described: dict[str, str] = {}
    for position, (_, end, source_id) in enumerate(starts):
        stop = starts[position + 1][0] - len(", ") if position + 1 < len(starts) else len(text)
        described[source_id] = text[end:stop]
    order = [source_id for _, _, source_id in starts] + sorted(ids - set(described))
    return [{"id": source_id, "description": described.get(source_id, "")} for source_id in order]
