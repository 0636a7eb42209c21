"""Tests for mapper.run.convert, mapper.outputs.writers and `mapper convert`: model-free conversion between formats."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from checkpoints import data_files, flip_bytes, snapshot

from mapper import api, cli
from mapper.api import convert
from mapper.errors import ApplyError, CorruptSourceError, OutputError, PlanError, TargetError
from mapper.outputs.files import check_output, output_format
from mapper.outputs.writers import (
    CheckpointWriter,
    KerasH5Writer,
    SafetensorsWriter,
    SaveV2CheckpointWriter,
    open_writer,
)
from mapper.plan import NamedSource, ProblemKind
from mapper.plan.conversion import OPEN_TARGET, open_target, plan_conversion
from mapper.rules import parse_rules
from mapper.run.convert import ConvertResult, write_plan
from mapper.sources import open_source
from mapper.sources.memory import MemorySource
from mapper.specs import SourceSet, TargetMap, TensorSpec, VariableMap

pytestmark = pytest.mark.tf

IDENTITY = "format = 1\n[[rules]]\nmatch = '(?P<name>.+)'\ntarget = '{name}'\n"
SUFFIXES = {"tf-checkpoint": "ckpt", "safetensors": "model.safetensors", "keras-h5": "model.weights.h5"}


# --- helpers --------------------------------------------------------------------------------------


def write_checkpoint(directory: Path, arrays: Mapping[str, np.ndarray], name: str = "ckpt") -> str:
    """A name-based TF checkpoint of exactly ``arrays``, written by SaveV2."""
    prefix = str(directory / name)
    names = list(arrays)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(arrays[name]) for name in names],
    )
    return prefix


def read_all(path: Path | str) -> dict[str, np.ndarray]:
    """Every tensor of a file, read back by mapper's own source for its format."""
    source = open_source(path)
    read = source.read(list(source.specs()))
    return {name: np.asarray(value.numpy() if hasattr(value, "numpy") else value) for name, value in read.items()}


def assert_bit_exact(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, array in expected.items():
        got = actual[name]
        assert got.dtype == array.dtype, name
        assert got.shape == array.shape, name
        assert got.tobytes() == array.tobytes(), name


def every_dtype() -> dict[str, np.ndarray]:
    """A tensor of every dtype safetensors and TF checkpoints share, with NaN, -0.0 and infinities in the floats."""
    floats = np.array([[0.5, -1.25, np.nan, -0.0], [np.inf, -np.inf, 3.0e4, 1.0e-3]])
    return {
        "layers/f32/vars/0": floats.astype(np.float32),
        "layers/f64/vars/0": floats,
        "layers/f16/vars/0": floats.astype(np.float16),
        "layers/bf16/vars/0": floats.astype(ml_dtypes.bfloat16),
        "layers/f8/vars/0": np.array([0.5, -1.25, 3.0, 448.0], dtype=ml_dtypes.float8_e4m3fn),
        "layers/f8/vars/1": np.array([0.5, -1.25, 3.0, 57344.0], dtype=ml_dtypes.float8_e5m2),
        "layers/i8/vars/0": np.array([-128, 127, 0], np.int8),
        "layers/i16/vars/0": np.array([-32768, 32767], np.int16),
        "layers/i32/vars/0": np.arange(6, dtype=np.int32).reshape(2, 3) - 3,
        "layers/i64/vars/0": np.array([-(2**62), 2**62], np.int64),
        "layers/u8/vars/0": np.array([0, 255], np.uint8),
        "layers/u16/vars/0": np.array([0, 65535], np.uint16),
        "layers/u32/vars/0": np.array([0, 2**32 - 1], np.uint32),
        "layers/u64/vars/0": np.array([0, 2**64 - 1], np.uint64),
        "layers/bool/vars/0": np.array([True, False, True]),
        "layers/scalar/vars/0": np.array(2.5, np.float32),
        "layers/empty/vars/0": np.zeros((0, 3), np.float32),
    }


def listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# --- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("middle", ["safetensors", "keras-h5", "tf-checkpoint"])
def test_round_trip_through_a_format_is_bit_exact(tmp_path: Path, middle: str) -> None:
    arrays = every_dtype()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    prefix = write_checkpoint(tmp_path / "a", arrays)
    rules = parse_rules(IDENTITY)
    intermediate = tmp_path / "b" / SUFFIXES[middle]
    final = tmp_path / "c" / "ckpt"

    first = convert(rules, open_source(prefix), intermediate)
    second = convert(rules, open_source(intermediate), final)

    assert first.format == middle and second.format == "tf-checkpoint"
    assert first.written == second.written == len(arrays)
    total = sum(array.nbytes for array in arrays.values())
    assert first.bytes_read == first.bytes_written == second.bytes_written == total
    assert_bit_exact(read_all(intermediate), arrays)
    assert_bit_exact(read_all(final), arrays)
    # TensorFlow's own reader sees exactly the names written, and nothing else.
    reader = tf.train.load_checkpoint(str(final))
    assert sorted(reader.get_variable_to_shape_map()) == sorted(arrays)
    assert listing(tmp_path / "c") == ["ckpt.data-00000-of-00001", "ckpt.index"]


def test_safetensors_output_is_read_by_the_safetensors_library(tmp_path: Path) -> None:
    from safetensors import safe_open

    arrays = {**every_dtype(), "odd/name with spaces": np.arange(3, dtype=np.int16)}
    output = tmp_path / "out.safetensors"

    convert(parse_rules(IDENTITY), MemorySource(arrays), output)

    # Opening checks the whole header (offsets contiguous and inside the file); NumPy reads its own dtypes.
    with safe_open(str(output), framework="numpy") as file:
        assert sorted(file.keys()) == sorted(arrays)
        for name, array in arrays.items():
            if array.dtype.name in {"bfloat16", "float8_e4m3fn", "float8_e5m2"}:
                continue
            assert file.get_tensor(name).tobytes() == array.tobytes(), name
    header_length = int.from_bytes(output.read_bytes()[:8], "little")
    assert (8 + header_length) % 8 == 0


def test_tf_checkpoint_output_of_many_batches_is_one_data_file(tmp_path: Path) -> None:
    arrays = {f"layer_{i}/w": np.full((8, 8), i, np.float32) for i in range(5)}
    calls: list[tuple[int, int]] = []
    output = tmp_path / "ckpt"

    result = convert(
        parse_rules(IDENTITY),
        MemorySource(arrays),
        output,
        batch_bytes=2 * 256,
        progress=lambda done, total: calls.append((done, total)),
    )

    assert result.batches == 3
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert listing(tmp_path) == ["ckpt.data-00000-of-00001", "ckpt.index"]
    assert_bit_exact(read_all(output), arrays)
    assert_bit_exact({name: tf.train.load_checkpoint(str(output)).get_tensor(name) for name in arrays}, arrays)


def test_tf_checkpoint_output_with_strings_is_saved_by_tensorflow(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    arrays = {"vocab": np.array([b"a", b"bc", b""], object), "w": np.arange(4, dtype=np.float32)}
    prefix = write_checkpoint(tmp_path / "src", arrays)

    convert(parse_rules(IDENTITY), open_source(prefix), tmp_path / "ckpt", batch_bytes=8)

    reader = tf.train.load_checkpoint(str(tmp_path / "ckpt"))
    assert reader.get_tensor("vocab").tolist() == [b"a", b"bc", b""]
    assert reader.get_tensor("w").tobytes() == arrays["w"].tobytes()


def test_keras_weights_h5_output_loads_into_the_model(tmp_path: Path) -> None:
    original = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    for index, variable in enumerate(original.weights):
        variable.assign(np.arange(math.prod(variable.shape), dtype="float32").reshape(variable.shape) + 10 * index)
    original.save_weights(str(tmp_path / "original.weights.h5"))
    rules = parse_rules(IDENTITY)
    # Keras .weights.h5 -> name-based TF checkpoint -> .weights.h5 again, by the names alone.
    convert(rules, open_source(tmp_path / "original.weights.h5"), tmp_path / "ckpt")
    convert(rules, open_source(tmp_path / "ckpt"), tmp_path / "converted.weights.h5")

    restored = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    restored.load_weights(str(tmp_path / "converted.weights.h5"))

    for got, expected in zip(restored.weights, original.weights, strict=True):
        np.testing.assert_array_equal(got.numpy(), expected.numpy())


def test_h5_output_marks_bfloat16_as_keras_does(tmp_path: Path) -> None:
    output = tmp_path / "m.weights.h5"
    value = np.array([1.5, -2.0], ml_dtypes.bfloat16)

    convert(parse_rules(IDENTITY), MemorySource({"layers/d/vars/0": value}), output)

    with h5py.File(output) as file:
        assert file["layers/d/vars/0"].attrs["dtype"] == "bfloat16"
        assert np.array(file["layers/d/vars/0"], dtype=ml_dtypes.bfloat16).tobytes() == value.tobytes()


# --- the rules are applied ----------------------------------------------------------------------------

PORT_RULES = """
format = 1
[params]
heads = 2
[[rules]]
name = "rename and transpose"
match = 'encoder\\.layer\\.(?P<i>\\d+)\\.dense\\.weight'
target = "layers/dense_{i}/kernel"
ops = [{ transpose = [1, 0] }]
[[rules]]
name = "fused qkv"
match = 'h\\.(?P<i>\\d+)\\.c_attn\\.weight'
split = { axis = -1, parts = 3 }
targets = ["block_{i}/query", "block_{i}/key", "block_{i}/value"]
ops = [{ reshape = [4, "heads", 2] }]
[[rules]]
name = "per-layer norms"
match = 'ln_(?P<i>\\d+)\\.gamma'
stack = { axis = 0, by = "i", count = 3 }
target = "norms/gamma"
[[rules]]
name = "position"
match = 'pos_embed'
target = "position/embeddings"
ops = [{ slice = "0" }, { cast = "float16" }]
[[rules]]
name = "heads"
match = 'q\\.weight'
target = "attention/query/kernel"
ops = [{ rearrange = "(h d) c -> c h d", h = "heads" }]
[[rules]]
match = 'optimizer/.*'
skip = "not a weight"
[[keep]]
match = "classifier/.*"
reason = "a model's new head: irrelevant without a model"
"""


def port_source() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "encoder.layer.0.dense.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "encoder.layer.1.dense.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "h.0.c_attn.weight": rng.standard_normal((4, 12)).astype(np.float32),
        **{f"ln_{i}.gamma": rng.standard_normal(6).astype(ml_dtypes.bfloat16) for i in (1, 0, 2)},
        "pos_embed": rng.standard_normal((1, 17, 4)).astype(np.float32),
        "q.weight": rng.standard_normal((6, 5)).astype(np.float32),
        "optimizer/m": np.zeros(3, np.float32),
    }


def port_expected(source: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    qkv = source["h.0.c_attn.weight"]
    return {
        "layers/dense_0/kernel": source["encoder.layer.0.dense.weight"].T,
        "layers/dense_1/kernel": source["encoder.layer.1.dense.weight"].T,
        "block_0/query": qkv[:, 0:4].reshape(4, 2, 2),
        "block_0/key": qkv[:, 4:8].reshape(4, 2, 2),
        "block_0/value": qkv[:, 8:12].reshape(4, 2, 2),
        "norms/gamma": np.stack([source[f"ln_{i}.gamma"] for i in range(3)]),
        "position/embeddings": source["pos_embed"][0].astype(np.float16),
        "attention/query/kernel": source["q.weight"].reshape(2, 3, 5).transpose(2, 0, 1),
    }


def test_open_target_has_the_shapes_the_operations_give() -> None:
    source = MemorySource(port_source())

    target, problems = open_target(parse_rules(PORT_RULES), source.specs())

    assert problems == ()
    expected = port_expected(port_source())
    assert {name: (spec.shape, spec.dtype) for name, spec in target.variables.items()} == {
        name: (array.shape, str(array.dtype)) for name, array in expected.items()
    }
    assert target.variables.description == OPEN_TARGET


@pytest.mark.parametrize("source_kind", ["memory", "tf-checkpoint"])
@pytest.mark.parametrize("output_kind", ["safetensors", "tf-checkpoint", "keras-h5"])
def test_renames_transposes_and_porting_operations_are_applied(
    tmp_path: Path, source_kind: str, output_kind: str
) -> None:
    arrays = port_source()
    (tmp_path / "src").mkdir()
    source: Any = (
        MemorySource(arrays) if source_kind == "memory" else open_source(write_checkpoint(tmp_path / "src", arrays))
    )
    output = tmp_path / SUFFIXES[output_kind]

    result = convert(parse_rules(PORT_RULES), source, output)

    expected = port_expected(arrays)
    assert_bit_exact(read_all(output) if output_kind != "keras-h5" else _read_h5(output), expected)
    assert result.plan.ok and result.written == len(expected)
    assert [skip.name for skip in result.plan.skips] == ["optimizer/m"]


def _read_h5(path: Path) -> dict[str, np.ndarray]:
    """Datasets by path, with Keras' bfloat16 marker honoured (names outside layers/ are not Keras weights)."""
    found: dict[str, np.ndarray] = {}

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            dtype = item.attrs.get("dtype")
            found[name] = np.array(item, dtype=getattr(ml_dtypes, dtype)) if dtype else np.array(item)

    with h5py.File(path) as file:
        file.visititems(visit)
    return found


def test_checkpoint_namespace_names_are_written_as_produced(tmp_path: Path) -> None:
    rules = parse_rules(
        "format = 1\n[target]\nnamespace = 'checkpoint'\n[[rules]]\nmatch = 'w'\n"
        "target = 'model/layer/kernel/.ATTRIBUTES/VARIABLE_VALUE'\n"
    )

    convert(rules, MemorySource({"w": np.ones(2, np.float32)}), tmp_path / "ckpt")

    assert list(read_all(tmp_path / "ckpt")) == ["model/layer/kernel/.ATTRIBUTES/VARIABLE_VALUE"]


# --- plan problems: nothing is written ---------------------------------------------------------------

PLAN_ERROR_CASES = [
    pytest.param(
        "format = 1\n[[rules]]\nmatch = 'a'\ntarget = 'x'\n",
        {"a": (2, 3), "b": (3,)},
        ProblemKind.UNUSED_SOURCE,
        "'b'",
        id="unused-source",
    ),
    pytest.param(
        "format = 1\n[[rules]]\nmatch = '(?P<n>.)'\ntarget = 'same'\n",
        {"a": (2,), "b": (2,)},
        ProblemKind.DOUBLE_FILL,
        "filled twice",
        id="double-fill",
    ),
    pytest.param(
        "format = 1\n[[rules]]\nmatch = 'a'\ntarget = 'x'\nops = [{ reshape = [5] }]\n",
        {"a": (2, 3)},
        ProblemKind.BAD_OPERATION,
        "cannot reshape [2, 3]",
        id="bad-operation",
    ),
    pytest.param(
        "format = 1\n[[rules]]\nmatch = 'a'\ntarget = 'x'\nops = [{ reshape = 'target' }]\n",
        {"a": (2, 3)},
        ProblemKind.BAD_OPERATION,
        'rule 1 uses reshape = "target"',
        id="reshape-to-target-without-a-model",
    ),
    pytest.param(
        "format = 1\n[[rules]]\nmatch = 'qkv'\nsplit = { axis = 0, parts = 3 }\ntargets = ['q', 'k', 'v']\n"
        "ops = [{ reshape = 'target' }]\n",
        {"qkv": (6, 2)},
        ProblemKind.BAD_OPERATION,
        "this conversion has none (for 'qkv'); write the shape",
        id="split-reshape-to-target-without-a-model",
    ),
    pytest.param(
        "format = 1\n[[rules]]\nmatch = 'l(?P<i>\\d)'\nstack = { axis = 0, by = 'i', count = 3 }\ntarget = 's'\n",
        {"l0": (2,), "l2": (2,)},
        ProblemKind.BAD_GROUP,
        "missing i = '1'",
        id="incomplete-group",
    ),
    pytest.param(
        "format = 1\n[[rules]]\nmatch = 'a'\ntarget = 'x'\n[[rules]]\nmatch = 'zzz'\nskip = 'old'\n",
        {"a": (2,)},
        ProblemKind.DEAD_RULE,
        "rule 2 matched no source name",
        id="dead-rule",
    ),
]


@pytest.mark.parametrize(("rules_text", "shapes", "kind", "fragment"), PLAN_ERROR_CASES)
def test_plan_errors_refuse_to_write(
    tmp_path: Path, rules_text: str, shapes: dict[str, tuple[int, ...]], kind: ProblemKind, fragment: str
) -> None:
    source = MemorySource({name: np.zeros(shape, np.float32) for name, shape in shapes.items()})

    with pytest.raises(PlanError) as raised:
        convert(parse_rules(rules_text), source, tmp_path / "out.safetensors")

    assert kind in {problem.kind for problem in raised.value.problems}  # type: ignore[attr-defined]
    assert fragment in str(raised.value)
    assert source.reads == []
    assert listing(tmp_path) == []


def test_open_plan_reports_no_unfilled_targets_and_ignores_keeps() -> None:
    plan = plan_conversion(parse_rules(PORT_RULES), MemorySource(port_source()))

    assert plan.ok, [problem.message for problem in plan.problems]
    assert plan.unfilled_targets == ()
    assert plan.target == OPEN_TARGET


def test_plan_that_writes_nothing_is_refused(tmp_path: Path) -> None:
    rules = parse_rules("format = 1\n[[rules]]\nmatch = '.*'\nskip = 'nothing wanted'\n")

    with pytest.raises(PlanError, match="writes no tensor"):
        convert(rules, MemorySource({"a": np.zeros(2)}), tmp_path / "ckpt")

    assert listing(tmp_path) == []


# --- with a model: coverage ---------------------------------------------------------------------------

MODEL_RULES = """
format = 1
[[rules]]
match = 'torch/(?P<layer>d1|head)\\.weight'
target = "{layer}/kernel"
ops = [{ transpose = [1, 0] }]
[[rules]]
match = 'torch/(?P<layer>d1|head)\\.bias'
target = "{layer}/bias"
"""


def small_model() -> keras.Model:
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="d1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(hidden))


def torch_like() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "torch/d1.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "torch/d1.bias": rng.standard_normal(3).astype(np.float32),
        "torch/head.weight": rng.standard_normal((2, 3)).astype(np.float32),
        "torch/head.bias": rng.standard_normal(2).astype(np.float32),
    }


def test_with_a_model_the_output_covers_it_and_loads(tmp_path: Path) -> None:
    arrays = torch_like()
    output = tmp_path / "model.safetensors"

    result = api.convert(parse_rules(MODEL_RULES), MemorySource(arrays), output, target=small_model())

    assert result.plan.target == f"{output} (safetensors)"
    written = read_all(output)
    assert sorted(written) == ["d1/bias", "d1/kernel", "head/bias", "head/kernel"]
    np.testing.assert_array_equal(written["head/kernel"], arrays["torch/head.weight"].T)


def test_with_a_model_unfilled_targets_are_reported_and_nothing_written(tmp_path: Path) -> None:
    arrays = {name: value for name, value in torch_like().items() if "head" not in name}
    rules = parse_rules(MODEL_RULES)

    with pytest.raises(PlanError) as raised:
        api.convert(rules, MemorySource(arrays), tmp_path / "model.safetensors", target=small_model())

    message = str(raised.value)
    assert "2 target variables would keep their initial values" in message
    assert "'head/kernel'" in message and "'head/bias'" in message
    assert ProblemKind.DEAD_RULE not in {p.kind for p in raised.value.problems}  # type: ignore[attr-defined]
    assert listing(tmp_path) == []


def test_with_a_model_shapes_are_checked(tmp_path: Path) -> None:
    arrays = torch_like()
    arrays["torch/head.weight"] = np.zeros((5, 3), np.float32)  # a new class count: the model's head is [3, 2]

    with pytest.raises(PlanError, match=r"becomes \[3, 5\] but target 'head/kernel' is \[3, 2\]"):
        api.convert(parse_rules(MODEL_RULES), MemorySource(arrays), tmp_path / "m.safetensors", target=small_model())


# --- the output: refused, replaced, never half-written; the source never touched ------------------------


@pytest.mark.parametrize("output_kind", list(SUFFIXES))
def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path: Path, output_kind: str) -> None:
    output = tmp_path / SUFFIXES[output_kind]
    rules = parse_rules(IDENTITY)
    convert(rules, MemorySource({"layers/a/vars/0": np.zeros(3, np.float32)}), output)
    before = snapshot(tmp_path)
    source = MemorySource({"layers/a/vars/0": np.ones(3, np.float32)})

    with pytest.raises(TargetError, match=r"already exists.*pass --overwrite"):
        convert(rules, source, output)

    assert snapshot(tmp_path) == before
    assert source.reads == []

    convert(rules, source, output, overwrite=True)

    assert listing(tmp_path) == sorted(before)
    np.testing.assert_array_equal(read_all(output)["layers/a/vars/0"], np.ones(3, np.float32))


def test_overwriting_a_checkpoint_with_fewer_shards_leaves_no_stale_shard(tmp_path: Path) -> None:
    arrays = {f"w{i}": np.full(64, i, np.float32) for i in range(3)}
    output = tmp_path / "ckpt"
    with SaveV2CheckpointWriter(output, [TensorSpec(name, (64,), "float32") for name in arrays]) as writer:
        for name, array in arrays.items():  # SaveV2 writes a data shard per batch
            writer.write(name, array)
            writer.end_batch()
    assert len(data_files(str(output))) == 3

    convert(parse_rules(IDENTITY), MemorySource(arrays), output, overwrite=True)

    assert listing(tmp_path) == ["ckpt.data-00000-of-00001", "ckpt.index"]
    assert_bit_exact(read_all(output), arrays)


@pytest.mark.parametrize("output_kind", list(SUFFIXES))
def test_missing_output_directory_is_named(tmp_path: Path, output_kind: str) -> None:
    output = tmp_path / "missing" / SUFFIXES[output_kind]
    source = MemorySource({"a": np.zeros(2, np.float32)})

    with pytest.raises(TargetError) as raised:
        convert(parse_rules(IDENTITY), source, output)

    assert f"directory {tmp_path / 'missing'} does not exist" in str(raised.value)
    assert source.reads == []
    assert listing(tmp_path) == []


def test_output_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="is a directory"):
        convert(parse_rules(IDENTITY), MemorySource({"a": np.zeros(2)}), tmp_path, overwrite=True)


@pytest.mark.parametrize("overwrite", [False, True])
def test_the_source_is_never_the_output(tmp_path: Path, overwrite: bool) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": np.arange(4, dtype=np.float32)}, str(path))
    before = snapshot(tmp_path)

    with pytest.raises(TargetError, match="already exists" if not overwrite else "never touches its source"):
        convert(parse_rules(IDENTITY), open_source(path), path, overwrite=overwrite)

    assert snapshot(tmp_path) == before


def test_the_checkpoint_source_is_never_the_output(tmp_path: Path) -> None:
    prefix = write_checkpoint(tmp_path, {"w": np.ones(2, np.float32)})
    before = snapshot(tmp_path)

    with pytest.raises(TargetError, match="never touches its source"):
        convert(parse_rules(IDENTITY), open_source(prefix), prefix, overwrite=True)

    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("output_kind", list(SUFFIXES))
def test_source_bytes_are_unchanged(tmp_path: Path, output_kind: str) -> None:
    (tmp_path / "src").mkdir()
    prefix = write_checkpoint(tmp_path / "src", port_source())
    before = snapshot(tmp_path / "src")

    convert(parse_rules(PORT_RULES), open_source(prefix), tmp_path / SUFFIXES[output_kind])

    assert snapshot(tmp_path / "src") == before


def corrupted(directory: Path, count: int = 6, bad: str = "layer_3/w") -> tuple[str, dict[str, np.ndarray]]:
    """A TF checkpoint of ``count`` [8, 8] float32 tensors with bytes flipped inside ``bad``'s data."""
    arrays = {f"layer_{i}/w": np.full((8, 8), i + 0.5, np.float32) + np.arange(64).reshape(8, 8) for i in range(count)}
    prefix = write_checkpoint(directory, {name: value.astype(np.float32) for name, value in arrays.items()})
    (data,) = data_files(prefix)
    offset = data.read_bytes().find(arrays[bad].astype(np.float32).tobytes())
    assert offset >= 0
    flip_bytes(data, offset + 100)
    return prefix, arrays


@pytest.mark.parametrize("output_kind", list(SUFFIXES))
@pytest.mark.parametrize("existing", [False, True], ids=["new-output", "existing-output"])
def test_failure_part_way_leaves_no_output_and_no_temporary_files(
    tmp_path: Path, output_kind: str, existing: bool
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "out").mkdir()
    prefix, _ = corrupted(tmp_path / "src")
    output = tmp_path / "out" / SUFFIXES[output_kind]
    if existing:
        convert(parse_rules(IDENTITY), MemorySource({"layers/old/vars/0": np.ones(2, np.float32)}), output)
    before = snapshot(tmp_path)

    with pytest.raises(ApplyError) as raised:
        convert(parse_rules(IDENTITY), open_source(prefix), output, batch_bytes=2 * 256, overwrite=True)

    message = str(raised.value)
    assert "reading batch 2 of 3" in message and "'layer_3/w'" in message
    assert "keeps its previous contents" in message if existing else "was not created" in message
    assert "temporary files were removed" in message
    assert isinstance(raised.value.__cause__, CorruptSourceError)
    assert snapshot(tmp_path) == before  # no partial output, no temporary file, the source untouched


@pytest.mark.parametrize("output_kind", list(SUFFIXES))
def test_a_write_fault_is_an_output_error_and_leaves_the_old_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output_kind: str
) -> None:
    from mapper.outputs.base import TensorWriter

    output = tmp_path / SUFFIXES[output_kind]
    arrays = {f"layers/l{index}/vars/0": np.full(64, index, np.float32) for index in range(3)}
    convert(parse_rules(IDENTITY), MemorySource(arrays), output)
    before = snapshot(tmp_path)
    end_batch = TensorWriter.end_batch
    batches: list[int] = []

    def full_after_one_batch(self: TensorWriter) -> None:
        batches.append(1)
        if len(batches) > 1:
            raise OutputError(f"cannot write {self.path}: no space left on device", path=self.path, errno=28)
        end_batch(self)

    monkeypatch.setattr(TensorWriter, "end_batch", full_after_one_batch)
    with pytest.raises(OutputError) as raised:
        convert(parse_rules(IDENTITY), MemorySource(arrays), output, overwrite=True, batch_bytes=256)

    message = str(raised.value)
    assert f"failed while writing batch 2 of 3 to {output}: cannot write {output}: no space left on device" in message
    assert "keeps its previous contents, and the temporary files were removed" in message
    assert raised.value.errno == 28 and raised.value.path == str(output)
    assert snapshot(tmp_path) == before


def test_interrupt_cleans_up_and_stops(tmp_path: Path) -> None:
    arrays = {f"w{i}": np.zeros(64, np.float32) for i in range(3)}

    def progress(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(parse_rules(IDENTITY), MemorySource(arrays), tmp_path / "ckpt", batch_bytes=256, progress=progress)

    assert listing(tmp_path) == []


def test_failing_progress_callback_is_reported_and_cleaned_up(tmp_path: Path) -> None:
    def progress(done: int, total: int) -> None:
        raise ValueError("progress bar closed")

    with pytest.raises(ApplyError, match=r"reporting progress after batch 1 of 1.*progress bar closed"):
        convert(parse_rules(IDENTITY), MemorySource({"w": np.zeros(2)}), tmp_path / "w.safetensors", progress=progress)

    assert listing(tmp_path) == []


# --- formats refuse what they cannot hold, before any file exists ---------------------------------------


@pytest.mark.parametrize(
    ("output_name", "arrays", "fragment"),
    [
        pytest.param(
            "x.safetensors",
            {"c": np.array([1 + 2j], np.complex64)},
            "safetensors cannot hold complex64 tensors, and 1 tensor to write",
            id="safetensors-complex",
        ),
        pytest.param(
            "x.weights.h5",
            {"layers/d": np.zeros(2, np.float32), "layers/d/vars/0": np.zeros(2, np.float32)},
            "cannot write both 'layers/d' and 'layers/d/vars/0'",
            id="h5-dataset-and-group",
        ),
        pytest.param("x.h5", {"a//b": np.zeros(2, np.float32)}, "non-empty parts", id="h5-empty-part"),
        pytest.param(
            "x.safetensors", {"__metadata__": np.zeros(2, np.float32)}, "reserves that name", id="safetensors-metadata"
        ),
    ],
)
def test_format_limits_are_refused_before_writing(
    tmp_path: Path, output_name: str, arrays: dict[str, np.ndarray], fragment: str
) -> None:
    source = MemorySource(arrays)

    with pytest.raises(TargetError) as raised:
        convert(parse_rules(IDENTITY), source, tmp_path / output_name)

    assert fragment in str(raised.value)
    assert source.reads == []
    assert listing(tmp_path) == []


def test_complex_tensors_convert_to_checkpoints_and_h5(tmp_path: Path) -> None:
    arrays = {"layers/c/vars/0": np.array([1 + 2j, -3j], np.complex64)}
    for name in ("ckpt", "c.weights.h5"):
        convert(parse_rules(IDENTITY), MemorySource(arrays), tmp_path / name)
        assert_bit_exact(read_all(tmp_path / name), arrays)


# --- several named sources ----------------------------------------------------------------------------

MULTI_RULES = """
format = 1
[[rules]]
source = "backbone"
match = 'encoder/(?P<rest>.+)'
target = "backbone/{rest}"
[[rules]]
source = "head"
match = 'classifier\\.weight'
target = "head/kernel"
ops = [{ transpose = [1, 0] }]
"""


def test_two_real_sources_convert_into_one_file(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    backbone = {"encoder/w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    head = {"classifier.weight": np.arange(8, dtype=np.float32).reshape(2, 4)}
    prefix = write_checkpoint(tmp_path, backbone)
    save_file(head, str(tmp_path / "head.safetensors"))

    result = api.convert(
        parse_rules(MULTI_RULES),
        {"backbone": prefix, "head": tmp_path / "head.safetensors"},
        tmp_path / "joined.weights.h5",
    )

    assert {a.source_id for a in result.plan.assignments} == {"backbone", "head"}
    written = _read_h5(tmp_path / "joined.weights.h5")
    np.testing.assert_array_equal(written["backbone/w"], backbone["encoder/w"])
    np.testing.assert_array_equal(written["head/kernel"], head["classifier.weight"].T)


def test_plan_conversion_accepts_named_specs() -> None:
    specs = SourceSet({"backbone": VariableMap([TensorSpec("encoder/w", (2,), "float32")], description="b.ckpt")})
    rules = parse_rules(MULTI_RULES.split('[[rules]]\nsource = "head"')[0])

    plan = plan_conversion(rules, specs)

    assert plan.ok and plan.source == (NamedSource("backbone", "b.ckpt"),)
    assert [(a.source_id, a.target_key) for a in plan.assignments] == [("backbone", "backbone/w")]


# --- writers on their own -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        ("out/model.safetensors", None, "safetensors"),
        ("out/model.weights.h5", None, "keras-h5"),
        ("out/model.hdf5", None, "keras-h5"),
        ("out/ckpt-3", None, "tf-checkpoint"),
        ("out/model.bin", None, "tf-checkpoint"),
        ("out/model.safetensors", "tf-checkpoint", "tf-checkpoint"),
    ],
)
def test_output_format_from_suffix_or_given(name: str, given: str | None, expected: str) -> None:
    assert output_format(name, given) == expected


@pytest.mark.parametrize("writer_class", [SafetensorsWriter, KerasH5Writer, CheckpointWriter, SaveV2CheckpointWriter])
def test_writers_check_values_and_completeness(tmp_path: Path, writer_class: type[Any]) -> None:
    name = {SafetensorsWriter: "w.safetensors", KerasH5Writer: "w.h5"}.get(writer_class, "ckpt")
    specs = [TensorSpec("a", (2,), "float32"), TensorSpec("b", (3,), "int32")]
    writer = writer_class(tmp_path / name, specs)
    with pytest.raises(TargetError, match=r"'a' is \[3\] float32, not the \[2\] float32"):
        writer.write("a", np.zeros(3, np.float32))
    with pytest.raises(TargetError, match="'c' is not one of the 2 tensors"):
        writer.write("c", np.zeros(2, np.float32))
    writer.write("a", tf.constant([1.0, 2.0]))
    with pytest.raises(TargetError, match="already written"):
        writer.write("a", np.zeros(2, np.float32))
    writer.end_batch()

    with pytest.raises(TargetError, match=r"1 declared tensor was never written \('b'\)"):
        writer.commit()

    assert listing(tmp_path) == []


def test_writer_as_context_manager_aborts_on_error(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        open_writer(tmp_path / "w.safetensors", [TensorSpec("a", (1,), "float32")]) as writer,
    ):
        writer.write("a", np.zeros(1, np.float32))
        raise RuntimeError("boom")

    assert listing(tmp_path) == []


def test_output_files_are_made_with_ordinary_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    convert(parse_rules(IDENTITY), MemorySource({"a": np.zeros(1)}), tmp_path / "a.safetensors")
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_check_output_names_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "ckpt.index").write_bytes(b"")
    with pytest.raises(TargetError, match=r"ckpt already exists \(ckpt.index\); pass --overwrite"):
        check_output(tmp_path / "ckpt", "tf-checkpoint", overwrite=False)
    check_output(tmp_path / "ckpt", "tf-checkpoint", overwrite=True)
    check_output(tmp_path / "ckpt", "safetensors", overwrite=False)  # no file named ckpt


def test_result_describes_the_conversion(tmp_path: Path) -> None:
    result = convert(parse_rules(IDENTITY), MemorySource({"a": np.zeros((2, 2), np.float32)}), tmp_path / "a.h5")

    assert isinstance(result, ConvertResult)
    assert (result.output, result.format, result.written, result.bytes_read, result.batches) == (
        str(tmp_path / "a.h5"),
        "keras-h5",
        1,
        16,
        1,
    )


def test_write_plan_refuses_a_plan_with_errors(tmp_path: Path) -> None:
    plan = plan_conversion(
        parse_rules("format = 1\n[[rules]]\nmatch = 'a'\ntarget = 'x'\n"), MemorySource({"b": np.zeros(1)})
    )
    assert not plan.ok

    with pytest.raises(PlanError, match="so nothing was applied"):
        write_plan(plan, MemorySource({"b": np.zeros(1)}), tmp_path / "x.safetensors")

    assert listing(tmp_path) == []


def test_plan_with_a_target_map_is_the_ordinary_plan() -> None:
    target = TargetMap(VariableMap([TensorSpec("x", (2,), "float32"), TensorSpec("y", (1,), "float32")]))
    rules = parse_rules("format = 1\n[[rules]]\nmatch = 'a'\ntarget = 'x'\n")

    plan = plan_conversion(rules, MemorySource({"a": np.zeros(2, np.float32)}), target)

    assert [entry.name for entry in plan.unfilled_targets] == ["y"]
    assert not plan.ok


# --- the command ----------------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def port_files(tmp_path: Path) -> tuple[Path, str, dict[str, np.ndarray]]:
    rules = tmp_path / "port.toml"
    rules.write_text(PORT_RULES)
    (tmp_path / "src").mkdir()
    arrays = port_source()
    return rules, write_checkpoint(tmp_path / "src", arrays), arrays


def test_cli_convert_writes_and_reports(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, port_files: tuple[Path, str, dict[str, np.ndarray]]
) -> None:
    rules, prefix, arrays = port_files
    output = tmp_path / "out.safetensors"

    code, out, err = run(capsys, "convert", str(rules), prefix, str(output), "--color", "never")

    assert code == cli.EXIT_OK, err
    assert "Plan OK" in out
    assert out.strip().splitlines()[-1].startswith("converted: 8 tensors (")
    assert out.strip().endswith(f"safetensors written to {output}")
    assert_bit_exact(read_all(output), port_expected(arrays))


def test_cli_convert_refuses_existing_then_overwrites(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, port_files: tuple[Path, str, dict[str, np.ndarray]]
) -> None:
    rules, prefix, _ = port_files
    output = tmp_path / "ckpt"
    assert run(capsys, "convert", str(rules), prefix, str(output), "-q")[0] == cli.EXIT_OK
    before = snapshot(tmp_path)

    code, _, err = run(capsys, "convert", str(rules), prefix, str(output), "-q")

    assert code == cli.EXIT_OUTPUT
    assert "already exists" in err and "--overwrite" in err
    assert snapshot(tmp_path) == before
    code, out, _ = run(capsys, "convert", str(rules), prefix, str(output), "-q", "--overwrite", "--to", "safetensors")
    assert code == cli.EXIT_OK
    assert out.strip().splitlines() == [out.strip().splitlines()[-1]]  # --quiet: only the final line
    assert output.is_file()  # --to safetensors: one file named as given


@pytest.mark.parametrize("report_format", ["markdown", "json"])
def test_cli_convert_report_formats(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    port_files: tuple[Path, str, dict[str, np.ndarray]],
    report_format: str,
) -> None:
    import json

    rules, prefix, _ = port_files
    code, out, _ = run(capsys, "convert", str(rules), prefix, str(tmp_path / "o.h5"), "--format", report_format)
    assert code == cli.EXIT_OK
    report = out.strip().rsplit("\n", 1)[0]
    if report_format == "json":
        assert json.loads(report)["ok"] is True
    else:
        assert "|" in report or report.lstrip().startswith("#")


def test_cli_convert_plan_errors_exit_1_and_write_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rules = tmp_path / "r.toml"
    rules.write_text("format = 1\n[[rules]]\nmatch = 'a'\ntarget = 'x'\n")
    prefix = write_checkpoint(tmp_path, {"a": np.zeros(2, np.float32), "b": np.zeros(2, np.float32)})
    before = snapshot(tmp_path)

    code, out, err = run(capsys, "convert", str(rules), prefix, str(tmp_path / "o.safetensors"), "-q")

    assert code == cli.EXIT_PROBLEMS
    assert "'b'" in out  # the report is printed even with --quiet when the plan has errors
    assert "1 error" in err
    assert snapshot(tmp_path) == before


def test_cli_convert_failure_exits_4_and_leaves_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    prefix, _ = corrupted(tmp_path / "src")
    rules = tmp_path / "r.toml"
    rules.write_text(IDENTITY)
    before = snapshot(tmp_path)

    code, _, err = run(capsys, "convert", str(rules), prefix, str(tmp_path / "o.safetensors"), "-q")

    assert code == cli.EXIT_APPLY
    assert err.startswith("mapper: error: convert failed: converting")
    assert snapshot(tmp_path) == before


def test_cli_convert_with_target_reports_unfilled(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rules = tmp_path / "r.toml"
    rules.write_text(MODEL_RULES)
    factory = tmp_path / "factory.py"
    factory.write_text(
        "import keras\n\ndef build():\n    inputs = keras.Input((4,))\n"
        "    hidden = keras.layers.Dense(3, name='d1')(inputs)\n"
        "    return keras.Model(inputs, keras.layers.Dense(2, name='head')(hidden))\n"
    )
    arrays = {name: value for name, value in torch_like().items() if "head" not in name}
    prefix = write_checkpoint(tmp_path, arrays)

    code, out, _ = run(
        capsys,
        "convert",
        str(rules),
        prefix,
        str(tmp_path / "o.safetensors"),
        "--target",
        f"{factory}:build",
        "--color",
        "never",
    )

    assert code == cli.EXIT_PROBLEMS
    assert "head/kernel" in out and "head/bias" in out
    assert not (tmp_path / "o.safetensors").exists()


def test_cli_convert_named_sources_and_source_format(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rules = tmp_path / "multi.toml"
    rules.write_text(MULTI_RULES)
    prefix = write_checkpoint(tmp_path, {"encoder/w": np.ones((2, 3), np.float32)})
    with (tmp_path / "head.bin").open("wb") as file:  # an .npz named like a PyTorch file
        np.savez(file, **{"classifier.weight": np.ones((2, 4), np.float32)})
    output = tmp_path / "joined.safetensors"

    code, _, err = run(
        capsys,
        "convert",
        str(rules),
        f"backbone={prefix}",
        str(output),
        "--source",
        f"head={tmp_path / 'head.bin'}",
        "--source-format",
        "head=npz",
        "-q",
    )

    assert code == cli.EXIT_OK, err
    assert sorted(read_all(output)) == ["backbone/w", "head/kernel"]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        pytest.param(
            ["--source", "other.ckpt"], "give one source as PATH, or every source as NAME=PATH", id="two-unnamed"
        ),
        pytest.param(["--source-format", "pickle"], "unknown format 'pickle'", id="bad-format"),
        pytest.param(["--source-format", "npz", "--source-format", "npz"], "may be given once", id="two-formats"),
    ],
)
def test_cli_source_usage_errors(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    port_files: tuple[Path, str, dict[str, np.ndarray]],
    extra: list[str],
    fragment: str,
) -> None:
    rules, prefix, _ = port_files

    code, _, err = run(capsys, "convert", str(rules), prefix, str(tmp_path / "o.safetensors"), *extra)

    assert code == cli.EXIT_USAGE
    assert fragment in err
    assert not (tmp_path / "o.safetensors").exists()


def test_cli_plan_and_apply_take_named_sources(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    rules = tmp_path / "multi.toml"
    rules.write_text(MULTI_RULES.replace('"backbone/{rest}"', '"d1/{rest}"'))
    factory = tmp_path / "factory.py"
    factory.write_text(
        "import keras\n\ndef build():\n    inputs = keras.Input((4,))\n"
        "    hidden = keras.layers.Dense(3, name='d1')(inputs)\n"
        "    return keras.Model(inputs, keras.layers.Dense(2, name='head', use_bias=False)(hidden))\n"
    )
    prefix = write_checkpoint(
        tmp_path, {"encoder/kernel": np.ones((4, 3), np.float32), "encoder/bias": np.zeros(3, np.float32)}
    )
    save_file({"classifier.weight": np.full((2, 3), 2.0, np.float32)}, str(tmp_path / "head.safetensors"))
    common = ["--source", f"backbone={prefix}", "--source", f"head={tmp_path / 'head.safetensors'}"]
    common += ["--target", f"{factory}:build", "--color", "never"]

    code, out, err = run(capsys, "plan", str(rules), *common)
    assert code == cli.EXIT_OK, out + err

    output = tmp_path / "applied.weights.h5"
    code, out, err = run(capsys, "apply", str(rules), *common, "--output", str(output), "-q")
    assert code == cli.EXIT_OK, out + err
    assert out.strip().splitlines()[-1].startswith("applied: 3 variables")


def test_cli_convert_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["convert", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "mapper convert" in out and "exit codes:" in out
    assert "layers/dense/vars/0" in out  # the note on Keras .weights.h5 names


@pytest.mark.parametrize("output_kind", list(SUFFIXES))
def test_write_plan_runs_without_tensorflow(tmp_path: Path, output_kind: str) -> None:
    import subprocess
    import sys

    arrays = port_source()
    (tmp_path / "src").mkdir()
    prefix = write_checkpoint(tmp_path / "src", arrays)
    output = tmp_path / SUFFIXES[output_kind]
    script = (
        "import sys\n"
        "sys.modules['tensorflow'] = None\n"  # importing it fails
        "from mapper.plan.conversion import plan_conversion\n"
        "from mapper.rules import parse_rules\n"
        "from mapper.run.convert import write_plan\n"
        "from mapper.sources.tf_checkpoint import TFCheckpointSource\n"
        f"source = TFCheckpointSource({prefix!r})\n"
        f"write_plan(plan_conversion(parse_rules({PORT_RULES!r}), source), source, {str(output)!r})\n"
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", script], check=True, cwd=root, env={"PYTHONPATH": str(root)})

    assert_bit_exact(read_all(output), port_expected(arrays))
