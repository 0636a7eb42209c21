"""Plan diff: what a model change or a rule change did to a mapping, as added, removed and changed assignments."""

from __future__ import annotations

import json
from dataclasses import dataclass

from mapper.errors import PlanError
from mapper.naming import group_names
from mapper.plan import Assignment, Plan
from mapper.specs import format_shape


@dataclass(frozen=True)
class PlanDiff:
    """Assignments only in the old plan, only in the new one, and in both but done differently.

    Example:
        >>> PlanDiff((), (), ()).empty
        True
    """

    removed: tuple[Assignment, ...]
    added: tuple[Assignment, ...]
    changed: tuple[tuple[Assignment, Assignment], ...]
    newly_unfilled: tuple[str, ...] = ()
    no_longer_unfilled: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the two plans fill every target the same way."""
        return not (self.removed or self.added or self.changed or self.newly_unfilled or self.no_longer_unfilled)


def diff_plans(old: Plan, new: Plan) -> PlanDiff:
    """Compare two plans target by target (source, operations, shapes and dtypes; the rule's position is ignored).

    Example:
        >>> from mapper.plan import RuleRef
        >>> rule = RuleRef("r.toml", 1)
        >>> a = Assignment("d/kernel", "d/kernel", "w", rule, (), (2,), "float32", (2,), "float32")
        >>> b = Assignment("d/bias", "d/bias", "b", rule, (), (2,), "float32", (2,), "float32")
        >>> old = Plan(rule_files=("r.toml",), source="s", target="t", namespace="path", assignments=(a,))
        >>> new = Plan(rule_files=("r.toml",), source="s", target="t", namespace="path", assignments=(a, b))
        >>> [x.target for x in diff_plans(old, new).added]
        ['d/bias']
    """
    if old.format != new.format:
        raise PlanError(
            f"cannot diff a plan of format {old.format} with one of format {new.format}; re-create both with one "
            "version of weight-mapper",
            problems=(),
            plan=None,
        )
    before = {a.target: a for a in old.assignments}
    after = {a.target: a for a in new.assignments}
    unfilled_before = {entry.name for entry in old.unfilled_targets}
    unfilled_after = {entry.name for entry in new.unfilled_targets}
    return PlanDiff(
        removed=tuple(before[name] for name in before if name not in after),
        added=tuple(after[name] for name in after if name not in before),
        changed=tuple(
            (before[name], after[name]) for name in before if name in after and _key(before[name]) != _key(after[name])
        ),
        newly_unfilled=tuple(sorted(unfilled_after - unfilled_before)),
        no_longer_unfilled=tuple(sorted(unfilled_before - unfilled_after)),
    )


def load_plan_for_diff(text: str, label: str) -> Plan:
    """Read a plan (or a JSON report holding one) for diffing; a format mismatch names the file and both versions.

    Example:
        >>> load_plan_for_diff('{"format": 9}', "old.json")
        Traceback (most recent call last):
        ...
        mapper.errors.PlanError: old.json: plan format 9 is not supported (this weight-mapper reads formats 1 and 2); re-create the plan with this version
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise PlanError(f"{label}: not a plan: invalid JSON: {error}", problems=(), plan=None) from None
    if isinstance(data, dict) and isinstance(data.get("plan"), dict):
        data = data["plan"]  # a JSON report wraps its plan
    try:
        return Plan.from_json(json.dumps(data))
    except PlanError as error:
        raise PlanError(f"{label}: {error}", problems=(), plan=None) from None


def render_diff(diff: PlanDiff, *, old_label: str = "old", new_label: str = "new", markdown: bool = False) -> str:
    """The diff as text (or Markdown for a pull request), names grouped by prefix.

    Example:
        >>> print(render_diff(PlanDiff((), (), ())))
        no change: both plans fill every target the same way
    """
    if diff.empty:
        return "no change: both plans fill every target the same way"
    heading = "#### " if markdown else ""
    code = "`" if markdown else ""
    bullet = "- " if markdown else "  "
    lines = [
        f"{heading}Plan diff {old_label} -> {new_label}: {len(diff.added)} added, {len(diff.removed)} removed, "
        f"{len(diff.changed)} changed"
    ]
    sections = [
        ("Added", [a.target for a in diff.added]),
        ("Removed", [a.target for a in diff.removed]),
        ("Newly unfilled", list(diff.newly_unfilled)),
        ("No longer unfilled", list(diff.no_longer_unfilled)),
    ]
    for title, names in sections:
        if names:
            lines.append("")
            lines.append(f"{heading}{title} ({len(names)})")
            lines.extend(f"{bullet}{code}{pattern}{code}" for pattern in group_names(names))
    if diff.changed:
        lines.append("")
        lines.append(f"{heading}Changed ({len(diff.changed)})")
        for before, after in diff.changed:
            lines.append(f"{bullet}{code}{after.target}{code}")
            for what, old_value, new_value in _differences(before, after):
                lines.append(f"{'  ' if markdown else '      '}{what}: {old_value} -> {new_value}")
    return "\n".join(lines)


def _key(assignment: Assignment) -> tuple[object, ...]:
    return (
        assignment.source,
        assignment.source_id,
        assignment.members,
        assignment.combine,
        assignment.operations,
        assignment.source_shape,
        assignment.source_dtype,
        assignment.target_shape,
        assignment.target_dtype,
    )


def _differences(before: Assignment, after: Assignment) -> list[tuple[str, str, str]]:
    found = []
    if (before.source_id, before.source, before.members) != (after.source_id, after.source, after.members):
        found.append(("source", repr(before.source), repr(after.source)))
    if before.operations != after.operations or before.combine != after.combine:
        found.append(("operations", _operations(before), _operations(after)))
    if (before.source_shape, before.source_dtype) != (after.source_shape, after.source_dtype):
        found.append(
            (
                "source shape",
                f"{format_shape(before.source_shape)} {before.source_dtype}",
                f"{format_shape(after.source_shape)} {after.source_dtype}",
            )
        )
    if (before.target_shape, before.target_dtype) != (after.target_shape, after.target_dtype):
        found.append(
            (
                "target shape",
                f"{format_shape(before.target_shape)} {before.target_dtype}",
                f"{format_shape(after.target_shape)} {after.target_dtype}",
            )
        )
    return found


def _operations(assignment: Assignment) -> str:
    parts = [assignment.combine.describe()] if assignment.combine else []
    parts += [operation.describe() for operation in assignment.operations]
    return " ".join(parts) or "none"


__all__ = ["PlanDiff", "diff_plans", "load_plan_for_diff", "render_diff"]
