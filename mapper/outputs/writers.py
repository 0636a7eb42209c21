"""Tensor files written name by name, in bounded memory and never half: TF checkpoints, safetensors, Keras .weights.h5.

Each writer is created with the specs of every tensor it will hold, checks them before creating any file,
writes under a temporary name in the output's directory, and moves the result into place only in
``commit`` (for a TF checkpoint: the data files first, the index last). ``abort`` removes everything it
wrote. Used as a context manager, a writer commits when the block ends and aborts when it raises.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mapper.dtypes import DTYPE_SIZES, ML_DTYPES
from mapper.errors import OutputError, TargetError
from mapper.outputs.base import FileWriter, TensorWriter, as_numpy
from mapper.outputs.faults import h5_size
from mapper.outputs.files import OutputFormat, output_format, replace_checkpoint
from mapper.outputs.raw import PlacedFile, write_at
from mapper.outputs.tf_bundle_writer import CheckpointWriter, raw_dtype
from mapper.sources.safetensors import DTYPES as SAFETENSORS_DTYPES
from mapper.specs import TensorSpec
from mapper.text import quoted, s

# safetensors dtype codes by dtype name: the inverse of what the source reads (no complex numbers, no strings).
SAFETENSORS_CODES: dict[str, str] = {name: code for code, name in SAFETENSORS_DTYPES.items()}


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
        A TensorWriter; use it as a context manager, or call ``commit`` / ``abort`` yourself. A TF checkpoint is
        written without TensorFlow (``CheckpointWriter``) unless it holds strings (``SaveV2CheckpointWriter``).

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
    if chosen == "tf-checkpoint" and not all(raw_dtype(spec.dtype) for spec in specs):
        return SaveV2CheckpointWriter(path, specs, overwrite=overwrite)  # strings: TensorFlow encodes them
    return writers[chosen](path, specs, overwrite=overwrite)


class SafetensorsWriter(FileWriter):
    """A ``.safetensors`` file: the header is laid out from the specs first, then each tensor written in its place.

    Tensors may be written in any order; the file lists them in the order of the specs, contiguously, as the
    format requires. Each tensor goes from the value given straight to the file (``os.pwrite`` of its buffer in
    cache-sized pieces, no copy in between: see ``PlacedFile``), or from a source's chunks (``write_chunks``);
    the file is synced once, when it is complete, before it is moved into place.

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
    byte_order = "<"

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
        offsets: dict[str, int] = {}
        offset = 0
        for spec in self.specs.values():
            header[spec.name] = {
                "dtype": SAFETENSORS_CODES[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offsets[spec.name] = offset
            offset += spec.nbytes
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the safetensors library writes it
        data_start = 8 + len(text)
        self._temporary = self._new_temporary()
        self._file = PlacedFile(
            os.open(self._temporary, os.O_RDWR | getattr(os, "O_BINARY", 0)),
            {name: data_start + at for name, at in offsets.items()},
            order="<",
            checksums=False,
        )
        try:
            write_at(self._file.descriptor(str(self.path)), memoryview(struct.pack("<Q", len(text)) + text), 0)
            os.ftruncate(self._file.descriptor(str(self.path)), data_start + offset)
        except BaseException:
            self._discard()
            raise

    def _write(self, spec: TensorSpec, value: Any) -> None:
        self._file.write_array(spec.name, value, str(self.path))

    def _write_chunks(self, spec: TensorSpec, chunks: Iterable[memoryview]) -> int:
        return self._file.write_chunks(spec.name, chunks, spec.nbytes, str(self.path))

    def _finish(self) -> None:
        os.fsync(self._file.descriptor(str(self.path)))  # once, for the whole file: what the rename into place needs
        self._close()

    def _close(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()


class KerasH5Writer(FileWriter):
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
        array = as_numpy(value)
        if spec.dtype.startswith("float8"):  # h5py knows no float8 (bfloat16 it stores as opaque, as Keras does)
            array = array.view(np.dtype(f"V{array.dtype.itemsize}"))
        dataset = self._file.create_dataset(spec.name, data=array)
        if spec.dtype in ML_DTYPES:
            dataset.attrs["dtype"] = spec.dtype

    def _room(self) -> tuple[int, int]:
        # h5py can crash when the disk fills under it: ask for the tensors' bytes and a margin before starting.
        total = h5_size(sum(spec.nbytes for spec in self.specs.values()), len(self.specs))
        return total, total

    def _end_batch(self) -> None:
        """Flush the batch's datasets to the temporary file."""
        self._file.flush()

    def _finish(self) -> None:
        self._file.close()
        with self._temporary.open("rb") as file:
            os.fsync(file.fileno())
        self._verify()

    def _verify(self) -> None:
        """OutputError unless the temporary file reads back with every dataset in its declared shape."""
        import h5py

        with h5py.File(self._temporary, "r") as file:
            wrong = [
                name
                for name, spec in self.specs.items()
                if not isinstance(file.get(name), h5py.Dataset) or file[name].shape != spec.shape
            ]
        if wrong:
            raise OutputError(
                f"cannot write {self.path}: the file written does not read back ({len(wrong)} "
                f"dataset{s(len(wrong))} missing or misshapen, first {wrong[0]!r}); nothing was moved into place",
                path=self.path,
            )

    def _close(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None and file.id.valid:
            file.close()


class SaveV2CheckpointWriter(TensorWriter):
    """A name-based TensorFlow checkpoint saved by TensorFlow: for tensors ``CheckpointWriter`` cannot write (strings).

    ``tf.train.load_checkpoint(path)`` lists exactly the names written. Each batch is saved with one ``tf.raw_ops.SaveV2`` into a temporary directory beside the output, and
    ``commit`` merges the parts with ``MergeV2Checkpoints`` (which renames data files, copying nothing) into a
    checkpoint with one data shard per batch, then moves the data files into place and the index last. Like a
    TF1 ``Saver`` checkpoint, it has no object graph: read it by name (``tf.train.load_checkpoint``,
    ``init_from_checkpoint``, or ``mapper``), not with ``tf.train.Checkpoint.read``.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> import tensorflow as tf
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with SaveV2CheckpointWriter(f"{tmp}/ckpt", [TensorSpec("bert/s", (2,), "string")]) as writer:
        ...         writer.write("bert/s", tf.constant(["a", "bc"]))
        ...     reader = tf.train.load_checkpoint(f"{tmp}/ckpt")
        ...     print(reader.get_tensor("bert/s"), sorted(os.listdir(tmp)))
        [b'a' b'bc'] ['ckpt.data-00000-of-00001', 'ckpt.index']
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

    def _room(self) -> tuple[int, int]:
        # A data shard per batch: the largest file holds at least the largest tensor.
        return sum(spec.nbytes for spec in self.specs.values()), max(spec.nbytes for spec in self.specs.values())

    def _end_batch(self) -> None:
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

        self._end_batch()
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
        if hasattr(self, "_directory"):
            shutil.rmtree(self._directory, ignore_errors=True)


# --- helpers ------------------------------------------------------------------------------------------------------


__all__ = [
    "SAFETENSORS_CODES",
    "CheckpointWriter",
    "KerasH5Writer",
    "SaveV2CheckpointWriter",
    "SafetensorsWriter",
    "open_writer",
]
