"""Helpers the file-format sources share: name lists in messages, shard indexes, optional imports, dtypes."""

from __future__ import annotations

import difflib
import importlib
import json
import os
import reprlib
import sys
import zipfile
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from mapper.dtypes import ML_DTYPES
from mapper.dtypes import numpy_dtype as _numpy_dtype
from mapper.errors import CorruptSourceError, SourceError
from mapper.text import quoted

# Index files (``model.safetensors.index.json``) larger than this are not shard indexes.
MAX_INDEX_BYTES = 64 * 1024 * 1024
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# Header entries in messages: enough to recognise one, never a whole (possibly huge or deeply nested) value.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple = 3, 8, 8, 8
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 80, 80, 40


def check_names(names: Sequence[str], known: Collection[str], *, what: str, path: str) -> list[str]:
    """The distinct names in ``names`` in order; SourceError naming the unknown ones and the closest known names.

    Args:
        names: names asked for; repeats are dropped.
        known: every name the source has.
        what: how the message names the source, e.g. ``"safetensors file 'x.safetensors'"``.
        path: the path the error carries.

    Example:
        >>> check_names(["w", "w"], {"w", "b"}, what="file 'x'", path="x")
        ['w']
        >>> check_names(["kernal"], {"kernel"}, what="file 'x'", path="x")
        Traceback (most recent call last):
        mapper.errors.SourceError: file 'x' has no tensor 'kernal'; did you mean 'kernel'?
    """
    wanted = list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in known]
    if not unknown:
        return wanted
    message = f"{what} has no tensor {quoted(unknown)}"
    close = difflib.get_close_matches(unknown[0], list(known), n=3)
    if close:
        message += f"; did you mean {' or '.join(map(repr, close))}?"
    else:
        message += f"; it has {len(known)} tensors, list them with specs()"
    raise SourceError(message, path=path)


def head(path: str, size: int) -> bytes:
    """The first ``size`` bytes of the file at ``path``; b"" if it is not a readable file.

    Example:
        >>> head("/no/such/file", 8)
        b''
    """
    try:
        with Path(path).open("rb") as file:
            return file.read(size)
    except OSError:
        return b""


def zip_members(path: str) -> list[str] | None:
    """The member names of the zip archive at ``path`` (its central directory only), or None if it is not one.

    Example:
        >>> zip_members("/no/such/file.npz") is None
        True
    """
    if head(path, 4) not in ZIP_MAGICS:
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None


def parse_json(text: str | bytes, *, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """``json.loads`` that reports nesting too deep to parse (RecursionError) as a ValueError.

    Example:
        >>> parse_json('{"a": [1]}')
        {'a': [1]}
        >>> parse_json("[" * 100_000 + "]" * 100_000)
        Traceback (most recent call last):
        ValueError: it nests arrays or objects too deeply to parse
    """
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise ValueError("it nests arrays or objects too deeply to parse") from None


def short_repr(value: Any) -> str:
    """``repr(value)``, shortened where it is long or deeply nested, for messages about damaged files.

    Example:
        >>> short_repr({"dtype": "F32", "shape": [2, 3]})
        "{'dtype': 'F32', 'shape': [2, 3]}"
        >>> short_repr([[[[[1]]]]])
        '[[[[...]]]]'
    """
    return _SHORT.repr(value)


def index_weight_map(path: str, *, what: str) -> dict[str, str]:
    """The ``weight_map`` of a Hugging Face shard index (``*.index.json``): ``{tensor name: shard file name}``.

    Args:
        path: the index file.
        what: what the shards are, for messages (``"safetensors"``).

    Raises:
        CorruptSourceError: the file is not JSON, or has no ``weight_map`` of names to file names.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     index = Path(tmp, "model.safetensors.index.json")
        ...     _ = index.write_text('{"metadata": {}, "weight_map": {"w": "model-1.safetensors"}}')
        ...     index_weight_map(str(index), what="safetensors")
        {'w': 'model-1.safetensors'}
    """
    try:
        if Path(path).stat().st_size > MAX_INDEX_BYTES:
            raise ValueError(f"it has more than {MAX_INDEX_BYTES} bytes")
        document = parse_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CorruptSourceError(
            f"cannot read {what} shard index {path!r}: {error}; it should be the JSON file that names each "
            "tensor's shard (write it again, or pass one shard file instead)",
            path=path,
        ) from error
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(name, str) and isinstance(file, str) and file for name, file in weight_map.items()
    ):
        raise CorruptSourceError(
            f"{what} shard index {path!r} has no 'weight_map' object of tensor names to shard file names "
            f"(found top-level keys {quoted(sorted(document)) if isinstance(document, dict) else 'none'})",
            path=path,
        )
    return dict(weight_map)


def weight_map_suffixes(path: str) -> set[str] | None:
    """The file suffixes the shards of the index at ``path`` have (``{".safetensors"}``); None if it is no index.

    Example:
        >>> weight_map_suffixes("/no/such/model.safetensors.index.json") is None
        True
    """
    try:
        weight_map = index_weight_map(path, what="shard")
    except CorruptSourceError:
        return None
    return {Path(file).suffix for file in weight_map.values()}


def shard_files(index: str, weight_map: Mapping[str, str], *, what: str) -> list[str]:
    """The shard files an index names, in first-use order, beside it; every name is checked before any is opened.

    A shard name must be a plain relative name inside the index's directory (see ``shard_path``).

    Raises:
        SourceError: a shard name leaves the index's directory; nothing has been opened.
        CorruptSourceError: a shard is missing (or is a symbolic link to nothing).

    Example:
        >>> shard_files("/no/such/x.index.json", {}, what="safetensors")
        []
        >>> shard_files("/models/x.index.json", {"w": "../../etc/passwd"}, what="safetensors")
        Traceback (most recent call last):
        mapper.errors.SourceError: safetensors shard index '/models/x.index.json' names shard '../../etc/passwd', which ...
    """
    directory = Path(index).parent
    shards = [shard_path(index, name, what=what) for name in dict.fromkeys(weight_map.values())]
    missing = [shard for shard in shards if not Path(shard).is_file()]
    if missing:
        first = Path(missing[0]).name
        inside = [name for name, file in weight_map.items() if file == first]
        dangling = [Path(shard).name for shard in missing if Path(shard).is_symlink()]
        raise CorruptSourceError(
            f"{what} shard index {index!r} names {len(missing)} shard file(s) that do not exist: "
            f"{quoted([Path(shard).name for shard in missing])} (in {str(directory)!r}; {first!r} should hold "
            f"{quoted(inside, 3)})"
            + (f"; {quoted(dangling)} are symbolic links to files that do not exist" if dangling else "")
            + "; download or copy every shard next to the index",
            path=index,
        )
    return shards


def shard_path(index: str, name: str, *, what: str) -> str:
    """The path of the shard ``name`` of ``index``; SourceError unless it stays inside the index's directory.

    ``name`` must be relative, without ``..`` or a drive, and after resolving symbolic links the file must still
    lie inside the index's directory, so that an index can never make a source read a file the user did not name.
    One layout is allowed to leave it: the Hugging Face hub cache, whose ``snapshots/<revision>/`` files are
    links into the same repository's ``blobs/`` directory (the hub writes those links, not the repository).

    Example:
        >>> shard_path("/models/bert/model.safetensors.index.json", "model-1.safetensors", what="safetensors")
        '/models/bert/model-1.safetensors'
        >>> shard_path("/models/bert/model.safetensors.index.json", "/tmp/x.safetensors", what="safetensors")
        Traceback (most recent call last):
        mapper.errors.SourceError: safetensors shard index '/models/bert/model.safetensors.index.json' names shard ...
    """
    directory = Path(index).parent
    windows = PureWindowsPath(name)
    if (
        PurePosixPath(name).is_absolute()
        or windows.is_absolute()
        or windows.drive
        or ".." in windows.parts
        or "\0" in name
    ):
        raise _outside(index, name, what, "it is not a plain relative file name inside the index's directory")
    path = directory / name
    try:
        real, inside = path.resolve(), directory.resolve()
    except (OSError, RuntimeError) as error:  # a symbolic link loop
        raise _outside(index, name, what, f"its symbolic links cannot be resolved ({error})") from error
    if not (real.is_relative_to(inside) or _in_hub_blobs(inside, real)):
        raise _outside(index, name, what, f"it is a symbolic link to {str(real)!r}, outside {str(inside)!r}")
    return str(path)


def _in_hub_blobs(directory: Path, real: Path) -> bool:
    """Whether ``real`` is a blob of the Hugging Face cache repository whose snapshot ``directory`` is."""
    return directory.parent.name == "snapshots" and real.parent == directory.parent.parent / "blobs"


def _outside(index: str, name: str, what: str, why: str) -> SourceError:
    return SourceError(
        f"{what} shard index {index!r} names shard {name!r}, which weight-mapper refuses to read: {why}; "
        "every shard must be a file in the index's own directory (nothing was opened)",
        path=index,
    )


def files_with_suffix(directory: str, *suffixes: str) -> list[str]:
    """The files directly in ``directory`` whose names end with one of ``suffixes``, sorted; [] if unreadable.

    Example:
        >>> files_with_suffix("/no/such/dir", ".safetensors")
        []
    """
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    return sorted(entry.path for entry in entries if entry.is_file() and entry.name.endswith(suffixes))


def optional_import(module: str, *, purpose: str, path: str, hint: str = "") -> Any:
    """Import ``module`` or raise SourceError saying what needs it and how to install it.

    Args:
        module: the module to import.
        purpose: what needs it, e.g. ``"reading bfloat16 tensors"``.
        path: the source the error is about.
        hint: extra advice appended to the message.

    Example:
        >>> optional_import("numpy", purpose="reading", path="x").__name__
        'numpy'
        >>> optional_import("no_such_module", purpose="reading 'x'", path="x")
        Traceback (most recent call last):
        mapper.errors.SourceError: reading 'x' needs the Python package 'no_such_module', which is not installed: ...
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = {"ml_dtypes": "ml-dtypes"}.get(module, module)
        raise SourceError(
            f"{purpose} needs the Python package {module!r}, which is not installed: pip install {package} "
            f"(or pip install 'weight-mapper[formats]'){hint}",
            path=path,
        ) from error


def numpy_dtype(name: str, *, path: str) -> np.dtype[Any]:
    """The NumPy dtype for a dtype name, with bfloat16 and float8 from ml_dtypes (SourceError if it is missing).

    Example:
        >>> numpy_dtype("float16", path="x"), numpy_dtype("bfloat16", path="x")
        (dtype('float16'), dtype(bfloat16))
    """
    if name in ML_DTYPES:  # checked first, so that a missing ml_dtypes is a SourceError naming the file
        optional_import("ml_dtypes", purpose=f"reading {name} tensors from {path!r}", path=path)
    return _numpy_dtype(name)


def little_endian(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """``dtype`` with little-endian byte order where byte order applies (files store little-endian data).

    Example:
        >>> little_endian(np.dtype("float32")).str
        '<f4'
    """
    if dtype.kind in "biufc" and dtype.itemsize > 1 and sys.byteorder != "little":
        return dtype.newbyteorder("<")
    return dtype


# Tensors are read into buffers aligned like this, as a memory map's pages would be (SIMD loads, zero-copy handoff).
ALIGNMENT = 64


def aligned_buffer(nbytes: int) -> np.ndarray:
    """A new uint8 buffer of ``nbytes`` whose first byte is ``ALIGNMENT``-aligned.

    Example:
        >>> buffer = aligned_buffer(10)
        >>> buffer.nbytes, buffer.ctypes.data % ALIGNMENT
        (10, 0)
    """
    storage = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    start = -storage.ctypes.data % ALIGNMENT
    return storage[start : start + nbytes]


def read_at(handle: Any, view: memoryview, offset: int) -> int:
    """Fill ``view`` from an unbuffered file at ``offset`` with positional reads; the count read (less at its end).

    The file may become shorter at any moment: a short count is the caller's to turn into a named error (with a
    memory map, the same thing would kill the process with SIGBUS).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryFile() as file:
        ...     _ = file.write(b"0123456789")
        ...     file.flush()
        ...     buffer = bytearray(4)
        ...     read_at(file, memoryview(buffer), 8), bytes(buffer[:2])
        (2, b'89')
    """
    done = 0
    preadv = getattr(os, "preadv", None)
    if preadv is None:  # Windows: the file position is ours alone (the handle is opened per read call)
        handle.seek(offset)
    while done < len(view):
        count = (
            preadv(handle.fileno(), [view[done:]], offset + done)
            if preadv is not None
            else handle.readinto(view[done:])
        )
        if not count:
            break
        done += count
    return done


# Reads go through one buffer of this size, reused: small enough to stay in the core's L2 cache. Measured on the
# 2-core VM, 418 MiB from the page cache: 0.06 s through a 128 KiB buffer, 0.27-0.32 s through one of 256 KiB or
# more or straight into a tensor-sized buffer (the kernel's copy is slow into lines not in cache); through this
# buffer and then NumPy's copy into the tensor's buffer, 0.10 s.
VERIFY_CHUNK = 128 * 2**10


def scan_at(
    handle: Any, offset: int, nbytes: int, buffer: np.ndarray, each: Callable[[memoryview], None] | None = None
) -> int:
    """Read ``nbytes`` at ``offset`` through ``buffer``, a chunk at a time, calling ``each`` (if given) on every chunk.

    Returns the count read: less than ``nbytes`` if the file ends first (the caller names the error).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryFile() as file:
        ...     _ = file.write(b"0123456789")
        ...     file.flush()
        ...     chunks = []
        ...     scan_at(file, 2, 20, np.empty(3, np.uint8), lambda chunk: chunks.append(bytes(chunk))), chunks
        (8, [b'234', b'567', b'89'])
    """
    view = memoryview(buffer.data).cast("B")
    done = 0
    while done < nbytes:
        want = min(len(view), nbytes - done)
        got = read_at(handle, view[:want], offset + done)
        if got and each is not None:
            each(view[:got])
        done += got
        if got < want:
            break
    return done


def copy_at(
    handle: Any,
    offset: int,
    destination: memoryview,
    scratch: np.ndarray,
    each: Callable[[memoryview], None] | None = None,
) -> int:
    """Fill ``destination`` (bytes) from the file at ``offset`` through ``scratch``, calling ``each`` on every chunk.

    Faster than one positional read straight into a large destination (see ``VERIFY_CHUNK``), and ``each`` (a
    checksum) sees every chunk while it is still in cache. Returns the count copied: less than the destination's
    length if the file ends first (the caller names the error).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryFile() as file:
        ...     _ = file.write(b"0123456789")
        ...     file.flush()
        ...     target = bytearray(6)
        ...     copy_at(file, 3, memoryview(target), np.empty(4, np.uint8)), bytes(target)
        (6, b'345678')
    """
    done = 0
    total = len(destination)

    def land(chunk: memoryview) -> None:
        nonlocal done
        if each is not None:
            each(chunk)
        destination[done : done + len(chunk)] = chunk
        done += len(chunk)

    scan_at(handle, offset, total, scratch, land)
    return done


def writable_bytes(array: Any) -> memoryview:
    """The memory of a writable C-contiguous array as a flat byte view, without a copy; ValueError if it is not one.

    Example:
        >>> array = np.zeros(2, "float32")
        >>> view = writable_bytes(array)
        >>> view[:4] = np.float32(1.5).tobytes(); len(view), array.tolist()
        (8, [1.5, 0.0])
    """
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous or not array.flags.writeable:
        raise ValueError("the destination must be a writable, C-contiguous NumPy array")
    return array.reshape(-1).view(np.uint8).data
