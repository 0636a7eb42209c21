"""The TensorFlow tensor-bundle format, read without TensorFlow: the ``.index`` table and the tensor bytes it places."""

from __future__ import annotations

import math
import os
import struct
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import crc32c
import numpy as np

from mapper.dtypes import DTYPE_SIZES
from mapper.errors import CorruptSourceError
from mapper.sources._common import ALIGNMENT, VERIFY_CHUNK, aligned_buffer, copy_at, numpy_dtype, read_at, scan_at

# TensorFlow's DataType enum (tensorflow/core/framework/types.proto), named as ``tf.as_dtype(n).name`` names them.
DTYPE_NAMES = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string", 8: "complex64",
    9: "int64", 10: "bool", 11: "qint8", 12: "quint8", 13: "qint32", 14: "bfloat16", 15: "qint16", 16: "quint16",
    17: "uint16", 18: "complex128", 19: "float16", 20: "resource", 21: "variant", 22: "uint32", 23: "uint64",
    24: "float8_e5m2", 25: "float8_e4m3fn", 26: "float8_e4m3fnuz", 27: "float8_e4m3b11fnuz", 28: "float8_e5m2fnuz",
    29: "int4", 30: "uint4", 31: "int2", 32: "uint2", 33: "float4_e2m1fn",
}  # fmt: skip
# Tensors are read into buffers aligned like this: what TensorFlow's CPU allocator gives its own tensors.
# BundleHeaderProto.endianness: LITTLE = 0, BIG = 1; TensorFlow writes the host's byte order.
_HOST_ENDIANNESS = 0 if sys.byteorder == "little" else 1
# The index is a TensorFlow table (tsl/lib/io/table): blocks of prefix-compressed entries, an index block pointing
# at them, and a 48-byte footer ending in this magic number. Each block is followed by a 5-byte trailer: its
# compression type (0: none, all bundles use it) and the masked crc32c of the block and that byte.
_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_BLOCK_TRAILER_SIZE = 5
_CRC_MASK_DELTA = 0xA282EAD8
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class BundleFormatError(ValueError):
    """The index is not a tensor bundle this reader understands (damaged, or a layout it does not know)."""


class BundleEntry(NamedTuple):
    """One entry of a bundle's index: a tensor (or one slice of a partitioned tensor) and where its bytes are.

    ``key`` is the tensor name; a slice entry (index key ``\\0name\\0<slice>``) is named ``"name (a slice)"``.
    ``sliced`` marks a partitioned tensor's whole-tensor entry, whose bytes are in its slice entries instead.
    ``crc32c`` is the *masked* crc32c TensorFlow stores (see ``masked_crc32c``).
    """

    key: str
    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int
    sliced: bool = False

    @property
    def dtype_name(self) -> str | None:
        """The dtype's name (``"float32"``), or None for a DataType value this reader does not know."""
        return DTYPE_NAMES.get(self.dtype)

    @property
    def raw(self) -> bool:
        """Whether the data file holds this tensor as plain fixed-size elements, readable without TensorFlow."""
        return not self.sliced and not self.key.endswith(" (a slice)") and self.dtype_name in DTYPE_SIZES


class BundleIndex(NamedTuple):
    """A parsed ``.index`` file: the header's shard count and byte order, and every entry in key order."""

    num_shards: int
    endianness: int
    entries: list[BundleEntry]

    @property
    def native(self) -> bool:
        """Whether the tensors were written in this machine's byte order (TensorFlow reads no other)."""
        return self.endianness == _HOST_ENDIANNESS


def masked_crc32c(data: Any) -> int:
    """The crc32c of ``data`` (any buffer) masked as TensorFlow stores it: rotated right by 15 bits, plus a delta.

    Example:
        >>> hex(masked_crc32c(b"")), hex(masked_crc32c(b"abc"))
        ('0xa282ead8', '0x21f1576e')
    """
    return mask_crc32c(crc32c.crc32c(data))


def mask_crc32c(crc: int) -> int:
    """A crc32c (of bytes taken piece by piece, say) masked as TensorFlow stores it (see ``masked_crc32c``).

    Example:
        >>> mask_crc32c(crc32c.crc32c(b"abc")) == masked_crc32c(b"abc")
        True
    """
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def data_file_name(prefix: str, shard: int, num_shards: int) -> str:
    """The file name of data shard ``shard`` of a checkpoint.

    Example:
        >>> data_file_name("/x/ckpt-1", 0, 2)
        'ckpt-1.data-00000-of-00002'
    """
    return f"{Path(prefix).name}.data-{shard:05d}-of-{num_shards:05d}"


# --- the index ------------------------------------------------------------------------------------------------------


def read_index(index: str) -> BundleIndex:
    """Parse a bundle's ``.index`` file, checking each block's crc32c.

    Raises:
        OSError: the file cannot be read.
        BundleFormatError: the file is damaged or not a bundle index this reader understands.

    Example:
        >>> read_index("/no/such/ckpt.index")
        Traceback (most recent call last):
        FileNotFoundError: [Errno 2] No such file or directory: '/no/such/ckpt.index'
    """
    data = Path(index).read_bytes()
    try:
        return _parse_index(data)
    except (IndexError, struct.error, UnicodeDecodeError) as error:  # a length or offset past the end
        raise BundleFormatError(f"it is truncated or damaged ({type(error).__name__}: {error})") from error


def _parse_index(data: bytes) -> BundleIndex:
    if len(data) < _FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC:
        raise BundleFormatError("it does not end with the table magic number")
    position = len(data) - _FOOTER_SIZE
    _, position = varint(data, position)  # metaindex block offset
    _, position = varint(data, position)  # metaindex block size
    index_offset, position = varint(data, position)
    index_size, _ = varint(data, position)
    header: tuple[int, int] | None = None
    entries = []
    for _, handle in block_entries(_block(data, index_offset, index_size)):
        offset, position = varint(handle, 0)
        size, _ = varint(handle, position)
        for key, value in block_entries(_block(data, offset, size)):
            if key:
                entries.append(_entry(key, value))
            else:
                header = _header(value)
    if header is None:
        raise BundleFormatError("it has no header entry")
    if any(entry.shard >= header[0] for entry in entries):
        raise BundleFormatError(f"an entry names a data shard past its {header[0]} shards")
    return BundleIndex(header[0], header[1], entries)


def _block(data: bytes, offset: int, size: int) -> bytes:
    """The contents of an uncompressed table block whose crc32c matches; BundleFormatError otherwise."""
    end = offset + size
    if end + _BLOCK_TRAILER_SIZE > len(data):
        raise BundleFormatError(f"a block ends at byte {end + _BLOCK_TRAILER_SIZE}, past the end of the file")
    if data[end] != 0:
        raise BundleFormatError(f"a block is compressed (type {data[end]}), which bundles never are")
    if masked_crc32c(data[offset : end + 1]) != struct.unpack_from("<I", data, end + 1)[0]:
        raise BundleFormatError(f"the block at byte {offset} fails its checksum")
    return data[offset:end]


def block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The ``(key, value)`` pairs of a table block, keys rebuilt from their shared prefixes.

    Example:
        >>> block = bytes([0, 1, 1]) + b"ab" + bytes([1, 1, 1]) + b"cd" + bytes(4) + bytes([1, 0, 0, 0])
        >>> list(block_entries(block))
        [(b'a', b'b'), (b'ac', b'd')]
    """
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * restarts
    position = 0
    key = b""
    while position < limit:
        shared, position = varint(block, position)
        unshared, position = varint(block, position)
        length, position = varint(block, position)
        key = key[:shared] + block[position : position + unshared]
        position += unshared
        yield key, block[position : position + length]
        position += length


def _header(value: bytes) -> tuple[int, int]:
    """``(num_shards, endianness)`` of a serialized BundleHeaderProto (the version is not checked)."""
    fields = dict(_scalars(value))
    return fields.get(1, 0), fields.get(2, 0)


def _entry(key: bytes, value: bytes) -> BundleEntry:
    """A BundleEntry from an index key and its serialized BundleEntryProto."""
    if key.startswith(b"\0"):  # a slice of a partitioned tensor: ``\0name\0<encoded slice>``
        name = key[1:].split(b"\0", 1)[0].decode("utf-8", "replace") + " (a slice)"
    else:
        name = key.decode("utf-8", "replace")
    scalars: dict[int, int] = {}
    shape: tuple[int, ...] = ()
    sliced = False
    for number, field in fields(value):
        if isinstance(field, int):
            scalars[number] = field
        elif number == 2:
            shape = _shape(field)
        elif number == 7:
            sliced = True
    return BundleEntry(
        name,
        scalars.get(1, 0),
        shape,
        scalars.get(3, 0),
        scalars.get(4, 0),
        scalars.get(5, 0),
        scalars.get(6, 0),
        sliced,
    )


def _shape(value: bytes) -> tuple[int, ...]:
    """The dimensions of a serialized TensorShapeProto (``dim`` = 2, each ``{size = 1}``)."""
    dims = []
    for number, field in fields(value):
        if number == 2 and isinstance(field, bytes):
            size = dict(_scalars(field)).get(1, 0)
            dims.append(size - 2**64 if size >= 2**63 else size)  # int64: -1 is an unknown size
        elif number == 3 and field:
            raise BundleFormatError("an entry has a shape of unknown rank")
    return tuple(dims)


def _scalars(message: bytes) -> Iterator[tuple[int, int]]:
    """The integer fields of a serialized message, by field number."""
    for number, field in fields(message):
        if isinstance(field, int):
            yield number, field


def fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    """The ``(field number, value)`` pairs of a serialized protocol buffer: ints, or bytes for length-delimited ones.

    Example:
        >>> list(fields(bytes([0x08, 0x96, 0x01, 0x12, 0x02]) + b"hi" + bytes([0x35, 1, 0, 0, 0])))
        [(1, 150), (2, b'hi'), (6, 1)]
    """
    position = 0
    while position < len(message):
        tag, position = varint(message, position)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            value, position = varint(message, position)
            yield number, value
        elif wire == _BYTES:
            length, position = varint(message, position)
            if position + length > len(message):
                raise BundleFormatError("a field runs past the end of its message")
            yield number, message[position : position + length]
            position += length
        elif wire in (_FIXED32, _FIXED64):
            width = 4 if wire == _FIXED32 else 8
            yield number, int.from_bytes(message[position : position + width], "little")
            position += width
        else:
            raise BundleFormatError(f"a field has wire type {wire}, which bundle entries do not use")


def varint(data: bytes, position: int) -> tuple[int, int]:
    """A little-endian base-128 varint at ``position``, and the position after it.

    Example:
        >>> varint(bytes([0x96, 0x01, 0x00]), 0)
        (150, 2)
    """
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise BundleFormatError("a varint is longer than ten bytes")


# --- the tensors ----------------------------------------------------------------------------------------------------


def read_tensors(prefix: str, index: BundleIndex, entries: Sequence[BundleEntry]) -> dict[str, np.ndarray]:
    """The tensors of ``entries`` (all ``raw``), each read with positional reads into its own aligned buffer.

    Each data file is opened once and read in offset order; every tensor's byte length is checked against its
    dtype and shape, and its bytes against the crc32c the index stores. No memory map is used: a data file that
    becomes shorter or fails mid-read is a CorruptSourceError naming the tensor, never a SIGBUS.

    Returns:
        ``{name: read-only array}`` (bfloat16 and float8 via ml_dtypes), in the order of ``entries``.

    Raises:
        CorruptSourceError: a data file is missing, unreadable or shorter than the index says, or a tensor's
            length or checksum does not match; the message names the tensor and the file.

    Example:
        >>> import tempfile
        >>> import tensorflow as tf
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     prefix = tf.train.Checkpoint(w=tf.Variable([1.5, 2.0])).write(f"{tmp}/ckpt")
        ...     index = read_index(prefix + ".index")
        ...     raw = [entry for entry in index.entries if entry.raw]
        ...     read_tensors(prefix, index, raw)
        {'w/.ATTRIBUTES/VARIABLE_VALUE': array([1.5, 2. ], dtype=float32)}
    """
    by_shard: dict[int, list[BundleEntry]] = {}
    for entry in entries:
        by_shard.setdefault(entry.shard, []).append(entry)
    arrays: dict[str, np.ndarray] = {}
    for shard, group in sorted(by_shard.items()):
        path = str(Path(prefix).with_name(data_file_name(prefix, shard, index.num_shards)))
        arrays |= _read_shard(prefix, path, sorted(group, key=lambda entry: entry.offset))
    return {entry.key: arrays[entry.key] for entry in entries}


def _read_shard(prefix: str, path: str, entries: list[BundleEntry]) -> dict[str, np.ndarray]:
    """The tensors of ``entries``, all in the data file ``path``, sorted by offset."""
    scratch = aligned_buffer(VERIFY_CHUNK)
    arrays: dict[str, np.ndarray] = {}
    try:
        with Path(path).open("rb", buffering=0) as handle:
            for run in _runs(entries):
                if len(run) > 1 and (spread := _read_spread(handle, run)) is not None:
                    arrays |= {entry.key: _checked(prefix, path, entry, spread[at]) for at, entry in enumerate(run)}
                elif len(run) > 1 and _read_run(handle, run, scratch):
                    arrays |= {entry.key: _from_run(prefix, path, entry, run[0], scratch) for entry in run}
                else:
                    arrays |= {entry.key: _read_entry(prefix, path, handle, entry, scratch) for entry in run}
    except OSError as error:  # opening failed, or EIO while reading
        raise _unreadable(prefix, path, error) from error
    return arrays


def _runs(entries: list[BundleEntry]) -> Iterator[list[BundleEntry]]:
    """``entries`` (sorted by offset) in runs that one read serves: back to back and together within VERIFY_CHUNK.

    Thousands of small tensors then cost a read per run, not one each (per-read overhead dominates them). A run
    has at most ``_MAX_SPREAD`` entries, the buffers one ``preadv`` fills.
    """
    run: list[BundleEntry] = []
    for entry in entries:
        if run and (
            entry.offset != run[-1].offset + run[-1].size
            or entry.offset + entry.size - run[0].offset > VERIFY_CHUNK
            or len(run) == _MAX_SPREAD
        ):
            yield run
            run = []
        run.append(entry)
    if run:
        yield run


def _read_run(handle: Any, run: list[BundleEntry], scratch: np.ndarray) -> bool:
    """Read a run's bytes into ``scratch`` with one read; False if the file ended first (each entry is then read alone)."""
    span = run[-1].offset + run[-1].size - run[0].offset
    return read_at(handle, memoryview(scratch.data).cast("B")[:span], run[0].offset) == span


# The most buffers one preadv takes (IOV_MAX is 1024 on Linux).
_MAX_SPREAD = 1024


def _read_spread(handle: Any, run: list[BundleEntry]) -> list[np.ndarray] | None:
    """A run's tensors read with one ``preadv`` straight into their own aligned places in one new buffer.

    Each tensor's bytes land 64-byte aligned, so each is a variable's buffer as it is (no copy out of a
    scratch buffer, one allocation per run instead of one per tensor). None if the system has no ``preadv`` or
    the file ended first (the caller reads the entries one by one, naming the short one).
    """
    preadv = getattr(os, "preadv", None)
    if preadv is None:
        return None
    starts = [0] * len(run)
    total = 0
    for at, entry in enumerate(run):
        starts[at] = total
        total += -(-entry.size // ALIGNMENT) * ALIGNMENT
    storage = aligned_buffer(total)
    pieces = [storage[start : start + entry.size] for start, entry in zip(starts, run, strict=True)]
    span = run[-1].offset + run[-1].size - run[0].offset
    if preadv(handle.fileno(), [piece.data for piece in pieces], run[0].offset) != span:
        return None  # short (the file ended, or an interrupted read): read one by one
    return pieces


def _checked(prefix: str, path: str, entry: BundleEntry, piece: np.ndarray) -> np.ndarray:
    """A tensor's bytes read into its own buffer, checked (length, checksum), as a read-only array."""
    dtype = _checked_dtype(prefix, entry)
    _check_read(prefix, path, entry, entry.size, mask_crc32c(crc32c.crc32c(piece.data)))
    array = piece.view(dtype).reshape(entry.shape)
    array.flags.writeable = False
    return array


def _from_run(prefix: str, path: str, entry: BundleEntry, first: BundleEntry, scratch: np.ndarray) -> np.ndarray:
    """One entry of a run read into ``scratch``: checked (length, checksum), copied into its own aligned buffer."""
    dtype = _checked_dtype(prefix, entry)
    start = entry.offset - first.offset
    chunk = scratch[start : start + entry.size]
    _check_read(prefix, path, entry, entry.size, mask_crc32c(crc32c.crc32c(chunk.data)))
    buffer = aligned_buffer(entry.size)
    buffer[:] = chunk
    array = buffer.view(dtype).reshape(entry.shape)
    array.flags.writeable = False
    return array


def _read_entry(prefix: str, path: str, handle: Any, entry: BundleEntry, scratch: np.ndarray) -> np.ndarray:
    """One tensor's bytes read into a new aligned buffer and checked (length, checksum), as a read-only array."""
    dtype = _checked_dtype(prefix, entry)
    buffer = aligned_buffer(entry.size)
    _fill(prefix, path, handle, entry, memoryview(buffer.data).cast("B"), scratch=scratch)
    array = buffer.view(dtype).reshape(entry.shape)  # the caller reads only bundles in this machine's byte order
    array.flags.writeable = False
    return array


def _fill(
    prefix: str, path: str, handle: Any, entry: BundleEntry, destination: memoryview, *, scratch: np.ndarray
) -> None:
    """Copy the entry's bytes into ``destination`` through ``scratch``, checking length and crc32c chunk by chunk."""
    crc = 0

    def update(chunk: memoryview) -> None:
        nonlocal crc
        crc = crc32c.crc32c(chunk, crc)

    done = copy_at(handle, entry.offset, destination, scratch, update)
    _check_read(prefix, path, entry, done, mask_crc32c(crc))


def _unreadable(prefix: str, path: str, error: OSError) -> CorruptSourceError:
    return CorruptSourceError(
        f"cannot read data file {Path(path).name!r} of checkpoint {prefix!r}: {error}; copy or write the checkpoint again",
        path=prefix,
    )


def verify_tensors(prefix: str, index: BundleIndex, entries: Sequence[BundleEntry]) -> None:
    """Check that the tensors of ``entries`` (all ``raw``) read in full and match their checksums, keeping none.

    The same checks as ``read_tensors`` (byte length, crc32c), but the bytes pass through one small reused
    buffer: nothing tensor-sized is allocated, so checking a whole checkpoint costs a read from the page cache.

    Raises:
        CorruptSourceError: as ``read_tensors``.

    Example:
        >>> import tempfile
        >>> import tensorflow as tf
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     prefix = tf.train.Checkpoint(w=tf.Variable([1.5, 2.0])).write(f"{tmp}/ckpt")
        ...     index = read_index(prefix + ".index")
        ...     verify_tensors(prefix, index, [entry for entry in index.entries if entry.raw])
    """
    by_shard: dict[int, list[BundleEntry]] = {}
    for entry in entries:
        by_shard.setdefault(entry.shard, []).append(entry)
    buffer = aligned_buffer(VERIFY_CHUNK)
    for shard, group in sorted(by_shard.items()):
        path = str(Path(prefix).with_name(data_file_name(prefix, shard, index.num_shards)))
        try:
            with Path(path).open("rb", buffering=0) as handle:
                for run in _runs(sorted(group, key=lambda entry: entry.offset)):
                    _verify_run(prefix, path, handle, run, buffer)
        except OSError as error:
            raise _unreadable(prefix, path, error) from error


def _verify_run(prefix: str, path: str, handle: Any, run: list[BundleEntry], buffer: np.ndarray) -> None:
    """A run's lengths and checksums checked: with one read if it has several entries and the file holds it all."""
    if len(run) > 1 and _read_run(handle, run, buffer):
        for entry in run:
            _checked_dtype(prefix, entry)
            start = entry.offset - run[0].offset
            _check_read(
                prefix, path, entry, entry.size, mask_crc32c(crc32c.crc32c(buffer[start : start + entry.size].data))
            )
        return
    for entry in run:
        _verify_entry(prefix, path, handle, entry, buffer)


def tensor_chunks(prefix: str, index: BundleIndex, entry: BundleEntry, buffer: memoryview) -> Iterator[memoryview]:
    """The bytes of ``entry`` (a ``raw`` one) read through ``buffer`` a chunk at a time, as views of it.

    Each view is valid until the next is asked for. The same checks as ``read_tensors``: the byte length its
    dtype and shape need, every read (a data file that became shorter), and once the last chunk was handed
    out, the crc32c of all of them: a mismatch raises then, so whatever the chunks were written to must be
    thrown away (a writer's temporary file is).

    Raises:
        CorruptSourceError: as ``read_tensors``.

    Example:
        >>> import tempfile
        >>> import tensorflow as tf
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     prefix = tf.train.Checkpoint(w=tf.Variable([1, 2, 3])).write(f"{tmp}/ckpt")
        ...     index = read_index(prefix + ".index")
        ...     (entry,) = [entry for entry in index.entries if entry.raw]
        ...     [len(chunk) for chunk in tensor_chunks(prefix, index, entry, memoryview(bytearray(8)))]
        [8, 4]
    """
    _checked_dtype(prefix, entry)
    path = str(Path(prefix).with_name(data_file_name(prefix, entry.shard, index.num_shards)))
    try:
        with Path(path).open("rb", buffering=0) as handle:
            crc = done = 0
            while done < entry.size:
                want = min(len(buffer), entry.size - done)
                got = read_at(handle, buffer[:want], entry.offset + done)
                if got < want:
                    _check_read(prefix, path, entry, done + got, 0)
                crc = crc32c.crc32c(buffer[:got], crc)
                done += got
                yield buffer[:got]
            _check_read(prefix, path, entry, done, mask_crc32c(crc))
    except CorruptSourceError:
        raise
    except OSError as error:  # opening failed, or EIO while reading
        raise CorruptSourceError(
            f"cannot read data file {Path(path).name!r} of checkpoint {prefix!r}: {error}; "
            "copy or write the checkpoint again",
            path=prefix,
        ) from error


def _verify_entry(prefix: str, path: str, handle: Any, entry: BundleEntry, buffer: np.ndarray) -> None:
    """One tensor's length and checksum checked through ``buffer``."""
    _checked_dtype(prefix, entry)
    crc = 0

    def update(chunk: memoryview) -> None:
        nonlocal crc
        crc = crc32c.crc32c(chunk, crc)

    done = scan_at(handle, entry.offset, entry.size, buffer, update)
    _check_read(prefix, path, entry, done, mask_crc32c(crc))


def _checked_dtype(prefix: str, entry: BundleEntry) -> np.dtype[Any]:
    """The entry's NumPy dtype, after checking that the index gives it the byte length its shape needs."""
    dtype = numpy_dtype(str(entry.dtype_name), path=prefix)
    expected = math.prod(entry.shape) * dtype.itemsize
    if entry.size != expected:
        raise _damaged(prefix, entry, f"the index gives it {entry.size} bytes, not the {expected} its shape needs")
    return dtype


def _check_read(prefix: str, path: str, entry: BundleEntry, done: int, actual: int) -> None:
    """CorruptSourceError if fewer than the entry's bytes were read, or they give another masked crc32c."""
    if done < entry.size:
        raise _damaged(
            prefix,
            entry,
            f"data file {Path(path).name!r} ends at byte {entry.offset + done}, before the tensor's last byte "
            f"{entry.offset + entry.size} (it became shorter after the checkpoint was opened)",
        )
    if actual != entry.crc32c:
        raise _damaged(
            prefix,
            entry,
            f"checksum mismatch in data file {Path(path).name!r} (stored masked crc32c {entry.crc32c:#010x}, "
            f"bytes {entry.offset}-{entry.offset + entry.size} give {actual:#010x})",
        )


def _damaged(prefix: str, entry: BundleEntry, why: str) -> CorruptSourceError:
    return CorruptSourceError(
        f"cannot read {entry.key!r} from checkpoint {prefix!r}: {why}; the data files are damaged or were "
        "changed after the index was written: write or copy the checkpoint again",
        path=prefix,
    )
