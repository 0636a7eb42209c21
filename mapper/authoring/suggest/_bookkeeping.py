"""Step 1: source tensors that are never weights (optimizer state, counters, buffers) become skip rules."""

from __future__ import annotations

import re
from collections.abc import Iterable

from mapper.authoring.suggest.results import SuggestedSkip

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


def find_bookkeeping(names: Iterable[str]) -> tuple[list[SuggestedSkip], set[str]]:
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
