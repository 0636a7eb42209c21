"""Copying a plan's batches into a writer through reused buffers: untransformed bytes straight through, the rest staged."""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mapper.dtypes import numpy_dtype
from mapper.errors import SourceError
from mapper.outputs.base import TensorWriter
from mapper.outputs.raw import host_order
from mapper.plan import Assignment
from mapper.run.bands import CHUNK_BYTES, MAX_BAND_BYTES, Layout, band_bytes, in_c_order, reorder_into
from mapper.run.batches import Batch, ValueStream, array_value
from mapper.run.values import fused_array, mapped_empty, reordering
from mapper.sources.base import ChunkedSource, Source
from mapper.text import quoted

_PAGE = mmap.PAGESIZE


class BufferPool:
    """Byte buffers handed out and given back, reused best-fit: tensor-sized memory is touched fresh only once.

    Buffers are anonymous memory maps (page-aligned, in 4 KiB pages: NumPy's large ``np.empty`` asks for huge
    pages, whose first touch this machine makes slow). ``take(nbytes)`` returns the smallest free buffer that
    holds ``nbytes`` (a view of that many bytes), or a new one; ``give`` returns it.

    Example:
        >>> pool = BufferPool()
        >>> first = pool.take(10_000)
        >>> pool.give(first)
        >>> second = pool.take(5_000)
        >>> second.nbytes, np.shares_memory(first, second), second.ctypes.data % 64
        (5000, True, 0)
    """

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []  # whole buffers, by capacity
        self._lent: dict[int, np.ndarray] = {}  # id of a view handed out: its whole buffer

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 array of ``nbytes`` bytes, page-aligned, that nothing else uses until it is given back."""
        fits = [at for at, buffer in enumerate(self._free) if buffer.nbytes >= nbytes]
        if fits:
            whole = self._free.pop(min(fits, key=lambda at: self._free[at].nbytes))
        else:
            whole = mapped_empty((max(_PAGE, -(-nbytes // _PAGE) * _PAGE),), np.uint8)
        view = whole[:nbytes]
        self._lent[id(view)] = whole
        return view

    def give(self, view: np.ndarray) -> None:
        """Give back a buffer from ``take``; it may be handed out again."""
        self._free.append(self._lent.pop(id(view)))


class Transfer:
    """One conversion's copying, batch by batch, from the plan's sources into a writer, through reused buffers.

    An assignment without a join or operations whose source reads in chunks (``ChunkedSource``) in the writer's
    byte order is copied chunk by chunk through one small buffer (``writer.write_chunks``): its bytes pass
    through the CPU's cache and never exist whole in memory. One with operations has its members read through
    that buffer into reused staging buffers, and its value made there (``fused_array``, into a reused buffer too),
    then written. Everything else (sources without chunked reads, writers that take whole arrays, strings) is
    read with ``Source.read`` and written as ``ValueStream`` hands it out. ``step`` says what is being done,
    for error messages.

    Example:
        >>> import tempfile
        >>> from safetensors.numpy import save_file
        >>> from mapper.rules import parse_rules
        >>> from mapper.plan.conversion import plan_conversion
        >>> from mapper.outputs.writers import open_writer
        >>> from mapper.sources.safetensors import SafetensorsSource
        >>> from mapper.specs import TensorSpec
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "w"\\ntarget = "t"\\nops = [{ transpose = [1, 0] }]')
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_file({"w": np.arange(6, dtype="float32").reshape(2, 3)}, f"{tmp}/in.safetensors")
        ...     source = SafetensorsSource(f"{tmp}/in.safetensors")
        ...     stream = ValueStream(plan_conversion(rules, source), source)
        ...     with open_writer(f"{tmp}/out.safetensors", [TensorSpec("t", (3, 2), "float32")]) as writer:
        ...         transfer = Transfer(stream, writer)
        ...         transfer.write_batch(1, stream.batches[0])
        ...     SafetensorsSource(f"{tmp}/out.safetensors").read(["t"])["t"].tolist()
        [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    """

    def __init__(self, stream: ValueStream, writer: TensorWriter) -> None:
        self.stream = stream
        self.writer = writer
        self.step = "starting"
        self._pool = BufferPool()
        self._chunk = self._pool.take(CHUNK_BYTES).data

    def write_batch(self, number: int, batch: Batch) -> None:
        """Read, transform and write every assignment of ``batch`` (number ``number`` of the stream's batches)."""
        source = self.stream.sources[batch.source_id]
        count = len(self.stream.batches)
        where = f"batch {number} of {count} ({quoted(batch.names)}) from {source.description}"
        rest: list[Assignment] = []
        staged = _Staged(self._pool, batch.assignments)
        for assignment in batch.assignments:
            how, layout = self._how(assignment, source)
            if how == "stream" and isinstance(source, ChunkedSource):
                self.step = f"reading {where}, writing {assignment.target_key!r}"
                self.writer.write_chunks(assignment.target_key, source.read_chunks(assignment.source, self._chunk))
            elif how == "reorder" and layout is not None and isinstance(source, ChunkedSource):
                self.step = (
                    f"reading {where}, transforming {assignment.source!r} for {assignment.target!r} ({assignment.rule})"
                )
                self._write_reordered(assignment, source, layout)
            elif how == "stage" and isinstance(source, ChunkedSource):
                self.step = f"reading {where}"
                members = [
                    staged.read(source, name, assignment, self._chunk, source.description)
                    for name in assignment.source_names
                ]
                self.step = (
                    f"transforming {assignment.source!r} for {assignment.target!r} ({assignment.rule}) in {where}"
                )
                self._write_transformed(assignment, members)
                staged.done(assignment)
            else:
                rest.append(assignment)
        if rest:
            self._write_arrays(rest, source, where)

    def _how(self, assignment: Assignment, source: Source) -> tuple[str, Layout | None]:
        """How the assignment's value gets to the writer: ``"stream"``, ``"reorder"``, ``"stage"`` or ``"read"``."""
        order = self.writer.byte_order
        if order is None or not isinstance(source, ChunkedSource):
            return "read", None
        orders = {source.raw_order(name) for name in assignment.source_names}
        if None in orders:
            return "read", None
        kind = numpy_dtype(assignment.source_dtype)
        layout = reordering(assignment) if assignment.operations else None
        unchanged = assignment.combine is None and not assignment.operations
        if layout is not None and layout[2] == kind and in_c_order(layout):
            unchanged, layout = True, None  # reshapes only: the bytes stay as they are
        if unchanged:
            return ("stream" if orders == {order} or kind.itemsize == 1 else "read"), None
        if orders != {host_order("=")} and kind.itemsize > 1:  # NumPy transforms in this machine's byte order
            return "read", None
        if layout is not None and band_bytes(layout) <= MAX_BAND_BYTES:
            return "reorder", layout
        return "stage", None

    def _write_reordered(self, assignment: Assignment, source: ChunkedSource, layout: Layout) -> None:
        """Move a member's elements into place band by band as its bytes are read, write the value whole.

        The member is read in bands of whole steps along its slowest axis (about ``CHUNK_BYTES`` each), and each
        band is copied into its place in the value (a reused buffer) while it is still in the CPU's cache: the
        member is never staged whole. Measured here, this is the fastest way NumPy has to transpose.
        """
        shape, _, dtype = layout
        band = self._pool.take(band_bytes(layout))
        value = self._pool.take(math.prod(shape) * dtype.itemsize)
        try:
            out = value.view(dtype).reshape(shape)
            reorder_into(source, assignment.source, assignment.source_dtype, layout, out=out, band=band)
            self.writer.write(assignment.target_key, out.reshape(assignment.target_shape))
        finally:
            self._pool.give(value)
            self._pool.give(band)

    def _write_transformed(self, assignment: Assignment, members: list[np.ndarray]) -> None:
        """Make the assignment's value from staged members into reused buffers, write it, give the buffers back."""
        taken: list[np.ndarray] = []

        def allocate(shape: Sequence[int], dtype: Any) -> np.ndarray:
            kind = np.dtype(dtype)
            buffer = self._pool.take(math.prod(shape) * kind.itemsize)
            taken.append(buffer)
            array: np.ndarray = buffer.view(kind).reshape(tuple(shape))
            return array

        try:
            value, _ = fused_array(members, assignment, allocate=allocate)
            self.step = self.step.replace("transforming", "writing", 1)
            self.writer.write(assignment.target_key, value)
        finally:
            for buffer in taken:
                self._pool.give(buffer)

    def _write_arrays(self, assignments: list[Assignment], source: Source, where: str) -> None:
        """Read the assignments' tensors with ``Source.read``, transform them as ``ValueStream`` does, write them."""
        names = list(dict.fromkeys(name for assignment in assignments for name in assignment.source_names))
        self.step = f"reading {where}"
        values = source.read(names)
        for assignment in assignments:
            self.step = f"transforming {assignment.source!r} for {assignment.target!r} ({assignment.rule}) in {where}"
            value = array_value(assignment, values, source.description)
            self.step = f"writing {assignment.target_key!r} ({where})"
            self.writer.write(assignment.target_key, value)


def _description(source: Any) -> str:
    """The source's description, for messages."""
    return str(getattr(source, "description", source))


class _Staged:
    """A batch's source tensors read whole into pool buffers, each once, kept while an assignment still needs it."""

    def __init__(self, pool: BufferPool, assignments: Sequence[Assignment]) -> None:
        self._pool = pool
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name: (its buffer, the array over it)
        self._uses: dict[str, int] = {}
        for assignment in assignments:
            for name in dict.fromkeys(assignment.source_names):
                self._uses[name] = self._uses.get(name, 0) + 1

    def read(
        self, source: ChunkedSource, name: str, assignment: Assignment, chunk: memoryview, description: str
    ) -> np.ndarray:
        """The tensor ``name`` as the plan reads it, read through ``chunk`` into a pool buffer (once per batch)."""
        if name in self._arrays:
            return self._arrays[name][1]
        shape = assignment.source_shapes[assignment.source_names.index(name)]
        kind = numpy_dtype(assignment.source_dtype)
        nbytes = math.prod(shape) * kind.itemsize
        buffer = self._pool.take(nbytes)
        try:
            done = _fill(buffer, source.read_chunks(name, chunk))
        except BaseException:
            self._pool.give(buffer)
            raise
        if done != nbytes:
            self._pool.give(buffer)
            raise SourceError(
                f"reading {name!r} from {description} gave {done} bytes, not the {nbytes} of the "
                f"{list(shape)} {assignment.source_dtype} its specs promised; the source is damaged or changed "
                "while converting",
                path=description,
            )
        array = buffer.view(kind).reshape(shape)
        array.flags.writeable = False
        self._arrays[name] = (buffer, array)
        return array

    def done(self, assignment: Assignment) -> None:
        """The assignment was written: give back the buffers of the tensors no later assignment reads."""
        for name in dict.fromkeys(assignment.source_names):
            self._uses[name] -= 1
            if not self._uses[name] and name in self._arrays:
                self._pool.give(self._arrays.pop(name)[0])


def _fill(buffer: np.ndarray, chunks: Iterator[memoryview]) -> int:
    """Copy the chunks one after the other into ``buffer``; the count of bytes they held (at most its size)."""
    done = 0
    for chunk in chunks:
        piece = np.frombuffer(chunk, np.uint8)
        end = min(done + piece.nbytes, buffer.nbytes)
        buffer[done:end] = piece[: end - done]
        done += piece.nbytes
    return done


__all__ = ["CHUNK_BYTES", "BufferPool", "Transfer"]
