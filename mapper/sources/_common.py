"""Helpers the file-format sources share: name lists in messages, shard indexes, optional imports, dtypes."""

from __future__ import annotations

import difflib
import importlib
import json
import os
import sys
import zipfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mapper.dtypes import ML_DTYPES
from mapper.dtypes import numpy_dtype as _numpy_dtype
from mapper.errors import CorruptSourceError, SourceError
from mapper.text import quoted

# Index files (``model.safetensors.index.json``) larger than this are not shard indexes.
MAX_INDEX_BYTES = 64 * 1024 * 1024
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


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
        document = json.loads(Path(path).read_text(encoding="utf-8"))
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
    """The shard files an index names, in first-use order, resolved beside it; CorruptSourceError if one is missing.

    Example:
        >>> shard_files("/no/such/x.index.json", {}, what="safetensors")
        []
    """
    directory = Path(index).parent
    shards = [str(directory / name) for name in dict.fromkeys(weight_map.values())]
    missing = [shard for shard in shards if not Path(shard).is_file()]
    if missing:
        first = Path(missing[0]).name
        inside = [name for name, file in weight_map.items() if file == first]
        raise CorruptSourceError(
            f"{what} shard index {index!r} names {len(missing)} shard file(s) that do not exist: "
            f"{quoted([Path(shard).name for shard in missing])} (in {str(directory)!r}; {first!r} should hold "
            f"{quoted(inside, 3)}); download or copy every shard next to the index",
            path=index,
        )
    return shards


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
