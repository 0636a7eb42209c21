"""Step 5: placed pairs generalised into rule drafts: linked index groups, splits, merged alternations."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mapper.authoring.suggest._assignment import Placed
from mapper.authoring.suggest._names import Atom

# Source pattern atoms: ("w"|"s"|"d", text) literal, ("g", slot) an index group, ("a", "opt1|opt2") an alternation.
# Target template atoms: literals, ("r", "slot:offset") an index reference, ("ra", "position") an alternation reference.


@dataclass(frozen=True)
class Split:
    """A split rule's parts: the axis cut into equal parts, and each part's target template atoms, in order."""

    axis: int
    parts: tuple[tuple[Atom, ...], ...]


@dataclass
class Draft:
    """A rule being built: pattern atoms, template atoms, operations and the pairs it covers.

    A split draft (``split`` set) sends each source to one target per part: ``target_atoms`` are the first part's,
    and ``pairs`` hold every part's pair, source by source in part order.
    """

    source_atoms: tuple[Atom, ...]
    target_atoms: tuple[Atom, ...]
    ops: tuple[str, ...]
    pairs: list[Placed]
    narrowed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # slot -> the values it may take
    literal: bool = False
    split: Split | None = None

    @property
    def first_target(self) -> float:
        return min(pair.target.position for pair in self.pairs)


def skeleton(atoms: tuple[Atom, ...]) -> tuple[Atom, ...]:
    return tuple(("d", "#") if kind == "d" else (kind, text) for kind, text in atoms)


def family(atoms: tuple[Atom, ...]) -> str:
    """A name with its index numbers masked: ``h.#.ln_1.weight``."""
    return "".join("#" if kind == "d" else text for kind, text in skeleton(atoms))


def generalise(placed: Sequence[Placed]) -> list[Draft]:
    """Group pairs that differ only in index numbers into drafts with linked index groups."""
    groups: dict[tuple[object, ...], list[Placed]] = defaultdict(list)
    for pair in placed:
        key = (skeleton(pair.source.atoms), skeleton(pair.target.atoms), pair.fit.ops)
        groups[key].append(pair)
    drafts: list[Draft] = []
    for members in groups.values():
        drafts.extend(_link(members))
    return drafts


def literal_draft(pair: Placed) -> Draft:
    return Draft(pair.source.atoms, pair.target.atoms, pair.fit.ops, [pair], literal=True)


def literals(draft: Draft) -> list[Draft]:
    """The draft cut into one literal draft per source name (one per pair, or one split per source)."""
    if draft.split is None:
        return [literal_draft(pair) for pair in draft.pairs]
    by_source: dict[str, list[Placed]] = defaultdict(list)
    for pair in draft.pairs:
        by_source[pair.source.key].append(pair)
    return [
        Draft(
            parts[0].source.atoms,
            parts[0].target.atoms,
            draft.ops,
            parts,
            literal=True,
            split=Split(draft.split.axis, tuple(pair.target.atoms for pair in parts)),
        )
        for parts in by_source.values()
    ]


def index_values(atoms: tuple[Atom, ...]) -> list[int]:
    return [int(text) for kind, text in atoms if kind == "d"]


def _link(members: list[Placed]) -> list[Draft]:
    """One draft for pairs sharing both skeletons: varying indices become groups linked by a constant offset."""
    if len(members) == 1:
        return [literal_draft(members[0])]
    source_values = [index_values(pair.source.atoms) for pair in members]
    target_values = [index_values(pair.target.atoms) for pair in members]
    source_varying = _varying(source_values)
    links: dict[int, tuple[int, int]] = {}  # target slot -> (source slot, offset)
    for j in _varying(target_values):
        link = _best_link(j, source_varying, source_values, target_values)
        if link is None:
            return _split_on(members, functools.partial(_index_at, "target", j))
        links[j] = link
    unlinked = [k for k in source_varying if k not in {k for k, _ in links.values()}]
    if unlinked:
        return _split_on(members, functools.partial(_index_at, "source", unlinked[0]))
    slot_names = {k: f"i{k}" for k, _ in links.values()}

    def group(position: int, text: str) -> Atom:
        return ("g", slot_names[position]) if position in slot_names else ("d", text)

    def reference(position: int, text: str) -> Atom:
        if position not in links:
            return ("d", text)
        k, offset = links[position]
        return ("r", f"{slot_names[k]}:{offset}")

    source_atoms = _replace_indices(members[0].source.atoms, group)
    target_atoms = _replace_indices(members[0].target.atoms, reference)
    return [Draft(source_atoms, target_atoms, members[0].fit.ops, list(members))]


def _varying(values: Sequence[Sequence[int]]) -> list[int]:
    """The index positions whose value differs between the rows (all rows have the same length)."""
    return [k for k in range(len(values[0])) if len({row[k] for row in values}) > 1]


def _best_link(
    j: int, source_varying: Sequence[int], source_values: Sequence[list[int]], target_values: Sequence[list[int]]
) -> tuple[int, int] | None:
    """The source index that target index ``j`` follows at a constant offset, nearest in place first, or None."""
    options = []
    for k in source_varying:
        offsets = {t_row[j] - s_row[k] for s_row, t_row in zip(source_values, target_values, strict=True)}
        if len(offsets) == 1:
            offset = offsets.pop()
            distance = (k != j, k - len(source_values[0]) != j - len(target_values[0]), abs(offset))
            options.append((distance, k, offset))
    if not options:
        return None
    _, k, offset = min(options)
    return k, offset


def _replace_indices(atoms: tuple[Atom, ...], replace: Callable[[int, str], Atom]) -> tuple[Atom, ...]:
    """``atoms`` with each index number replaced by ``replace(its position among the numbers, its text)``."""
    result: list[Atom] = []
    position = 0
    for kind, text in atoms:
        if kind == "d":
            result.append(replace(position, text))
            position += 1
        else:
            result.append((kind, text))
    return tuple(result)


def _index_at(side: str, slot: int, pair: Placed) -> int:
    """The value of index number ``slot`` in the pair's source or target name."""
    return index_values((pair.source if side == "source" else pair.target).atoms)[slot]


def _split_on(members: list[Placed], value: Callable[[Placed], int]) -> list[Draft]:
    parts: dict[int, list[Placed]] = defaultdict(list)
    for pair in members:
        parts[value(pair)].append(pair)
    if len(parts) == 1:  # pragma: no cover - the value varies, so there are several parts
        return [literal_draft(pair) for pair in members]
    return [draft for part in parts.values() for draft in _link(part)]


def merge_alternations(drafts: list[Draft]) -> list[Draft]:
    """Merge drafts that differ only in one word, found verbatim on both sides, into an alternation.

    Each draft is keyed once per word it shares with its target (that word masked on both sides); the largest set
    of drafts under one key, each with a different word, becomes one draft. Repeat until nothing merges.
    """
    drafts = list(drafts)
    while True:
        buckets: dict[_MergeKey, list[tuple[int, str]]] = defaultdict(list)
        for number, draft in enumerate(drafts):
            # Merged drafts must cover the same index values, or the alternation would claim names they do not.
            covered = frozenset(tuple(index_values(pair.source.atoms)) for pair in draft.pairs)
            for a, (kind, text) in enumerate(draft.source_atoms):
                if kind != "w":
                    continue
                for b, (other_kind, other_text) in enumerate(draft.target_atoms):
                    if other_kind == "w" and other_text == text:
                        source_key = (*draft.source_atoms[:a], _MASK, *draft.source_atoms[a + 1 :])
                        target_key = (*draft.target_atoms[:b], ("ra", str(a)), *draft.target_atoms[b + 1 :])
                        buckets[(source_key, target_key, draft.ops, covered)].append((number, text))
        best: tuple[_MergeKey, list[tuple[int, str]]] | None = None
        for key, members in buckets.items():
            distinct = {text for _, text in members}
            numbers = {number for number, _ in members}
            if len(distinct) == len(members) == len(numbers) >= 2 and (best is None or len(members) > len(best[1])):
                best = (key, members)
        if best is None:
            return drafts
        (source_key, target_key, ops, _), members = best
        group = sorted(members, key=lambda member: drafts[member[0]].first_target)
        options = "|".join(text for _, text in group)
        merged = Draft(
            tuple(("a", options) if atom == _MASK else atom for atom in source_key),
            target_key,
            ops,
            [pair for number, _ in group for pair in drafts[number].pairs],
        )
        taken = {number for number, _ in members}
        drafts = [draft for number, draft in enumerate(drafts) if number not in taken] + [merged]


_MASK: Atom = ("a", "?")
# Drafts merge when their pattern and template are equal but for one masked word, with equal operations and indices.
_MergeKey = tuple[tuple[Atom, ...], tuple[Atom, ...], tuple[str, ...], frozenset[tuple[int, ...]]]


def slot_values(draft: Draft) -> dict[str, tuple[str, ...]]:
    """The values each index group of a draft takes over its pairs, in numeric order."""
    slots = [text for kind, text in draft.source_atoms if kind == "g"]
    positions = [number for number, (kind, _) in enumerate(draft.source_atoms) if kind == "g"]
    values: dict[str, set[str]] = defaultdict(set)
    for pair in draft.pairs:
        for slot, position in zip(slots, positions, strict=True):
            values[slot].add(pair.source.atoms[position][1])
    return {slot: tuple(sorted(found, key=int)) for slot, found in values.items()}
