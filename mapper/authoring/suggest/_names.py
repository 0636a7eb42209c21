"""Step 2: each name cut into atoms (words, separators, index numbers), canonical words and a role."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mapper.specs import CHECKPOINT_VALUE_SUFFIX, TensorSpec
from mapper.text import natural_key

# An atom is (kind, text): "w" a word, "s" a separator, "d" an index number.
Atom = tuple[str, str]
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
ROLES: Mapping[str, str] = {
    "kernel": "kernel",
    "bias": "bias",
    "scale": "scale",
    "offset": "offset",
    "mean": "mean",
    "var": "var",
    "embedding": "embeddings",
}


def name_atoms(name: str) -> tuple[Atom, ...]:
    """Cut a name into words, separators and index numbers (``layer_0``, ``layer.0``, ``conv1``)."""
    atoms: list[Atom] = []
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


def canonical(*words: str) -> list[str]:
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
class Name:
    """What the scorer knows about one name."""

    key: str  # the name as the rule file sees it
    spec: TensorSpec
    atoms: tuple[Atom, ...]
    words: frozenset[str]  # canonical words, the role word excluded
    role: str | None
    leaf: str  # the raw last word, lower-cased (kernel, weight, gamma...)
    indices: tuple[int, ...]
    position: float  # 0..1 in the side's (natural) order
    module: str  # the name without its last segment: the layer it belongs to


def describe(keys: Sequence[str], specs: Sequence[TensorSpec]) -> list[Name]:
    """Describe one side's names, with roles refined by their siblings (a norm's ``bias`` is its offset)."""
    order = _positions(keys)
    analysed = [key.removesuffix(CHECKPOINT_VALUE_SUFFIX) for key in keys]
    modules = [_module(name) for name in analysed]
    words_of: list[list[str]] = []
    roles: list[str | None] = []
    leaves: list[str] = []
    for name, spec in zip(analysed, specs, strict=True):
        segments = re.split(r"[/.]", name)
        words = [word for segment in segments for word in _canonical_segment(segment)]
        leaf = next((text for kind, text in reversed(name_atoms(segments[-1])) if kind == "w"), "").lower()
        role = ROLES.get(words[-1]) if words else None
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
        Name(
            key=key,
            spec=spec,
            atoms=name_atoms(key),
            words=frozenset(words_of[number]),
            role="offset" if roles[number] == "bias" and modules[number] in scaled else roles[number],
            leaf=leaves[number],
            indices=tuple(int(text) for kind, text in name_atoms(key) if kind == "d"),
            position=order[number],
            module=modules[number],
        )
        for number, (key, spec) in enumerate(zip(keys, specs, strict=True))
    ]


def _canonical_segment(segment: str) -> list[str]:
    """The canonical words of one ``/``- or ``.``-separated segment (``word_embeddings`` -> token, embedding)."""
    return canonical(*(text for kind, text in name_atoms(segment) if kind == "w"))


def _module(name: str) -> str:
    """The name without its last segment: the layer a variable belongs to."""
    cut = max(name.rfind("/"), name.rfind("."))
    return name[:cut] if cut >= 0 else ""


def _positions(keys: Sequence[str]) -> list[float]:
    """Each name's place in its list, 0..1; a list sorted as plain text is read in natural order instead."""
    if len(keys) < 2:
        return [0.0] * len(keys)
    order = list(range(len(keys)))
    if list(keys) == sorted(keys):
        order.sort(key=lambda index: natural_key(keys[index]))
    places = [0.0] * len(keys)
    for rank, index in enumerate(order):
        places[index] = rank / (len(keys) - 1)
    return places


def kernel_layout(names: Sequence[Name]) -> str | None:
    """'torch' for ``[out, in, ...]`` kernels, 'keras' for ``[..., in, out]``, None when the names do not say.

    The side's own biases decide first: a layer's bias is as long as its kernel's output axis, so a kernel whose
    bias matches its first axis (and not its last) is ``[out, in]``, and one whose bias matches its last axis is
    ``[in, out]``, whatever its leaf is called (GPT-2's Conv1D ``weight`` is ``[in, out]``). Without such layers,
    the leaf names vote: ``weight`` means PyTorch, ``kernel`` Keras.

    Example:
        >>> specs = [TensorSpec("h.0.fc.weight", (4, 16), "float32"), TensorSpec("h.0.fc.bias", (16,), "float32")]
        >>> kernel_layout(describe([spec.name for spec in specs], specs))
        'keras'
    """
    by_bias = _layout_by_bias(names)
    if by_bias is not None:
        return by_bias
    votes = Counter(
        "torch" if name.leaf in ("weight", "weights") else "keras"
        for name in names
        if name.role == "kernel" and len(name.spec.shape) >= 2 and name.leaf in ("weight", "weights", "kernel")
    )
    return _majority(votes)


def _layout_by_bias(names: Sequence[Name]) -> str | None:
    """The layout the side's kernel-and-bias layers agree on, or None when none tells (square kernels) or they split."""
    bias_size = {name.module: name.spec.size for name in names if name.role == "bias" and len(name.spec.shape) == 1}
    votes: Counter[str] = Counter()
    for name in names:
        shape = name.spec.shape
        size = bias_size.get(name.module)
        if name.role != "kernel" or len(shape) < 2 or size is None or shape[0] == shape[-1]:
            continue
        if size == shape[0]:
            votes["torch"] += 1
        elif size == shape[-1]:
            votes["keras"] += 1
    return _majority(votes, unanimous=True)


def _majority(votes: Counter[str], *, unanimous: bool = False) -> str | None:
    if not votes:
        return None
    winner, count = votes.most_common(1)[0]
    total = sum(votes.values())
    return winner if (count == total if unanimous else count * 2 > total) else None
