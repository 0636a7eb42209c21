"""Tests for mapper.sources.tf_bundle: direct reads bit-identical to TensorFlow's reader, and every damage named."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import checkpoints
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from mapper.errors import CorruptSourceError
from mapper.sources import TFCheckpointSource, tf_checkpoint
from mapper.sources.tf_bundle import DTYPE_NAMES, BundleFormatError, fields, masked_crc32c, read_index, varint

pytestmark = pytest.mark.tf

DTYPES = ["float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64"]
DTYPES += ["uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128"]
SHAPES = {"scalar": (), "empty": (0,), "empty3d": (3, 0, 2), "matrix": (5, 7), "odd": (3, 1, 3)}


def random_values(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random bits of ``dtype`` (NaN payloads, negative zeros and subnormals included), or random 0/1 for bool."""
    numpy_type = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    count = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.integers(0, 2, count).astype(bool).reshape(shape)
    return rng.integers(0, 256, count * numpy_type.itemsize, dtype=np.uint8).view(numpy_type).reshape(shape)


def assert_bit_identical(prefix: str, values: dict[str, Any], *, direct: bool = True) -> None:
    """Every tensor read by TFCheckpointSource has the dtype, shape and bytes TensorFlow's own reader gives."""
    reader = tf.train.load_checkpoint(prefix)
    read = TFCheckpointSource(prefix).read(list(values))
    for name in values:
        expected = reader.get_tensor(name)
        if direct:
            assert isinstance(read[name], np.ndarray), name  # read from the data file, not by RestoreV2
        got = np.asarray(read[name])
        assert (got.dtype, got.shape) == (expected.dtype, expected.shape), name
        assert got.tobytes() == expected.tobytes(), name


@pytest.fixture(scope="module")
def dtypes_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, np.ndarray]]:
    values = {
        f"{dtype}/{kind}": random_values(dtype, shape, seed)
        for seed, (dtype, (kind, shape)) in enumerate((d, s) for d in DTYPES for s in SHAPES.items())
    }
    return checkpoints.write_save_v2(str(tmp_path_factory.mktemp("dtypes") / "ckpt"), values), values


# --- bit-identical to tf.train.load_checkpoint(...).get_tensor ------------------------------------------------------


def test_every_dtype_scalars_and_empty_tensors(dtypes_ckpt: tuple[str, dict[str, np.ndarray]]) -> None:
    prefix, values = dtypes_ckpt
    assert_bit_identical(prefix, values)
    read = TFCheckpointSource(prefix).read(["float32/matrix", "bfloat16/scalar"])
    for array in read.values():
        assert not array.flags.writeable
        assert array.ctypes.data % 64 == 0
    assert str(read["bfloat16/scalar"].dtype) == "bfloat16"


def test_tf2_checkpoint_of_a_keras_model(tmp_path: Path) -> None:
    model = checkpoints.functional_model()
    checkpoints.distinct_values(model.weights)
    prefix, values = checkpoints.write_keras_checkpoint(model, tmp_path)
    assert_bit_identical(prefix, values)


def test_tf1_saver_checkpoint_one_and_two_data_files(tmp_path: Path) -> None:
    for sharded in (False, True):
        prefix, values = checkpoints.write_tf1_checkpoint(tmp_path / str(sharded), sharded=sharded)
        assert len(checkpoints.data_files(prefix)) == (2 if sharded else 1)
        assert_bit_identical(prefix, values)


def test_checkpoint_merged_from_three_save_v2_prefixes(tmp_path: Path) -> None:
    parts = [{f"part{part}/{dtype}": random_values(dtype, (4, 3), part) for dtype in DTYPES} for part in range(3)]
    prefix, values = checkpoints.write_merged_checkpoint(tmp_path, parts)
    assert [file.name for file in checkpoints.data_files(prefix)] == [f"ckpt.data-0000{i}-of-00003" for i in range(3)]
    assert_bit_identical(prefix, values)  # one read spanning every data file


def test_partitioned_tensors_and_strings_go_through_restore_v2(tmp_path: Path, monkeypatch: Any) -> None:
    restored: list[list[str]] = []
    restore = tf_checkpoint._restore

    def recording(tf_module: Any, prefix: str, names: list[str], dtypes: list[Any]) -> list[Any]:
        restored.append(names)
        return restore(tf_module, prefix, names, dtypes)

    monkeypatch.setattr(tf_checkpoint, "_restore", recording)
    values = {"label": b"bert", "words": np.array([b"a", b"bc"]), "w": np.arange(6, dtype="float32")}
    prefix = checkpoints.write_save_v2(str(tmp_path / "strings" / "ckpt"), values)
    read = TFCheckpointSource(prefix).read(["w", "label", "words"])
    assert restored == [["label", "words"]]  # the float tensor was read directly
    assert isinstance(read["w"], np.ndarray)
    assert (read["label"].numpy(), read["words"].numpy().tolist()) == (b"bert", [b"a", b"bc"])

    restored.clear()
    prefix, sliced = checkpoints.write_sharded_tf2_checkpoint(tmp_path / "sliced")
    assert_bit_identical(prefix, sliced, direct=False)
    index = {entry.key: entry for entry in read_index(prefix + ".index").entries}
    partitioned = sorted(name for name in sliced if index[name].sliced)
    assert partitioned  # MaxShardSizePolicy cut some tensors across data files
    assert restored == [partitioned]


def test_dtype_names_agree_with_tensorflow() -> None:
    assert {number: tf.as_dtype(number).name for number in DTYPE_NAMES} == DTYPE_NAMES


def test_masked_crc32c_is_what_tensorflow_stores(dtypes_ckpt: tuple[str, dict[str, np.ndarray]]) -> None:
    prefix, values = dtypes_ckpt
    for entry in read_index(prefix + ".index").entries:
        if entry.key:
            assert entry.crc32c == masked_crc32c(np.ascontiguousarray(values[entry.key]).view(np.uint8).tobytes())


def test_no_tensorflow_on_the_direct_path(dtypes_ckpt: tuple[str, dict[str, np.ndarray]]) -> None:
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"  # any import of TensorFlow now fails
        "from mapper.sources import TFCheckpointSource\n"
        f"source = TFCheckpointSource({dtypes_ckpt[0]!r})\n"
        "values = source.read(list(source.specs()))\n"
        "print(len(values), float(values['float64/matrix'].view('uint64')[0, 0]) >= 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(dtypes_ckpt[1])), "True"]


# --- damage -------------------------------------------------------------------------------------------------------


def merged(tmp_path: Path) -> tuple[str, dict[str, np.ndarray]]:
    parts = [{f"p{part}/w{index}": random_values("float32", (64,), index) for index in range(3)} for part in range(2)]
    return checkpoints.write_merged_checkpoint(tmp_path, parts)


# read() hands the tensors out; verify() (the executor's check before the first assignment) checks the same bytes
# through one small buffer: both must find every kind of damage and name it the same way.
CALLS = pytest.mark.parametrize("call", ["read", "verify"])


@CALLS
def test_flipped_byte_is_a_checksum_error_naming_the_tensor(tmp_path: Path, call: str) -> None:
    prefix, _ = merged(tmp_path)
    entry = next(entry for entry in read_index(prefix + ".index").entries if entry.key == "p1/w2")
    checkpoints.flip_bytes(checkpoints.data_files(prefix)[1], entry.offset + 17, 1)
    source = TFCheckpointSource(prefix)
    assert len(source.read(["p0/w2", "p1/w1"])) == 2
    source.verify(["p0/w2", "p1/w1"])
    with pytest.raises(CorruptSourceError) as caught:
        getattr(source, call)(["p0/w0", "p1/w2"])
    message = str(caught.value)
    assert "'p1/w2'" in message
    assert "'p0/w0'" not in message
    assert "checksum" in message
    assert "ckpt.data-00001-of-00002" in message
    assert prefix in message
    assert caught.value.path == prefix


@CALLS
def test_data_file_truncated_after_opening(tmp_path: Path, call: str) -> None:
    prefix, values = merged(tmp_path)
    source = TFCheckpointSource(prefix)
    checkpoints.truncate(checkpoints.data_files(prefix)[0], 10)
    np.testing.assert_array_equal(source.read(["p0/w0"])["p0/w0"], values["p0/w0"])
    with pytest.raises(CorruptSourceError, match=r"'p0/w2'.*became shorter after the checkpoint was opened"):
        getattr(source, call)(["p0/w2"])


@CALLS
def test_data_file_removed_after_opening(tmp_path: Path, call: str) -> None:
    prefix, _ = merged(tmp_path)
    source = TFCheckpointSource(prefix)
    checkpoints.data_files(prefix)[1].unlink()
    with pytest.raises(CorruptSourceError, match=r"cannot read data file 'ckpt\.data-00001-of-00002'"):
        getattr(source, call)(["p1/w0"])


@CALLS
def test_io_error_mid_read(tmp_path: Path, monkeypatch: Any, call: str) -> None:
    prefix, _ = merged(tmp_path)
    source = TFCheckpointSource(prefix)

    def failing(fd: int, buffers: list[Any], offset: int) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "preadv", failing)
    with pytest.raises(CorruptSourceError) as caught:
        getattr(source, call)(["p0/w1"])
    assert "Input/output error" in str(caught.value)
    assert "ckpt.data-00000-of-00002" in str(caught.value)


@CALLS
def test_length_that_does_not_match_the_shape(tmp_path: Path, monkeypatch: Any, call: str) -> None:
    prefix, _ = merged(tmp_path)
    source = TFCheckpointSource(prefix)
    entry = source._raw["p0/w0"]
    monkeypatch.setitem(source._raw, "p0/w0", entry._replace(size=entry.size - 4))
    with pytest.raises(CorruptSourceError, match=r"'p0/w0'.*252 bytes, not the 256 its shape needs"):
        getattr(source, call)(["p0/w0"])


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda data: b"\x00" * len(data), "magic number"),
        (lambda data: data[:20] + bytes(byte ^ 0xFF for byte in data[20:24]) + data[24:], "checksum"),
        (lambda data: data[-48:], "past the end"),
    ],
    ids=["zeros", "flipped-block-byte", "footer-only"],
)
def test_damaged_index_is_a_bundle_format_error(tmp_path: Path, damage: Any, expected: str) -> None:
    prefix = checkpoints.write_save_v2(str(tmp_path / "ckpt"), {"w": np.zeros(3, "float32")})
    index = Path(prefix + ".index")
    index.write_bytes(damage(index.read_bytes()))
    with pytest.raises(BundleFormatError, match=expected):
        read_index(str(index))
    with pytest.raises(CorruptSourceError, match="cannot read the index file"):
        TFCheckpointSource(prefix)  # TensorFlow's reader, asked next, cannot read it either


def test_protobuf_reader_edges() -> None:
    assert varint(bytes([0xFF] * 9 + [0x01]), 0) == (2**64 - 1, 10)
    with pytest.raises(BundleFormatError, match="longer than ten bytes"):
        varint(bytes([0x80] * 11), 0)
    with pytest.raises(BundleFormatError, match="past the end"):
        list(fields(bytes([0x12, 0x05]) + b"ab"))
    with pytest.raises(BundleFormatError, match="wire type 3"):
        list(fields(bytes([0x0B])))


def test_verify_keeps_no_tensor_sized_buffer(tmp_path: Path) -> None:
    import tracemalloc

    big = random_values("float32", (4096, 1024), 3)  # 16 MiB, four times the verification buffer
    prefix = tf.train.Checkpoint(w=tf.Variable(big)).write(str(tmp_path / "ckpt"))
    source = TFCheckpointSource(prefix)
    name = "w/.ATTRIBUTES/VARIABLE_VALUE"
    tracemalloc.start()
    try:
        source.verify([name])
        verified = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        source.read([name])
        read = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read >= big.nbytes
    assert verified < big.nbytes // 3


@CALLS
def test_small_tensors_back_to_back_take_one_read_per_run(tmp_path: Path, monkeypatch: Any, call: str) -> None:
    values = {f"t{number:03d}": np.full((10, 10), number, "float32") for number in range(60)}  # 400 bytes each
    prefix = checkpoints.write_save_v2(str(tmp_path / "ckpt"), values)
    source = TFCheckpointSource(prefix)
    reads: list[int] = []
    preadv = os.preadv

    def counting(fd: int, buffers: list[Any], offset: int) -> int:
        reads.append(offset)
        return preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", counting)
    result = getattr(source, call)(list(values))

    assert len(reads) == 1  # 24,000 bytes, back to back: one run
    if call == "read":
        for name, array in values.items():
            np.testing.assert_array_equal(result[name], array)
            assert result[name].ctypes.data % 64 == 0 and not result[name].flags.writeable


@CALLS
def test_a_damaged_tensor_inside_a_run_is_named(tmp_path: Path, call: str) -> None:
    values = {f"t{number}": np.full(25, number, "float32") for number in range(5)}
    prefix = checkpoints.write_save_v2(str(tmp_path / "ckpt"), values)
    source = TFCheckpointSource(prefix)
    entry = source._raw["t3"]
    data = checkpoints.data_files(prefix)[0]
    content = bytearray(data.read_bytes())
    content[entry.offset + 7] ^= 0x10
    data.write_bytes(bytes(content))

    with pytest.raises(CorruptSourceError, match=r"cannot read 't3'.*checksum mismatch"):
        getattr(source, call)(list(values))


@CALLS
def test_a_run_cut_short_names_the_first_tensor_cut(tmp_path: Path, call: str) -> None:
    values = {f"t{number}": np.full(25, number, "float32") for number in range(6)}  # 100 bytes each, one run
    prefix = checkpoints.write_save_v2(str(tmp_path / "ckpt"), values)
    source = TFCheckpointSource(prefix)
    checkpoints.truncate(checkpoints.data_files(prefix)[0], 150)  # t4 cut in half, t5 gone

    with pytest.raises(CorruptSourceError, match=r"'t4'.*became shorter after the checkpoint was opened"):
        getattr(source, call)(list(values))
    np.testing.assert_array_equal(source.read(["t0", "t3"])["t3"], values["t3"])
