"""Turning the tensors a batch read into the values a plan gives its targets: join, transform, check; host or TF."""

from __future__ import annotations

import functools
import math
import mmap
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mapper.dtypes import DTYPE_SIZES, dtype_name, numpy_dtype
from mapper.errors import SourceError
from mapper.ops import NUMPY, ArrayBackend, Reshape, apply_operations, combine_values
from mapper.plan import Assignment

# Tensors up to this size are transformed by NumPy and copied by tf.convert_to_tensor: per-tensor overhead
# dominates. Larger ones are copied once, transforms fused into the copy, into a buffer TensorFlow adopts:
# measured here a fused transpose costs about what tf.transpose does (8-11 ms for 768x3072 float32), and
# it replaces a copy plus that op.
NUMPY_OPS_MAX_BYTES = 64 * 2**10


def assignment_value(assignment: Assignment, values: Mapping[str, Any], where: str, tf: Any) -> Any:
    """The assignment's target value as a tf.Tensor, from the batch's values.

    Example:
        >>> import tensorflow as tf
        >>> from mapper.ops import Transpose
        >>> from mapper.plan import RuleRef
        >>> a = Assignment("t", "t", "w", RuleRef("r.toml", 1), (Transpose((1, 0)),), (1, 2), "int64", (2, 1), "int64")
        >>> assignment_value(a, {"w": np.array([[1, 2]])}, "memory", tf).numpy().tolist()
        [[1], [2]]
    """
    return transform([values[name] for name in assignment.source_names], assignment, where, tf)


def transform(members: Sequence[Any], assignment: Assignment, where: str, tf: Any, *, adopt: bool = False) -> Any:
    """Join the members (one unless concat/stack), apply the operations; a tf.Tensor, checked against the plan.

    Large tensors are copied once: joins, transposes, reshapes, slices and casts are done while copying into
    one 64-byte-aligned buffer, which TensorFlow then adopts without another copy (see ``fused_array``).
    With ``adopt`` the caller hands over the only member: nothing else holds it or will read it afterwards, so
    when no copy is needed it may become the tensor's (and then the variable's) buffer itself.

    Raises:
        SourceError: a member does not have the shape and dtype the plan read it with.

    Example:
        >>> import tensorflow as tf
        >>> from mapper.plan import RuleRef
        >>> a = Assignment("t", "t", "w", RuleRef("r.toml", 1), (), (2,), "float32", (2,), "float32")
        >>> transform([np.zeros(3, "float32")], a, "memory", tf)
        Traceback (most recent call last):
        mapper.errors.SourceError: reading 'w' from memory gave [3] float32, not the [2] float32 its specs promised; ...
    """
    shapes = assignment.source_shapes
    for value, name, shape in zip(members, assignment.source_names, shapes, strict=True):
        if isinstance(value, tf.Tensor):
            _check_read(name, shape, (tuple(value.shape), value.dtype.name), assignment, where)
        else:
            _check_read(name, shape, _found(value), assignment, where)
    if assignment.combine is None and not assignment.operations:
        only = members[0]
        return only if isinstance(only, tf.Tensor) else to_tensor(only, tf, adopt=adopt)
    # No copy on CPU: a tf.Tensor's .numpy() shares its buffer.
    arrays = [value.numpy() if isinstance(value, tf.Tensor) else np.asarray(value) for value in members]
    if _nbytes(assignment) <= NUMPY_OPS_MAX_BYTES:
        joined = arrays[0] if assignment.combine is None else combine_values(assignment.combine, arrays, NUMPY)
        return tf.convert_to_tensor(apply_operations(assignment.operations, joined, NUMPY))
    result, owned = fused_array(arrays, assignment)
    return to_tensor(result, tf, adopt=owned or (adopt and _is_whole(result, arrays[0])))


def check_reads(assignment: Assignment, values: Mapping[str, Any], where: str) -> None:
    """SourceError unless every member the assignment reads has the shape and dtype the plan read it with.

    Example:
        >>> from mapper.plan import RuleRef
        >>> a = Assignment("t", "t", "w", RuleRef("r.toml", 1), (), (2,), "float32", (2,), "float32")
        >>> check_reads(a, {"w": np.zeros(2, "float64")}, "memory")
        Traceback (most recent call last):
        mapper.errors.SourceError: reading 'w' from memory gave [2] float64, not the [2] float32 its specs promised; ...
    """
    for name, shape in zip(assignment.source_names, assignment.source_shapes, strict=True):
        _check_read(name, shape, _found(values[name]), assignment, where)


def host_value(
    members: Sequence[Any], assignment: Assignment, where: str, *, adopt: bool = False
) -> tuple[np.ndarray, bool]:
    """The assignment's value as a NumPy array on the host, checked and copied at most once; and whether it is new.

    The members are checked against the plan, joined and transformed as ``fused_array`` does (a ``tf.Tensor``
    from a TensorFlow checkpoint's ``RestoreV2`` becomes NumPy first, sharing its buffer). ``True`` means nothing
    else holds the result (a new buffer, or with ``adopt`` the only member, handed over whole), so a backend may
    keep it as the variable's buffer; ``False`` means it may be the caller's array or a view of it.

    Raises:
        SourceError: a member does not have the shape and dtype the plan read it with.

    Example:
        >>> from mapper.ops import Transpose
        >>> from mapper.plan import RuleRef
        >>> a = Assignment("t", "t", "w", RuleRef("r.toml", 1), (Transpose((1, 0)),), (2, 2), "int64", (2, 2), "int64")
        >>> value, new = host_value([np.array([[1, 2], [3, 4]])], a, "memory")
        >>> value.tolist(), new
        ([[1, 3], [2, 4]], True)
    """
    arrays = [_as_host(member) for member in members]
    for value, name, shape in zip(arrays, assignment.source_names, assignment.source_shapes, strict=True):
        _check_read(name, shape, _found(value), assignment, where)
    if assignment.combine is None and not assignment.operations:
        return arrays[0], adopt
    result, owned = fused_array(arrays, assignment)
    return result, owned or (adopt and _is_whole(result, arrays[0]))


def _as_host(value: Any) -> np.ndarray:
    """A NumPy array from a NumPy array or a tf.Tensor (whose ``.numpy()`` shares its buffer on the CPU)."""
    if isinstance(value, np.ndarray):
        return value
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(value, tf.Tensor):
        array: np.ndarray = value.numpy()
        return array
    return np.asarray(value)


def _found(value: Any) -> tuple[tuple[Any, ...], str]:
    """Shape and dtype name of a NumPy array or a tf.Tensor, as the read checks compare them."""
    if isinstance(value, np.ndarray):
        return value.shape, dtype_name(value.dtype)
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(value, tf.Tensor):
        return tuple(value.shape), value.dtype.name
    return tuple(getattr(value, "shape", ())), str(getattr(value, "dtype", type(value).__name__))


def fused_array(
    arrays: Sequence[np.ndarray], assignment: Assignment, *, allocate: Allocate | None = None
) -> tuple[np.ndarray, bool]:
    """The assignment's value from its members, copied at most once; and whether the result is a new buffer.

    Transposes, slices, splits and reshapes of contiguous data are views; a cast is kept pending and done by
    the copy. The copy (a join, a reshape that cannot be a view, or the end of the chain when the view is not
    already contiguous, aligned and of the final dtype) goes into one new 64-byte-aligned buffer, from
    ``allocate(shape, dtype)`` when given (a writer's reused buffers; ``aligned_empty`` otherwise), done in
    cache-sized slabs when it reorders (see ``copy_into``). A result that is not new (``False``) is a view of
    the first member.

    Example:
        >>> from mapper.ops import Cast, Transpose
        >>> from mapper.plan import RuleRef
        >>> a = Assignment("t", "t", "w", RuleRef("r.toml", 1), (Transpose((1, 0)), Cast("float16")), (2, 3),
        ...                "float32", (3, 2), "float16")
        >>> result, new = fused_array([np.arange(6, dtype="float32").reshape(2, 3)], a)
        >>> result.tolist(), result.dtype.name, new, result.ctypes.data % 64
        ([[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]], 'float16', True, 0)
    """
    fuse = _Fuse(allocate or aligned_empty)
    joined = arrays[0] if assignment.combine is None else combine_values(assignment.combine, arrays, fuse.backend)
    result = apply_operations(assignment.operations, joined, fuse.backend)
    if fuse.pending is not None or not _ready(result):
        result = fuse.copy(result)
    return result, fuse.copied


def fused_into(array: np.ndarray, assignment: Assignment, out: np.ndarray) -> None:
    """Write the value of a one-member assignment into ``out``, its operations fused into that one copy.

    As ``fused_array`` without the new buffer at the end: the operations are views where they can be, and the
    final copy (with any pending cast) lands in ``out``, a variable's own memory say.

    Raises:
        SourceError: the member does not have the shape and dtype the plan read it with.

    Example:
        >>> from mapper.ops import Transpose
        >>> from mapper.plan import RuleRef
        >>> a = Assignment("t", "t", "w", RuleRef("r.toml", 1), (Transpose((1, 0)),), (2, 3), "int64", (3, 2), "int64")
        >>> out = np.zeros((3, 2), "int64")
        >>> fused_into(np.arange(6).reshape(2, 3), a, out)
        >>> out.tolist()
        [[0, 3], [1, 4], [2, 5]]
    """
    _check_read(assignment.source, assignment.source_shapes[0], _found(array), assignment, "the staging buffer")
    operations = assignment.operations
    # Trailing reshapes are applied to ``out`` instead (a view of contiguous memory), so that a reshape of a
    # transposed view does not cost a copy of its own.
    end = len(operations)
    while end and isinstance(operations[end - 1], Reshape):
        end -= 1
    fuse = _Fuse(aligned_empty)
    result = apply_operations(operations[:end], array, fuse.backend)
    copy_into(out.reshape(result.shape), result)


def reordering(assignment: Assignment) -> tuple[tuple[int, ...], tuple[int, ...], np.dtype[Any]] | None:
    """How the assignment's operations move its one member's elements, when all they do is move them; else None.

    Returned: ``(shape, strides, dtype)`` such that the value, read in C order, is the member's bytes seen
    through ``shape`` and byte ``strides`` (neighbouring axes merged, axes of length 1 left out), then cast to
    ``dtype``: every element of the member appears exactly once. Transposes, rearranges and reshapes qualify, with
    one cast at most; joins, slices and splits do not. Strides in C order mean the bytes stay as they are.
    Worked out on a stand-in array whose memory is never read, so it costs nothing.

    Example:
        >>> from mapper.ops import Rearrange, Transpose
        >>> from mapper.plan import RuleRef
        >>> a = Assignment("t", "t", "w", RuleRef("r.toml", 1), (Transpose((1, 0)),), (3, 4), "float32", (4, 3), "float32")
        >>> reordering(a)
        ((4, 3), (4, 16), dtype('float32'))
    """
    kind = numpy_dtype(assignment.source_dtype)
    shape = assignment.source_shape
    if assignment.combine is not None or kind.kind in "OSUV" or not math.prod(shape):
        return None
    strides = [kind.itemsize * math.prod(shape[at + 1 :]) for at in range(len(shape))]
    stand_in = np.lib.stride_tricks.as_strided(np.empty(1, kind), shape, strides, writeable=False)
    fuse = _Fuse(_no_copy)
    try:
        view = apply_operations(assignment.operations, stand_in, fuse.backend)
    except _WouldCopyError:
        return None
    if view.size != stand_in.size or view.ctypes.data != stand_in.ctypes.data or not view.ndim:
        return None
    kept = [(size, stride) for size, stride in zip(view.shape, view.strides, strict=True) if size > 1]
    if not kept:
        kept = [(1, kind.itemsize)]
    merged = np.lib.stride_tricks.as_strided(stand_in, [size for size, _ in kept], [stride for _, stride in kept])
    sizes, steps = _merged(merged)
    expected = kind.itemsize
    for stride, size in sorted(zip(steps, sizes, strict=True)):
        if stride != expected:
            return None
        expected *= size
    return tuple(sizes), tuple(steps), fuse.pending or kind


class _WouldCopyError(Exception):
    """Raised by ``reordering``'s allocator: the operations need a copy, so they do more than move elements."""


def _no_copy(shape: Sequence[int], dtype: Any) -> np.ndarray:  # noqa: ARG001 - an Allocate that refuses
    raise _WouldCopyError


def mapped_empty(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """A new C-contiguous array in an anonymous memory map of ordinary pages (page-aligned, present), zero-filled.

    For buffers that become a variable's value. NumPy's own large buffers ask for huge pages, and on a VM that
    hands free memory back to its host their first touch was measured here at 4-7 s for 400 MiB, against
    0.3-0.45 s in ordinary pages.

    Example:
        >>> array = mapped_empty((3, 5), "float32")
        >>> array.shape, array.ctypes.data % 4096, array.flags.writeable
        ((3, 5), 0, True)
    """
    kind = np.dtype(dtype)
    nbytes = math.prod(shape) * kind.itemsize
    pages = max(-(-nbytes // mmap.PAGESIZE), 1) * mmap.PAGESIZE
    memory = mmap.mmap(-1, pages, **_POPULATED) if _POPULATED else mmap.mmap(-1, pages)
    array: np.ndarray = np.frombuffer(memory, np.uint8)[:nbytes].view(kind).reshape(tuple(shape))
    return array


# Every caller writes its whole buffer at once, so its pages are made present when it is mapped (Linux): measured
# here, 94 MiB took 0.031 s mapped populated against 0.062 s faulted in page by page.
_POPULATED: dict[str, int] = (
    {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE} if hasattr(mmap, "MAP_POPULATE") else {}
)


def aligned_empty(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """A new uninitialised C-contiguous array whose data starts on a 64-byte boundary.

    Example:
        >>> array = aligned_empty((3, 5), "float32")
        >>> array.shape, array.ctypes.data % 64, array.flags.c_contiguous
        ((3, 5), 0, True)
    """
    kind = np.dtype(dtype)
    nbytes = math.prod(shape) * kind.itemsize
    buffer = np.empty(nbytes + _ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % _ALIGNMENT
    array: np.ndarray = buffer[start : start + nbytes].view(kind).reshape(tuple(shape))
    return array


class _Fuse:
    """The NumPy backend of one fused copy: views where possible, one aligned copy where not, casts deferred."""

    def __init__(self, allocate: Allocate) -> None:
        self.allocate = allocate
        self.pending: np.dtype[Any] | None = None  # the dtype of a cast not yet done
        self.copied = False  # the value is (a view of) a buffer made here
        self.backend = ArrayBackend(
            transpose=np.transpose, reshape=self.reshape, cast=self.cast, concat=self.concat, stack=self.stack
        )

    def cast(self, array: np.ndarray, dtype: str) -> np.ndarray:
        wanted = numpy_dtype(dtype)
        if self.pending is not None:  # a second cast: the first one's rounding must happen first
            array = self.copy(array)
        if wanted != array.dtype:  # a rule's cast = "target" to the dtype the tensor has already costs nothing
            self.pending = wanted
        return array

    def reshape(self, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        try:
            return np.reshape(array, shape, copy=False)
        except ValueError:  # a transposed view: the copy that NumPy would make goes into the aligned buffer
            return np.reshape(self.copy(array), shape)

    def copy(self, array: np.ndarray) -> np.ndarray:
        destination = self.allocate(array.shape, self.pending or array.dtype)
        copy_into(destination, array)
        self.pending, self.copied = None, True
        return destination

    def concat(self, arrays: list[np.ndarray], axis: int) -> np.ndarray:
        first = arrays[0].shape
        axis %= len(first)
        shape = (*first[:axis], sum(array.shape[axis] for array in arrays), *first[axis + 1 :])
        return self._join(np.concatenate, arrays, axis, shape)

    def stack(self, arrays: list[np.ndarray], axis: int) -> np.ndarray:
        first = arrays[0].shape
        axis %= len(first) + 1
        return self._join(np.stack, arrays, axis, (*first[:axis], len(arrays), *first[axis:]))

    def _join(self, join: Any, arrays: list[np.ndarray], axis: int, shape: tuple[int, ...]) -> np.ndarray:
        destination = self.allocate(shape, arrays[0].dtype)
        join(arrays, axis=axis, out=destination)
        self.copied = True
        return destination


def copy_into(destination: np.ndarray, source: np.ndarray) -> None:
    """``np.copyto(destination, source, casting="unsafe")`` for a C-contiguous destination, in cache-sized slabs.

    A copy that reorders (a transpose) reads its source with long strides; NumPy's single pass then misses the
    cache at every element. Here axes that are contiguous in both are merged first, and the copy is cut along the
    source's longest stride into slabs whose source bytes fit in ``SLAB_BYTES``. Measured here: a [768, 3072]
    float32 transpose in one ``np.copyto`` took 10-12 ms, in slabs 3.5-4.2 ms; [3072, 768] 7 ms against 2.8-4 ms.

    Example:
        >>> source = np.arange(200_000, dtype="float32").reshape(400, 500)
        >>> destination = np.empty((500, 400), "float64")
        >>> copy_into(destination, source.T)
        >>> bool((destination == source.T).all())
        True
    """
    if (
        source.ndim < 2
        or source.nbytes <= SLAB_BYTES
        or source.flags.c_contiguous
        or not destination.flags.c_contiguous
    ):
        np.copyto(destination, source, casting="unsafe")
        return
    if source.nbytes < PARALLEL_COPY_BYTES or source.shape != destination.shape or destination.shape[0] < 2:
        _copy_reordered(destination, source)
        return
    half = destination.shape[0] // 2
    other = _copier().submit(_copy_reordered, destination[half:], source[half:])
    try:
        _copy_reordered(destination[:half], source[:half])
    finally:
        other.result()  # never return (or raise) while the other half is still being written


# A reordering copy at least this large is cut in two along the destination's first axis, the second half copied
# on another thread: NumPy copies without holding Python's lock. Measured here, a [3072, 768] float32 transpose
# took 2.4 ms on one core and 1.6 ms on two.
PARALLEL_COPY_BYTES = 4 * 2**20


@functools.cache
def _copier() -> ThreadPoolExecutor:
    """The one thread that copies second halves (made at the first large copy, then kept)."""
    return ThreadPoolExecutor(1, thread_name_prefix="weight-mapper copy")


def _copy_reordered(destination: np.ndarray, source: np.ndarray) -> None:
    shape, strides = _merged(source)
    _copy_slabs(destination.reshape(shape), np.lib.stride_tricks.as_strided(source, shape, strides, writeable=False))


def _merged(array: np.ndarray) -> tuple[list[int], list[int]]:
    """The array's shape and strides with neighbouring axes merged where one stride steps over the other axis."""
    shape, strides = [array.shape[0]], [array.strides[0]]
    for size, stride in zip(array.shape[1:], array.strides[1:], strict=True):
        if strides[-1] == size * stride:
            shape[-1] *= size
            strides[-1] = stride
        else:
            shape.append(size)
            strides.append(stride)
    return shape, strides


def _copy_slabs(destination: np.ndarray, source: np.ndarray) -> None:
    """Copy in slabs along the source's longest stride, each reading at most about ``SLAB_BYTES`` of the source."""
    sizes, strides = source.shape, source.strides
    axis = max(range(source.ndim), key=lambda at: abs(strides[at]) if sizes[at] > 1 else -1)
    spans = [(size - 1) * abs(stride) for size, stride in zip(sizes, strides, strict=True)]
    unit = source.itemsize + sum(spans) - spans[axis]  # the source bytes one step along the axis covers
    step = max(1, SLAB_BYTES // unit)
    if step >= sizes[axis] or source.nbytes <= SLAB_BYTES:
        np.copyto(destination, source, casting="unsafe")
        return
    index: list[slice] = [slice(None)] * source.ndim
    for start in range(0, sizes[axis], step):
        index[axis] = slice(start, start + step)
        part = tuple(index)
        if unit > SLAB_BYTES:  # one step along this axis is already too much: cut the slab along the next axis
            _copy_slabs(destination[part], source[part])
        else:
            np.copyto(destination[part], source[part], casting="unsafe")


# A reordering copy reads at most about this much of its source per slab: it stays in the L2 cache (measured best of
# 32 KiB to 512 KiB for BERT's kernels on this machine's 1 MiB L2).
SLAB_BYTES = 128 * 2**10
# What gives a fused copy its buffer: ``allocate(shape, dtype)``, a new or reused C-contiguous, 64-byte-aligned array.
Allocate = Callable[[Sequence[int], Any], np.ndarray]


def _ready(array: np.ndarray) -> bool:
    """Whether TensorFlow can adopt the array's buffer as it is: C-contiguous, 64-byte aligned, native order."""
    return bool(array.flags.c_contiguous) and array.ctypes.data % _ALIGNMENT == 0 and array.dtype.isnative


def _is_whole(result: np.ndarray, member: np.ndarray) -> bool:
    """Whether a view is the whole member (a reshape of it): then handing it over hands over the member."""
    return result.ctypes.data == member.ctypes.data and result.nbytes == member.nbytes


def to_tensor(value: Any, tf: Any, *, adopt: bool = False) -> Any:
    """A tf.Tensor holding a NumPy array's values, in at most one copy; none if ``adopt`` and the array allows.

    ``tf.convert_to_tensor`` copies a NumPy array twice (into a 16-byte-aligned buffer, then a 64-byte-aligned
    one): measured here, 0.11 s and twice the memory for an 89 MiB embedding. One copy into a 64-byte-aligned
    array handed over through DLPack takes 0.02 s, and the assign then adopts that buffer. With ``adopt`` the
    caller hands the array over (nothing else holds it, nothing reads it afterwards): an array that is already
    C-contiguous and 64-byte aligned is handed over as it is, through a writable view if it is read-only (TF 2.21
    takes only unversioned DLPack capsules, which cannot say read-only, so NumPy refuses to export a read-only
    array). Small tensors that are not handed over, and dtypes DLPack does not carry (bfloat16 and float8 from
    ml_dtypes), take the ordinary path.

    Example:
        >>> import tensorflow as tf
        >>> to_tensor(np.arange(3), tf).numpy().tolist()
        [0, 1, 2]
    """
    array = np.asarray(value)
    carried = array.dtype.kind in "biuf" and array.dtype.type.__module__ == "numpy"  # what DLPack can carry
    # A handed-over array is adopted whatever its size: tf.convert_to_tensor costs about 45 us even for a small
    # one (5,000 small variables: 0.45 s), a DLPack hand-over under 2 us.
    shared = writable_view(array) if adopt and carried and _ready(array) else None
    if shared is None and (array.nbytes <= NUMPY_OPS_MAX_BYTES or not carried):
        return tf.convert_to_tensor(array)
    if shared is None:
        shared = aligned_empty(array.shape, array.dtype)
        np.copyto(shared, array)
    try:
        return tf.experimental.dlpack.from_dlpack(shared.__dlpack__())
    except (TypeError, ValueError, RuntimeError, BufferError, tf.errors.InvalidArgumentError):
        return tf.convert_to_tensor(shared)


def writable_view(array: np.ndarray) -> np.ndarray | None:
    """A writable view of the array (the array itself is not changed); None if its memory is read-only.

    Example:
        >>> frozen = np.zeros(2).view()  # read-only over a writable buffer, as the sources hand arrays over
        >>> frozen.flags.writeable = False
        >>> writable_view(frozen).flags.writeable, frozen.flags.writeable
        (True, False)
    """
    if array.flags.writeable:
        return array
    view = array.view()
    try:
        view.flags.writeable = True  # allowed when the buffer underneath is writable, as the sources' buffers are
    except ValueError:
        return None
    return view


_ALIGNMENT = 64  # what TensorFlow's CPU allocator gives its own tensors


def tensor_bytes(shape: Sequence[int], dtype: str) -> int:
    """Bytes of a tensor of ``shape`` and ``dtype``; 0 for dtypes without a fixed size (strings).

    Example:
        >>> tensor_bytes((2, 3), "float32"), tensor_bytes((4,), "string")
        (24, 0)
    """
    nbytes = DTYPE_SIZES.get(dtype, 0)
    for dim in shape:
        nbytes *= dim
    return nbytes


def _nbytes(assignment: Assignment) -> int:
    """Source bytes the assignment reads: every member of a join."""
    shapes = assignment.source_shapes
    return sum(tensor_bytes(shape, assignment.source_dtype) for shape in shapes)


def _check_read(
    name: str, expected: tuple[int, ...], found: tuple[tuple[Any, ...], str], assignment: Assignment, where: str
) -> None:
    shape, dtype = found
    if shape != expected or dtype != assignment.source_dtype:
        raise SourceError(
            f"reading {name!r} from {where} gave {spec_text(shape, dtype)}, not the "
            f"{spec_text(expected, assignment.source_dtype)} its specs promised; the source is damaged "
            "or changed while applying",
            path=where,
        )


def spec_text(shape: Sequence[int | None] | None, dtype: str) -> str:
    """A shape and dtype as messages show them, with ``?`` for dimensions a TF1 graph leaves unknown.

    Example:
        >>> spec_text((2, None), "float32"), spec_text(None, "int64")
        ('[2, ?] float32', '[unknown shape] int64')
    """
    if shape is None:
        return f"[unknown shape] {dtype}"
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in shape) + f"] {dtype}"
