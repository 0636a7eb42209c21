"""Plan reports: compact text for terminals, Markdown for pull requests, JSON for machines; strings only."""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from mapper.dtypes import DTYPE_SIZES
from mapper.errors import MapperError
from mapper.naming import (
    PairGroup,
    escape,
    expand_pattern,
    group_names,
    group_pairs,
    join_name,
    render_numbers,
    split_name,
)
from mapper.ops import Operation, SplitPart
from mapper.plan import Assignment, Plan, Problem, ProblemKind, RuleRef, Skip, SkipKind, TensorEntry
from mapper.specs import format_shape
from mapper.text import natural_key

__all__ = [
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "PairGroup",
    "ReportFormat",
    "expand_pattern",
    "group_names",
    "group_pairs",
    "render",
    "render_json",
    "render_markdown",
    "render_text",
]

ReportFormat = Literal["text", "markdown", "json"]
REPORT_FORMAT = "weight-mapper report"
REPORT_VERSION = 1

# Narrowest text report we lay out; narrower requests are widened to this.
MIN_WIDTH = 60
# Grouped rows a Markdown section shows before it folds into <details>, and at most.
_MD_FOLD_ROWS = 10
_MD_MAX_ROWS = 200

# ---------------------------------------------------------------------------------------------------------------------
# What the reports show, computed once for text and Markdown.
# ---------------------------------------------------------------------------------------------------------------------

_COUNT_LABELS = {
    "mapped": "mapped",
    "transformed": "transformed",
    "skipped_by_rule": "skipped by rule",
    "skipped_by_guard": "skipped by guard",
    "kept_by_rule": "kept by rule",
    "unused": "unused sources",
    "unfilled": "unfilled targets",
    "errors": "errors",
    "warnings": "warnings",
}
# The text report's count grid: what happens, what is left on purpose, what is wrong.
_COUNT_COLUMNS = (
    ("mapped", "transformed"),
    ("skipped_by_rule", "skipped_by_guard", "kept_by_rule"),
    ("unused", "unfilled", "errors", "warnings"),
)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _verdict(plan: Plan) -> str:
    """``OK`` or ``FAILED with 3 errors``."""
    return "OK" if plan.ok else f"FAILED with {_plural(len(plan.errors), 'error')}"


def _summary(plan: Plan) -> str:
    """The verdict line's tail: the counts that are not zero, mapped always."""
    return ", ".join(_summary_parts(plan))


def _summary_parts(plan: Plan) -> list[str]:
    counts = plan.counts()
    parts = [
        f"{counts['mapped']} mapped" + (f" ({counts['transformed']} transformed)" if counts["transformed"] else "")
    ]
    skipped = counts["skipped_by_rule"] + counts["skipped_by_guard"]
    parts += [f"{skipped} skipped"] if skipped else []
    parts += [f"{counts['kept_by_rule']} kept"] if counts["kept_by_rule"] else []
    parts += [_plural(counts["unused"], "unused source")] if counts["unused"] else []
    parts += [_plural(counts["unfilled"], "unfilled target")] if counts["unfilled"] else []
    parts += [_plural(counts["warnings"], "warning")] if counts["warnings"] else []
    return parts


def _named_sources(plan: Plan) -> list[tuple[str, str]] | None:
    """``[(id, description)]`` for a plan over several named sources, None for a single-source plan.

    The ids are those the plan's records carry; descriptions come from ``Plan.source``, which a plan over a
    SourceSet holds as ``id=description, id=description``. An id whose description cannot be found gets "".
    """
    carried = [
        *(assignment.source_id for assignment in plan.assignments),
        *(skip.source_id for skip in plan.skips),
        *(entry.source_id for entry in plan.unused_sources),
    ]
    ids = {source_id for source_id in carried if source_id is not None}
    if not ids:
        return None
    text = plan.source
    starts = sorted(
        (found.start(), found.end(), source_id)
        for source_id in ids
        for found in [re.search(rf"(?:^|(?<=, )){re.escape(source_id)}=", text)]
        if found is not None
    )
    described: dict[str, str] = {}
    for position, (_, end, source_id) in enumerate(starts):
        stop = starts[position + 1][0] - len(", ") if position + 1 < len(starts) else len(text)
        described[source_id] = text[end:stop]
    order = [source_id for _, _, source_id in starts] + sorted(ids - set(described))
    return [(source_id, described.get(source_id, "")) for source_id in order]


def _rule_label(rule: RuleRef) -> str:
    """``rules/bert.toml#3 'head'``; keep rules count separately: ``rules/bert.toml#keep.1``."""
    where = f"{rule.file}#{rule.index}" if rule.section == "rules" else f"{rule.file}#keep.{rule.index}"
    return where + (f" {rule.name!r}" if rule.name else "")


def _rule_order(plan: Plan) -> Callable[[RuleRef | None], tuple[int, str, int, int]]:
    files = {file: position for position, file in enumerate(plan.rule_files)}

    def key(rule: RuleRef | None) -> tuple[int, str, int, int]:
        if rule is None:
            return (len(files) + 1, "", 0, 0)
        return (files.get(rule.file, len(files)), rule.file, 0 if rule.section == "rules" else 1, rule.index)

    return key


def _operations(operations: Sequence[Operation]) -> str:
    return " ".join(operation.describe() for operation in operations)


@dataclass(frozen=True, slots=True)
class _AssignmentRow:
    count: int
    target: str
    source: str  # as shown: a pattern (with ``source_id:``), a combine and its members, or "same name"
    operations: str
    shapes: str
    same: bool = False  # the source is named like the target


@dataclass(frozen=True, slots=True)
class _NameRow:
    count: int
    name: str
    other: str | None  # a guard skip's target when its name differs
    source_shape: tuple[int, ...] | None
    target_shape: tuple[int, ...] | None
    dtype: str = ""
    detail: str | None = None  # what a guard found, when it adds to the shapes
    source_id: str | None = None  # plans over several named sources: the source ``name`` belongs to


@dataclass(frozen=True, slots=True)
class _ProblemRow:
    count: int
    kind: str
    message: str
    rule: RuleRef | None
    names: tuple[str, ...]  # grouped names the message does not already show


def _source_prefix(source_id: str | None) -> str:
    """``backbone:`` before a name (or pattern) of a named source; nothing for single-source plans."""
    return "" if source_id is None else escape(source_id) + ":"


def _source_shape(assignment: Assignment, times: str) -> str:
    """The source side of the shapes: one shape, ``3 x [2, 4]`` for equal members, ``[8, 8] + [8, 2]`` otherwise."""
    shapes = assignment.member_shapes
    if not shapes:
        return format_shape(assignment.source_shape)
    if len(set(shapes)) == 1:
        return f"{len(shapes)} {times} {format_shape(shapes[0])}"
    return " + ".join(format_shape(shape) for shape in shapes)


def _assignment_shapes(assignment: Assignment, *, verbose: bool, arrow: str, times: str = "x") -> str:
    source, target = _source_shape(assignment, times), format_shape(assignment.target_shape)
    if assignment.source_dtype == assignment.target_dtype:
        if not verbose:
            return f"{source} {arrow} {target}" if assignment.transformed else ""
        if not assignment.transformed:
            return f"{target} {assignment.target_dtype}"
        return f"{source} {arrow} {target} {assignment.target_dtype}"
    if not verbose:
        return f"{source} {arrow} {target}"
    return f"{source} {assignment.source_dtype} {arrow} {target} {assignment.target_dtype}"


# Stands in, inside a name, for the part that varies between the members of a group or the parts of a split, so
# that group_pairs can group what is left; names holding it are never grouped.
_MARK = "\ue000"


def _alternatives(values: Sequence[str]) -> str:
    """Values in the order given, as one brace group: ``{q,k,v}``, or ``{0..11}`` for a run of numbers."""
    if len(values) >= 3 and all(re.fullmatch(r"0|[1-9][0-9]{0,17}", value) for value in values):
        numbers = [int(value) for value in values]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return f"{{{numbers[0]}..{numbers[-1]}}}"
    return "{" + ",".join(escape(value) for value in values) + "}"


def _member_template(members: Sequence[str]) -> tuple[str, tuple[str, ...]] | None:
    """``layer.0.attn.{q,k,v}_proj.weight`` as (``layer.0.attn.<mark>_proj.weight``, ``(q, k, v)``).

    None when the members differ in more than one segment, or have nothing in common: those are listed.
    """
    if len(members) < 2 or len(set(members)) != len(members) or any(_MARK in member for member in members):
        return None
    split = [split_name(member) for member in members]
    if len({separators for _, separators in split}) != 1:
        return None
    segments = [parts for parts, _ in split]
    varying = [index for index in range(len(segments[0])) if len({parts[index] for parts in segments}) > 1]
    if len(varying) != 1:
        return None
    (position,) = varying
    values = [parts[position] for parts in segments]
    prefix = _common_prefix(values)
    suffix = _common_prefix([value[len(prefix) :][::-1] for value in values])[::-1]
    # Never cut through a run of digits: layer_{8,10} reads, layer_{8,1}0 does not.
    while prefix and prefix[-1].isdigit() and any(value[len(prefix) : len(prefix) + 1].isdigit() for value in values):
        prefix = prefix[:-1]
    while suffix and suffix[0].isdigit() and any(value[: len(value) - len(suffix)][-1:].isdigit() for value in values):
        suffix = suffix[1:]
    if len(segments[0]) == 1 and not prefix and not suffix:
        return None  # nothing in common: (q, k, v) reads better than {q,k,v}
    alternatives = tuple(value[len(prefix) : len(value) - len(suffix)] for value in values)
    template = list(segments[0])
    template[position] = prefix + _MARK + suffix
    return join_name(template, split[0][1]), alternatives


def _common_prefix(values: Sequence[str]) -> str:
    """The longest text every value starts with."""
    shortest = min(values, key=len, default="")
    for index, char in enumerate(shortest):
        if any(value[index] != char for value in values):
            return shortest[:index]
    return shortest


def _members_text(assignment: Assignment) -> str:
    """One group's sources: ``concat[axis -1] layer.0.attn.{q,k,v}_proj.weight`` or ``stack[axis 0](a, b)``."""
    combine = assignment.combine.describe() if assignment.combine is not None else ""
    prefix = _source_prefix(assignment.source_id)
    found = _member_template(assignment.members)
    if found is None:
        return f"{combine}({', '.join(prefix + escape(name) for name in assignment.members)})"
    template, alternatives = found
    return f"{combine} {prefix}{escape(template).replace(_MARK, _alternatives(alternatives))}"


def _plain_rows(members: Sequence[Assignment], operations: str, shapes: str) -> list[_AssignmentRow]:
    prefix = _source_prefix(members[0].source_id)
    rows = []
    for group in group_pairs((member.target, member.source) for member in members):
        same = group.right == group.left
        source = (f"{_same(group.count)} in {members[0].source_id}" if prefix else _same(group.count)) if same else ""
        rows.append(_AssignmentRow(group.count, group.left, source or prefix + group.right, operations, shapes, same))
    return rows


def _combined_rows(members: Sequence[Assignment], shapes: str) -> list[_AssignmentRow]:
    """Groups whose members follow one template grow into one row, ``layer.{0..11}.attn.{q,k,v}_proj.weight``."""
    first = members[0]
    combine = first.combine.describe() if first.combine is not None else ""
    operations = _operations(first.operations)
    prefix = _source_prefix(first.source_id)
    alike: dict[tuple[str, ...] | None, list[tuple[Assignment, str]]] = {}
    for member in members:
        found = _member_template(member.members)
        alike.setdefault(found[1] if found else None, []).append((member, found[0] if found else ""))
    rows: list[_AssignmentRow] = []
    for alternatives, items in alike.items():
        if alternatives is None:
            rows += [_AssignmentRow(1, item.target, _members_text(item), operations, shapes) for item, _ in items]
            continue
        by_target = {item.target: item for item, _ in items}
        for group in group_pairs((item.target, template) for item, template in items):
            right = group.right.replace(_MARK, _alternatives(alternatives))
            wanted = [name for target, _ in group.pairs() for name in by_target[target].members]
            if group.right.count(_MARK) != 1 or sorted(expand_pattern(right)) != sorted(wanted):
                rows += [
                    _AssignmentRow(1, target, _members_text(by_target[target]), operations, shapes)
                    for target, _ in group.pairs()
                ]
                continue
            rows.append(_AssignmentRow(group.count, group.left, f"{combine} {prefix}{right}", operations, shapes))
    return rows


def _split_rows(members: Sequence[Assignment], shapes: str) -> list[_AssignmentRow] | None:
    """The parts of split tensors as one row, ``layer_{0..11}/{query,key,value}/kernel``, with ``part {1..3}/3``.

    Possible when the targets of the parts differ in one segment only, with one value for each part, and every
    part comes from the same sources; None otherwise (then each part gets rows of its own).
    """
    numbered: list[tuple[SplitPart, Assignment, tuple[str, ...]]] = []
    separators: set[tuple[str, ...]] = set()
    for member in members:
        split = member.operations[0] if member.operations else None
        if not isinstance(split, SplitPart) or _MARK in member.target:
            return None
        segments, found = split_name(member.target)
        separators.add(found)
        numbered.append((split, member, segments))
    parts = sorted({split.part for split, _, _ in numbered})
    if len(parts) < 2 or len(separators) != 1:
        return None
    (joints,) = separators
    for position in range(len(joints) + 1):
        # The segment at ``position`` must name the part: one value per part, a different one for each.
        names = {part: {segments[position] for split, _, segments in numbered if split.part == part} for part in parts}
        distinct = {min(found) for found in names.values()}
        if any(len(found) != 1 for found in names.values()) or len(distinct) != len(parts):
            continue
        # With that segment masked, every part must pair the same targets with the same sources.
        masked = [
            {
                (join_name([*segments[:position], _MARK, *segments[position + 1 :]], joints), member.source)
                for split, member, segments in numbered
                if split.part == part
            }
            for part in parts
        ]
        if any(pairs != masked[0] for pairs in masked) or len(masked[0]) * len(parts) != len(members):
            continue
        first, example, _ = numbered[0]
        split_text = f"split[axis {first.axis}, part {_part_numbers(parts)}/{first.parts}]"
        operations = f"{split_text} {_operations(example.operations[1:])}".rstrip()
        slot = _alternatives([min(names[part]) for part in parts])
        prefix = _source_prefix(members[0].source_id)
        rows = []
        for group in group_pairs(masked[0]):
            if group.left.count(_MARK) != 1:
                return None
            rows.append(
                _AssignmentRow(
                    group.count * len(parts), group.left.replace(_MARK, slot), prefix + group.right, operations, shapes
                )
            )
        return rows
    return None


def _part_numbers(parts: Sequence[int]) -> str:
    """1-based part numbers as a pattern: ``{1..3}``, ``{2,3}``."""
    return render_numbers(frozenset(str(part + 1) for part in parts))


def _verbose_row(assignment: Assignment, *, arrow: str, times: str) -> _AssignmentRow:
    """One assignment with every name spelled out: ``concat[axis 0](q, k, v)``, ``head:dense/kernel``."""
    prefix = "" if assignment.source_id is None else assignment.source_id + ":"
    same = assignment.combine is None and assignment.source == assignment.target
    if assignment.combine is not None:
        source = f"{assignment.combine.describe()}({', '.join(prefix + name for name in assignment.members)})"
    elif same:
        source = _same(1) + (f" in {assignment.source_id}" if prefix else "")
    else:
        source = prefix + assignment.source
    shapes = _assignment_shapes(assignment, verbose=True, arrow=arrow, times=times)
    return _AssignmentRow(1, assignment.target, source, _operations(assignment.operations), shapes, same)


def _bucket_key(assignment: Assignment) -> tuple[object, ...]:
    """What assignments must share to share a row.

    Plain copies group regardless of shape; transformed ones need the same operations (split parts: all but the
    part number), the same combine, shapes and dtypes.
    """
    operations = tuple(
        (operation.axis, operation.parts) if isinstance(operation, SplitPart) else operation
        for operation in assignment.operations
    )
    key: tuple[object, ...] = (assignment.source_id, operations, assignment.combine)
    if assignment.transformed:
        key += (assignment.member_shapes or assignment.source_shape, assignment.target_shape)
        key += (assignment.source_dtype, assignment.target_dtype)
    return key


def _assignment_blocks(
    plan: Plan, *, verbose: bool, arrow: str, times: str = "x"
) -> list[tuple[RuleRef, list[_AssignmentRow]]]:
    """Assignments by rule; rows with the same operations and shapes are grouped unless ``verbose``."""
    order = _rule_order(plan)
    by_rule: dict[RuleRef, list[Assignment]] = {}
    for assignment in plan.assignments:
        by_rule.setdefault(assignment.rule, []).append(assignment)
    blocks: list[tuple[RuleRef, list[_AssignmentRow]]] = []
    for rule in sorted(by_rule, key=order):
        rows: list[_AssignmentRow] = []
        if verbose:
            rows += [_verbose_row(assignment, arrow=arrow, times=times) for assignment in by_rule[rule]]
        else:
            buckets: dict[tuple[object, ...], list[Assignment]] = {}
            for assignment in by_rule[rule]:
                buckets.setdefault(_bucket_key(assignment), []).append(assignment)
            for members in buckets.values():
                first = members[0]
                shapes = _assignment_shapes(first, verbose=False, arrow=arrow, times=times)
                if first.combine is not None:
                    rows += _combined_rows(members, shapes)
                    continue
                if first.operations and isinstance(first.operations[0], SplitPart):
                    grouped = _split_rows(members, shapes)
                    if grouped is not None:
                        rows += grouped
                        continue
                    # One row (or more) per part: the parts differ in their operations.
                    by_operations: dict[tuple[Operation, ...], list[Assignment]] = {}
                    for member in members:
                        by_operations.setdefault(member.operations, []).append(member)
                    for same in by_operations.values():
                        rows += _plain_rows(same, _operations(same[0].operations), shapes)
                    continue
                rows += _plain_rows(members, _operations(first.operations), shapes)
        blocks.append((rule, sorted(rows, key=lambda row: natural_key(row.target))))
    return blocks


def _name_rows(items: Sequence[_NameRow], *, verbose: bool) -> list[_NameRow]:
    """Group single-name rows (``other`` set to the name when there is no other) by everything but the names."""
    if verbose:
        rows = [
            replace(
                item,
                name=("" if item.source_id is None else item.source_id + ":") + item.name,
                other=None if item.other == item.name else item.other,
            )
            for item in items
        ]
        return sorted(rows, key=lambda row: natural_key(row.name))
    buckets: dict[tuple[object, ...], list[_NameRow]] = {}
    for item in items:
        key = (item.source_id, item.source_shape, item.target_shape, item.dtype, item.detail)
        buckets.setdefault(key, []).append(item)
    keyed: list[tuple[tuple[tuple[int, str], ...], _NameRow]] = []
    for members in buckets.values():
        prefix = _source_prefix(members[0].source_id)
        for group in group_pairs((member.name, member.other or member.name) for member in members):
            other = None if group.right == group.left else group.right
            row = replace(members[0], count=group.count, name=prefix + group.left, other=other)
            keyed.append((natural_key(row.name), row))
    return [row for _, row in sorted(keyed, key=lambda item: item[0])]


_SHAPE_TEXT = re.compile(r"\[[0-9, ]*\]")


def _guard_detail(skip: Skip, *, verbose: bool) -> str | None:
    """What a guard found, unless the reason or the shapes shown beside it already say it."""
    detail = skip.detail
    if not detail or detail in skip.reason:
        return None
    if not verbose:
        shown = {format_shape(shape) for shape in (skip.source_shape, skip.target_shape) if shape is not None}
        if all(shape in shown for shape in _SHAPE_TEXT.findall(detail)) and not re.search(
            "[0-9]", _SHAPE_TEXT.sub("", detail)
        ):
            return None
    return detail


def _skip_blocks(
    plan: Plan, kinds: Iterable[SkipKind], *, verbose: bool
) -> list[tuple[SkipKind, RuleRef, str, list[_NameRow]]]:
    """Skips of ``kinds`` grouped by kind, rule and reason, in rule order."""
    wanted = set(kinds)
    order = _rule_order(plan)
    blocks: dict[tuple[SkipKind, RuleRef, str], list[Skip]] = {}
    for skip in plan.skips:
        if skip.kind in wanted:
            blocks.setdefault((skip.kind, skip.rule, skip.reason), []).append(skip)
    result: list[tuple[SkipKind, RuleRef, str, list[_NameRow]]] = []
    for kind, rule, reason in sorted(blocks, key=lambda key: (order(key[1]), key[0].value, key[2])):
        items = [
            _NameRow(
                1,
                skip.name,
                skip.target or skip.name,
                skip.source_shape,
                skip.target_shape,
                detail=_guard_detail(skip, verbose=verbose),
                source_id=skip.source_id,
            )
            for skip in blocks[kind, rule, reason]
        ]
        result.append((kind, rule, reason, _name_rows(items, verbose=verbose)))
    return result


def _entry_rows(entries: Sequence[TensorEntry], *, verbose: bool) -> list[_NameRow]:
    items = [
        _NameRow(1, entry.name, entry.name, entry.shape, None, entry.dtype, source_id=entry.source_id)
        for entry in entries
    ]
    return _name_rows(items, verbose=verbose)


def _problem_template(problem: Problem) -> str | None:
    """The message with its one or two quoted names replaced by markers, or None when that is not clean."""
    message = problem.message
    if not 1 <= len(problem.names) <= 2 or "\x00" in message or "\x01" in message:
        return None
    for index, name in sorted(enumerate(problem.names), key=lambda item: -len(item[1])):
        quoted = repr(name)
        if not quoted.startswith("'") or quoted not in message:
            if index == 1 and name == problem.names[0]:
                continue  # the same name twice: the first marker covers it
            return None
        message = message.replace(quoted, chr(index))
    return message


def _problem_rows(problems: Sequence[Problem], *, verbose: bool) -> list[_ProblemRow]:
    """One row per problem, except that messages alike but for their names share a row with patterns."""

    def row(problem: Problem, count: int, message: str, names: Sequence[str]) -> _ProblemRow:
        # Unused sources and unfilled targets have sections of their own; other names show unless quoted.
        listed = problem.kind in (ProblemKind.UNUSED_SOURCE, ProblemKind.UNFILLED_TARGET)
        hidden = [] if listed else [name for name in names if name not in message]
        kind = problem.kind.value.replace("_", " ") + (f" {problem.code}" if problem.code else "")
        return _ProblemRow(count, kind, message, problem.rule, tuple(group_names(hidden)))

    if verbose:
        return [row(problem, 1, problem.message, problem.names) for problem in problems]
    alike: dict[tuple[object, ...], list[Problem]] = {}
    for position, problem in enumerate(problems):
        template = _problem_template(problem)
        key: tuple[object, ...] = (
            (position,) if template is None else (problem.kind, problem.code, problem.severity, problem.rule, template)
        )
        alike.setdefault(key, []).append(problem)
    rows: list[_ProblemRow] = []
    for key, members in alike.items():
        if len(members) == 1:
            rows.append(row(members[0], 1, members[0].message, members[0].names))
            continue
        template = str(key[-1])
        pairs = Counter((member.names[0], member.names[-1]) for member in members)
        for group in group_pairs(pairs):
            message = template.replace("\x00", f"'{group.left}'").replace("\x01", f"'{group.right}'")
            rows.append(row(members[0], sum(pairs[pair] for pair in group.pairs()), message, ()))
    return rows


def _same(count: int) -> str:
    """What a report shows for a source named like its target."""
    return "same name" if count == 1 else "same names"


def _bytes_to_read(plan: Plan) -> int:
    """Bytes of the source tensors the plan reads, each tensor once (a split source feeds several targets)."""
    shapes: dict[tuple[str | None, str], tuple[tuple[int, ...], str]] = {}
    for assignment in plan.assignments:
        for name, shape in zip(
            assignment.source_names, assignment.member_shapes or (assignment.source_shape,), strict=True
        ):
            shapes[assignment.source_id, name] = (shape, assignment.source_dtype)
    return sum(math.prod(shape) * DTYPE_SIZES.get(dtype, 0) for shape, dtype in shapes.values())


def _format_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _clean(text: str) -> str:
    """Make control characters (escape codes, newlines) visible, so names cannot disturb the layout."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _prose(text: str) -> str:
    """A message on one logical line: whitespace runs become one space, other control characters are shown."""
    return _clean(" ".join(text.split()))


# ---------------------------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------------------------

_STYLES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "error": "1;31",
    "warning": "1;33",
    "ok": "1;32",
}
_Piece = tuple[str, str]  # (plain text, style name or "")


class _TextReport:
    """Builds the text report's lines; styles are applied after layout, so widths count plain text."""

    def __init__(self, plan: Plan, *, color: bool, width: int, verbose: bool) -> None:
        self.plan = plan
        self.color = color
        self.width = max(width, MIN_WIDTH)
        self.verbose = verbose
        self.lines: list[str] = []

    def emit(self, *pieces: _Piece) -> None:
        text = "".join(
            f"\x1b[{_STYLES[style]}m{plain}\x1b[0m" if self.color and style and plain.strip() else plain
            for plain, style in pieces
        )
        self.lines.append(text.rstrip())

    def wrap(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(text, max(width, 10), break_long_words=False, break_on_hyphens=False) or [""]

    def render(self) -> str:
        self.header()
        self.counts()
        plan = self.plan
        self.problems("Errors", plan.errors, "error")
        self.problems("Warnings", plan.warnings, "warning")
        self.assignments()
        skipped = _skip_blocks(plan, (SkipKind.RULE, SkipKind.GUARD), verbose=self.verbose)
        self.skips("Skipped", skipped, with_kind=True)
        kept = _skip_blocks(plan, (SkipKind.KEEP,), verbose=self.verbose)
        self.skips("Kept at initial value", kept, with_kind=False)
        self.entries("Unused sources", plan.unused_sources)
        self.entries("Unfilled targets", plan.unfilled_targets)
        return "\n".join(self.lines)

    def header(self) -> None:
        plan = self.plan
        style = "ok" if plan.ok else "error"
        verdict = _verdict(plan)
        # Wrapped only between counts, so "1 warning" stays whole.
        lines = [f"Plan {verdict}:"]
        for part in _summary_parts(plan):
            if len(lines[-1]) + 2 + len(part) > self.width and not lines[-1].endswith(":"):
                lines[-1] += ","
                lines.append("   ")
            lines[-1] += (" " if lines[-1].endswith((":", "   ")) else ", ") + part
        self.emit(("Plan ", "bold"), (verdict, style), (lines[0][len(verdict) + 5 :], ""))
        for line in lines[1:]:
            self.emit((line, ""))
        label_width = len("rule files")
        room = self.width - label_width - 4
        named = _named_sources(plan)
        if named is None:
            sources = ("source", self.wrap(_prose(plan.source), room))
        else:
            # One line per named source: its id, then its description (wrapped under itself).
            id_width = max(len(_clean(source_id)) for source_id, _ in named)
            lines = []
            for source_id, description in named:
                wrapped = self.wrap(_prose(description), room - id_width - 2)
                lines.append(f"{_clean(source_id).ljust(id_width)}  {wrapped[0]}".rstrip())
                lines += [" " * (id_width + 2) + line for line in wrapped[1:]]
            sources = ("sources", lines)
        fields = [
            ("rule files", [line for file in plan.rule_files or ["(none)"] for line in self.wrap(_clean(file), room)]),
            sources,
            ("target", self.wrap(_prose(plan.target), room)),
            ("namespace", self.wrap(_clean(plan.namespace), room)),
        ]
        for label, lines in fields:
            for index, line in enumerate(lines):
                self.emit(("  " + (label if index == 0 else "").ljust(label_width) + "  ", "dim"), (line, ""))

    def counts(self) -> None:
        counts = self.plan.counts()
        columns = []
        for keys in _COUNT_COLUMNS:
            label_width = max(len(_COUNT_LABELS[key]) for key in keys)
            number_width = max(len(str(counts[key])) for key in keys)
            columns.append([(key, label_width, number_width) for key in keys])
        grid_width = 2 + sum(column[0][1] + 2 + column[0][2] for column in columns) + 4 * (len(columns) - 1)
        if grid_width > self.width:
            cells = [cell for column in columns for cell in column]
            label_width, number_width = max(cell[1] for cell in cells), max(cell[2] for cell in cells)
            columns = [[(key, label_width, number_width) for key, _, _ in cells]]
        self.emit()
        for line in range(max(len(column) for column in columns)):
            pieces: list[_Piece] = [("  ", "")]
            for position, column in enumerate(columns):
                gap = ("    ", "") if position else ("", "")
                if line >= len(column):
                    label_width, number_width = column[0][1], column[0][2]
                    pieces += [gap, (" " * (label_width + 2 + number_width), "")]
                    continue
                key, label_width, number_width = column[line]
                value = counts[key]
                pieces += [gap, (_COUNT_LABELS[key].ljust(label_width) + "  ", "dim" if not value else "")]
                pieces.append((str(value).rjust(number_width), self.count_style(key, value)))
            self.emit(*pieces)

    @staticmethod
    def count_style(key: str, value: int) -> str:
        if not value:
            return "dim"
        if key == "errors":
            return "error"
        if key in ("warnings", "skipped_by_rule", "skipped_by_guard", "kept_by_rule", "unused", "unfilled"):
            return "yellow"
        return "bold"

    def title(self, text: str, count: str, style: str) -> None:
        self.emit()
        self.emit((text, style), (f" ({count})", ""))

    def count_width(self, counts: Iterable[int]) -> int:
        """Width of the count column: 0 (no column) when nothing was grouped."""
        widest = max(counts, default=1)
        return len(str(widest)) + 2 if widest > 1 else 0

    @staticmethod
    def count_cell(count: int, width: int) -> str:
        return (str(count) if count > 1 else "").rjust(width - 2) + "  " if width else ""

    def problems(self, title: str, problems: Sequence[Problem], style: str) -> None:
        if not problems:
            return
        rows = _problem_rows(problems, verbose=self.verbose)
        self.title(title, str(len(problems)), style)
        count_width = self.count_width(row.count for row in rows)
        kind_width = max(len(row.kind) for row in rows)
        indent = 2 + count_width + kind_width + 2
        for row in rows:
            lines = self.wrap(_prose(row.message), self.width - indent)
            # The rule, unless the message already names it.
            label = f"({_clean(_rule_label(row.rule))})" if row.rule and str(row.rule) not in row.message else ""
            head = "  " + self.count_cell(row.count, count_width)
            for index, line in enumerate(lines):
                first = (head + row.kind.ljust(kind_width) + "  ", style) if index == 0 else (" " * indent, "")
                tail: list[_Piece] = []
                if label and index == len(lines) - 1 and indent + len(line) + 2 + len(label) <= self.width:
                    tail = [("  ", ""), (label, "dim")]
                    label = ""
                self.emit(first, (line, ""), *tail)
            if label:
                self.emit((" " * indent, ""), (label, "dim"))
            if row.names:
                names = self.fit_names(row.names, self.width - indent - len("names: "))
                self.emit((" " * indent, ""), ("names: " + names, "dim"))

    @staticmethod
    def fit_names(patterns: Sequence[str], width: int) -> str:
        shown: list[str] = []
        for index, pattern in enumerate(patterns):
            rest = len(patterns) - index - 1
            more = f", +{rest} more" if rest else ""
            if shown and len(", ".join([*shown, _clean(pattern)]) + more) > width:
                return ", ".join(shown) + f", +{len(patterns) - index} more"
            shown.append(_clean(pattern))
        return ", ".join(shown)

    def assignments(self) -> None:
        plan = self.plan
        if not plan.assignments:
            return
        blocks = _assignment_blocks(plan, verbose=self.verbose, arrow="->")
        lines = sum(len(rows) for _, rows in blocks)
        count = f"{len(plan.assignments)}"
        if not self.verbose and lines != len(plan.assignments):
            count += f" in {_plural(lines, 'line')}"
        if _bytes_to_read(plan):
            count += f", {_format_bytes(_bytes_to_read(plan))} to read"
        self.title("Assignments", count, "bold")
        count_width = self.count_width(row.count for _, rows in blocks for row in rows)
        indent = 4 + count_width
        for rule, rows in blocks:
            self.emit(("  " + _clean(_rule_label(rule)), "bold"))
            targets = [_clean(row.target) for row in rows]
            sources = [_clean(row.source) for row in rows]
            details = ["  ".join(part for part in (row.operations, row.shapes) if part) for row in rows]
            target_width = max(len(target) for target in targets)
            source_width = max(len(source) for source in sources)
            detail_width = max(len(detail) for detail in details)
            flat = indent + target_width + 6 + source_width + (2 + detail_width if detail_width else 0)
            for row, target, source, detail in zip(rows, targets, sources, details, strict=True):
                head = ("    " + self.count_cell(row.count, count_width), "")
                source_style = "dim" if row.same else ""
                if flat <= self.width:
                    pad = " " * (source_width - len(source) + 2) if detail else ""
                    self.emit(
                        head,
                        (target.ljust(target_width), ""),
                        ("  <-  ", "dim"),
                        (source, source_style),
                        (pad, ""),
                        (detail, "dim"),
                    )
                    continue
                # Stacked: the source and the details hang under the target, indented past it.
                room = self.width - indent - 6
                if source_style and indent + len(target) + 6 + len(source) <= self.width:
                    self.emit(head, (target, ""), ("  <-  ", "dim"), (source, source_style))
                else:
                    # A long source (a group's members, a combine) wraps at its spaces, under itself.
                    self.emit(head, (target, ""))
                    first, *rest = self.wrap(source, room)
                    self.emit((" " * (indent + 2), ""), ("<-  ", "dim"), (first, source_style))
                    for line in rest:
                        self.emit((" " * (indent + 6), ""), (line, source_style))
                parts = (
                    [detail]
                    if len(detail) <= room
                    else [*self.pack(row.operations, room), *self.wrap(row.shapes, room)]
                )
                for part in parts:
                    if part:
                        self.emit((" " * (indent + 6), ""), (part, "dim"))

    def pack(self, operations: str, width: int) -> list[str]:
        """Operations on as few lines as fit, broken between operations (and inside one only when it alone is too long)."""
        lines: list[str] = []
        for operation in _split_operations(operations):
            if lines and len(lines[-1]) + 1 + len(operation) <= width:
                lines[-1] += " " + operation
            else:
                lines += self.wrap(operation, width)
        return lines

    def skips(
        self, title: str, blocks: Sequence[tuple[SkipKind, RuleRef, str, list[_NameRow]]], *, with_kind: bool
    ) -> None:
        if not blocks:
            return
        total = sum(row.count for *_, rows in blocks for row in rows)
        self.title(title, str(total), "warning" if with_kind else "bold")
        count_width = self.count_width(row.count for *_, rows in blocks for row in rows)
        for kind, rule, reason, rows in blocks:
            label = _clean(_rule_label(rule))
            heading = f"by {kind.value} ({label})" if with_kind else label
            lines = textwrap.wrap(
                f"{heading}: {_prose(reason)}",
                self.width,
                initial_indent="  ",
                subsequent_indent="      ",
                break_long_words=False,
                break_on_hyphens=False,
            )
            cut = min(len(heading) + 2, len(lines[0]))
            self.emit((lines[0][:cut], "yellow" if with_kind else "bold"), (lines[0][cut:], ""))
            for line in lines[1:]:
                self.emit((line, ""))
            self.name_table(rows, 4, count_width)

    def entries(self, title: str, entries: Sequence[TensorEntry]) -> None:
        if not entries:
            return
        rows = _entry_rows(entries, verbose=self.verbose)
        self.title(title, str(len(entries)), "warning")
        self.name_table(rows, 2, self.count_width(row.count for row in rows))

    def name_table(self, rows: Sequence[_NameRow], indent: int, count_width: int) -> None:
        """Names with their shapes; the shape column aligns wherever it fits, else it moves below."""
        names = [_clean(row.name) for row in rows]
        details = [self.shapes(row) for row in rows]
        start = indent + count_width
        fitting = [
            len(name)
            for name, detail in zip(names, details, strict=True)
            if start + len(name) + 2 + len(detail) <= self.width
        ]
        column = 0
        for candidate in sorted(set(fitting)):
            if all(
                start + candidate + 2 + len(detail) <= self.width
                for name, detail in zip(names, details, strict=True)
                if len(name) <= candidate
            ):
                column = candidate
        for row, name, detail in zip(rows, names, details, strict=True):
            head = (" " * indent + self.count_cell(row.count, count_width), "")
            if not detail:
                self.emit(head, (name, ""))
            elif len(name) <= column:
                self.emit(head, (name.ljust(column) + "  ", ""), (detail, "dim"))
            elif start + len(name) + 2 + len(detail) <= self.width:
                self.emit(head, (name + "  ", ""), (detail, "dim"))
            else:
                self.emit(head, (name, ""))
                for line in self.wrap(detail, self.width - start - 4):
                    self.emit((" " * (start + 4), ""), (line, "dim"))

    @staticmethod
    def shapes(row: _NameRow) -> str:
        parts = []
        if row.source_shape is not None:
            parts.append(format_shape(row.source_shape))
        if row.target_shape is not None:
            target = f"{_clean(row.other)} " if row.other else ("target " if parts else "")
            parts.append(f"{target}{format_shape(row.target_shape)}")
        elif row.other:
            parts.append(_clean(row.other))
        text = " -> ".join(parts) + (f" {row.dtype}" if row.dtype else "")
        return f"{text}: {_prose(row.detail)}" if row.detail else text


def render_text(plan: Plan, *, color: bool = False, width: int = 100, verbose: bool = False) -> str:
    """Render a plan for a terminal: a verdict line, the header and counts, then each non-empty section.

    Sections, in order: Errors, Warnings, Assignments (by rule), Skipped (by kind, rule and reason, with
    both shapes), Kept at initial value, Unused sources, Unfilled targets. Names are grouped into
    brace patterns (see ``group_names`` and ``group_pairs``) with a count column; ``verbose`` lists every
    name on its own line with its shape and dtype.

    Porting plans read the same way. A concat or stack shows its members after the combine, in member order
    (``concat[axis -1] layer.{0..11}.attn.{q,k,v}_proj.weight``: each target takes the members with its
    layer number), or listed when they share nothing (``concat[axis -1](q, k, v)``). The parts of split
    tensors share a line when their targets differ in one segment only (``layer_{0..11}/{query,key,value}/kernel``
    with ``split[axis -1, part {1..3}/3]``: the i-th name takes the i-th part); otherwise each part has its own.
    In plans over several named sources the header lists the sources and every source name reads
    ``source_id:name``.

    Args:
        plan: The plan to describe.
        color: Add ANSI colours (red errors, yellow warnings and skips, green OK, dim details). Without it the
            report holds no escape codes; control characters in names are shown as ``\\xNN``.
        width: Columns to fit in (at least 60); a name longer than that is never broken.
        verbose: List every assignment, skip and name individually.

    Returns:
        The report, lines joined by newlines, without a trailing newline.

    Example:
        >>> from mapper.plan import Assignment, Plan, RuleRef
        >>> rule = RuleRef("rules/copy.toml", 1, "dense")
        >>> rows = tuple(Assignment(f"d/{n}", f"d/{n}", f"old/{n}", rule, (), (2,), "float32", (2,), "float32")
        ...              for n in ("bias", "kernel"))
        >>> plan = Plan(("rules/copy.toml",), "old.ckpt", "model", "path", assignments=rows)
        >>> print(render_text(plan, width=80))  # doctest: +NORMALIZE_WHITESPACE
        Plan OK: 2 mapped
          rule files  rules/copy.toml
          source      old.ckpt
          target      model
          namespace   path
        <BLANKLINE>
          mapped       2    skipped by rule   0    unused sources    0
          transformed  0    skipped by guard  0    unfilled targets  0
                            kept by rule      0    errors            0
                                                   warnings          0
        <BLANKLINE>
        Assignments (2 in 1 line, 16 B to read)
          rules/copy.toml#1 'dense'
               2  d/{bias,kernel}  <-  old/{bias,kernel}

        The three parts of GPT-2's fused attention kernels, two layers of them, on one line:

        >>> from mapper.ops import SplitPart
        >>> rule = RuleRef("rules/gpt2.toml", 3, "c_attn")
        >>> parts = tuple(
        ...     Assignment(f"layer_{i}/{name}/kernel", f"layer_{i}/{name}/kernel", f"h.{i}.attn.c_attn.weight", rule,
        ...                (SplitPart(-1, part, 3, 4 * part, 4 * part + 4),), (4, 12), "float32", (4, 4), "float32")
        ...     for i in range(2) for part, name in enumerate(("query", "key", "value")))
        >>> plan = Plan(("rules/gpt2.toml",), "gpt2.safetensors", "model", "path", assignments=parts)
        >>> print(render_text(plan, width=100).split("\\n\\n")[-1])  # doctest: +NORMALIZE_WHITESPACE
        Assignments (6 in 1 line, 384 B to read)
          rules/gpt2.toml#3 'c_attn'
            6  layer_{0,1}/{query,key,value}/kernel
                 <-  h.{0,1}.attn.c_attn.weight
                     split[axis -1, part {1..3}/3]  [4, 12] -> [4, 4]
    """
    return _TextReport(plan, color=color, width=width, verbose=verbose).render()


# ---------------------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------------------

# Markup that could change how prose renders: always these; "_" only where it can start or end emphasis
# (not between two letters or digits); "(" only right after "]", where it would make a link.
_MD_SPECIAL = re.compile(r"[\\`*~<|]|(?<![^\W_])_|_(?![^\W_])|(?<=\])\(")
_QUOTED = re.compile(r"'([^'\s]+)'")


def _md_code(text: str) -> str:
    """A code span, safe inside a table cell."""
    text = _clean(text).replace("|", "\\|")
    fence = "`"
    while fence in text:
        fence += "`"
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def _md_text(text: str) -> str:
    """Prose for a table cell: markup characters escaped, ``'quoted'`` names shown as code."""
    text = _prose(text)
    pieces: list[str] = []
    position = 0
    for match in _QUOTED.finditer(text):
        pieces += [_md_escape(text[position : match.start()]), _md_code(match.group(1))]
        position = match.end()
    pieces.append(_md_escape(text[position:]))
    return "".join(pieces)


def _md_escape(text: str) -> str:
    return _MD_SPECIAL.sub(lambda match: "\\" + match.group(), text)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Iterable[int] = ()) -> list[str]:
    right = set(numeric)
    rule = ["---:" if index in right else "---" for index in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    shown = rows[:_MD_MAX_ROWS]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in shown]
    if len(rows) > len(shown):
        lines += ["", f"*{len(rows) - len(shown)} more rows not shown; the JSON report has every one.*"]
    return lines


def _md_section(title: str, count: str, table: list[str], *, fold: bool) -> list[str]:
    if fold:
        return ["", "<details>", f"<summary><b>{title}</b> ({count})</summary>", "", *table, "", "</details>"]
    return ["", f"#### {title} ({count})", "", *table]


def _md_count(count: int) -> str:
    return str(count) if count > 1 else ""


def _md_shapes(row: _NameRow) -> str:
    parts = []
    if row.source_shape is not None:
        parts.append(format_shape(row.source_shape))
    if row.target_shape is not None:
        target = f"{_md_code(row.other)} " if row.other else ("target " if parts else "")
        parts.append(f"{target}{format_shape(row.target_shape)}")
    elif row.other:
        parts.append(_md_code(row.other))
    text = " → ".join(parts) + (f" {row.dtype}" if row.dtype else "")
    return f"{text}: {_md_text(row.detail)}" if row.detail else text


def render_markdown(plan: Plan) -> str:
    """Render a plan for a pull-request comment: a verdict heading, a table of counts, then sections as tables.

    The sections are those of ``render_text``, grouped the same way. Sections longer than ten rows fold into
    ``<details>`` blocks (errors never fold) so the comment stays short; names are code spans and pipes are
    escaped. A section shows at most 200 rows and says how many more there are.

    Args:
        plan: The plan to describe.

    Returns:
        GitHub-flavoured Markdown, without a trailing newline.

    Example:
        >>> plan = Plan(("rules/empty.toml",), "old.ckpt", "model", "path")
        >>> print(render_markdown(plan))
        ### ✅ Plan OK: 0 mapped
        <BLANKLINE>
        - **rule files:** `rules/empty.toml`
        - **source:** `old.ckpt`
        - **target:** `model`
        - **namespace:** `path`
        <BLANKLINE>
        | mapped | transformed | skipped by rule | skipped by guard | kept by rule | unused sources | unfilled targets | errors | warnings |
        |---:|---:|---:|---:|---:|---:|---:|---:|---:|
        | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 |
    """
    counts = plan.counts()
    icon = "✅" if plan.ok else "❌"
    lines = [f"### {icon} Plan {_verdict(plan)}: {_md_text(_summary(plan))}", ""]
    files = ", ".join(_md_code(file) for file in plan.rule_files) or "(none)"
    named = _named_sources(plan)
    if named is None:
        sources = [f"- **source:** {_md_code(_prose(plan.source))}"]
    else:
        sources = ["- **sources:**"] + [
            f"  - {_md_code(source_id)}: {_md_code(_prose(description)) if description else '?'}"
            for source_id, description in named
        ]
    lines += [
        f"- **rule files:** {files}",
        *sources,
        f"- **target:** {_md_code(_prose(plan.target))}",
        f"- **namespace:** {_md_code(plan.namespace)}",
        "",
    ]
    lines += _md_table(list(_COUNT_LABELS.values()), [[str(counts[key]) for key in _COUNT_LABELS]], range(9))
    lines += _md_problems("❌ Errors", plan.errors, fold=False)
    lines += _md_problems("⚠️ Warnings", plan.warnings, fold=True)
    lines += _md_assignments(plan)
    lines += _md_skips(plan, "Skipped", (SkipKind.RULE, SkipKind.GUARD))
    lines += _md_skips(plan, "Kept at initial value", (SkipKind.KEEP,))
    lines += _md_entries("Unused sources", plan.unused_sources)
    lines += _md_entries("Unfilled targets", plan.unfilled_targets)
    return "\n".join(lines)


def _md_problems(title: str, problems: Sequence[Problem], *, fold: bool) -> list[str]:
    if not problems:
        return []
    rows = _problem_rows(problems, verbose=False)
    grouped = any(row.count > 1 for row in rows)
    cells = []
    for row in rows:
        message = _md_text(row.message)
        if row.names:
            message += "<br>names: " + ", ".join(_md_code(name) for name in row.names)
        rule = _md_code(_rule_label(row.rule)) if row.rule else ""
        cells.append([*([_md_count(row.count)] if grouped else []), row.kind, message, rule])
    header = [*(["n"] if grouped else []), "kind", "message", "rule"]
    table = _md_table(header, cells, [0] if grouped else [])
    return _md_section(title, str(len(problems)), table, fold=fold and len(rows) > _MD_FOLD_ROWS)


def _md_assignments(plan: Plan) -> list[str]:
    if not plan.assignments:
        return []
    blocks = _assignment_blocks(plan, verbose=False, arrow="→", times="\u00d7")
    grouped = any(row.count > 1 for _, rows in blocks for row in rows)
    cells = []
    for rule, rows in blocks:
        for index, row in enumerate(rows):
            cells.append(
                [
                    _md_code(_rule_label(rule)) if index == 0 else "",
                    *([_md_count(row.count)] if grouped else []),
                    _md_code(row.target),
                    f"*{_md_text(row.source)}*" if row.same else _md_code(row.source),
                    ", ".join(_md_code(part) for part in _split_operations(row.operations)),
                    row.shapes,
                ]
            )
    header = ["rule", *(["n"] if grouped else []), "target", "source", "operations", "shapes"]
    count = str(len(plan.assignments))
    if len(cells) != len(plan.assignments):
        count += f" in {_plural(len(cells), 'row')}"
    if _bytes_to_read(plan):
        count += f", {_format_bytes(_bytes_to_read(plan))} to read"
    table = _md_table(header, cells, [1] if grouped else [])
    return _md_section("Assignments", count, table, fold=len(cells) > _MD_FOLD_ROWS)


def _md_skips(plan: Plan, title: str, kinds: tuple[SkipKind, ...]) -> list[str]:
    blocks = _skip_blocks(plan, kinds, verbose=False)
    if not blocks:
        return []
    with_kind = title == "Skipped"
    grouped = any(row.count > 1 for *_, rows in blocks for row in rows)
    cells = []
    for kind, rule, reason, rows in blocks:
        for index, row in enumerate(rows):
            first = index == 0
            cells.append(
                [
                    *([f"by {kind.value}" if first else ""] if with_kind else []),
                    _md_code(_rule_label(rule)) if first else "",
                    _md_text(reason) if first else "",
                    *([_md_count(row.count)] if grouped else []),
                    _md_code(row.name),
                    _md_shapes(row),
                ]
            )
    header = [*(["skipped"] if with_kind else []), "rule", "reason", *(["n"] if grouped else []), "name", "shapes"]
    total = sum(row.count for *_, rows in blocks for row in rows)
    table = _md_table(header, cells, [header.index("n")] if grouped else [])
    return _md_section(title, str(total), table, fold=len(cells) > _MD_FOLD_ROWS)


def _md_entries(title: str, entries: Sequence[TensorEntry]) -> list[str]:
    if not entries:
        return []
    rows = _entry_rows(entries, verbose=False)
    grouped = any(row.count > 1 for row in rows)
    cells = [
        [*([_md_count(row.count)] if grouped else []), _md_code(row.name), format_shape(row.source_shape), row.dtype]
        for row in rows
    ]
    header = [*(["n"] if grouped else []), "name", "shape", "dtype"]
    table = _md_table(header, cells, [0] if grouped else [])
    return _md_section(title, str(len(entries)), table, fold=len(cells) > _MD_FOLD_ROWS)


def _split_operations(text: str) -> list[str]:
    """``transpose[1, 0] reshape[768, 12, 64]`` -> its two operations (spaces inside brackets kept)."""
    return re.findall(r"\S+?\[[^\]]*\]|\S+", text)


# ---------------------------------------------------------------------------------------------------------------------
# JSON and dispatch
# ---------------------------------------------------------------------------------------------------------------------


def render_json(plan: Plan) -> str:
    """Render a plan as a JSON document for machines.

    Schema (``version`` 1)::

        {
          "format": "weight-mapper report",
          "version": 1,
          "ok": true,                       # no error-level problems: the plan can be applied
          "verdict": "OK",                  # or "FAILED with 3 errors"
          "summary": {"mapped": 199, "transformed": 96, "skipped_by_rule": 4, "skipped_by_guard": 0,
                      "kept_by_rule": 0, "unused": 0, "unfilled": 0, "errors": 0, "warnings": 1},
          "plan": {...}                     # exactly Plan.to_json(): Plan.from_json(json.dumps(doc["plan"]))
        }                                   # gives back an equal plan

    ``summary`` is ``Plan.counts()``; new keys may be added within a version, never removed.

    Args:
        plan: The plan to describe.

    Returns:
        Indented JSON, without a trailing newline.

    Example:
        >>> plan = Plan(("r.toml",), "old.ckpt", "model", "path")
        >>> document = json.loads(render_json(plan))
        >>> document["verdict"], document["summary"]["mapped"], Plan.from_json(json.dumps(document["plan"])) == plan
        ('OK', 0, True)
    """
    document = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "ok": plan.ok,
        "verdict": _verdict(plan),
        "summary": plan.counts(),
        "plan": json.loads(plan.to_json(indent=None)),
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def render(plan: Plan, format: ReportFormat = "text", **options: Any) -> str:
    """Render a plan in ``format``: ``text`` (which takes ``color``, ``width`` and ``verbose``), ``markdown`` or ``json``.

    Args:
        plan: The plan to describe.
        format: ``"text"``, ``"markdown"`` or ``"json"``.
        **options: Keyword options of the chosen renderer.

    Returns:
        The report as a string.

    Raises:
        MapperError: ``format`` is not one of the three.

    Example:
        >>> plan = Plan(("r.toml",), "old.ckpt", "model", "path")
        >>> render(plan, "text", width=60).splitlines()[0]
        'Plan OK: 0 mapped'
        >>> render(plan, "json") == render_json(plan)
        True
    """
    renderers: dict[str, Callable[..., str]] = {
        "text": render_text,
        "markdown": render_markdown,
        "json": render_json,
    }
    renderer = renderers.get(format)
    if renderer is None:
        raise MapperError(f"unknown report format {format!r}; choose one of 'text', 'markdown' or 'json'")
    return renderer(plan, **options)
