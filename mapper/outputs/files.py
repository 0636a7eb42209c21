"""The files an output path stands for, found with escaped globs, and the checks every writer makes before writing."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from mapper.errors import OutputError, TargetError
from mapper.outputs.faults import check_writable
from mapper.sources.base import Source
from mapper.text import SHOWN

OutputFormat = Literal["tf-checkpoint", "safetensors", "keras-h5"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("tf-checkpoint", "safetensors", "keras-h5")
# What each output format is, for messages and --help.
OUTPUT_SUMMARIES: dict[OutputFormat, str] = {
    "tf-checkpoint": "a TensorFlow checkpoint prefix (name-based: tf.train.load_checkpoint reads the names as written)",
    "safetensors": "a .safetensors file",
    "keras-h5": "an HDF5 file with one dataset per name, as Keras 3 .weights.h5 files hold them",
}


def checkpoint_files(prefix: str | os.PathLike[str]) -> list[Path]:
    """The files of the TF checkpoint at ``prefix`` that exist now: ``prefix.index``, then ``prefix.data-*``.

    The prefix is taken literally: ``[``, ``*`` and ``?`` in it are not glob patterns.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for name in ("ckpt[1].index", "ckpt[1].data-00000-of-00001", "ckpt1.index"):
        ...         _ = Path(tmp, name).write_bytes(b"")
        ...     [file.name for file in checkpoint_files(Path(tmp, "ckpt[1]"))]
        ['ckpt[1].index', 'ckpt[1].data-00000-of-00001']
    """
    path = Path(prefix)
    name = glob.escape(path.name)
    return sorted(path.parent.glob(f"{name}.index")) + sorted(path.parent.glob(f"{name}.data-*"))


def output_format(path: str | os.PathLike[str], format: str | None = None) -> OutputFormat:
    """The format to write ``path`` in: ``format`` if given, else from the suffix.

    ``.safetensors`` is safetensors, ``.h5`` (``.weights.h5``) Keras HDF5, anything else a TF checkpoint prefix.

    Raises:
        TargetError: ``format`` is not one of ``OUTPUT_FORMATS``.

    Example:
        >>> output_format("out/model.safetensors"), output_format("out/model.weights.h5"), output_format("out/ckpt")
        ('safetensors', 'keras-h5', 'tf-checkpoint')
        >>> output_format("out/ckpt", "npz")
        Traceback (most recent call last):
        mapper.errors.TargetError: unknown output format 'npz'; write one of: 'tf-checkpoint' (...), ...
    """
    if format is not None:
        for known in OUTPUT_FORMATS:
            if known == format:
                return known
        raise TargetError(
            f"unknown output format {format!r}; write one of: "
            + ", ".join(f"{name!r} ({OUTPUT_SUMMARIES[name]})" for name in OUTPUT_FORMATS)
        )
    name = Path(path).name
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith((".h5", ".hdf5")):
        return "keras-h5"
    return "tf-checkpoint"


def output_files(path: str | os.PathLike[str], format: OutputFormat) -> list[Path]:
    """The files an output of ``format`` at ``path`` consists of that exist now (for a TF checkpoint: index, data).

    Example:
        >>> output_files("/no/such/dir/ckpt", "tf-checkpoint")
        []
    """
    target = Path(path)
    if format == "tf-checkpoint":
        return checkpoint_files(target)
    return [target] if target.exists() else []


def check_output(path: str | os.PathLike[str], format: OutputFormat, *, overwrite: bool) -> None:
    """Refuse an output before any work: a missing or read-only directory, a directory, an existing output, a bad name.

    A TF checkpoint whose path holds ``[`` is refused: TensorFlow globs checkpoint paths when it reads them, so
    it could not read that checkpoint back (``*`` and ``?`` match themselves, and work).

    Raises:
        OutputError: naming the directory or the existing files, and what to do.

    Example:
        >>> check_output("/no/such/dir/model.safetensors", "safetensors", overwrite=False)
        Traceback (most recent call last):
        mapper.errors.OutputError: cannot write /no/such/dir/model.safetensors: directory /no/such/dir does not exist; ...
    """
    target = Path(path)
    if not target.name:
        raise OutputError(
            f"cannot write {str(path)!r}: give a file name (or a checkpoint prefix), not a directory", path=path
        )
    if not target.parent.is_dir():
        raise OutputError(
            f"cannot write {target}: directory {target.parent} does not exist; create it first (mkdir -p {target.parent})",
            path=target,
        )
    if target.is_dir():
        raise OutputError(
            f"cannot write {target}: it is a directory; give a file name inside it, e.g. {target / 'model'}",
            path=target,
        )
    if format == "tf-checkpoint" and "[" in str(target.absolute()):
        raise OutputError(
            f"cannot write {target} as a TensorFlow checkpoint: TensorFlow reads a checkpoint's path as a file "
            "pattern, and with '[' in it the checkpoint could never be read back; choose a path without '[', "
            "or another output format",
            path=target,
        )
    existing = output_files(target, format)
    if existing and not overwrite:
        files = f" ({', '.join(file.name for file in existing[:SHOWN])})" if format == "tf-checkpoint" else ""
        raise OutputError(
            f"{target} already exists{files}; pass --overwrite (overwrite=True) to replace it", path=target
        )
    check_writable(target)


def check_not_a_source(
    path: str | os.PathLike[str], format: OutputFormat, sources: Iterable[Source], *, action: str = "a conversion"
) -> None:
    """Refuse an output that is, or shares a file with, one of ``sources``: writing it would replace what they read.

    Args:
        path: the output file, or a TF checkpoint prefix.
        format: the output's format.
        sources: the sources being read.
        action: what is writing, for the message (``"a conversion"``, ``"apply"``).

    Raises:
        OutputError: naming the file and the source that reads it.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from mapper.sources.npz import NpzSource
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     np.savez(f"{tmp}/w[1].npz", w=np.zeros(2))
        ...     check_not_a_source(f"{tmp}/w[1].npz", "safetensors", [NpzSource(f"{tmp}/w[1].npz")])
        Traceback (most recent call last):
        mapper.errors.OutputError: cannot write .../w[1].npz: it is .../w[1].npz, which the source .../w[1].npz reads; ...
    """
    target = Path(path)
    written = {file.resolve() for file in _replaced_files(target, format)}
    for source in sources:
        for file in source.input_files():
            if file.resolve() in written:
                raise OutputError(
                    f"cannot write {target}: it is {file}, which the source {source.description} reads; {action} "
                    "never touches its source, so write the output somewhere else",
                    path=target,
                )


def replace_checkpoint(written: str | os.PathLike[str], path: str | os.PathLike[str], existing: Sequence[Path]) -> None:
    """Move the TF checkpoint at prefix ``written`` to prefix ``path``, removing the ``existing`` files there first.

    The old checkpoint goes index first, so that it stops being readable before its data goes away; the new
    one comes data first, index last, so that it is readable only when complete.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for name in ("new/c.index", "new/c.data-00000-of-00001", "c[0].index", "c[0].data-00000-of-00002"):
        ...         Path(tmp, name).parent.mkdir(exist_ok=True)
        ...         _ = Path(tmp, name).write_bytes(b"")
        ...     old = checkpoint_files(Path(tmp, "c[0]"))
        ...     replace_checkpoint(Path(tmp, "new", "c"), Path(tmp, "c[0]"), old)
        ...     [file.name for file in checkpoint_files(Path(tmp, "c[0]"))]
        ['c[0].index', 'c[0].data-00000-of-00001']
    """
    target = Path(path)
    for stale in sorted(existing, key=lambda file: file.suffix != ".index"):
        stale.unlink()
    new = Path(written)
    for file in sorted(checkpoint_files(new), key=lambda file: file.suffix == ".index"):
        file.replace(target.with_name(target.name + file.name.removeprefix(new.name)))


def _replaced_files(path: Path, format: OutputFormat) -> list[Path]:
    """The files writing ``path`` creates or replaces (for a TF checkpoint: its index and any data files now there)."""
    if format != "tf-checkpoint":
        return [path]
    return [path.with_name(f"{path.name}.index"), *checkpoint_files(path)]


__all__ = [
    "OUTPUT_SUMMARIES",
    "output_format",
    "OUTPUT_FORMATS",
    "OutputFormat",
    "check_not_a_source",
    "check_output",
    "checkpoint_files",
    "output_files",
    "replace_checkpoint",
]
