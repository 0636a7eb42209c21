"""PyTorch state dicts (``.bin`` / ``.pt`` / ``.pth``, sharded by ``*.bin.index.json``) as a Source; needs torch."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mapper.dtypes import ML_DTYPES
from mapper.errors import CorruptSourceError, SourceError, SourceNotFoundError
from mapper.sources._common import (
    ZIP_MAGICS,
    check_names,
    files_with_suffix,
    head,
    index_weight_map,
    numpy_dtype,
    optional_import,
    shard_files,
    weight_map_suffixes,
    zip_members,
)
from mapper.specs import TensorSpec, VariableMap
from mapper.text import first_line, quoted

SUFFIXES = (".bin", ".pt", ".pth")
INDEX_SUFFIXES = tuple(suffix + ".index.json" for suffix in SUFFIXES)
# The file Hugging Face model directories keep their PyTorch weights in (beside e.g. training_args.bin).
HF_WEIGHTS = "pytorch_model.bin"
# ``torch.save``'s legacy (non-zip) format: a pickle whose first object is this 10-byte magic number.
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# Reinterpreting views for the dtypes NumPy lacks: torch dtype name -> same-width integer dtype in torch.
_VIEW_AS = {"bfloat16": "int16", "float8_e4m3fn": "uint8", "float8_e5m2": "uint8"}


def _conversion_hint(path: str) -> str:
    return (
        f'; or convert it to safetensors where torch is installed: python -c "import torch; from safetensors.torch '
        f"import save_file; save_file(torch.load({path!r}, weights_only=True), 'model.safetensors')\" "
        "(safetensors.torch.save_model if tensors share memory)"
    )


def is_torch_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds PyTorch weights, from contents: a ``torch.save`` zip (``*/data.pkl``) or legacy pickle.

    Also true for a ``*.bin.index.json`` shard index and for a directory holding one, or holding
    ``pytorch_model.bin``, or exactly one ``.bin`` / ``.pt`` / ``.pth`` file that is a PyTorch file. torch is
    not imported.

    Example:
        >>> import tempfile
        >>> import torch
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     torch.save({"w": torch.zeros(2)}, f"{tmp}/w.pt")
        ...     _ = Path(tmp, "x.bin").write_bytes(b"\\x00" * 16)
        ...     is_torch_file(f"{tmp}/w.pt"), is_torch_file(f"{tmp}/x.bin")
        (True, False)
    """
    text = os.fspath(path)
    if Path(text).is_dir():
        try:
            _resolve(text)
        except SourceError:
            return False
        return True
    if text.endswith(".index.json"):
        suffixes = weight_map_suffixes(text)
        return bool(suffixes) and suffixes is not None and suffixes <= set(SUFFIXES)
    members = zip_members(text)
    if members is not None:
        return any(member == "data.pkl" or member.endswith("/data.pkl") for member in members)
    start = head(text, 2 + len(_LEGACY_MAGIC))
    return start[:1] == b"\x80" and start[2:] == _LEGACY_MAGIC


class TorchSource:
    """The tensors of a PyTorch state dict, loaded with ``torch.load(weights_only=True, mmap=True)``.

    ``path`` may be a file written by ``torch.save`` (``pytorch_model.bin``, ``*.pt``, ``*.pth``), a Hugging Face
    ``*.bin.index.json`` shard index, or a directory holding such an index, or ``pytorch_model.bin``, or exactly
    one ``.bin`` / ``.pt`` / ``.pth`` file. Files are only ever loaded with ``weights_only=True``: a file that
    needs arbitrary classes to unpickle is refused, not executed. Files in the zip format (the default since
    PyTorch 1.6) are memory-mapped, so opening reads no tensor data; legacy-format files are read whole.

    Names are the state dict's keys. A nested dict (``{"state_dict": {...}}``, as Lightning writes) is flattened
    with ``.`` (``state_dict.encoder.weight``) and lists by index; values that are not tensors (an ``epoch``
    number, a config string) are left out and listed in ``skipped``.

    ``read`` returns NumPy arrays that share memory with the mapped file (private, copy-on-write: writing to them
    never changes the file); bfloat16 and float8 come as ml_dtypes arrays.

    Attributes:
        files: the files loaded, shards in index order.
        index: the shard index, or None.
        skipped: names of the non-tensor values left out.
        description: the path given, and the file or index it resolved to when that differs.

    Raises:
        SourceNotFoundError: nothing at ``path``.
        SourceError: torch is not installed (the message says how to install it or convert the file), the file
            needs arbitrary objects to unpickle, or it holds no tensors.
        CorruptSourceError: torch cannot read the file (truncated, damaged), or the index names a missing shard.

    Example:
        >>> import tempfile
        >>> import torch
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     torch.save({"fc.weight": torch.ones(2, 3), "epoch": 3}, f"{tmp}/w.pt")
        ...     source = TorchSource(f"{tmp}/w.pt")
        ...     print(source.specs()["fc.weight"], source.read(["fc.weight"])["fc.weight"].sum(), source.skipped)
        TensorSpec(name='fc.weight', shape=(2, 3), dtype='float32') 6.0 ('epoch',)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        given = os.fspath(path)
        resolved = _resolve(given)
        self.description: str = given if given == resolved else f"{given} -> {resolved}"
        if not resolved.endswith(".index.json"):
            _check_contents(resolved)
        torch = optional_import(
            "torch",
            purpose=f"reading PyTorch file {resolved!r}",
            path=resolved,
            hint=" (CPU-only build: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
            + _conversion_hint(resolved),
        )
        self.index: str | None = None
        if resolved.endswith(".index.json"):
            self.index = resolved
            weight_map = index_weight_map(resolved, what="PyTorch")
            self.files: tuple[str, ...] = tuple(shard_files(resolved, weight_map, what="PyTorch"))
        else:
            self.files = (resolved,)
        tensors: dict[str, Any] = {}
        origin: dict[str, str] = {}
        skipped: list[str] = []
        for file in self.files:
            if file != resolved:
                _check_contents(file)
            loaded = _load(torch, file)
            if not isinstance(loaded, Mapping):
                raise SourceError(
                    f"PyTorch file {file!r} holds a {type(loaded).__name__}, not a state dict of named tensors; "
                    "save model.state_dict() (or a dict of tensors) instead",
                    path=file,
                )
            for name, value in _flatten(loaded):
                if not isinstance(value, torch.Tensor):
                    skipped.append(name)
                    continue
                if name in tensors:
                    raise CorruptSourceError(
                        f"tensor {name!r} is in two shards of {resolved!r}: {Path(origin[name]).name!r} and "
                        f"{Path(file).name!r}; the shards do not belong together: download them again",
                        path=resolved,
                    )
                tensors[name] = value
                origin[name] = file
        if not tensors:
            raise SourceError(
                f"PyTorch file {resolved!r} holds no tensors"
                + (f" (only {quoted(skipped)})" if skipped else "")
                + "; expected a state dict such as model.state_dict() saved with torch.save",
                path=resolved,
            )
        self.skipped: tuple[str, ...] = tuple(skipped)
        self._torch = torch
        self._tensors = tensors
        self._path = resolved
        self._specs = VariableMap(
            (
                TensorSpec(name, tuple(int(dim) for dim in tensor.shape), _dtype_name(tensor))
                for name, tensor in tensors.items()
            ),
            description=resolved,
        )

    checkpoint_prefix: str | None = None  # not a TF checkpoint

    def input_files(self) -> tuple[Path, ...]:
        """The shard index, if there is one, and every PyTorch file."""
        return tuple(Path(file) for file in (*((self.index,) if self.index else ()), *self.files))

    def __repr__(self) -> str:
        return f"TorchSource({self._path!r}, {len(self._tensors)} tensors in {len(self.files)} file(s))"

    def specs(self) -> VariableMap:
        """Names, shapes and dtypes of every tensor, in the state dict's order.

        Example:
            >>> import tempfile
            >>> import torch
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     torch.save({"b": torch.zeros(3, dtype=torch.bfloat16), "a": torch.zeros((), dtype=torch.int64)}, f"{tmp}/w.pt")
            ...     [(s.name, s.shape, s.dtype) for s in TorchSource(f"{tmp}/w.pt").specs().values()]
            [('b', (3,), 'bfloat16'), ('a', (), 'int64')]
        """
        return self._specs

    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The named tensors as NumPy arrays sharing memory with the mapped file (bfloat16 via ml_dtypes).

        Args:
            names: names as ``specs()`` lists them; repeats are read once.

        Returns:
            ``{name: array}`` for each distinct name, in the order given.

        Raises:
            SourceError: a name is not in the state dict, or its tensor cannot become a NumPy array (a sparse or
                quantized tensor); the message names it.

        Example:
            >>> import tempfile
            >>> import torch
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     torch.save({"w": torch.arange(3)}, f"{tmp}/w.pt")
            ...     TorchSource(f"{tmp}/w.pt").read(["w"])
            {'w': array([0, 1, 2])}
        """
        wanted = check_names(names, self._tensors, what=f"PyTorch source {self._path!r}", path=self._path)
        return {name: self._to_numpy(name) for name in wanted}

    def _to_numpy(self, name: str) -> np.ndarray:
        """One tensor as a NumPy array, without copying where NumPy can view it."""
        tensor = self._tensors[name].detach()
        dtype = self._specs[name].dtype
        try:
            if tensor.layout != self._torch.strided:
                raise TypeError(f"its layout is {tensor.layout}, not dense")
            if dtype in ML_DTYPES:
                raw = tensor.view(getattr(self._torch, _VIEW_AS[dtype])).numpy()
                return np.asarray(raw.view(numpy_dtype(dtype, path=self._path)))
            return np.asarray(tensor.numpy())
        except (TypeError, RuntimeError) as error:
            raise SourceError(
                f"tensor {name!r} ({dtype}) in PyTorch source {self._path!r} cannot be read as a NumPy array: "
                f"{error}; convert it in PyTorch first (e.g. to float32 and dense)",
                path=self._path,
            ) from error


def _resolve(given: str) -> str:
    """The PyTorch file or shard index that ``given`` names."""
    path = Path(given)
    if not path.exists():
        raise SourceNotFoundError(f"no PyTorch file or directory at {given!r}", path=given)
    if not path.is_dir():
        return given
    indexes = files_with_suffix(given, *INDEX_SUFFIXES)
    if len(indexes) == 1:
        return indexes[0]
    if len(indexes) > 1:
        raise SourceError(
            f"directory {given!r} holds {len(indexes)} PyTorch shard indexes "
            f"({quoted([Path(index).name for index in indexes])}); pass the path of the one to use",
            path=given,
        )
    if Path(given, HF_WEIGHTS).is_file():
        return str(Path(given, HF_WEIGHTS))
    files = [file for file in files_with_suffix(given, *SUFFIXES) if is_torch_file(file)]
    if len(files) == 1:
        return files[0]
    found = f"{len(files)} ({quoted([Path(file).name for file in files])})" if files else "no"
    raise SourceError(
        f"directory {given!r} holds {found} PyTorch files and no {HF_WEIGHTS} or *.bin.index.json; pass one file",
        path=given,
    )


def _check_contents(file: str) -> None:
    """SourceError unless ``file`` is a ``torch.save`` zip archive or legacy pickle; CorruptSourceError if damaged."""
    if is_torch_file(file):
        return
    start = head(file, 8)
    if start[:4] in ZIP_MAGICS:
        members = zip_members(file)
        if members is None:
            raise CorruptSourceError(
                f"PyTorch file {file!r} is damaged or truncated: its zip directory cannot be read; "
                "download or save it again",
                path=file,
            )
        raise SourceError(
            f"{file!r} is a zip archive but not a PyTorch file: it has no '*/data.pkl' member "
            f"(it holds {quoted(members)})",
            path=file,
        )
    raise SourceError(
        f"{file!r} is not a PyTorch file: it is neither a torch.save zip archive nor a legacy torch pickle "
        f"(first bytes {start!r})",
        path=file,
    )


def _load(torch: Any, file: str) -> Any:
    """``torch.load`` of one file on the CPU with ``weights_only=True``, memory-mapped when the format allows."""
    zipped = zip_members(file) is not None
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as error:
        reason = next((line.strip() for line in str(error).splitlines() if "Unsupported" in line), "")
        if "Unsupported global" not in reason:  # e.g. "Unsupported operand 174": the pickle itself is damaged
            raise CorruptSourceError(
                f"cannot load PyTorch file {file!r}: its pickle is damaged ({reason or first_line(error)}); "
                "download or save it again",
                path=file,
            ) from error
        raise SourceError(
            f"PyTorch file {file!r} holds more than tensors: torch.load(weights_only=True) rejects it"
            + f" ({reason})"
            + "; weight-mapper refuses to unpickle arbitrary objects, which could run code. If you trust the "
            "file, save just its tensors where it was made: torch.save(model.state_dict(), 'weights.pt'), or "
            "safetensors.torch.save_file(state_dict, 'model.safetensors')",
            path=file,
        ) from error
    except Exception as error:  # torch reports damaged files with RuntimeError, EOFError, ValueError and more
        if not Path(file).is_file():
            raise SourceNotFoundError(f"no PyTorch file at {file!r}", path=file) from error
        raise CorruptSourceError(
            f"cannot load PyTorch file {file!r}: {type(error).__name__}: {first_line(error)}; it is truncated or "
            "damaged: download or save it again",
            path=file,
        ) from error


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(name, leaf)`` pairs of nested mappings and lists, names joined with ``.``."""
    if isinstance(value, Mapping):
        items: Iterator[tuple[Any, Any]] = iter(value.items())
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        yield prefix, value
        return
    for key, item in items:
        yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))


def _dtype_name(tensor: Any) -> str:
    """``torch.float32`` -> ``float32``."""
    return str(tensor.dtype).removeprefix("torch.")
