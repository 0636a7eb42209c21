"""Carrying out an inverse plan: a model's variables written as a Hugging Face safetensors checkpoint, sharded if large.

Every tensor is computed from the model's variables (the inverse operations, then a join; a tensor restored in part
from ``--like`` around that tensor read from it; one restored whole read from it as it is), written and released
before the next, so memory stays near the largest tensor. The files are written into a temporary directory inside
the output directory, each through the safetensors writer (under a temporary name, moved into place when complete),
and moved into the output directory only when all are complete, the index last; if anything fails, nothing at the
output changes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mapper.errors import ApplyError, OperationError, OutputError, SourceError, TargetError
from mapper.interrupts import sigterm_raises
from mapper.ops import NUMPY, apply_numpy
from mapper.outputs.writers import SafetensorsWriter
from mapper.plan.inverse import ExportTensor, Inverse, NotInvertibleError, check_elements
from mapper.plan.restore import Restored
from mapper.sources.base import Source
from mapper.specs import TensorSpec, format_shape
from mapper.targets.base import VariableTarget
from mapper.text import first_line, quoted

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# As transformers' save_pretrained and the Hugging Face hub: shards of at most 5 GB (10**9 bytes each).
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9


class RestoreError(SourceError):
    """The values an export restores from ``--like`` cannot be had: no checkpoint to read, or its tensor differs.

    Raised before anything is written; ``names`` are the tensors in question, ``path`` the --like checkpoint ("" when
    none was given).

    Example:
        >>> RestoreError("no --like", names=("pos",)).names
        ('pos',)
    """

    def __init__(self, message: str, *, names: Sequence[str], path: str = "") -> None:
        super().__init__(message, path=path)
        self.names = tuple(names)


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the files (shards, then the index if any), tensor and byte counts, and the inverse.

    Example:
        >>> result = ExportResult(Inverse("ckpt", "model"), "out", ("model.safetensors",), 3, 48, 0.1)
        >>> result.files, result.sharded
        (('model.safetensors',), False)
    """

    inverse: Inverse
    directory: str
    files: tuple[str, ...]
    written: int
    bytes_written: int
    seconds: float

    @property
    def sharded(self) -> bool:
        """Whether the checkpoint was split into shards with an index."""
        return INDEX_NAME in self.files


def shard(specs: Sequence[TensorSpec], max_bytes: int) -> list[list[TensorSpec]]:
    """Specs grouped into shards of at most ``max_bytes`` each, in order (a larger tensor gets a shard of its own).

    Example:
        >>> specs = [TensorSpec(name, (n,), "float32") for name, n in (("a", 2), ("b", 2), ("c", 5), ("d", 1))]
        >>> [[spec.name for spec in part] for part in shard(specs, 16)]
        [['a', 'b'], ['c'], ['d']]
    """
    if max_bytes <= 0:
        raise ValueError(f"the shard size must be positive, not {max_bytes}")
    shards: list[list[TensorSpec]] = []
    size = 0
    for spec in specs:
        if shards and size + spec.nbytes <= max_bytes:
            shards[-1].append(spec)
            size += spec.nbytes
        else:
            shards.append([spec])
            size = spec.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    """The file names of ``count`` shards, as transformers names them (one shard is ``model.safetensors``).

    Example:
        >>> shard_names(1), shard_names(2)
        (['model.safetensors'], ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'])
    """
    if count == 1:
        return [WEIGHTS_NAME]
    return [f"model-{number:05d}-of-{count:05d}.safetensors" for number in range(1, count + 1)]


def existing_checkpoint(directory: Path) -> list[Path]:
    """The safetensors checkpoint files now in ``directory``: ``model.safetensors``, shards, the index.

    Example:
        >>> existing_checkpoint(Path("/no/such/dir"))
        []
    """
    if not directory.is_dir():
        return []
    found = [directory / WEIGHTS_NAME, directory / INDEX_NAME]
    return [path for path in found if path.exists()] + sorted(directory.glob("model-*-of-*.safetensors"))


def check_export_output(directory: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Refuse an output directory before any work: a file, a missing parent, an existing checkpoint without overwrite.

    Raises:
        OutputError: naming the directory or the files in it, and what to do.

    Example:
        >>> check_export_output("/no/such/dir/out", overwrite=False)
        Traceback (most recent call last):
        mapper.errors.OutputError: cannot export to /no/such/dir/out: directory /no/such/dir does not exist; ...
    """
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise OutputError(f"cannot export to {path}: it is a file; an export writes a directory", path=path)
    if not path.exists() and not path.absolute().parent.is_dir():
        raise OutputError(
            f"cannot export to {path}: directory {path.absolute().parent} does not exist; create it first",
            path=path,
        )
    existing = existing_checkpoint(path)
    if existing and not overwrite:
        raise OutputError(
            f"{path} already holds a checkpoint ({quoted([file.name for file in existing])}); pass --overwrite "
            "(overwrite=True) to replace it",
            path=path,
        )
    return path


def check_not_like(directory: str | os.PathLike[str], like: Source) -> None:
    """Refuse an output directory whose checkpoint files are the ones the reference checkpoint reads.

    Raises:
        OutputError: naming the file; an export never replaces the checkpoint it takes its names from.

    Example:
        >>> from mapper.sources.memory import MemorySource
        >>> check_not_like("out", MemorySource({"w": np.zeros(1)}))
    """
    path = Path(directory).resolve()
    for file in like.input_files():
        resolved = file.resolve()
        if resolved.parent == path and resolved.name.endswith((".safetensors", ".json")):
            raise OutputError(
                f"cannot export to {directory}: it holds {file.name}, the checkpoint --like reads "
                f"({like.description}); write the export to another directory",
                path=directory,
            )


def _value(variable: Any) -> np.ndarray:
    """A variable's value as a NumPy array (a Keras or TensorFlow variable, or an array)."""
    if isinstance(variable, np.ndarray):
        return variable
    if hasattr(variable, "numpy"):
        return np.asarray(variable.numpy())
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable))


def _how(restore: Restored) -> str:
    return "whole" if restore.whole else "in part"


def check_restorable(inverse: Inverse, like: Source | None) -> None:
    """Raise RestoreError unless ``like`` holds every tensor the export restores (in part or whole), as it writes it.

    Example:
        >>> from mapper.sources.memory import MemorySource
        >>> from mapper.plan.inverse import Piece, Restored
        >>> t = ExportTensor("pos", (4,), "float32", (Piece("v"),), None, restore=Restored("pos", ((2, 4),), "pad"))
        >>> check_restorable(Inverse("c", "m", (t,)), MemorySource({"pos": np.zeros(4, "float32")}))
        >>> check_restorable(Inverse("c", "m", (t,)), MemorySource({"pos": np.zeros(5, "float32")}))
        Traceback (most recent call last):
        mapper.run.export.RestoreError: cannot restore 'pos' in part from --like ...: it is [5] float32 there, ...
    """
    restoring = [(tensor, restore) for tensor in inverse.tensors if (restore := tensor.restore) is not None]
    if not restoring:
        return
    if like is None:
        raise RestoreError(
            f"the export writes {quoted([tensor.name for tensor, _ in restoring])} {_how(restoring[0][1])} from the "
            "--like checkpoint "
            f"([[export.restore]]: {restoring[0][1].reason}), but it was given only names and shapes: pass the "
            "checkpoint the model was imported from as --like (like=path or Source)",
            names=[tensor.name for tensor, _ in restoring],
        )
    specs = like.specs()
    for tensor, restore in restoring:
        found = specs.get(restore.like_name)
        if found is None or found.shape != tensor.shape or found.dtype != tensor.dtype:
            there = "not there" if found is None else f"{format_shape(found.shape)} {found.dtype} there"
            raise RestoreError(
                f"cannot restore {tensor.name!r} {_how(restore)} from --like ({like.description}): it is {there}, but the "
                f"export writes {format_shape(tensor.shape)} {tensor.dtype} ({restore.describe()}); pass the "
                "checkpoint the model was imported from as --like",
                names=(tensor.name,),
                path=like.description,
            )


def tensor_value(tensor: ExportTensor, variables: Mapping[str, Any], like: Source | None = None) -> np.ndarray:
    """The value of one exported tensor: each piece's variable through its operations, joined if there are several.

    A tensor restored in part (``tensor.restore``) is ``like``'s tensor with the block the model gives written in;
    one restored whole (the import skips it) is ``like``'s tensor as it is.

    Example:
        >>> from mapper.ops import Transpose
        >>> from mapper.plan.inverse import Piece
        >>> t = ExportTensor("w", (3, 2), "float32", (Piece("v", (Transpose((1, 0)),)),), None)
        >>> tensor_value(t, {"v": np.arange(6, dtype="float32").reshape(2, 3)}).tolist()
        [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    """
    restore = tensor.restore
    if restore is None:
        return _from_model(tensor, variables)
    if like is None:
        raise RestoreError(
            f"{tensor.name!r} is restored {_how(restore)} from --like, and none is given", names=(tensor.name,)
        )
    read = np.asarray(like.read([restore.like_name])[restore.like_name])
    if read.shape != tensor.shape or str(read.dtype) != tensor.dtype:
        raise RestoreError(
            f"{restore.like_name!r} in --like is {format_shape(read.shape)} {read.dtype}, not "
            f"{format_shape(tensor.shape)} {tensor.dtype}",
            names=(tensor.name,),
            path=like.description,
        )
    if restore.whole:  # the import skips it: --like's tensor as it is
        return read
    # A copy: the source's buffer is read-only or someone else's. One tensor read, then written into.
    whole = np.array(read)
    whole[restore.index()] = _from_model(tensor, variables)
    return whole


def _from_model(tensor: ExportTensor, variables: Mapping[str, Any]) -> np.ndarray:
    """Each piece's variable through its operations, joined if there are several."""
    parts = [apply_numpy(piece.operations, _value(variables[piece.variable])) for piece in tensor.pieces]
    result: np.ndarray = parts[0] if tensor.combine is None else tensor.combine.apply(parts, NUMPY)
    return result


def check_fits(inverse: Inverse, target: VariableTarget) -> None:
    """Raise TargetError unless every variable the inverse reads is in the model, with the shape and dtype it expects.

    Example:
        >>> from mapper.specs import TargetMap, VariableMap
        >>> check_fits(Inverse("c", "m"), VariableTarget("m", TargetMap(VariableMap([])), {}))
    """
    specs = dict(target.map.variables)
    missing = sorted({v for tensor in inverse.tensors for v in tensor.variables if v not in specs})
    if missing:
        raise TargetError(
            f"the model {target.description} has no variable {quoted(missing)}, which the export reads: the model "
            "does not fit the plan; plan against this model"
        )
    wrong: list[str] = []
    for tensor in inverse.tensors:
        try:
            check_elements(tensor, specs)
        except OperationError as error:
            wrong.append(str(error))
    if wrong:
        raise TargetError(
            f"the variables of {target.description} do not give the source's shapes and dtypes: {wrong[0]}"
            + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else "")
        )


def write_export(
    inverse: Inverse,
    target: VariableTarget,
    directory: str | os.PathLike[str],
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    like: Source | None = None,
) -> ExportResult:
    """Write the model's variables as the source's tensors: ``model.safetensors``, or shards and an index.

    Args:
        inverse: an Inverse without blockers (``mapper.plan.inverse.invert``).
        target: the model's variables (``mapper.api.as_target(model)``), the target the plan was made for.
        directory: the output directory (created if missing; its parent must exist).
        max_shard_bytes: the most tensor bytes a shard holds; above it, ``model-0000N-of-0000M.safetensors`` files
            and ``model.safetensors.index.json`` are written, as transformers writes them.
        overwrite: replace a checkpoint already in ``directory`` (its old shards are removed once the new one is
            in place).
        progress: called as ``progress(done, total)`` in tensors after each one.
        like: the checkpoint the model was imported from, read for the tensors the export restores in part or whole
            (``[[export.restore]]``; one tensor at a time); not needed when it restores none.

    Returns:
        An ExportResult.

    Raises:
        NotInvertibleError: the inverse has blockers (each names its rule and why).
        TargetError: the model's variables do not fit the plan.
        RestoreError: a tensor is restored from ``like``, and it is missing or its tensor has another shape or dtype.
        OutputError: the output is refused, or writing it failed (a full disk); nothing changed at the output.
        ApplyError: computing or writing a tensor failed part-way; nothing changed at the output.

    Example:
        >>> import tempfile
        >>> from mapper.plan.inverse import Piece
        >>> from mapper.specs import TargetMap, VariableMap
        >>> from mapper.sources.safetensors import SafetensorsSource
        >>> inverse = Inverse("ckpt", "m", (ExportTensor("w", (2,), "float32", (Piece("v"),), None),))
        >>> target = VariableTarget("m", TargetMap(VariableMap([TensorSpec("v", (2,), "float32")])), {"v": np.ones(2, "float32")})
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     result = write_export(inverse, target, f"{tmp}/out")
        ...     print(result.files, SafetensorsSource(f"{tmp}/out/model.safetensors").read(["w"])["w"])
        ('model.safetensors',) [1. 1.]
    """
    started = time.perf_counter()
    if not inverse.ok:
        raise NotInvertibleError.of(inverse)
    path = check_export_output(directory, overwrite=overwrite)
    if not inverse.tensors:
        raise TargetError(f"the export of {target.description} writes no tensor: every source tensor was skipped")
    check_fits(inverse, target)
    check_restorable(inverse, like)
    shards = shard(inverse.specs, max_shard_bytes)
    names = shard_names(len(shards))
    created = not path.exists()
    path.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export.", suffix=".partial", dir=path))
    try:
        with sigterm_raises():
            _write_shards(inverse, target, work, shards, names, progress=progress, like=like)
            files = _install(path, work, shards, names)
    except BaseException as error:
        shutil.rmtree(work, ignore_errors=True)
        if created:
            shutil.rmtree(path, ignore_errors=True)
        if isinstance(error, (OutputError, TargetError, RestoreError)) or not isinstance(error, Exception):
            raise
        raise ApplyError(
            f"exporting {target.description} to {path} failed: {type(error).__name__}: {first_line(error)}\n"
            f"nothing was written: {path} {'was not created' if created else 'keeps its previous contents'}"
        ) from error
    shutil.rmtree(work, ignore_errors=True)
    total = sum(spec.nbytes for spec in inverse.specs)
    return ExportResult(inverse, str(path), tuple(files), len(inverse.tensors), total, time.perf_counter() - started)


def _write_shards(
    inverse: Inverse,
    target: VariableTarget,
    work: Path,
    shards: list[list[TensorSpec]],
    names: list[str],
    *,
    progress: Callable[[int, int], None] | None,
    like: Source | None,
) -> None:
    """Every shard written into ``work``, tensor by tensor, and the index when there are several."""
    done, total = 0, len(inverse.tensors)
    by_name = {tensor.name: tensor for tensor in inverse.tensors}
    for specs, name in zip(shards, names, strict=True):
        with SafetensorsWriter(work / name, specs) as writer:
            for spec in specs:
                writer.write(spec.name, tensor_value(by_name[spec.name], target.variables, like))
                done += 1
                if progress is not None:
                    progress(done, total)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(spec.nbytes for spec in inverse.specs)},
            "weight_map": {spec.name: name for specs, name in zip(shards, names, strict=True) for spec in specs},
        }
        (work / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _install(path: Path, work: Path, shards: list[list[TensorSpec]], names: list[str]) -> list[str]:
    """Move the written files into ``path`` (the index last) and remove what is left of an old checkpoint."""
    stale = [file for file in existing_checkpoint(path) if file.name not in names]
    files = [*names, *([INDEX_NAME] if len(shards) > 1 else [])]
    for old in sorted(stale, key=lambda file: file.name != INDEX_NAME):  # an old index goes first
        old.unlink()
    for name in files:
        (work / name).replace(path / name)
    return files


__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "INDEX_NAME",
    "WEIGHTS_NAME",
    "ExportResult",
    "RestoreError",
    "check_export_output",
    "check_fits",
    "check_not_like",
    "check_restorable",
    "existing_checkpoint",
    "shard",
    "shard_names",
    "tensor_value",
    "write_export",
]
