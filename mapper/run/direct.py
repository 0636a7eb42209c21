"""Direct writes: large untransformed tensors read straight into the variable's own memory, no tensor-sized buffer."""

from __future__ import annotations

import mmap
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mapper.dtypes import numpy_dtype
from mapper.ops import Cast, Reshape
from mapper.plan import Assignment
from mapper.run.batches import Batch
from mapper.run.values import fused_into, tensor_bytes
from mapper.sources.base import DirectSource, Source

# Tensors at least this large are written directly. Below it a batch's one read and the variable adopting its
# buffer cost less than a read per tensor (5,000 variables of 19 KiB: per-tensor overhead dominates).
DIRECT_MIN_BYTES = 2**20


class Staging:
    """One reused host buffer for values on their way into a variable that copies them (TensorFlow's scatter).

    Its memory is an anonymous map of ordinary pages, allocated once at the largest size asked for so far and
    then reused: a fresh tensor-sized buffer per tensor costs page faults (and NumPy's large buffers ask for huge
    pages, which on a machine whose free memory was handed back to the hypervisor took seconds to fault in).
    Page-aligned, so TensorFlow takes it without a copy.

    Example:
        >>> staging = Staging()
        >>> array = staging.array((2, 3), "float32")
        >>> array.shape, array.ctypes.data % 4096, staging.capacity
        ((2, 3), 0, 4096)
    """

    def __init__(self) -> None:
        self._memory: np.ndarray | None = None

    @property
    def capacity(self) -> int:
        """Bytes held now (0 before the first ``array``)."""
        return 0 if self._memory is None else int(self._memory.nbytes)

    def array(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """A writable C-contiguous array of ``shape`` and ``dtype`` over the buffer (valid until the next call)."""
        kind = np.dtype(dtype)
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * kind.itemsize, 1)
        if self._memory is None or self._memory.nbytes < nbytes:
            self._memory = None  # the old map goes before the new one is made
            pages = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
            self._memory = np.frombuffer(mmap.mmap(-1, pages), np.uint8)
        count = int(np.prod(shape, dtype=np.int64)) * kind.itemsize
        array: np.ndarray = self._memory[:count].view(kind).reshape(tuple(shape))
        return array


def split_batch(batch: Batch, source: Source, slots: Mapping[str, Any]) -> tuple[tuple[Assignment, ...], Batch]:
    """The batch's assignments to write directly, and the batch of the others (what is still read with ``read``).

    Direct: the source can read the tensor into a buffer (``DirectSource``), the slot can take it in place
    (``writes_in_place``), the assignment reads one tensor (no join; operations are fused into the copy), the
    tensor feeds no other assignment of the batch, and it has at least ``DIRECT_MIN_BYTES``.

    Example:
        >>> from mapper.plan import RuleRef
        >>> from mapper.sources.memory import MemorySource
        >>> a = Assignment("t", "t", "w", RuleRef("r.toml", 1), (), (2,), "float32", (2,), "float32")
        >>> direct, rest = split_batch(Batch(None, ("w",), 8, (a,)), MemorySource({"w": np.zeros(2, "float32")}), {})
        >>> direct, rest.names
        ((), ('w',))
    """
    if not isinstance(source, DirectSource):
        return (), batch
    uses = Counter(name for assignment in batch.assignments for name in assignment.source_names)
    direct = tuple(
        assignment
        for assignment in batch.assignments
        if _direct(assignment, slots[assignment.target], source, uses[assignment.source])
    )
    if not direct:
        return (), batch
    rest = tuple(assignment for assignment in batch.assignments if assignment not in direct)
    names = tuple(dict.fromkeys(name for assignment in rest for name in assignment.source_names))
    nbytes = sum(_nbytes(assignment) for assignment in rest)
    return direct, Batch(batch.source_id, names, nbytes, rest)


def _direct(assignment: Assignment, slot: Any, source: DirectSource, uses: int) -> bool:
    if assignment.combine is not None or uses != 1 or _nbytes(assignment) < DIRECT_MIN_BYTES:
        return False
    writes = getattr(slot, "writes_in_place", None)
    return bool(writes is not None and writes(assignment.target_dtype) and source.reads_into(assignment.source))


def _nbytes(assignment: Assignment) -> int:
    return sum(tensor_bytes(shape, assignment.source_dtype) for shape in assignment.source_shapes)


def is_plain_copy(assignment: Assignment) -> bool:
    """Whether the assignment copies its tensor's bytes unchanged: no operations, or only no-op ones.

    A cast to the dtype the tensor has and a reshape to the shape it has change nothing (rule files write
    ``cast = "target"`` to accept whatever the model holds); a cast to another dtype and back does (it rounds).

    Example:
        >>> from mapper.ops import Cast, Transpose
        >>> from mapper.plan import RuleRef
        >>> def a(*ops):
        ...     return Assignment("t", "t", "w", RuleRef("r.toml", 1), ops, (2, 2), "float32", (2, 2), "float32")
        >>> is_plain_copy(a()), is_plain_copy(a(Cast("float32"))), is_plain_copy(a(Transpose((1, 0))))
        (True, True, False)
    """
    same = assignment.source_shapes[0] == assignment.target_shape and assignment.source_dtype == assignment.target_dtype
    return same and all(
        (isinstance(op, Cast) and op.dtype == assignment.source_dtype)
        or (isinstance(op, Reshape) and op.shape == assignment.target_shape)
        for op in assignment.operations
    )


def write_direct(assignment: Assignment, source: DirectSource, slot: Any, staging: Staging, read: Staging) -> None:
    """Read the assignment's tensor into the slot's variable: into its memory, or through ``staging`` into it.

    A tensor with operations is read whole into ``read`` first (so a failing read changes no variable), then
    transformed in one copy into the variable (``fused_into``).

    Example:
        >>> import tempfile
        >>> import tensorflow as tf
        >>> from mapper.plan import RuleRef
        >>> from mapper.run.slots import TFSlot
        >>> from mapper.sources.tf_checkpoint import TFCheckpointSource
        >>> variable = tf.Variable(tf.zeros([2, 3]))
        >>> name = "w/.ATTRIBUTES/VARIABLE_VALUE"
        >>> a = Assignment("t", "t", name, RuleRef("r.toml", 1), (), (2, 3), "float32", (2, 3), "float32")
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     prefix = tf.train.Checkpoint(w=tf.Variable(tf.ones([2, 3]))).write(f"{tmp}/ckpt")
        ...     slot = TFSlot.of("t", variable, tf, eager=True)
        ...     write_direct(a, TFCheckpointSource(prefix), slot, Staging(), Staging())
        >>> variable.numpy().tolist()
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """
    if is_plain_copy(assignment):
        slot.write_in_place(lambda destination: source.read_into(assignment.source, destination), staging)
        return
    member = read.array(assignment.source_shapes[0], numpy_dtype(assignment.source_dtype))
    source.read_into(assignment.source, member)
    slot.write_in_place(lambda destination: fused_into(member, assignment, destination), staging)


__all__ = ["DIRECT_MIN_BYTES", "Staging", "is_plain_copy", "split_batch", "write_direct"]
