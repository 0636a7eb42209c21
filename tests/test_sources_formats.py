"""Tests for the file-format sources (safetensors, Keras .h5, .npz, PyTorch) and content-based open_source."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import formats
import ml_dtypes
import numpy as np
import pytest

from mapper.errors import CorruptSourceError, SourceError, SourceNotFoundError
from mapper.sources import (
    FORMATS,
    KerasH5Source,
    NpzSource,
    SafetensorsSource,
    Source,
    TorchSource,
    detect_format,
    open_source,
)

ML_TYPES = {"bfloat16", "float8_e4m3fn", "float8_e5m2"}
# A bad input: builds the damaged thing in a directory and returns (path to open, error class, message parts).
Case = Callable[[Path], tuple[Path, type[SourceError], list[str]]]


def assert_reads(source: Source, expected: Mapping[str, np.ndarray], *, ordered: bool = True) -> None:
    """specs() lists exactly the expected tensors with their shapes and dtypes; read() returns their values."""
    specs = source.specs()
    assert (list(specs) if ordered else sorted(specs)) == (list(expected) if ordered else sorted(expected))
    for name, value in expected.items():
        assert (specs[name].shape, specs[name].dtype) == (value.shape, value.dtype.name), name
    names = list(reversed(expected))
    values = source.read(names)
    assert list(values) == names
    for name, value in expected.items():
        array = values[name]
        assert isinstance(array, np.ndarray), name
        assert array.dtype == value.dtype, (name, array.dtype, value.dtype)
        assert array.shape == value.shape, name
        if value.dtype.name in ML_TYPES:  # compare the bits: NaN-free, but keep it exact
            np.testing.assert_array_equal(
                array.view(f"u{value.dtype.itemsize}"), value.view(f"u{value.dtype.itemsize}")
            )
        else:
            np.testing.assert_array_equal(array, value)


def check_bad_input(case: Case, tmp_path: Path, openers: list[Callable[[Path], Any]]) -> SourceError:
    """Every opener raises exactly the expected error, naming the path and each part; no file changes."""
    given, error_class, parts = case(tmp_path)
    before = formats.snapshot(tmp_path)
    errors = []
    for opener in openers:
        with pytest.raises(SourceError) as caught:
            opener(given)
        assert type(caught.value) is error_class, (type(caught.value), str(caught.value))
        message = str(caught.value)
        for part in [str(given), *parts]:
            assert part in message, (part, message)
        assert caught.value.path.startswith(str(tmp_path)), caught.value.path
        errors.append(caught.value)
    assert formats.snapshot(tmp_path) == before
    return errors[-1]


# === safetensors ======================================================================================================


def test_safetensors_every_dtype(tmp_path: Path) -> None:
    arrays = formats.sample_arrays()
    path = formats.write_safetensors(tmp_path / "model.safetensors", arrays, metadata={"format": "pt"})
    source = SafetensorsSource(path)
    assert_reads(source, dict(sorted(arrays.items())))
    assert "__metadata__" not in source.specs()
    assert source.description == str(path)
    assert source.files == (str(path),) and source.index is None
    read = source.read(["dense/kernel", "embed/bf16"])
    assert not read["dense/kernel"].flags.writeable  # read-only arrays, as the views of a map were
    assert read["embed/bf16"].dtype == ml_dtypes.bfloat16
    assert detect_format(path) == "safetensors"
    assert isinstance(open_source(path), SafetensorsSource)


def test_safetensors_written_by_the_safetensors_package(tmp_path: Path) -> None:
    """Files written by the reference implementation (NumPy and PyTorch writers) read back what it reads."""
    import safetensors.numpy

    # safetensors.numpy reads float8 through np.float8_*, which NumPy lacks: leave float8 out here.
    arrays = {name: array for name, array in formats.sample_arrays().items() if array.size and "f8" not in name}
    safetensors.numpy.save_file(arrays, str(tmp_path / "np.safetensors"))
    assert_reads(
        SafetensorsSource(tmp_path / "np.safetensors"),
        safetensors.numpy.load_file(str(tmp_path / "np.safetensors")),
        ordered=False,
    )

    torch = pytest.importorskip("torch")
    import safetensors.torch

    tensors = {
        "w.bf16": torch.linspace(-2, 2, 6).reshape(2, 3).to(torch.bfloat16),
        "w.f16": torch.ones(3, dtype=torch.float16),
    }
    safetensors.torch.save_file(tensors, str(tmp_path / "pt.safetensors"))
    expected = {
        "w.bf16": tensors["w.bf16"].float().numpy().astype(ml_dtypes.bfloat16),
        "w.f16": tensors["w.f16"].numpy(),
    }
    assert_reads(SafetensorsSource(tmp_path / "pt.safetensors"), expected)


def test_sharded_safetensors(tmp_path: Path) -> None:
    shards = [
        {"b.weight": np.ones((2, 2), np.float32), "a.bias": np.zeros(2, np.float16)},
        {"c.weight": np.arange(6, dtype=np.int32).reshape(2, 3)},
    ]
    index, values = formats.write_sharded_safetensors(tmp_path / "hf", shards)
    (tmp_path / "hf" / "config.json").write_text("{}")
    for given in (index, tmp_path / "hf"):
        source = SafetensorsSource(given)
        assert_reads(source, dict(sorted(values.items())))
        assert source.index == str(index)
        assert [Path(file).name for file in source.files] == [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ]
        assert detect_format(given) == "safetensors"
        assert isinstance(open_source(given), SafetensorsSource)
    assert SafetensorsSource(tmp_path / "hf").description == f"{tmp_path / 'hf'} -> {index}"


def test_directory_with_one_safetensors_file(tmp_path: Path) -> None:
    path = formats.write_safetensors(tmp_path / "model.safetensors", {"w": np.ones(2, np.float32)})
    (tmp_path / "config.json").write_text("{}")
    source = open_source(tmp_path)
    assert isinstance(source, SafetensorsSource)
    assert source.files == (str(path),)


def test_safetensors_reads_only_the_shards_asked_for(tmp_path: Path) -> None:
    index, values = formats.write_sharded_safetensors(
        tmp_path, [{"a": np.ones(3, np.float32)}, {"b": np.full(2, 2, np.int64)}]
    )
    source = SafetensorsSource(index)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()  # gone after opening: reading 'a' must not need it
    np.testing.assert_array_equal(source.read(["a"])["a"], values["a"])
    for call in (source.read, source.verify):
        with pytest.raises(CorruptSourceError, match=r"cannot read safetensors file .*model-00002-of-00002"):
            call(["b"])


@pytest.mark.parametrize("call", ["read", "verify"])
def test_safetensors_reads_only_the_bytes_asked_for(tmp_path: Path, call: str) -> None:
    """Cut the last tensor off the file after opening: the others still read; the cut one is refused, no SIGBUS.

    ``verify`` (the executor's check before the first assignment, through one small buffer) finds the same.
    """
    arrays = {"first": np.arange(4, dtype=np.float32), "second": np.ones((64, 64), np.float32)}
    path = formats.write_safetensors(tmp_path / "x.safetensors", arrays)
    source = SafetensorsSource(path)
    formats.truncate_to(path, formats.data_start(path) + arrays["first"].nbytes)
    np.testing.assert_array_equal(source.read(["first"])["first"], arrays["first"])
    source.verify(["first"])
    with pytest.raises(CorruptSourceError) as caught:
        getattr(source, call)(["second"])
    for part in [str(path), "changed since it was opened", "'second'", "open it again"]:
        assert part in str(caught.value)


def test_safetensors_read_unknown_name(tmp_path: Path) -> None:
    path = formats.write_safetensors(tmp_path / "x.safetensors", {"dense.weight": np.ones(2, np.float32)})
    with pytest.raises(SourceError, match=r"has no tensor 'dense\.wieght'; did you mean 'dense\.weight'\?") as caught:
        SafetensorsSource(path).read(["dense.wieght"])
    assert type(caught.value) is SourceError and str(path) in str(caught.value)


def _two_tensors(directory: Path) -> Path:
    return formats.write_safetensors(
        directory / "model.safetensors", {"a": np.ones((2, 3), np.float32), "b": np.zeros((2, 3), np.float32)}
    )


def _truncated_data(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = _two_tensors(directory)
    formats.truncate_to(path, path.stat().st_size - 3)
    return path, CorruptSourceError, ["is truncated", "'b'", "up to byte"]


def _truncated_header(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = _two_tensors(directory)
    formats.truncate_to(path, 20)
    return path, CorruptSourceError, ["is truncated", "its header is", "only 20 bytes"]


def _overlapping_offsets(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = _two_tensors(directory)
    formats.rewrite_safetensors_header(path, lambda header: header["b"].update(data_offsets=[12, 36]))
    return path, CorruptSourceError, ["lies about offsets", "'a' (bytes 0..24)", "'b' (bytes 12..36)", "overlap"]


def _offsets_past_end(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = _two_tensors(directory)
    formats.rewrite_safetensors_header(path, lambda header: header["b"].update(data_offsets=[48, 72]))
    return path, CorruptSourceError, ["is truncated", "places 'b' up to byte"]


def _wrong_byte_count(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = _two_tensors(directory)
    formats.rewrite_safetensors_header(path, lambda header: header["b"].update(shape=[2, 2]))
    return path, CorruptSourceError, ["lies about tensor 'b'", "shape [2, 2] of F32 needs 16 bytes", "span 24"]


def _bad_shape(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = _two_tensors(directory)
    formats.rewrite_safetensors_header(path, lambda header: header["a"].update(shape=[-2, 3]))
    return path, CorruptSourceError, ["damaged header", "tensor 'a'", "'shape'"]


def _damaged_json(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = _two_tensors(directory)
    formats.flip_bytes(path, 12, 3)
    return path, CorruptSourceError, ["damaged header"]


def _repeated_name(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    text = b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}'
    path = directory / "model.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"\x01\x02")
    return path, CorruptSourceError, ["damaged header", "name 'a' appears twice"]


def _unsupported_dtype(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = _two_tensors(directory)
    formats.rewrite_safetensors_header(path, lambda header: header["a"].update(dtype="F4"))
    return path, SourceError, ["tensor 'a' has dtype 'F4'", "supported: F64, F32"]


def _not_safetensors(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = directory / "model.safetensors"
    path.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # a Git LFS pointer, the classic
    return path, SourceError, ["is not a safetensors file", "b'version http'"]


def _index_naming_a_missing_shard(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    index, _ = formats.write_sharded_safetensors(
        directory, [{"a": np.ones(1, np.float32)}, {"b": np.ones(1, np.float32)}]
    )
    (directory / "model-00002-of-00002.safetensors").unlink()
    return index, CorruptSourceError, [str(index), "'model-00002-of-00002.safetensors'", "do not exist", "hold 'b'"]


def _index_placing_a_tensor_wrongly(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    index, _ = formats.write_sharded_safetensors(
        directory, [{"a": np.ones(1, np.float32)}, {"b": np.ones(1, np.float32)}]
    )
    document = json.loads(index.read_text())
    document["weight_map"]["c"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(document))
    return index, CorruptSourceError, ["places 1 tensor(s) where they are not: 'c'", "no shard holds it"]


def _index_without_weight_map(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    formats.write_safetensors(directory / "model-00001-of-00001.safetensors", {"a": np.ones(1, np.float32)})
    index = directory / "model.safetensors.index.json"
    index.write_text('{"metadata": {}, "weights": {}}')
    return index, CorruptSourceError, ["has no 'weight_map'", "'metadata', 'weights'"]


def _tensor_in_two_shards(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    index, _ = formats.write_sharded_safetensors(
        directory, [{"a": np.ones(1, np.float32)}, {"b": np.ones(1, np.float32)}]
    )
    formats.write_safetensors(
        directory / "model-00002-of-00002.safetensors", {"a": np.ones(1, np.float32), "b": np.ones(1, np.float32)}
    )
    return index, CorruptSourceError, ["tensor 'a' is in two shards", "'model-00001-of-00002.safetensors'"]


def _directory_with_two_files(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    formats.write_safetensors(directory / "a.safetensors", {"a": np.ones(1, np.float32)})
    formats.write_safetensors(directory / "b.safetensors", {"b": np.ones(1, np.float32)})
    return directory, SourceError, ["holds 2 .safetensors files ('a.safetensors', 'b.safetensors')", "pass one file"]


SAFETENSORS_CASES = [
    _truncated_data,
    _truncated_header,
    _overlapping_offsets,
    _offsets_past_end,
    _wrong_byte_count,
    _bad_shape,
    _damaged_json,
    _repeated_name,
    _unsupported_dtype,
    _not_safetensors,
    _index_naming_a_missing_shard,
    _index_placing_a_tensor_wrongly,
    _index_without_weight_map,
    _tensor_in_two_shards,
    _directory_with_two_files,
]


def _case_id(case: Callable[..., Any]) -> str:
    return case.__name__.strip("_").replace("_", "-")


@pytest.mark.parametrize("case", SAFETENSORS_CASES, ids=_case_id)
def test_safetensors_bad_input(case: Case, tmp_path: Path) -> None:
    error = check_bad_input(case, tmp_path, [SafetensorsSource, open_source])
    assert not isinstance(error, SourceNotFoundError)


def test_safetensors_not_found(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="no safetensors file or directory at"):
        SafetensorsSource(tmp_path / "missing.safetensors")


# === Keras .h5 ========================================================================================================


@pytest.mark.tf
def test_keras3_weights_h5(tmp_path: Path) -> None:
    model = formats.keras3_model()
    path = tmp_path / "model.weights.h5"
    model.save_weights(path)
    d1, bn, inner = model.get_layer("d1"), model.get_layer("bn"), model.get_layer("inner").get_layer("inner_d")
    expected = {
        "layers/batch_normalization/vars/0": bn.gamma,
        "layers/batch_normalization/vars/1": bn.beta,
        "layers/batch_normalization/vars/2": bn.moving_mean,
        "layers/batch_normalization/vars/3": bn.moving_variance,
        "layers/dense/vars/0": d1.kernel,
        "layers/dense/vars/1": d1.bias,
        "layers/sequential/layers/dense/vars/0": inner.kernel,
        "layers/sequential/layers/dense/vars/1": inner.bias,
    }
    values = {name: formats.to_numpy(variable) for name, variable in expected.items()}
    assert values["layers/dense/vars/0"].dtype == ml_dtypes.bfloat16
    assert values["layers/sequential/layers/dense/vars/0"].dtype == np.float16
    source = KerasH5Source(path)
    assert source.layout == "keras3"
    assert source.description == f"{path} (Keras 3 weights)"
    assert_reads(source, values)
    assert detect_format(path) == "keras-h5"
    assert isinstance(open_source(path), KerasH5Source)


@pytest.mark.tf
@pytest.mark.parametrize("whole_model", [False, True], ids=["save-weights", "model-save"])
def test_keras2_h5(whole_model: bool, tmp_path: Path) -> None:
    pytest.importorskip("tf_keras")
    model = formats.tf_keras_model()
    path = tmp_path / "model.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf-keras calls HDF5 model files legacy
        (model.save if whole_model else model.save_weights)(str(path))
    d1, bn, inner = model.get_layer("d1"), model.get_layer("bn"), model.get_layer("inner").get_layer("inner_d")
    expected = {
        "d1/kernel": d1.kernel,
        "d1/bias": d1.bias,
        "bn/gamma": bn.gamma,
        "bn/beta": bn.beta,
        "bn/moving_mean": bn.moving_mean,
        "bn/moving_variance": bn.moving_variance,
        "inner/inner_d/kernel": inner.kernel,
        "inner/inner_d/bias": inner.bias,
    }
    values = {name: formats.to_numpy(variable) for name, variable in expected.items()}
    assert values["d1/kernel"].dtype == ml_dtypes.bfloat16
    source = open_source(path)
    assert isinstance(source, KerasH5Source)
    assert source.layout == ("keras2-model" if whole_model else "keras2")
    assert_reads(source, values)


def _keras3_file(path: Path, *, checksummed: str | None = None) -> Path:
    """A Keras 3 layout written with h5py; the dataset ``checksummed`` is chunked with a Fletcher-32 checksum."""
    import h5py

    with h5py.File(path, "w") as file:
        for name, value in {
            "layers/dense/vars/0": np.arange(12, dtype=np.float32).reshape(4, 3),
            "layers/dense/vars/1": np.arange(300, dtype=np.float32),
            "layers/dense/vars/2": np.arange(3, dtype=np.int64),
        }.items():
            if name == checksummed:
                file.create_dataset(name, data=value, chunks=value.shape, fletcher32=True)
            else:
                file.create_dataset(name, data=value)
        file["layers/dense/vars"].attrs["name"] = "d1"
    return path


def test_h5_reads_only_the_datasets_asked_for(tmp_path: Path) -> None:
    import h5py

    path = _keras3_file(tmp_path / "m.weights.h5", checksummed="layers/dense/vars/1")
    with h5py.File(path, "r") as file:
        offset = file["layers/dense/vars/1"].id.get_chunk_info(0).byte_offset
    formats.flip_bytes(path, offset + 400, 8)  # damage the unplanned tensor's data; its checksum now fails
    source = KerasH5Source(path)
    values = source.read(["layers/dense/vars/0", "layers/dense/vars/2"])
    np.testing.assert_array_equal(values["layers/dense/vars/2"], [0, 1, 2])
    assert values["layers/dense/vars/0"].shape == (4, 3)
    with pytest.raises(CorruptSourceError) as caught:
        source.read(["layers/dense/vars/1"])
    for part in ["cannot read weight 'layers/dense/vars/1'", str(path), "filter returned failure"]:
        assert part in str(caught.value)


def _not_keras_h5(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    import h5py

    path = directory / "data.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("images", data=np.zeros((2, 2)))
        file.create_group("labels")
        file.attrs["creator"] = "someone"
    return path, SourceError, ["is not Keras weights", "groups ['labels']", "datasets ['images']", "['creator']"]


def _truncated_h5(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = _keras3_file(directory / "m.weights.h5")
    formats.truncate_to(path, path.stat().st_size // 2)
    return path, CorruptSourceError, ["cannot open HDF5 file", "truncated or damaged"]


def _keras2_weight_without_dataset(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    import h5py

    path = directory / "m.h5"
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = [b"d1"]
        file.create_dataset("d1/d1/kernel:0", data=np.zeros((2, 2), np.float32))
        file["d1"].attrs["weight_names"] = [b"d1/kernel:0", b"d1/bias:0"]
    return path, CorruptSourceError, ["layer 'd1' lists weight 'd1/bias:0'", "no dataset 'd1/d1/bias:0'"]


def _keras2_layer_without_group(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    import h5py

    path = directory / "m.h5"
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = [b"d1", b"head"]
        file.create_group("d1").attrs["weight_names"] = []
    return path, CorruptSourceError, ["lists layer 'head' in 'layer_names' but has no group"]


def _not_hdf5(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = directory / "model.h5"
    path.write_bytes(b"<html>404</html>")
    return path, SourceError, ["is not an HDF5 file", "b'<html>40'"]


H5_CASES = [_not_keras_h5, _truncated_h5, _keras2_weight_without_dataset, _keras2_layer_without_group, _not_hdf5]


@pytest.mark.parametrize("case", H5_CASES, ids=_case_id)
def test_h5_bad_input(case: Case, tmp_path: Path) -> None:
    check_bad_input(case, tmp_path, [KerasH5Source, open_source])


def test_h5_read_unknown_name(tmp_path: Path) -> None:
    source = KerasH5Source(_keras3_file(tmp_path / "m.weights.h5"))
    with pytest.raises(SourceError, match=r"has no tensor 'layers/dense/vars/9'; did you mean"):
        source.read(["layers/dense/vars/9"])


# === .npz =============================================================================================================


def npz_arrays() -> dict[str, np.ndarray]:
    return {
        "dense/kernel": np.arange(6, dtype=np.float32).reshape(2, 3),
        "half": np.array([1.5, -2.0], dtype=np.float16),
        "mask": np.array([True, False]),
        "steps": np.array(7, dtype=np.int64),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        "big_endian": np.arange(3, dtype=">f4"),
    }


@pytest.mark.parametrize("compressed", [False, True], ids=["savez", "savez-compressed"])
def test_npz(compressed: bool, tmp_path: Path) -> None:
    arrays = npz_arrays()
    path = tmp_path / "weights.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    source = NpzSource(path)
    expected = {name: array.astype(array.dtype.newbyteorder("=")) for name, array in arrays.items()}
    assert_reads(source, expected)
    assert source.read(["big_endian"])["big_endian"].dtype.isnative
    assert detect_format(path) == "npz"
    assert isinstance(open_source(path), NpzSource)


@pytest.mark.parametrize("compressed", [False, True], ids=["savez", "savez-compressed"])
def test_npz_reads_only_the_members_asked_for(compressed: bool, tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    rng = np.random.default_rng(0)
    arrays = {"planned": np.arange(4.0), "unplanned": rng.standard_normal(2000)}
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    start, size = formats.member_data_offset(path, "unplanned.npy")
    formats.flip_bytes(path, start + size - 200, 16)  # the member's data, well after its .npy header
    source = NpzSource(path)
    assert source.specs()["unplanned"].shape == (2000,)
    np.testing.assert_array_equal(source.read(["planned"])["planned"], arrays["planned"])
    with pytest.raises(CorruptSourceError) as caught:
        source.read(["planned", "unplanned"])
    assert f"cannot read array 'unplanned' from .npz archive '{path}'" in str(caught.value)


def _npz_with_objects(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = directory / "weights.npz"
    np.savez(path, w=np.zeros(2), config=np.array([{"lr": 0.1}], dtype=object))
    return path, SourceError, ["array 'config'", "holds Python objects", "refuses to unpickle"]


def _npz_with_void_bfloat16(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = directory / "weights.npz"
    np.savez(path, w=np.zeros(2, ml_dtypes.bfloat16))
    return path, SourceError, ["array 'w'", "'|V2'", "not a numeric tensor dtype"]


def _truncated_npz(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = directory / "weights.npz"
    np.savez(path, w=np.zeros(100))
    formats.truncate_to(path, 200)
    return path, CorruptSourceError, ["is damaged or truncated", "zip directory"]


NPZ_CASES = [_npz_with_objects, _npz_with_void_bfloat16, _truncated_npz]


@pytest.mark.parametrize("case", NPZ_CASES, ids=_case_id)
def test_npz_bad_input(case: Case, tmp_path: Path) -> None:
    check_bad_input(case, tmp_path, [NpzSource, open_source])


def test_npz_has_no_pickle_switch() -> None:
    import inspect

    assert list(inspect.signature(NpzSource).parameters) == ["path"]


# === PyTorch ==========================================================================================================


@pytest.fixture(scope="module")
def torch() -> Any:
    return pytest.importorskip("torch")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_torch_state_dict(legacy: bool, tmp_path: Path, torch: Any) -> None:
    tensors, expected = formats.torch_state()
    if legacy:  # torch 2.13 cannot load float8 from its legacy format with weights_only=True
        del tensors["f8"], expected["f8"]
    path = formats.write_torch(tmp_path / "pytorch_model.bin", tensors, legacy=legacy)
    source = TorchSource(path)
    assert_reads(source, expected)
    assert source.skipped == ()
    assert detect_format(path) == "pytorch"
    assert isinstance(open_source(path), TorchSource)
    assert isinstance(open_source(tmp_path), TorchSource)


def test_torch_nested_and_non_tensor_values(tmp_path: Path, torch: Any) -> None:
    path = formats.write_torch(
        tmp_path / "lightning.ckpt.pt",
        {
            "state_dict": {"encoder": {"weight": torch.ones(2)}, "head.bias": torch.zeros(1)},
            "layers": [torch.full((1,), 3.0), torch.full((1,), 4.0)],
            "epoch": 3,
            "version": "2.1",
        },
    )
    source = TorchSource(path)
    assert list(source.specs()) == ["state_dict.encoder.weight", "state_dict.head.bias", "layers.0", "layers.1"]
    assert source.skipped == ("epoch", "version")
    assert source.read(["layers.1"])["layers.1"].tolist() == [4.0]


def test_torch_sharded_and_hugging_face_directory(tmp_path: Path, torch: Any) -> None:
    formats.write_torch(tmp_path / "pytorch_model-00001-of-00002.bin", {"a.weight": torch.ones(2)})
    formats.write_torch(tmp_path / "pytorch_model-00002-of-00002.bin", {"b.weight": torch.zeros(3)})
    weight_map = {"a.weight": "pytorch_model-00001-of-00002.bin", "b.weight": "pytorch_model-00002-of-00002.bin"}
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    torch.save({"args": argparse.Namespace(lr=0.1)}, tmp_path / "training_args.bin")  # Hugging Face's, not weights
    for given in (index, tmp_path):
        source = open_source(given)
        assert isinstance(source, TorchSource)
        assert source.index == str(index)
        assert list(source.specs()) == ["a.weight", "b.weight"]
        assert source.read(["b.weight"])["b.weight"].tolist() == [0.0, 0.0, 0.0]
    index.unlink()
    for shard in tmp_path.glob("pytorch_model-*.bin"):
        shard.unlink()
    formats.write_torch(tmp_path / "pytorch_model.bin", {"w": torch.ones(1)})
    assert list(open_source(tmp_path).specs()) == ["w"]  # pytorch_model.bin, not training_args.bin


class CountingTorchSource(TorchSource):
    """Records which tensors become NumPy arrays."""

    converted: list[str]

    def _to_numpy(self, name: str) -> np.ndarray:
        self.converted = [*getattr(self, "converted", []), name]
        return super()._to_numpy(name)


def test_torch_converts_only_the_tensors_asked_for(tmp_path: Path, torch: Any) -> None:
    tensors, _ = formats.torch_state()
    source = CountingTorchSource(formats.write_torch(tmp_path / "w.pt", tensors))
    source.specs()
    assert getattr(source, "converted", []) == []
    source.read(["fc.bias", "fc.bias", "mask"])
    assert source.converted == ["fc.bias", "mask"]


def _pickle_with_objects(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    import torch

    path = directory / "checkpoint.pt"
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=0.1)}, path)
    return path, SourceError, ["rejects it", "argparse.Namespace", "refuses to unpickle arbitrary objects"]


def _truncated_torch_file(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = formats.write_torch(directory / "w.pt", {"w": formats.torch_state()[0]["fc.weight"]})
    formats.truncate_to(path, path.stat().st_size // 2)
    return path, CorruptSourceError, ["PyTorch file", "is damaged or truncated"]


def _damaged_pickle(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = formats.write_torch(directory / "w.pt", {"w": formats.torch_state()[0]["fc.weight"]})
    start, size = formats.member_data_offset(path, "w/data.pkl")
    formats.flip_bytes(path, start + size // 2, 4)
    return path, CorruptSourceError, ["cannot load PyTorch file", "damaged", "download or save it again"]


def _single_tensor(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    import torch

    path = directory / "w.pt"
    torch.save(torch.zeros(2), path)
    return path, SourceError, ["holds a Tensor, not a state dict"]


def _no_tensors(directory: Path) -> tuple[Path, type[SourceError], list[str]]:
    path = formats.write_torch(directory / "w.pt", {"epoch": 3})
    return path, SourceError, ["holds no tensors (only 'epoch')"]


TORCH_CASES = [_pickle_with_objects, _truncated_torch_file, _damaged_pickle, _single_tensor, _no_tensors]


@pytest.mark.parametrize("case", TORCH_CASES, ids=_case_id)
def test_torch_bad_input(case: Case, tmp_path: Path, torch: Any) -> None:
    check_bad_input(case, tmp_path, [TorchSource, open_source])


def _run_without(modules: list[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where importing any of ``modules`` fails."""
    prelude = "import sys\n" + "".join(f"sys.modules[{module!r}] = None\n" for module in modules)
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def test_torch_file_without_torch(tmp_path: Path, torch: Any) -> None:
    path = formats.write_torch(tmp_path / "pytorch_model.bin", {"w": torch.ones(2)})
    before = formats.snapshot(tmp_path)
    result = _run_without(
        ["torch"],
        f"""
        from mapper.errors import SourceError
        from mapper.sources import detect_format, open_source
        print(detect_format({str(path)!r}))
        for given, format in (({str(path)!r}, None), ({str(tmp_path)!r}, None), ({str(path)!r}, "pytorch")):
            try:
                open_source(given, format=format)
            except SourceError as error:
                print(type(error).__name__, "|", error)
        """,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "pytorch"
    assert len(lines) == 4
    for line in lines[1:]:
        assert line.startswith("SourceError | reading PyTorch file"), line
        for part in [
            str(path),
            "needs the Python package 'torch'",
            "pip install torch",
            "safetensors.torch import save_file",
        ]:
            assert part in line, (part, line)
    assert formats.snapshot(tmp_path) == before


def test_core_formats_without_optional_packages(tmp_path: Path) -> None:
    """safetensors (float32) and .npz need only NumPy; bfloat16 needs ml_dtypes and .h5 needs h5py, each said so."""
    formats.write_safetensors(
        tmp_path / "x.safetensors", {"f": np.ones(2, np.float32), "b": np.ones(2, ml_dtypes.bfloat16)}
    )
    np.savez(tmp_path / "x.npz", w=np.arange(2))
    _keras3_file(tmp_path / "x.weights.h5")
    result = _run_without(
        ["torch", "h5py", "ml_dtypes", "safetensors", "tensorflow", "keras"],
        f"""
        import mapper, mapper.sources
        from mapper.errors import SourceError
        from mapper.sources import open_source
        print(open_source({str(tmp_path / "x.safetensors")!r}).read(["f"])["f"].tolist())
        print(open_source({str(tmp_path / "x.npz")!r}).read(["w"])["w"].tolist())
        for path, name in (({str(tmp_path / "x.safetensors")!r}, "b"), ({str(tmp_path / "x.weights.h5")!r}, None)):
            try:
                open_source(path).read([name])
            except SourceError as error:
                print(error)
        """,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["[1.0, 1.0]", "[0, 1]"]
    assert "reading bfloat16 tensors" in lines[2] and "pip install ml-dtypes" in lines[2]
    assert "needs the Python package 'h5py'" in lines[3] and "pip install h5py" in lines[3]


# === detection and open_source ========================================================================================


def _write_each_format(directory: Path) -> dict[str, Path]:
    """One file of each format, most under a misleading name: detection must go by contents."""
    import torch

    files = {
        "safetensors": formats.write_safetensors(directory / "weights.bin", {"w": np.ones(1, np.float32)}),
        "keras-h5": _keras3_file(directory / "weights.dat"),
        "npz": directory / "weights.pt",
        "pytorch": directory / "model.npz",
        "pytorch-legacy": directory / "old.pth",
    }
    with files["npz"].open("wb") as file:
        np.savez(file, w=np.ones(1))
    torch.save({"w": torch.ones(1)}, files["pytorch"])
    torch.save({"w": torch.ones(1)}, files["pytorch-legacy"], _use_new_zipfile_serialization=False)
    return files


def test_detection_goes_by_contents(tmp_path: Path, torch: Any) -> None:
    files = _write_each_format(tmp_path)
    classes = {"safetensors": SafetensorsSource, "keras-h5": KerasH5Source, "npz": NpzSource, "pytorch": TorchSource}
    for label, path in files.items():
        name = label.removesuffix("-legacy")
        assert detect_format(path) == name, label
        source = open_source(path)
        assert type(source) is classes[name], label
        assert list(source.specs()) == (
            ["layers/dense/vars/0", "layers/dense/vars/1", "layers/dense/vars/2"] if name == "keras-h5" else ["w"]
        )
    (tmp_path / "random.bin").write_bytes(bytes(range(64)))
    formats.write_zip(tmp_path / "docs.zip", {"readme.txt": b"hello"})
    for undetected in ("random.bin", "docs.zip"):
        assert detect_format(tmp_path / undetected) is None


def test_hugging_face_directory_prefers_safetensors(tmp_path: Path, torch: Any) -> None:
    formats.write_safetensors(tmp_path / "model.safetensors", {"w": np.ones(1, np.float32)})
    formats.write_torch(tmp_path / "pytorch_model.bin", {"w": torch.ones(1)})
    assert detect_format(tmp_path) == "safetensors"
    assert isinstance(open_source(tmp_path), SafetensorsSource)
    assert isinstance(open_source(tmp_path, format="pytorch"), TorchSource)


def test_registry() -> None:
    assert list(FORMATS) == ["tf-checkpoint", "safetensors", "keras-h5", "npz", "pytorch"]
    for name, known in FORMATS.items():
        assert known.name == name and known.summary


def test_unknown_format(tmp_path: Path) -> None:
    path = formats.write_safetensors(tmp_path / "x.safetensors", {"w": np.ones(1, np.float32)})
    before = formats.snapshot(tmp_path)
    with pytest.raises(SourceError) as caught:
        open_source(path, format="onnx")
    assert type(caught.value) is SourceError
    assert f"unknown source format 'onnx' for '{path}'" in str(caught.value)
    for name in FORMATS:
        assert f"{name!r} (" in str(caught.value)
    assert formats.snapshot(tmp_path) == before


def test_undetectable_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.dat"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(SourceError) as caught:
        open_source(path)
    assert type(caught.value) is SourceError
    assert f"cannot tell the format of file '{path}' from its contents" in str(caught.value)
    for name in FORMATS:
        assert f"{name!r} (" in str(caught.value)
    assert path.read_bytes() == b"\x00" * 64


@pytest.mark.parametrize(
    ("actual", "forced", "error_class", "parts"),
    [
        ("npz", "safetensors", SourceError, ["is not a safetensors file", "looks like a 'npz' source", "format='npz'"]),
        ("safetensors", "npz", SourceError, ["is not an .npz archive", "looks like a 'safetensors' source"]),
        ("pytorch", "keras-h5", SourceError, ["is not an HDF5 file", "looks like a 'pytorch' source"]),
        ("pytorch", "npz", SourceError, ["is a zip archive but not an .npz", "looks like a PyTorch file"]),
        ("keras-h5", "pytorch", SourceError, ["is not a PyTorch file", "b'\\x89HDF", "looks like a 'keras-h5' source"]),
        ("npz", "pytorch", SourceError, ["is a zip archive but not a PyTorch file", "'w.npy'", "looks like a 'npz'"]),
    ],
    ids=[
        "npz-as-safetensors",
        "safetensors-as-npz",
        "pytorch-as-h5",
        "pytorch-as-npz",
        "h5-as-pytorch",
        "npz-as-pytorch",
    ],
)
def test_forced_wrong_format(
    actual: str, forced: str, error_class: type[SourceError], parts: list[str], tmp_path: Path, torch: Any
) -> None:
    path = _write_each_format(tmp_path)[actual]
    before = formats.snapshot(tmp_path)
    with pytest.raises(SourceError) as caught:
        open_source(path, format=forced)
    assert type(caught.value) is error_class, str(caught.value)
    for part in [str(path), *parts]:
        assert part in str(caught.value), (part, str(caught.value))
    assert formats.snapshot(tmp_path) == before


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="no safetensors file or directory at"):
        open_source(tmp_path / "model.safetensors")
    with pytest.raises(SourceNotFoundError, match="no TensorFlow checkpoint at"):
        open_source(tmp_path / "ckpt-1")
    for opener in (SafetensorsSource, KerasH5Source, NpzSource, TorchSource):
        with pytest.raises(SourceNotFoundError, match=str(tmp_path / "nothing")):
            opener(tmp_path / "nothing")
