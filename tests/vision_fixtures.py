"""Tiny vision checkpoints for the shipped-rule tests: timm ResNet directories and Keras 2 (tf-keras) .h5 files.

Nothing here imports TensorFlow, Keras, keras-hub or tf-keras at module level: the functions that need them take
the module (``keras`` or ``tf_keras``) as an argument or import it inside.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# timm architecture names keras-hub's converter knows (convert_resnet.convert_backbone_config), by block type.
BOTTLENECK_ARCHITECTURES = ("resnet26", "resnet50", "resnet101", "resnet152")
BASIC_ARCHITECTURES = ("resnet18", "resnet34")
# Environment for loading a local keras-hub preset without any network.
OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "KAGGLE_OFFLINE": "1"}


@dataclass(frozen=True)
class TinyResNet:
    """A tiny timm ResNet v1: the architecture name picks the block type, the rest shrinks it.

    keras-hub requires the first stage to have 64 filters, and a basic-block stem of 64 channels (stage 0 has an
    identity shortcut); later stages can be as narrow as we like.
    """

    architecture: str
    filters: tuple[int, ...] = (64, 16)
    blocks: tuple[int, ...] = (2, 1)
    strides: tuple[int, ...] = (1, 2)
    num_classes: int = 5
    stem: int = 64

    @property
    def bottleneck(self) -> bool:
        return self.architecture in BOTTLENECK_ARCHITECTURES

    @property
    def expansion(self) -> int:
        return 4 if self.bottleneck else 1

    @property
    def num_features(self) -> int:
        return self.filters[-1] * self.expansion

    def keras_hub_overrides(self) -> dict[str, Any]:
        """What ``from_preset`` must be told on top of the architecture's defaults (64..512 filters, 4 stages)."""
        return {
            "stackwise_num_filters": list(self.filters),
            "stackwise_num_blocks": list(self.blocks),
            "stackwise_num_strides": list(self.strides),
        }

    def backbone_config(self) -> dict[str, Any]:
        """The full ResNetBackbone arguments for a fresh target of the same configuration."""
        return {
            "input_conv_filters": [self.stem],
            "input_conv_kernel_sizes": [7],
            "block_type": "bottleneck_block" if self.bottleneck else "basic_block",
            "use_pre_activation": False,
            **self.keras_hub_overrides(),
        }


def timm_resnet_state_dict(config: TinyResNet, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights with timm's ResNet v1 state-dict names, shapes, dtypes and order.

    From timm's ``resnet.py``: a 7x7 stem ``conv1`` + ``bn1``; stages ``layer1``..``layerN`` of blocks whose convs are
    ``conv1``/``conv2`` (BasicBlock, 3x3) or ``conv1`` 1x1 / ``conv2`` 3x3 / ``conv3`` 1x1 (Bottleneck, 4x expansion),
    each followed by ``bnK``; a ``downsample`` Sequential (1x1 conv ``.0``, BatchNorm ``.1``) when the stride is not 1
    or the channels change; a Linear ``fc`` [classes, features]. Convolutions are PyTorch [out, in, kh, kw], biasless;
    every BatchNorm carries ``weight``, ``bias``, ``running_mean``, ``running_var`` (positive) and an int64 scalar
    ``num_batches_tracked``.
    """
    generator = np.random.default_rng(seed)
    values: dict[str, np.ndarray] = {}

    def conv(name: str, out: int, inputs: int, size: int) -> None:
        values[f"{name}.weight"] = (generator.normal(size=(out, inputs, size, size)) * 0.1).astype("float32")

    def batch_norm(name: str, channels: int) -> None:
        values[f"{name}.weight"] = (1 + generator.normal(size=channels) * 0.1).astype("float32")
        values[f"{name}.bias"] = (generator.normal(size=channels) * 0.1).astype("float32")
        values[f"{name}.running_mean"] = (generator.normal(size=channels) * 0.1).astype("float32")
        values[f"{name}.running_var"] = generator.uniform(0.5, 2.0, size=channels).astype("float32")
        values[f"{name}.num_batches_tracked"] = np.array(generator.integers(1, 10_000), dtype="int64")

    conv("conv1", config.stem, 3, 7)
    batch_norm("bn1", config.stem)
    inplanes = config.stem
    for stage, (planes, count, stride) in enumerate(zip(config.filters, config.blocks, config.strides, strict=True)):
        for block in range(count):
            prefix = f"layer{stage + 1}.{block}"
            outplanes = planes * config.expansion
            if config.bottleneck:
                conv(f"{prefix}.conv1", planes, inplanes, 1)
                batch_norm(f"{prefix}.bn1", planes)
                conv(f"{prefix}.conv2", planes, planes, 3)
                batch_norm(f"{prefix}.bn2", planes)
                conv(f"{prefix}.conv3", outplanes, planes, 1)
                batch_norm(f"{prefix}.bn3", outplanes)
            else:
                conv(f"{prefix}.conv1", planes, inplanes, 3)
                batch_norm(f"{prefix}.bn1", planes)
                conv(f"{prefix}.conv2", planes, planes, 3)
                batch_norm(f"{prefix}.bn2", planes)
            if block == 0 and (stride != 1 or inplanes != outplanes):
                conv(f"{prefix}.downsample.0", outplanes, inplanes, 1)
                batch_norm(f"{prefix}.downsample.1", outplanes)
            inplanes = outplanes
    values["fc.weight"] = (generator.normal(size=(config.num_classes, inplanes)) * 0.1).astype("float32")
    values["fc.bias"] = (generator.normal(size=config.num_classes) * 0.1).astype("float32")
    return values


def write_timm_resnet(directory: Path, config: TinyResNet, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a timm-style model directory (``config.json`` + ``model.safetensors``); returns the tensors written."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    values = timm_resnet_state_dict(config, seed)
    timm_config = {
        "architecture": config.architecture,
        "num_classes": config.num_classes,
        "num_features": config.num_features,
        "global_pool": "avg",
        "pretrained_cfg": {
            "tag": "tiny",
            "input_size": [3, 32, 32],
            "interpolation": "bicubic",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "num_classes": config.num_classes,
            "classifier": "fc",
        },
    }
    (directory / "config.json").write_text(json.dumps(timm_config, indent=2), encoding="utf-8")
    save_file(values, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return values


# --- Keras 2 (tf-keras) models and their Keras 3 twins ----------------------------------------------------------------


def build_cnn(k: Any, *, nested: str = "sequential") -> Any:
    """A small CNN (Conv2D, BatchNormalization, Dense) with a nested block, built with ``k`` (``keras`` or ``tf_keras``).

    ``nested = "sequential"``: the block is a ``Sequential`` called inside the functional model; Keras 3 paths keep its
    name (``block/block_dense/kernel``). ``nested = "functional"``: the block is a functional ``Model`` built on its
    own ``Input``; Keras 3 paths drop its name (``block_dense/kernel``). Every layer is named, so Keras 2 and Keras 3
    agree on names whatever else was built in the process.
    """
    layers = k.layers
    if nested == "sequential":
        block = k.Sequential(
            [layers.Dense(6, name="block_dense"), layers.BatchNormalization(name="block_bn")], name="block"
        )
    elif nested == "functional":
        block_input = k.Input((8,), name="block_input")
        block_output = layers.BatchNormalization(name="block_bn")(layers.Dense(6, name="block_dense")(block_input))
        block = k.Model(block_input, block_output, name="block")
    else:
        raise ValueError(f"nested must be 'sequential' or 'functional', not {nested!r}")
    image = k.Input((8, 8, 3), name="image")
    x = layers.Conv2D(4, 3, name="conv1")(image)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.Activation("relu", name="relu1")(x)
    x = layers.Conv2D(5, 3, strides=2, use_bias=False, name="conv2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(8, activation="relu", name="dense1")(x)
    x = block(x)
    outputs = layers.Dense(3, name="head")(x)
    return k.Model(image, outputs, name="cnn")


def build_sequential(k: Any) -> Any:
    """A top-level ``Sequential`` CNN named ``net``: Keras 3 paths start with ``net/``, Keras 2 names do not."""
    layers = k.layers
    return k.Sequential(
        [
            k.Input((8, 8, 3)),
            layers.Conv2D(4, 3, name="conv1"),
            layers.BatchNormalization(name="bn1"),
            layers.GlobalAveragePooling2D(name="pool"),
            layers.Dense(3, name="head"),
        ],
        name="net",
    )


def randomize(model: Any, seed: int) -> None:
    """Give every weight of a (tf-)Keras model a random value; BatchNorm variances stay positive."""
    generator = np.random.default_rng(seed)
    values = []
    for weight in model.weights:
        shape = tuple(weight.shape)
        name = getattr(weight, "path", None) or weight.name
        if "moving_variance" in name:
            values.append(generator.uniform(0.5, 2.0, size=shape).astype("float32"))
        else:
            values.append(generator.normal(size=shape).astype("float32"))
    model.set_weights(values)


def copy_layer_by_layer(source: Any, target: Any) -> None:
    """Copy weights from a tf-keras model into a Keras 3 model layer by layer, matched by layer name.

    Nested models are walked by their own layer names; within a layer, weights go by position, which Keras 2 and
    Keras 3 share for Conv2D, BatchNormalization and Dense.
    """
    for layer in target.layers:
        twin = source.get_layer(layer.name)
        if hasattr(layer, "layers"):
            copy_layer_by_layer(twin, layer)
        elif layer.weights:
            layer.set_weights(twin.get_weights())


def variable_bytes(model: Any) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Every weight of a Keras 3 model by path: dtype, shape and raw bytes, for bit-identical comparisons."""
    result = {}
    for variable in model.weights:
        array = np.asarray(variable)
        result[variable.path] = (str(array.dtype), tuple(array.shape), array.tobytes())
    return result


def assert_bit_identical(actual: Any, expected: Any) -> None:
    """Both Keras 3 models have the same weight paths, and every weight has the same dtype, shape and bits."""
    got, want = variable_bytes(actual), variable_bytes(expected)
    assert list(got) == list(want), f"weight paths differ: {sorted(set(got) ^ set(want))}"
    different = [path for path in want if got[path] != want[path]]
    assert not different, f"{len(different)} of {len(want)} weights differ: {different[:5]}"
