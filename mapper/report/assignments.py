"""The Assignments section's rows: plain copies, joins and split parts grouped into brace patterns."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mapper.naming import escape, expand_pattern, group_pairs, join_name, render_numbers, split_name
from mapper.ops import Operation, SplitPart
from mapper.plan import Assignment, Plan, RuleRef
from mapper.report.rows import rule_order, same_name, source_prefix
from mapper.specs import format_shape
from mapper.text import natural_key


def _operations(operations: Sequence[Operation]) -> tuple[str, ...]:
    """Each operation as reports show it (its own ``describe()``)."""
    return tuple(operation.describe() for operation in operations)


@dataclass(frozen=True, slots=True)
class AssignmentRow:
    """One line of the Assignments section: ``count`` targets, their sources, operations and shapes as shown."""

    count: int
    target: str
    source: str  # as shown: a pattern (with ``source_id:``), a combine and its members, or "same name"
    operations: tuple[str, ...]  # each operation as shown; a split row's first one stands for all its parts
    shapes: str
    same: bool = False  # the source is named like the target


def _source_shape(assignment: Assignment, times: str) -> str:
    """The source side of the shapes: one shape, ``3 x [2, 4]`` for equal members, ``[8, 8] + [8, 2]`` otherwise."""
    if assignment.join is None:
        return format_shape(assignment.source_shape)
    shapes = assignment.source_shapes
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
    prefix = source_prefix(assignment.source_id)
    found = _member_template(assignment.members)
    if found is None:
        return f"{combine}({', '.join(prefix + escape(name) for name in assignment.members)})"
    template, alternatives = found
    return f"{combine} {prefix}{escape(template).replace(_MARK, _alternatives(alternatives))}"


def _plain_rows(members: Sequence[Assignment], operations: tuple[str, ...], shapes: str) -> list[AssignmentRow]:
    prefix = source_prefix(members[0].source_id)
    rows = []
    for group in group_pairs((member.target, member.source) for member in members):
        same = group.right == group.left
        source = (
            (f"{same_name(group.count)} in {members[0].source_id}" if prefix else same_name(group.count))
            if same
            else ""
        )
        rows.append(AssignmentRow(group.count, group.left, source or prefix + group.right, operations, shapes, same))
    return rows


def _combined_rows(members: Sequence[Assignment], shapes: str) -> list[AssignmentRow]:
    """Groups whose members follow one template grow into one row, ``layer.{0..11}.attn.{q,k,v}_proj.weight``."""
    first = members[0]
    combine = first.combine.describe() if first.combine is not None else ""
    operations = _operations(first.operations)
    prefix = source_prefix(first.source_id)
    alike: dict[tuple[str, ...] | None, list[tuple[Assignment, str]]] = {}
    for member in members:
        found = _member_template(member.members)
        alike.setdefault(found[1] if found else None, []).append((member, found[0] if found else ""))
    rows: list[AssignmentRow] = []
    for alternatives, items in alike.items():
        if alternatives is None:
            rows += [AssignmentRow(1, item.target, _members_text(item), operations, shapes) for item, _ in items]
            continue
        by_target = {item.target: item for item, _ in items}
        for group in group_pairs((item.target, template) for item, template in items):
            right = group.right.replace(_MARK, _alternatives(alternatives))
            wanted = [name for target, _ in group.pairs() for name in by_target[target].members]
            if group.right.count(_MARK) != 1 or sorted(expand_pattern(right)) != sorted(wanted):
                rows += [
                    AssignmentRow(1, target, _members_text(by_target[target]), operations, shapes)
                    for target, _ in group.pairs()
                ]
                continue
            rows.append(AssignmentRow(group.count, group.left, f"{combine} {prefix}{right}", operations, shapes))
    return rows


def _split_rows(members: Sequence[Assignment], shapes: str) -> list[AssignmentRow] | None:
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
        operations = (split_text, *_operations(example.operations[1:]))
        slot = _alternatives([min(names[part]) for part in parts])
        prefix = source_prefix(members[0].source_id)
        rows = []
        for group in group_pairs(masked[0]):
            if group.left.count(_MARK) != 1:
                return None
            rows.append(
                AssignmentRow(
                    group.count * len(parts), group.left.replace(_MARK, slot), prefix + group.right, operations, shapes
                )
            )
        return rows
    return None


def _part_numbers(parts: Sequence[int]) -> str:
    """1-based part numbers as a pattern: ``{1..3}``, ``{2,3}``."""
    return render_numbers(frozenset(str(part + 1) for part in parts))


def _verbose_row(assignment: Assignment, *, arrow: str, times: str) -> AssignmentRow:
    """One assignment with every name spelled out: ``concat[axis 0](q, k, v)``, ``head:dense/kernel``."""
    prefix = "" if assignment.source_id is None else assignment.source_id + ":"
    same = assignment.combine is None and assignment.source == assignment.target
    if assignment.combine is not None:
        source = f"{assignment.combine.describe()}({', '.join(prefix + name for name in assignment.members)})"
    elif same:
        source = same_name(1) + (f" in {assignment.source_id}" if prefix else "")
    else:
        source = prefix + assignment.source
    shapes = _assignment_shapes(assignment, verbose=True, arrow=arrow, times=times)
    return AssignmentRow(1, assignment.target, source, _operations(assignment.operations), shapes, same)


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
        key += (assignment.source_shapes if assignment.join else assignment.source_shape, assignment.target_shape)
        key += (assignment.source_dtype, assignment.target_dtype)
    return key


def assignment_blocks(
    plan: Plan, *, verbose: bool, arrow: str, times: str = "x"
) -> list[tuple[RuleRef, list[AssignmentRow]]]:
    """Assignments by rule; rows with the same operations and shapes are grouped unless ``verbose``.

    ``arrow`` and ``times`` are how the shapes column writes "becomes" and "members of": ``->`` and ``x`` in text.
    """
    by_rule: dict[RuleRef, list[Assignment]] = {}
    for assignment in plan.assignments:
        by_rule.setdefault(assignment.rule, []).append(assignment)
    blocks: list[tuple[RuleRef, list[AssignmentRow]]] = []
    for rule in sorted(by_rule, key=rule_order(plan)):
        if verbose:
            rows = [_verbose_row(assignment, arrow=arrow, times=times) for assignment in by_rule[rule]]
        else:
            rows = _grouped_rows(by_rule[rule], arrow=arrow, times=times)
        blocks.append((rule, sorted(rows, key=lambda row: natural_key(row.target))))
    return blocks


def _grouped_rows(assignments: Sequence[Assignment], *, arrow: str, times: str) -> list[AssignmentRow]:
    """One rule's assignments in as few rows as their operations and shapes allow."""
    buckets: dict[tuple[object, ...], list[Assignment]] = {}
    for assignment in assignments:
        buckets.setdefault(_bucket_key(assignment), []).append(assignment)
    rows: list[AssignmentRow] = []
    for members in buckets.values():
        first = members[0]
        shapes = _assignment_shapes(first, verbose=False, arrow=arrow, times=times)
        if first.combine is not None:
            rows += _combined_rows(members, shapes)
        elif first.operations and isinstance(first.operations[0], SplitPart):
            rows += _split_part_rows(members, shapes)
        else:
            rows += _plain_rows(members, _operations(first.operations), shapes)
    return rows


def _split_part_rows(members: Sequence[Assignment], shapes: str) -> list[AssignmentRow]:
    """Split parts on one row when their targets allow; otherwise rows per part (their operations differ)."""
    grouped = _split_rows(members, shapes)
    if grouped is not None:
        return grouped
    by_operations: dict[tuple[Operation, ...], list[Assignment]] = {}
    for member in members:
        by_operations.setdefault(member.operations, []).append(member)
    rows: list[AssignmentRow] = []
    for same in by_operations.values():
        rows += _plain_rows(same, _operations(same[0].operations), shapes)
    return rows


__all__ = ["AssignmentRow", "assignment_blocks"]
