"""A tensor's bytes handed to a file as they are: a flat byte view of the array, written with positional writes."""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np

from mapper.outputs.base import as_numpy


def raw_bytes(value: Any, *, order: Literal["<", "="] = "<") -> memoryview:
    """The tensor's bytes as a flat byte view, C order, in byte ``order`` (``"<"`` little-endian, ``"="`` native).

    No copy is made when the value already is C-contiguous in that order (an array, or a ``tf.Tensor`` on the CPU).

    Example:
        >>> array = np.arange(3, dtype="<i2")
        >>> view = raw_bytes(array)
        >>> bytes(view), np.shares_memory(np.frombuffer(view, np.uint8), array)
        (b'\\x00\\x00\\x01\\x00\\x02\\x00', True)
    """
    array = np.ascontiguousarray(as_numpy(value))
    wanted = array.dtype.newbyteorder(order)
    if array.dtype.itemsize > 1 and array.dtype.byteorder != "|" and array.dtype != wanted:
        array = array.astype(wanted)
    flat: Any = array.reshape(-1).view(np.uint8)
    return memoryview(flat)


def write_at(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` to the file ``fd`` at ``offset`` (``os.pwrite`` again for what a short write left).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryFile() as file:
        ...     write_at(file.fileno(), memoryview(b"abc"), 2)
        ...     _ = file.seek(0)
        ...     file.read()
        b'\\x00\\x00abc'
    """
    view = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    while len(view):
        done = os.pwrite(fd, view, offset)
        if done <= 0:  # pragma: no cover - pwrite raises (ENOSPC, EFBIG) rather than writing nothing
            raise OSError(f"writing at byte {offset} wrote nothing")
        view = view[done:]
        offset += done


__all__ = ["raw_bytes", "write_at"]
