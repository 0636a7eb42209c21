"""What a rule makes of its source tensors for one target: the join, the split part, then its operations."""

from __future__ import annotations

from collections.abc import Sequence

from mapper.errors import OperationError
from mapper.ops import Combine, Operation, infer_all
from mapper.rules import OperationSpec, resolve_operations
from mapper.specs import TensorSpec


def transformed(
    ops: Sequence[OperationSpec],
    members: Sequence[TensorSpec],
    prefix: tuple[Operation, ...],
    combine: Combine | None,
    target: TensorSpec | None,
) -> tuple[tuple[Operation, ...], tuple[int, ...], str]:
    """The operations (``prefix``, a split part, first) and the shape and dtype they give ``members``.

    ``members`` is one tensor, or the members of a concat/stack group in order; ``target`` is None for a
    conversion without a model.

    Raises:
        OperationError: the join or an operation does not fit (NeedsTargetError: an operation needs a target).

    Example:
        >>> from mapper.ops import Concat
        >>> from mapper.rules import TransposeSpec
        >>> members = [TensorSpec("q", (2, 4), "float32"), TensorSpec("k", (1, 4), "float32")]
        >>> transformed([TransposeSpec(transpose=(1, 0))], members, (), Concat(0), None)
        ((Transpose(perm=(1, 0), kind='transpose'),), (4, 3), 'float32')
    """
    first = members[0]
    shape, dtype = first.shape, first.dtype
    if combine is not None:
        shape, dtype = combine.infer([member.shape for member in members], dtype)
    shape, dtype = infer_all(prefix, shape, dtype)
    resolved, shape, dtype = resolve_operations(ops, shape, dtype, target)
    return (*prefix, *resolved), shape, dtype


def check_member_dtypes(combine: Combine, members: Sequence[TensorSpec]) -> None:
    """Raise OperationError unless the members of a group share one dtype.

    Example:
        >>> from mapper.ops import Stack
        >>> check_member_dtypes(Stack(0), [TensorSpec("a", (2,), "int8"), TensorSpec("b", (2,), "float32")])
        Traceback (most recent call last):
        ...
        mapper.errors.OperationError: cannot stack members of different dtypes ('a' int8, 'b' float32): the members of a group must share one dtype
    """
    if len({member.dtype for member in members}) > 1:
        raise OperationError(
            f"cannot {combine.kind} members of different dtypes "
            f"({', '.join(f'{member.name!r} {member.dtype}' for member in members)}): the members "
            "of a group must share one dtype",
            operation=combine.kind,
        )


__all__ = ["check_member_dtypes", "transformed"]
