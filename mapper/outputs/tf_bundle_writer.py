"""TensorFlow checkpoints written without TensorFlow: the tensor-bundle data file and its ``.index`` table, directly.

The inverse of ``mapper.sources.tf_bundle``: the data file is every tensor's raw bytes in the machine's byte order,
concatenated in the order the tensors are declared (as ``SaveV2`` lays out the tensors it is given, so the file is
byte for byte what it writes for them in that order); the index is a LevelDB-style table whose first entry (key
``""``) is the BundleHeaderProto and whose other entries map each name, sorted, to a BundleEntryProto (dtype, shape,
offset, size, masked crc32c of the bytes), in the block layout TensorFlow's table builder gives it.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mapper.dtypes import DTYPE_SIZES
from mapper.errors import TargetError
from mapper.outputs.base import TensorWriter
from mapper.outputs.files import OutputFormat, replace_checkpoint
from mapper.outputs.raw import PlacedFile, host_order
from mapper.sources.tf_bundle import _HOST_ENDIANNESS, DTYPE_NAMES, data_file_name, mask_crc32c, masked_crc32c
from mapper.specs import TensorSpec

# TensorFlow's DataType number of each dtype the bundle holds as plain fixed-size elements.
DTYPE_NUMBERS: dict[str, int] = {name: number for number, name in DTYPE_NAMES.items() if name in DTYPE_SIZES}
# What TensorFlow's BundleWriter uses (tsl/lib/io/table_options.h): 256 KiB data blocks, a restart point every 16
# keys; the index block has one per key.
BLOCK_BYTES = 256 * 1024
RESTART_INTERVAL = 16
TABLE_MAGIC = 0xDB4775248B80FB57
# BundleHeaderProto.version.producer (kTensorBundleVersion); min_consumer stays 0.
BUNDLE_VERSION = 1


def raw_dtype(dtype: str) -> bool:
    """Whether a bundle holds ``dtype`` as plain bytes this writer can write (strings and variants it cannot).

    Example:
        >>> raw_dtype("bfloat16"), raw_dtype("string")
        (True, False)
    """
    return dtype in DTYPE_NUMBERS


class CheckpointWriter(TensorWriter):
    """A name-based TensorFlow checkpoint written directly: ``tf.train.load_checkpoint(path)`` lists the names.

    The tensors' places in the one data file are laid out from the specs first (in their order, as ``SaveV2``
    lays out the tensors it is given), each tensor is written into its place as it comes (``os.pwrite`` in cache-sized
    pieces, see ``PlacedFile``: from an array with ``write``, from a source's chunks with ``write_chunks``) and its
    crc32c taken; ``commit`` syncs the data file, writes and syncs the index, and moves the data file into place and
    the index last. No TensorFlow is imported. Like a TF1 ``Saver`` checkpoint it has no object graph: read it by name
    (``tf.train.load_checkpoint``, ``init_from_checkpoint``, or ``mapper``); ``tf.train.Checkpoint.read`` reads it
    in TensorFlow's name-based mode, restoring the variables whose names (``v.name`` without ``:0``) are its keys.
    Only fixed-size dtypes (see ``raw_dtype``); ``open_writer`` writes checkpoints with strings through ``SaveV2``.

    Example:
        >>> import numpy as np
        >>> from mapper.sources.tf_bundle import read_index
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with CheckpointWriter(f"{tmp}/ckpt", [TensorSpec("bert/w", (2,), "float32")]) as writer:
        ...         writer.write("bert/w", np.array([1.5, 2.0], "float32"))
        ...     print([(e.key, e.shape, e.size) for e in read_index(f"{tmp}/ckpt.index").entries], sorted(os.listdir(tmp)))
        [('bert/w', (2,), 8)] ['ckpt.data-00000-of-00001', 'ckpt.index']
    """

    format: OutputFormat = "tf-checkpoint"
    byte_order = host_order("=")

    def _check_specs(self) -> None:
        if not self.specs:
            raise TargetError(f"cannot write {self.path}: a TensorFlow checkpoint needs at least one tensor")
        self._refuse_dtypes(
            frozenset(DTYPE_NUMBERS), "write it with open_writer, which saves checkpoints holding strings with SaveV2"
        )

    def _room(self) -> tuple[int, int]:
        total = sum(spec.nbytes for spec in self.specs.values())
        return total + index_size_bound(self.specs.values()), total

    def _start(self) -> None:
        offsets: dict[str, int] = {}
        offset = 0
        for name, spec in self.specs.items():
            offsets[name] = offset
            offset += spec.nbytes
        self._directory = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent))
        self._prefix = self._directory / self.path.name
        fd = os.open(
            self._prefix.with_name(data_file_name(str(self._prefix), 0, 1)), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666
        )
        self._file = PlacedFile(fd, offsets, order="=", checksums=True)  # TensorFlow writes the machine's byte order
        os.ftruncate(fd, offset)

    def _write(self, spec: TensorSpec, value: Any) -> None:
        self._file.write_array(spec.name, value, str(self.path))

    def _write_chunks(self, spec: TensorSpec, chunks: Iterable[memoryview]) -> int:
        return self._file.write_chunks(spec.name, chunks, spec.nbytes, str(self.path))

    def _finish(self) -> None:
        os.fsync(self._file.descriptor(str(self.path)))
        self._file.close()
        entries = (
            (
                spec.name,
                spec.dtype,
                spec.shape,
                self._file.offsets[spec.name],
                spec.nbytes,
                mask_crc32c(self._file.crc[spec.name]),
            )
            for spec in self.specs.values()
        )
        index = self._prefix.with_name(self._prefix.name + ".index")
        with index.open("xb") as file:
            file.write(index_bytes(entries, block_bytes=BLOCK_BYTES))
            file.flush()
            os.fsync(file.fileno())

    def _install(self, existing: list[Path]) -> None:
        replace_checkpoint(self._prefix, self.path, existing)
        shutil.rmtree(self._directory, ignore_errors=True)

    def _discard(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()
        if hasattr(self, "_directory"):
            shutil.rmtree(self._directory, ignore_errors=True)


# --- the index ------------------------------------------------------------------------------------------------------

Entry = tuple[str, str, Sequence[int], int, int, int]  # name, dtype, shape, offset, size, masked crc32c


def index_bytes(entries: Iterable[Entry], *, block_bytes: int = BLOCK_BYTES) -> bytes:
    """The ``.index`` file of a one-shard bundle holding ``entries`` (in any order; the table sorts them).

    Example:
        >>> from mapper.sources.tf_bundle import _parse_index
        >>> index = _parse_index(index_bytes([("w", "int64", (2,), 0, 16, 7)]))
        >>> index.num_shards, index.entries
        (1, [BundleEntry(key='w', dtype=9, shape=(2,), shard=0, offset=0, size=16, crc32c=7, sliced=False)])
    """
    table = _Table(block_bytes)
    table.add(b"", header_proto())
    records = sorted(
        (name.encode("utf-8"), dtype, shape, offset, size, crc) for name, dtype, shape, offset, size, crc in entries
    )
    for key, dtype, shape, offset, size, crc in records:
        table.add(key, entry_proto(DTYPE_NUMBERS[dtype], shape, offset, size, crc))
    return table.finish()


def index_size_bound(specs: Iterable[TensorSpec]) -> int:
    """An upper bound on the index's size: each entry's key and proto, prefix compression ignored, plus blocks.

    Example:
        >>> index_size_bound([TensorSpec("w", (2, 3), "float32")]) > 0
        True
    """
    total = 4096
    for spec in specs:
        total += len(spec.name.encode("utf-8")) + 64 + 12 * len(spec.shape)
    return 2 * total


def header_proto(num_shards: int = 1) -> bytes:
    """A serialized BundleHeaderProto: the shard count, this machine's byte order, the bundle version.

    Example:
        >>> header_proto().hex()
        '08011a020801'
    """
    version = _varint_field(1, BUNDLE_VERSION)
    return _varint_field(1, num_shards) + _varint_field(2, _HOST_ENDIANNESS) + _bytes_field(3, version)


def entry_proto(dtype: int, shape: Sequence[int], offset: int, size: int, crc: int) -> bytes:
    """A serialized BundleEntryProto of a whole tensor in shard 0 (proto3: fields at their default are left out).

    Example:
        >>> entry_proto(1, (2, 0), 8, 0, 0xA282EAD8).hex()
        '08011206120208021200200835d8ea82a2'
    """
    dims = b"".join(_bytes_field(2, _varint_field(1, dim)) for dim in shape)
    message = _varint_field(1, dtype) + _bytes_field(2, dims) + _varint_field(4, offset) + _varint_field(5, size)
    return message + (struct.pack("<BI", 6 << 3 | 5, crc) if crc else b"")


class _Table:
    """A table (tsl/lib/io/table_builder) built in memory: data blocks, an empty metaindex, the index, the footer."""

    def __init__(self, block_bytes: int) -> None:
        self.block_bytes = block_bytes
        self.out = bytearray()
        self.block = _Block(RESTART_INTERVAL)
        self.index = _Block(1)
        self.last = b""
        self.pending: bytes | None = None  # the handle of the last block written, until the next key is known

    def add(self, key: bytes, value: bytes) -> None:
        if self.pending is not None:
            self.index.add(_separator(self.last, key), self.pending)
            self.pending = None
        self.block.add(key, value)
        self.last = key
        if self.block.size() >= self.block_bytes:
            self._flush()

    def finish(self) -> bytes:
        self._flush()
        if self.pending is not None:
            self.index.add(_successor(self.last), self.pending)
        metaindex = self._write_block(_Block(RESTART_INTERVAL).finish())
        index = self._write_block(self.index.finish())
        footer = (metaindex + index).ljust(40, b"\0") + struct.pack("<Q", TABLE_MAGIC)
        return bytes(self.out + footer)

    def _flush(self) -> None:
        if self.block.count:
            self.pending = self._write_block(self.block.finish())
            self.block = _Block(RESTART_INTERVAL)

    def _write_block(self, contents: bytes) -> bytes:
        """Append a block and its trailer (no compression, masked crc32c); its encoded BlockHandle."""
        handle = _varint(len(self.out)) + _varint(len(contents))
        self.out += contents
        self.out += struct.pack("<BI", 0, masked_crc32c(contents + b"\0"))
        return handle


def _separator(start: bytes, limit: bytes) -> bytes:
    """A short key >= ``start`` and < ``limit``: the index key between two blocks (LevelDB's bytewise comparator)."""
    shared = 0
    while shared < min(len(start), len(limit)) and start[shared] == limit[shared]:
        shared += 1
    if shared < min(len(start), len(limit)):
        byte = start[shared]
        if byte < 0xFF and byte + 1 < limit[shared]:
            return start[:shared] + bytes([byte + 1])
    return start


def _successor(key: bytes) -> bytes:
    """A short key >= ``key``: the index key of the last block."""
    for position, byte in enumerate(key):
        if byte != 0xFF:
            return key[:position] + bytes([byte + 1])
    return key


class _Block:
    """One table block: prefix-compressed entries, then the restart offsets and their count."""

    def __init__(self, restart_interval: int) -> None:
        self.restart_interval = restart_interval
        self.data = bytearray()
        self.restarts = [0]
        self.count = 0
        self.last = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.count and self.count % self.restart_interval == 0:
            self.restarts.append(len(self.data))
        elif self.count:
            limit = min(len(key), len(self.last))
            while shared < limit and key[shared] == self.last[shared]:
                shared += 1
        self.data += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        self.data += key[shared:] + value
        self.last = key
        self.count += 1

    def size(self) -> int:
        return len(self.data) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        return bytes(self.data) + struct.pack(f"<{len(self.restarts) + 1}I", *self.restarts, len(self.restarts))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _varint_field(number: int, value: int) -> bytes:
    """A varint field, or nothing for 0 (proto3 leaves defaults out); negative int64s take ten bytes."""
    if not value:
        return b""
    return _varint(number << 3) + _varint(value % 2**64)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


__all__ = [
    "BLOCK_BYTES",
    "DTYPE_NUMBERS",
    "CheckpointWriter",
    "entry_proto",
    "header_proto",
    "index_bytes",
    "index_size_bound",
    "raw_dtype",
]
