"""The Source protocol every checkpoint format implements: describe tensors cheaply, read a few on demand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from mapper.specs import VariableMap


@runtime_checkable
class Source(Protocol):
    """A place tensors come from.

    ``specs()`` must not read tensor data. ``read(names)`` reads just those tensors, in as few
    operations as the format allows, and returns arrays (NumPy arrays or ``tf.Tensor``s) keyed by name.

    Example:
        >>> from mapper.sources.memory import MemorySource
        >>> import numpy as np
        >>> isinstance(MemorySource({"w": np.zeros(2)}), Source)
        True
    """

    @property
    def description(self) -> str:
        """What the source is, for reports: usually its path."""
        ...

    def specs(self) -> VariableMap:
        """Names, shapes and dtypes of every tensor, without reading any."""
        ...

    def read(self, names: Sequence[str]) -> Mapping[str, Any]:
        """Read the named tensors; raises SourceError if the data cannot be read."""
        ...
