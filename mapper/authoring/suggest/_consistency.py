"""Step 4b: placed pairs checked for consistency; pairs that contradict each other are left undecided (DECIDE).

A draft that is wrong in one layer and right in the next cannot be told apart by a person skimming it, so a
contradiction is never settled by a guess here: every pair involved is withdrawn and named in a note.

- **One rule for all layers.** Every source family (a name with its index numbers masked, ``h.#.ln_1.weight``) goes
  to one target family; a family split across two (``ln_1`` to the attention norm in one layer and to the
  feed-forward norm in the next) is a conflict.
- **A layer's parameters go together.** The parameters of one source layer (a kernel and its bias, a norm's scale
  and offset) go to one target layer; a kernel sent to ``key`` while its bias went to ``attention_output`` is a
  conflict.
- **No stray into a block.** A target family filled from indexed sources (``h.#.ln_2.bias``) takes nothing from a
  source with another count of index numbers (``ln_f.bias``, the final norm, is not a block's).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from mapper.authoring.suggest._assignment import Placed
from mapper.authoring.suggest._generalise import family
from mapper.authoring.suggest._names import Name


def consistent(placed: Sequence[Placed]) -> tuple[list[Placed], list[str]]:
    """The pairs that contradict none of the others, and a note for each conflict found.

    Example:
        >>> from mapper.authoring.suggest._assignment import place
        >>> from mapper.authoring.suggest._names import describe
        >>> from mapper.specs import TensorSpec
        >>> def side(*names: str) -> list[Name]:
        ...     specs = [TensorSpec(name, (4,), "float32") for name in names]
        ...     return describe(list(names), specs)
        >>> pairs = place(side("h.0.ln_1.weight", "h.1.ln_1.weight"), side("l0/attn_norm/gamma", "l1/ffn_norm/gamma"))
        >>> kept, notes = consistent(pairs)
        >>> kept, notes[0].startswith("DECIDE: 'h.#.ln_#.weight' goes to 2 target families")
        ([], True)
    """
    notes: list[str] = []
    withdrawn: set[str] = set()
    # Each check sees the whole placement: a pair withdrawn for one conflict still shows up another.
    for check in (_split_families, _split_layers, _strays):
        for note, sources in check(placed):
            notes.append(note)
            withdrawn.update(sources)
    return [pair for pair in placed if pair.source.key not in withdrawn], notes


_PARAMETERS = frozenset({"kernel", "bias", "scale", "offset", "mean", "var"})
_Conflict = tuple[str, set[str]]  # (the note, the source names withdrawn)


def _family(name: Name) -> str:
    """The name with its index numbers masked: ``h.#.ln_1.weight``."""
    return family(name.atoms)


def _grouped(placed: Sequence[Placed], key: Callable[[Placed], str]) -> dict[str, list[Placed]]:
    groups: dict[str, list[Placed]] = defaultdict(list)
    for pair in placed:
        groups[key(pair)].append(pair)
    return groups


def _repeat(pair: Placed) -> str:
    """The source family and every index number but the first: the same parameter in another layer has this key.

    Names with a single index number (``model/_operations/5/_kernel``) number their layers, not repeats of one
    layer, and go to families of several kinds (conv, dense): they are not compared.
    """
    indices = pair.source.indices
    return f"{_family(pair.source)} {indices[1:]}" if len(indices) >= 2 else pair.source.key


def _split_families(placed: Sequence[Placed]) -> list[_Conflict]:
    """Repeats of one parameter across layers (``h.0.ln_1.weight``, ``h.1.ln_1.weight``) sent to different families."""
    conflicts = []
    for repeat, members in _grouped(placed, _repeat).items():
        source_family = repeat.split(" ", 1)[0]
        targets = sorted({_family(pair.target) for pair in members})
        if len(targets) > 1:
            note = (
                f"DECIDE: {source_family!r} goes to {len(targets)} target families ({', '.join(map(repr, targets))}): "
                "the layers disagree, so none is placed"
            )
            conflicts.append((note, {pair.source.key for pair in members}))
    return conflicts


def _split_layers(placed: Sequence[Placed]) -> list[_Conflict]:
    """Source layers whose parameters (kernel, bias, scale, offset, statistics) go to more than one target layer."""
    conflicts = []
    parameters = [pair for pair in placed if pair.source.role in _PARAMETERS]
    for module, members in _grouped(parameters, lambda pair: pair.source.module).items():
        targets = sorted({pair.target.module for pair in members})
        if module and len(targets) > 1:
            note = (
                f"DECIDE: the parameters of {module!r} go to {len(targets)} target layers "
                f"({', '.join(map(repr, targets))}): a layer's parameters belong together, so none is placed"
            )
            conflicts.append((note, {pair.source.key for pair in members}))
    return conflicts


def _strays(placed: Sequence[Placed]) -> list[_Conflict]:
    """Sources whose count of index numbers differs from the rest of their target family's."""
    conflicts = []
    for target_family, members in _grouped(placed, lambda pair: _family(pair.target)).items():
        counts = Counter(len(pair.source.indices) for pair in members)
        if len(counts) < 2:
            continue
        usual, _ = counts.most_common(1)[0]
        for pair in members:
            if len(pair.source.indices) != usual:
                note = (
                    f"DECIDE: {pair.source.key!r} would go to {pair.target.key!r}, but the rest of {target_family!r} "
                    "comes from other layers' repeats, so it is not placed"
                )
                conflicts.append((note, {pair.source.key}))
    return conflicts
