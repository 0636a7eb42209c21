"""Lints: rules that work but are probably not what was meant, each with a code a rule can silence with a reason.

| code | what it finds |
|------|---------------|
| M101 | a dead rule: it matched no name (reported by the planner, under the ``dead_rule`` policy) |
| M102 | a shadowed rule: every name it matches is taken by earlier rules, so it never fires |
| M103 | overlapping rules: two rules match the same name with different outcomes; the first silently wins |
| M104 | a template whose output cannot be a name in the target's namespace |

Silence one on a rule with ``silence = { M103 = "the catch-all is meant to overlap" }``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mapper.authoring._outcome import rule_outcome
from mapper.plan import Problem, ProblemKind, RuleRef, Severity
from mapper.plan.matching import RuleMatcher
from mapper.rules import Rule, RuleSet
from mapper.specs import CHECKPOINT_NAMESPACE, CHECKPOINT_VALUE_SUFFIX, SourceSet, TensorSpec


def lint(rules: RuleSet, source: Mapping[str, TensorSpec] | SourceSet | None = None) -> tuple[Problem, ...]:
    """Every lint finding for ``rules`` (warnings), on the source's names when given.

    Without a source only the templates can be checked (M104); with one, shadowed (M102) and
    overlapping (M103) rules are found by trying every rule, not just the first, on every name.

    Example:
        >>> from mapper.rules import parse_rules
        >>> from mapper.specs import VariableMap
        >>> rules = parse_rules('''
        ... format = 1
        ... [[rules]]
        ... match = "(?P<x>.*)/w"
        ... target = "{x}/kernel"
        ... [[rules]]
        ... match = "dense/w"
        ... target = "dense/weights"
        ... ''')
        >>> [(p.code, p.rule.index) for p in lint(rules, VariableMap([TensorSpec("dense/w", (1,), "float32")]))]
        [('M102', 2)]
    """
    findings = list(_template_lints(rules))
    if source is not None:
        findings.extend(_match_lints(rules, source))
    return tuple(finding for finding in findings if not _silenced(rules, finding))


def _silenced(rules: RuleSet, finding: Problem) -> bool:
    if finding.rule is None or finding.code is None:
        return False
    silences = [(rules.rule_ref(i), rule.silence) for i, rule in enumerate(rules.rules)]
    silences += [(rules.keep_ref(i), keep.silence) for i, keep in enumerate(rules.keep)]
    return any(ref == finding.rule and finding.code in silence for ref, silence in silences)


def _template_lints(rules: RuleSet) -> Iterator[Problem]:
    for index, rule in enumerate(rules.rules):
        for template in (rule.target,) if rule.target is not None else (rule.targets or ()):
            trouble = _template_trouble(template, rules.namespace)
            if trouble:
                ref = rules.rule_ref(index)
                yield Problem(
                    ProblemKind.LINT,
                    Severity.WARNING,
                    f"M104 {ref}: template {template!r} {trouble}",
                    ref,
                    (),
                    code="M104",
                )


def _template_trouble(template: str, namespace: str) -> str | None:
    escaped = template.replace("{{", "").replace("}}", "")
    literal = re.sub(r"\{[^{}]*\}", "x", escaped)  # fields such as {i - 1} render without spaces
    if any(char.isspace() for char in literal):
        return "contains white space, which no variable name has"
    if "//" in literal:
        return "contains '//', an empty path segment"
    if escaped.startswith("/") or escaped.endswith("/"):
        return "starts or ends with '/'"
    if namespace == CHECKPOINT_NAMESPACE and not (escaped.endswith(CHECKPOINT_VALUE_SUFFIX) or escaped.endswith("}")):
        return f"does not end in {CHECKPOINT_VALUE_SUFFIX!r}, as every variable key of a TF2 checkpoint does"
    return None


@dataclass
class _Overlap:
    example: str
    count: int = 0


@dataclass
class _MatchStats:
    first_hits: list[int]
    any_hits: list[int]
    shadowed_by: list[set[int]]
    overlaps: dict[tuple[int, int], _Overlap] = field(default_factory=dict)


def _match_lints(rules: RuleSet, source: Mapping[str, TensorSpec] | SourceSet) -> Iterator[Problem]:
    count = len(rules.rules)
    stats = _MatchStats([0] * count, [0] * count, [set() for _ in range(count)])
    maps = source.items() if isinstance(source, SourceSet) else [(None, source)]
    for source_id, specs in maps:
        only = {i for i, rule in enumerate(rules.rules) if rule.source in (None, source_id)}
        matcher = RuleMatcher(rules.rules, only=only)
        for name in specs:
            _tally(rules, matcher.every(name), name, stats)
    for index in range(count):
        if stats.first_hits[index] == 0 and stats.any_hits[index] > 0:
            ref = rules.rule_ref(index)
            earlier = ", ".join(str(rules.rule_ref(other).index) for other in sorted(stats.shadowed_by[index]))
            yield Problem(
                ProblemKind.LINT,
                Severity.WARNING,
                f"M102 {ref} never fires: each of the {stats.any_hits[index]} name(s) it matches is taken first by "
                f"rule {earlier}; move it before them or remove it",
                ref,
                (),
                code="M102",
            )
    for (first, later), overlap in stats.overlaps.items():
        if stats.first_hits[later] == 0:
            continue  # already reported as shadowed
        ref = rules.rule_ref(first)
        yield Problem(
            ProblemKind.LINT,
            Severity.WARNING,
            f"M103 {ref} and rule {rules.rule_ref(later).index} both match {overlap.count} name(s), such as "
            f"{overlap.example!r}, with different outcomes; rule {ref.index} wins. Narrow one pattern, or silence M103 "
            "on the rule with a reason",
            ref,
            (overlap.example,),
            code="M103",
        )


def _tally(rules: RuleSet, matches: list[tuple[int, Any]], name: str, stats: _MatchStats) -> None:
    if not matches:
        return
    first, first_match = matches[0]
    stats.first_hits[first] += 1
    outcome = _outcome(rules.rules[first], first_match)
    for index, matched in matches:
        stats.any_hits[index] += 1
        if index == first:
            continue
        stats.shadowed_by[index].add(first)
        if _outcome(rules.rules[index], matched) != outcome:
            overlap = stats.overlaps.setdefault((first, index), _Overlap(name))
            overlap.count += 1


def _outcome(rule: Rule, matched: Any) -> tuple[str, ...]:
    """What two rules must agree on for an overlap to be harmless: both skip, the same names, or the same error."""
    outcome = rule_outcome(rule, matched)
    if outcome.skip is not None:
        return ("skip",)
    if outcome.error is not None:
        return ("error", str(outcome.error))
    return outcome.names


def lint_codes() -> Mapping[str, str]:
    """The lint codes and what each finds.

    Example:
        >>> sorted(lint_codes())
        ['M101', 'M102', 'M103', 'M104']
    """
    from mapper.rules import LINT_CODES

    return LINT_CODES


__all__ = ["RuleRef", "lint", "lint_codes"]
