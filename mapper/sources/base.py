"""The Source protocol every checkpoint format implements: describe tensors cheaply, read a few on demand."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mapper.specs import VariableMap


@runtime_checkable
class Source(Protocol):
    """A place tensors come from.

    ``specs()`` must not read tensor data. ``read(names)`` reads just those tensors, in as few
    operations as the format allows, and returns arrays (NumPy arrays or ``tf.Tensor``s) keyed by name.
    ``input_files()`` lists every file the source reads (so that no output ever replaces one), and
    ``checkpoint_prefix`` is the TensorFlow checkpoint prefix of a TF checkpoint source (what
    ``init_from_checkpoint`` reads), None for every other source. ``hands_over_reads`` says that ``read``
    returns new, aligned buffers nothing else holds, which the executor may then adopt as variable buffers
    without a copy.

    Example:
        >>> from mapper.sources.memory import MemorySource
        >>> import numpy as np
        >>> source = MemorySource({"w": np.zeros(2)})
        >>> isinstance(source, Source), source.input_files(), source.checkpoint_prefix
        (True, (), None)
    """

    @property
    def description(self) -> str:
        """What the source is, for reports: usually its path."""
        ...

    @property
    def checkpoint_prefix(self) -> str | None:
        """The TensorFlow checkpoint prefix this source reads, or None if it is not a TF checkpoint."""
        ...

    @property
    def hands_over_reads(self) -> bool:
        """Whether ``read`` returns new buffers nothing else keeps, so a variable may adopt them (no copy)."""
        ...

    def specs(self) -> VariableMap:
        """Names, shapes and dtypes of every tensor, without reading any."""
        ...

    def read(self, names: Sequence[str]) -> Mapping[str, Any]:
        """Read the named tensors; raises SourceError if the data cannot be read."""
        ...

    def input_files(self) -> tuple[Path, ...]:
        """Every file the source reads (index files, shards, data files); () for a source held in memory."""
        ...


@runtime_checkable
class VerifyingSource(Protocol):
    """A source that can check tensors are readable in full without handing them out (a cheaper ``read``).

    ``verify(names)`` reads the named tensors' bytes through a small reused buffer, checking what the format
    allows (lengths, and checksums where it stores them), and returns nothing: the executor's "verify" pass
    uses it before the first assignment instead of ``read``, so that pass allocates no tensor-sized buffers.
    The executor calls it from two threads at once, for different batches: each call opens what it reads and
    keeps its own buffer.

    Example:
        >>> from mapper.sources.memory import MemorySource
        >>> import numpy as np
        >>> isinstance(MemorySource({"w": np.zeros(2)}), VerifyingSource)
        False
    """

    def verify(self, names: Sequence[str]) -> None:
        """Check that the named tensors read in full; raises SourceError (CorruptSourceError) naming one that does not."""
        ...


@runtime_checkable
class PositionedSource(Protocol):
    """A source whose tensors lie in its files in a known order, so that batches can read them in that order.

    ``position(name)`` is where the tensor's bytes start, as ``(file number, byte offset)``; tensors that are not
    stored as plain bytes come after all others. Batches cut in this order let small tensors that lie back to
    back share one read (5,000 small TF checkpoint tensors: about 470 reads, not about 2,300).

    Example:
        >>> from mapper.sources.memory import MemorySource
        >>> import numpy as np
        >>> isinstance(MemorySource({"w": np.zeros(2)}), PositionedSource)
        False
    """

    def position(self, name: str) -> tuple[int, int]:
        """``(file number, byte offset)`` of the tensor's bytes; raises SourceError for an unknown name."""
        ...


@runtime_checkable
class ChunkedSource(Protocol):
    """A source that hands out a tensor's stored bytes a chunk at a time, through a buffer the caller reuses.

    ``raw_order(name)`` is the byte order of the tensor's bytes as ``read_chunks`` yields them (``"<"``
    little-endian, ``">"`` big-endian), or None when this tensor cannot be read so (strings, sliced tensors).
    ``read_chunks(name, buffer)`` yields views of ``buffer`` holding the tensor's bytes in C order, one after the
    other, each valid until the next is asked for; it checks what the format allows (the length, and at the end a
    checksum where the format stores one) and raises CorruptSourceError, never a bare OSError. Nothing
    tensor-sized is allocated: a writer can copy a tensor through a buffer that stays in the CPU's cache.

    Example:
        >>> from mapper.sources.memory import MemorySource
        >>> import numpy as np
        >>> isinstance(MemorySource({"w": np.zeros(2)}), ChunkedSource)
        False
    """

    def raw_order(self, name: str) -> str | None:
        """``"<"`` or ``">"``: the byte order ``read_chunks`` yields the tensor in; None if it cannot."""
        ...

    def read_chunks(self, name: str, buffer: memoryview) -> Iterator[memoryview]:
        """The tensor's bytes, in C order, as successive views of ``buffer``; raises CorruptSourceError."""
        ...
