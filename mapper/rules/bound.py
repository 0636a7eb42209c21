"""The time bound on every match of a rule-file pattern, and the error for a pattern that runs past it."""

from __future__ import annotations

import math
import os
from typing import Any, Literal

from mapper.errors import MatchTimeoutError, RuleFileError, RuleIssue
from mapper.rules.ref import RuleRef

# One second per match: honest patterns match a name in microseconds, so even a loaded CI machine stays
# orders of magnitude below it, while a pattern that backtracks without end is stopped within a second.
DEFAULT_MATCH_TIMEOUT = 1.0
MATCH_TIMEOUT_VARIABLE = "MAPPER_MATCH_TIMEOUT"
_SHOWN = 40  # characters of a long name that a message shows
_ADVICE = (
    "nested quantifiers such as (a|aa)+ or (a+)+ backtrack without end; anchor the alternatives so that only one "
    "can match at each place, or make them atomic (?>...) or possessive (a++); "
    f"if the pattern is honest and the names are long, raise {MATCH_TIMEOUT_VARIABLE} (seconds)"
)


# Where a rule or keep stands and the bound it was loaded with: kept in the instance's __dict__ beside its fields,
# not as a private attribute, because pydantic compares private attributes and a rule read from a file must stay
# equal to the same rule written in Python (pydantic compares only fields of __dict__, as for cached properties).
_PLACE = "_bound_place"


def place(entry: Any, file: str, index: int, timeout: float | None) -> None:
    """Remember that ``entry`` (a Rule or Keep) is number ``index`` of ``file``, matched under ``timeout``.

    Example:
        >>> from mapper.rules import Rule
        >>> rule = Rule(match="w", skip="x")
        >>> place(rule, "r.toml", 2, 0.5)
        >>> placement(rule), rule == Rule(match="w", skip="x")
        (('r.toml', 2, 0.5), True)
    """
    entry.__dict__[_PLACE] = (file, index, timeout)


def placement(entry: Any) -> tuple[str | None, int | None, float | None]:
    """``(file, index, timeout)`` that :func:`place` gave ``entry``, each None where not known.

    Example:
        >>> placement(object())
        (None, None, None)
    """
    found: tuple[str | None, int | None, float | None] = getattr(entry, "__dict__", {}).get(_PLACE, (None, None, None))
    return found


def match_timeout(value: float | None = None) -> float:
    """The match time bound in seconds: ``value`` if given, else ``$MAPPER_MATCH_TIMEOUT``, else one second.

    Raises:
        RuleFileError: the bound is not a positive, finite number of seconds.

    Example:
        >>> match_timeout(0.25), match_timeout() == DEFAULT_MATCH_TIMEOUT or MATCH_TIMEOUT_VARIABLE in os.environ
        (0.25, True)
    """
    where = "match_timeout"
    if value is None:
        text = os.environ.get(MATCH_TIMEOUT_VARIABLE)
        if text is None:
            return DEFAULT_MATCH_TIMEOUT
        where = MATCH_TIMEOUT_VARIABLE
        try:
            value = float(text)
        except ValueError:
            value = math.nan
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf):
        raise RuleFileError(
            [RuleIssue(where, f"{value!r} is not a match time bound", hint="give a positive number of seconds, e.g. 1")]
        )
    return float(value)


def timed_out(
    owner: Any, name: str, timeout: float, *, index: int | None = None, section: Literal["rules", "keep"] = "rules"
) -> MatchTimeoutError:
    """The error for ``owner`` (a Rule, a Keep, or anything with a ``match`` pattern) running past the bound on ``name``.

    ``index`` (1-based) stands in for the position when the owner does not know where it came from.

    Example:
        >>> from mapper.rules import Rule
        >>> error = timed_out(Rule(name="bad", match="(a|aa)+", skip="x"), "a" * 60 + "b", 0.05, index=3)
        >>> print(str(error.issues[0]).partition(" (nested")[0])
        <string>: rule 3 ('bad'), field 'match': pattern '(a|aa)+' ran past the match time bound of 0.05 s on name 'aaaaaaaaaaaaaaaaaaaa...aaaaaaaaaaaaaaaaaaab' (61 characters)
    """
    file, number, _ = placement(owner)
    file, number = getattr(owner, "_origin", None) or (file or "<string>", number or index)
    label = getattr(owner, "name", None)
    shown = name if len(name) <= _SHOWN else f"{name[: _SHOWN // 2]}...{name[-_SHOWN // 2 :]}"
    issue = RuleIssue(
        file,
        f"pattern {owner.match!r} ran past the match time bound of {timeout:g} s on name {shown!r} "
        f"({len(name)} characters)",
        rule=number,
        rule_name=label,
        field="match",
        hint=_ADVICE,
        section="keep rule" if section == "keep" else "rule",
    )
    ref = RuleRef(file, number, label, section) if number is not None else None
    return MatchTimeoutError(issue, rule=ref, name=name, timeout=timeout)


def bounded_fullmatch(
    owner: Any, name: str, *, partial: bool = False, section: Literal["rules", "keep"] = "rules"
) -> Any:
    """``owner``'s compiled pattern (``_pattern``) matched against all of ``name`` under its time bound.

    The bound is the one ``owner`` was loaded with (see :func:`place`), else :func:`match_timeout`'s.

    Raises:
        MatchTimeoutError: the match ran past the bound.

    Example:
        >>> from mapper.rules import Rule
        >>> bounded_fullmatch(Rule(match="a+", skip="x"), "aaa").span()
        (0, 3)
    """
    timeout = match_timeout(placement(owner)[2])
    try:
        return owner._pattern.fullmatch(name, partial=partial, timeout=timeout)
    except TimeoutError:
        raise timed_out(owner, name, timeout, section=section) from None


__all__ = [
    "DEFAULT_MATCH_TIMEOUT",
    "MATCH_TIMEOUT_VARIABLE",
    "bounded_fullmatch",
    "match_timeout",
    "place",
    "placement",
    "timed_out",
]
