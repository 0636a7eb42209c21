"""Direct writes: large untransformed tensors read straight into the variable's own memory, no tensor-sized buffer."""

from __future__ import annotations

import contextlib
import mmap
import sys
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mapper.dtypes import numpy_dtype
from mapper.errors import ApplyError, CorruptSourceError
from mapper.ops import Cast, Reshape
from mapper.plan import Assignment
from mapper.run.bands import MAX_BAND_BYTES, Layout, band_bytes, reorder_into
from mapper.run.batches import Batch
from mapper.run.values import fused_into, mapped_empty, reordering, tensor_bytes
from mapper.sources._common import VERIFY_CHUNK, writable_bytes
from mapper.sources.base import ChunkedSource, Source

# Tensors at least this large are written directly. Below it a batch's one read and the variable adopting its
# buffer cost less than a read per tensor (5,000 variables of 19 KiB: per-tensor overhead dominates).
DIRECT_MIN_BYTES = 2**20
# The byte order a tensor's stored bytes must have to be copied into a variable as they are.
_HOST_ORDER = "<" if sys.byteorder == "little" else ">"


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
        self._preparing: threading.Thread | None = None

    @property
    def capacity(self) -> int:
        """Bytes held now (0 before the first ``array``)."""
        self._wait()
        return 0 if self._memory is None else int(self._memory.nbytes)

    def prepare(self, nbytes: int) -> None:
        """Map ``nbytes`` in a background thread, so that the pages are present by the time ``array`` needs them.

        Making 94 MiB of pages present took 0.03 s here on an idle machine and several times that when the VM
        had handed its free memory back to the host; done while the verify pass reads the source (the kernel
        fills the pages without Python's lock), it costs the apply nothing. A failure here is left for ``array``
        to meet again.
        """
        self._wait()
        if nbytes <= self.capacity:
            return

        def map_pages() -> None:
            with contextlib.suppress(MemoryError, OSError):
                self._memory = mapped_empty((-(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE,), np.uint8)

        self._memory = None  # the old map goes before the new one is made
        self._preparing = threading.Thread(target=map_pages, name="weight-mapper staging", daemon=True)
        self._preparing.start()

    def _wait(self) -> None:
        if self._preparing is not None:
            self._preparing.join()
            self._preparing = None

    def array(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """A writable C-contiguous array of ``shape`` and ``dtype`` over the buffer (valid until the next call)."""
        self._wait()
        kind = np.dtype(dtype)
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * kind.itemsize, 1)
        if self._memory is None or self._memory.nbytes < nbytes:
            self._memory = None  # the old map goes before the new one is made
            pages = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
            self._memory = mapped_empty((pages,), np.uint8)
        count = int(np.prod(shape, dtype=np.int64)) * kind.itemsize
        array: np.ndarray = self._memory[:count].view(kind).reshape(tuple(shape))
        return array


class DirectBuffers:
    """What one apply's direct writes reuse: the chunk buffer reads go through, and three staging buffers.

    ``staging`` holds values on their way into TensorFlow variables, ``read`` tensors read whole before their
    operations are fused into a variable, ``band`` the bands of a tensor moved into place as it is read, ``chunk``
    is the small buffer every other read goes through (it stays in the CPU's cache: see
    ``mapper.sources._common.VERIFY_CHUNK``).

    Example:
        >>> buffers = DirectBuffers()
        >>> len(buffers.chunk), buffers.staging.capacity
        (131072, 0)
    """

    def __init__(self) -> None:
        self.staging = Staging()
        self.read = Staging()
        self.band = Staging()
        self.chunk = memoryview(np.empty(VERIFY_CHUNK, np.uint8).data).cast("B")


def reads_into(source: Source, name: str) -> bool:
    """Whether ``read_into`` can read tensor ``name`` of ``source``: stored raw, in this machine's byte order.

    Example:
        >>> from mapper.sources.memory import MemorySource
        >>> reads_into(MemorySource({"w": np.zeros(2)}), "w")
        False
    """
    return isinstance(source, ChunkedSource) and source.raw_order(name) == _HOST_ORDER


def read_into(source: ChunkedSource, name: str, destination: np.ndarray, chunk: memoryview) -> None:
    """Fill ``destination`` (writable, C-contiguous, the tensor's byte length) with tensor ``name``, through ``chunk``.

    The source checks what its format allows while the chunks pass (lengths; a TF checkpoint's crc32c once the
    last one is read); if a check fails, ``destination`` holds some of the bytes.

    Raises:
        CorruptSourceError: the source's, or the tensor gave another count of bytes than ``destination`` holds.

    Example:
        >>> import tempfile
        >>> from safetensors.numpy import save_file
        >>> from mapper.sources.safetensors import SafetensorsSource
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_file({"w": np.arange(3, dtype="int32")}, f"{tmp}/x.safetensors")
        ...     destination = np.zeros(3, "int32")
        ...     read_into(SafetensorsSource(f"{tmp}/x.safetensors"), "w", destination, memoryview(bytearray(8)))
        >>> destination.tolist()
        [0, 1, 2]
    """
    view = writable_bytes(destination)
    done = 0
    for piece in source.read_chunks(name, chunk):
        if done + len(piece) > len(view):
            break
        view[done : done + len(piece)] = piece
        done += len(piece)
    else:
        if done == len(view):
            return
    where = str(getattr(source, "description", "the source"))
    raise CorruptSourceError(
        f"reading {name!r} from {where} gave more or fewer bytes than the {len(view)} its spec needs; the source is "
        "damaged or changed while applying",
        path=where,
    )


def split_batch(batch: Batch, source: Source, slots: Mapping[str, Any]) -> tuple[tuple[Assignment, ...], Batch]:
    """The batch's assignments to write directly, and the batch of the others (what is still read with ``read``).

    Direct: the source can read the tensor in chunks as stored (``reads_into``), the slot can take it in place
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
    if not isinstance(source, ChunkedSource):
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


def _direct(assignment: Assignment, slot: Any, source: Source, uses: int) -> bool:
    if assignment.combine is not None or uses != 1 or _nbytes(assignment) < DIRECT_MIN_BYTES:
        return False
    writes = getattr(slot, "writes_in_place", None)
    return bool(writes is not None and writes(assignment.target_dtype) and reads_into(source, assignment.source))


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


def _band_layout(assignment: Assignment, slot: Any) -> Layout | None:
    """How the tensor is moved into place band by band as it is read (``reorder_into``), if it is.

    Only into a buffer that is not the variable's yet (a staging buffer, a new array's): a read failing midway
    then changes no variable.
    """
    if slot.fills_own_memory:
        return None
    layout = reordering(assignment)
    if layout is None or band_bytes(layout) > MAX_BAND_BYTES or layout[2] != numpy_dtype(assignment.target_dtype):
        return None
    return layout


def write_direct(
    assignment: Assignment, source: ChunkedSource, slot: Any, buffers: DirectBuffers, *, whole_first: bool = False
) -> None:
    """Read the assignment's tensor into the slot's variable: into its memory, or through a staging buffer into it.

    A tensor whose operations only move its elements (transposes, rearranges, reshapes, one cast) going into a
    buffer that is not yet the variable's (TensorFlow's staging, a new JAX array's) is moved into place band by
    band as it is read (``reorder_into``). Any other tensor with operations, and with ``whole_first`` a plain copy
    too, is read whole into ``buffers.read`` first (so a failing read changes no variable), then transformed (or
    copied) in one copy into the variable (``fused_into``).

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
        ...     write_direct(a, TFCheckpointSource(prefix), slot, DirectBuffers())
        >>> variable.numpy().tolist()
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """
    name, chunk = assignment.source, buffers.chunk
    if is_plain_copy(assignment) and not whole_first:
        slot.write_in_place(lambda destination: read_into(source, name, destination, chunk), buffers.staging)
        return
    layout = _band_layout(assignment, slot)
    if layout is not None:
        band = buffers.band.array((band_bytes(layout),), np.uint8)
        shape = layout[0]

        def reorder(destination: np.ndarray) -> None:
            if not destination.flags.c_contiguous:  # a reshape would copy, and the bands would land in the copy
                raise ApplyError(f"the buffer {name!r} is written into is not C-contiguous")
            reorder_into(source, name, assignment.source_dtype, layout, out=destination.reshape(shape), band=band)

        slot.write_in_place(reorder, buffers.staging)
        return
    member = buffers.read.array(assignment.source_shapes[0], numpy_dtype(assignment.source_dtype))
    read_into(source, name, member, chunk)
    slot.write_in_place(lambda destination: fused_into(member, assignment, destination), buffers.staging)


__all__ = [
    "DIRECT_MIN_BYTES",
    "DirectBuffers",
    "Staging",
    "is_plain_copy",
    "read_into",
    "reads_into",
    "split_batch",
    "write_direct",
]
