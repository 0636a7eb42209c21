"""Matching names against a rule file's ordered full-match patterns, first match wins, in time linear in names."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import regex

from mapper.rules.bound import digit_blind, match_timeout, placement, proven_length, set_end, timed_out
from mapper.specs import SourceSet, TensorSpec


class RuleMatcher:
    """First-match lookup of names against an ordered list of full-match patterns.

    Each pattern's literal prefix (the text every match must start with) buckets the rules, so a name is
    tried only against rules whose prefix it starts with, in their original order. That keeps planning
    linear in names even with hundreds of rules. Names that differ only in their digits (``layer_3/...``,
    ``layer_7/...``) are then usually decided once: see :meth:`first`. Every match runs under the rules' time
    bound (:func:`mapper.rules.bound.match_timeout`); one that runs past it raises ``MatchTimeoutError``.

    Example:
        >>> from mapper.rules import Rule
        >>> matcher = RuleMatcher([Rule(match="a/.*", skip="x"), Rule(match=".*", skip="y")])
        >>> matcher.first("a/b")[0], matcher.first("c")[0], matcher.first("")[0]
        (0, 1, 1)
    """

    def __init__(
        self, patterns: Sequence[Any], *, only: Collection[int] | None = None, matchless: Collection[int] = ()
    ) -> None:
        self._patterns = list(patterns)
        # Patterns whose match object the caller does not need (a skip rule's): what first() gives for one that won
        # by its digit shape, made once (None for the others).
        self._alone = [(index, None) if index in matchless else None for index in range(len(self._patterns))]
        # The compiled pattern's own fullmatch where there is one: it skips a method call per try.
        self._fullmatch = [(getattr(pattern, "_pattern", None) or pattern).fullmatch for pattern in self._patterns]
        self._timeouts = [match_timeout(placement(pattern)[2]) for pattern in self._patterns]
        # Names up to this long are matched without the clock: the pattern provably finishes within the bound.
        self._proven = [
            proven_length(pattern.match, timeout)
            for pattern, timeout in zip(self._patterns, self._timeouts, strict=True)
        ]
        compiled = [isinstance(getattr(pattern, "_pattern", None), regex.Pattern) for pattern in self._patterns]
        # For ASCII names within the proven length, the standard library's engine where it matches the same as
        # the regex package (only a regex-compiled pattern is known to: anything else keeps its own fullmatch).
        self._quick = [
            (quick_fullmatch(pattern.match) or fullmatch) if proven >= 0 and known else fullmatch
            for pattern, fullmatch, proven, known in zip(
                self._patterns, self._fullmatch, self._proven, compiled, strict=True
            )
        ]
        buckets: dict[str, list[int]] = {}
        # Rules whose pattern after its literal prefix cannot tell one digit from another (bound.digit_blind).
        self._blind = [False] * len(self._patterns)
        for index, pattern in enumerate(self._patterns):
            prefix, rest = _prefix_and_rest(pattern.match)
            self._blind[index] = compiled[index] and digit_blind(rest)
            if only is None or index in only:
                buckets.setdefault(prefix, []).append(index)
        self._buckets = buckets
        self._lengths = sorted({len(prefix) for prefix in buckets})
        # How much of a name the candidates depend on, by its first `head` characters: up to the end of the longest
        # prefix that starts like it (the memo's key; a name that starts like no prefix needs no more than `head`).
        self._head = next((length for length in self._lengths if length), 0)
        self._depth: dict[str, int] = {}
        for prefix in buckets:
            if len(prefix) >= self._head:
                self._depth[prefix[: self._head]] = max(self._depth.get(prefix[: self._head], 0), len(prefix))
        # The starts of every prefix at those lengths: a name whose start is not one starts with no longer prefix.
        self._stems = {prefix[:length] for prefix in buckets for length in self._lengths if length <= len(prefix)}
        self._memo: dict[str, _Candidates] = {}
        self._by_stem: dict[str, _Candidates] = {}
        self._interned: dict[tuple[int, ...], _Candidates] = {}

    def every(self, name: str) -> list[tuple[int, Any]]:
        """``(index, match)`` of every pattern matching all of ``name``, in order (for lints and explain)."""
        return [
            (index, matched)
            for index in self._candidates(name).indices
            if (matched := self._try(index, name)) is not None
        ]

    def _try(self, index: int, name: str) -> Any:
        if len(name) <= self._proven[index]:
            return (self._quick if name.isascii() else self._fullmatch)[index](name)
        timeout = self._timeouts[index]
        try:
            return self._fullmatch[index](name, timeout=timeout)
        except TimeoutError:
            raise timed_out(self._patterns[index], name, timeout, index=index + 1) from None

    def _start(self, name: str) -> str:
        """As much of the start of ``name`` as the rules it may match depend on: see ``_depth``."""
        return name[: self._depth.get(name[: self._head], self._head)]

    def _candidates(self, name: str) -> _Candidates:
        # Which rules a name may match depends only on its start (up to the end of the longest prefix it may begin
        # with), and names of one model share those (layer_0/attention/...), so the answer is remembered per start.
        # It depends in fact only on the longest of its starts that begins some prefix (the stem), which many share.
        start = self._start(name)
        candidates = self._memo.get(start)
        if candidates is None:
            stem = self._stem(name)
            candidates = self._by_stem.get(stem)
            if candidates is None:
                candidates = self._by_stem[stem] = self._of_stem(stem)
            self._memo[start] = candidates
        return candidates

    def _stem(self, name: str) -> str:
        """The longest start of ``name`` at a prefix length that begins some prefix.

        A start that begins a prefix has shorter starts that do too (they begin the same one), so the lengths
        that qualify come first: a binary search finds the last one.
        """
        lengths, stems = self._lengths, self._stems
        low, high = 0, len(lengths)  # lengths[:low] qualify, lengths[high:] do not
        while low < high:
            middle = (low + high) // 2
            length = lengths[middle]
            if length <= len(name) and name[:length] in stems:
                low = middle + 1
            else:
                high = middle
        return name[: lengths[low - 1]] if low else ""

    def _of_stem(self, stem: str) -> _Candidates:
        """The rules whose prefix ``stem`` starts with, in order, in the record all stems with those rules share.

        With the record they share what was found for each digit shape.
        """
        prefixes = [stem[:length] for length in self._lengths if length <= len(stem)]
        key = tuple(sorted(index for prefix in prefixes for index in self._buckets.get(prefix, ())))
        candidates = self._interned.get(key)
        if candidates is None:
            candidates = self._interned[key] = _Candidates(key, self._blind, self._proven)
        return candidates

    def first(self, name: str) -> tuple[int, Any] | None:
        """``(index, match)`` of the first pattern matching all of ``name``, or None.

        Names that differ only in their digits usually go to one rule, and are then matched against it alone: among
        the rules a name may match (by its start), the first match for an ASCII name is remembered under the name
        with its digits written as 0, when every rule tried up to it is digit-blind after its literal prefix
        (:func:`mapper.rules.bound.digit_blind`) and ran without the clock. Those rules answer alike for every name
        of that shape (their prefixes are in the start, which is the same). A remembered pattern given as
        ``matchless`` is not even run: the match is None.
        """
        candidates = self._memo.get(self._start(name)) or self._candidates(name)
        index = candidates.winners.get(name.encode().translate(_ZEROS)) if name.isascii() else None
        if index is not None:
            if index == _NO_RULE:
                return None
            found = self._alone[index]
            if found is not None:
                return found
            matched = self._quick[index](name)
            if matched is not None:  # always, as digit_blind proves; else the search below decides
                return index, matched
        return self._decide(name, candidates)

    def firsts(self, names: Iterable[str]) -> Iterator[tuple[int, Any] | None]:
        """:meth:`first` of each of ``names``, in order: the planner's loop over every source name, with no call per name.

        Example:
            >>> from mapper.rules import Rule
            >>> matcher = RuleMatcher([Rule(match="a/.*", skip="x"), Rule(match=".*", skip="y")], matchless=[0])
            >>> [(index, matched and matched.group()) for index, matched in matcher.firsts(["a/1", "b", "a/2"])]
            [(0, 'a/1'), (1, 'b'), (0, None)]

        The first ``a/N`` name is matched; the second, of the same digit shape, is decided by the first's rule, whose
        match (a skip rule's, ``matchless``) is not needed.
        """
        memo, depth, head, candidates_of = self._memo, self._depth, self._head, self._candidates
        quick, alone = self._quick, self._alone
        for name in names:
            candidates = memo.get(name[: depth.get(name[:head], head)]) or candidates_of(name)
            index = candidates.winners.get(name.encode().translate(_ZEROS)) if name.isascii() else None
            if index is not None:
                if index == _NO_RULE:
                    yield None
                    continue
                found = alone[index]
                if found is None and (matched := quick[index](name)) is not None:
                    found = index, matched  # always (see first)
                if found is not None:
                    yield found
                    continue
            yield self._decide(name, candidates)

    def _decide(self, name: str, candidates: _Candidates) -> tuple[int, Any] | None:
        """The first match among ``candidates``, tried in order, remembered for the name's digit shape if it may be."""
        found = self._search(name, candidates.indices)
        if name.isascii():
            candidates.remember(name.encode().translate(_ZEROS), len(name), found)
        return found

    def _search(self, name: str, candidates: tuple[int, ...]) -> tuple[int, Any] | None:
        """The first of ``candidates`` matching all of ``name``, tried in order."""
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


# ASCII digits to 0: names that differ only in digits get one shape.
_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_NO_RULE = -1


class _Candidates:
    """The rules names with one start may match, in order, and the first match remembered per digit shape."""

    __slots__ = ("indices", "reach", "winners")

    def __init__(self, indices: tuple[int, ...], blind: Sequence[bool], proven: Sequence[int]) -> None:
        self.indices = indices
        self.winners: dict[bytes, int] = {}
        # reach[k]: names up to this long decide alike by shape when the (k+1)th rule is the first match, every rule
        # tried being digit-blind and run without the clock (-1: not at all); the last entry is for no match.
        reach, limit = {}, _ANY_LENGTH
        for index in indices:
            limit = min(limit, proven[index] if blind[index] else -1)
            reach[index] = limit
        self.reach = reach
        self.reach[_NO_RULE] = limit

    def remember(self, shape: bytes, length: int, found: tuple[int, Any] | None) -> None:
        """Remember the first match for names of ``shape`` if every rule tried tells no digit from another."""
        index = _NO_RULE if found is None else found[0]
        if length <= self.reach[index]:
            self.winners[shape] = index


_ANY_LENGTH = 2**62


def matchers(
    rules: Sequence[Any], source: Mapping[str, TensorSpec] | SourceSet, *, matchless: Collection[int] = ()
) -> Iterator[tuple[str | None, Mapping[str, TensorSpec], RuleMatcher]]:
    """Each source's id (None for a single unnamed source), its specs, and a matcher of the rules that read it.

    A rule with ``source = "name"`` reads only that named source; a rule without one reads every source.
    ``matchless`` goes to each RuleMatcher.

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
        yield source_id, specs, RuleMatcher(rules, only=only, matchless=matchless)


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
    return _prefix_and_rest(pattern)[0]


def _prefix_and_rest(pattern: str) -> tuple[str, str]:
    """:func:`literal_prefix` and the pattern text after it: a full match is the prefix, then a full match of the rest."""
    if _has_top_level_alternation(pattern):
        return "", pattern
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
    return "".join(prefix), pattern[position:]


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
