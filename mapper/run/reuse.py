"""JAX arrays whose host memory the value replacing them may take over: what else holds it, and writable views of it."""

from __future__ import annotations

import bisect
import itertools
from typing import Any

import numpy as np


class HostBuffers:
    """Where the buffers of every live JAX array on the CPU lie in memory, taken once, before an apply assigns.

    ``alone(array)`` says whether a single-device CPU array's buffer is shared or overlapped by no other live array
    (one the caller kept, assembled over the same buffer, or over the same host memory). JAX makes such arrays
    itself too: a value read as NumPy keeps one, and so do the shards of an array whose ``addressable_shards`` were
    asked for (they are counted as part of the array that holds them). The picture is taken at the first
    ``alone`` (about 3.5 us a live array: 17 ms for 5,000), and taking it first waits for every live array to be
    computed and for every effect (``jax.effects_barrier``): a computation still running may read a buffer, and it
    is done once its outputs are.

    What JAX does not show is not seen: memory a caller handed to ``jax.device_put`` (which adopts an aligned NumPy
    array without a copy) and still uses as NumPy, and DLPack exports of an array that are still held.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> a = jnp.arange(4.0)
        >>> b = jnp.ones(3)
        >>> pair = jax.make_array_from_single_device_arrays((3,), b.sharding, [b])  # a second array over b's buffer
        >>> buffers = HostBuffers()
        >>> buffers.alone(a), buffers.alone(b)
        (True, False)
    """

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._reach: list[int] = []  # the furthest end before each span
        self._complete: bool | None = None  # every live array's buffers were located; None: not taken yet

    def _take(self) -> None:
        """The buffers of every live array now, once every live array is computed and every effect is done."""
        import jax

        runtime: Any = jax  # these three are untyped
        arrays = [array for array in runtime.live_arrays() if not array.is_deleted()]
        runtime.block_until_ready(arrays)
        runtime.effects_barrier()
        spans: list[tuple[int, int]] = []
        complete = True
        held: set[int] = set()  # the shards a multi-device array holds: their buffers are counted with it
        for array in arrays:
            if len(array.devices()) > 1:
                held.update(id(shard.data) for shard in array.addressable_shards)
        for array in arrays:
            if id(array) in held:
                continue
            try:
                spans += [span for span in _spans(array) if span[1] > span[0]]
            except Exception:  # an array whose memory JAX does not show: nothing can be known to be alone
                complete = False
        spans.sort()
        self._starts = [start for start, _ in spans]
        self._ends = [end for _, end in spans]
        self._reach = list(itertools.accumulate(self._ends, max, initial=0))
        self._complete = complete

    def alone(self, array: Any) -> bool:
        """Whether ``array`` is on one CPU device, in memory that no other live array shares or overlaps."""
        if self._complete is None:
            self._take()
        if not self._complete or len(array.devices()) != 1:
            return False
        try:
            [(start, end)] = _spans(array)
        except Exception:  # on a device whose memory is not the host's, or deleted since
            return False
        first = bisect.bisect_left(self._starts, start)
        # Exactly one span starts inside [start, end), its own, and none that starts before reaches into it.
        return (
            bisect.bisect_left(self._starts, end) - first == 1
            and self._starts[first] == start
            and self._ends[first] == end
            and self._reach[first] <= start
        )


def _spans(array: Any) -> list[tuple[int, int]]:
    """The [start, end) host addresses of each of the array's buffers; raises for buffers off the CPU.

    A single-device array is asked directly: its ``addressable_shards`` would make (and keep) another array over
    the same buffer.
    """
    if len(array.devices()) == 1:
        [device] = array.devices()
        parts = [(device, array)]
    else:
        parts = [(shard.device, shard.data) for shard in array.addressable_shards]
    spans = []
    for device, data in parts:
        if device.platform != "cpu":
            raise ValueError(f"a buffer on {device}, not in host memory")
        start = int(data.unsafe_buffer_pointer())
        spans.append((start, start + int(data.on_device_size_in_bytes())))
    return spans


def host_view(array: Any) -> np.ndarray | None:
    """A writable NumPy view of a single-device CPU array's own buffer, which it keeps alive; or None.

    The view holds a DLPack export of the array, so the buffer outlives the array. None if the array cannot be
    exported as a C-contiguous NumPy array of its shape (a dtype NumPy's DLPack import does not take, a layout that
    is not row-major). Writing through the view changes the array: only for an array nothing else can see
    (``HostBuffers.alone``, and no reference to it but the caller's).

    Example:
        >>> import jax.numpy as jnp
        >>> array = jnp.zeros(3)
        >>> view = host_view(array)
        >>> view[:] = [1, 2, 3]
        >>> array.tolist()
        [1.0, 2.0, 3.0]
    """
    try:
        exported = np.from_dlpack(array)
    except (TypeError, ValueError, RuntimeError, BufferError):
        return None
    if exported.shape != tuple(array.shape) or not exported.flags.c_contiguous:
        return None
    return _writable(exported)


class _Exported:
    """A writable array interface over an exported buffer's bytes, holding the export (and with it the buffer)."""

    def __init__(self, exported: np.ndarray) -> None:
        self.exported = exported
        self.__array_interface__ = {
            "data": (exported.ctypes.data, False),
            "shape": (exported.nbytes,),
            "typestr": "|u1",
            "version": 3,
        }


def _writable(exported: np.ndarray) -> np.ndarray:
    view: np.ndarray = np.asarray(_Exported(exported)).view(exported.dtype).reshape(exported.shape)
    return view


__all__ = ["HostBuffers", "host_view"]
