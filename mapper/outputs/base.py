"""TensorWriter, the protocol every output writer follows: check, write under a temporary name, commit or abort."""

from __future__ import annotations

import abc
import contextlib
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from mapper.errors import OutputError, TargetError
from mapper.interrupts import sigterm_raises
from mapper.outputs.faults import check_room, faults_named
from mapper.outputs.files import OutputFormat, check_output, output_files
from mapper.specs import TensorSpec, format_shape
from mapper.text import quoted, s


class TensorWriter(abc.ABC):
    """Base of the writers: checks the specs and the room, tracks what was written, commits or aborts.

    Subclasses implement ``_start``, ``_write``, ``_finish`` (make the temporary output complete),
    ``_install`` (move it into place) and ``_discard``; ``_end_batch`` and ``_room`` when they need to, and
    ``_write_chunks`` with a ``byte_order`` when they take a tensor's bytes in pieces. A write
    fault (a full disk, the file size limit, a read-only directory) in any step is an OutputError naming the
    output and the cause, and leaves no temporary file behind.

    Example:
        >>> from mapper.outputs.writers import SafetensorsWriter
        >>> issubclass(SafetensorsWriter, TensorWriter)
        True
    """

    format: OutputFormat = "tf-checkpoint"
    # The byte order ``write_chunks`` takes a tensor's bytes in (``"<"``, ``">"``); None: it takes arrays only.
    byte_order: str | None = None

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
        total, largest_file = self._room()
        check_room(self.path, total=total, largest_file=largest_file)
        self.written: set[str] = set()
        self.bytes_written = 0
        self._open = True
        self._signals = contextlib.ExitStack()
        with faults_named(self.path):
            self._start()

    # --- the public protocol -------------------------------------------------------------------------------------

    def write(self, name: str, value: Any) -> None:
        """Write one tensor (a NumPy array or a ``tf.Tensor``) declared in the specs.

        Raises:
            TargetError: the name was not declared or was written already, or the value's shape or dtype is not
                the declared one.
            OutputError: writing failed (a full disk, the file size limit); call ``abort``.
        """
        spec = self._claim(name)
        shape = tuple(int(dim) for dim in value.shape)
        dtype = dtype_name(value)
        if shape != spec.shape or dtype != spec.dtype:
            raise TargetError(
                f"the value for {name!r} is {format_shape(shape)} {dtype}, not the {format_shape(spec.shape)} "
                f"{spec.dtype} declared for {self.path}"
            )
        with faults_named(self.path):
            self._write(spec, value)
        self.written.add(name)
        self.bytes_written += spec.nbytes

    def write_chunks(self, name: str, chunks: Iterable[memoryview]) -> None:
        """Write one tensor declared in the specs from its bytes, given a piece at a time (C order, ``byte_order``).

        Each chunk is written before the next is asked for, so the caller may hand out one reused buffer:
        a tensor copied from a source's ``read_chunks`` never exists whole in memory. Only writers with a
        ``byte_order`` take bytes; the others take arrays (``write``).

        Raises:
            TargetError: the name was not declared or was written already, the writer takes no bytes, or the
                chunks do not hold exactly the tensor's bytes.
            OutputError: writing failed (a full disk, the file size limit); call ``abort``.
            Whatever the chunks raise (a source's CorruptSourceError) passes unchanged; call ``abort``.
        """
        spec = self._claim(name)
        if self.byte_order is None:
            raise TargetError(f"the {self.format} writer of {self.path} takes arrays, not bytes: write {name!r} whole")
        with faults_named(self.path):
            count = self._write_chunks(spec, chunks)
        if count != spec.nbytes:
            raise TargetError(
                f"{count} bytes were given for {name!r}, not the {spec.nbytes} of its {format_shape(spec.shape)} "
                f"{spec.dtype} declared for {self.path}"
            )
        self.written.add(name)
        self.bytes_written += spec.nbytes

    def end_batch(self) -> None:
        """Say that a batch is complete: writers that buffer (TF checkpoints) write it out now.

        Raises:
            OutputError: writing failed (a full disk, the file size limit); call ``abort``.
        """
        with faults_named(self.path):
            self._end_batch()

    def commit(self) -> None:
        """Finish the file and move it into place, replacing an old output only if ``overwrite`` was given.

        Raises:
            TargetError: a declared tensor was never written, or the output appeared meanwhile without overwrite.
            OutputError: finishing or moving failed (a full disk, the file written does not read back).
            Either way the temporary files are removed and nothing is moved into place.
        """
        try:
            missing = [name for name in self.specs if name not in self.written]
            if missing:
                raise TargetError(
                    f"cannot finish {self.path}: {len(missing)} declared tensor{s(len(missing))} "
                    f"{'was' if len(missing) == 1 else 'were'} never written ({quoted(missing)})"
                )
            with faults_named(self.path):
                self._finish()
            existing = output_files(self.path, self.format)
            if existing and not self.overwrite:
                raise OutputError(
                    f"{self.path} appeared while writing it; pass --overwrite to replace it", path=self.path
                )
            with faults_named(self.path):
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
        """Write in a block that commits when it ends and aborts when it raises (SIGTERM too: see sigterm_raises)."""
        self._signals.enter_context(sigterm_raises())
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                self.commit()
            else:
                self.abort()
        finally:
            self._signals.close()

    # --- for subclasses ------------------------------------------------------------------------------------------

    def _claim(self, name: str) -> TensorSpec:
        """The spec of ``name``, which is about to be written; TargetError if undeclared or written already."""
        spec = self.specs.get(name)
        if spec is None:
            raise TargetError(f"{name!r} is not one of the {len(self.specs)} tensors declared for {self.path}")
        if name in self.written:
            raise TargetError(f"{name!r} was already written to {self.path}; each name is written once")
        return spec

    def _write_chunks(self, spec: TensorSpec, chunks: Iterable[memoryview]) -> int:  # noqa: ARG002 - a hook
        """Write the tensor's bytes from ``chunks``; the count of bytes they held. Writers with a ``byte_order``."""
        raise TargetError(
            f"the {self.format} writer of {self.path} declares a byte order but takes no bytes: cannot write {spec.name!r}"
        )

    def _check_specs(self) -> None:  # noqa: B027 - a hook: formats that limit names or dtypes override it
        """TargetError for a name or dtype the format cannot hold."""

    def _room(self) -> tuple[int, int]:
        """``(total bytes, bytes of the largest file)`` the output needs; one file of the tensors' bytes here."""
        total = sum(spec.nbytes for spec in self.specs.values())
        return total, total

    def _end_batch(self) -> None:  # noqa: B027 - a hook: only writers that buffer (TF checkpoints) override it
        """Write out what was buffered for the batch."""

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


class FileWriter(TensorWriter):
    """A writer of one file, written as a temporary file beside the output and renamed into place.

    Example:
        >>> from mapper.outputs.writers import KerasH5Writer
        >>> issubclass(KerasH5Writer, FileWriter)
        True
    """

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
        raise OutputError(
            f"cannot create a temporary file beside {self.path}: every name tried exists", path=self.path
        )  # pragma: no cover

    def _install(self, existing: list[Path]) -> None:
        del existing  # os.replace swaps the file in one step
        self._temporary.replace(self.path)

    def _discard(self) -> None:
        # Closing a file on a full disk can fail again (flushing what it buffered); the file goes all the same.
        with contextlib.suppress(Exception):
            self._close()
        temporary = getattr(self, "_temporary", None)
        if temporary is not None:
            temporary.unlink(missing_ok=True)

    @abc.abstractmethod
    def _close(self) -> None:
        """Implemented by each format."""


def as_numpy(value: Any) -> np.ndarray:
    """A NumPy array of ``value`` (a ``tf.Tensor``'s on the CPU is not copied).

    Example:
        >>> as_numpy([1, 2]).tolist()
        [1, 2]
    """
    array = value.numpy() if hasattr(value, "numpy") else value
    return np.asarray(array)


def dtype_name(value: Any) -> str:
    """The dtype name of a NumPy array or a ``tf.Tensor`` as specs spell it (``"string"`` for text).

    Example:
        >>> dtype_name(np.zeros(2, "float16")), dtype_name(np.array(["a"]))
        ('float16', 'string')
    """
    dtype = value.dtype
    name = getattr(dtype, "name", None)
    if hasattr(value, "numpy") and isinstance(name, str):  # a tf.Tensor: tf.string, tf.bfloat16, ...
        return name
    numpy_dtype = np.dtype(dtype)
    if numpy_dtype.kind in "OSU":
        return "string"
    return str(numpy_dtype)


__all__ = ["FileWriter", "TensorWriter", "as_numpy", "dtype_name"]
