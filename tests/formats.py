"""Small real files in every source format for tests/test_sources_formats.py, and tools to damage them.

Nothing here imports TensorFlow, Keras or torch at module level: the writers that need them import them inside.
Every writer returns the values it wrote (``{name the source should report: numpy array}``).
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

# NumPy dtype name -> safetensors dtype code.
SAFETENSORS_CODES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}


def sample_arrays() -> dict[str, np.ndarray]:
    """One small array of every dtype safetensors files carry, plus a scalar and an empty tensor."""
    values = np.array([[0.5, -1.25, 3.0], [2.0, -0.0, 7.5]])
    return {
        "embed/bf16": values.astype(ml_dtypes.bfloat16),
        "embed/f16": values.astype(np.float16),
        "dense/kernel": values.astype(np.float32),
        "dense/f64": values.T.copy(),
        "f8/e4m3": values.astype(ml_dtypes.float8_e4m3fn),
        "f8/e5m2": values.astype(ml_dtypes.float8_e5m2),
        "int/i64": np.arange(4, dtype=np.int64) - 2,
        "int/i32": np.arange(3, dtype=np.int32) * 7,
        "int/i16": np.array([-3, 4], dtype=np.int16),
        "int/i8": np.array([-128, 127], dtype=np.int8),
        "int/u8": np.array([0, 255, 9], dtype=np.uint8),
        "mask": np.array([True, False, True]),
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def write_safetensors(path: Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> Path:
    """A valid safetensors file of ``arrays`` in the given order, written by hand (the format is 3 lines of spec)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, array in arrays.items():
        header[name] = {
            "dtype": SAFETENSORS_CODES[array.dtype.name],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(
        struct.pack("<Q", len(encoded)) + encoded + b"".join(np.ascontiguousarray(a).tobytes() for a in arrays.values())
    )
    return path


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], bytes]:
    """The header of a safetensors file and the data after it."""
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def rewrite_safetensors_header(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Let ``change`` edit the header in place, then write it back in front of the unchanged data."""
    header, data = read_safetensors_header(path)
    change(header)
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def data_start(path: Path) -> int:
    """The byte where a safetensors file's tensor data starts."""
    with path.open("rb") as file:
        return 8 + int(struct.unpack("<Q", file.read(8))[0])


def write_sharded_safetensors(
    directory: Path, shards: list[dict[str, np.ndarray]], stem: str = "model"
) -> tuple[Path, dict[str, np.ndarray]]:
    """Shards named like Hugging Face's (``model-00001-of-00002.safetensors``) and their index."""
    directory.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    values: dict[str, np.ndarray] = {}
    for number, arrays in enumerate(shards, 1):
        name = f"{stem}-{number:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(directory / name, arrays)
        weight_map |= dict.fromkeys(arrays, name)
        values |= arrays
    index = directory / f"{stem}.safetensors.index.json"
    total = sum(array.nbytes for array in values.values())
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return index, values


def write_torch(path: Path, tensors: Mapping[str, Any], *, legacy: bool = False) -> Path:
    """``torch.save`` of a dict (of tensors, and whatever else the test puts in it)."""
    import torch

    torch.save(dict(tensors), path, _use_new_zipfile_serialization=not legacy)
    return path


def torch_state(seed: int = 0) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A small state dict of several dtypes and the NumPy values the source should return for it."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 4, generator=generator)
    tensors = {
        "fc.weight": weight,
        "fc.bias": torch.randn(3, generator=generator),
        "fc.weight_t": weight.t(),  # a strided view sharing storage with fc.weight
        "norm.bf16": torch.randn(4, generator=generator).to(torch.bfloat16),
        "norm.f16": torch.randn(2, 2, generator=generator).to(torch.float16),
        "bn.num_batches_tracked": torch.tensor(5, dtype=torch.int64),
        "mask": torch.tensor([True, False]),
        "f8": torch.tensor([0.5, -2.0]).to(torch.float8_e4m3fn),
    }
    expected = {
        "fc.weight": weight.numpy().copy(),
        "fc.bias": tensors["fc.bias"].numpy().copy(),
        "fc.weight_t": weight.numpy().T.copy(),
        "norm.bf16": tensors["norm.bf16"].float().numpy().astype(ml_dtypes.bfloat16),
        "norm.f16": tensors["norm.f16"].numpy().copy(),
        "bn.num_batches_tracked": np.array(5, dtype=np.int64),
        "mask": np.array([True, False]),
        "f8": np.array([0.5, -2.0], dtype=np.float32).astype(ml_dtypes.float8_e4m3fn),
    }
    return tensors, expected


def write_zip(path: Path, members: Mapping[str, bytes]) -> Path:
    """A plain zip archive."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def member_data_offset(path: Path, member: str) -> tuple[int, int]:
    """Where a zip member's (possibly compressed) bytes start in the archive, and how many there are."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    with path.open("rb") as file:
        file.seek(info.header_offset)
        local = file.read(30)
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


def flip_bytes(path: Path, offset: int, count: int = 4) -> None:
    """Invert ``count`` bytes at ``offset``, keeping the file's size."""
    with path.open("r+b") as file:
        file.seek(offset)
        original = file.read(count)
        file.seek(offset)
        file.write(bytes(byte ^ 0xFF for byte in original))


def truncate_to(path: Path, size: int) -> None:
    """Cut a file down to ``size`` bytes."""
    with path.open("r+b") as file:
        file.truncate(size)


def snapshot(directory: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``directory``: compare before and after to prove nothing changed."""
    return {
        str(file.relative_to(directory)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(directory.rglob("*"))
        if file.is_file()
    }


# --- Keras files ------------------------------------------------------------------------------------------------------


def keras3_model() -> Any:
    """Input(4) -> Dense 'd1' (bfloat16) -> BatchNormalization 'bn' -> nested Sequential 'inner' (Dense 'inner_d', float16)."""
    import keras

    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(3, name="d1", dtype="bfloat16")(inputs)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    inner = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, name="inner_d", dtype="float16")],
        name="inner",
    )
    model = keras.Model(inputs, inner(hidden), name="outer")
    distinct(model.weights)
    return model


def tf_keras_model() -> Any:
    """The same model in tf-keras (Keras 2): Dense 'd1' (bfloat16) -> BatchNormalization 'bn' -> Sequential 'inner'."""
    import tf_keras

    inputs = tf_keras.Input((4,), name="x")
    hidden = tf_keras.layers.Dense(3, name="d1", dtype="bfloat16")(inputs)
    hidden = tf_keras.layers.BatchNormalization(name="bn")(hidden)
    inner = tf_keras.Sequential(
        [tf_keras.Input((3,)), tf_keras.layers.Dense(2, name="inner_d", dtype="float16")],
        name="inner",
    )
    model = tf_keras.Model(inputs, inner(hidden), name="outer")
    distinct(model.weights)
    return model


def distinct(variables: Any) -> None:
    """Give every variable distinct values (exact in bfloat16), so that a swap between two of them shows."""
    import tensorflow as tf

    for number, variable in enumerate(variables):
        shape = tuple(variable.shape)
        values = (np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) + 1) / 8 + number
        variable.assign(tf.cast(values, variable.dtype))


def to_numpy(value: Any) -> np.ndarray:
    """A Keras 3 or tf-keras variable's value as NumPy."""
    return np.asarray(value.numpy())
