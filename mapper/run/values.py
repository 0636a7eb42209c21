"""Turning the tensors a batch read into the values a plan gives its targets: join, transform, check, as tf.Tensors."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mapper.dtypes import DTYPE_SIZES
from mapper.errors import SourceError
from mapper.ops import NUMPY, ArrayBackend, apply_operations, combine_values
from mapper.plan import Assignment

# Tensors up to this size are transformed with NumPy, larger ones with TensorFlow ops. Measured here:
# on 16 KiB NumPy takes 55-75 us against 150-250 us for an eager op; at 1 MiB and above TensorFlow wins
# (transpose 1.1 ms against 1.5 ms, reshape 0.2 against 0.2-1 ms, cast 0.17 against 0.44 ms).
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


def transform(members: Sequence[Any], assignment: Assignment, where: str, tf: Any) -> Any:
    """Join the members (one unless concat/stack), apply the operations; a tf.Tensor, checked against the plan.

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
            found = (tuple(getattr(value, "shape", ())), str(getattr(value, "dtype", type(value).__name__)))
            _check_read(name, shape, found, assignment, where)
    if assignment.combine is None and not assignment.operations:
        only = members[0]
        return only if isinstance(only, tf.Tensor) else to_tensor(only, tf)
    if _nbytes(assignment) > NUMPY_OPS_MAX_BYTES:
        backend = tf_backend()
        tensors = [value if isinstance(value, tf.Tensor) else to_tensor(value, tf) for value in members]
        joined = tensors[0] if assignment.combine is None else combine_values(assignment.combine, tensors, backend)
        return apply_operations(assignment.operations, joined, backend)
    # No copy on CPU; NumPy is faster than TensorFlow ops on small tensors.
    arrays = [value.numpy() if isinstance(value, tf.Tensor) else value for value in members]
    joined = arrays[0] if assignment.combine is None else combine_values(assignment.combine, arrays, NUMPY)
    return tf.convert_to_tensor(apply_operations(assignment.operations, joined, NUMPY))


def to_tensor(value: Any, tf: Any) -> Any:
    """A tf.Tensor holding a NumPy array's values, in one copy.

    ``tf.convert_to_tensor`` copies a NumPy array twice (into a 16-byte-aligned buffer, then a 64-byte-aligned
    one): measured here, 0.11 s and twice the memory for an 89 MiB embedding. One copy into a 64-byte-aligned
    array handed over through DLPack takes 0.02 s, and the assign then adopts that buffer. Small tensors, and
    dtypes DLPack does not carry (bfloat16 and float8 from ml_dtypes), take the ordinary path.

    Example:
        >>> import tensorflow as tf
        >>> to_tensor(np.arange(3), tf).numpy().tolist()
        [0, 1, 2]
    """
    array = np.asarray(value)
    if array.nbytes <= NUMPY_OPS_MAX_BYTES or array.dtype.kind not in "biuf" or array.dtype.type.__module__ != "numpy":
        return tf.convert_to_tensor(array)
    buffer = np.empty(array.nbytes + _ALIGNMENT, np.uint8)
    start = -buffer.ctypes.data % _ALIGNMENT
    aligned = buffer[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    np.copyto(aligned, array)
    try:
        return tf.experimental.dlpack.from_dlpack(aligned.__dlpack__())
    except (TypeError, ValueError, RuntimeError, BufferError, tf.errors.InvalidArgumentError):
        return tf.convert_to_tensor(aligned)


_ALIGNMENT = 64  # what TensorFlow's CPU allocator gives its own tensors


@functools.cache
def tf_backend() -> ArrayBackend:
    """The TensorFlow ArrayBackend: ops run eagerly on whatever device holds the tensors.

    Example:
        >>> import tensorflow as tf
        >>> tf_backend().transpose(tf.constant([[1, 2]]), (1, 0)).shape
        TensorShape([2, 1])
    """
    import tensorflow as tf

    return ArrayBackend(
        transpose=tf.transpose,
        reshape=tf.reshape,
        cast=lambda value, dtype: tf.cast(value, tf.as_dtype(dtype)),
        concat=tf.concat,
        stack=tf.stack,
    )


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
