"""Name patterns: groups of names written as one bash-style brace pattern, ``layer_{0..11}/{key,query}``, losslessly.

``group_names`` folds a list of names into few patterns, ``expand_pattern`` gives the names back, and
``group_pairs`` does the same for (source, target) pairs whose parts vary together. Reports, ``suggest`` and
``diff`` all show long name lists this way.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

from mapper.text import natural_key

_SEPARATOR = re.compile(r"([/.])")
# Digit runs are capped so int() never meets a huge string; a longer run simply splits in two.
_NUMBER = re.compile(r"([0-9]{1,18})")
_RANGE = re.compile(r"([0-9]{1,18})\.\.([0-9]{1,18})")
_SPECIAL = re.compile(r"[\\{},]")

_Slots = tuple[frozenset[str], ...]


def escape(text: str) -> str:
    r"""``text`` with the characters that brace patterns give meaning to escaped.

    Example:
        >>> print(escape("a{b},c"))
        a\{b\}\,c
    """
    return _SPECIAL.sub(lambda match: "\\" + match.group(), text)


def expand_pattern(pattern: str) -> list[str]:
    r"""Expand a name pattern into the names it stands for, in order.

    Patterns use bash-style brace expansion: ``{a,b}`` is either alternative, ``{0..11}`` counts
    (``{00..11}`` pads with zeros), groups nest (``{{0..3},7}``) and ``\`` escapes the next
    character. A brace that does not open a valid group is literal, so every string is a pattern.

    Args:
        pattern: A pattern, usually one returned by ``group_names``.

    Returns:
        The expanded names, in the order the pattern lists them (first group varies slowest).

    Example:
        >>> expand_pattern("layer_{0..2}/{bias,kernel}")
        ['layer_0/bias', 'layer_0/kernel', 'layer_1/bias', 'layer_1/kernel', 'layer_2/bias', 'layer_2/kernel']
        >>> expand_pattern(r"a\{b\}/{1,{3..5}}")
        ['a{b}/1', 'a{b}/3', 'a{b}/4', 'a{b}/5']
    """
    names, _ = _BraceParser(pattern).sequence(0, in_group=False)
    return names


class _BraceParser:
    """Recursive-descent brace expansion; failed groups are remembered so bad input stays quadratic at worst."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._groups: dict[int, tuple[list[str], int] | None] = {}

    def sequence(self, start: int, *, in_group: bool) -> tuple[list[str], int]:
        text = self.text
        results = [""]
        literal: list[str] = []
        index = start
        while index < len(text):
            char = text[index]
            if char == "\\":
                literal.append(text[index + 1] if index + 1 < len(text) else "\\")
                index += 2
                continue
            if in_group and char in ",}":
                break
            if char == "{":
                group = self.group(index)
                if group is not None:
                    alternatives, index = group
                    prefix = "".join(literal)
                    literal = []
                    results = [result + prefix + alternative for result in results for alternative in alternatives]
                    continue
            literal.append(char)
            index += 1
        tail = "".join(literal)
        return [result + tail for result in results], min(index, len(text))

    def group(self, start: int) -> tuple[list[str], int] | None:
        if start not in self._groups:
            self._groups[start] = self._parse_group(start)
        return self._groups[start]

    def _parse_group(self, start: int) -> tuple[list[str], int] | None:
        items: list[list[str]] = []
        index = start + 1
        while True:
            alternatives, index = self.sequence(index, in_group=True)
            if index >= len(self.text):
                return None
            items.append(alternatives)
            if self.text[index] == "}":
                break
            index += 1  # past the comma
        if len(items) > 1:
            return [name for item in items for name in item], index + 1
        match = _RANGE.fullmatch(self.text, start + 1, index)
        if match is None:
            return None
        return _count(match.group(1), match.group(2)), index + 1


def _count(first: str, last: str) -> list[str]:
    low, high = int(first), int(last)
    step = 1 if high >= low else -1
    padded = any(len(end) > 1 and end.startswith("0") for end in (first, last))
    width = max(len(first), len(last)) if padded else 0
    return [str(number).zfill(width) for number in range(low, high + step, step)]


def render_numbers(values: frozenset[str]) -> str:
    """``{0..11}``, ``{0,2,5}`` or ``{{0..4},{6..11}}``; zero-padded numbers are listed as they are."""
    if len(values) == 1:
        return next(iter(values))
    if any(len(value) > 1 and value.startswith("0") for value in values):
        return "{" + ",".join(sorted(values, key=lambda value: (int(value), value))) + "}"
    numbers = sorted(int(value) for value in values)
    runs: list[tuple[int, int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], number)
        else:
            runs.append((number, number))
    parts: list[str] = []
    for low, high in runs:
        if high - low >= 2:
            parts.append(f"{{{low}..{high}}}")
        else:
            parts.extend(str(number) for number in range(low, high + 1))
    return parts[0] if len(parts) == 1 else "{" + ",".join(parts) + "}"


@functools.lru_cache(maxsize=16384)
def _render_slot(values: frozenset[str]) -> str:
    """One segment position: a literal, ``layer_{0..11}``, ``{key,query,value}`` or a mix of these."""
    if len(values) == 1:
        return escape(next(iter(values)))
    families: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for value in values:
        parts = _NUMBER.split(value)
        families.setdefault(tuple(parts[0::2]), []).append(tuple(parts[1::2]))
    items: list[tuple[tuple[tuple[int, str], ...], str]] = []
    for texts, numbers in families.items():
        boxes = [_Box(tuple(frozenset({number}) for number in row)) for row in numbers]
        moves = [(position,) for position in reversed(range(len(texts) - 1))]
        for box in _merge_boxes(boxes, moves, [range(len(texts) - 1)]):
            rendered = [escape(texts[0])]
            first = [texts[0]]
            for slot, text in zip(box.slots, texts[1:], strict=True):
                rendered += [render_numbers(slot), escape(text)]
                first += [min(slot, key=lambda value: (int(value), value)), text]
            items.append((natural_key("".join(first)), "".join(rendered)))
    items.sort()
    return items[0][1] if len(items) == 1 else "{" + ",".join(item for _, item in items) + "}"


@functools.lru_cache(maxsize=16384)
def _expand_slot(values: frozenset[str]) -> tuple[str, ...]:
    return tuple(expand_pattern(_render_slot(values)))


@functools.lru_cache(maxsize=16384)
def _templates(values: frozenset[str]) -> frozenset[tuple[str, ...]]:
    """The values with their digit runs taken out: ``layer_0`` and ``layer_12`` share ``('layer_', '')``."""
    return frozenset(tuple(_NUMBER.split(value)[0::2]) for value in values)


def _one_family(values: frozenset[str]) -> bool:
    """Whether the values differ only in their digits (``layer_0``, ``layer_1``, ...)."""
    return len(_templates(values)) == 1


def _readable(slots: _Slots) -> bool:
    """Whether a merged name still reads as one thing: some segment is shared, or only digits vary.

    This keeps ``global_step`` and ``save_counter`` on lines of their own instead of ``{global_step,save_counter}``.
    """
    return any(len(slot) == 1 for slot in slots) or all(_one_family(slot) for slot in slots)


def split_name(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Segments and the separators between them: ``a/b.c`` is ``(a, b, c)`` and ``(/, .)``."""
    parts = _SEPARATOR.split(name)
    return tuple(parts[0::2]), tuple(parts[1::2])


def join_name(segments: Sequence[str], separators: Sequence[str]) -> str:
    """The name whose segments and separators ``split_name`` gave.

    Example:
        >>> join_name(*split_name("encoder/layer_0.kernel"))
        'encoder/layer_0.kernel'
    """
    return segments[0] + "".join(sep + segment for sep, segment in zip(separators, segments[1:], strict=True))


def _render(slots: _Slots, separators: Sequence[str]) -> str:
    return join_name([_render_slot(slot) for slot in slots], separators)


def _expand(slots: _Slots, separators: Sequence[str]) -> list[str]:
    return [join_name(choice, separators) for choice in itertools.product(*(_expand_slot(slot) for slot in slots))]


def _slots_key(slots: _Slots) -> tuple[tuple[int, str], ...]:
    """Where a group sorts: at its smallest member, roughly."""
    return natural_key("/".join(min(slot, key=natural_key) for slot in slots))


@dataclass(frozen=True, slots=True)
class _Box:
    """A product of value sets, one per position; ``rows`` carries the pairs a pair box stands for."""

    slots: _Slots
    rows: frozenset[tuple[str, str]] = frozenset()


# A bucket that fails to merge as a whole is merged pair by pair only up to this size (quadratic).
_GREEDY_LIMIT = 64


def _merge_boxes(boxes: Sequence[_Box], moves: Sequence[tuple[int, ...]], sides: Sequence[range]) -> list[_Box]:
    """Merge boxes that differ only at the positions of one move, repeatedly, until nothing merges."""
    current = list(boxes)
    while len(current) > 1:
        before = len(current)
        for move in moves:
            current = _merge_step(current, move, sides, None)
        if len(current) == before:
            break
    return current


def _merge_step(
    boxes: Sequence[_Box], move: tuple[int, ...], sides: Sequence[range], valid: Callable[[_Box], bool] | None
) -> list[_Box]:
    """One merge along ``move``.

    Boxes are bucketed by everything outside the move and by what keeps the merged name readable
    (see ``_merge_key``), so a bucket normally merges in one step; ``valid`` can still refuse it,
    and then its boxes merge greedily, pair by pair.
    """
    buckets: dict[tuple[_Slots, Hashable], list[_Box]] = {}
    for box in boxes:
        rest = tuple(slot for position, slot in enumerate(box.slots) if position not in move)
        buckets.setdefault((rest, _merge_key(box, move, sides)), []).append(box)
    merged: list[_Box] = []
    for bucket in buckets.values():
        merged.extend(_merge_bucket(bucket, move, valid))
    return merged


def _merge_pairs(boxes: Sequence[_Box], width: int, valid: Callable[[_Box], bool]) -> list[_Box]:
    """Merge pair boxes (left slots, then right slots) along a left position and at most one right position.

    For each left position, boxes alike elsewhere on the left are taken together, and only the right
    positions that vary among them are tried: linear in the number of boxes, not in their product.
    """
    current = list(boxes)
    size = len(current[0].slots) if current else 0
    sides = [range(width), range(width, size)]
    while len(current) > 1:
        before = len(current)
        for position in reversed(range(width)):
            alike: dict[_Slots, list[_Box]] = {}
            for box in current:
                alike.setdefault(box.slots[:position] + box.slots[position + 1 : width], []).append(box)
            merged: list[_Box] = []
            for group in alike.values():
                result = group
                if len(group) > 1:
                    varying = [other for other in range(width, size) if len({box.slots[other] for box in group}) > 1]
                    for move in [*((position, other) for other in reversed(varying)), (position,)]:
                        result = _merge_step(result, move, sides, valid)
                merged.extend(result)
            current = merged
        if len(current) == before:
            break
    return current


def _merge_key(box: _Box, move: tuple[int, ...], sides: Sequence[range]) -> Hashable:
    """What boxes must share, beyond the other positions, for their merge to read as one name.

    On each side a merged name needs a segment in common (any value set of one), or else every
    segment must vary only in its digits: then the moved segments must share their digit template.
    """
    key: list[Hashable] = []
    for side in sides:
        moved = [position for position in move if position in side]
        if not moved:
            continue
        rest = [box.slots[position] for position in side if position not in move]
        if any(len(slot) == 1 for slot in rest):
            continue
        templates = [_templates(box.slots[position]) for position in moved]
        if not all(_one_family(slot) for slot in rest) or any(len(found) != 1 for found in templates):
            return box  # no readable merge: a bucket of its own
        key.append(tuple(templates))
    return tuple(key)


def _merge_bucket(bucket: list[_Box], move: tuple[int, ...], valid: Callable[[_Box], bool] | None) -> list[_Box]:
    if len(bucket) == 1:
        return bucket
    whole = _union(bucket, move)
    if valid is None or valid(whole):
        return [whole]
    if len(bucket) > _GREEDY_LIMIT:
        return bucket
    accepted: list[_Box] = []
    for box in bucket:
        for index, other in enumerate(accepted):
            union = _union([other, box], move)
            if valid(union):
                accepted[index] = union
                break
        else:
            accepted.append(box)
    return accepted


def _union(boxes: Sequence[_Box], move: tuple[int, ...]) -> _Box:
    slots = tuple(
        frozenset().union(*(box.slots[position] for box in boxes)) if position in move else slot
        for position, slot in enumerate(boxes[0].slots)
    )
    return _Box(slots, frozenset().union(*(box.rows for box in boxes)))


def group_names(names: Iterable[str]) -> list[str]:
    """Compress a list of names into brace patterns, the way fvcore groups checkpoint keys.

    Names are split on ``/`` and ``.``; names that differ in one segment are merged, repeatedly, and each
    segment position shows its alternatives as ``{a,b}`` and digit runs as ``{0..11}`` or ``{0,2,5}``.
    Names with nothing in common but digits stay apart (``global_step`` is not merged with ``save_counter``).
    The result is lossless: the patterns' expansions (see ``expand_pattern``) are exactly the distinct
    input names, each in exactly one pattern.

    Args:
        names: Variable names; duplicates are ignored.

    Returns:
        The patterns, in natural order of their first names (``layer_2`` before ``layer_10``).

    Example:
        >>> group_names(f"encoder/layer_{i}/attention/{part}/kernel" for i in range(12) for part in ("query", "key", "value"))
        ['encoder/layer_{0..11}/attention/{key,query,value}/kernel']
        >>> group_names(["d/kernel", "d/bias", "d_1/kernel", "d_2/kernel", "d_5/kernel", "global_step"])
        ['d/{bias,kernel}', 'd_{1,2,5}/kernel', 'global_step']
    """
    partitions: dict[tuple[str, ...], list[_Box]] = {}
    for name in sorted(set(names), key=natural_key):
        segments, separators = split_name(name)
        partitions.setdefault(separators, []).append(_Box(tuple(frozenset({segment}) for segment in segments)))
    patterns: list[tuple[tuple[tuple[int, str], ...], str]] = []
    for separators, boxes in partitions.items():
        moves = [(position,) for position in reversed(range(len(separators) + 1))]
        merged = _merge_boxes(boxes, moves, [range(len(separators) + 1)])
        patterns.extend((_slots_key(box.slots), _render(box.slots, separators)) for box in merged)
    return [pattern for _, pattern in sorted(patterns)]


@dataclass(frozen=True, slots=True)
class PairGroup:
    """Pairs of names shown as two patterns read in parallel, as ``group_pairs`` returns them.

    The i-th expansion of ``left`` pairs with the i-th expansion of ``right``; when ``right`` expands to
    a single name, every left name pairs with it.

    Example:
        >>> group = PairGroup("layer_{0..2}/kernel", "block_{1..3}/w", 3)
        >>> group.pairs()[0]
        ('layer_0/kernel', 'block_1/w')
    """

    left: str
    right: str
    count: int

    def pairs(self) -> list[tuple[str, str]]:
        """The pairs this group stands for, in pattern order."""
        left, right = expand_pattern(self.left), expand_pattern(self.right)
        return list(zip(left, right * len(left) if len(right) == 1 else right, strict=True))


def group_pairs(pairs: Iterable[tuple[str, str]]) -> list[PairGroup]:
    """Group (left, right) name pairs whose names vary in parallel, such as assignments' targets and sources.

    A group forms only when it stays unambiguous: reading both patterns in order and zipping them gives
    exactly the pairs, and each varying position on the right mirrors one on the left, either with the
    same alternatives (``{key,query,value}`` on both sides) or as numbers (``layer_{0..11}`` against
    ``block_{1..12}``). A right side that never varies is shared by every left name.

    Args:
        pairs: (left, right) pairs; a left name should appear in one pair only. Duplicates are ignored.

    Returns:
        Groups in natural order of their first left name; ``PairGroup.pairs()`` recovers the input.

    Example:
        >>> rows = [(f"enc/layer_{i}/{p}/kernel", f"bert/layer_{i}/self/{p}/kernel") for i in range(12) for p in "qkv"]
        >>> [(g.left, g.right, g.count) for g in group_pairs(rows)]
        [('enc/layer_{0..11}/{k,q,v}/kernel', 'bert/layer_{0..11}/self/{k,q,v}/kernel', 36)]
        >>> [(g.left, g.right) for g in group_pairs([("t/a", "s/x"), ("t/b", "s/y")])]
        [('t/a', 's/x'), ('t/b', 's/y')]
    """
    partitions: dict[tuple[tuple[str, ...], tuple[str, ...]], list[_Box]] = {}
    for left, right in sorted(set(pairs), key=lambda pair: (natural_key(pair[0]), natural_key(pair[1]))):
        left_segments, left_separators = split_name(left)
        right_segments, right_separators = split_name(right)
        slots = tuple(frozenset({segment}) for segment in (*left_segments, *right_segments))
        partitions.setdefault((left_separators, right_separators), []).append(_Box(slots, frozenset({(left, right)})))
    groups: list[tuple[tuple[tuple[int, str], ...], PairGroup]] = []
    for (left_separators, right_separators), boxes in partitions.items():
        width = len(left_separators) + 1
        valid = functools.partial(_parallel, width=width, separators=(left_separators, right_separators))
        for box in _merge_pairs(boxes, width, valid):
            left_slots, right_slots = box.slots[:width], box.slots[width:]
            group = PairGroup(
                _render(left_slots, left_separators), _render(right_slots, right_separators), len(box.rows)
            )
            groups.append((_slots_key(left_slots), group))
    return [group for _, group in sorted(groups, key=lambda item: item[0])]


def _parallel(box: _Box, *, width: int, separators: tuple[tuple[str, ...], tuple[str, ...]]) -> bool:
    """Whether a pair box reads unambiguously: zipping its two patterns gives exactly its rows."""
    left_slots, right_slots = box.slots[:width], box.slots[width:]
    if not (_readable(left_slots) and _readable(right_slots)):
        return False
    left_varying = [slot for slot in left_slots if len(slot) > 1]
    right_varying = [slot for slot in right_slots if len(slot) > 1]
    if right_varying and (
        len(left_varying) != len(right_varying)
        or any(
            len(a) != len(b) or (a != b and not (_one_family(a) and _one_family(b)))
            for a, b in zip(left_varying, right_varying, strict=True)
        )
    ):
        return False
    if math.prod(len(slot) for slot in left_slots) != len(box.rows):
        return False
    left = _expand(left_slots, separators[0])
    right = _expand(right_slots, separators[1])
    if len(left) != len(box.rows) or len(right) not in (1, len(left)):
        return False
    return set(zip(left, right * len(left) if len(right) == 1 else right, strict=True)) == box.rows


__all__ = [
    "PairGroup",
    "escape",
    "expand_pattern",
    "group_names",
    "group_pairs",
    "join_name",
    "render_numbers",
    "split_name",
]
