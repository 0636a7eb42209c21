"""An in-memory source of NumPy arrays: a test double for the planner and a handy API input."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mapper.errors import SourceError
from mapper.specs import TensorSpec, VariableMap


class MemorySource:
    """Tensors held in a dict; counts reads so tests can prove only planned tensors were touched.

    Example:
        >>> source = MemorySource({"a/w": np.ones((2, 3), "float32")})
        >>> source.specs()["a/w"].shape, source.read(["a/w"])["a/w"].sum(), source.reads
        ((2, 3), np.float32(6.0), ['a/w'])
    """

    checkpoint_prefix: str | None = None  # not a TF checkpoint
    hands_over_reads = False  # the arrays are the caller's own: never adopted

    def __init__(self, arrays: Mapping[str, np.ndarray], *, description: str = "memory") -> None:
        self._arrays = dict(arrays)
        self.description = description
        self.reads: list[str] = []

    def specs(self) -> VariableMap:
        """Names, shapes and dtypes of the arrays."""
        return VariableMap(
            (TensorSpec(name, tuple(array.shape), str(array.dtype)) for name, array in self._arrays.items()),
            description=self.description,
        )

    def input_files(self) -> tuple[Path, ...]:
        """No files: the arrays are in memory."""
        return ()

    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The named arrays (not copies: callers must not write to them)."""
        missing = [name for name in names if name not in self._arrays]
        if missing:
            raise SourceError(f"{self.description} has no tensor {missing[0]!r}", path=self.description)
        self.reads.extend(names)
        return {name: self._arrays[name] for name in names}
