"""Undoing tensor operations: the operation that gives back a tensor's value, shape and dtype from its result.

Renames aside, an export runs each rule's operations backwards: a transpose by its inverse permutation, a reshape
or rearrange to the shape before, a cast back when it is exact (or allowed to round), a slice that drops only
length-1 axes by a reshape. What cannot be undone raises OperationError saying why. Pure: no tensor is read.
"""

from __future__ import annotations

from collections.abc import Sequence

from mapper.dtypes import FLOATS, INTS
from mapper.errors import OperationError
from mapper.ops import Cast, Operation, Rearrange, Reshape, Slice, Transpose, parse_rearrange
from mapper.specs import format_shape

# Floats by (significand bits, largest exponent, smallest subnormal exponent): A holds every B value when each is
# at least as wide.
_FLOAT_RANGES: dict[str, tuple[int, int, int]] = {
    "float64": (53, 1024, -1074),
    "float32": (24, 128, -149),
    "bfloat16": (8, 128, -133),
    "float16": (11, 16, -24),
    "float8_e4m3fn": (4, 9, -9),
    "float8_e5m2": (3, 16, -16),
}


def _int_bits(dtype: str) -> tuple[int, int, bool]:
    """(bits, magnitude bits, signed) of an integer dtype name."""
    signed = not dtype.startswith("u")
    bits = int(dtype.removeprefix("u").removeprefix("int"))
    return bits, bits - 1 if signed else bits, signed


def exact_cast(from_dtype: str, to_dtype: str) -> bool:
    """Whether every value of ``from_dtype`` is exactly a value of ``to_dtype`` (a cast that never rounds).

    Example:
        >>> exact_cast("bfloat16", "float32"), exact_cast("float32", "bfloat16"), exact_cast("int8", "float16")
        (True, False, True)
    """
    if from_dtype == to_dtype or (from_dtype == "bool" and to_dtype in INTS | FLOATS):
        return True
    if from_dtype in FLOATS and to_dtype in FLOATS:
        (bits, top, bottom), (to_bits, to_top, to_bottom) = _FLOAT_RANGES[from_dtype], _FLOAT_RANGES[to_dtype]
        return bits <= to_bits and top <= to_top and bottom >= to_bottom
    if from_dtype in INTS and to_dtype in INTS:
        (bits, _, signed), (to_bits, _, to_signed) = _int_bits(from_dtype), _int_bits(to_dtype)
        return (signed == to_signed and bits <= to_bits) or (not signed and to_signed and bits < to_bits)
    if from_dtype in INTS and to_dtype in FLOATS:
        return _int_bits(from_dtype)[1] <= _FLOAT_RANGES[to_dtype][0]
    return False


RESTORE_HINT = (
    "; if the --like checkpoint holds the dropped values, declare the source tensor in [[export.restore]] "
    "(match, reason) and the export writes them back from it"
)


def _slice_inverse(operation: Slice, shape: tuple[int, ...]) -> Operation:
    """A reshape back, when the slice keeps every element in order (it only drops length-1 axes)."""
    blocks = all(isinstance(item, int) or item[2] in (None, 1) for item in operation.items)
    hint = RESTORE_HINT if blocks else ""
    for item, size in zip(operation.items, shape, strict=False):
        if isinstance(item, int):
            if size != 1:
                raise OperationError(
                    f"{operation.describe()} keeps one of {size} entries of an axis of shape {format_shape(shape)}; "
                    f"the others are lost, so it cannot be undone{hint}",
                    operation="slice",
                )
        elif range(*slice(*item).indices(size)) != range(size):
            raise OperationError(
                f"{operation.describe()} does not keep the whole axis of size {size} (shape {format_shape(shape)}) "
                f"in order, so it cannot be undone{hint}",
                operation="slice",
            )
    return Reshape(shape)


def _rearrange_inverse(operation: Rearrange, shape: tuple[int, ...]) -> Operation:
    """The rearrangement the other way, every axis size bound."""
    split_shape, _, _ = operation.plan(shape)
    left, _ = parse_rearrange(operation.pattern)
    names = [name for group in left for name in group]
    before, after = operation.pattern.split("->")
    return Rearrange(f"{after.strip()} -> {before.strip()}", tuple(zip(names, split_shape, strict=True)))


def inverse_operation(operation: Operation, shape: tuple[int, ...], dtype: str, *, lossy: bool = False) -> Operation:
    """The operation that undoes ``operation`` on a tensor that had ``shape`` and ``dtype`` before it.

    Raises:
        OperationError: it has no exact inverse (a split part alone, a slice that drops values, a cast back that
            rounds unless ``lossy``).

    Example:
        >>> inverse_operation(Transpose((2, 0, 1)), (2, 3, 4), "float32")
        Transpose(perm=(1, 2, 0), kind='transpose')
        >>> inverse_operation(Slice((0,)), (1, 17, 8), "float32")
        Reshape(shape=(1, 17, 8), kind='reshape')
    """
    if isinstance(operation, Transpose):
        return Transpose(tuple(sorted(range(len(operation.perm)), key=operation.perm.__getitem__)))
    if isinstance(operation, Reshape):
        return Reshape(shape)
    if isinstance(operation, Cast):
        if not lossy and not exact_cast(operation.dtype, dtype):
            raise OperationError(
                f"the import casts {dtype} to {operation.dtype}; casting back to {dtype} rounds any value the model "
                f'changed (a lossy cast on the way back); allow it with [export] lossy_casts = "allow" '
                "(--allow-lossy-casts), or build the model in the checkpoint's dtype",
                operation="cast",
            )
        return Cast(dtype)
    if isinstance(operation, Slice):
        return _slice_inverse(operation, shape)
    if isinstance(operation, Rearrange):
        return _rearrange_inverse(operation, shape)
    raise OperationError(f"{operation.describe()} alone cannot be undone", operation=operation.kind)


def rounds(operations: Sequence[Operation], dtype: str) -> bool:
    """Whether undoing ``operations`` (run on a tensor of ``dtype``) casts back to a dtype that cannot hold every value.

    Example:
        >>> rounds([Cast("float32")], "bfloat16"), rounds([Cast("bfloat16")], "float32")
        (True, False)
    """
    for operation in operations:
        if isinstance(operation, Cast) and not exact_cast(operation.dtype, dtype):
            return True
        dtype = operation.infer((), dtype)[1] if isinstance(operation, Cast) else dtype
    return False


def inverse_operations(
    operations: Sequence[Operation], shape: tuple[int, ...], dtype: str, *, lossy: bool = False
) -> tuple[Operation, ...]:
    """The operations that undo ``operations`` (run on a tensor of ``shape`` and ``dtype``), in reverse order.

    Example:
        >>> inverse_operations([Transpose((1, 0)), Reshape((3, 2, 2))], (4, 3), "float32")
        (Reshape(shape=(3, 4), kind='reshape'), Transpose(perm=(1, 0), kind='transpose'))
    """
    undone: list[Operation] = []
    for operation in operations:
        undone.append(inverse_operation(operation, shape, dtype, lossy=lossy))
        shape, dtype = operation.infer(shape, dtype)
    return tuple(reversed(undone))


__all__ = ["RESTORE_HINT", "exact_cast", "inverse_operation", "inverse_operations", "rounds"]
