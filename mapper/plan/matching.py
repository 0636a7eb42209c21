"""Matching names against a rule file's ordered full-match patterns, first match wins, in time linear in names."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import regex

from mapper.rules.bound import match_timeout, placement, proven_length, set_end, timed_out
from mapper.specs import SourceSet, TensorSpec


class RuleMatcher:
    """First-match lookup of names against an ordered list of full-match patterns.

    Each pattern's literal prefix (the text every match must start with) buckets the rules, so a name is
    tried only against rules whose prefix it starts with, in their original order. That keeps planning
    linear in names even with hundreds of rules. Every match runs under the rules' time bound
    (:func:`mapper.rules.bound.match_timeout`); one that runs past it raises ``MatchTimeoutError``.

    Example:
        >>> from mapper.rules import Rule
        >>> matcher = RuleMatcher([Rule(match="a/.*", skip="x"), Rule(match=".*", skip="y")])
        >>> matcher.first("a/b")[0], matcher.first("c")[0], matcher.first("")[0]
        (0, 1, 1)
    """

    def __init__(self, patterns: Sequence[Any], *, only: Collection[int] | None = None) -> None:
        self._patterns = list(patterns)
        # The compiled pattern's own fullmatch where there is one: it skips a method call per try.
        self._fullmatch = [(getattr(pattern, "_pattern", None) or pattern).fullmatch for pattern in self._patterns]
        self._timeouts = [match_timeout(placement(pattern)[2]) for pattern in self._patterns]
        # Names up to this long are matched without the clock: the pattern provably finishes within the bound.
        self._proven = [
            proven_length(pattern.match, timeout)
            for pattern, timeout in zip(self._patterns, self._timeouts, strict=True)
        ]
        # For ASCII names within the proven length, the standard library's engine where it matches the same as
        # the regex package (only a regex-compiled pattern is known to: anything else keeps its own fullmatch).
        self._quick = [
            (quick_fullmatch(pattern.match) or fullmatch)
            if proven >= 0 and isinstance(getattr(pattern, "_pattern", None), regex.Pattern)
            else fullmatch
            for pattern, fullmatch, proven in zip(self._patterns, self._fullmatch, self._proven, strict=True)
        ]
        buckets: dict[str, list[int]] = {}
        for index, pattern in enumerate(self._patterns):
            if only is None or index in only:
                buckets.setdefault(literal_prefix(pattern.match), []).append(index)
        self._buckets = buckets
        self._lengths = sorted({len(prefix) for prefix in buckets})
        self._longest = self._lengths[-1] if self._lengths else 0
        self._memo: dict[str, list[int]] = {}

    def every(self, name: str) -> list[tuple[int, Any]]:
        """``(index, match)`` of every pattern matching all of ``name``, in order (for lints and explain)."""
        return [(index, matched) for index in self._candidates(name) if (matched := self._try(index, name)) is not None]

    def _try(self, index: int, name: str) -> Any:
        if len(name) <= self._proven[index]:
            return (self._quick if name.isascii() else self._fullmatch)[index](name)
        timeout = self._timeouts[index]
        try:
            return self._fullmatch[index](name, timeout=timeout)
        except TimeoutError:
            raise timed_out(self._patterns[index], name, timeout, index=index + 1) from None

    def _candidates(self, name: str) -> list[int]:
        # Which rules a name may match depends only on its first `longest prefix` characters, and names of
        # one model share those (layer_0/attention/...), so the answer is remembered per such start.
        start = name[: self._longest]
        candidates = self._memo.get(start)
        if candidates is None:
            candidates = []
            for length in self._lengths:
                if length > len(name):
                    break
                bucket = self._buckets.get(name[:length])
                if bucket:
                    candidates.extend(bucket)
            candidates.sort()
            self._memo[start] = candidates
        return candidates

    def first(self, name: str) -> tuple[int, Any] | None:
        """``(index, match)`` of the first pattern matching all of ``name``, or None."""
        candidates = self._candidates(name)
        fullmatch, timeouts, proven, length = self._fullmatch, self._timeouts, self._proven, len(name)
        unclocked = self._quick if name.isascii() else fullmatch
        try:
            for index in candidates:
                if length <= proven[index]:
                    matched = unclocked[index](name)
                else:
                    matched = fullmatch[index](name, timeout=timeouts[index])
                if matched is not None:
                    return index, matched
        except TimeoutError:
            # The loop stays free of a call per try (planning runs it for every name); the error names the rule.
            raise timed_out(self._patterns[index], name, timeouts[index], index=index + 1) from None
        return None


def matchers(
    rules: Sequence[Any], source: Mapping[str, TensorSpec] | SourceSet
) -> Iterator[tuple[str | None, Mapping[str, TensorSpec], RuleMatcher]]:
    """Each source's id (None for a single unnamed source), its specs, and a matcher of the rules that read it.

    A rule with ``source = "name"`` reads only that named source; a rule without one reads every source.

    Example:
        >>> from mapper.rules import Rule
        >>> from mapper.specs import VariableMap
        >>> rules = [Rule(match="a", skip="x", source="hf"), Rule(match="a", skip="y")]
        >>> [(source_id, matcher.first("a")[0]) for source_id, _, matcher in matchers(rules, VariableMap([]))]
        [(None, 1)]
    """
    maps = list(source.items()) if isinstance(source, SourceSet) else [(None, source)]
    for source_id, specs in maps:
        only = {index for index, rule in enumerate(rules) if rule.source in (None, source_id)}
        yield source_id, specs, RuleMatcher(rules, only=only)


# Escapes on which the two engines disagree for ASCII names: `\s` (the regex package leaves out \x1c-\x1f).
_ENGINES_DIFFER = ("\\s", "\\S")


def quick_fullmatch(pattern: str) -> Callable[[str], Any] | None:
    """The standard library's ``fullmatch`` for ``pattern`` where it gives the same matches on ASCII names, else None.

    Only for patterns :func:`mapper.rules.bound.proven_length` covers (no flags, lookarounds or backreferences:
    plain literals, sets, ``.``, ``\\d`` and ``\\w``, groups, quantifiers), on which the two backtracking engines
    agree, and it matches in about half the time of the ``regex`` package. Its matches answer ``group()`` and
    ``groupdict()`` like the ``regex`` package's.

    Example:
        >>> quick_fullmatch(r"layer_(?P<i>\\d+)")("layer_12").group("i"), quick_fullmatch(r"a\\sb")
        ('12', None)
    """
    if any(escape in pattern for escape in _ENGINES_DIFFER):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a possible nested set or set operation: the engines may read it apart
        try:
            compiled = re.compile(pattern)
        except (re.error, FutureWarning, DeprecationWarning):
            return None
    return compiled.fullmatch


_META = set(".^$*+?{}[]\\|()")
_QUANTIFIERS = set("*+?{")


def literal_prefix(pattern: str) -> str:
    """The literal text every full match of ``pattern`` must start with ("" when unsure).

    Example:
        >>> literal_prefix(r"bert/encoder/layer_(?P<i>\\d+)/.*"), literal_prefix("ab*c"), literal_prefix("a|b")
        ('bert/encoder/layer_', 'a', '')
        >>> literal_prefix(r"model\\.layers\\.\\d+")
        'model.layers.'
    """
    if _has_top_level_alternation(pattern):
        return ""
    prefix: list[str] = []
    position = 0
    while position < len(pattern):
        char = pattern[position]
        if char == "\\":
            escaped = pattern[position + 1 : position + 2]
            if not escaped or escaped.isalnum():
                break  # a class such as \d, a backreference, or an escape we do not interpret
            literal, width = escaped, 2
        elif char in _META:
            break
        else:
            literal, width = char, 1
        following = pattern[position + width : position + width + 1]
        if following and following in _QUANTIFIERS:
            break  # the literal may repeat zero times
        prefix.append(literal)
        position += width
    return "".join(prefix)


# Constructs after which a plain scan cannot tell where groups and sets end: comments, and flags that switch
# on verbose mode ('#' comments, ignored spaces) or version 1 (nested sets). Patterns with them get no prefix.
_UNSURE = re.compile(r"\(\?#|\(\?[a-zA-Z0-9-]*[xV]")


def _has_top_level_alternation(pattern: str) -> bool:
    """Whether a ``|`` outside every group splits ``pattern``; True when the scan cannot be sure."""
    if _UNSURE.search(pattern):
        return True
    depth = 0
    position = 0
    while position < len(pattern):
        char = pattern[position]
        if char == "\\":
            position += 2
            continue
        if char == "[":
            end = set_end(pattern, position)
            if end is None:
                return True  # a POSIX class or a nested set: not worth parsing
            position = end
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            return True
        position += 1
    return False


__all__ = ["RuleMatcher", "literal_prefix", "matchers", "quick_fullmatch"]
