"""PyTorch state dicts (``.bin`` / ``.pt`` / ``.pth``, sharded by ``*.bin.index.json``) as a Source; needs torch."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

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
from mapper.text import quoted

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

    ``read`` returns NumPy arrays copied out of the mapped file (bfloat16 and float8 as ml_dtypes arrays), after
    checking that the file is still the one opened (same size, modification time and inode): a file changed or
    truncated since opening is a CorruptSourceError naming the file and the tensor, not a crash (SIGBUS).

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
        identities: dict[str, tuple[int, ...]] = {}
        for file in self.files:
            if file != resolved:
                _check_contents(file)
            loaded = _load(torch, file)
            identities[file] = _identity(file)
            if not isinstance(loaded, Mapping):
                raise SourceError(
                    f"PyTorch file {file!r} holds a {type(loaded).__name__}, not a state dict of named tensors; "
                    "save model.state_dict() (or a dict of tensors) instead",
                    path=file,
                )
            for name, value in _flatten(loaded, file=file):
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
        self._origin = origin
        self._identities = identities
        self._path = resolved
        self._specs = VariableMap(
            (
                TensorSpec(name, tuple(int(dim) for dim in tensor.shape), _dtype_name(tensor))
                for name, tensor in tensors.items()
            ),
            description=resolved,
        )

    checkpoint_prefix: str | None = None  # not a TF checkpoint
    hands_over_reads = False  # arrays copied out of torch's map are not aligned for a zero-copy hand-over

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
        """The named tensors as NumPy arrays (bfloat16 via ml_dtypes), copied out after checking each file is unchanged.

        Args:
            names: names as ``specs()`` lists them; repeats are read once.

        Returns:
            ``{name: array}`` for each distinct name, in the order given.

        Raises:
            SourceError: a name is not in the state dict, or its tensor cannot become a NumPy array (a sparse or
                quantized tensor); the message names it.
            CorruptSourceError: the file holding a named tensor changed since the source was opened.

        Example:
            >>> import tempfile
            >>> import torch
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     torch.save({"w": torch.arange(3)}, f"{tmp}/w.pt")
            ...     TorchSource(f"{tmp}/w.pt").read(["w"])
            {'w': array([0, 1, 2])}
        """
        wanted = check_names(names, self._tensors, what=f"PyTorch source {self._path!r}", path=self._path)
        arrays = {}
        for name in wanted:
            self._check_unchanged(name)
            arrays[name] = self._to_numpy(name)
        return arrays

    def _check_unchanged(self, name: str) -> None:
        """CorruptSourceError if the file holding ``name`` is not the file opened (size, mtime, inode, device).

        Zip-format files are memory-mapped by torch, and touching a page past the end of a file that has shrunk
        kills the process with SIGBUS, which no handler can turn into an error. Loading without a map would hold
        the whole checkpoint in memory. So the file is checked right before each tensor is touched, and the tensor
        is copied out of the map at once (``_to_numpy``), so that no array handed out depends on the map later.
        What this cannot close is a truncation that races the copy of that one tensor itself.
        """
        file = self._origin[name]
        try:
            now: tuple[int, ...] | None = _identity(file)
        except OSError:
            now = None
        if now != self._identities[file]:
            raise CorruptSourceError(
                f"PyTorch file {file!r} changed since it was opened ("
                + _change(self._identities[file], now)
                + f"), so tensor {name!r} is not read from it; open it again",
                path=file,
            )

    def _to_numpy(self, name: str) -> np.ndarray:
        """One tensor as a NumPy array of its own, copied out of the file's memory map."""
        tensor = self._tensors[name].detach()
        dtype = self._specs[name].dtype
        try:
            if tensor.layout != self._torch.strided:
                raise TypeError(f"its layout is {tensor.layout}, not dense")
            if dtype in ML_DTYPES:
                raw = tensor.view(getattr(self._torch, _VIEW_AS[dtype])).numpy()
                return np.array(raw.view(numpy_dtype(dtype, path=self._path)))
            return np.array(tensor.numpy())
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


def _identity(file: str) -> tuple[int, ...]:
    """What tells a file from a changed one: its size, modification time, inode and device."""
    stat = Path(file).stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev


def _change(before: tuple[int, ...], now: tuple[int, ...] | None) -> str:
    """How a file's identity changed, for messages."""
    if now is None:
        return "it can no longer be found"
    if now[0] != before[0]:
        return f"it had {before[0]} bytes and now has {now[0]}"
    return "it was rewritten or replaced"


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
        reason = _torch_reason(error)
        if not _NEEDS_CODE.search(reason):  # e.g. "Unsupported operand 174": the pickle itself is damaged
            raise CorruptSourceError(
                f"cannot load PyTorch file {file!r}: its pickle is damaged ({reason}); download or save it again",
                path=file,
            ) from error
        # Not damaged: well formed, but it asks for objects only code can build. torch's own advice (retry with
        # weights_only=False, or allowlist the global) is exactly what must not be done with a file from elsewhere.
        raise SourceError(
            f"PyTorch file {file!r} needs code execution to load: torch.load(weights_only=True) rejects it "
            f"({reason}). weight-mapper never runs code from a file (it refuses to unpickle arbitrary objects). "
            "To convert it safely, load it in an environment you trust and save only its tensors: "
            "torch.save(model.state_dict(), 'weights.pt'), or safetensors.torch.save_file(state_dict, "
            "'model.safetensors')",
            path=file,
        ) from error
    except Exception as error:  # torch reports damaged files with RuntimeError, EOFError, ValueError and more
        if not Path(file).is_file():
            raise SourceNotFoundError(f"no PyTorch file at {file!r}", path=file) from error
        raise CorruptSourceError(
            f"cannot load PyTorch file {file!r}: {type(error).__name__}: {_torch_reason(error)}; it is truncated "
            "or damaged: download or save it again",
            path=file,
        ) from error


# What torch's weights-only unpickler says when a well-formed pickle asks for more than tensors and containers.
_NEEDS_CODE = re.compile(
    r"unsupported GLOBAL|Unsupported global|Can only (?:create new object|build)|Trying to call reduce|"
    r"must be imported to load",
    re.IGNORECASE,
)
# torch's boilerplate around the reason, which advises weights_only=False or allowlisting the global.
_TORCH_ADVICE = re.compile(r"Weights only load failed|Check the documentation of torch\.load|weights_only\s*=\s*False")


def _torch_reason(error: BaseException) -> str:
    """The line of a torch error that says what is wrong, without torch's advice to load it unsafely."""
    lines = [line.strip() for line in str(error).splitlines()]
    useful = [line for line in lines if line and not _TORCH_ADVICE.search(line)]
    reason = next((line for line in useful if _NEEDS_CODE.search(line)), useful[0] if useful else "")
    return reason.split(" Please use ", 1)[0] or type(error).__name__


# More names than this in one file is a hostile pickle (shared lists nested to blow up), not a state dict.
MAX_NAMES = 10_000_000
_END = object()


def _children(value: Any) -> Iterator[tuple[Any, Any]] | None:
    """The ``(key, item)`` pairs of a mapping or a list; None for a leaf."""
    if isinstance(value, Mapping):
        return iter(value.items())
    if isinstance(value, (list, tuple)):
        return enumerate(value)
    return None


def _flatten(value: Any, *, file: str) -> Iterator[tuple[str, Any]]:
    """``(name, leaf)`` pairs of nested mappings and lists, names joined with ``.``, depth first.

    Iterative, so that deep nesting cannot exhaust the stack; a list or dict that holds itself is a SourceError.
    """
    top = _children(value)
    if top is None:
        yield "", value
        return
    stack: list[tuple[str, Iterator[tuple[Any, Any]], int]] = [("", top, id(value))]
    open_ids = {id(value)}
    for _ in range(MAX_NAMES):
        if not stack:
            return
        prefix, items, ident = stack[-1]
        item = next(items, _END)
        if item is _END:
            stack.pop()
            open_ids.discard(ident)
            continue
        key, child = cast("tuple[Any, Any]", item)
        name = f"{prefix}.{key}" if prefix else str(key)
        children = _children(child)
        if children is None:
            yield name, child
        elif id(child) in open_ids:
            raise SourceError(
                f"PyTorch file {file!r} is not a state dict: {name!r} is a container that holds itself; save a "
                "plain dict of tensors (model.state_dict())",
                path=file,
            )
        else:
            stack.append((name, children, id(child)))
            open_ids.add(id(child))
    raise SourceError(
        f"PyTorch file {file!r} is not a state dict: it nests more than {MAX_NAMES} values; save a plain dict of "
        "tensors (model.state_dict())",
        path=file,
    )


def _dtype_name(tensor: Any) -> str:
    """``torch.float32`` -> ``float32``."""
    return str(tensor.dtype).removeprefix("torch.")
