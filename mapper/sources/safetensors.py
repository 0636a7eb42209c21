"""safetensors files, single or sharded by a Hugging Face ``*.safetensors.index.json``, as a Source."""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mapper.dtypes import DTYPE_SIZES
from mapper.errors import CorruptSourceError, SourceError, SourceNotFoundError
from mapper.sources._common import (
    VERIFY_CHUNK,
    aligned_buffer,
    check_names,
    copy_at,
    files_with_suffix,
    head,
    index_weight_map,
    little_endian,
    numpy_dtype,
    parse_json,
    read_at,
    scan_at,
    shard_files,
    short_repr,
    weight_map_suffixes,
)
from mapper.specs import TensorSpec, VariableMap
from mapper.text import quoted

_T = TypeVar("_T")

# safetensors dtype codes and the dtype names specs use.
DTYPES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
_ITEMSIZES = {code: DTYPE_SIZES[name] for code, name in DTYPES.items()}
# The safetensors library refuses headers above 100 MB; so do we.
MAX_HEADER_BYTES = 100_000_000
SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
METADATA_KEY = "__metadata__"


@dataclass(frozen=True)
class _Entry:
    """Where one tensor's bytes are: the file and the absolute byte range in it."""

    spec: TensorSpec
    file: str
    begin: int
    end: int


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds safetensors data, judged from its contents (the suffix alone does not count).

    True for a file that starts with a safetensors header (an 8-byte little-endian length and a JSON object),
    an index whose ``weight_map`` names ``.safetensors`` shards, and a directory holding such files.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from safetensors.numpy import save_file
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_file({"w": np.zeros(2, "float32")}, f"{tmp}/model.safetensors")
        ...     _ = Path(tmp, "fake.safetensors").write_bytes(b"not safetensors")
        ...     is_safetensors(f"{tmp}/model.safetensors"), is_safetensors(f"{tmp}/fake.safetensors"), is_safetensors(tmp)
        (True, False, True)
    """
    text = os.fspath(path)
    if Path(text).is_dir():
        return bool(files_with_suffix(text, SUFFIX, INDEX_SUFFIX))
    if text.endswith(".index.json"):
        return weight_map_suffixes(text) == {SUFFIX}
    data = head(text, 9)
    if len(data) < 9 or data[8:9] != b"{":
        return False
    length: int = struct.unpack("<Q", data[:8])[0]
    return 2 <= length <= MAX_HEADER_BYTES


class SafetensorsSource:
    """The tensors of a safetensors file or of a sharded set, described from the headers and read by positional reads.

    ``path`` may be a ``.safetensors`` file, a ``*.safetensors.index.json`` shard index (its ``weight_map``
    names the shard of each tensor), or a directory holding exactly one such index or, without one, exactly one
    ``.safetensors`` file (a Hugging Face model directory). Opening reads and checks every header, and no tensor
    data: offsets lie inside the file, ranges do not overlap, and each range holds exactly shape times item size bytes.

    ``read`` reads each tensor's bytes with positional reads into a new 64-byte aligned buffer and returns it as a
    read-only NumPy array (copy an array before changing it). Files are not memory-mapped: a file that becomes
    shorter after opening gives a CorruptSourceError naming the file and the tensor, never a crash (SIGBUS).

    Attributes:
        files: the safetensors files, shards in index order.
        index: the shard index, or None for a single file.
        description: the path given, and the file or index it resolved to when that differs.

    Raises:
        SourceNotFoundError: nothing at ``path``.
        SourceError: the file is not safetensors, a dtype is not supported, or a directory is ambiguous.
        CorruptSourceError: a header is truncated or lies about offsets, or the index names a missing shard.

    Example:
        >>> import tempfile
        >>> from safetensors.numpy import save_file
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_file({"dense.weight": np.ones((2, 3), "float32")}, f"{tmp}/model.safetensors")
        ...     source = SafetensorsSource(tmp)
        ...     print(source.specs()["dense.weight"], source.read(["dense.weight"])["dense.weight"].sum())
        TensorSpec(name='dense.weight', shape=(2, 3), dtype='float32') 6.0
    """

    hands_over_reads = True  # read() returns new buffers nothing keeps: the executor may adopt them (no copy)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        given = os.fspath(path)
        resolved = _resolve(given)
        self.description: str = given if given == resolved else f"{given} -> {resolved}"
        entries: dict[str, _Entry] = {}
        if resolved.endswith(".index.json"):
            self.index: str | None = resolved
            weight_map = index_weight_map(resolved, what="safetensors")
            self.files: tuple[str, ...] = tuple(shard_files(resolved, weight_map, what="safetensors"))
            for file in self.files:
                for entry in read_header(file):
                    if entry.spec.name in entries:
                        raise CorruptSourceError(
                            f"tensor {entry.spec.name!r} is in two shards of {resolved!r}: "
                            f"{Path(entries[entry.spec.name].file).name!r} and {Path(file).name!r}; "
                            "the shards do not belong together: download them again",
                            path=resolved,
                        )
                    entries[entry.spec.name] = entry
            _check_weight_map(resolved, weight_map, entries)
        else:
            self.index = None
            self.files = (resolved,)
            entries = {entry.spec.name: entry for entry in read_header(resolved)}
        self._entries = {name: entries[name] for name in sorted(entries)}
        self._specs = VariableMap((entry.spec for entry in self._entries.values()), description=resolved)
        self._path = resolved

    checkpoint_prefix: str | None = None  # not a TF checkpoint

    def input_files(self) -> tuple[Path, ...]:
        """The shard index, if there is one, and every safetensors file."""
        return tuple(Path(file) for file in (*((self.index,) if self.index else ()), *self.files))

    def __repr__(self) -> str:
        return f"SafetensorsSource({self._path!r}, {len(self._entries)} tensors in {len(self.files)} file(s))"

    def specs(self) -> VariableMap:
        """Names, shapes and dtypes of every tensor, sorted by name, from the headers read at open.

        Example:
            >>> import tempfile
            >>> from safetensors.numpy import save_file
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     save_file({"b": np.zeros(3, "int64"), "a": np.zeros((), "float16")}, f"{tmp}/x.safetensors")
            ...     [(s.name, s.shape, s.dtype) for s in SafetensorsSource(f"{tmp}/x.safetensors").specs().values()]
            [('a', (), 'float16'), ('b', (3,), 'int64')]
        """
        return self._specs

    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Read the named tensors as read-only NumPy arrays (bfloat16 via ml_dtypes), one positional read each.

        Only the files holding the named tensors are opened, and only the bytes of the named tensors are read.

        Args:
            names: tensor names as ``specs()`` lists them; repeats are read once.

        Returns:
            ``{name: array}`` for each distinct name, in the order given.

        Raises:
            SourceError: a name is not in the source; the message names it and the closest names that are.
            CorruptSourceError: a file became shorter than its header says since it was opened.

        Example:
            >>> import tempfile
            >>> from safetensors.numpy import save_file
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     save_file({"w": np.arange(3, dtype="int32")}, f"{tmp}/x.safetensors")
            ...     array = SafetensorsSource(f"{tmp}/x.safetensors").read(["w"])["w"]
            ...     print(array, array.flags.writeable)
            [0 1 2] False
        """
        wanted = check_names(names, self._entries, what=f"safetensors source {self._path!r}", path=self._path)
        by_file: dict[str, list[_Entry]] = {}
        for name in wanted:
            entry = self._entries[name]
            by_file.setdefault(entry.file, []).append(entry)
        arrays: dict[str, np.ndarray] = {}
        for file, entries in by_file.items():
            arrays |= self._read_file(file, entries)
        return {name: arrays[name] for name in wanted}

    def verify(self, names: Sequence[str]) -> None:
        """Check that the named tensors' bytes read in full, through one small reused buffer, keeping none.

        safetensors stores no checksums: what is checked is that every byte of every tensor can be read (a
        file cut short or failing with an I/O error is found here, before anything is assigned).

        Raises:
            SourceError, CorruptSourceError: as ``read``.

        Example:
            >>> import tempfile
            >>> from safetensors.numpy import save_file
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     save_file({"w": np.arange(3, dtype="int32")}, f"{tmp}/x.safetensors")
            ...     SafetensorsSource(f"{tmp}/x.safetensors").verify(["w"])
        """
        wanted = check_names(names, self._entries, what=f"safetensors source {self._path!r}", path=self._path)
        by_file: dict[str, list[_Entry]] = {}
        for name in wanted:
            by_file.setdefault(self._entries[name].file, []).append(self._entries[name])
        buffer = aligned_buffer(VERIFY_CHUNK)
        for file, entries in by_file.items():
            self._with_file(file, entries, lambda handle, entry: _verify_entry(handle, entry, buffer))

    def raw_order(self, name: str) -> str:
        """``"<"``: safetensors stores every tensor little-endian, so ``read_chunks`` reads any of them.

        Raises:
            SourceError: the name is not in the source.

        Example:
            >>> import tempfile
            >>> from safetensors.numpy import save_file
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     save_file({"w": np.arange(3, dtype="int32")}, f"{tmp}/x.safetensors")
            ...     SafetensorsSource(f"{tmp}/x.safetensors").raw_order("w")
            '<'
        """
        check_names([name], self._entries, what=f"safetensors source {self._path!r}", path=self._path)
        return "<"

    def read_chunks(self, name: str, buffer: memoryview) -> Iterator[memoryview]:
        """The tensor's bytes (little-endian, C order) read into ``buffer`` a chunk at a time, as views of it.

        Each view is valid until the next is asked for. The length is checked read by read, as ``read`` does.

        Raises:
            SourceError: the name is not in the source (raised by this call, before any read).
            CorruptSourceError: the file cannot be read, or became shorter than its header says (while iterating).

        Example:
            >>> import tempfile
            >>> from safetensors.numpy import save_file
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     save_file({"w": np.arange(3, dtype="<i2")}, f"{tmp}/x.safetensors")
            ...     source = SafetensorsSource(f"{tmp}/x.safetensors")
            ...     [bytes(chunk) for chunk in source.read_chunks("w", memoryview(bytearray(4)))]
            [b'\\x00\\x00\\x01\\x00', b'\\x02\\x00']
        """
        check_names([name], self._entries, what=f"safetensors source {self._path!r}", path=self._path)
        return _entry_chunks(self._entries[name], buffer)

    def _read_file(self, file: str, entries: list[_Entry]) -> dict[str, np.ndarray]:
        """The arrays of ``entries``, all in ``file``, each read with positional reads into its own buffer."""
        scratch = aligned_buffer(VERIFY_CHUNK)
        return self._with_file(file, entries, lambda handle, entry: _read_entry(handle, entry, scratch))

    @staticmethod
    def _with_file(file: str, entries: list[_Entry], each: Callable[[io.RawIOBase, _Entry], _T]) -> dict[str, _T]:
        """``each(handle, entry)`` for every entry of ``file``, once the file is known to hold them all."""
        try:
            with Path(file).open("rb", buffering=0) as handle:
                size = os.fstat(handle.fileno()).st_size
                short = [entry for entry in entries if entry.end > size]
                if short:
                    raise _changed(file, size, short)
                return {entry.spec.name: each(handle, entry) for entry in entries}
        except OSError as error:
            raise CorruptSourceError(f"cannot read safetensors file {file!r}: {error}", path=file) from error


def _read_entry(handle: io.RawIOBase, entry: _Entry, scratch: np.ndarray) -> np.ndarray:
    """One tensor read from ``handle`` into an aligned buffer (through ``scratch``), as a read-only array.

    The length is checked read by read: the file may become shorter at any moment, and a short read is then a
    CorruptSourceError naming the tensor (with a memory map, the same thing would kill the process with SIGBUS).
    """
    buffer = aligned_buffer(entry.end - entry.begin)
    _fill(handle, entry, memoryview(buffer.data).cast("B"), scratch)
    dtype = little_endian(numpy_dtype(entry.spec.dtype, path=entry.file))
    array = buffer.view(dtype).reshape(entry.spec.shape)
    array.flags.writeable = False
    return array


def _fill(handle: io.RawIOBase, entry: _Entry, destination: memoryview, scratch: np.ndarray) -> None:
    """Copy the entry's bytes into ``destination`` through ``scratch``; CorruptSourceError if the file ends first."""
    done = copy_at(handle, entry.begin, destination, scratch)
    if done < entry.end - entry.begin:
        raise _changed(entry.file, entry.begin + done, [entry])


def _entry_chunks(entry: _Entry, buffer: memoryview) -> Iterator[memoryview]:
    """One tensor's bytes read through ``buffer``, a chunk at a time; CorruptSourceError if the file ends first."""
    try:
        with Path(entry.file).open("rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            if entry.end > size:
                raise _changed(entry.file, size, [entry])
            position = entry.begin
            while position < entry.end:
                want = min(len(buffer), entry.end - position)
                got = read_at(handle, buffer[:want], position)
                if got < want:
                    raise _changed(entry.file, position + got, [entry])
                position += got
                yield buffer[:got]
    except CorruptSourceError:
        raise
    except OSError as error:
        raise CorruptSourceError(f"cannot read safetensors file {entry.file!r}: {error}", path=entry.file) from error


def _verify_entry(handle: io.RawIOBase, entry: _Entry, buffer: np.ndarray) -> None:
    """One tensor's bytes read through ``buffer``; CorruptSourceError if the file ends first."""
    done = scan_at(handle, entry.begin, entry.end - entry.begin, buffer)
    if done < entry.end - entry.begin:
        raise _changed(entry.file, entry.begin + done, [entry])


def _changed(file: str, size: int, short: list[_Entry]) -> CorruptSourceError:
    """The error for tensors that end past the end of a file that became shorter since it was opened."""
    return CorruptSourceError(
        f"safetensors file {file!r} changed since it was opened: it now has {size} bytes but "
        f"{quoted([entry.spec.name for entry in short])} ends at byte {max(e.end for e in short)}; "
        "open it again",
        path=file,
    )


# --- finding the files ----------------------------------------------------------------------------------------------


def _resolve(given: str) -> str:
    """The safetensors file or index that ``given`` names."""
    path = Path(given)
    if not path.exists():
        raise SourceNotFoundError(f"no safetensors file or directory at {given!r}", path=given)
    if not path.is_dir():
        return given
    indexes = files_with_suffix(given, INDEX_SUFFIX)
    if len(indexes) == 1:
        return indexes[0]
    if len(indexes) > 1:
        raise SourceError(
            f"directory {given!r} holds {len(indexes)} safetensors shard indexes ({quoted(_names(indexes))}); "
            "pass the path of the one to use",
            path=given,
        )
    files = files_with_suffix(given, SUFFIX)
    if len(files) == 1:
        return files[0]
    if not files:
        raise SourceError(f"directory {given!r} holds no .safetensors file and no {INDEX_SUFFIX} index", path=given)
    raise SourceError(
        f"directory {given!r} holds {len(files)} .safetensors files ({quoted(_names(files))}) and no "
        f"{INDEX_SUFFIX} index saying how they belong together; pass one file, or the index",
        path=given,
    )


def _names(paths: Sequence[str]) -> list[str]:
    return [Path(path).name for path in paths]


def _check_weight_map(index: str, weight_map: dict[str, str], entries: dict[str, _Entry]) -> None:
    """CorruptSourceError if the index places a tensor in a shard that does not hold it."""
    directory = Path(index).parent
    wrong = [
        name for name, file in weight_map.items() if name not in entries or entries[name].file != str(directory / file)
    ]
    if wrong:
        name = wrong[0]
        found = f"it is in {Path(entries[name].file).name!r}" if name in entries else "no shard holds it"
        raise CorruptSourceError(
            f"safetensors shard index {index!r} places {len(wrong)} tensor(s) where they are not: {quoted(wrong)}; "
            f"the index says {name!r} is in {weight_map[name]!r} but {found}; the index and the shards do not "
            "belong together: download them again",
            path=index,
        )


# --- the header -----------------------------------------------------------------------------------------------------


def read_header(file: str) -> list[_Entry]:
    """Read and check the header of one safetensors file; no tensor data is read.

    Raises:
        SourceError: the file is not safetensors at all, or holds a dtype that is not supported.
        CorruptSourceError: the header is truncated, is not valid JSON, or lies about offsets or sizes.

    Example:
        >>> import tempfile
        >>> from safetensors.numpy import save_file
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_file({"w": np.zeros((2, 2), "float32")}, f"{tmp}/x.safetensors")
        ...     [(entry.spec.name, entry.end - entry.begin) for entry in read_header(f"{tmp}/x.safetensors")]
        [('w', 16)]
    """
    try:
        size = Path(file).stat().st_size
        with Path(file).open("rb") as handle:
            prefix = handle.read(8)
            length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
            text = handle.read(min(length, MAX_HEADER_BYTES)) if length is not None else b""
    except OSError as error:
        if not Path(file).exists():
            raise SourceNotFoundError(f"no safetensors file at {file!r}", path=file) from error
        raise SourceError(f"cannot read safetensors file {file!r}: {error}", path=file) from error
    if length is None or length > MAX_HEADER_BYTES or not text.startswith(b"{"):
        raise SourceError(
            f"{file!r} is not a safetensors file: it does not start with an 8-byte header length and a JSON "
            f"object (first bytes {head(file, 12)!r}, {size} bytes in all)",
            path=file,
        )
    if len(text) < length:
        raise CorruptSourceError(
            f"safetensors file {file!r} is truncated: its header is {length} bytes long but the file has only "
            f"{size} bytes; download or write it again",
            path=file,
        )
    header = _parse_header(file, text)
    data_start = 8 + length
    data_size = size - data_start
    entries = [_entry(file, name, fields, data_start) for name, fields in header.items() if name != METADATA_KEY]
    _check_ranges(file, entries, data_start, data_size)
    return entries


def _parse_header(file: str, text: bytes) -> dict[str, Any]:
    """The header's JSON object; CorruptSourceError if it is not one, or repeats a name."""

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise ValueError(f"name {key!r} appears twice")
            seen[key] = value
        return seen

    try:
        header = parse_json(text.decode("utf-8"), object_pairs_hook=no_repeats)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptSourceError(
            f"safetensors file {file!r} has a damaged header: {error}; download or write it again", path=file
        ) from error
    if not isinstance(header, dict):
        raise CorruptSourceError(f"safetensors file {file!r} has a header that is not a JSON object", path=file)
    return header


def _entry(file: str, name: str, fields: Any, data_start: int) -> _Entry:
    """One header entry, checked field by field."""

    def bad(what: str) -> CorruptSourceError:
        return CorruptSourceError(
            f"safetensors file {file!r} has a damaged header: tensor {name!r} {what} (entry {short_repr(fields)})",
            path=file,
        )

    if not isinstance(fields, dict):
        raise bad("is not described by an object")
    code, shape, offsets = fields.get("dtype"), fields.get("shape"), fields.get("data_offsets")
    if not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise bad("has no valid 'shape' (a list of non-negative integers)")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(at) is int and at >= 0 for at in offsets)):
        raise bad("has no valid 'data_offsets' (two non-negative integers)")
    if not isinstance(code, str):
        raise bad("has no 'dtype'")
    if code not in DTYPES:
        raise SourceError(
            f"safetensors file {file!r}: tensor {name!r} has dtype {code!r}, which weight-mapper does not "
            f"read; supported: {', '.join(DTYPES)}",
            path=file,
        )
    begin, end = offsets
    expected = math.prod(shape) * _ITEMSIZES[code]
    if end - begin != expected:
        raise CorruptSourceError(
            f"safetensors file {file!r} has a header that lies about tensor {name!r}: shape {shape} of {code} "
            f"needs {expected} bytes but its data_offsets [{begin}, {end}] span {end - begin}; "
            "download or write the file again",
            path=file,
        )
    return _Entry(TensorSpec(name, tuple(shape), DTYPES[code]), file, data_start + begin, data_start + end)


def _check_ranges(file: str, entries: list[_Entry], data_start: int, data_size: int) -> None:
    """CorruptSourceError if a tensor lies past the end of the file or two tensors share bytes."""
    past = [entry for entry in entries if entry.end - data_start > data_size]
    if past:
        last = max(past, key=lambda entry: entry.end)
        raise CorruptSourceError(
            f"safetensors file {file!r} is truncated: it has {data_start + data_size} bytes but its header places "
            f"{quoted([entry.spec.name for entry in past])} up to byte {last.end}; download or write it again",
            path=file,
        )
    previous: _Entry | None = None
    for entry in sorted((entry for entry in entries if entry.end > entry.begin), key=lambda e: (e.begin, e.end)):
        if previous is not None and entry.begin < previous.end:
            raise CorruptSourceError(
                f"safetensors file {file!r} has a header that lies about offsets: tensors {previous.spec.name!r} "
                f"(bytes {previous.begin - data_start}..{previous.end - data_start}) and {entry.spec.name!r} "
                f"(bytes {entry.begin - data_start}..{entry.end - data_start}) overlap; download or write it again",
                path=file,
            )
        previous = entry
