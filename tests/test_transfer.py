"""The conversion's copying paths (mapper/run/transfer.py): streamed, reordered, staged and read give the same file."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from checkpoints import data_files, flip_bytes
from safetensors.numpy import save_file

from mapper.api import convert
from mapper.errors import ApplyError, CorruptSourceError
from mapper.ops import NUMPY, Cast, Rearrange, Reshape, Slice, Transpose, apply_operations
from mapper.plan import Assignment, RuleRef
from mapper.rules import parse_rules
from mapper.run.transfer import BufferPool
from mapper.run.values import PARALLEL_COPY_BYTES, copy_into, reordering
from mapper.sources import open_source
from mapper.sources.memory import MemorySource

RULES = """
format = 1
[[rules]]
match = 'plain/(?P<n>.+)'
target = 'out/plain/{n}'
[[rules]]
match = 'wide/(?P<n>.+)'
target = 'out/wide/{n}'
ops = [{ transpose = [1, 0] }]
[[rules]]
match = 'heads/(?P<n>.+)'
target = 'out/heads/{n}'
ops = [{ rearrange = "(heads dim) hidden -> hidden heads dim", heads = 4 }]
[[rules]]
match = 'flat/(?P<n>.+)'
target = 'out/flat/{n}'
ops = [{ reshape = [-1] }]
[[rules]]
match = 'half/(?P<n>.+)'
target = 'out/half/{n}'
ops = [{ transpose = [1, 0] }, { cast = "float16" }]
[[rules]]
match = 'cut/(?P<n>.+)'
target = 'out/cut/{n}'
ops = [{ slice = "0:2, 0:3" }]
"""


def tensors() -> dict[str, np.ndarray]:
    """Tensors for every path: small ones, and ones of several 128 KiB chunks (bands, many chunks, ragged ends)."""
    rng = np.random.default_rng(7)
    return {
        "plain/small": rng.standard_normal(5).astype(np.float32),
        "plain/big": rng.standard_normal((300, 257)).astype(np.float32),
        "plain/bytes": rng.integers(0, 255, 70_001, dtype=np.uint8),
        "wide/big": rng.standard_normal((100, 1024)).astype(np.float32),  # rows of 4 KiB: bands of 8 rows
        "wide/tall": rng.standard_normal((1100, 48)).astype(np.float32),
        "wide/int": rng.integers(-9, 9, (37, 2000), dtype=np.int64),
        "heads/k": rng.standard_normal((64, 600)).astype(np.float32),
        "flat/w": rng.standard_normal((90, 700)).astype(np.float32),
        "half/w": rng.standard_normal((333, 200)).astype(np.float32),
        "cut/w": rng.standard_normal((40, 5000)).astype(np.float32),
    }


def expected(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What RULES make of ``tensors()``, computed with plain NumPy."""
    out: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        kind, rest = name.split("/", 1)
        value = {
            "plain": lambda a: a,
            "wide": lambda a: a.T,
            "heads": lambda a: a.reshape(4, -1, a.shape[1]).transpose(2, 0, 1),
            "flat": lambda a: a.reshape(-1),
            "half": lambda a: a.T.astype(np.float16),
            "cut": lambda a: a[0:2, 0:3],
        }[kind](array)
        out[f"out/{kind}/{rest}"] = np.ascontiguousarray(value)
    return out


@pytest.mark.parametrize("output", ["ckpt", "model.safetensors", "model.weights.h5"])
@pytest.mark.parametrize("source_kind", ["safetensors", "tf-checkpoint", "memory"])
def test_every_copying_path_writes_the_same_values(tmp_path: Path, output: str, source_kind: str) -> None:
    arrays = tensors()
    (tmp_path / "src").mkdir()
    if source_kind == "safetensors":
        save_file(arrays, str(tmp_path / "src" / "w.safetensors"))
        source = open_source(tmp_path / "src" / "w.safetensors")
    elif source_kind == "tf-checkpoint":
        from test_convert import write_checkpoint

        source = open_source(write_checkpoint(tmp_path / "src", arrays))
    else:
        source = MemorySource(arrays)

    convert(parse_rules(RULES), source, tmp_path / output, batch_bytes=300_000)

    values = read_back(tmp_path / output)
    wanted = expected(arrays)
    assert sorted(values) == sorted(wanted)
    for name, value in wanted.items():
        np.testing.assert_array_equal(np.asarray(values[name]), value, err_msg=name)
        assert np.asarray(values[name]).dtype == value.dtype


def read_back(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of an output (an HDF5 file of plain names is read with h5py: it is not Keras weights)."""
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path) as file:
            found: dict[str, np.ndarray] = {}
            file.visititems(
                lambda name, item: found.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None
            )
            return found
    written = open_source(path)
    return {name: np.asarray(value) for name, value in written.read(list(written.specs())).items()}


def test_a_checksum_mismatch_in_a_streamed_tensor_leaves_no_output(tmp_path: Path) -> None:
    from test_convert import write_checkpoint

    arrays = {"plain/a": np.arange(100_000, dtype=np.float32), "wide/b": np.ones((300, 300), np.float32)}
    (tmp_path / "src").mkdir()
    prefix = write_checkpoint(tmp_path / "src", arrays)
    (data,) = data_files(prefix)
    flip_bytes(data, 200_000)  # inside plain/a, past its first 128 KiB chunk

    with pytest.raises(ApplyError, match="checksum mismatch") as raised:
        convert(
            parse_rules(RULES.split("[[rules]]\nmatch = 'heads")[0]), open_source(prefix), tmp_path / "out.safetensors"
        )

    assert isinstance(raised.value.__cause__, CorruptSourceError)
    assert "'plain/a'" in str(raised.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("tensor", ["plain/big", "wide/big"])
def test_a_safetensors_file_cut_short_after_opening_is_named(tmp_path: Path, tensor: str) -> None:
    arrays = tensors()
    path = tmp_path / "w.safetensors"
    save_file(arrays, str(path))
    source = open_source(path)
    data = path.read_bytes()
    end = data.find(arrays[tensor].tobytes()) + arrays[tensor].nbytes // 2
    path.write_bytes(data[:end])

    with pytest.raises(ApplyError, match=r"changed since it was opened") as raised:
        convert(parse_rules(RULES), source, tmp_path / "ckpt")

    assert isinstance(raised.value.__cause__, CorruptSourceError)
    assert not list(tmp_path.glob("ckpt*"))


def assignment(operations: tuple[Any, ...], shape: tuple[int, ...], target: tuple[int, ...], dtype: str) -> Assignment:
    return Assignment("t", "t", "w", RuleRef("r.toml", 1), operations, shape, "float32", target, dtype)


@pytest.mark.parametrize(
    ("operations", "shape", "target", "dtype", "moves"),
    [
        pytest.param((Transpose((1, 0)),), (3, 4), (4, 3), "float32", True, id="transpose"),
        pytest.param((Reshape((12,)),), (3, 4), (12,), "float32", True, id="reshape"),
        pytest.param((Transpose((1, 0)), Cast("float16")), (3, 4), (4, 3), "float16", True, id="transpose-cast"),
        pytest.param(
            (Rearrange("(heads dim) hidden -> hidden heads dim", (("heads", 2),)),),
            (4, 3),
            (3, 2, 2),
            "float32",
            True,
            id="rearrange",
        ),
        pytest.param((Slice.parse("0:2"),), (3, 4), (2, 4), "float32", False, id="slice"),
        pytest.param((Transpose((1, 0)), Reshape((12,))), (3, 4), (12,), "float32", False, id="copying-reshape"),
    ],
)
def test_reordering_says_which_operations_only_move_elements(
    operations: tuple[Any, ...], shape: tuple[int, ...], target: tuple[int, ...], dtype: str, moves: bool
) -> None:
    found = reordering(assignment(operations, shape, target, dtype))

    assert (found is not None) == moves
    if found is not None:  # the member's bytes seen through the layout, in C order, are the value
        sizes, strides, kind = found
        source = np.arange(int(np.prod(shape)), dtype=np.float32)
        value = np.lib.stride_tricks.as_strided(source, sizes, strides).astype(kind).reshape(target)
        reference = np.asarray(apply_operations(operations, source.reshape(shape), NUMPY))
        np.testing.assert_array_equal(value, reference)
        assert value.dtype == reference.dtype


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda a: a.reshape(512, 768).T, id="transpose"),
        pytest.param(lambda a: a.reshape(768, 512).T, id="transpose-other-way"),
        pytest.param(lambda a: a.reshape(8, 64, 768).transpose(2, 0, 1), id="heads"),
        pytest.param(lambda a: a.reshape(768, 8, 64).transpose(1, 2, 0), id="heads-out"),
        pytest.param(lambda a: a.reshape(64, 96, 64)[:, ::-1].transpose(1, 0, 2), id="flipped"),
    ],
)
def test_copy_into_in_slabs_is_an_exact_copy(make: Any) -> None:
    source = np.arange(512 * 768, dtype=np.float32)
    view = make(source)
    destination = np.empty(view.shape, np.float64)

    copy_into(destination, view)

    np.testing.assert_array_equal(destination, view)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda a: a.reshape(1536, 1024).T, id="transpose"),
        pytest.param(lambda a: a.reshape(3, 1024, 512).transpose(2, 0, 1), id="heads"),
        pytest.param(lambda a: a.reshape(1024, 1536)[::-1].T, id="flipped"),
    ],
)
def test_a_large_copy_into_is_cut_in_halves_on_two_threads_and_exact(make: Any) -> None:
    source = np.arange(1536 * 1024, dtype=np.float32)  # 6 MiB: above PARALLEL_COPY_BYTES
    view = make(source)
    destination = np.full(view.shape, -1.0, np.float32)
    assert view.nbytes >= PARALLEL_COPY_BYTES

    copy_into(destination, view)

    np.testing.assert_array_equal(destination, view)
    assert any(thread.name.startswith("weight-mapper copy") for thread in threading.enumerate())


def test_buffer_pool_reuses_the_smallest_free_buffer() -> None:
    pool = BufferPool()
    big, small = pool.take(100_000), pool.take(10_000)
    pool.give(big)
    pool.give(small)

    again = pool.take(9_000)

    assert np.shares_memory(again, small) and not np.shares_memory(again, big)
    assert again.flags.writeable and again.nbytes == 9_000
