"""Restoring what an import's slice drops: the block of a source tensor the model gives, the rest from ``--like``.

A rule whose slice keeps one block of each leading axis (RoBERTa's position table: ``slice = "2:"``) cannot be
undone from the model alone: the dropped rows are nowhere in it. When ``[[export.restore]]`` declares the source
tensor, the export undoes the other operations to get the block, and writes it in place in the ``--like``
checkpoint's tensor of that name. A tensor the import skips, when declared, is copied whole from ``--like``
(``Restored.whole``). Pure: no tensor is read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mapper.errors import OperationError
from mapper.ops import Cast, Operation, Reshape, Slice
from mapper.plan.undo import inverse_operations
from mapper.specs import format_shape


@dataclass(frozen=True, slots=True)
class Restored:
    """Where the model's values go in a source tensor; everything else comes from ``--like``'s tensor ``like_name``.

    ``region`` holds ``(start, stop)`` along each leading axis; the axes after them are whole. A region of None
    means the model gives nothing: the import skips the tensor, and the export copies it whole from ``--like``.

    Example:
        >>> restored = Restored("pos", ((2, 26),), "padding rows")
        >>> restored.part_shape((26, 16)), restored.describe()
        ((24, 16), "rows 2:26 of axis 0 from the model, the rest from --like's 'pos'")
        >>> Restored("types", None, "skipped").describe()
        "the whole tensor from --like's 'types' (the import skips it)"
    """

    like_name: str
    region: tuple[tuple[int, int], ...] | None
    reason: str

    @property
    def whole(self) -> bool:
        """Whether all of the tensor comes from ``--like`` (the import skips it)."""
        return self.region is None

    def part_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the block the model gives, in a source tensor of ``shape`` (``(0,)`` when it gives none)."""
        return (0,) if self.region is None else _block_shape(self.region, shape)

    def index(self) -> tuple[slice, ...]:
        """The index of the block, for ``array[...]`` (an empty block when the model gives none)."""
        return (slice(0, 0),) if self.region is None else tuple(slice(start, stop) for start, stop in self.region)

    def describe(self) -> str:
        """The block in words, for reports and errors."""
        if self.region is None:
            return f"the whole tensor from --like's {self.like_name!r} (the import skips it)"
        axes = [f"{start}:{stop} of axis {axis}" for axis, (start, stop) in enumerate(self.region)]
        return f"rows {', '.join(axes)} from the model, the rest from --like's {self.like_name!r}"


def _block_shape(region: tuple[tuple[int, int], ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(stop - start for start, stop in region) + shape[len(region) :]


def slice_region(operation: Slice, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...] | None:
    """The ``(start, stop)`` a slice keeps along each axis it indexes, or None if it is not one block (a step).

    An int keeps one entry (and drops its axis): its block is ``(i, i + 1)``.

    Example:
        >>> slice_region(Slice.parse("2:"), (26, 16)), slice_region(Slice.parse("1:-1, 3"), (6, 5, 2))
        (((2, 26),), ((1, 5), (3, 4)))
        >>> slice_region(Slice.parse("::2"), (6,)) is None
        True
    """
    region: list[tuple[int, int]] = []
    for item, size in zip(operation.items, shape, strict=False):
        if isinstance(item, int):
            start = item % size
            region.append((start, start + 1))
            continue
        if item[2] not in (None, 1):
            return None
        start, stop, _ = slice(*item).indices(size)
        region.append((start, max(start, stop)))
    return tuple(region)


def restore_operations(
    operations: Sequence[Operation], shape: tuple[int, ...], dtype: str, *, lossy: bool = False
) -> tuple[tuple[Operation, ...], tuple[tuple[int, int], ...]]:
    """Undo ``operations`` (run on a tensor of ``shape`` and ``dtype``) up to the block a dropping slice keeps.

    Returns:
        The operations that give the block (in the source's dtype) from their result, and the block's region.

    Raises:
        OperationError: no slice comes first (after casts), the slice is not one block per axis (a step), or
            another operation cannot be undone.

    Example:
        >>> restore_operations([Cast("float32"), Slice.parse("2:")], (26, 16), "bfloat16", lossy=True)
        ((Cast(dtype='bfloat16', kind='cast'),), ((2, 26),))
        >>> restore_operations([Slice.parse("0")], (3, 4), "float32")
        ((Reshape(shape=(1, 4), kind='reshape'),), ((0, 1),))
    """
    position = next((i for i, operation in enumerate(operations) if not isinstance(operation, Cast)), None)
    cut = operations[position] if position is not None else None
    if position is None or not isinstance(cut, Slice):
        what = cut.describe() if cut is not None else "nothing"
        raise OperationError(
            f"[[export.restore]] restores the values a slice drops when the slice is the rule's first operation "
            f"(after casts), but {what} comes first; slice first, or do not declare the tensor",
            operation="slice",
        )
    before = operations[:position]
    sliced_shape, sliced_dtype = shape, dtype
    for operation in before:
        sliced_shape, sliced_dtype = operation.infer(sliced_shape, sliced_dtype)
    region = slice_region(cut, sliced_shape)
    if region is None:
        raise OperationError(
            f"{cut.describe()} on shape {format_shape(sliced_shape)} does not keep one block of each axis (it "
            "steps), so [[export.restore]] cannot put the model's values back in place",
            operation="slice",
        )
    after_shape, after_dtype = cut.infer(sliced_shape, sliced_dtype)
    part = _block_shape(region, sliced_shape)
    undone = inverse_operations(operations[position + 1 :], after_shape, after_dtype, lossy=lossy)
    back = (Reshape(part),) if part != after_shape else ()
    return (*undone, *back, *inverse_operations(before, shape, dtype, lossy=lossy)), region


__all__ = ["Restored", "restore_operations", "slice_region"]
