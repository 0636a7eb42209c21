"""Step 2b: fused tensors (GPT-2's ``c_attn``, a ``qkv``) split into the query, key and value of one attention layer.

A split is proposed only when the evidence leaves no choice: the source is an attention tensor (its words say
``attention`` or ``qkv``) with the role of the three targets (kernel or bias); the targets are one attention layer's
``query``, ``key`` and ``value``, of one shape, and each part fits them exactly once the source's layout is applied
(the cut runs along the output axis: the last one for an ``[in, out]`` kernel or a bias, the first for
``[out, in]``); one family of sources (``h.#.attn.c_attn.weight``) meets one family of targets, layer for layer,
at a constant index offset. Anything less is a DECIDE note, and the tensors go on to the ordinary placement.
The parts are taken in query, key, value order, the order GPT-2 and the ``qkv`` of timm write them in.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from mapper.authoring.suggest._assignment import Placed
from mapper.authoring.suggest._fit import Fit, fit_shape, layout_permutation
from mapper.authoring.suggest._generalise import Draft, Split, family, generalise
from mapper.authoring.suggest._names import Name, canonical, kernel_layout, name_atoms

PARTS = ("query", "key", "value")
_FUSED_WORDS = frozenset({"attention", "qkv"})
# Every condition above holds, so the only doubt left is the order of the parts inside the fused tensor.
SPLIT_CONFIDENCE = 0.9


@dataclass(frozen=True)
class _Triple:
    """One attention layer's query, key and value targets of one role."""

    parts: tuple[Name, ...]

    @property
    def first(self) -> Name:
        return self.parts[0]


@dataclass(frozen=True)
class _Candidate:
    source: Name
    triple: _Triple
    axis: int
    fit: Fit


@dataclass(frozen=True)
class Splits:
    """The split drafts, the DECIDE notes for fused tensors left alone, and the names the drafts take."""

    drafts: list[Draft]
    notes: list[str]
    sources: frozenset[str]
    targets: frozenset[str]


def find_splits(sources: Sequence[Name], targets: Sequence[Name]) -> Splits:
    """Split drafts for the fused attention tensors among ``sources`` whose parts fit ``targets`` unambiguously.

    Example:
        >>> from mapper.specs import TensorSpec
        >>> def side(**shapes: tuple[int, ...]) -> list[Name]:
        ...     specs = [TensorSpec(name.replace("_", "/"), shape, "float32") for name, shape in shapes.items()]
        ...     return describe([spec.name for spec in specs], specs)
        >>> from mapper.authoring.suggest._names import describe
        >>> found = find_splits(
        ...     side(attn_qkv_kernel=(4, 12)),
        ...     side(attention_query_kernel=(4, 4), attention_key_kernel=(4, 4), attention_value_kernel=(4, 4)),
        ... )
        >>> [(draft.split.axis, len(draft.pairs)) for draft in found.drafts if draft.split], found.notes
        ([(-1, 3)], [])
    """
    layout = (kernel_layout(sources), kernel_layout(targets))
    triples = _triples(targets)
    candidates = [
        candidate
        for source in sources
        if source.role in ("kernel", "bias") and source.words & _FUSED_WORDS
        for candidate in _candidates(source, triples, layout)
    ]
    drafts: list[Draft] = []
    notes: list[str] = []
    by_family: dict[str, list[_Candidate]] = defaultdict(list)
    for candidate in candidates:
        by_family[family(candidate.source.atoms)].append(candidate)
    triple_families: dict[str, set[str]] = defaultdict(set)
    for source_family, members in by_family.items():
        for candidate in members:
            triple_families[family(candidate.triple.first.atoms)].add(source_family)
    for source_family, members in by_family.items():
        placed, note = _pair_layers(source_family, members, triple_families)
        if note:
            notes.append(note)
        else:
            drafts.extend(_drafts(members[0].axis, placed))
    taken = [pair for draft in drafts for pair in draft.pairs]
    return Splits(
        drafts,
        notes,
        frozenset(pair.source.key for pair in taken),
        frozenset(pair.target.key for pair in taken),
    )


def _triples(targets: Sequence[Name]) -> list[_Triple]:
    """Every group of ``query``, ``key`` and ``value`` targets in one layer, with one role and one shape."""
    groups: dict[tuple[str, str | None], dict[str, list[Name]]] = defaultdict(lambda: defaultdict(list))
    for target in targets:
        cut = max(target.module.rfind("/"), target.module.rfind("."))
        words = canonical(*(text for kind, text in name_atoms(target.module[cut + 1 :]) if kind == "w"))
        if len(words) == 1 and words[0] in PARTS:
            groups[(target.module[: max(cut, 0)], target.role)][words[0]].append(target)
    triples = []
    for found in groups.values():
        if all(len(found[part]) == 1 for part in PARTS):
            parts = tuple(found[part][0] for part in PARTS)
            if len({(name.spec.shape, name.spec.dtype) for name in parts}) == 1:
                triples.append(_Triple(parts))
    return triples


def _candidates(source: Name, triples: Sequence[_Triple], layout: tuple[str | None, str | None]) -> list[_Candidate]:
    """The triples ``source`` splits into exactly: same role, three times the size, each part fitting."""
    shape = source.spec.shape
    axis = _output_axis(source, layout[0])
    if axis is None or shape[axis] % len(PARTS):
        return []
    part_shape = tuple(size // len(PARTS) if number == axis % len(shape) else size for number, size in enumerate(shape))
    expected, note = layout_permutation(source.role, len(part_shape), layout)
    found = []
    for triple in triples:
        target = triple.first.spec
        if triple.first.role != source.role or math.prod(part_shape) != target.size:
            continue
        fit = fit_shape(part_shape, source.spec.dtype, target.shape, target.dtype, expected=expected, layout_note=note)
        if fit is not None:
            found.append(_Candidate(source, triple, axis, fit))
    return found


def _output_axis(source: Name, layout: str | None) -> int | None:
    """The axis that holds a layer's outputs: a bias's only one, an ``[in, out]`` kernel's last, ``[out, in]``'s first."""
    rank = len(source.spec.shape)
    if rank == 1:
        return -1
    if rank != 2 or layout is None:
        return None  # a fused tensor of higher rank, or a side whose layout is unknown: no axis is sure
    return -1 if layout == "keras" else 0


def _pair_layers(
    source_family: str, members: Sequence[_Candidate], triple_families: dict[str, set[str]]
) -> tuple[list[list[Placed]], str]:
    """Pair a source family with its one target family, layer for layer; the placed parts, or why not (a note)."""
    families = {family(candidate.triple.first.atoms) for candidate in members}
    rivals = {other for name in families for other in triple_families[name]} - {source_family}
    if len(families) != 1 or rivals:
        others = sorted(families | rivals)
        return [], (
            f"DECIDE: {source_family!r} could be split into the query, key and value of {', '.join(map(repr, others))}: "
            "the names do not say which, so no split is proposed"
        )
    by_source: dict[str, list[_Candidate]] = defaultdict(list)
    for candidate in members:
        by_source[candidate.source.key].append(candidate)
    sources = sorted(by_source, key=lambda key: by_source[key][0].source.indices)
    triples = sorted({id(c.triple): c.triple for c in members}.values(), key=lambda triple: triple.first.indices)
    offsets = {
        tuple(b - a for a, b in zip(by_source[key][0].source.indices, triple.first.indices, strict=False))
        for key, triple in zip(sources, triples, strict=False)
    }
    if len(sources) != len(triples) or len(offsets) != 1:
        return [], (
            f"DECIDE: {source_family!r} splits into the query, key and value of {families.pop()!r}, but its layers "
            "do not pair with theirs one to one, so no split is proposed"
        )
    placed = []
    for key, triple in zip(sources, triples, strict=True):
        candidate = next(c for c in by_source[key] if c.triple is triple)
        placed.append([Placed(candidate.source, part, candidate.fit, SPLIT_CONFIDENCE, None) for part in triple.parts])
    return placed, ""


def _drafts(axis: int, placed: Sequence[Sequence[Placed]]) -> list[Draft]:
    """One split draft for the whole family when every part generalises alike, else one per source."""
    per_part = [generalise([parts[number] for parts in placed]) for number in range(len(PARTS))]
    literal = [
        Draft(parts[0].source.atoms, parts[0].target.atoms, parts[0].fit.ops, list(parts), literal=True,
              split=Split(axis, tuple(pair.target.atoms for pair in parts)))
        for parts in placed
    ]  # fmt: skip
    if any(len(drafts) != 1 for drafts in per_part) or len({drafts[0].source_atoms for drafts in per_part}) != 1:
        return literal
    first = per_part[0][0]
    if first.literal:
        return literal
    pairs = [pair for parts in placed for pair in parts]
    return [
        Draft(
            first.source_atoms,
            first.target_atoms,
            first.ops,
            pairs,
            split=Split(axis, tuple(drafts[0].target_atoms for drafts in per_part)),
        )
    ]
