"""Turn a Keras model or layer, a ``tf.Module``, or a dict or list of variables into a VariableTarget."""

from __future__ import annotations

import re
import sys
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any

from mapper.errors import TargetError
from mapper.specs import CHECKPOINT_NAMESPACE, CHECKPOINT_VALUE_SUFFIX, TargetMap, TensorSpec, VariableMap
from mapper.targets.base import VariableTarget
from mapper.text import SHOWN

_ACCEPTED = (
    "a built Keras model or layer, a tf.Module, a dict {name: variable}, or a list or tuple of variables "
    "(keras.Variable or tf.Variable)"
)
_SLOT_SUFFIX = re.compile(r":\d+$")


def target_from(obj: object, *, checkpoint_root: str = "model") -> VariableTarget:
    """Describe the variables of ``obj`` so that a plan can be made for them and an executor can assign them.

    Canonical (``path`` namespace) names are ``variable.path`` over ``model.weights`` for Keras 3 models and
    layers (seed-generator state is left out), the variable name without ``:0`` for a ``tf.Module`` (a name two
    variables share falls back to the object path), the keys of a dict, and for a list the Keras path or the
    ``tf.Variable`` name. Keras models and ``tf.Module``s also get the ``checkpoint`` namespace: the key each
    variable would have in ``tf.train.Checkpoint(**{checkpoint_root: obj}).write(...)``, found by walking the
    object graph, so nothing is written. Variables the checkpoint would not reach (Keras 3 layers kept in a
    plain list attribute) have no checkpoint key.

    Args:
        obj: the model, layer, module, dict or list.
        checkpoint_root: the keyword under which the object would be saved in a ``tf.train.Checkpoint``.

    Returns:
        A VariableTarget whose ``variables`` map canonical names to the variable objects.

    Raises:
        TargetError: ``obj`` is none of the accepted kinds, has no variables (an unbuilt model), holds
            something that is not a variable, or two variables would get the same name.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1")], name="tiny")
        >>> target = target_from(model)
        >>> target.description, list(target.map.variables)
        ("keras.Sequential 'tiny' (2 weights)", ['tiny/d1/kernel', 'tiny/d1/bias'])
        >>> target.map.key_of("tiny/d1/kernel", "checkpoint")
        'model/_functional/_operations/1/_kernel/.ATTRIBUTES/VARIABLE_VALUE'
    """
    if not isinstance(checkpoint_root, str) or not checkpoint_root:
        raise TargetError(f"checkpoint_root must be a non-empty string, not {checkpoint_root!r}")
    keras = sys.modules.get("keras")
    tf = sys.modules.get("tensorflow")
    if keras is not None and isinstance(obj, keras.Layer):
        return _from_keras(obj, keras, checkpoint_root)
    if tf is not None and isinstance(obj, tf.Module):
        return _from_module(obj, checkpoint_root)
    if isinstance(obj, Mapping):
        return _from_dict(obj)
    if isinstance(obj, (list, tuple)):
        return _from_sequence(obj)
    raise TargetError(f"cannot use {_kind(obj)} as a target; expected {_ACCEPTED}")


def _from_keras(layer: Any, keras: Any, checkpoint_root: str) -> VariableTarget:
    """A Keras 3 model or layer: ``variable.path`` names over ``weights``, plus checkpoint keys."""
    weights = _unique(layer.weights)
    label = f"{_keras_kind(layer)} {layer.name!r}"
    if not weights:
        if not layer.built:
            raise TargetError(
                f"{label} is not built, so it has no weights yet; build it first, e.g. by calling it on an input "
                "or with model.build(input_shape)"
            )
        raise TargetError(f"{label} has no weights to assign; expected {_ACCEPTED} with at least one variable")
    names = [variable.path for variable in weights]
    _raise_on_duplicates(names, label)
    keys: dict[str, str] = {}
    if keras.backend.backend() == "tensorflow":
        found = _checkpoint_keys(layer, checkpoint_root, weights)
        keys = {
            name: found[id(variable)] for name, variable in zip(names, weights, strict=True) if id(variable) in found
        }
    return _target(f"{label} ({len(weights)} weights)", names, weights, keys, layer)


def _from_module(module: Any, checkpoint_root: str) -> VariableTarget:
    """A ``tf.Module`` (tf-keras models too): variable names without ``:0``, plus checkpoint keys."""
    variables = _unique(module.variables)
    label = f"{_module_kind(module)} {module.name!r}"
    if not variables:
        raise TargetError(
            f"{label} has no variables; if it creates them lazily, call it on an input first "
            f"(expected {_ACCEPTED} with at least one variable)"
        )
    found = _checkpoint_keys(module, checkpoint_root, variables)
    names = [_SLOT_SUFFIX.sub("", variable.name) for variable in variables]
    counts = Counter(names)
    for index, variable in enumerate(variables):
        if counts[names[index]] > 1 and id(variable) in found:
            # Names clash (every unnamed tf.Variable is 'Variable'): use the object path in the checkpoint.
            names[index] = found[id(variable)].removesuffix(CHECKPOINT_VALUE_SUFFIX).removeprefix(checkpoint_root + "/")
    _raise_on_duplicates(names, label)
    keys = {name: found[id(variable)] for name, variable in zip(names, variables, strict=True) if id(variable) in found}
    return _target(f"{label} ({len(variables)} variables)", names, variables, keys, module)


def _from_dict(variables: Mapping[Any, Any]) -> VariableTarget:
    """A dict {name: variable}: the keys are the names; no checkpoint namespace."""
    if not variables:
        raise TargetError(f"the dict given as target is empty; expected {_ACCEPTED} with at least one variable")
    bad = [f"{key!r}: {_kind(value)}" for key, value in variables.items() if not isinstance(key, str)]
    if bad:
        raise TargetError(f"the dict given as target has keys that are not strings ({', '.join(bad[:SHOWN])})")
    _check_variables(list(variables.values()), [repr(key) for key in variables], "dict")
    return _target(f"dict of {len(variables)} variables", list(variables), list(variables.values()), {}, None)


def _from_sequence(items: Sequence[Any]) -> VariableTarget:
    """A list or tuple of variables: Keras paths or ``tf.Variable`` names without ``:0``."""
    kind = type(items).__name__
    if not items:
        raise TargetError(f"the {kind} given as target is empty; expected {_ACCEPTED} with at least one variable")
    _check_variables(list(items), [f"[{index}]" for index in range(len(items))], kind)
    variables = _unique(items)
    keras = sys.modules.get("keras")
    names = [
        variable.path
        if keras is not None and isinstance(variable, keras.Variable)
        else _SLOT_SUFFIX.sub("", variable.name)
        for variable in variables
    ]
    _raise_on_duplicates(names, f"the {kind} given as target")
    return _target(f"{kind} of {len(variables)} variables", names, variables, {}, None)


def _target(
    description: str, names: list[str], variables: list[Any], keys: dict[str, str], obj: object
) -> VariableTarget:
    """The VariableTarget for variables already named and checked."""
    specs = VariableMap(
        (_spec(name, variable) for name, variable in zip(names, variables, strict=True)), description=description
    )
    namespaces = {CHECKPOINT_NAMESPACE: keys} if keys else {}
    return VariableTarget(description, TargetMap(specs, namespaces), dict(zip(names, variables, strict=True)), obj)


def _spec(name: str, variable: Any) -> TensorSpec:
    """Shape and dtype of a keras.Variable or tf.Variable (distributed ones too), without reading it."""
    dims = tuple(variable.shape)
    if any(dim is None for dim in dims):
        raise TargetError(f"variable {name!r} has a partly unknown shape {dims}; give it a fully defined shape")
    dtype = variable.dtype
    return TensorSpec(name, tuple(int(dim) for dim in dims), dtype if isinstance(dtype, str) else dtype.name)


def _checkpoint_keys(obj: Any, checkpoint_root: str, variables: Sequence[Any]) -> dict[int, str]:
    """``{id(variable): key}`` for the variables ``tf.train.Checkpoint(**{checkpoint_root: obj})`` would save.

    Walks the object graph breadth first, as TensorFlow does when it saves: each object is named by the first
    (shortest) path that reaches it, each path element escaped as in ``trackable_utils.escape_local_name``.
    """
    import tensorflow as tf

    wanted = {id(variable) for variable in variables}
    root = tf.train.Checkpoint(**{checkpoint_root: obj})
    seen: dict[int, object] = {id(root): root}  # holds every visited object, so no id is reused while walking
    queue: deque[tuple[Any, tuple[str, ...]]] = deque([(root, ())])
    keys: dict[int, str] = {}
    while queue:
        node, path = queue.popleft()
        if id(node) in wanted:
            keys[id(node)] = "/".join(path) + CHECKPOINT_VALUE_SUFFIX
            if len(keys) == len(wanted):
                break
            continue  # a variable's own children (its handle, a distributed variable's parts) are not weights
        for name, child in tf.train.TrackableView.children(node).items():
            if id(child) not in seen:
                seen[id(child)] = child
                queue.append((child, (*path, _escape(name))))
    return keys


def _escape(name: str) -> str:
    """Escape one path element as TensorFlow's checkpoint keys do (``.`` -> ``..``, ``/`` -> ``.S``)."""
    return name.replace(".", "..").replace("/", ".S")


def _unique(variables: Sequence[Any]) -> list[Any]:
    """The variables in order, each object once."""
    return list({id(variable): variable for variable in variables}.values())


def _check_variables(values: list[Any], labels: list[str], kind: str) -> None:
    """TargetError naming the entries of a dict or list that are not variables."""
    keras = sys.modules.get("keras")
    tf = sys.modules.get("tensorflow")
    kinds = tuple(cls for cls in (getattr(keras, "Variable", None), getattr(tf, "Variable", None)) if cls is not None)
    bad = [
        f"{label}: {_kind(value)}" for label, value in zip(labels, values, strict=True) if not isinstance(value, kinds)
    ]
    if bad:
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        backend = f" of the active Keras backend ({keras.backend.backend()})" if keras is not None else ""
        raise TargetError(
            f"the {kind} given as target holds {len(bad)} value(s) that are not variables "
            f"({', '.join(bad[:SHOWN])}{more}); expected keras.Variable values{backend} or tf.Variable values "
            "(PyTorch parameters and JAX arrays are assigned through the Keras model that holds them as "
            "keras.Variable objects)"
        )


def _raise_on_duplicates(names: list[str], label: str) -> None:
    """TargetError listing every name that more than one variable has."""
    counts = Counter(names)
    duplicates = [name for name, count in counts.items() if count > 1]
    if duplicates:
        shown = ", ".join(f"{name!r} ({counts[name]} variables)" for name in duplicates[:SHOWN])
        more = f" and {len(duplicates) - SHOWN} more" if len(duplicates) > SHOWN else ""
        raise TargetError(
            f"{label} has {len(duplicates)} variable name(s) shared by several variables: {shown}{more}; "
            "give the layers or variables unique names, or pass a dict {name: variable}"
        )


def _kind(obj: object) -> str:
    """What an object is, for messages."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}" if cls.__module__ != "builtins" else cls.__qualname__


def _keras_kind(layer: Any) -> str:
    """``keras.Model`` / ``keras.Sequential`` / ``keras.layers.Dense``, or a user class with its Keras base."""
    cls = type(layer)
    if cls.__module__.startswith("keras."):
        name = "Model" if cls.__name__ == "Functional" else cls.__name__
        return f"keras.{name}" if cls.__module__.startswith("keras.src.models") else f"keras.layers.{name}"
    base = "keras.Model" if isinstance(layer, sys.modules["keras"].Model) else "keras.Layer"
    return f"{cls.__qualname__} ({base})"


def _module_kind(module: Any) -> str:
    """``tf.Module`` or a subclass name with its base."""
    cls = type(module)
    return "tf.Module" if cls.__module__.startswith("tensorflow.") else f"{cls.__qualname__} (tf.Module)"
