"""Tests for mapper.outputs.tf_bundle_writer: TF checkpoints written without TensorFlow, read back by TensorFlow."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from mapper.errors import TargetError
from mapper.outputs import tf_bundle_writer
from mapper.outputs.tf_bundle_writer import CheckpointWriter, index_bytes
from mapper.outputs.writers import SaveV2CheckpointWriter, open_writer
from mapper.sources.tf_bundle import _parse_index, read_index
from mapper.specs import TensorSpec

pytestmark = pytest.mark.tf

ROOT = Path(__file__).resolve().parent.parent
FLOATS = np.array([[0.5, -1.25, np.nan, -0.0], [np.inf, -np.inf, 3.0e4, 1.0e-3]])
DTYPES: dict[str, np.ndarray] = {
    "float32": FLOATS.astype(np.float32),
    "float64": FLOATS,
    "float16": FLOATS.astype(np.float16),
    "bfloat16": FLOATS.astype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.array([0.5, -1.25, 3.0, 448.0], ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.array([0.5, -1.25, 3.0, 57344.0], ml_dtypes.float8_e5m2),
    "int8": np.array([-128, 127, 0], np.int8),
    "uint8": np.array([0, 255, 7], np.uint8),
    "int16": np.array([-32768, 32767], np.int16),
    "uint16": np.array([0, 65535], np.uint16),
    "int32": np.arange(6, dtype=np.int32).reshape(2, 3) - 3,
    "uint32": np.array([0, 2**32 - 1], np.uint32),
    "int64": np.array([-(2**62), 2**62], np.int64),
    "uint64": np.array([0, 2**64 - 1], np.uint64),
    "bool": np.array([True, False, True]),
    "complex64": np.array([1 + 2j, -3j], np.complex64),
    "complex128": np.array([1 + 2j, -3j], np.complex128),
}


def save_v2(prefix: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """What TensorFlow writes for ``arrays``, in their order."""
    names = list(arrays)
    tensors = [tf.constant(arrays[name]) for name in names]
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)


def write_direct(prefix: Path, arrays: Mapping[str, np.ndarray]) -> None:
    specs = [TensorSpec(name, array.shape, str(array.dtype)) for name, array in arrays.items()]
    with CheckpointWriter(prefix, specs) as writer:
        for name, array in reversed(list(arrays.items())):  # in any order: each goes to its place
            writer.write(name, array)


def assert_loads_bit_exact(prefix: Path, arrays: Mapping[str, np.ndarray]) -> None:
    reader = tf.train.load_checkpoint(str(prefix))
    assert sorted(reader.get_variable_to_shape_map()) == sorted(arrays)
    for name, array in arrays.items():
        got = reader.get_tensor(name)
        assert (got.dtype, got.shape) == (array.dtype, array.shape), name
        assert got.tobytes() == array.tobytes(), name


def same_files(tmp_path: Path, arrays: Mapping[str, np.ndarray]) -> tuple[bool, bool]:
    """(data file identical, index identical) between SaveV2 and the direct writer for ``arrays``."""
    save_v2(tmp_path / "tf", arrays)
    write_direct(tmp_path / "ours", arrays)
    data = "{}.data-00000-of-00001"
    same_data = (tmp_path / data.format("tf")).read_bytes() == (tmp_path / data.format("ours")).read_bytes()
    same_index = (tmp_path / "tf.index").read_bytes() == (tmp_path / "ours.index").read_bytes()
    return same_data, same_index


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_dtype_loads_bit_exact_and_matches_what_save_v2_writes(tmp_path: Path, dtype: str) -> None:
    arrays = {
        f"layer/{dtype}": DTYPES[dtype],
        "a/scalar": np.array(DTYPES[dtype].flat[0]),
        "z.empty": DTYPES[dtype][:0],
    }

    assert same_files(tmp_path, arrays) == (True, True)
    assert_loads_bit_exact(tmp_path / "ours", arrays)


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(["bert/encoder/layer_0/kernel", "bert/encoder/layer_0/bias", "bert/pooler/kernel"], id="slashes"),
        pytest.param(["h.0.attn.c_attn.weight", "h.0.ln_1.bias", "wte.weight", "h.10.mlp.weight"], id="dots"),
        pytest.param(["model/_operations/1/_kernel/.ATTRIBUTES/VARIABLE_VALUE", "Ünïcode/名前", "a b"], id="others"),
        pytest.param(["b", "a", "ab", "a\u00ff", "a\u0100"], id="utf8-order"),
    ],
)
def test_names_are_written_as_given_and_sorted_as_tensorflow_sorts_them(tmp_path: Path, names: list[str]) -> None:
    arrays = {name: np.full((2, 3), index, np.float32) for index, name in enumerate(names)}

    assert same_files(tmp_path, arrays) == (True, True)
    assert_loads_bit_exact(tmp_path / "ours", arrays)


def test_many_tensors_fill_several_blocks_as_tensorflow_lays_them_out(tmp_path: Path) -> None:
    # Names that share little (about 60 bytes an entry): over 256 KiB of index entries in 5,000 tensors.
    names = [f"block_{i % 97}/{hashlib.sha256(str(i).encode()).hexdigest()[:40]}" for i in range(5_000)]
    arrays = {name: np.full(2, i, np.int32) for i, name in enumerate(names)}

    assert same_files(tmp_path, arrays) == (True, True)
    index_file = (tmp_path / "ours.index").read_bytes()
    assert _index_blocks(index_file) > 1
    assert_loads_bit_exact(tmp_path / "ours", arrays)


def test_small_blocks_load_and_find_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tf_bundle_writer, "BLOCK_BYTES", 200)  # a block every few entries, restart points inside
    arrays = {f"v{i:03d}/{'x' * (i % 7)}": np.arange(i % 5, dtype=np.float32) + i for i in range(300)}

    write_direct(tmp_path / "ckpt", arrays)

    assert _index_blocks((tmp_path / "ckpt.index").read_bytes()) > 20
    assert_loads_bit_exact(tmp_path / "ckpt", arrays)  # get_tensor seeks each key through the index block


def test_index_entries_are_what_the_reader_parses() -> None:
    entries = [("w", "bfloat16", (3, 0), 10, 0, 0xA282EAD8), ("a", "bool", (), 0, 1, 5)]

    index = _parse_index(index_bytes(entries))

    assert (index.num_shards, index.endianness) == (1, 0)
    assert [(e.key, e.dtype_name, e.shape, e.offset, e.size, e.crc32c) for e in index.entries] == [
        ("a", "bool", (), 0, 1, 5),
        ("w", "bfloat16", (3, 0), 10, 0, 0xA282EAD8),
    ]


def test_checkpoint_read_restores_variables_by_name(tmp_path: Path) -> None:
    # No object graph: tf.train.Checkpoint.read falls back to TensorFlow's name-based mode (variables by name).
    arrays = {"dense/kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "dense/bias": np.ones(3, np.float32)}
    write_direct(tmp_path / "ckpt", arrays)
    kernel = tf.Variable(tf.zeros((2, 3)), name="dense/kernel")
    bias = tf.Variable(tf.zeros(3), name="dense/bias")

    tf.train.Checkpoint(kernel=kernel, bias=bias).read(str(tmp_path / "ckpt")).assert_consumed()

    assert kernel.numpy().tobytes() == arrays["dense/kernel"].tobytes()
    assert bias.numpy().tobytes() == arrays["dense/bias"].tobytes()
    copy = tf.Variable(tf.zeros((2, 3)))
    tf.compat.v1.train.init_from_checkpoint(str(tmp_path / "ckpt"), {"dense/kernel": copy})
    assert copy.numpy().tobytes() == arrays["dense/kernel"].tobytes()


def test_a_changed_byte_fails_tensorflows_checksum(tmp_path: Path) -> None:
    arrays = {"w": np.arange(64, dtype=np.float32)}
    write_direct(tmp_path / "ckpt", arrays)
    data = tmp_path / "ckpt.data-00000-of-00001"
    damaged = bytearray(data.read_bytes())
    damaged[10] ^= 0xFF
    data.write_bytes(bytes(damaged))

    with pytest.raises(tf.errors.OpError, match="Checksum does not match"):
        tf.train.load_checkpoint(str(tmp_path / "ckpt")).get_tensor("w")


def test_strings_go_to_save_v2_and_fixed_size_dtypes_do_not(tmp_path: Path) -> None:
    strings = open_writer(tmp_path / "s", [TensorSpec("s", (2,), "string"), TensorSpec("w", (1,), "float32")])
    plain = open_writer(tmp_path / "p", [TensorSpec("w", (1,), "float32")])
    try:
        assert type(strings) is SaveV2CheckpointWriter and type(plain) is CheckpointWriter
    finally:
        strings.abort()
        plain.abort()
    with pytest.raises(TargetError, match=r"cannot hold string tensors.*SaveV2"):
        CheckpointWriter(tmp_path / "x", [TensorSpec("s", (2,), "string")])
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_the_writer_needs_no_tensorflow(tmp_path: Path) -> None:
    script = (
        "import sys, numpy as np\n"
        "sys.modules['tensorflow'] = None\n"  # importing it fails
        "from mapper.outputs.writers import open_writer\n"
        "from mapper.specs import TensorSpec\n"
        f"with open_writer({str(tmp_path / 'ckpt')!r}, [TensorSpec('w', (3,), 'int64')]) as writer:\n"
        "    writer.write('w', np.arange(3))\n"
        "assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})

    assert_loads_bit_exact(tmp_path / "ckpt", {"w": np.arange(3)})
    assert [entry.key for entry in read_index(str(tmp_path / "ckpt.index")).entries] == ["w"]


def _index_blocks(index_file: bytes) -> int:
    """How many data blocks the table's index block points at."""
    from mapper.sources.tf_bundle import block_entries, varint

    footer = len(index_file) - 48
    _, position = varint(index_file, footer)
    _, position = varint(index_file, position)
    offset, position = varint(index_file, position)
    size, _ = varint(index_file, position)
    return len(list(block_entries(index_file[offset : offset + size])))
