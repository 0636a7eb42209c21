"""Step 3, shape fit: how a source tensor becomes a target's shape and dtype (equal, transposed, reshaped, cast)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from mapper.dtypes import FLOATS

# The permutation that turns a PyTorch kernel into a Keras one, by rank: Linear [out, in] -> [in, out];
# Conv1d [out, in, k] -> [k, in, out]; Conv2d [out, in, kh, kw] -> [kh, kw, in, out]; Conv3d likewise.
TO_KERAS: Mapping[int, tuple[int, ...]] = {2: (1, 0), 3: (2, 1, 0), 4: (2, 3, 1, 0), 5: (2, 3, 4, 1, 0)}
LAYOUT_NOTES: Mapping[int, str] = {
    2: "[out, in] -> [in, out]",
    3: "[out, in, k] -> [k, in, out]",
    4: "[out, in, kh, kw] -> [kh, kw, in, out]",
    5: "[out, in, kd, kh, kw] -> [kd, kh, kw, in, out]",
}


def inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    """The permutation that undoes ``perm``."""
    axes = [0] * len(perm)
    for position, axis in enumerate(perm):
        axes[axis] = position
    return tuple(axes)


def layout_permutation(
    role: str | None, rank: int, layout: tuple[str | None, str | None]
) -> tuple[tuple[int, ...] | None, str]:
    """The permutation the (source, target) layouts call for on a tensor of this role and rank, and its note.

    Example:
        >>> layout_permutation("kernel", 2, ("torch", "keras"))
        ((1, 0), 'PyTorch [out, in] -> [in, out]')
    """
    if role != "kernel" or rank not in TO_KERAS:
        return None, ""
    if layout == ("torch", "keras"):
        return TO_KERAS[rank], "PyTorch " + LAYOUT_NOTES[rank]
    if layout == ("keras", "torch"):
        return inverse(TO_KERAS[rank]), "Keras to PyTorch layout"
    return None, ""


@dataclass(frozen=True)
class Fit:
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
def fit_shape(
    shape: tuple[int, ...],
    dtype: str,
    target: tuple[int, ...],
    target_dtype: str,
    *,
    expected: tuple[int, ...] | None,
    layout_note: str,
) -> Fit | None:
    """The best way to turn ``shape`` into ``target``, or None; ``expected`` is the permutation the layouts call for."""
    if math.prod(shape) != math.prod(target):
        return None
    cast = _cast(dtype, target_dtype)
    if cast is None:
        return None
    ops_of_cast, dtype_score = cast
    options = _kept_or_transposed(shape, target, expected, layout_note) or _reshaped(
        shape, target, expected, layout_note
    )
    quality, ops, note = max(options, key=lambda option: option[0])
    if ops_of_cast:
        note += f"; cast {dtype} -> {target_dtype}"
    return Fit((*ops, *ops_of_cast), quality, note, dtype_score)


# One way to reach the target's shape: (how natural it is, the operations, the note that explains it).
_Option = tuple[float, tuple[str, ...], str]


def _cast(dtype: str, target_dtype: str) -> tuple[tuple[str, ...], float] | None:
    """The cast operations a dtype change needs and the dtype score, or None when the kinds differ."""
    if dtype == target_dtype:
        return (), 1.0
    if dtype in FLOATS and target_dtype in FLOATS:
        return (f'{{ cast = "{target_dtype}" }}',), 0.5
    return None


def _kept_or_transposed(
    shape: tuple[int, ...], target: tuple[int, ...], expected: tuple[int, ...] | None, layout_note: str
) -> list[_Option]:
    """The shape as it is, and every transpose that gives the target's shape (the one the layouts expect first)."""
    options: list[_Option] = []
    if shape == target:
        identity_wanted = expected is None or expected == tuple(range(len(expected)))
        options.append((1.0 if identity_wanted else 0.55, (), "shapes equal"))
    if len(shape) != len(target) or len(shape) < 2:
        return options
    for perm in _permutations(len(shape)):
        if tuple(shape[axis] for axis in perm) != target:
            continue
        if perm == expected:
            options.append((1.0, (_transpose_op(perm),), f"transposed {list(perm)} ({layout_note})"))
        else:
            reversed_axes = perm == tuple(reversed(range(len(shape))))
            options.append((0.9 if reversed_axes else 0.8, (_transpose_op(perm),), f"transposed {list(perm)}"))
    return options


def _reshaped(
    shape: tuple[int, ...], target: tuple[int, ...], expected: tuple[int, ...] | None, layout_note: str
) -> list[_Option]:
    """A reshape to the target's shape, and the layouts' transpose followed by one; splitting axes scores higher."""
    compatible = _splits_or_merges(shape, target)
    options: list[_Option] = [(0.8 if compatible else 0.45, (_RESHAPE_OP,), "reshaped to the target's shape")]
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
    return options


@lru_cache(maxsize=8)
def _permutations(rank: int) -> tuple[tuple[int, ...], ...]:
    """Non-identity axis permutations worth trying: all of them up to rank 4, beyond that only the reversal."""
    identity = tuple(range(rank))
    if rank <= 4:
        return tuple(perm for perm in itertools.permutations(identity) if perm != identity)
    return (tuple(reversed(identity)), *(perm for perm in TO_KERAS.values() if len(perm) == rank))
