"""The two benchmark models, "B" (BERT-base-sized) and "S" (5,000 small variables), and their cached checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

MODELS = ("B", "S")
DESCRIPTIONS = {
    "B": "BERT-base-sized Keras 3 functional model: 3 embeddings + 12 x (MultiHeadAttention, 2 Dense, 2 LayerNorm) + pooler",
    "S": "Keras 3 model of 100 custom layers x 25 (kernel [70, 70], bias [70]) pairs: 5,000 small variables",
}
# Bump when a model's architecture, its values or the checkpoint layout changes: the cache is keyed by it.
CACHE_VERSION = "2"
SEED = 20240601
# Elements of each variable that the worker compares after a restore, at its start and at its end.
CHECK_ELEMENTS = 64

# How the target model is initialised before the restore. B: Keras's defaults, as a user's model is; this
# matters, because it decides which memory the allocator can reuse (with "zeros" every restore path took
# about 107k page faults on B; with the defaults our assign path took about 57k). S: zeros, which builds in
# 9 s instead of 13 s and made no difference to the S figures (5,000 small tensors come from malloc's heap).
DEFAULT_INIT = {"B": "default", "S": "zeros"}

# S: layers x pairs of (kernel [WIDTH, WIDTH], bias [WIDTH]); 100 * 25 * 2 = 5,000 variables, 47.4 MiB.
S_LAYERS = 100
S_PAIRS = 25
S_WIDTH = 70


def cache_root() -> Path:
    """Where checkpoints are cached: ``$WEIGHT_MAPPER_BENCH_CACHE`` or ``~/.cache/weight-mapper/bench``."""
    base = os.environ.get("WEIGHT_MAPPER_BENCH_CACHE") or Path.home() / ".cache" / "weight-mapper" / "bench"
    return Path(base)


def cache_key() -> str:
    """The cache version plus the TensorFlow and Keras versions that wrote the checkpoints."""
    versions = []
    for package in ("tensorflow", "keras"):
        try:
            versions.append(f"{package}{metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package}-missing")
    return f"v{CACHE_VERSION}-" + "-".join(versions)


def model_dir(name: str) -> Path:
    """The cache directory of one model's checkpoint."""
    return cache_root() / cache_key() / name


def checkpoint_prefix(name: str) -> str:
    """The checkpoint prefix (``.../ckpt``) of a model."""
    return str(model_dir(name) / "ckpt")


def meta_path(name: str) -> Path:
    """The JSON file describing a cached checkpoint; written last, so its presence means the cache is complete."""
    return model_dir(name) / "meta.json"


def load_meta(name: str) -> dict[str, Any] | None:
    """The cached checkpoint's metadata, or None if it has not been written yet."""
    path = meta_path(name)
    if not path.exists():
        return None
    result: dict[str, Any] = json.loads(path.read_text())
    return result


# --- model construction (TensorFlow imported lazily: run.py does not import it) ------------------------


def build_model(name: str, *, initializer: str | None = None) -> Any:
    """Build model ``name`` with every variable created and initialised, as a user's model is before loading.

    ``initializer`` is ``"default"`` (Keras's default for each layer: Glorot-uniform kernels, uniform
    embeddings) or one initializer name for every kernel and embedding (``"zeros"`` builds fastest).
    ``$WEIGHT_MAPPER_BENCH_INIT`` overrides ``DEFAULT_INIT``, to see whether it changes the figures.
    """
    initializer = initializer or os.environ.get("WEIGHT_MAPPER_BENCH_INIT") or DEFAULT_INIT[name]
    if name == "B":
        return _build_bert(None if initializer == "default" else initializer)
    if name == "S":
        return _build_small(None if initializer == "default" else initializer)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def _build_bert(initializer: str | None) -> Any:
    import keras
    from keras import layers

    kernel: dict[str, Any] = {} if initializer is None else {"kernel_initializer": initializer}
    table: dict[str, Any] = {} if initializer is None else {"embeddings_initializer": initializer}
    hidden, heads, head_dim, ffn, vocab, positions, blocks = 768, 12, 64, 3072, 30522, 512, 12
    ids = keras.Input((None,), dtype="int32", name="ids")
    words = layers.Embedding(vocab, hidden, name="word_embeddings", **table)(ids)
    where = layers.Embedding(positions, hidden, name="position_embeddings", **table)(ids)
    kinds = layers.Embedding(2, hidden, name="token_type_embeddings", **table)(ids)
    x = layers.LayerNormalization(name="embeddings_norm")(layers.Add()([words, where, kinds]))
    for block in range(blocks):
        attended = layers.MultiHeadAttention(heads, head_dim, name=f"attention_{block}", **kernel)(x, x)
        x = layers.LayerNormalization(name=f"attention_norm_{block}")(layers.Add()([x, attended]))
        inner = layers.Dense(ffn, name=f"intermediate_{block}", **kernel)(x)
        outer = layers.Dense(hidden, name=f"output_{block}", **kernel)(inner)
        x = layers.LayerNormalization(name=f"output_norm_{block}")(layers.Add()([x, outer]))
    pooled = layers.Dense(hidden, name="pooler", **kernel)(x[:, 0])
    return keras.Model(ids, pooled, name="bert_base_like")


def _small_layer_class(initializer: str | None) -> Any:
    import keras

    class SmallPairs(keras.layers.Layer):  # type: ignore[misc]
        """A layer holding ``pairs`` (kernel, bias) variables as attributes, so tf.train.Checkpoint tracks them."""

        def __init__(self, pairs: int, width: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.pairs = pairs
            self.width = width

        def build(self, input_shape: Any) -> None:  # noqa: ARG002  (Keras passes it)
            for pair in range(self.pairs):
                kernel = self.add_weight(
                    shape=(self.width, self.width), initializer=initializer or "glorot_uniform", name=f"kernel_{pair}"
                )
                bias = self.add_weight(shape=(self.width,), initializer="zeros", name=f"bias_{pair}")
                setattr(self, f"kernel_{pair}", kernel)
                setattr(self, f"bias_{pair}", bias)

        def call(self, inputs: Any) -> Any:
            return inputs

        def compute_output_shape(self, input_shape: Any) -> Any:
            return input_shape

    return SmallPairs


def _build_small(initializer: str | None) -> Any:
    import keras

    small_pairs = _small_layer_class(initializer)
    x = inputs = keras.Input((S_WIDTH,), name="features")
    for index in range(S_LAYERS):
        x = small_pairs(S_PAIRS, S_WIDTH, name=f"group_{index}")(x)
    return keras.Model(inputs, x, name="five_thousand_small")


def checkpoint_keys(model: Any) -> list[str]:
    """The checkpoint key of each of ``model.weights``, in order, as ``tf.train.Checkpoint(model=model)`` writes them.

    Uses TensorFlow's own object-graph serialisation (a private module: the harness only needs it to give
    the ``init_from_checkpoint`` baseline its map without weight-mapper).
    """
    import tensorflow as tf
    from tensorflow.python.checkpoint import graph_view, save_util

    root = tf.train.Checkpoint(model=model)  # the view holds it weakly: keep it alive here
    serialized = save_util.serialize_graph_view(graph_view.ObjectGraphView(root))[0]
    by_id: dict[int, str] = {}
    for trackable, tensors in serialized.items():
        if isinstance(tensors, dict) and len(tensors) == 1:
            by_id[id(trackable)] = next(iter(tensors))
    keys = [by_id.get(id(variable)) for variable in model.weights]
    missing = [variable.path for variable, key in zip(model.weights, keys, strict=True) if key is None]
    if missing:
        raise RuntimeError(f"{len(missing)} weights have no checkpoint key, e.g. {missing[:3]}")
    return [key for key in keys if key is not None]


def fingerprint(array: Any) -> list[float]:
    """A few elements from the start and the end of an array: enough to tell a restored variable from zeros."""
    flat = array.reshape(-1)
    return [float(value) for value in (*flat[:CHECK_ELEMENTS], *flat[-CHECK_ELEMENTS:])]


def create_checkpoint(name: str) -> dict[str, Any]:
    """Build model ``name``, fill it with seeded random values, write its checkpoint and metadata; idempotent."""
    existing = load_meta(name)
    if existing is not None:
        return existing
    import numpy as np
    import tensorflow as tf

    model = build_model(name, initializer="zeros")
    rng = np.random.default_rng(SEED + MODELS.index(name))
    prints = []
    for variable in model.weights:
        value = (rng.standard_normal(tuple(variable.shape), dtype=np.float32) * 0.02).astype(variable.dtype)
        variable.assign(value)
        prints.append(fingerprint(value))
    directory = model_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    prefix = tf.train.Checkpoint(model=model).write(checkpoint_prefix(name))
    keys = checkpoint_keys(model)
    reader = tf.train.load_checkpoint(prefix)
    stored = reader.get_variable_to_shape_map()
    sizes = [int(np.prod(variable.shape)) * np.dtype(variable.dtype).itemsize for variable in model.weights]
    data_files = sorted(str(path) for path in directory.glob("ckpt.data-*"))
    meta = {
        "model": name,
        "description": DESCRIPTIONS[name],
        "cache_key": cache_key(),
        "prefix": prefix,
        "data_files": data_files,
        "file_bytes": sum(Path(path).stat().st_size for path in data_files),
        "variables": len(model.weights),
        "checkpoint_entries": len(stored),
        "total_bytes": sum(sizes),
        "largest_bytes": max(sizes),
        "largest_name": model.weights[sizes.index(max(sizes))].path,
        "keys": keys,
        "fingerprints": prints,
        "digest": hashlib.sha256(json.dumps(prints).encode()).hexdigest()[:16],
    }
    meta_path(name).write_text(json.dumps(meta))
    return meta


# --- the renaming rule files our paths plan with ----------------------------------------------------------

# Target keys are generated with checkpoint_root = "net", so every rule really renames: the source's
# "model/_operations/7/_query_dense/_kernel/..." becomes the target's "net/_operations/7/_query_dense/_kernel/...",
# rebuilt from capture groups.
_VALUE = r"/\.ATTRIBUTES/VARIABLE_VALUE"
_RULES_HEADER = """format = 1
description = "benchmark: rename every tensor of a tf.train.Checkpoint(model=...) into the target's 'net' keys"

[target]
namespace = "checkpoint"
checkpoint_root = "net"
"""

_RULES = {
    "B": [
        ("embeddings", rf"model/_operations/(?P<op>\d+)/_embeddings{_VALUE}", "_embeddings"),
        (
            "attention projections",
            rf"model/_operations/(?P<op>\d+)/_(?P<proj>query|key|value|output)_dense/(?P<what>_kernel|bias){_VALUE}",
            "_{proj}_dense/{what}",
        ),
        ("dense layers", rf"model/_operations/(?P<op>\d+)/(?P<what>_kernel|bias){_VALUE}", "{what}"),
        ("layer norms", rf"model/_operations/(?P<op>\d+)/(?P<what>gamma|beta){_VALUE}", "{what}"),
    ],
    "S": [
        ("kernels", rf"model/_operations/(?P<op>\d+)/kernel_(?P<pair>\d+){_VALUE}", "kernel_{pair}"),
        ("biases", rf"model/_operations/(?P<op>\d+)/bias_(?P<pair>\d+){_VALUE}", "bias_{pair}"),
    ],
}


def renaming_rules(name: str, *, skip_object_graph: bool = False) -> str:
    """The rule file (TOML text) that maps model ``name``'s checkpoint onto the same model's ``net/...`` keys.

    ``skip_object_graph`` adds a skip rule for ``_CHECKPOINTABLE_OBJECT_GRAPH``, for sources that list it.
    """
    parts = [_RULES_HEADER]
    for label, pattern, rest in _RULES[name]:
        parts.append(
            f"\n[[rules]]\nname = {json.dumps(label)}\nmatch = '{pattern}'\n"
            f'target = "net/_operations/{{op}}/{rest}/.ATTRIBUTES/VARIABLE_VALUE"\n'
        )
    if skip_object_graph:
        parts.append('\n[[rules]]\nmatch = "_CHECKPOINTABLE_OBJECT_GRAPH"\nskip = "object graph, not a variable"\n')
    return "".join(parts)
