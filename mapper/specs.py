"""Tensor specs and the immutable name-to-spec maps that sources and targets describe themselves with."""

from __future__ import annotations

import math
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass, field
from typing import Any

from mapper.dtypes import DTYPE_SIZES

# The name every target variable has: its Keras path (``d1/kernel``) or, outside Keras, its own name.
PATH_NAMESPACE = "path"
# The key the variable would have in a ``tf.train.Checkpoint`` written from the same object.
CHECKPOINT_NAMESPACE = "checkpoint"
NAMESPACES = (PATH_NAMESPACE, CHECKPOINT_NAMESPACE)
# What TF2 object-based checkpoints append to a variable's object path to name its value.
CHECKPOINT_VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, shape and dtype of one tensor, known without reading it.

    Example:
        >>> spec = TensorSpec("dense/kernel", (4, 3), "float32")
        >>> spec.size, spec.nbytes
        (12, 48)
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the tensor takes in memory; 0 for dtypes without a fixed size (strings)."""
        return self.size * DTYPE_SIZES.get(self.dtype, 0)


def format_shape(shape: Iterable[int] | None) -> str:
    """Render a shape the way reports and errors show it.

    Example:
        >>> format_shape((768, 12, 64)), format_shape(()), format_shape(None)
        ('[768, 12, 64]', '[]', '?')
    """
    if shape is None:
        return "?"
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


class VariableMap(Mapping[str, TensorSpec]):
    """An immutable, ordered map from flat ``/``-joined names to their specs.

    Example:
        >>> specs = VariableMap([TensorSpec("a/w", (2,), "float32")], description="demo")
        >>> list(specs), specs["a/w"].shape, specs.description
        (['a/w'], (2,), 'demo')
    """

    __slots__ = ("_specs", "description")

    def __init__(self, specs: Iterable[TensorSpec], *, description: str = "") -> None:
        self._specs: dict[str, TensorSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"duplicate variable name {spec.name!r} in {description or 'map'}")
            self._specs[spec.name] = spec
        self.description = description

    def __getitem__(self, name: str) -> TensorSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    # The dict's own views: the Mapping defaults go through __getitem__ per name, and the planner walks every name.
    def items(self) -> ItemsView[str, TensorSpec]:
        """``(name, spec)`` pairs, in order."""
        return self._specs.items()

    def values(self) -> ValuesView[TensorSpec]:
        """The specs, in order."""
        return self._specs.values()

    def keys(self) -> KeysView[str]:
        """The names, in order."""
        return self._specs.keys()

    def get(self, name: str, default: Any = None) -> Any:
        """The spec of ``name``, or ``default``."""
        return self._specs.get(name, default)

    def __repr__(self) -> str:
        return f"VariableMap({len(self)} variables, description={self.description!r})"

    @property
    def nbytes(self) -> int:
        """Total bytes of all tensors with a fixed element size."""
        return sum(spec.nbytes for spec in self._specs.values())


@dataclass(frozen=True)
class TargetMap:
    """The variables of a target, each reachable under a name in every namespace it has.

    ``variables`` is keyed by the canonical name (the ``path`` namespace); ``keys`` maps a
    further namespace (such as ``checkpoint``) to ``{canonical name: name in that namespace}``.

    Example:
        >>> targets = TargetMap(
        ...     VariableMap([TensorSpec("d1/kernel", (4, 3), "float32")]),
        ...     {"checkpoint": {"d1/kernel": "model/_operations/1/_kernel/.ATTRIBUTES/VARIABLE_VALUE"}},
        ... )
        >>> targets.lookup("checkpoint", "model/_operations/1/_kernel/.ATTRIBUTES/VARIABLE_VALUE").name
        'd1/kernel'
        >>> targets.key_of("d1/kernel", "path")
        'd1/kernel'
    """

    variables: VariableMap
    keys: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    _reverse: dict[str, dict[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        reverse = {namespace: {key: name for name, key in names.items()} for namespace, names in self.keys.items()}
        object.__setattr__(self, "_reverse", reverse)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Namespaces this target can be named in, ``path`` first."""
        return (PATH_NAMESPACE, *(namespace for namespace in self.keys if namespace != PATH_NAMESPACE))

    def names(self, namespace: str) -> list[str]:
        """Every variable's name in ``namespace``, in the target's order (variables without one left out)."""
        if namespace == PATH_NAMESPACE:
            return list(self.variables)
        names = self.keys.get(namespace, {})
        return [names[name] for name in self.variables if name in names]

    def lookup(self, namespace: str, key: str) -> TensorSpec | None:
        """The spec of the variable called ``key`` in ``namespace``, or None."""
        if namespace == PATH_NAMESPACE:
            found: TensorSpec | None = self.variables.get(key)
            return found
        name = self._reverse.get(namespace, {}).get(key)
        return None if name is None else self.variables[name]

    def key_of(self, name: str, namespace: str) -> str | None:
        """The name that canonical ``name`` has in ``namespace``, or None."""
        if namespace == PATH_NAMESPACE:
            return name if name in self.variables else None
        return self.keys.get(namespace, {}).get(name)


class SourceSet(Mapping[str, VariableMap]):
    """Several sources by name, for plans whose rules say which source they read (``source = "head"``).

    Example:
        >>> sources = SourceSet({"backbone": VariableMap([TensorSpec("w", (2,), "float32")], description="a.ckpt")})
        >>> list(sources), sources.description
        (['backbone'], 'backbone=a.ckpt')
    """

    __slots__ = ("_maps",)

    def __init__(self, maps: Mapping[str, VariableMap]) -> None:
        if not maps:
            raise ValueError("a SourceSet needs at least one source")
        self._maps = dict(maps)

    def __getitem__(self, source_id: str) -> VariableMap:
        return self._maps[source_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._maps)

    def __len__(self) -> int:
        return len(self._maps)

    @property
    def description(self) -> str:
        """``id=description`` of each source, comma-separated."""
        return ", ".join(f"{source_id}={specs.description or '?'}" for source_id, specs in self._maps.items())
