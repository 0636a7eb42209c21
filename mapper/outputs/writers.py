"""Tensor files written name by name, in bounded memory and never half: TF checkpoints, safetensors, Keras .weights.h5.

Each writer is created with the specs of every tensor it will hold, checks them before creating any file,
writes under a temporary name in the output's directory, and moves the result into place only in
``commit`` (for a TF checkpoint: the data files first, the index last). ``abort`` removes everything it
wrote. Used as a context manager, a writer commits when the block ends and aborts when it raises.
"""

from __future__ import annotations

import abc
import json
import os
import secrets
import shutil
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from mapper.dtypes import DTYPE_SIZES, ML_DTYPES
from mapper.errors import TargetError
from mapper.outputs.files import (
    OUTPUT_FORMATS,
    OutputFormat,
    check_output,
    output_files,
    replace_checkpoint,
)
from mapper.specs import TensorSpec, format_shape
from mapper.text import quoted, s

_SUMMARIES = {
    "tf-checkpoint": "a TensorFlow checkpoint prefix (name-based: tf.train.load_checkpoint reads the names as written)",
    "safetensors": "a .safetensors file",
    "keras-h5": "an HDF5 file with one dataset per name, as Keras 3 .weights.h5 files hold them",
}
# safetensors dtype codes by dtype name (the format has no complex numbers and no strings).
SAFETENSORS_CODES: dict[str, str] = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}


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
            + ", ".join(f"{name!r} ({_SUMMARIES[name]})" for name in OUTPUT_FORMATS)
        )
    name = Path(path).name
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith((".h5", ".hdf5")):
        return "keras-h5"
    return "tf-checkpoint"


def open_writer(
    path: str | os.PathLike[str],
    specs: Sequence[TensorSpec],
    *,
    format: str | None = None,
    overwrite: bool = False,
) -> TensorWriter:
    """A writer for ``specs`` at ``path``, in ``format`` or the one the suffix says (see ``output_format``).

    Args:
        path: the output file, or for a TF checkpoint its prefix (``out/ckpt`` writes ``out/ckpt.index`` and
            ``out/ckpt.data-*``).
        specs: name, shape and dtype of every tensor that will be written, in the order the file should list them.
        format: ``"tf-checkpoint"``, ``"safetensors"`` or ``"keras-h5"``; None to go by the suffix.
        overwrite: replace an existing output when committing; without it an existing output is refused.

    Returns:
        A TensorWriter; use it as a context manager, or call ``commit`` / ``abort`` yourself.

    Raises:
        TargetError: the output is refused (see ``check_output``), or a name or dtype cannot be held by the format.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from mapper.sources.safetensors import SafetensorsSource
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with open_writer(f"{tmp}/w.safetensors", [TensorSpec("a/w", (2,), "float32")]) as writer:
        ...         writer.write("a/w", np.array([1.0, 2.0], "float32"))
        ...     print(SafetensorsSource(f"{tmp}/w.safetensors").read(["a/w"])["a/w"], sorted(os.listdir(tmp)))
        [1. 2.] ['w.safetensors']
    """
    chosen = output_format(path, format)
    writers: dict[OutputFormat, type[TensorWriter]] = {
        "tf-checkpoint": CheckpointWriter,
        "safetensors": SafetensorsWriter,
        "keras-h5": KerasH5Writer,
    }
    return writers[chosen](path, specs, overwrite=overwrite)


class TensorWriter(abc.ABC):
    """Base of the writers: checks the specs, tracks what was written, commits or aborts.

    Subclasses implement ``_start``, ``_write``, ``_finish`` (make the temporary output complete),
    ``_install`` (move it into place) and ``_discard``.

    Example:
        >>> issubclass(SafetensorsWriter, TensorWriter)
        True
    """

    format: OutputFormat = "tf-checkpoint"

    def __init__(self, path: str | os.PathLike[str], specs: Sequence[TensorSpec], *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        check_output(self.path, self.format, overwrite=overwrite)
        self.specs: dict[str, TensorSpec] = {}
        for spec in specs:
            if not spec.name:
                raise TargetError(f"cannot write a tensor with an empty name to {self.path}")
            if spec.name in self.specs:
                raise TargetError(f"cannot write {spec.name!r} twice to {self.path}; each name is written once")
            self.specs[spec.name] = spec
        self._check_specs()
        self.written: set[str] = set()
        self.bytes_written = 0
        self._open = True
        self._start()

    # --- the public protocol -------------------------------------------------------------------------------------

    def write(self, name: str, value: Any) -> None:
        """Write one tensor (a NumPy array or a ``tf.Tensor``) declared in the specs.

        Raises:
            TargetError: the name was not declared or was written already, or the value's shape or dtype is not
                the declared one.
        """
        spec = self.specs.get(name)
        if spec is None:
            raise TargetError(f"{name!r} is not one of the {len(self.specs)} tensors declared for {self.path}")
        if name in self.written:
            raise TargetError(f"{name!r} was already written to {self.path}; each name is written once")
        shape = tuple(int(dim) for dim in value.shape)
        dtype = _dtype_name(value)
        if shape != spec.shape or dtype != spec.dtype:
            raise TargetError(
                f"the value for {name!r} is {format_shape(shape)} {dtype}, not the {format_shape(spec.shape)} "
                f"{spec.dtype} declared for {self.path}"
            )
        self._write(spec, value)
        self.written.add(name)
        self.bytes_written += spec.nbytes

    def end_batch(self) -> None:  # noqa: B027 - a hook: only writers that buffer (TF checkpoints) override it
        """Say that a batch is complete: writers that buffer (TF checkpoints) write it out now."""

    def commit(self) -> None:
        """Finish the file and move it into place, replacing an old output only if ``overwrite`` was given.

        Raises:
            TargetError: a declared tensor was never written, or the output appeared meanwhile without overwrite.
                The temporary files are removed and nothing is moved into place.
        """
        try:
            missing = [name for name in self.specs if name not in self.written]
            if missing:
                raise TargetError(
                    f"cannot finish {self.path}: {len(missing)} declared tensor{s(len(missing))} "
                    f"{'was' if len(missing) == 1 else 'were'} never written ({quoted(missing)})"
                )
            self._finish()
            existing = output_files(self.path, self.format)
            if existing and not self.overwrite:
                raise TargetError(f"{self.path} appeared while writing it; pass --overwrite to replace it")
            self._install(existing)
        except BaseException:
            self.abort()
            raise
        self._open = False

    def abort(self) -> None:
        """Remove every temporary file; the output (and any old output) is left as it was. Safe to call twice."""
        if self._open:
            self._open = False
            self._discard()

    def __enter__(self) -> TensorWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()

    # --- for subclasses ------------------------------------------------------------------------------------------

    def _check_specs(self) -> None:  # noqa: B027 - a hook: formats that limit names or dtypes override it
        """TargetError for a name or dtype the format cannot hold."""

    @abc.abstractmethod
    def _start(self) -> None:
        """Implemented by each format."""

    @abc.abstractmethod
    def _write(self, spec: TensorSpec, value: Any) -> None:
        """Implemented by each format."""

    @abc.abstractmethod
    def _finish(self) -> None:
        """Implemented by each format."""

    @abc.abstractmethod
    def _install(self, existing: list[Path]) -> None:
        """Implemented by each format."""

    @abc.abstractmethod
    def _discard(self) -> None:
        """Implemented by each format."""

    def _refuse_dtypes(self, allowed: frozenset[str], advice: str) -> None:
        bad = [spec for spec in self.specs.values() if spec.dtype not in allowed]
        if bad:
            first = bad[0]
            raise TargetError(
                f"{self.format} cannot hold {first.dtype} tensors, and {len(bad)} tensor{s(len(bad))} to write to "
                f"{self.path} {'is' if len(bad) == 1 else 'are'} (first {first.name!r} {format_shape(first.shape)} "
                f"{first.dtype}); {advice}"
            )


class _FileWriter(TensorWriter):
    """A writer of one file, written as a temporary file beside the output and renamed into place."""

    _temporary: Path

    def _new_temporary(self) -> Path:
        # Not tempfile.mkstemp: its files are private (0600); this one gets the permissions any new file gets.
        for _ in range(100):
            candidate = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.partial")
            try:
                handle = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                continue
            os.close(handle)
            return candidate
        raise TargetError(
            f"cannot create a temporary file beside {self.path}: every name tried exists"
        )  # pragma: no cover

    def _install(self, existing: list[Path]) -> None:
        del existing  # os.replace swaps the file in one step
        self._temporary.replace(self.path)

    def _discard(self) -> None:
        self._close()
        self._temporary.unlink(missing_ok=True)

    @abc.abstractmethod
    def _close(self) -> None:
        """Implemented by each format."""


class SafetensorsWriter(_FileWriter):
    """A ``.safetensors`` file: the header is laid out from the specs first, then each tensor written in its place.

    Tensors may be written in any order; the file lists them in the order of the specs, contiguously, as the
    format requires. No tensor is held in memory beyond the one being written.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from safetensors.numpy import load_file
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     specs = [TensorSpec("b", (2,), "int64"), TensorSpec("a", (), "float32")]
        ...     with SafetensorsWriter(f"{tmp}/x.safetensors", specs) as writer:
        ...         writer.write("a", np.array(1.5, "float32"))
        ...         writer.write("b", np.array([3, 4]))
        ...     loaded = load_file(f"{tmp}/x.safetensors")
        >>> loaded["a"], loaded["b"]
        (array(1.5, dtype=float32), array([3, 4]))
    """

    format: OutputFormat = "safetensors"

    def _check_specs(self) -> None:
        self._refuse_dtypes(
            frozenset(SAFETENSORS_CODES),
            "safetensors holds booleans, integers and floats only: write a TF checkpoint (or .h5 for complex numbers)",
        )
        if "__metadata__" in self.specs:
            raise TargetError(
                f"cannot write a tensor named '__metadata__' to {self.path}: safetensors reserves that name"
            )

    def _start(self) -> None:
        header: dict[str, Any] = {}
        self._offsets: dict[str, int] = {}
        offset = 0
        for spec in self.specs.values():
            header[spec.name] = {
                "dtype": SAFETENSORS_CODES[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            self._offsets[spec.name] = offset
            offset += spec.nbytes
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the safetensors library writes it
        self._data_start = 8 + len(text)
        self._temporary = self._new_temporary()
        self._file = self._temporary.open("r+b")
        try:
            self._file.write(struct.pack("<Q", len(text)) + text)
            self._file.truncate(self._data_start + offset)
        except BaseException:
            self._discard()
            raise

    def _write(self, spec: TensorSpec, value: Any) -> None:
        self._file.seek(self._data_start + self._offsets[spec.name])
        self._file.write(_raw_bytes(value))

    def _finish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def _close(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None and not file.closed:
            file.close()


class KerasH5Writer(_FileWriter):
    """An HDF5 file with one dataset per name, the name being the dataset's path (``layers/dense/vars/0``).

    This is the layout of Keras 3 ``.weights.h5`` files, so the file loads with ``model.load_weights`` when the
    names are the ones Keras gives that model's weights (``layers/<layer>/vars/<index>``; read a
    ``save_weights`` file of the model with ``mapper inspect`` to see them). With other names it is a plain HDF5
    file of tensors. bfloat16 and float8 datasets carry a ``dtype`` attribute, as Keras writes bfloat16.

    Example:
        >>> import tempfile
        >>> import h5py
        >>> import numpy as np
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with KerasH5Writer(f"{tmp}/m.weights.h5", [TensorSpec("layers/dense/vars/0", (2,), "float32")]) as w:
        ...         w.write("layers/dense/vars/0", np.ones(2, "float32"))
        ...     with h5py.File(f"{tmp}/m.weights.h5") as file:
        ...         print(file["layers/dense/vars/0"][()])
        [1. 1.]
    """

    format: OutputFormat = "keras-h5"

    def _check_specs(self) -> None:
        self._refuse_dtypes(
            frozenset(DTYPE_SIZES), "write string tensors to a TF checkpoint, or skip them with a skip rule"
        )
        bad = [name for name in self.specs if any(part in ("", ".", "..") for part in name.split("/"))]
        if bad:
            raise TargetError(
                f"cannot write {quoted(bad)} to {self.path}: an HDF5 dataset path needs non-empty parts other than "
                "'.' and '..' between its '/'; rename the targets in the rule file"
            )
        groups: dict[str, str] = {}
        for name in self.specs:
            parts = name.split("/")
            for depth in range(1, len(parts)):
                groups.setdefault("/".join(parts[:depth]), name)
        clashes = [name for name in self.specs if name in groups]
        if clashes:
            first = clashes[0]
            raise TargetError(
                f"cannot write both {first!r} and {groups[first]!r} to {self.path}: in HDF5 {first!r} cannot be a "
                f"dataset and a group at once ({len(clashes)} such name{s(len(clashes))}); rename one of them "
                "in the rule file"
            )

    def _start(self) -> None:
        import h5py

        self._temporary = self._new_temporary()
        try:
            self._file = h5py.File(self._temporary, "w")
        except BaseException:
            self._temporary.unlink(missing_ok=True)
            raise

    def _write(self, spec: TensorSpec, value: Any) -> None:
        array = _numpy(value)
        if spec.dtype.startswith("float8"):  # h5py knows no float8 (bfloat16 it stores as opaque, as Keras does)
            array = array.view(np.dtype(f"V{array.dtype.itemsize}"))
        dataset = self._file.create_dataset(spec.name, data=array)
        if spec.dtype in ML_DTYPES:
            dataset.attrs["dtype"] = spec.dtype

    def end_batch(self) -> None:
        """Flush the batch's datasets to the temporary file."""
        self._file.flush()

    def _finish(self) -> None:
        self._file.close()
        with self._temporary.open("rb") as file:
            os.fsync(file.fileno())

    def _close(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None and file.id.valid:
            file.close()


class CheckpointWriter(TensorWriter):
    """A name-based TensorFlow checkpoint: ``tf.train.load_checkpoint(path)`` lists exactly the names written.

    Each batch is saved with one ``tf.raw_ops.SaveV2`` into a temporary directory beside the output, and
    ``commit`` merges the parts with ``MergeV2Checkpoints`` (which renames data files, copying nothing) into a
    checkpoint with one data shard per batch, then moves the data files into place and the index last. Like a
    TF1 ``Saver`` checkpoint, it has no object graph: read it by name (``tf.train.load_checkpoint``,
    ``init_from_checkpoint``, or ``mapper``), not with ``tf.train.Checkpoint.read``.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> import tensorflow as tf
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with CheckpointWriter(f"{tmp}/ckpt", [TensorSpec("bert/w", (2,), "bfloat16")]) as writer:
        ...         writer.write("bert/w", tf.constant([1.5, 2.0], tf.bfloat16))
        ...     reader = tf.train.load_checkpoint(f"{tmp}/ckpt")
        ...     print(reader.get_variable_to_dtype_map(), sorted(os.listdir(tmp)))
        {'bert/w': tf.bfloat16} ['ckpt.data-00000-of-00001', 'ckpt.index']
    """

    format: OutputFormat = "tf-checkpoint"

    def _check_specs(self) -> None:
        if not self.specs:
            raise TargetError(f"cannot write {self.path}: a TensorFlow checkpoint needs at least one tensor")

    def _start(self) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent))
        self._parts: list[str] = []
        self._pending: list[tuple[str, Any]] = []

    def _write(self, spec: TensorSpec, value: Any) -> None:
        self._pending.append((spec.name, value))

    def end_batch(self) -> None:
        """Save the tensors written since the last batch as one part, and let go of them."""
        if not self._pending:
            return
        import tensorflow as tf

        prefix = str(self._directory / "parts" / f"part-{len(self._parts):05d}")
        names = [name for name, _ in self._pending]
        with tf.device("/cpu:0"):
            tensors = [tf.convert_to_tensor(value) for _, value in self._pending]
            tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
        self._parts.append(prefix)
        self._pending = []

    def _finish(self) -> None:
        import tensorflow as tf

        self.end_batch()
        self._merged = str(self._directory / self.path.name)
        with tf.device("/cpu:0"):
            tf.raw_ops.MergeV2Checkpoints(
                checkpoint_prefixes=self._parts, destination_prefix=self._merged, delete_old_dirs=False
            )

    def _install(self, existing: list[Path]) -> None:
        replace_checkpoint(self._merged, self.path, existing)
        shutil.rmtree(self._directory, ignore_errors=True)

    def _discard(self) -> None:
        self._pending = []
        shutil.rmtree(self._directory, ignore_errors=True)


# --- helpers ------------------------------------------------------------------------------------------------------


def _numpy(value: Any) -> np.ndarray:
    """A NumPy array of ``value`` (a ``tf.Tensor``'s on the CPU is not copied)."""
    array = value.numpy() if hasattr(value, "numpy") else value
    return np.asarray(array)


def _dtype_name(value: Any) -> str:
    dtype = value.dtype
    name = getattr(dtype, "name", None)
    if hasattr(value, "numpy") and isinstance(name, str):  # a tf.Tensor: tf.string, tf.bfloat16, ...
        return name
    numpy_dtype = np.dtype(dtype)
    if numpy_dtype.kind in "OSU":
        return "string"
    return str(numpy_dtype)


def _raw_bytes(value: Any) -> memoryview:
    """The tensor's bytes, C order, little-endian, without a copy when they already are."""
    array = np.ascontiguousarray(_numpy(value))
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.reshape(-1).view(np.uint8).data


__all__ = [
    "OUTPUT_FORMATS",
    "CheckpointWriter",
    "KerasH5Writer",
    "OutputFormat",
    "SafetensorsWriter",
    "TensorWriter",
    "check_output",
    "open_writer",
    "output_files",
    "output_format",
]
