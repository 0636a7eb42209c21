"""The time bound on every match of a rule-file pattern, and the error for a pattern that runs past it."""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Any, Literal

import regex

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


# Steps per second the regex engine is assumed to manage at the least (it does several times more): a match proven
# to need at most bound * this many steps finishes within the bound, so it runs without the clock.
_STEPS_PER_SECOND = 10_000_000
_CLASS_ESCAPES = frozenset("dwsDWS")


@lru_cache(maxsize=4096)
def proven_length(pattern: str, timeout: float) -> int:
    """The longest name on which ``pattern`` provably matches (or fails) within ``timeout``; -1 without a proof.

    Reading the clock costs more than matching a short name against an ordinary pattern, so a match that cannot
    run long is not timed. The proof: a pattern whose quantifiers apply only to single characters (a literal,
    ``.``, a set, ``\\d``, ...) and whose groups are at most optional (``(...)?``) uses each quantifier at most
    once on a way through the pattern, each repeat taking one character of the name; so a name of length n is
    tried in at most ``2**alternatives * comb(n + quantifiers, quantifiers)`` ways (the counts of the
    quantifiers add up to at most n), each of at most ``len(pattern) + n`` steps. Anything the scan does not
    know (flags, lookarounds, backreferences, repeated groups such as ``(a|aa)+``) gets no proof, and every one
    of its matches is timed.

    Example:
        >>> proven_length(r"bert/layer_(?P<i>\\d+)/(?P<part>query|key)/kernel", 1.0) > 1000
        True
        >>> proven_length("(a|aa)+", 1.0), proven_length("(?i)a", 1.0)
        (-1, -1)
    """
    shape = _choices(pattern)
    if shape is None:
        return -1
    branches, repeats = shape
    budget = timeout * _STEPS_PER_SECOND
    low, high = -1, 1_000_000  # the largest n within the budget, by bisection: the cost grows with n
    while low < high:
        middle = (low + high + 1) // 2
        if branches * math.comb(middle + repeats, repeats) * (len(pattern) + middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _choices(pattern: str) -> tuple[int, int] | None:
    """``(2**alternations, unbounded or counted quantifiers)`` of a pattern the proof covers, else None."""
    branches, repeats = 1, 0
    position = 0
    quantifiable: str | None = None  # what a quantifier here would repeat: "atom", "group" or nothing
    while position < len(pattern):
        step = _token(pattern, position)
        if step is None:
            return None
        kind, width = step
        position += width
        if kind == "quantifier":
            if quantifiable is None or (quantifiable == "group" and pattern[position - width] != "?"):
                return None  # a repeated group, or a quantifier of nothing the scan understands
            if pattern[position - width] == "?":
                branches *= 2
            else:
                repeats += 1
            if pattern[position : position + 1] in ("?", "+"):
                position += 1  # lazy or possessive: the same choices
            quantifiable = None
            continue
        if kind == "alternation":
            branches *= 2
        quantifiable = kind if kind in ("atom", "group") else None
    return branches, repeats


def _token(pattern: str, position: int) -> tuple[str, int] | None:
    """The kind and width of the token at ``position``; None for syntax the proof does not cover."""
    char = pattern[position]
    if char == "\\":
        escaped = pattern[position + 1 : position + 2]
        if not escaped or (escaped.isalnum() and escaped not in _CLASS_ESCAPES):
            return None  # a backreference, an anchor such as \b, or a property: not covered
        return "atom", 2
    if char == "[":
        end = set_end(pattern, position)
        return None if end is None or end >= len(pattern) else ("atom", end + 1 - position)
    if char == "(":
        return _group_opening(pattern, position)
    if char == ")":
        return "group", 1
    if char == "|":
        return "alternation", 1
    if char in "*+?":
        return "quantifier", 1
    if char == "{":
        counted = _COUNTED.match(pattern, position)
        return None if counted is None else ("quantifier", counted.end() - position)
    if char in "^$":
        return "anchor", 1
    return "atom", 1


def _group_opening(pattern: str, position: int) -> tuple[str, int] | None:
    """A plain, non-capturing or named group's opening; None for flags, lookarounds and the rest."""
    if pattern.startswith("(?:", position):
        return "open", 3
    if pattern.startswith("(?P<", position):
        close = pattern.find(">", position)
        return None if close < 0 else ("open", close + 1 - position)
    return None if pattern.startswith("(?", position) else ("open", 1)


_COUNTED = regex.compile(r"\{[0-9]*(?:,[0-9]*)?\}")


def digit_blind(pattern: str) -> bool:
    """Whether ``pattern`` provably cannot tell one digit from another (a name and the name with other digits).

    It then matches a name exactly when it matches the name with any of its digits replaced by other digits.
    True for patterns :func:`proven_length` covers (no backreferences, flags or lookarounds) in which no digit
    appears except in counted quantifiers (``{2,4}``) and group names: ``\\d``, ``\\w``, ``.`` and sets without
    a digit (a range between two non-digits holds all ten digits or none) treat every digit alike.

    Example:
        >>> digit_blind(r"layer_(?P<i2>\\d+)/w{2}"), digit_blind("block_3/.*"), digit_blind("[0-5]"), digit_blind(r"(a)\\1")
        (True, False, False, False)
    """
    if _choices(pattern) is None:
        return False
    position = 0
    while position < len(pattern):
        step = _token(pattern, position)
        if step is None:  # pragma: no cover - _choices read every token already
            return False
        kind, width = step
        if kind == "atom" and any(char.isdigit() for char in pattern[position : position + width]):
            return False
        position += width
    return True


def set_end(pattern: str, start: int) -> int | None:
    """Where the character set opening at ``start`` closes (its ``]``); None for a nested set or POSIX class.

    Example:
        >>> set_end("a[^]b]c", 1), set_end("[[:alpha:]]", 0)
        (5, None)
    """
    position = start + 1
    if pattern[position : position + 1] == "^":
        position += 1
    if pattern[position : position + 1] == "]":
        position += 1  # a ']' first in a set is a literal, also after '^'
    while position < len(pattern) and pattern[position] != "]":
        if pattern[position] == "[":
            return None
        position += 2 if pattern[position] == "\\" else 1
    return position


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
    if len(name) <= proven_length(owner.match, timeout):
        return owner._pattern.fullmatch(name, partial=partial)
    try:
        return owner._pattern.fullmatch(name, partial=partial, timeout=timeout)
    except TimeoutError:
        raise timed_out(owner, name, timeout, section=section) from None


__all__ = [
    "DEFAULT_MATCH_TIMEOUT",
    "MATCH_TIMEOUT_VARIABLE",
    "bounded_fullmatch",
    "digit_blind",
    "match_timeout",
    "place",
    "placement",
    "proven_length",
    "set_end",
    "timed_out",
]
