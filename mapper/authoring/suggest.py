"""suggest_rules(): draft a rule file from a source's and a target's variable maps, by aligning names and shapes.

The draft is a starting point for a person, not a finished port: every rule says how sure it is and why.

1. **Bookkeeping.** Source tensors that are never weights (optimizer slots ``.../adam_m``, ``.../Adam_1``,
   ``optimizer/...``; ``global_step``, ``save_counter``; ``num_batches_tracked``; buffers such as
   ``position_ids``) become skip rules with a real reason and take no further part.
2. **Describe each name.** A name is cut into atoms: words, separators (``/ . _ -``) and index numbers (a digit
   run alone, ``layer_0``, ``layer.0``, or ending a word, ``conv1``). Words are split at camelCase, lower-cased,
   merged in pairs and mapped through a small synonym table (``LayerNorm``, ``ln``, ``bn`` -> norm; ``attn``,
   ``mha`` -> attention; ``token_type`` -> segment; ``post_attention`` stays apart from attention). The last
   word gives the *role*: kernel (``kernel``, ``weight``), bias, scale (``gamma``, a rank-1 ``weight``), offset
   (``beta``, or the ``bias`` beside a scale), mean (``moving_mean``, ``running_mean``), var, embeddings. The
   kernels' leaf names tell each side's layout: PyTorch (``weight``: ``[out, in]``, ``[out, in, kh, kw]``) or
   Keras (``kernel``).
3. **Score the plausible pairs** (equal element counts, compatible roles and dtypes) on: name similarity, the
   IDF-weighted overlap of the word sets (a word on most names of one side and none of the other, a ``bert/``
   prefix, counts for little); shape fit: equal, equal after a transpose (the one the layouts call for first,
   so a square PyTorch kernel is still transposed), or equal after a reshape that only splits or merges
   neighbouring axes (``[H, H] -> [H, heads, head_dim]``, transposed first when the layouts say so); role;
   dtype (a float cast costs a little); place in each list (an alphabetically sorted checkpoint is read in
   natural order); index agreement; layer agreement. Pairs are chosen greedily by score, each name used once,
   in three rounds: the second learns the index offsets between the sides from the first round's pairs
   (``layer.0`` -> ``transformer_block_1`` is +1, learned only when pairs from two or more layers agree), the
   third which source layer went to which target layer from the second round's clear pairs (so a bias follows
   its kernel when only the kernel's shape was unique).
4. **Confidence.** A pair's confidence blends its score with its margin: how much evidence the best single
   change would lose (another source for the target, another target for the source, or a swap with another
   pair). List order is not counted as evidence here, so a tie broken only by order gets a low confidence. A
   rule's confidence is its pairs' mean; below ``CONFIDENT`` the draft marks it CHECK and names the rival.
5. **Generalise.** Pairs whose names differ only in index numbers and that need the same operations become one
   rule: varying numbers become named groups (``(?P<i>\\d+)``) linked to the target's by a constant offset
   (``{i + 1}``; a group the template takes 1 from refuses 0). Rules that differ only in one word found
   verbatim on both sides, over the same index values, merge into an alternation (``(?P<part>query|key|value)``).
   Literal text is escaped.
6. **Check.** The draft is rendered, parsed with ``parse_rules`` and planned with ``build_plan`` against the same
   maps. A rule that matches a name it does not claim is narrowed (its groups list their values) or split into
   one rule per pair; a rule the planner refuses is split, and a one-pair rule that still fails is given up
   (``Suggestion.notes``). The returned TOML therefore plans to exactly ``Suggestion.mapping``.

Not attempted: splitting or joining tensors (fused ``qkv`` kernels, GPT-2's ``c_attn``), ``slice`` and
``rearrange`` operations, and pairing words that share no text (``layernorm_before`` against ``ln_1`` is decided
by place alone, and the confidence says so). Source tensors without a target are written as commented-out skip
rules ("DECIDE: no target found"), so planning the draft still reports them until someone decides; targets nothing
fills are listed with commented-out ``[[keep]]`` entries.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache

from mapper.errors import TargetError
from mapper.naming import group_names
from mapper.plan import ProblemKind
from mapper.plan.planner import build_plan
from mapper.rules import parse_rules
from mapper.specs import NAMESPACES, TargetMap, TensorSpec, format_shape

__all__ = ["CONFIDENT", "Suggestion", "SuggestedRule", "SuggestedSkip", "suggest_rules"]

# A rule whose confidence is at least this is called confident; the draft marks the others "CHECK".
CONFIDENT = 0.6
# Pairs scoring below this are not placed at all: the names and shapes say too little.
_MIN_SCORE = 0.42

# Score weights (they sum to 1). Order is only a tie-breaker: frameworks list a layer's variables differently.
_W_NAME, _W_SHAPE, _W_ROLE, _W_ORDER, _W_INDEX, _W_MODULE, _W_DTYPE = 0.38, 0.18, 0.1, 0.08, 0.1, 0.11, 0.05

_FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})
_CHECKPOINT_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"

# ---------------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuggestedRule:
    """One drafted mapping rule: its pattern, template and operations, how sure the draft is, and what it covers.

    ``pairs`` are ``(source name, target name)`` with the target named in the draft's namespace, in target order;
    ``pair_confidence`` gives each pair's confidence in the same order.

    Example:
        >>> rule = SuggestedRule("a/w", "b/kernel", (), 0.9, (("a/w", "b/kernel"),), (0.9,), ("shapes equal",))
        >>> rule.confident, rule.sources
        (True, ('a/w',))
    """

    match: str
    target: str
    ops: tuple[str, ...]
    confidence: float
    pairs: tuple[tuple[str, str], ...]
    pair_confidence: tuple[float, ...]
    reasons: tuple[str, ...]

    @property
    def confident(self) -> bool:
        """Whether the confidence reaches ``CONFIDENT``."""
        return self.confidence >= CONFIDENT

    @property
    def sources(self) -> tuple[str, ...]:
        """The source names this rule maps."""
        return tuple(source for source, _ in self.pairs)


@dataclass(frozen=True)
class SuggestedSkip:
    """One drafted skip rule for source tensors that are never weights (optimizer state, counters, buffers).

    Example:
        >>> SuggestedSkip("step counters", "global_step", "training step counter", ("global_step",)).sources
        ('global_step',)
    """

    name: str
    match: str
    reason: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Suggestion:
    """A drafted rule file: the TOML text, and the same draft as data.

    Example:
        >>> from mapper.specs import VariableMap
        >>> source = {"dense/kernel": TensorSpec("dense/kernel", (4, 3), "float32")}
        >>> target = TargetMap(VariableMap([TensorSpec("head/kernel", (4, 3), "float32")]))
        >>> suggestion = suggest_rules(source, target)
        >>> suggestion.mapping, suggestion.unplaced_sources, suggestion.unfilled_targets
        ({'head/kernel': 'dense/kernel'}, (), ())
    """

    toml: str
    namespace: str
    rules: tuple[SuggestedRule, ...]
    skips: tuple[SuggestedSkip, ...]
    unplaced_sources: tuple[str, ...]
    unfilled_targets: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def mapping(self) -> dict[str, str]:
        """``{target name: source name}`` for every pair the drafted rules claim."""
        return {target: source for rule in self.rules for source, target in rule.pairs}

    @property
    def confident_rules(self) -> tuple[SuggestedRule, ...]:
        """The rules whose confidence reaches ``CONFIDENT``."""
        return tuple(rule for rule in self.rules if rule.confident)


# ---------------------------------------------------------------------------------------------------------------------
# Bookkeeping: source tensors that are never weights
# ---------------------------------------------------------------------------------------------------------------------

# (rule name, reason, [patterns]); a rule lists only the patterns that matched something.
_BOOKKEEPING: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "optimizer state",
        "optimizer slots and accumulators: a new training run starts its own",
        (
            r".+/adam_[mv]",
            r".+/Adam(?:_1)?",
            r".+/(?:Momentum|RMSProp(?:_1)?|Adagrad|Ftrl(?:_1)?)",
            r"beta[12]_power(?:_\d+)?",
            r"optimizer/.+",
            r".+/\.OPTIMIZER_SLOT/.+",
        ),
    ),
    ("step counters", "training-step and checkpoint counters, not weights", (r"global_step", r"save_counter(?:/.+)?")),
    (
        "batch-norm counters",
        "PyTorch BatchNorm batch counters (int64): Keras BatchNormalization has none",
        (r"(?:.+\.)?num_batches_tracked",),
    ),
    (
        "buffers",
        "index and frequency buffers the model recomputes, not weights",
        (r"(?:.+\.)?position_ids", r".+\.inv_freq"),
    ),
    ("object graph", "checkpoint metadata, not a tensor of the model", (r"_CHECKPOINTABLE_OBJECT_GRAPH",)),
)
_BOOKKEEPING_RE = tuple(
    (label, reason, tuple((pattern, re.compile(pattern)) for pattern in patterns))
    for label, reason, patterns in _BOOKKEEPING
)


def _bookkeeping(names: Iterable[str]) -> tuple[list[SuggestedSkip], set[str]]:
    """Skip rules for the bookkeeping names among ``names``, and the set of those names."""
    hits: dict[str, dict[str, list[str]]] = {}
    for name in names:
        for label, _, patterns in _BOOKKEEPING_RE:
            found = next((pattern for pattern, compiled in patterns if compiled.fullmatch(name)), None)
            if found is not None:
                hits.setdefault(label, {}).setdefault(found, []).append(name)
                break
    skips = []
    taken: set[str] = set()
    for label, reason, patterns in _BOOKKEEPING_RE:
        by_pattern = hits.get(label)
        if not by_pattern:
            continue
        used = [pattern for pattern, _ in patterns if pattern in by_pattern]
        sources = tuple(name for pattern in used for name in by_pattern[pattern])
        taken.update(sources)
        skips.append(SuggestedSkip(label, "|".join(used), reason, sources))
    return skips, taken


# ---------------------------------------------------------------------------------------------------------------------
# Names: atoms, words, roles
# ---------------------------------------------------------------------------------------------------------------------

# An atom is (kind, text): "w" a word, "s" a separator, "d" an index number.
_Atom = tuple[str, str]
_SEPARATORS = frozenset("/._-")
_PIECES = re.compile(r"[/._\-]|[^/._\-]+")
_TRAILING_NUMBER = re.compile(r"(.*?[^0-9])?(0|[1-9][0-9]{0,8})")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

_BIGRAMS: Mapping[tuple[str, str], str] = {
    ("layer", "norm"): "norm",
    ("layer", "normalization"): "norm",
    ("batch", "norm"): "norm",
    ("batch", "normalization"): "norm",
    ("group", "norm"): "norm",
    ("rms", "norm"): "norm",
    ("token", "type"): "segment",
    ("feed", "forward"): "ffn",
    ("moving", "mean"): "mean",
    ("running", "mean"): "mean",
    ("moving", "variance"): "var",
    ("moving", "var"): "var",
    ("running", "var"): "var",
    ("running", "variance"): "var",
}
_SYNONYMS: Mapping[str, str] = {
    **dict.fromkeys(("layernorm", "ln", "bn", "batchnorm", "normalization", "rmsnorm", "groupnorm"), "norm"),
    **dict.fromkeys(("weight", "weights", "w", "kernels"), "kernel"),
    **dict.fromkeys(("biases", "b"), "bias"),
    "gamma": "scale",
    "beta": "offset",
    "variance": "var",
    **dict.fromkeys(("embeddings", "embed", "emb", "wte", "wpe"), "embedding"),
    **dict.fromkeys(("attn", "mha"), "attention"),
    "q": "query",
    "k": "key",
    "v": "value",
    **dict.fromkeys(("o", "out"), "output"),
    **dict.fromkeys(("mlp", "feedforward", "ff"), "ffn"),
    **dict.fromkeys(("fc", "linear"), "dense"),
    **dict.fromkeys(("convolution", "conv1d", "conv2d", "conv3d"), "conv"),
    "cls": "class",
    **dict.fromkeys(("word", "tokens"), "token"),
    **dict.fromkeys(("pos", "positional"), "position"),
    **dict.fromkeys(("block", "blocks", "layers"), "layer"),
    "pooled": "pooler",
}
_STOP_WORDS = frozenset({"and", "of", "with", "the"})
_ROLES: Mapping[str, str] = {
    "kernel": "kernel",
    "bias": "bias",
    "scale": "scale",
    "offset": "offset",
    "mean": "mean",
    "var": "var",
    "embedding": "embeddings",
}
_ROLE_FIT: Mapping[frozenset[str], float] = {
    frozenset({"bias", "offset"}): 0.6,
    frozenset({"kernel", "embeddings"}): 0.6,
}


def _atoms(name: str) -> tuple[_Atom, ...]:
    """Cut a name into words, separators and index numbers (``layer_0``, ``layer.0``, ``conv1``)."""
    atoms: list[_Atom] = []
    for piece in _PIECES.findall(name):
        if piece in _SEPARATORS:
            atoms.append(("s", piece))
            continue
        number = _TRAILING_NUMBER.fullmatch(piece)
        if number is None:
            atoms.append(("w", piece))
            continue
        if number[1]:
            atoms.append(("w", number[1]))
        atoms.append(("d", number[2]))
    return tuple(atoms)


def _canonical(*words: str) -> list[str]:
    """Canonical words: camelCase split, lower-cased, word pairs merged (``layer norm`` -> norm), synonyms applied."""
    raw = [part.lower() for word in words for part in _CAMEL.split(word) if part]
    merged: list[str] = []
    for part in raw:
        if merged and (merged[-1], part) in _BIGRAMS:
            merged[-1] = _BIGRAMS[(merged[-1], part)]
        elif merged and merged[-1] in ("pre", "post"):
            # "post_attention_layernorm" sits after the attention; it is not part of it.
            merged[-1] = f"{merged[-1]}-{_SYNONYMS.get(part, part)}"
        else:
            merged.append(part)
    return [_SYNONYMS.get(part, part) for part in merged if part not in _STOP_WORDS]


@dataclass(frozen=True)
class _Name:
    """What the scorer knows about one name."""

    key: str  # the name as the rule file sees it
    spec: TensorSpec
    atoms: tuple[_Atom, ...]
    words: frozenset[str]  # canonical words, the role word excluded
    role: str | None
    leaf: str  # the raw last word, lower-cased (kernel, weight, gamma...)
    indices: tuple[int, ...]
    position: float  # 0..1 in the side's (natural) order
    module: str  # the name without its last segment: the layer it belongs to


def _describe(keys: Sequence[str], specs: Sequence[TensorSpec]) -> list[_Name]:
    """Describe one side's names, with roles refined by their siblings (a norm's ``bias`` is its offset)."""
    order = _positions(keys)
    analysed = [key.removesuffix(_CHECKPOINT_SUFFIX) for key in keys]
    modules = [_module(name) for name in analysed]
    words_of: list[list[str]] = []
    roles: list[str | None] = []
    leaves: list[str] = []
    for name, spec in zip(analysed, specs, strict=True):
        segments = re.split(r"[/.]", name)
        words = [word for segment in segments for word in _canonical_segment(segment)]
        leaf = next((text for kind, text in reversed(_atoms(segments[-1])) if kind == "w"), "").lower()
        role = _ROLES.get(words[-1]) if words else None
        if role is not None:
            words = words[:-1]
        if role == "kernel" and leaf in ("weight", "weights"):
            parent = _canonical_segment(segments[-2]) if len(segments) > 1 else []
            if len(spec.shape) == 1:
                role = "scale"  # a rank-1 PyTorch weight is a normalisation's scale
            elif len(spec.shape) <= 2 and "embedding" in parent:
                role = "embeddings"
        words_of.append(words)
        roles.append(role)
        leaves.append(leaf)
    # A bias beside a scale belongs to a normalisation: it is the offset.
    scaled = {module for module, role in zip(modules, roles, strict=True) if role == "scale"}
    return [
        _Name(
            key=key,
            spec=spec,
            atoms=_atoms(key),
            words=frozenset(words_of[number]),
            role="offset" if roles[number] == "bias" and modules[number] in scaled else roles[number],
            leaf=leaves[number],
            indices=tuple(int(text) for kind, text in _atoms(key) if kind == "d"),
            position=order[number],
            module=modules[number],
        )
        for number, (key, spec) in enumerate(zip(keys, specs, strict=True))
    ]


def _canonical_segment(segment: str) -> list[str]:
    """The canonical words of one ``/``- or ``.``-separated segment (``word_embeddings`` -> token, embedding)."""
    return _canonical(*(text for kind, text in _atoms(segment) if kind == "w"))


def _module(name: str) -> str:
    """The name without its last segment: the layer a variable belongs to."""
    cut = max(name.rfind("/"), name.rfind("."))
    return name[:cut] if cut >= 0 else ""


def _natural_key(text: str) -> tuple[tuple[int, str], ...]:
    return tuple((0, part) if not part.isdigit() else (1, f"{int(part):020d}") for part in re.split(r"(\d+)", text))


def _positions(keys: Sequence[str]) -> list[float]:
    """Each name's place in its list, 0..1; a list sorted as plain text is read in natural order instead."""
    if len(keys) < 2:
        return [0.0] * len(keys)
    order = list(range(len(keys)))
    if list(keys) == sorted(keys):
        order.sort(key=lambda index: _natural_key(keys[index]))
    places = [0.0] * len(keys)
    for rank, index in enumerate(order):
        places[index] = rank / (len(keys) - 1)
    return places


def _layout(names: Sequence[_Name]) -> str | None:
    """'torch' when most multi-axis kernels are called ``weight``, 'keras' when ``kernel``, else None."""
    votes = Counter(
        "torch" if name.leaf in ("weight", "weights") else "keras"
        for name in names
        if name.role == "kernel" and len(name.spec.shape) >= 2 and name.leaf in ("weight", "weights", "kernel")
    )
    if not votes:
        return None
    winner, count = votes.most_common(1)[0]
    return winner if count * 2 > sum(votes.values()) else None


# The permutation that turns a PyTorch kernel into a Keras one, by rank: Linear [out, in] -> [in, out];
# Conv1d [out, in, k] -> [k, in, out]; Conv2d [out, in, kh, kw] -> [kh, kw, in, out]; Conv3d likewise.
_TO_KERAS: Mapping[int, tuple[int, ...]] = {2: (1, 0), 3: (2, 1, 0), 4: (2, 3, 1, 0), 5: (2, 3, 4, 1, 0)}
_LAYOUT_NOTES: Mapping[int, str] = {
    2: "[out, in] -> [in, out]",
    3: "[out, in, k] -> [k, in, out]",
    4: "[out, in, kh, kw] -> [kh, kw, in, out]",
    5: "[out, in, kd, kh, kw] -> [kd, kh, kw, in, out]",
}


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inverse = [0] * len(perm)
    for position, axis in enumerate(perm):
        inverse[axis] = position
    return tuple(inverse)


# ---------------------------------------------------------------------------------------------------------------------
# Shape fit
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fit:
    """How a source tensor becomes a target's shape and dtype: the operations, how natural they are, and a note."""

    ops: tuple[str, ...]
    quality: float
    note: str
    dtype_score: float


def _transpose_op(perm: Sequence[int]) -> str:
    return f"{{ transpose = [{', '.join(map(str, perm))}] }}"


_RESHAPE_OP = '{ reshape = "target" }'


def _splits_or_merges(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether ``target`` only splits or merges neighbouring axes of ``shape`` (sizes of 1 may come and go)."""
    left = [dim for dim in shape if dim != 1]
    right = [dim for dim in target if dim != 1]
    i = j = 0
    while i < len(left) and j < len(right):
        a, b = left[i], right[j]
        i += 1
        j += 1
        while a != b:
            if a < b:
                if i == len(left):
                    return False
                a *= left[i]
                i += 1
            else:
                if j == len(right):
                    return False
                b *= right[j]
                j += 1
    return i == len(left) and j == len(right)


@lru_cache(maxsize=65536)
def _fit(
    shape: tuple[int, ...],
    dtype: str,
    target: tuple[int, ...],
    target_dtype: str,
    *,
    expected: tuple[int, ...] | None,
    layout_note: str,
) -> _Fit | None:
    """The best way to turn ``shape`` into ``target``, or None; ``expected`` is the permutation the layouts call for."""
    if math.prod(shape) != math.prod(target):
        return None
    if dtype == target_dtype:
        cast: tuple[str, ...] = ()
        dtype_score = 1.0
    elif dtype in _FLOATS and target_dtype in _FLOATS:
        cast = (f'{{ cast = "{target_dtype}" }}',)
        dtype_score = 0.5
    else:
        return None
    options: list[tuple[float, tuple[str, ...], str]] = []
    if shape == target:
        identity_wanted = expected is None or expected == tuple(range(len(expected)))
        options.append((1.0 if identity_wanted else 0.55, (), "shapes equal"))
    if len(shape) == len(target) and len(shape) >= 2:
        for perm in _permutations(len(shape)):
            if tuple(shape[axis] for axis in perm) == target:
                if perm == expected:
                    options.append((1.0, (_transpose_op(perm),), f"transposed {list(perm)} ({layout_note})"))
                else:
                    reversed_axes = perm == tuple(reversed(range(len(shape))))
                    options.append((0.9 if reversed_axes else 0.8, (_transpose_op(perm),), f"transposed {list(perm)}"))
    if not options:
        compatible = _splits_or_merges(shape, target)
        options.append((0.8 if compatible else 0.45, (_RESHAPE_OP,), "reshaped to the target's shape"))
        if expected is not None and len(expected) == len(shape):
            moved = tuple(shape[axis] for axis in expected)
            if moved != target:
                compatible = _splits_or_merges(moved, target)
                options.append(
                    (
                        0.85 if compatible else 0.45,
                        (_transpose_op(expected), _RESHAPE_OP),
                        f"transposed {list(expected)} ({layout_note}), then reshaped",
                    )
                )
    quality, ops, note = max(options, key=lambda option: option[0])
    if cast:
        note += f"; cast {dtype} -> {target_dtype}"
    return _Fit((*ops, *cast), quality, note, dtype_score)


@lru_cache(maxsize=8)
def _permutations(rank: int) -> tuple[tuple[int, ...], ...]:
    """Non-identity axis permutations worth trying: all of them up to rank 4, beyond that only the reversal."""
    identity = tuple(range(rank))
    if rank <= 4:
        return tuple(perm for perm in itertools.permutations(identity) if perm != identity)
    return (tuple(reversed(identity)), *(perm for perm in _TO_KERAS.values() if len(perm) == rank))


# ---------------------------------------------------------------------------------------------------------------------
# Scoring and assignment
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pair:
    source: int
    target: int
    score: float
    fit: _Fit
    order: float  # the order part of the score, which confidence does not count as evidence
    evidence: float = 0.0  # the score without the order part: what names, shapes, roles, indices and layers say


@dataclass
class _Scorer:
    """Scores source-target pairs; built once per suggest_rules call."""

    sources: list[_Name]
    targets: list[_Name]
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

    def expected(self, source: _Name) -> tuple[tuple[int, ...] | None, str]:
        """The permutation the two layouts call for on this source tensor, and how to describe it."""
        rank = len(source.spec.shape)
        if source.role != "kernel" or rank not in _TO_KERAS:
            return None, ""
        if self.layout == ("torch", "keras"):
            return _TO_KERAS[rank], "PyTorch " + _LAYOUT_NOTES[rank]
        if self.layout == ("keras", "torch"):
            return _inverse(_TO_KERAS[rank]), "Keras to PyTorch layout"
        return None, ""

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

    def base(self) -> list[_Pair]:
        """Every plausible pair, scored on what does not change between rounds (name, shape, role, order, dtype)."""
        by_size: dict[int, list[int]] = defaultdict(list)
        for s, name in enumerate(self.sources):
            by_size[name.spec.size].append(s)
        pairs: list[_Pair] = []
        similarities: dict[tuple[frozenset[str], frozenset[str]], float] = {}  # layers repeat the same words
        for t, target in enumerate(self.targets):
            for s in by_size.get(target.spec.size, ()):
                source = self.sources[s]
                role = _role_fit(source.role, target.role)
                if role == 0.0:
                    continue
                expected, note = self.expected(source)
                fit = _fit(
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
                pairs.append(_Pair(s, t, score, fit, order, score - _W_ORDER * order))
        return _prune(pairs)

    def rescore(self, base: Sequence[_Pair], learned: bool) -> tuple[list[_Pair], list[_Pair]]:
        """The base pairs with this round's index and layer agreement added.

        Once offsets are learned, a pair whose index numbers all disagree (``layer_3`` against ``layer_7``) is
        dropped when its target has a candidate that agrees at all: it could not win, and keeping every layer's
        twin makes a deep model quadratic. Returns the rescored pairs, and the base pairs kept.
        """
        index_memo: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
        module_memo: dict[tuple[str, str], float] = {}
        agreeing: set[int] = set()
        scored: list[tuple[_Pair, float, float]] = []
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
        pairs: list[_Pair] = []
        kept: list[_Pair] = []
        for pair, index, module in scored:
            if index == 0.0 and pair.target in agreeing:
                continue
            bonus = _W_INDEX * index + _W_MODULE * module
            pairs.append(
                _Pair(pair.source, pair.target, pair.score + bonus, pair.fit, pair.order, pair.evidence + bonus)
            )
            kept.append(pair)
        return pairs, kept

    def learn_modules(self, chosen: Mapping[int, _Pair], margins: Mapping[int, tuple[float, int | None]]) -> None:
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

    def learn_offsets(self, chosen: Mapping[int, _Pair]) -> None:
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


def _prune(pairs: list[_Pair]) -> list[_Pair]:
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


def _assign(candidates: Sequence[_Pair]) -> dict[int, _Pair]:
    """Greedy one-to-one assignment by score; returns {target index: pair}."""
    ordered = sorted(candidates, key=lambda pair: (-pair.score, pair.target, pair.source))
    used: set[int] = set()
    chosen: dict[int, _Pair] = {}
    for pair in ordered:
        if pair.score < _MIN_SCORE:
            break
        if pair.target in chosen or pair.source in used:
            continue
        chosen[pair.target] = pair
        used.add(pair.source)
    return chosen


def _margins(chosen: Mapping[int, _Pair], candidates: Sequence[_Pair]) -> dict[int, tuple[float, int | None]]:
    """For each chosen pair: how much evidence the best single change would lose, and the source it would bring.

    A change is giving the target another source (one that is free, or swapping partners with another pair), or
    the source another target. Order is left out: a pair that beats its rival only by its place in the lists is a
    guess, however consistent.
    """
    evidence = {(pair.source, pair.target): pair.evidence for pair in candidates}
    by_source: dict[int, list[_Pair]] = defaultdict(list)
    by_target: dict[int, list[_Pair]] = defaultdict(list)
    for pair in candidates:
        by_source[pair.source].append(pair)
        by_target[pair.target].append(pair)
    partner_of_source = {pair.source: pair for pair in chosen.values()}
    margins: dict[int, tuple[float, int | None]] = {}
    for t, pair in chosen.items():
        s = pair.source
        best: tuple[float, int | None] = (1.0, None)
        change: tuple[float, int | None]
        for other in by_source[s]:  # s could fill another target instead
            if other.target == t:
                continue
            holder = chosen.get(other.target)
            if holder is None:
                change = (pair.evidence - other.evidence, None)
            elif (holder.source, t) in evidence:
                swapped = other.evidence + evidence[(holder.source, t)]
                change = (pair.evidence + holder.evidence - swapped, holder.source)
            else:
                continue
            best = min(best, change, key=lambda item: item[0])
        for other in by_target[t]:  # another source could fill t instead
            if other.source == s:
                continue
            held = partner_of_source.get(other.source)
            if held is None:
                change = (pair.evidence - other.evidence, other.source)
            elif (s, held.target) in evidence:
                swapped = other.evidence + evidence[(s, held.target)]
                change = (pair.evidence + held.evidence - swapped, other.source)
            else:
                continue
            best = min(best, change, key=lambda item: item[0])
        margins[t] = (max(0.0, best[0]), best[1])
    return margins


def _confidence(pair: _Pair, margin: float) -> float:
    """Blend how well a pair fits (its score) with how clearly it beats the alternatives (its margin)."""
    fit = min(1.0, max(0.0, (pair.score - 0.35) / 0.5))
    certainty = min(1.0, margin / 0.12)
    return round(0.4 * fit + 0.6 * certainty, 2)


# ---------------------------------------------------------------------------------------------------------------------
# Generalising pairs into rules
# ---------------------------------------------------------------------------------------------------------------------

# Source pattern atoms: ("w"|"s"|"d", text) literal, ("g", slot) an index group, ("a", "opt1|opt2") an alternation.
# Target template atoms: literals, ("r", "slot:offset") an index reference, ("ra", "position") an alternation reference.


@dataclass(frozen=True)
class _Placed:
    """One chosen pair with everything the rule writer needs."""

    source: _Name
    target: _Name
    fit: _Fit
    confidence: float
    runner_up: str | None  # the source that fits this target almost as well, if any


@dataclass
class _Draft:
    """A rule being built: pattern atoms, template atoms, operations and the pairs it covers."""

    source_atoms: tuple[_Atom, ...]
    target_atoms: tuple[_Atom, ...]
    ops: tuple[str, ...]
    pairs: list[_Placed]
    narrowed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # slot -> the values it may take
    literal: bool = False

    @property
    def first_target(self) -> float:
        return min(pair.target.position for pair in self.pairs)


def _skeleton(atoms: tuple[_Atom, ...]) -> tuple[_Atom, ...]:
    return tuple(("d", "#") if kind == "d" else (kind, text) for kind, text in atoms)


def _generalise(placed: Sequence[_Placed]) -> list[_Draft]:
    """Group pairs that differ only in index numbers into drafts with linked index groups."""
    groups: dict[tuple[object, ...], list[_Placed]] = defaultdict(list)
    for pair in placed:
        key = (_skeleton(pair.source.atoms), _skeleton(pair.target.atoms), pair.fit.ops)
        groups[key].append(pair)
    drafts: list[_Draft] = []
    for members in groups.values():
        drafts.extend(_link(members))
    return drafts


def _literal(pair: _Placed) -> _Draft:
    return _Draft(pair.source.atoms, pair.target.atoms, pair.fit.ops, [pair], literal=True)


def _index_values(atoms: tuple[_Atom, ...]) -> list[int]:
    return [int(text) for kind, text in atoms if kind == "d"]


def _link(members: list[_Placed]) -> list[_Draft]:
    """One draft for pairs sharing both skeletons: varying indices become groups linked by a constant offset."""
    if len(members) == 1:
        return [_literal(members[0])]
    source_values = [_index_values(pair.source.atoms) for pair in members]
    target_values = [_index_values(pair.target.atoms) for pair in members]
    source_varying = [k for k in range(len(source_values[0])) if len({row[k] for row in source_values}) > 1]
    target_varying = [j for j in range(len(target_values[0])) if len({row[j] for row in target_values}) > 1]
    links: dict[int, tuple[int, int]] = {}  # target slot -> (source slot, offset)
    for j in target_varying:
        options = []
        for k in source_varying:
            offsets = {t_row[j] - s_row[k] for s_row, t_row in zip(source_values, target_values, strict=True)}
            if len(offsets) == 1:
                offset = offsets.pop()
                distance = (k != j, k - len(source_values[0]) != j - len(target_values[0]), abs(offset))
                options.append((distance, k, offset))
        if not options:
            return _split_on(members, functools.partial(_index_at, "target", j))
        _, k, offset = min(options)
        links[j] = (k, offset)
    unlinked = [k for k in source_varying if k not in {k for k, _ in links.values()}]
    if unlinked:
        return _split_on(members, functools.partial(_index_at, "source", unlinked[0]))
    slot_names = {k: f"i{k}" for k, _ in links.values()}
    source_atoms: list[_Atom] = []
    position = 0
    for kind, text in members[0].source.atoms:
        if kind == "d":
            source_atoms.append(("g", slot_names[position]) if position in slot_names else (kind, text))
            position += 1
        else:
            source_atoms.append((kind, text))
    target_atoms: list[_Atom] = []
    position = 0
    for kind, text in members[0].target.atoms:
        if kind == "d":
            if position in links:
                k, offset = links[position]
                target_atoms.append(("r", f"{slot_names[k]}:{offset}"))
            else:
                target_atoms.append((kind, text))
            position += 1
        else:
            target_atoms.append((kind, text))
    return [_Draft(tuple(source_atoms), tuple(target_atoms), members[0].fit.ops, list(members))]


def _index_at(side: str, slot: int, pair: _Placed) -> int:
    """The value of index number ``slot`` in the pair's source or target name."""
    return _index_values((pair.source if side == "source" else pair.target).atoms)[slot]


def _split_on(members: list[_Placed], value: Callable[[_Placed], int]) -> list[_Draft]:
    parts: dict[int, list[_Placed]] = defaultdict(list)
    for pair in members:
        parts[value(pair)].append(pair)
    if len(parts) == 1:  # pragma: no cover - the value varies, so there are several parts
        return [_literal(pair) for pair in members]
    return [draft for part in parts.values() for draft in _link(part)]


def _merge_alternations(drafts: list[_Draft]) -> list[_Draft]:
    """Merge drafts that differ only in one word, found verbatim on both sides, into an alternation.

    Each draft is keyed once per word it shares with its target (that word masked on both sides); the largest set
    of drafts under one key, each with a different word, becomes one draft. Repeat until nothing merges.
    """
    drafts = list(drafts)
    while True:
        buckets: dict[_MergeKey, list[tuple[int, str]]] = defaultdict(list)
        for number, draft in enumerate(drafts):
            # Merged drafts must cover the same index values, or the alternation would claim names they do not.
            covered = frozenset(tuple(_index_values(pair.source.atoms)) for pair in draft.pairs)
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
        merged = _Draft(
            tuple(("a", options) if atom == _MASK else atom for atom in source_key),
            target_key,
            ops,
            [pair for number, _ in group for pair in drafts[number].pairs],
        )
        taken = {number for number, _ in members}
        drafts = [draft for number, draft in enumerate(drafts) if number not in taken] + [merged]


_MASK: _Atom = ("a", "?")
# Drafts merge when their pattern and template are equal but for one masked word, with equal operations and indices.
_MergeKey = tuple[tuple[_Atom, ...], tuple[_Atom, ...], tuple[str, ...], frozenset[tuple[int, ...]]]


# ---------------------------------------------------------------------------------------------------------------------
# Rendering drafts as patterns and templates
# ---------------------------------------------------------------------------------------------------------------------

_INDEX_NAMES = ("i", "j", "k", "l", "m", "n")


def _group_names(draft: _Draft) -> dict[str, str]:
    """Readable names for a draft's groups: i, j, k... for indices; part/param for alternations."""
    names: dict[str, str] = {}
    indices = 0
    used: set[str] = set()
    for position, (kind, text) in enumerate(draft.source_atoms):
        if kind == "g":
            name = _INDEX_NAMES[indices] if indices < len(_INDEX_NAMES) else f"i{indices}"
            indices += 1
            key = text
        elif kind == "a":
            options = [_canonical(option) for option in text.split("|")]
            name = "param" if all(len(words) == 1 and words[0] in _ROLES for words in options) else "part"
            key = str(position)
        else:
            continue
        base, number = name, 2
        while name in used:
            name = f"{base}{number}"
            number += 1
        used.add(name)
        names[key] = name
    return names


def _render_pattern(draft: _Draft, names: Mapping[str, str]) -> str:
    parts: list[str] = []
    for position, (kind, text) in enumerate(draft.source_atoms):
        if kind == "g":
            values = draft.narrowed.get(text)
            body = "|".join(values) if values else (r"[1-9]\d*" if text in _decremented(draft) else r"\d+")
            parts.append(f"(?P<{names[text]}>{body})")
        elif kind == "a":
            parts.append(f"(?P<{names[str(position)]}>{'|'.join(re.escape(option) for option in text.split('|'))})")
        else:
            parts.append(re.escape(text))
    return "".join(parts)


def _decremented(draft: _Draft) -> set[str]:
    """Index groups the template takes 1 from: their pattern refuses 0, which would give a negative index."""
    return {text.split(":")[0] for kind, text in draft.target_atoms if kind == "r" and text.endswith(":-1")}


def _render_template(draft: _Draft, names: Mapping[str, str]) -> str:
    parts: list[str] = []
    for kind, text in draft.target_atoms:
        if kind == "r":
            slot, offset = text.split(":")
            number = int(offset)
            parts.append(
                f"{{{names[slot]}}}" if number == 0 else f"{{{names[slot]} {'+' if number > 0 else '-'} {abs(number)}}}"
            )
        elif kind == "ra":
            parts.append(f"{{{names[text]}}}")
        else:
            parts.append(text.replace("{", "{{").replace("}", "}}"))
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------------------------------


def suggest_rules(source: Mapping[str, TensorSpec], target: TargetMap, *, namespace: str = "path") -> Suggestion:
    """Draft a rule file that maps ``source``'s tensors onto ``target``'s variables, with confidence notes.

    Pure: no TensorFlow, no tensor reads, inputs untouched. The module docstring explains the method.

    Args:
        source: the source's tensors by name (``Source.specs()``, or any mapping of TensorSpec).
        target: the target's variables with their names in each namespace.
        namespace: the namespace the drafted templates produce: ``path`` (Keras paths) or ``checkpoint``.

    Returns:
        The Suggestion: ``toml`` (a rule file ``parse_rules`` accepts, whose plan against the same maps makes
        exactly the pairs claimed), the mapping rules with their confidence and pairs, the skip rules for
        bookkeeping tensors, and the source and target names left unplaced.

    Raises:
        TargetError: ``namespace`` is not one the target has names in.

    Example:
        >>> from mapper.specs import VariableMap
        >>> layers = range(3)
        >>> source = {
        ...     f"encoder.layer.{i}.{p}.weight": TensorSpec(f"encoder.layer.{i}.{p}.weight", (8, 4), "float32")
        ...     for i in layers for p in ("query", "key")
        ... }
        >>> target = TargetMap(VariableMap(
        ...     TensorSpec(f"block_{i + 1}/{p}/kernel", (4, 8), "float32") for i in layers for p in ("query", "key")
        ... ))
        >>> suggestion = suggest_rules(source, target)
        >>> [(rule.match, rule.target, rule.ops) for rule in suggestion.rules]
        [('encoder\\\\.layer\\\\.(?P<i>\\\\d+)\\\\.(?P<part>query|key)\\\\.weight', 'block_{i + 1}/{part}/kernel', ('{ transpose = [1, 0] }',))]
        >>> suggestion.mapping["block_3/key/kernel"]
        'encoder.layer.2.key.weight'
    """
    if namespace not in NAMESPACES or namespace not in target.namespaces:
        raise TargetError(
            f"cannot draft rules in the {namespace!r} namespace: the target has names only in "
            f"{', '.join(target.namespaces)}; pass namespace= one of those"
        )
    target_keys = target.names(namespace)
    target_specs = [_lookup(target, namespace, key) for key in target_keys]
    skips, bookkeeping = _bookkeeping(source)
    source_keys = [name for name in source if name not in bookkeeping]
    sources = _describe(source_keys, [source[name] for name in source_keys])
    targets = _describe(target_keys, target_specs)
    scorer = _Scorer(sources, targets, (_layout(sources), _layout(targets)))

    # Round 1: names, shapes, roles, order. Round 2: also index offsets learned from round 1.
    # Round 3: also which layer went to which, learned from round 2's clear pairs.
    base = scorer.base()
    candidates, _ = scorer.rescore(base, learned=False)
    chosen = _assign(candidates)
    scorer.learn_offsets(chosen)
    candidates, base = scorer.rescore(base, learned=True)
    chosen = _assign(candidates)
    margins = _margins(chosen, candidates)
    scorer.learn_modules(chosen, margins)
    candidates, _ = scorer.rescore(base, learned=True)
    chosen = _assign(candidates)
    margins = _margins(chosen, candidates)
    placed = []
    for t, pair in sorted(chosen.items()):
        margin, rival = margins[t]
        placed.append(
            _Placed(
                source=sources[pair.source],
                target=targets[t],
                fit=pair.fit,
                confidence=_confidence(pair, margin),
                runner_up=None if rival is None or rival == pair.source else sources[rival].key,
            )
        )
    drafts = _merge_alternations(_generalise(placed))
    drafts.sort(key=lambda draft: draft.first_target)
    drafts = _narrow(drafts, list(source))

    # Plan the draft and fix what the planner refuses: a rule is split into one rule per pair, and a one-pair rule
    # that still fails is given up. Each round splits or drops something, so this ends; the bound is a safeguard.
    notes: list[str] = []
    sides = _Sides(source, target, namespace, sources, targets, skips)
    for _ in range(2 * len(placed) + 2):
        toml = _render(drafts, sides, notes)
        failing = _check(toml, drafts, source, target)
        if not failing:
            break
        rebuilt: list[_Draft] = []
        for number, draft in enumerate(drafts):
            if number not in failing:
                rebuilt.append(draft)
            elif not draft.literal or len(draft.pairs) > 1:
                rebuilt.extend(_literal(pair) for pair in draft.pairs)
            else:
                given_up = draft.pairs[0]
                notes.append(f"{given_up.source.key!r} -> {given_up.target.key!r}: {failing[number]}")
        drafts = _narrow(sorted(rebuilt, key=lambda draft: draft.first_target), list(source))
    return Suggestion(
        toml=toml,
        namespace=namespace,
        rules=tuple(_suggested(draft) for draft in drafts),
        skips=tuple(skips),
        unplaced_sources=tuple(_unplaced_sources(drafts, sources)),
        unfilled_targets=tuple(_unfilled_targets(drafts, targets)),
        notes=tuple(notes),
    )


def _lookup(target: TargetMap, namespace: str, key: str) -> TensorSpec:
    spec = target.lookup(namespace, key)
    if spec is None:  # pragma: no cover - names() lists only names lookup() knows
        raise TargetError(f"target variable {key!r} has no spec in the {namespace!r} namespace")
    return spec


def _narrow(drafts: list[_Draft], names: Sequence[str]) -> list[_Draft]:
    """Make sure no rule matches a source name it does not claim: narrow its groups, or split it into literals."""
    for _ in range(3):
        compiled = [re.compile(_render_pattern(draft, _group_names(draft))) for draft in drafts]
        owner = {pair.source.key: number for number, draft in enumerate(drafts) for pair in draft.pairs}
        stray: set[int] = set()
        for name in names:
            first = next((number for number, pattern in enumerate(compiled) if pattern.fullmatch(name)), None)
            if first is not None and owner.get(name) != first:
                stray.add(first)
        if not stray:
            return drafts
        rebuilt: list[_Draft] = []
        for number, draft in enumerate(drafts):
            if number not in stray:
                rebuilt.append(draft)
            elif draft.narrowed or not any(kind == "g" for kind, _ in draft.source_atoms):
                rebuilt.extend(_literal(pair) for pair in draft.pairs)
            else:
                rebuilt.append(replace(draft, narrowed=_slot_values(draft)))
        drafts = rebuilt
    return [_literal(pair) for draft in drafts for pair in draft.pairs] if stray else drafts


def _slot_values(draft: _Draft) -> dict[str, tuple[str, ...]]:
    """The values each index group of a draft takes over its pairs, in numeric order."""
    slots = [text for kind, text in draft.source_atoms if kind == "g"]
    positions = [number for number, (kind, _) in enumerate(draft.source_atoms) if kind == "g"]
    values: dict[str, set[str]] = defaultdict(set)
    for pair in draft.pairs:
        for slot, position in zip(slots, positions, strict=True):
            values[slot].add(pair.source.atoms[position][1])
    return {slot: tuple(sorted(found, key=int)) for slot, found in values.items()}


def _check(
    toml: str,
    drafts: Sequence[_Draft],
    source: Mapping[str, TensorSpec],
    target: TargetMap,
) -> dict[int, str]:
    """Plan the draft; return the drafts (by number) whose rules misbehave, with what went wrong."""
    plan = build_plan(parse_rules(toml, file="<draft>"), source, target)
    failing: dict[int, str] = {}
    for problem in plan.problems:
        if problem.rule is not None and problem.kind not in (ProblemKind.UNUSED_SOURCE, ProblemKind.UNFILLED_TARGET):
            number = problem.rule.index - 1
            if number < len(drafts):
                failing.setdefault(number, problem.message)
    got = {assignment.target_key: (assignment.source, assignment.rule.index - 1) for assignment in plan.assignments}
    for number, draft in enumerate(drafts):
        for pair in draft.pairs:
            found = got.get(pair.target.key)
            if found is None or found[0] != pair.source.key:
                failing.setdefault(number, f"the planned rule does not map {pair.source.key!r} to {pair.target.key!r}")
    return failing


def _suggested(draft: _Draft) -> SuggestedRule:
    names = _group_names(draft)
    pairs = sorted(draft.pairs, key=lambda pair: pair.target.position)
    confidence = round(sum(pair.confidence for pair in pairs) / len(pairs), 2)
    return SuggestedRule(
        match=_render_pattern(draft, names),
        target=_render_template(draft, names),
        ops=draft.ops,
        confidence=confidence,
        pairs=tuple((pair.source.key, pair.target.key) for pair in pairs),
        pair_confidence=tuple(pair.confidence for pair in pairs),
        reasons=tuple(_reasons(draft, names)),
    )


def _unplaced_sources(drafts: Sequence[_Draft], sources: Sequence[_Name]) -> list[str]:
    placed = {pair.source.key for draft in drafts for pair in draft.pairs}
    return [name.key for name in sources if name.key not in placed]


def _unfilled_targets(drafts: Sequence[_Draft], targets: Sequence[_Name]) -> list[str]:
    placed = {pair.target.key for draft in drafts for pair in draft.pairs}
    return [name.key for name in targets if name.key not in placed]


# ---------------------------------------------------------------------------------------------------------------------
# Writing the TOML
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sides:
    """Both sides as the caller gave them and as described, and the bookkeeping skips: what the writer needs."""

    source: Mapping[str, TensorSpec]
    target: TargetMap
    namespace: str
    sources: Sequence[_Name]
    targets: Sequence[_Name]
    skips: Sequence[SuggestedSkip]


def _reasons(draft: _Draft, names: Mapping[str, str]) -> list[str]:
    """Why the draft believes a rule: shared words, the shape change, how many pairs, the weakest doubt."""
    pairs = draft.pairs
    shared: list[str] = []
    for position, (kind, text) in enumerate(draft.target_atoms):
        if kind not in ("w", "ra"):
            continue
        word = f"{{{names[text]}}}" if kind == "ra" else text
        if word not in shared and all(_shares(pair, position) for pair in pairs):
            shared.append(word)
    reasons = [f"names share '{'/'.join(shared)}'" if shared else "names share nothing: placed by shape and position"]
    reasons.append(pairs[0].fit.note)
    spans = [f"{names[slot]} = {_span(values)}" for slot, values in _slot_values(draft).items()]
    spans += [
        f"{names[str(position)]} x{text.count('|') + 1}"
        for position, (kind, text) in enumerate(draft.source_atoms)
        if kind == "a"
    ]
    if len(pairs) > 1:
        reasons.append(f"{len(pairs)} pairs" + (f" ({'; '.join(spans)})" if spans else ""))
    weakest = min(pairs, key=lambda pair: pair.confidence)
    if weakest.confidence < CONFIDENT:
        rival = f"; {weakest.runner_up!r} fits almost as well" if weakest.runner_up else ""
        reasons.append(f"weakest: {weakest.source.key!r} -> {weakest.target.key!r} at {weakest.confidence:.2f}{rival}")
    return reasons


def _shares(pair: _Placed, position: int) -> bool:
    """Whether the word at ``position`` of the pair's target name is in its source name (or is their shared role)."""
    kind, text = pair.target.atoms[position]
    if kind != "w":
        return False
    words = _canonical(text)
    role = pair.source.role if pair.source.role == pair.target.role else None
    return bool(words) and all(word in pair.source.words or (role and _ROLES.get(word) == role) for word in words)


def _span(values: Sequence[str]) -> str:
    numbers = sorted(int(value) for value in values)
    if numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 2:
        return f"{numbers[0]}..{numbers[-1]}"
    return ", ".join(map(str, numbers))


def _string(text: str) -> str:
    """A TOML basic string."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(char if char >= " " and char != "\x7f" else f"\\u{ord(char):04x}" for char in escaped)
    return f'"{escaped}"'


def _pattern_string(pattern: str) -> str:
    """A regular expression as a TOML literal string when it can be one (no backslash doubling), else basic."""
    if "'" not in pattern and all(char >= " " and char != "\x7f" for char in pattern):
        return f"'{pattern}'"
    return _string(pattern)


def _render(drafts: Sequence[_Draft], sides: _Sides, notes: Sequence[str]) -> str:
    """The draft as TOML: header, target section, mapping rules, bookkeeping skips, then what is left over."""
    sources, targets, skips = sides.sources, sides.targets, sides.skips
    rules = [_suggested(draft) for draft in drafts]
    placed = sum(len(rule.pairs) for rule in rules)
    confident = sum(1 for rule in rules if rule.confident)
    skipped = sum(len(skip.sources) for skip in skips)
    source_text = getattr(sides.source, "description", "") or "the source"
    target_text = getattr(sides.target.variables, "description", "") or "the target"
    unplaced = _unplaced_sources(drafts, sources)
    unfilled = _unfilled_targets(drafts, targets)
    lines = [
        "# Draft rule file from `mapper suggest`: guesses to check, not a finished port.",
        f"# {placed} of {_plural(len(targets), 'target variable')} placed by {_plural(len(rules), 'rule')} "
        f"({confident} confident: confidence >= {CONFIDENT}); {_plural(skipped, 'source tensor')} skipped as bookkeeping;",
        f"# {_plural(len(unplaced), 'source tensor')} and {_plural(len(unfilled), 'target variable')} left for you "
        "at the end.",
        "# Each rule's comment gives its confidence (0 to 1) and the evidence; CHECK marks the least certain.",
        "# Plan it with `mapper plan` and read the report before applying it.",
        "",
        "format = 1",
        f"description = {_string(f'Draft mapping from {source_text} to {target_text}, suggested from names and shapes.')}",
        "",
        "[target]",
        f"namespace = {_string(sides.namespace)}",
    ]
    for rule in rules:
        mark = "" if rule.confident else "CHECK "
        lines += ["", f"# {mark}confidence {rule.confidence:.2f}: {'; '.join(rule.reasons)}", "[[rules]]"]
        lines.append(f"match = {_pattern_string(rule.match)}")
        lines.append(f"target = {_string(rule.target)}")
        if rule.ops:
            lines.append(f"ops = [{', '.join(rule.ops)}]")
    if skips:
        lines += ["", "# --- never weights ---"]
    for skip in skips:
        lines += ["", f"# {_plural(len(skip.sources), 'tensor')}, such as {skip.sources[0]!r}", "[[rules]]"]
        lines.append(f"name = {_string(skip.name)}")
        lines.append(f"match = {_pattern_string(skip.match)}")
        lines.append(f"skip = {_string(skip.reason)}")
    if unplaced:
        lines += [
            "",
            f"# --- no target found: {_plural(len(unplaced), 'source tensor')} ---",
            "# Nothing in the target fits these. Map them, or uncomment a skip and say why the target needs none.",
        ]
        by_name = {name.key: name.spec for name in sources}
        for pattern, members in _cover(unplaced, [name.key for name in sources]):
            lines += ["#", *_listing(members, by_name), "# [[rules]]", f"# match = {_pattern_string(pattern)}"]
            lines.append('# skip = "DECIDE: no target found"')
    if notes:
        lines += ["", "# --- given up: pairs the planner refused, left unplaced ---", *(f"# {note}" for note in notes)]
    if unfilled:
        lines += [
            "",
            f"# --- nothing fills: {_plural(len(unfilled), 'target variable')} ---",
            "# No source tensor fits these. Map one, or uncomment a keep and say why they keep their initial values.",
        ]
        by_name = {name.key: name.spec for name in targets}
        for pattern, members in _cover(unfilled, [name.key for name in targets]):
            lines += ["#", *_listing(members, by_name), "# [[keep]]", f"# match = {_pattern_string(pattern)}"]
            lines.append('# reason = "DECIDE: nothing in the source fits"')
    return "\n".join(lines) + "\n"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _listing(members: Sequence[str], specs: Mapping[str, TensorSpec]) -> list[str]:
    """Comment lines naming ``members`` with shapes: grouped (``a/{b,c}``) when they share shape and dtype."""
    kinds = {(specs[name].shape, specs[name].dtype) for name in members}
    if len(kinds) == 1:
        shape, dtype = kinds.pop()
        return [f"#   {pattern} {format_shape(shape)} {dtype}" for pattern in group_names(members)]
    return [f"#   {name} {format_shape(specs[name].shape)} {specs[name].dtype}" for name in members]


def _cover(names: Sequence[str], universe: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Regular expressions matching exactly ``names`` among ``universe``, as few and as short as possible.

    A prefix that only ``names`` start with (``cls/``, ``bert/pooler/``) becomes ``prefix.+``; the rest are
    grouped into families that differ only in index numbers or in their last word.
    """
    chosen = set(names)
    counts: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    for name in universe:
        for prefix in _prefixes(name):
            counts[prefix] += 1
            inside[prefix] += name in chosen
    by_prefix: dict[str, list[str]] = defaultdict(list)
    rest: list[str] = []
    for name in names:
        found = next((prefix for prefix in _prefixes(name) if counts[prefix] == inside[prefix] >= 2), None)
        if found is None:
            rest.append(name)
        else:
            by_prefix[found].append(name)
    covered = [(re.escape(prefix) + ".+", members) for prefix, members in by_prefix.items()]
    return covered + _name_groups(rest)


def _prefixes(name: str) -> list[str]:
    """Every leading part of ``name`` that ends at a separator, shortest first (``a/``, ``a/b/`` for ``a/b/c``)."""
    return [name[: match.end()] for match in re.finditer(r"[/.]", name) if match.end() < len(name)]


def _name_groups(names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Regular expressions covering exactly ``names``: one per family differing only in index numbers or last word."""
    families: dict[tuple[_Atom, ...], list[str]] = defaultdict(list)
    for name in names:
        families[_skeleton(_atoms(name))].append(name)
    by_parent: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for members in families.values():
        values = [_index_values(_atoms(name)) for name in members]
        parts: list[str] = []
        position = 0
        for kind, text in _atoms(members[0]):
            if kind == "d":
                found = sorted({row[position] for row in values})
                parts.append(text if len(found) == 1 else "(?:" + "|".join(map(str, found)) + ")")
                position += 1
            else:
                parts.append(re.escape(text))
        atoms = _atoms(members[0])
        cut = max((number for number, (kind, _) in enumerate(atoms) if kind == "s"), default=-1) + 1
        by_parent["".join(parts[:cut])].append(("".join(parts[cut:]), members))
    result: list[tuple[str, list[str]]] = []
    for parent, family in by_parent.items():
        if len(family) == 1 or not parent:
            result.extend((parent + leaf, members) for leaf, members in family)
        else:
            leaves = "|".join(leaf for leaf, _ in family)
            result.append((f"{parent}(?:{leaves})", [name for _, members in family for name in members]))
    return result
