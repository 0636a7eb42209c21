"""Step 6: the draft planned against the same maps; rules that claim too much are narrowed or split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import regex

from mapper.authoring.suggest._generalise import Draft, literals, slot_values
from mapper.authoring.suggest._patterns import group_labels, render_pattern
from mapper.authoring.suggest._toml import Sides, render_toml, suggested
from mapper.plan import ProblemKind
from mapper.plan.matching import RuleMatcher
from mapper.plan.planner import build_plan
from mapper.rules import parse_rules
from mapper.specs import TargetMap, TensorSpec


class _DraftPattern:
    """A draft's pattern in the shape RuleMatcher takes: its text (for the literal prefix) and a full match."""

    def __init__(self, match: str) -> None:
        self.match = match
        # regex, as rule files use: the matcher passes it the match time bound.
        self._pattern = regex.compile(match)


def narrow(drafts: list[Draft], names: Sequence[str]) -> list[Draft]:
    """Make sure no rule matches a source name it does not claim: narrow its groups, or split it into literals."""
    for _ in range(3):
        matcher = RuleMatcher([_DraftPattern(render_pattern(draft, group_labels(draft))) for draft in drafts])
        owner = {pair.source.key: number for number, draft in enumerate(drafts) for pair in draft.pairs}
        stray: set[int] = set()
        for name in names:
            found = matcher.first(name)
            if found is not None and owner.get(name) != found[0]:
                stray.add(found[0])
        if not stray:
            return drafts
        rebuilt: list[Draft] = []
        for number, draft in enumerate(drafts):
            if number not in stray:
                rebuilt.append(draft)
            elif draft.narrowed or not any(kind == "g" for kind, _ in draft.source_atoms):
                rebuilt.extend(literals(draft))
            else:
                rebuilt.append(replace(draft, narrowed=slot_values(draft)))
        drafts = rebuilt
    return [literal for draft in drafts for literal in literals(draft)] if stray else drafts


def failing_drafts(
    toml: str,
    drafts: Sequence[Draft],
    source: Mapping[str, TensorSpec],
    target: TargetMap,
) -> dict[int, str]:
    """Plan the draft; return the drafts (by number) whose rules misbehave, with what went wrong."""
    plan = build_plan(parse_rules(toml, file="<draft>"), source, target)
    failing: dict[int, str] = {}
    for problem in plan.problems:
        if problem.rule is not None and problem.kind not in (ProblemKind.UNUSED_SOURCE, ProblemKind.UNFILLED_TARGET):
            number = problem.rule.index - 1
            if number < len(drafts):
                failing.setdefault(number, problem.message)
    got = {assignment.target_key: (assignment.source, assignment.rule.index - 1) for assignment in plan.assignments}
    for number, draft in enumerate(drafts):
        for pair in draft.pairs:
            found = got.get(pair.target.key)
            if found is None or found[0] != pair.source.key:
                failing.setdefault(number, f"the planned rule does not map {pair.source.key!r} to {pair.target.key!r}")
    return failing


def settle(
    drafts: list[Draft], sides: Sides, rounds: int, conflicts: Sequence[str] = ()
) -> tuple[str, list[Draft], list[str]]:
    """Render and plan the draft until the planner accepts every rule; the TOML, the drafts, and what was given up.

    A failing rule is split into one rule per pair, and a one-pair rule that still fails is given up. Each round
    splits or drops something, so this ends; ``rounds`` is a safeguard. ``conflicts`` are the consistency notes,
    written into the draft before what the planner refused.
    """
    notes: list[str] = []
    names = list(sides.source)
    toml = ""
    for _ in range(rounds):
        toml = render_toml([suggested(draft) for draft in drafts], sides, [*conflicts, *notes])
        failing = failing_drafts(toml, drafts, sides.source, sides.target)
        if not failing:
            break
        rebuilt: list[Draft] = []
        for number, draft in enumerate(drafts):
            if number not in failing:
                rebuilt.append(draft)
            elif not draft.literal:
                rebuilt.extend(literals(draft))
            else:
                given_up = draft.pairs[0]
                notes.append(f"{given_up.source.key!r} -> {given_up.target.key!r}: {failing[number]}")
        drafts = narrow(sorted(rebuilt, key=lambda draft: draft.first_target), names)
    return toml, drafts, notes
