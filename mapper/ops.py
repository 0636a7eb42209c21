"""Tensor operations of a plan: resolved at plan time from shapes alone, applied at run time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mapper.errors import OperationError
from mapper.specs import DTYPE_SIZES, format_shape

if TYPE_CHECKING:
    import numpy as np

_FLOATS = frozenset({"float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2"})
_INTS = frozenset({"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"})
_COMPLEX = frozenset({"complex64", "complex128"})
KNOWN_DTYPES = frozenset(DTYPE_SIZES)


def castable(source_dtype: str, target_dtype: str) -> bool:
    """Whether a cast keeps the value's kind: bool to numbers, ints to ints or floats, floats to floats.

    Float to int, anything to bool, complex to real and strings are refused: they lose meaning,
    not just precision.

    Example:
        >>> castable("float32", "bfloat16"), castable("int64", "float32"), castable("float32", "int32")
        (True, True, False)
    """
    if source_dtype == target_dtype:
        return True
    if source_dtype == "bool":
        return target_dtype in _INTS | _FLOATS
    if source_dtype in _INTS:
        return target_dtype in _INTS | _FLOATS | _COMPLEX
    if source_dtype in _FLOATS:
        return target_dtype in _FLOATS | _COMPLEX
    if source_dtype in _COMPLEX:
        return target_dtype in _COMPLEX
    return False


@dataclass(frozen=True, slots=True)
class Transpose:
    """Permute axes: output axis ``i`` is input axis ``perm[i]``.

    Example:
        >>> Transpose((1, 0)).infer((768, 3072), "float32")
        ((3072, 768), 'float32')
    """

    perm: tuple[int, ...]
    kind: Literal["transpose"] = "transpose"

    def infer(self, shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], str]:
        """Shape and dtype after the operation; raises OperationError if it does not fit."""
        if sorted(self.perm) != list(range(len(shape))):
            raise OperationError(
                f"transpose {list(self.perm)} is not a permutation of the {len(shape)} axes of a "
                f"tensor of shape {format_shape(shape)}; use a permutation of {list(range(len(shape)))}",
                operation="transpose",
            )
        return tuple(shape[axis] for axis in self.perm), dtype

    def describe(self) -> str:
        """Short human form, as reports show it."""
        return f"transpose{list(self.perm)}"


@dataclass(frozen=True, slots=True)
class Reshape:
    """Reshape to a concrete shape with the same number of elements.

    Example:
        >>> Reshape((768, 12, 64)).infer((768, 768), "float32")
        ((768, 12, 64), 'float32')
    """

    shape: tuple[int, ...]
    kind: Literal["reshape"] = "reshape"

    def infer(self, shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], str]:
        """Shape and dtype after the operation; raises OperationError if it does not fit."""
        if math.prod(shape) != math.prod(self.shape):
            raise OperationError(
                f"cannot reshape {format_shape(shape)} ({math.prod(shape)} elements) into "
                f"{format_shape(self.shape)} ({math.prod(self.shape)} elements)",
                operation="reshape",
            )
        return self.shape, dtype

    def describe(self) -> str:
        """Short human form, as reports show it."""
        return f"reshape{format_shape(self.shape)}"


@dataclass(frozen=True, slots=True)
class Cast:
    """Change the dtype; only casts that keep the value's kind are allowed (see ``castable``).

    Example:
        >>> Cast("bfloat16").infer((4,), "float32")
        ((4,), 'bfloat16')
    """

    dtype: str
    kind: Literal["cast"] = "cast"

    def infer(self, shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], str]:
        """Shape and dtype after the operation; raises OperationError if it does not fit."""
        if not castable(dtype, self.dtype):
            raise OperationError(
                f"cannot cast {dtype} to {self.dtype}: the value would change kind, not just precision",
                operation="cast",
            )
        return shape, self.dtype

    def describe(self) -> str:
        """Short human form, as reports show it."""
        return f"cast[{self.dtype}]"


Operation = Transpose | Reshape | Cast


def resolve_reshape(requested: Sequence[int], shape: tuple[int, ...]) -> Reshape:
    """Turn a requested shape with at most one ``-1`` into a concrete Reshape for ``shape``.

    Example:
        >>> resolve_reshape([768, -1, 64], (768, 768))
        Reshape(shape=(768, 12, 64), kind='reshape')
    """
    unknown = [index for index, dim in enumerate(requested) if dim == -1]
    if len(unknown) > 1 or any(dim < -1 or (dim == 0 and math.prod(shape) != 0) for dim in requested):
        raise OperationError(
            f"reshape {list(requested)}: dimensions must be positive, with at most one -1",
            operation="reshape",
        )
    if not unknown:
        return Reshape(tuple(requested))
    known = math.prod(dim for dim in requested if dim != -1)
    total = math.prod(shape)
    if known == 0 or total % known:
        raise OperationError(
            f"cannot reshape {format_shape(shape)} ({total} elements) into {list(requested)}: "
            f"{total} is not a multiple of {known}",
            operation="reshape",
        )
    return Reshape(tuple(total // known if dim == -1 else dim for dim in requested))


def infer_all(operations: Sequence[Operation], shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], str]:
    """Shape and dtype after applying ``operations`` in order.

    Example:
        >>> infer_all([Transpose((1, 0)), Reshape((2, 3, 2))], (6, 2), "float32")
        ((2, 3, 2), 'float32')
    """
    for operation in operations:
        shape, dtype = operation.infer(shape, dtype)
    return shape, dtype


def apply_numpy(operations: Sequence[Operation], array: np.ndarray) -> np.ndarray:
    """Apply ``operations`` to a NumPy array (bfloat16 and float8 through ml_dtypes).

    Example:
        >>> import numpy as np
        >>> apply_numpy([Transpose((1, 0))], np.arange(6).reshape(2, 3)).shape
        (3, 2)
    """
    import numpy as np

    for operation in operations:
        if isinstance(operation, Transpose):
            array = np.transpose(array, operation.perm)
        elif isinstance(operation, Reshape):
            array = np.reshape(array, operation.shape)
        else:
            array = array.astype(numpy_dtype(operation.dtype))
    return array


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The NumPy dtype for a dtype name, taking bfloat16 and float8 from ml_dtypes.

    Example:
        >>> str(numpy_dtype("bfloat16"))
        'bfloat16'
    """
    import numpy as np

    if name in {"bfloat16", "float8_e4m3fn", "float8_e5m2"}:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))  # type: ignore[no-any-return]
    return np.dtype(name)
