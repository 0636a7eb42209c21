"""A tensor's bytes handed to a file as they are: a flat byte view, positional writes, on a background thread."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

from mapper.errors import OutputError
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
        done = os.pwrite(fd, view[:WRITE_CHUNK], offset)
        if done <= 0:  # pragma: no cover - pwrite raises (ENOSPC, EFBIG) rather than writing nothing
            raise OSError(f"writing at byte {offset} wrote nothing")
        view = view[done:]
        offset += done


def open_descriptor(fd: int | None, path: str) -> int:
    """``fd``, the writer's open temporary file; OutputError if the writer was already committed or aborted.

    Example:
        >>> open_descriptor(3, "out.safetensors")
        3
        >>> open_descriptor(None, "out.safetensors")
        Traceback (most recent call last):
        mapper.errors.OutputError: cannot write out.safetensors: its writer was already committed or aborted; open a new writer
    """
    if fd is None:
        raise OutputError(
            f"cannot write {path}: its writer was already committed or aborted; open a new writer", path=path
        )
    return fd


class Background:
    """Writes done on one background thread, in order, while the caller reads and transforms the next batch.

    ``submit`` queues a call; ``end_batch`` waits for the calls of the batch before the one just ended, so that
    at most one batch is being written while the next is read (memory stays near two batches); ``wait`` waits
    for all of them. The first failure of a queued call is raised, in the caller's thread, by the next
    ``submit``, ``end_batch`` or ``wait``; ``close`` drops what was not started and waits for what was.

    Example:
        >>> done = []
        >>> background = Background()
        >>> background.submit(done.append, 1)
        >>> background.wait()
        >>> background.close()
        >>> done
        [1]
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[Any]] = []
        self._batch_start = 0  # where the batch now being submitted starts in _pending
        # The first queued call that failed, noted by the call's own done-callback: checking it costs nothing,
        # where asking every pending future would make a batch of n writes cost n squared (5,000 tensors: 47 s).
        self._failed: Future[Any] | None = None

    def submit(self, call: Callable[..., Any], *args: Any) -> None:
        """Queue ``call(*args)``; first raise the failure of an earlier call, if one failed."""
        self._raise_failed()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mapper-writer")
        future = self._pool.submit(call, *args)
        future.add_done_callback(self._note)
        self._pending.append(future)

    def _note(self, future: Future[Any]) -> None:
        if self._failed is None and not future.cancelled() and future.exception() is not None:
            self._failed = future

    def end_batch(self) -> None:
        """Wait for the calls queued before the previous ``end_batch``; the last batch's go on in the background."""
        earlier, self._pending = self._pending[: self._batch_start], self._pending[self._batch_start :]
        for future in earlier:
            future.result()
        self._batch_start = len(self._pending)
        self._raise_failed()

    def wait(self) -> None:
        """Wait for every queued call; raise the first failure."""
        pending, self._pending, self._batch_start = self._pending, [], 0
        for future in pending:
            future.result()

    def close(self) -> None:
        """Cancel the calls not started, wait for the running one, and stop the thread. Safe to call twice."""
        for future in self._pending:
            future.cancel()
        self._pending, self._batch_start = [], 0
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _raise_failed(self) -> None:
        if self._failed is not None:
            self._failed.result()


# Bytes per pwrite: a signal (SIGTERM, Ctrl-C) waits for at most one such write to finish.
WRITE_CHUNK = 16 * 2**20


__all__ = ["WRITE_CHUNK", "Background", "open_descriptor", "raw_bytes", "write_at"]
