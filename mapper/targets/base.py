"""VariableTarget: the variables of a model together with the TargetMap that describes them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mapper.specs import TargetMap


@dataclass(frozen=True)
class VariableTarget:
    """A target an executor can assign into.

    ``variables`` maps each canonical (path) name in ``map.variables`` to its variable object
    (a ``keras.Variable`` or a ``tf.Variable``); ``obj`` is the model or module they came from.

    Example:
        >>> from mapper.specs import TensorSpec, VariableMap
        >>> target = VariableTarget("demo", TargetMap(VariableMap([TensorSpec("w", (2,), "float32")])), {"w": None})
        >>> list(target.map.variables)
        ['w']
    """

    description: str
    map: TargetMap
    variables: Mapping[str, Any]
    obj: object = None  # the model or module the variables belong to, for saving; None for bare variables
