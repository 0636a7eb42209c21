"""Banded reads: a reordered tensor (a transpose, rearrange or reshape) moved into place band by band as it is read."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mapper.dtypes import numpy_dtype
from mapper.errors import SourceError
from mapper.sources._common import VERIFY_CHUNK
from mapper.sources.base import ChunkedSource

# Bytes per read from a source: the one chunk size every read uses (see ``VERIFY_CHUNK``).
CHUNK_BYTES = VERIFY_CHUNK
# The L1 data cache as x86-64 cores have it: 64-byte lines, 64 sets of 8 ways (see band_bytes).
_LINE, _L1_SETS, _L1_WAYS = 64, 64, 8
# A reordered tensor is read in bands of whole rows of its slowest axis; one larger than this is staged instead.
MAX_BAND_BYTES = 4 * 2**20
# (shape, byte strides, dtype) of a reordering: see ``mapper.run.values.reordering``.
Layout = tuple[tuple[int, ...], tuple[int, ...], np.dtype[Any]]


def in_c_order(layout: Layout) -> bool:
    """Whether a reordering moves nothing: its strides are those of a C-contiguous array of its shape.

    Example:
        >>> f4 = np.dtype("float32")
        >>> in_c_order(((4, 3), (12, 4), f4)), in_c_order(((4, 3), (4, 16), f4))
        (True, False)
    """
    shape, strides, dtype = layout
    return all(stride == dtype.itemsize * math.prod(shape[at + 1 :]) for at, stride in enumerate(strides))


def band_bytes(layout: Layout) -> int:
    """The bytes of one band a reordering is read in: whole steps along its slowest axis, about ``CHUNK_BYTES``.

    The copy of a band reads, for each element it writes, one element from each of the band's rows: with rows
    a multiple of 4 KiB apart those reads all fall in one set of the L1 cache (8 ways), so a band of more rows
    than that evicts itself at every element. Measured here, a [768, 3072] float32 transpose took 14-16 ms in
    bands of 10 rows, 5.4-6.9 ms in bands of 8.

    Example:
        >>> band_bytes(((3072, 768), (4, 12288), np.dtype("float32")))  # 8 rows of 12 KiB
        98304
    """
    slowest = max(layout[1])
    rows = max(1, CHUNK_BYTES // slowest)
    if slowest % _LINE == 0:
        lines = slowest // _LINE
        sets = _L1_SETS // math.gcd(lines % _L1_SETS or _L1_SETS, _L1_SETS)  # L1 sets the band's rows fall in
        rows = max(1, min(rows, _L1_WAYS * sets))
    return slowest * rows


def reorder_into(
    source: ChunkedSource, name: str, source_dtype: str, layout: Layout, *, out: np.ndarray, band: np.ndarray
) -> None:
    """Read tensor ``name`` band by band through ``band`` and move each band into its place in ``out``.

    ``out`` has the layout's shape and dtype (C-contiguous); ``band`` holds at least ``band_bytes(layout)`` bytes.
    Each band is copied into place (cast if the layout says so) while it is still in the CPU's cache, so the
    tensor is never staged whole: measured here, the fastest way NumPy has to transpose. If the read fails
    midway, ``out`` holds part of the value.

    Raises:
        SourceError: the source gave fewer or more rows than the tensor has (or the source's own error).

    Example:
        >>> import tempfile
        >>> from safetensors.numpy import save_file
        >>> from mapper.sources.safetensors import SafetensorsSource
        >>> layout = ((3, 2), (4, 12), np.dtype("float32"))  # a [2, 3] tensor transposed
        >>> out = np.empty((3, 2), "float32")
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_file({"w": np.arange(6, dtype="float32").reshape(2, 3)}, f"{tmp}/x.safetensors")
        ...     source = SafetensorsSource(f"{tmp}/x.safetensors")
        ...     reorder_into(source, "w", "float32", layout, out=out, band=np.empty(band_bytes(layout), np.uint8))
        >>> out.tolist()
        [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    """
    shape, strides, _ = layout
    kind = numpy_dtype(source_dtype)
    axis = strides.index(max(strides))
    index: list[slice] = [slice(None)] * len(shape)
    start = 0
    for chunk in source.read_chunks(name, band[: band_bytes(layout)].data):
        rows = chunk.nbytes // strides[axis]
        if start + rows > shape[axis] or rows * strides[axis] != chunk.nbytes:
            start = -1
            break
        band_shape = list(shape)
        band_shape[axis] = rows
        part = np.ndarray(band_shape, kind, buffer=chunk, strides=strides)  # as_strided costs 30 us a call
        index[axis] = slice(start, start + rows)
        np.copyto(out[tuple(index)], part, casting="unsafe")
        start += rows
    if start != shape[axis]:
        where = str(getattr(source, "description", source))
        given = "more bytes than" if start < 0 else f"{start} of"
        raise SourceError(
            f"reading {name!r} from {where} gave {given} its {shape[axis]} rows; the source is damaged or changed "
            "while it was read",
            path=where,
        )


__all__ = ["CHUNK_BYTES", "MAX_BAND_BYTES", "Layout", "band_bytes", "in_c_order", "reorder_into"]
