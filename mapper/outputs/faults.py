"""Write faults (a full disk, a file-size limit, a read-only directory) named as OutputError, before and while writing."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from mapper.errors import MapperError, OutputError
from mapper.text import first_line, human_bytes

# What each system error means for an output, and what to do about it.
_CAUSES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free some space on its file system, or write the output elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free some space within your quota, or write the output elsewhere"),
    errno.EFBIG: (
        "file too large: the file size limit (ulimit -f) was reached",
        "raise the limit (ulimit -f unlimited), or write the output where no limit applies",
    ),
    errno.EACCES: ("permission denied", "make its directory writable, or write the output elsewhere"),
    errno.EPERM: ("permission denied", "make its directory writable, or write the output elsewhere"),
    errno.EROFS: ("read-only file system", "write the output to a writable file system"),
}
# Room HDF5 needs beyond the tensors' bytes: object headers, group B-trees, attributes (Keras writes several).
H5_MARGIN_BYTES = 256 * 1024
H5_MARGIN_PER_DATASET = 4096


def fault_errno(error: BaseException) -> int | None:
    """The write fault ``error`` stands for: its ``errno``, or one its message names (TensorFlow and h5py errors).

    TensorFlow raises its own errors (``ResourceExhaustedError``: "...; No space left on device") and h5py at
    times a ``RuntimeError`` ("errno = 27, error message = 'File too large'"), so the message is read too.

    Example:
        >>> fault_errno(OSError(errno.ENOSPC, "No space left on device")) == errno.ENOSPC
        True
        >>> fault_errno(RuntimeError("unable to extend file properly, errno = 27, error message = 'File too large'"))
        27
        >>> fault_errno(ValueError("bad shape")) is None
        True
    """
    code = error.errno if isinstance(error, OSError) else None
    if code in _CAUSES:
        return code
    text = str(error).lower()
    for known in _CAUSES:
        if os.strerror(known).lower() in text:
            return known
    return code


def describe_fault(code: int) -> tuple[str, str]:
    """``(cause, advice)`` for the system error ``code``, in the words OutputError messages use.

    Example:
        >>> describe_fault(errno.ENOSPC)[0], describe_fault(errno.EACCES)[0]
        ('no space left on device', 'permission denied')
    """
    return _CAUSES.get(code, (os.strerror(code).lower(), "fix the cause, or write the output elsewhere"))


def output_error(path: str | os.PathLike[str], error: BaseException) -> OutputError:
    """The OutputError for ``error``, raised while writing the output at ``path``: names the output and the cause.

    Example:
        >>> print(output_error("out/w.safetensors", OSError(errno.EFBIG, "File too large")))
        cannot write out/w.safetensors: file too large: the file size limit (ulimit -f) was reached; raise the limit ...
    """
    code = fault_errno(error)
    if code is None:
        return OutputError(f"cannot write {os.fspath(path)}: {first_line(error)}", path=path)
    cause, advice = describe_fault(code)
    return OutputError(f"cannot write {os.fspath(path)}: {cause}; {advice}", path=path, errno=code)


@contextlib.contextmanager
def faults_named(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a write fault inside the block into an OutputError for ``path`` (chained); anything else passes.

    A write fault is any OSError, or another library's error whose message names one (see ``fault_errno``).
    MapperErrors pass unchanged: they already say what is wrong.

    Example:
        >>> with faults_named("out/ckpt"):
        ...     raise OSError(errno.EROFS, "Read-only file system")
        Traceback (most recent call last):
        mapper.errors.OutputError: cannot write out/ckpt: read-only file system; write the output to a writable ...
    """
    try:
        yield
    except MapperError:
        raise
    except Exception as error:
        if isinstance(error, OSError) or fault_errno(error) is not None:
            raise output_error(path, error) from error
        raise


def check_writable(path: Path) -> None:
    """Refuse an output whose directory cannot take new files (permission denied, a read-only file system).

    The message says ``permission denied in directory ...`` or ``read-only file system in directory ...``.

    Example:
        >>> import tempfile
        >>> check_writable(Path(tempfile.gettempdir(), "model.safetensors"))  # a writable directory passes
    """
    directory = path.parent
    if os.access(directory, os.W_OK | os.X_OK):
        return
    code = errno.EROFS if os.statvfs(directory).f_flag & os.ST_RDONLY else errno.EACCES
    cause, advice = describe_fault(code)
    raise OutputError(f"cannot write {path}: {cause} in directory {directory}; {advice}", path=path, errno=code)


def check_room(path: Path, *, total: int, largest_file: int) -> None:
    """Refuse an output that cannot fit: ``total`` bytes over the free space, a file over the file size limit.

    ``largest_file`` is the size of the largest single file the output will have (at least). Unknown free space
    (a file system that reports none) lets the write go ahead; the write then names any fault it meets.

    Example:
        >>> check_room(Path("/tmp/model.safetensors"), total=8, largest_file=8)
        >>> check_room(Path("/tmp/model.safetensors"), total=2**70, largest_file=8)
        Traceback (most recent call last):
        mapper.errors.OutputError: cannot write /tmp/model.safetensors: no space left on device: it needs ...
    """
    free = free_bytes(path.parent)
    if free is not None and total > free:
        raise OutputError(
            f"cannot write {path}: no space left on device: it needs about {human_bytes(total)} and the file system "
            f"of {path.parent} has {human_bytes(free)} free; {_CAUSES[errno.ENOSPC][1]}",
            path=path,
            errno=errno.ENOSPC,
        )
    limit = file_size_limit()
    if limit is not None and largest_file > limit:
        raise OutputError(
            f"cannot write {path}: file too large: the file size limit (ulimit -f) is {human_bytes(limit)}, and the "
            f"output needs a file of about {human_bytes(largest_file)}; {_CAUSES[errno.EFBIG][1]}",
            path=path,
            errno=errno.EFBIG,
        )


def h5_size(total: int, datasets: int) -> int:
    """The room to ask for before h5py writes ``datasets`` datasets of ``total`` bytes: the bytes plus a margin.

    h5py can crash (a segmentation fault) when the disk fills up under it, so an HDF5 output is only started
    when it fits with room to spare.

    Example:
        >>> h5_size(0, 0) == H5_MARGIN_BYTES
        True
    """
    return total + total // 100 + H5_MARGIN_BYTES + H5_MARGIN_PER_DATASET * datasets


def free_bytes(directory: Path) -> int | None:
    """Bytes free for new files in ``directory``'s file system (root may use the reserved blocks), None if unknown.

    Example:
        >>> free_bytes(Path("/tmp")) > 0
        True
    """
    try:
        stats = os.statvfs(directory)
    except OSError:
        return None
    if stats.f_blocks == 0:  # pseudo and some network file systems report no sizes at all
        return None
    blocks = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail
    return blocks * stats.f_frsize


def file_size_limit() -> int | None:
    """The process's file size limit in bytes (``ulimit -f``; writes past it fail with EFBIG), None if unlimited.

    Example:
        >>> limit = file_size_limit()
        >>> limit is None or limit > 0
        True
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


__all__ = [
    "H5_MARGIN_BYTES",
    "H5_MARGIN_PER_DATASET",
    "check_room",
    "check_writable",
    "describe_fault",
    "fault_errno",
    "faults_named",
    "file_size_limit",
    "free_bytes",
    "h5_size",
    "output_error",
]
