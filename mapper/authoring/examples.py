"""Inline ``[[examples]]`` of a rule file: source names and what the rules must do with them, checked without tensors."""

from __future__ import annotations

from dataclasses import dataclass

from mapper.authoring._outcome import rule_outcome
from mapper.plan.matching import RuleMatcher
from mapper.rules import Example, RuleSet


@dataclass(frozen=True)
class ExampleResult:
    """The outcome of one example: what it expected, what the rules gave, and whether they agree.

    Example:
        >>> ExampleResult(1, "w", "target 'v'", "target 'v'", None).ok
        True
    """

    number: int
    source: str
    expected: str
    got: str
    rule: str | None

    @property
    def ok(self) -> bool:
        """Whether the rules did what the example expects."""
        return self.expected == self.got

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        by = f" (by {self.rule})" if self.rule else ""
        detail = f"expected {self.expected}, got {self.got}{by}" if not self.ok else f"{self.got}{by}"
        return f"example {self.number} {verdict}: {self.source!r}: {detail}"


def check_examples(rules: RuleSet) -> tuple[ExampleResult, ...]:
    """Run every ``[[examples]]`` entry through the rules' first-match logic (names only).

    Example:
        >>> from mapper.rules import parse_rules
        >>> rules = parse_rules('''
        ... format = 1
        ... [[rules]]
        ... name = "layers"
        ... match = 'h\\\\.(?P<i>\\\\d+)\\\\.w'
        ... target = "layer_{i + 1}/kernel"
        ... [[examples]]
        ... source = "h.0.w"
        ... target = "layer_1/kernel"
        ... [[examples]]
        ... source = "h.0.b"
        ... skip = true
        ... ''')
        >>> [str(result) for result in check_examples(rules)]
        ["example 1 ok: 'h.0.w': target 'layer_1/kernel' (by rule 1 ('layers'))", "example 2 FAILED: 'h.0.b': expected skip, got no rule matches"]
    """
    matcher = RuleMatcher(rules.rules)
    return tuple(_check(rules, matcher, number, example) for number, example in enumerate(rules.examples, start=1))


def _check(rules: RuleSet, matcher: RuleMatcher, number: int, example: Example) -> ExampleResult:
    expected = _expected(example)
    found = matcher.first(example.source)
    if found is None:
        return ExampleResult(number, example.source, expected, "no rule matches", None)
    index, matched = found
    rule = rules.rules[index]
    ref = rules.rule_ref(index)
    label = f"rule {ref.index}" + (f" ({rule.name!r})" if rule.name else "")
    if example.rule is not None and rule.name != example.rule:
        return ExampleResult(number, example.source, f"{expected} by rule {example.rule!r}", f"taken by {label}", None)
    if example.groups:
        captured = matched.groupdict()
        missing = [group for group in example.groups if group not in captured]
        if missing:
            defined = ", ".join(sorted(captured)) or "none"
            return ExampleResult(
                number, example.source, expected, f"a rule without group {missing[0]!r} (it defines: {defined})", label
            )
        wrong = {group: captured[group] for group, value in example.groups.items() if captured[group] != value}
        if wrong:
            wanted = ", ".join(f"{group}={example.groups[group]!r}" for group in wrong)
            got = ", ".join(f"{group}={value!r}" for group, value in wrong.items())
            return ExampleResult(number, example.source, f"{expected} with {wanted}", f"groups {got}", label)
    outcome = rule_outcome(rule, matched)
    if outcome.skip is not None:
        got = "skip"
    elif outcome.error is not None:
        got = f"a template error: {outcome.error}"
    else:
        got = f"targets {list(outcome.names)}" if outcome.split else f"target {outcome.names[0]!r}"
    return ExampleResult(number, example.source, expected, got, label)


def _expected(example: Example) -> str:
    if example.skip:
        return "skip"
    if example.targets is not None:
        return f"targets {list(example.targets)}"
    return f"target {example.target!r}"


__all__ = ["ExampleResult", "check_examples"]
