"""explain: why one name ends up where it does: every rule tried in order, and what the plan does with it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mapper.authoring._outcome import rule_outcome
from mapper.plan import Assignment, Plan
from mapper.rules import Rule, RuleSet
from mapper.specs import TensorSpec, format_shape


def explain_source(
    rules: RuleSet,
    name: str,
    *,
    source: Mapping[str, TensorSpec] | None = None,
    plan: Plan | None = None,
) -> str:
    """Explain what the rules do with source name ``name``: each rule in order, then the plan's verdict.

    For a rule whose pattern does not match, the longest prefix of the name the pattern could still
    match shows where they part ways. Groups, template output and the plan's verdict follow for the rule
    that takes the name; later rules that also match are listed as shadowed.

    Example:
        >>> from mapper.rules import parse_rules
        >>> rules = parse_rules('''
        ... format = 1
        ... [[rules]]
        ... name = "embeddings"
        ... match = 'bert/embeddings/(?P<rest>.+)'
        ... target = "embeddings/{rest}"
        ... [[rules]]
        ... name = "layers"
        ... match = 'bert/encoder/layer_(?P<i>\\\\d+)/(?P<rest>.+)'
        ... target = "layer_{i}/{rest}"
        ... ''')
        >>> print(explain_source(rules, "bert/encoder/layer_3/output/bias"))
        bert/encoder/layer_3/output/bias    ('|' marks where a rule's pattern stops fitting the name)
          rule 1 'embeddings'  no match: bert/e|ncoder/layer_3/output/bias
          rule 2 'layers'      MATCH  i='3' rest='output/bias'  ->  'layer_3/output/bias'
    """
    lines = [f"{name}    ('|' marks where a rule's pattern stops fitting the name)"]
    spec = source.get(name) if source is not None else None
    if spec is not None:
        lines.append(f"  source: {format_shape(spec.shape)} {spec.dtype}")
    elif source is not None:
        lines.append("  source: NOT IN THE SOURCE (the rules are tried on the name anyway)")
    width = max((len(_label(i, rule)) for i, rule in enumerate(rules.rules)), default=0)
    taken: int | None = None
    for index, rule in enumerate(rules.rules):
        label = _label(index, rule).ljust(width)
        matched = rule.fullmatch(name)
        if matched is None:
            lines.append(f"  {label}  {_no_match(rule, name)}")
            continue
        if taken is not None:
            lines.append(f"  {label}  also matches, but rule {taken + 1} comes first (shadowed)")
            continue
        taken = index
        lines.append(f"  {label}  MATCH  {_groups(matched)}{_outcome(rule, matched)}")
    if taken is None:
        lines.append("  no rule matches: the name is an unused source")
    if plan is not None:
        lines.extend(f"  plan: {verdict}" for verdict in _verdicts(plan, name))
    return "\n".join(lines)


def explain_target(plan: Plan, target: str) -> str:
    """Explain where target variable ``target`` (canonical name or namespace key) gets its value, from the plan.

    Example:
        >>> from mapper.plan import Assignment, RuleRef
        >>> plan = Plan(rule_files=("r.toml",), source="s", target="t", namespace="path", assignments=(
        ...     Assignment("d/kernel", "d/kernel", "old/w", RuleRef("r.toml", 2, "dense"), (), (2,), "float32", (2,), "float32"),))
        >>> print(explain_target(plan, "d/kernel"))
        d/kernel
          filled from 'old/w' [2] float32 by r.toml rule 2 ('dense')
    """
    lines = [target]
    found = [a for a in plan.assignments if target in (a.target, a.target_key)]
    for assignment in found:
        operations = _operations(assignment)
        combine = f"{assignment.combine.describe()} of {list(assignment.members)} " if assignment.combine else ""
        origin = f"{assignment.source_id}:" if assignment.source_id else ""
        lines.append(
            f"  filled from {combine or ''}{origin}{assignment.source!r} {format_shape(assignment.source_shape)} "
            f"{assignment.source_dtype} by {assignment.rule}"
            + (f"\n    operations: {operations}" if operations else "")
        )
    for skip in plan.skips:
        if skip.side == "target" and skip.name == target:
            lines.append(f"  kept at its initial value by {skip.rule}: {skip.reason}")
        elif skip.target == target:
            lines.append(
                f"  left at its initial value: source {skip.name!r} was skipped by {skip.rule}: {skip.reason}"
                + (f" ({skip.detail})" if skip.detail else "")
            )
    lines.extend(
        f"  UNFILLED: no rule gives it a value ({format_shape(entry.shape)} {entry.dtype})"
        for entry in plan.unfilled_targets
        if entry.name == target
    )
    lines.extend(
        f"  {problem.severity.value}: {problem.message}" for problem in plan.problems if target in problem.names
    )
    if len(lines) == 1:
        lines.append("  the plan does not mention it: check the name (canonical path or namespace key)")
    return "\n".join(lines)


def _operations(assignment: Assignment) -> str:
    """The assignment's operations as the plan describes them, space-separated ("" when there are none)."""
    return " ".join(operation.describe() for operation in assignment.operations)


def _label(index: int, rule: Rule) -> str:
    return f"rule {index + 1}" + (f" {rule.name!r}" if rule.name else "")


def _no_match(rule: Rule, name: str) -> str:
    longest = next(
        (length for length in range(len(name), -1, -1) if rule.fullmatch(name[:length], partial=True) is not None), 0
    )
    if longest == len(name):
        # 0 would say nothing fits, where the wildcard does fit: keep the hint about the end.
        longest = _before_literal_ending(rule, name) or len(name)
    if longest == len(name):
        return f"no match: {name}|  (the pattern wants more after the end)"
    return f"no match: {name[:longest]}|{name[longest:]}"


# The literal text a pattern ends with: word characters, '/', '-', and escaped punctuation.
_LITERAL_ENDING = re.compile(r"(?:[\w/-]|\\[^\w\s])+$")


def _before_literal_ending(rule: Rule, name: str) -> int:
    """Where the name stops fitting a pattern that a wildcard lets take any prefix, such as ``(?:.+\\.)?counter``.

    Every prefix of the name could then be completed (the wildcard takes it all), so the longest one says nothing.
    Instead: the longest prefix that the fewest characters of the pattern's literal ending complete into a match
    (``bn1.`` + ``num_batches_tracked`` for ``bn1.running_mean``). ``len(name)`` when that is no better.
    """
    found = _LITERAL_ENDING.search(rule.match)
    ending = re.sub(r"\\(.)", r"\1", found.group()) if found else ""
    best, best_cost = len(name), len(ending) + 1
    for length in range(len(name), -1, -1):
        for cost in range(min(best_cost, len(ending) + 1)):
            if rule.fullmatch(name[:length] + ending[len(ending) - cost :]) is not None:
                best, best_cost = length, cost
                break
    return best


def _groups(matched: Any) -> str:
    groups = matched.groupdict()
    return "".join(f"{key}={value!r} " for key, value in groups.items())


def _outcome(rule: Rule, matched: Any) -> str:
    outcome = rule_outcome(rule, matched)
    if outcome.skip is not None:
        return f"->  skip: {outcome.skip}"
    if outcome.error is not None:
        return f"->  TEMPLATE ERROR: {outcome.error}"
    if outcome.split:
        return " ->  split into " + ", ".join(repr(name) for name in outcome.names)
    return f" ->  {outcome.names[0]!r}"


def _verdicts(plan: Plan, name: str) -> list[str]:
    verdicts: list[str] = []
    for assignment in plan.assignments:
        if name in assignment.source_names:
            operations = _operations(assignment)
            verdicts.append(
                f"assigned to {assignment.target!r} {format_shape(assignment.target_shape)} by {assignment.rule}"
                + (f"; operations: {operations}" if operations else "")
            )
    for skip in plan.skips:
        if skip.side == "source" and skip.name == name:
            shapes = (
                f" ({format_shape(skip.source_shape)} -> target {format_shape(skip.target_shape)})"
                if skip.target_shape is not None
                else ""
            )
            verdicts.append(
                f"skipped by {skip.kind.value} ({skip.rule}): {skip.reason}{shapes}"
                + (f"; {skip.detail}" if skip.detail and skip.detail not in skip.reason else "")
            )
    verdicts.extend("unused: no rule matched it" for entry in plan.unused_sources if entry.name == name)
    verdicts.extend(
        f"{problem.severity.value}: {problem.message}" for problem in plan.problems if name in problem.names
    )
    return verdicts or ["not in the plan (the name is not in the source)"]


__all__ = ["explain_source", "explain_target"]
