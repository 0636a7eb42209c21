"""Step 3, scores: every plausible source-target pair scored on names, shapes, roles, order, indices and layers."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mapper.authoring.suggest._fit import Fit, fit_shape, layout_permutation
from mapper.authoring.suggest._names import Name

# Score weights (they sum to 1). Order is only a tie-breaker: frameworks list a layer's variables differently.
_W_NAME, _W_SHAPE, _W_ROLE, _W_ORDER, _W_INDEX, _W_MODULE, _W_DTYPE = 0.38, 0.18, 0.1, 0.08, 0.1, 0.11, 0.05

_ROLE_FIT: Mapping[frozenset[str], float] = {
    frozenset({"bias", "offset"}): 0.6,
    frozenset({"kernel", "embeddings"}): 0.6,
}


@dataclass(frozen=True, slots=True)
class Pair:
    source: int
    target: int
    score: float
    fit: Fit
    order: float  # the order part of the score, which confidence does not count as evidence
    evidence: float = 0.0  # the score without the order part: what names, shapes, roles, indices and layers say


@dataclass
class Scorer:
    """Scores source-target pairs; built once per suggest_rules call."""

    sources: list[Name]
    targets: list[Name]
    layout: tuple[str | None, str | None]
    weights: dict[str, float] = field(default_factory=dict)
    offsets: dict[tuple[int, int], tuple[int | None, ...]] = field(default_factory=dict)
    # Which target layer each source layer mostly went to in the last round, and back (see learn_modules()).
    module_of_source: dict[str, str] = field(default_factory=dict)
    module_of_target: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        counts_s = Counter(word for name in self.sources for word in name.words)
        counts_t = Counter(word for name in self.targets for word in name.words)
        total = len(self.sources) + len(self.targets)
        for word in counts_s.keys() | counts_t.keys():
            weight = math.log(1 + total / (counts_s[word] + counts_t[word]))
            # A word on most names of one side and (almost) none of the other is a prefix, not evidence.
            share_s = counts_s[word] / max(1, len(self.sources))
            share_t = counts_t[word] / max(1, len(self.targets))
            if max(share_s, share_t) > 0.5 and min(share_s, share_t) < 0.05:
                weight *= 0.1
            self.weights[word] = weight

    def expected(self, source: Name) -> tuple[tuple[int, ...] | None, str]:
        """The permutation the two layouts call for on this source tensor, and how to describe it."""
        return layout_permutation(source.role, len(source.spec.shape), self.layout)

    def name_similarity(self, a: frozenset[str], b: frozenset[str]) -> float:
        """IDF-weighted Jaccard similarity of two word sets."""
        shared = sum(self.weights[word] for word in a & b)
        union = sum(self.weights[word] for word in a | b)
        return shared / union if union > 0 else (1.0 if not a and not b else 0.0)

    def index_agreement(self, a: tuple[int, ...], b: tuple[int, ...], learned: bool) -> float:
        """How well two names' index numbers agree: by count alone at first, then under the learned offsets.

        Vectors of different lengths are compared on their leading positions (``layer.0`` against
        ``transformer_block_1/ln_1``), and score a little less than a full agreement.
        """
        if not a or not b:
            return 0.6 if not a and not b else 0.4
        if not learned:
            return 0.6 if len(a) == len(b) else 0.4
        offsets = self.offsets.get((len(a), len(b)))
        if offsets is None:
            return 0.5
        agree = [
            0.5 if offset is None else (1.0 if y - x == offset else 0.0)
            for x, y, offset in zip(a, b, offsets, strict=False)
        ]
        share = sum(agree) / len(agree)
        return share if len(a) == len(b) else 0.2 + 0.7 * share

    def module_agreement(self, source_module: str, target_module: str) -> float:
        """1 when the two variables' layers were paired by the last round's clear pairs, 0 when each went elsewhere."""
        forward = self.module_of_source.get(source_module)
        backward = self.module_of_target.get(target_module)
        if forward == target_module or backward == source_module:
            return 1.0
        return 0.5 if forward is None or backward is None else 0.0

    def base(self) -> list[Pair]:
        """Every plausible pair, scored on what does not change between rounds (name, shape, role, order, dtype)."""
        by_size: dict[int, list[int]] = defaultdict(list)
        for s, name in enumerate(self.sources):
            by_size[name.spec.size].append(s)
        pairs: list[Pair] = []
        similarities: dict[tuple[frozenset[str], frozenset[str]], float] = {}  # layers repeat the same words
        for t, target in enumerate(self.targets):
            for s in by_size.get(target.spec.size, ()):
                source = self.sources[s]
                role = _role_fit(source.role, target.role)
                if role == 0.0:
                    continue
                expected, note = self.expected(source)
                fit = fit_shape(
                    source.spec.shape,
                    source.spec.dtype,
                    target.spec.shape,
                    target.spec.dtype,
                    expected=expected,
                    layout_note=note,
                )
                if fit is None:
                    continue
                words = (source.words, target.words)
                similarity = similarities.get(words)
                if similarity is None:
                    similarity = similarities[words] = self.name_similarity(*words)
                order = 1.0 - abs(source.position - target.position)
                score = (
                    _W_NAME * similarity
                    + _W_SHAPE * fit.quality
                    + _W_ROLE * role
                    + _W_ORDER * order
                    + _W_DTYPE * fit.dtype_score
                )
                pairs.append(Pair(s, t, score, fit, order, score - _W_ORDER * order))
        return _prune(pairs)

    def rescore(self, base: Sequence[Pair], learned: bool) -> tuple[list[Pair], list[Pair]]:
        """The base pairs with this round's index and layer agreement added.

        Once offsets are learned, a pair whose index numbers all disagree (``layer_3`` against ``layer_7``) is
        dropped when its target has a candidate that agrees at all: it could not win, and keeping every layer's
        twin makes a deep model quadratic. Returns the rescored pairs, and the base pairs kept.
        """
        index_memo: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
        module_memo: dict[tuple[str, str], float] = {}
        agreeing: set[int] = set()
        scored: list[tuple[Pair, float, float]] = []
        for pair in base:
            source, target = self.sources[pair.source], self.targets[pair.target]
            indices = (source.indices, target.indices)
            index = index_memo.get(indices)
            if index is None:
                index = index_memo[indices] = self.index_agreement(*indices, learned)
            modules = (source.module, target.module)
            module = module_memo.get(modules)
            if module is None:
                module = module_memo[modules] = self.module_agreement(*modules)
            if index > 0.0:
                agreeing.add(pair.target)
            scored.append((pair, index, module))
        pairs: list[Pair] = []
        kept: list[Pair] = []
        for pair, index, module in scored:
            if index == 0.0 and pair.target in agreeing:
                continue
            bonus = _W_INDEX * index + _W_MODULE * module
            pairs.append(
                Pair(pair.source, pair.target, pair.score + bonus, pair.fit, pair.order, pair.evidence + bonus)
            )
            kept.append(pair)
        return pairs, kept

    def learn_modules(self, chosen: Mapping[int, Pair], margins: Mapping[int, tuple[float, int | None]]) -> None:
        """Learn which source layer went to which target layer (the names without their last segment).

        Each pair votes for its two layers with its margin, so only clear pairs count: a bias then follows its
        kernel when only the kernel's shape was unique. A layer needs a vote of at least 0.5 to be mapped.
        """
        votes: dict[tuple[str, str], float] = defaultdict(float)
        for t, pair in chosen.items():
            votes[(self.sources[pair.source].module, self.targets[t].module)] += min(1.0, margins[t][0] / 0.12)
        forward: dict[str, tuple[float, str]] = {}
        backward: dict[str, tuple[float, str]] = {}
        for (source_module, target_module), weight in sorted(votes.items()):
            if weight >= 0.5 and weight > forward.get(source_module, (0.0, ""))[0]:
                forward[source_module] = (weight, target_module)
            if weight >= 0.5 and weight > backward.get(target_module, (0.0, ""))[0]:
                backward[target_module] = (weight, source_module)
        self.module_of_source = {module: best for module, (_, best) in forward.items()}
        self.module_of_target = {module: best for module, (_, best) in backward.items()}

    def learn_offsets(self, chosen: Mapping[int, Pair]) -> None:
        """The index offset (target - source) most of a round's pairs agree on, per position and pair of lengths.

        An offset needs a majority, from pairs in at least two layers: one stray layer must not teach its
        offset to every name.
        """
        diffs: dict[tuple[int, int], list[tuple[tuple[int, ...], str]]] = defaultdict(list)
        for pair in chosen.values():
            source = self.sources[pair.source]
            a, b = source.indices, self.targets[pair.target].indices
            if a and b:
                diffs[(len(a), len(b))].append((tuple(y - x for x, y in zip(a, b, strict=False)), source.module))
        self.offsets = {}
        for lengths, rows in diffs.items():
            learned: list[int | None] = []
            for position in range(min(lengths)):
                value, count = Counter(row[position] for row, _ in rows).most_common(1)[0]
                layers = {module for row, module in rows if row[position] == value}
                learned.append(value if count * 2 > len(rows) and len(layers) >= 2 else None)
            self.offsets[lengths] = tuple(learned)


def _prune(pairs: list[Pair]) -> list[Pair]:
    """Drop pairs that trail both their target's and their source's best by more than index and layer can add."""
    reach = _W_INDEX + _W_MODULE
    best_target: dict[int, float] = defaultdict(float)
    best_source: dict[int, float] = defaultdict(float)
    for pair in pairs:
        best_target[pair.target] = max(best_target[pair.target], pair.score)
        best_source[pair.source] = max(best_source[pair.source], pair.score)
    return [
        pair
        for pair in pairs
        if pair.score + reach >= best_target[pair.target] or pair.score + reach >= best_source[pair.source]
    ]


def _role_fit(a: str | None, b: str | None) -> float:
    if a is None or b is None:
        return 0.5
    if a == b:
        return 1.0
    return _ROLE_FIT.get(frozenset({a, b}), 0.0)
