"""The dtype names weight-mapper knows: sizes, kinds, which casts keep meaning, and their NumPy dtypes."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

# Bytes per element of the dtypes we meet in checkpoints; strings and resources have no fixed size.
DTYPE_SIZES: Mapping[str, int] = {
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "uint64": 8,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "complex64": 8,
    "complex128": 16,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}
KNOWN_DTYPES = frozenset(DTYPE_SIZES)
FLOATS = frozenset({"float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2"})
INTS = frozenset({"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"})
COMPLEX = frozenset({"complex64", "complex128"})
# Dtypes NumPy itself lacks; ml_dtypes provides them.
ML_DTYPES = frozenset({"bfloat16", "float8_e4m3fn", "float8_e5m2"})


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
        return target_dtype in INTS | FLOATS
    if source_dtype in INTS:
        return target_dtype in INTS | FLOATS | COMPLEX
    if source_dtype in FLOATS:
        return target_dtype in FLOATS | COMPLEX
    if source_dtype in COMPLEX:
        return target_dtype in COMPLEX
    return False


_NAMES: dict[np.dtype[Any], str] = {}


def dtype_name(dtype: np.dtype[Any]) -> str:
    """A NumPy dtype's name as plans write it, cached: ``str(dtype)`` costs about 3 us, per tensor read.

    Example:
        >>> dtype_name(np.dtype("float32")), dtype_name(numpy_dtype("bfloat16"))
        ('float32', 'bfloat16')
    """
    name = _NAMES.get(dtype)
    if name is None:
        name = _NAMES[dtype] = str(dtype)
    return name


@functools.lru_cache(maxsize=64)
def numpy_dtype(name: str) -> np.dtype[Any]:
    """The NumPy dtype for a dtype name, taking bfloat16 and float8 from ml_dtypes.

    Example:
        >>> str(numpy_dtype("bfloat16")), str(numpy_dtype("int64"))
        ('bfloat16', 'int64')
    """
    if name in ML_DTYPES:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))  # type: ignore[no-any-return]
    return np.dtype(name)


__all__ = [
    "COMPLEX",
    "DTYPE_SIZES",
    "FLOATS",
    "INTS",
    "KNOWN_DTYPES",
    "ML_DTYPES",
    "castable",
    "dtype_name",
    "numpy_dtype",
]
