"""Small real models and checkpoints for the tests: Keras 3 models, TF2 object-based, TF1 name-based and sharded.

Every writer returns the checkpoint prefix and the values it holds (``{checkpoint key: numpy array}``), so
tests can compare what a source reads with what was written. All of it is tiny and takes well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
HAS_TF_KERAS = importlib.util.find_spec("tf_keras") is not None


# --- Keras 3 models -------------------------------------------------------------------------------------------------


def functional_model(name: str = "functional") -> keras.Model:
    """Input(4) -> Dense 'd1' -> BatchNormalization 'bn' -> Dense 'head' (8 weights)."""
    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(3, name="d1")(inputs)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(hidden), name=name)


def sequential_model(name: str = "sequential") -> keras.Sequential:
    """Dense 'd1' -> Dropout -> Dense 'head' (4 weights; the Dropout adds seed-generator state, not weights)."""
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, name="d1"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(2, name="head"),
        ],
        name=name,
    )


class Block(keras.layers.Layer):
    """A layer with its own weight and a nested Dense."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.proj = keras.layers.Dense(units, name="proj")

    def build(self, input_shape: tuple[int, ...]) -> None:
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")
        self.proj.build(input_shape)

    def call(self, x: Any) -> Any:
        return self.proj(x * self.scale)


class Encoder(keras.Model):
    """A subclassed model: two Blocks as attributes and a Dense head."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first = Block(4, name="block_a")
        self.second = Block(4, name="block_b")
        self.head = keras.layers.Dense(2, name="head")

    def call(self, x: Any) -> Any:
        return self.head(self.second(self.first(x)))


def subclassed_model(name: str = "encoder") -> Encoder:
    """An Encoder built by calling it on an input (8 weights)."""
    model = Encoder(name=name)
    model(np.zeros((1, 4), "float32"))
    return model


def distinct_values(variables: Any) -> None:
    """Give every variable different values (biases start as zeros), so a wrong pairing shows."""
    for index, variable in enumerate(variables):
        shape = tuple(variable.shape)
        values = np.arange(int(np.prod(shape)), dtype="float64").reshape(shape) + 1000.0 * (index + 1)
        variable.assign(values.astype(np.dtype(keras.backend.standardize_dtype(variable.dtype))))


def write_keras_checkpoint(model: Any, directory: Path, root: str = "model") -> tuple[str, dict[str, np.ndarray]]:
    """``tf.train.Checkpoint(**{root: model}).write``; returns the prefix and ``{key: value}`` read back by TF."""
    prefix = tf.train.Checkpoint(**{root: model}).write(str(directory / "ckpt"))
    return prefix, read_all(prefix)


def read_all(prefix: str) -> dict[str, np.ndarray]:
    """Every variable of a checkpoint, read with TensorFlow's own reader."""
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map() if name != OBJECT_GRAPH_KEY}


# --- TF1 name-based checkpoints -------------------------------------------------------------------------------------

BERT_SHAPES: Mapping[str, tuple[int, ...]] = {
    "bert/embeddings/word_embeddings": (16, 8),
    "bert/embeddings/LayerNorm/gamma": (8,),
    "bert/embeddings/LayerNorm/beta": (8,),
    **{
        f"bert/encoder/layer_{layer}/attention/self/{part}/{kind}": (8, 8) if kind == "kernel" else (8,)
        for layer in range(2)
        for part in ("query", "key", "value")
        for kind in ("kernel", "bias")
    },
    "bert/pooler/dense/kernel": (8, 8),
    "bert/pooler/dense/bias": (8,),
    "cls/predictions/output_bias": (16,),
}


def tf1_bert_values(global_step: int = 7) -> dict[str, np.ndarray]:
    """Distinct float32 values for a tiny BERT-like TF1 checkpoint, with Adam slots and ``global_step``."""
    values: dict[str, np.ndarray] = {}
    for index, (name, shape) in enumerate(BERT_SHAPES.items()):
        base = np.arange(int(np.prod(shape)), dtype="float32").reshape(shape) / 100.0 + index
        values[name] = base
        values[f"{name}/adam_m"] = base + 0.25
        values[f"{name}/adam_v"] = base + 0.5
    values["global_step"] = np.array(global_step, dtype="int64")
    return values


def write_tf1_checkpoint(
    directory: Path, *, sharded: bool = False, global_step: int = 7, relative_paths: bool = False
) -> tuple[str, dict[str, np.ndarray]]:
    """A TF1 ``Saver`` checkpoint written in graph mode, as ``directory/model.ckpt-<global_step>``.

    With ``sharded``, the variables are split between two CPU devices of the session and ``Saver(sharded=True)``
    writes one data file per device. Without ``relative_paths`` the state file holds absolute paths, as TF1 does.
    """
    values = tf1_bert_values(global_step)
    directory.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        for index, (name, value) in enumerate(values.items()):
            device = f"/cpu:{index % 2}" if sharded else "/cpu:0"
            with tf.device(device):
                tf.compat.v1.get_variable(name, initializer=tf.constant(value), use_resource=True)
        saver = tf.compat.v1.train.Saver(sharded=sharded, save_relative_paths=relative_paths)
        init = tf.compat.v1.global_variables_initializer()
        config = tf.compat.v1.ConfigProto(device_count={"CPU": 2})
        with tf.compat.v1.Session(graph=graph, config=config) as session:
            session.run(init)
            prefix = saver.save(session, str(directory / "model.ckpt"), global_step=global_step)
    return prefix, values


# --- other TF2 layouts ----------------------------------------------------------------------------------------------


def write_sharded_tf2_checkpoint(directory: Path, shard_bytes: int = 500) -> tuple[str, dict[str, np.ndarray]]:
    """A TF2 checkpoint split by ``MaxShardSizePolicy`` into several ``.data-*`` files (six [100] float32 tensors)."""
    variables = {f"v{index}": tf.Variable(np.arange(100, dtype="float32") + 100 * index) for index in range(6)}
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=shard_bytes)
    options = tf.train.CheckpointOptions(experimental_sharding_callback=policy)
    prefix = tf.train.Checkpoint(**variables).write(str(directory / "ckpt"), options=options)
    return prefix, {f"{name}{VALUE}": variable.numpy() for name, variable in variables.items()}


def write_save_v2(prefix: str, values: Mapping[str, Any]) -> str:
    """Whole tensors saved under their names with one ``tf.raw_ops.SaveV2`` (a TF1-style, name-based checkpoint).

    ``values`` are NumPy arrays (any dtype SaveV2 takes, ``uint32`` and ``bfloat16`` too) or Python bytes.
    """
    names = list(values)
    tensors = [tf.constant(values[name]) for name in names]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    return prefix


def write_merged_checkpoint(
    directory: Path, parts: list[Mapping[str, np.ndarray]]
) -> tuple[str, dict[str, np.ndarray]]:
    """One SaveV2 per part, merged by ``MergeV2Checkpoints`` into ``directory/ckpt`` with one data file per part."""
    prefixes = [write_save_v2(str(directory / f"part-{index}"), part) for index, part in enumerate(parts)]
    prefix = str(directory / "ckpt")
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=prefixes, destination_prefix=prefix, delete_old_dirs=False)
    return prefix, {name: value for part in parts for name, value in part.items()}


def write_tf_keras_checkpoint(directory: Path) -> tuple[str, dict[str, np.ndarray]]:
    """A tf-keras (Keras 2) Sequential saved with ``save_weights`` in TF format (``layer_with_weights-0/...`` keys)."""
    import tf_keras

    model = tf_keras.Sequential([tf_keras.layers.Dense(3, input_shape=(4,)), tf_keras.layers.Dense(2)])
    prefix = str(directory / "ckpt")
    model.save_weights(prefix)
    return prefix, read_all(prefix)


def write_manager_checkpoints(directory: Path, count: int = 3) -> list[str]:
    """``count`` checkpoints through a ``tf.train.CheckpointManager`` (state file with relative paths)."""
    step = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(directory), max_to_keep=count)
    prefixes = []
    for index in range(count):
        step.assign(index)
        prefixes.append(manager.save())
    return prefixes


# --- damaging files -------------------------------------------------------------------------------------------------


def data_files(prefix: str) -> list[Path]:
    """The ``.data-*`` files of a checkpoint, sorted."""
    path = Path(prefix)
    return sorted(path.parent.glob(path.name + ".data-*"))


def flip_bytes(path: Path, offset: int, count: int = 4) -> None:
    """Invert ``count`` bytes at ``offset``, keeping the file's size."""
    with path.open("r+b") as file:
        file.seek(offset)
        original = file.read(count)
        file.seek(offset)
        file.write(bytes(byte ^ 0xFF for byte in original))


def truncate(path: Path, by: int) -> None:
    """Cut ``by`` bytes off the end of a file."""
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size - by)


def snapshot(directory: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``directory``: compare before and after to prove nothing changed."""
    return {
        str(file.relative_to(directory)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(directory.rglob("*"))
        if file.is_file()
    }


def weights_of(obj: Any) -> list[np.ndarray]:
    """Copies of a model's (or module's) variable values, to prove nothing changed."""
    variables = obj.weights if hasattr(obj, "weights") else obj.variables
    return [np.array(variable.numpy(), copy=True) for variable in variables]
