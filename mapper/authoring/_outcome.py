"""What a rule does with a name it matched: skip it, give it target names, or fail in a template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mapper.rules import Rule, TemplateError


@dataclass(frozen=True)
class Outcome:
    """The result of one rule on one match: its skip reason, or the names it renders, or its template error.

    ``split`` says whether the rule has several targets (``targets = [...]``) rather than one.

    Example:
        >>> from mapper.rules import Rule
        >>> rule = Rule(match="(?P<x>.+)/w", target="{x}/kernel")
        >>> rule_outcome(rule, rule.fullmatch("dense/w"))
        Outcome(skip=None, names=('dense/kernel',), error=None, split=False)
    """

    skip: str | None = None
    names: tuple[str, ...] = ()
    error: TemplateError | None = None
    split: bool = False


def rule_outcome(rule: Rule, matched: Any) -> Outcome:
    """What ``rule`` does with the name behind ``matched`` (a match of its own pattern).

    Example:
        >>> from mapper.rules import Rule
        >>> rule = Rule(match="step", skip="a counter")
        >>> rule_outcome(rule, rule.fullmatch("step")).skip
        'a counter'
    """
    if rule.skip is not None:
        return Outcome(skip=rule.skip)
    try:
        names = tuple(rule.render(matched, part) for part in range(len(rule.targets or (rule.target,))))
    except TemplateError as error:
        return Outcome(error=error)
    return Outcome(names=names, split=rule.targets is not None)
