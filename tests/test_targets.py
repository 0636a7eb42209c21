"""Tests for mapper.targets.variables.target_from: names, checkpoint keys equal to written checkpoints, bad inputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import checkpoints
import keras
import numpy as np
import pytest
import tensorflow as tf

from mapper.errors import TargetError
from mapper.sources.tf_checkpoint import TFCheckpointSource
from mapper.specs import CHECKPOINT_NAMESPACE
from mapper.targets import VariableTarget, target_from

pytestmark = pytest.mark.tf

MODELS: dict[str, Callable[[], Any]] = {
    "functional": checkpoints.functional_model,
    "sequential": checkpoints.sequential_model,
    "subclassed": checkpoints.subclassed_model,
}


def assert_keys_match_written_checkpoint(
    target: VariableTarget, obj: Any, directory: Path, root: str = "model"
) -> None:
    """Every variable's checkpoint key is the key under which a real checkpoint stores that very variable's value."""
    checkpoints.distinct_values(target.variables.values())
    prefix, written = checkpoints.write_keras_checkpoint(obj, directory, root=root)
    keys = target.map.keys[CHECKPOINT_NAMESPACE]
    assert sorted(keys.values()) == sorted(written)
    for name, key in keys.items():
        np.testing.assert_array_equal(written[key], target.variables[name].numpy(), err_msg=name)
    # and a checkpoint source sees exactly these names
    assert sorted(TFCheckpointSource(prefix).specs()) == sorted(target.map.names(CHECKPOINT_NAMESPACE))


@pytest.mark.parametrize("kind", list(MODELS))
def test_keras_model_names_and_checkpoint_keys(kind: str, tmp_path: Path) -> None:
    model = MODELS[kind]()
    target = target_from(model)
    assert list(target.map.variables) == [variable.path for variable in model.weights]
    assert list(target.variables) == list(target.map.variables)
    for variable, (name, held) in zip(model.weights, target.variables.items(), strict=True):
        assert held is variable
        spec = target.map.variables[name]
        assert (spec.shape, spec.dtype) == (tuple(variable.shape), "float32")
    assert target.map.namespaces == ("path", "checkpoint")
    assert target.obj is model
    assert_keys_match_written_checkpoint(target, model, tmp_path)


def test_functional_names_as_in_the_field_notes() -> None:
    target = target_from(checkpoints.functional_model())
    assert target.description == "keras.Model 'functional' (8 weights)"
    assert (
        target.map.key_of("d1/kernel", CHECKPOINT_NAMESPACE) == "model/_operations/1/_kernel/.ATTRIBUTES/VARIABLE_VALUE"
    )
    assert (
        target.map.lookup(CHECKPOINT_NAMESPACE, "model/_operations/2/moving_mean/.ATTRIBUTES/VARIABLE_VALUE")
        == (target.map.variables["bn/moving_mean"])
    )


def test_weights_not_seed_state_and_descriptions() -> None:
    model = checkpoints.sequential_model()
    assert len(model.variables) > len(model.weights)  # the Dropout's seed generator
    target = target_from(model)
    assert len(target.variables) == len(model.weights) == 4
    assert target.description == "keras.Sequential 'sequential' (4 weights)"
    assert target_from(checkpoints.subclassed_model()).description == "Encoder (keras.Model) 'encoder' (8 weights)"
    dense = model.get_layer("d1")
    assert target_from(dense).description == "keras.layers.Dense 'd1' (2 weights)"


def test_custom_checkpoint_root(tmp_path: Path) -> None:
    model = checkpoints.functional_model()
    target = target_from(model, checkpoint_root="net")
    assert target.map.key_of("head/bias", CHECKPOINT_NAMESPACE) == "net/_operations/3/bias/.ATTRIBUTES/VARIABLE_VALUE"
    assert_keys_match_written_checkpoint(target, model, tmp_path, root="net")


def test_root_name_is_escaped_like_tensorflow(tmp_path: Path) -> None:
    model = checkpoints.functional_model()
    target = target_from(model, checkpoint_root="my.model/v1")
    assert target.map.key_of("d1/bias", CHECKPOINT_NAMESPACE).startswith("my..model.Sv1/_operations/")  # type: ignore[union-attr]
    assert_keys_match_written_checkpoint(target, model, tmp_path, root="my.model/v1")


class Listed(keras.layers.Layer):
    """Keeps one Dense as an attribute and one in a plain list, which tf.train.Checkpoint does not see."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen = keras.layers.Dense(2, name="seen")
        self.hidden = [keras.layers.Dense(2, name="hidden")]

    def call(self, x: Any) -> Any:
        return self.hidden[0](self.seen(x))


def test_variables_a_checkpoint_would_miss_have_no_checkpoint_key(tmp_path: Path) -> None:
    layer = Listed(name="listed")
    layer(np.zeros((1, 2), "float32"))
    target = target_from(layer)
    assert len(target.map.variables) == 4
    keys = target.map.keys[CHECKPOINT_NAMESPACE]
    assert sorted(keys) == ["listed/seen/bias", "listed/seen/kernel"]
    assert target.map.key_of("listed/hidden/kernel", CHECKPOINT_NAMESPACE) is None
    assert_keys_match_written_checkpoint(target, layer, tmp_path)


def test_mirrored_strategy_model(tmp_path: Path) -> None:
    devices = [device.name for device in tf.config.list_logical_devices("CPU")][:2]
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        model = checkpoints.functional_model(name="mirrored")
    assert isinstance(model.weights[0].value, tf.distribute.DistributedValues)
    target = target_from(model)
    assert target.map.variables["d1/kernel"].shape == (4, 3)
    assert target.map.variables["bn/moving_variance"].dtype == "float32"
    with strategy.scope():
        assert_keys_match_written_checkpoint(target, model, tmp_path)


# --- tf.Module, tf-keras, dicts and lists --------------------------------------------------------------------------


class Module(tf.Module):
    """Named variables, two unnamed ones in a list (both 'Variable:0'), and a dict entry reusing the name 'w'."""

    def __init__(self) -> None:
        super().__init__(name="mod")
        with self.name_scope:
            self.w = tf.Variable(tf.zeros((2, 3)), name="w")
            self.steps = tf.Variable(tf.zeros((), tf.int64), name="steps")
            self.stack = [tf.Variable(1.0), tf.Variable(2.0)]
            self.extra = {"b": tf.Variable(tf.zeros((3,), tf.bfloat16), name="w")}


def test_tf_module_names_fall_back_to_object_paths_on_clashes(tmp_path: Path) -> None:
    module = Module()
    target = target_from(module)
    assert sorted(target.map.variables) == ["extra/b", "mod/steps", "stack/0", "stack/1", "w"]
    assert target.variables["mod/steps"] is module.steps
    assert target.variables["extra/b"] is module.extra["b"]
    assert target.map.variables["extra/b"].dtype == "bfloat16"
    assert target.map.variables["mod/steps"].dtype == "int64"
    assert target.description == "Module (tf.Module) 'mod' (5 variables)"
    assert target.obj is module
    assert_keys_match_written_checkpoint(target, module, tmp_path)


def test_plain_tf_module(tmp_path: Path) -> None:
    module = tf.Module(name="plain")
    module.kernel = tf.Variable(tf.ones((2, 2)), name="dense/kernel")
    target = target_from(module)
    assert list(target.map.variables) == ["dense/kernel"]
    assert target.description == "tf.Module 'plain' (1 variables)"
    assert target.map.key_of("dense/kernel", CHECKPOINT_NAMESPACE) == "model/kernel/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.mark.skipif(not checkpoints.HAS_TF_KERAS, reason="tf-keras is not installed")
def test_tf_keras_model_is_a_tf_module(tmp_path: Path) -> None:
    import tf_keras

    model = tf_keras.Sequential([tf_keras.layers.Dense(3, input_shape=(4,), name="d1")], name="legacy")
    target = target_from(model)
    assert list(target.map.variables) == ["d1/kernel", "d1/bias"]
    assert target.map.key_of("d1/kernel", CHECKPOINT_NAMESPACE) == (
        "model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    )
    assert_keys_match_written_checkpoint(target, model, tmp_path)


def test_dict_of_variables() -> None:
    kernel = keras.Variable(np.zeros((4, 3), "float32"), name="kernel")
    step = tf.Variable(tf.zeros((), tf.int64))
    given = {"enc/kernel": kernel, "step": step}
    target = target_from(given)
    assert list(target.map.variables) == ["enc/kernel", "step"]
    assert target.variables["enc/kernel"] is kernel
    assert target.map.variables["step"].dtype == "int64"
    assert target.map.namespaces == ("path",)
    assert target.description == "dict of 2 variables"
    assert target.obj is None
    assert list(given) == ["enc/kernel", "step"]  # not mutated


def test_list_and_tuple_of_variables() -> None:
    dense = keras.layers.Dense(2, name="dl")
    dense.build((3,))
    tf_variable = tf.Variable(tf.zeros((5,)), name="scope/bias")
    target = target_from([dense.kernel, tf_variable])
    assert list(target.map.variables) == ["dl/kernel", "scope/bias"]
    assert target.description == "list of 2 variables"
    assert target_from((tf_variable,)).description == "tuple of 1 variables"


# --- bad inputs ------------------------------------------------------------------------------------------------------


class Twins(keras.layers.Layer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.a = keras.layers.Dense(1, name="same")
        self.b = keras.layers.Dense(1, name="same")

    def call(self, x: Any) -> Any:
        return self.a(x) + self.b(x)


def _unbuilt_model() -> tuple[Any, list[str]]:
    model = keras.Sequential([keras.layers.Dense(3, name="d")], name="lazy")
    return model, ["keras.Sequential 'lazy'", "not built", "build it first, e.g. by calling it on an input"]


def _layer_without_weights() -> tuple[Any, list[str]]:
    layer = keras.layers.Dropout(0.1, name="drop")
    layer.build((2,))
    return layer, ["keras.layers.Dropout 'drop'", "has no weights"]


def _module_without_variables() -> tuple[Any, list[str]]:
    return tf.Module(name="empty"), ["tf.Module 'empty'", "has no variables"]


def _integer() -> tuple[Any, list[str]]:
    return 3, ["cannot use int as a target", "a built Keras model or layer, a tf.Module"]


def _numpy_array() -> tuple[Any, list[str]]:
    return np.zeros(3), ["cannot use numpy.ndarray as a target", "a dict {name: variable}"]


def _string_path() -> tuple[Any, list[str]]:
    return "model.keras", ["cannot use str as a target"]


def _empty_dict() -> tuple[Any, list[str]]:
    return {}, ["dict given as target is empty"]


def _dict_with_arrays() -> tuple[Any, list[str]]:
    return {"w": tf.Variable(1.0), "b": np.zeros(2)}, ["1 value(s) that are not variables", "'b': numpy.ndarray"]


def _dict_with_int_keys() -> tuple[Any, list[str]]:
    return {0: tf.Variable(1.0)}, ["keys that are not strings", "0: "]


def _list_with_tensor() -> tuple[Any, list[str]]:
    return [tf.Variable(1.0), tf.constant(1.0)], ["list given as target", "[1]: ", "EagerTensor"]


def _list_with_same_names() -> tuple[Any, list[str]]:
    return [tf.Variable(1.0, name="w"), tf.Variable(2.0, name="w")], ["'w' (2 variables)", "unique names"]


def _layers_with_same_names() -> tuple[Any, list[str]]:
    layer = Twins(name="twins")
    layer(np.zeros((1, 2), "float32"))
    return layer, ["Twins (keras.Layer) 'twins'", "2 variable name(s) shared", "'twins/same/kernel' (2 variables)"]


def _empty_checkpoint_root() -> tuple[Any, list[str]]:
    return checkpoints.functional_model(), ["checkpoint_root must be a non-empty string, not ''"]


BAD = [
    _unbuilt_model,
    _layer_without_weights,
    _module_without_variables,
    _integer,
    _numpy_array,
    _string_path,
    _empty_dict,
    _dict_with_arrays,
    _dict_with_int_keys,
    _list_with_tensor,
    _list_with_same_names,
    _layers_with_same_names,
    _empty_checkpoint_root,
]


@pytest.mark.parametrize("make", BAD, ids=lambda make: make.__name__.strip("_").replace("_", "-"))
def test_bad_targets(make: Callable[[], tuple[Any, list[str]]]) -> None:
    obj, expected = make()
    root = "" if make is _empty_checkpoint_root else "model"
    before = checkpoints.weights_of(obj) if hasattr(obj, "weights") or hasattr(obj, "variables") else None
    with pytest.raises(TargetError) as caught:
        target_from(obj, checkpoint_root=root)
    for part in expected:
        assert part in str(caught.value), (part, str(caught.value))
    if before is not None:
        after = checkpoints.weights_of(obj)
        assert len(after) == len(before)
        for old, new in zip(before, after, strict=True):
            np.testing.assert_array_equal(old, new)
