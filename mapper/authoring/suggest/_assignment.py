"""Steps 3 and 4: pairs chosen greedily by score, each name used once, and how clearly each beats its rivals."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mapper.authoring.suggest._fit import Fit
from mapper.authoring.suggest._names import Name, kernel_layout
from mapper.authoring.suggest._scoring import Pair, Scorer

# Pairs scoring below this are not placed at all: the names and shapes say too little.
MIN_SCORE = 0.42


def assign(candidates: Sequence[Pair]) -> dict[int, Pair]:
    """Greedy one-to-one assignment by score; returns {target index: pair}."""
    ordered = sorted(candidates, key=lambda pair: (-pair.score, pair.target, pair.source))
    used: set[int] = set()
    chosen: dict[int, Pair] = {}
    for pair in ordered:
        if pair.score < MIN_SCORE:
            break
        if pair.target in chosen or pair.source in used:
            continue
        chosen[pair.target] = pair
        used.add(pair.source)
    return chosen


def margins_of(chosen: Mapping[int, Pair], candidates: Sequence[Pair]) -> dict[int, tuple[float, int | None]]:
    """For each chosen pair: how much evidence the best single change would lose, and the source it would bring.

    A change is giving the target another source (one that is free, or swapping partners with another pair), or
    the source another target. Order is left out: a pair that beats its rival only by its place in the lists is a
    guess, however consistent.
    """
    evidence = {(pair.source, pair.target): pair.evidence for pair in candidates}
    by_source: dict[int, list[Pair]] = defaultdict(list)
    by_target: dict[int, list[Pair]] = defaultdict(list)
    for pair in candidates:
        by_source[pair.source].append(pair)
        by_target[pair.target].append(pair)
    partner_of_source = {pair.source: pair for pair in chosen.values()}
    margins: dict[int, tuple[float, int | None]] = {}
    for t, pair in chosen.items():
        # The source could fill another target instead, or another source could fill this target.
        moves = (_move_source(pair, other, chosen, evidence) for other in by_source[pair.source] if other.target != t)
        replacements = (
            _replace_source(pair, other, partner_of_source, evidence)
            for other in by_target[t]
            if other.source != pair.source
        )
        best: tuple[float, int | None] = (1.0, None)
        for change in itertools.chain(moves, replacements):
            if change is not None:
                best = min(best, change, key=lambda item: item[0])
        margins[t] = (max(0.0, best[0]), best[1])
    return margins


_Change = tuple[float, int | None]  # (the evidence a change would lose, the source it would bring to the target)


def _move_source(
    pair: Pair, other: Pair, chosen: Mapping[int, Pair], evidence: Mapping[tuple[int, int], float]
) -> _Change | None:
    """Giving ``pair``'s source the target ``other`` names: free, or swapped with that target's holder."""
    holder = chosen.get(other.target)
    if holder is None:
        return (pair.evidence - other.evidence, None)
    if (holder.source, pair.target) in evidence:
        swapped = other.evidence + evidence[(holder.source, pair.target)]
        return (pair.evidence + holder.evidence - swapped, holder.source)
    return None


def _replace_source(
    pair: Pair, other: Pair, partner_of_source: Mapping[int, Pair], evidence: Mapping[tuple[int, int], float]
) -> _Change | None:
    """Filling ``pair``'s target from ``other``'s source: free, or swapped with that source's current target."""
    held = partner_of_source.get(other.source)
    if held is None:
        return (pair.evidence - other.evidence, other.source)
    if (pair.source, held.target) in evidence:
        swapped = other.evidence + evidence[(pair.source, held.target)]
        return (pair.evidence + held.evidence - swapped, other.source)
    return None


def blend_confidence(pair: Pair, margin: float) -> float:
    """Blend how well a pair fits (its score) with how clearly it beats the alternatives (its margin)."""
    fit = min(1.0, max(0.0, (pair.score - 0.35) / 0.5))
    certainty = min(1.0, margin / 0.12)
    return round(0.4 * fit + 0.6 * certainty, 2)


@dataclass(frozen=True)
class Placed:
    """One chosen pair with everything the rule writer needs."""

    source: Name
    target: Name
    fit: Fit
    confidence: float
    runner_up: str | None  # the source that fits this target almost as well, if any


def place(sources: list[Name], targets: list[Name]) -> list[Placed]:
    """Score, assign and rate every pair in three rounds; the chosen pairs in target order with their confidence."""
    scorer = Scorer(sources, targets, (kernel_layout(sources), kernel_layout(targets)))
    # Round 1: names, shapes, roles, order. Round 2: also index offsets learned from round 1.
    # Round 3: also which layer went to which, learned from round 2's clear pairs.
    base = scorer.base()
    candidates, _ = scorer.rescore(base, learned=False)
    chosen = assign(candidates)
    scorer.learn_offsets(chosen)
    candidates, base = scorer.rescore(base, learned=True)
    chosen = assign(candidates)
    margins = margins_of(chosen, candidates)
    scorer.learn_modules(chosen, margins)
    candidates, _ = scorer.rescore(base, learned=True)
    chosen = assign(candidates)
    margins = margins_of(chosen, candidates)
    placed = []
    for t, pair in sorted(chosen.items()):
        margin, rival = margins[t]
        placed.append(
            Placed(
                source=sources[pair.source],
                target=targets[t],
                fit=pair.fit,
                confidence=blend_confidence(pair, margin),
                runner_up=None if rival is None or rival == pair.source else sources[rival].key,
            )
        )
    return placed
