"""Applying plans into Keras 3 models on every backend (KERAS_BACKEND=tensorflow, jax, torch): values, rollback, signals.

The module imports no TensorFlow: it runs with TensorFlow made unimportable under the JAX and torch backends. The
JAX sharding tests need 4 CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``, set here when no
device count is given and JAX has not started yet).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

import keras
import numpy as np
import pytest
from safetensors.numpy import save_file

import mapper
from mapper.errors import ApplyError, CorruptSourceError, PartialApplyError, TargetError
from mapper.interrupts import Terminated, sigterm_raises
from mapper.plan import Plan
from mapper.rules import parse_rules
from mapper.run.deferral import signals_deferred
from mapper.run.executor import apply_plan
from mapper.sources import open_source
from mapper.sources.base import Source
from mapper.sources.tf_bundle import masked_crc32c
from mapper.specs import VariableMap
from mapper.targets.base import VariableTarget
from mapper.targets.variables import target_from

pytestmark = pytest.mark.backends

BACKEND = keras.backend.backend()
ROOT = Path(__file__).resolve().parents[2]


# --- a small model and its "pretrained" source in PyTorch layout ------------------------------------------------------


def build_model() -> keras.Model:
    """x[4] -> proj (Dense 3) and q/k/v (Dense 2 each) and flat (Dense 6) and joined (Dense 3); 12 weights."""
    inputs = keras.Input((4,), name="x")
    outputs = [keras.layers.Dense(units, name=name)(inputs) for name, units in PARTS.items()]
    return keras.Model(inputs, outputs, name="m")


PARTS = {"proj": 3, "q": 2, "k": 2, "v": 2, "flat": 6, "joined": 3}

RULES = """
format = 1
[[rules]]
name = "transpose"
match = 'proj\\.weight'
target = "proj/kernel"
ops = [{ transpose = [1, 0] }]
[[rules]]
name = "cast"
match = 'proj\\.bias'
target = "proj/bias"
ops = [{ cast = "target" }]
[[rules]]
name = "split"
match = 'qkv\\.(?P<p>weight|bias)'
split = { axis = -1, parts = 3 }
targets = ["q/{p}", "k/{p}", "v/{p}"]
values = { p = { weight = "kernel", bias = "bias" } }
[[rules]]
name = "reshape"
match = 'flat\\.(?P<p>weight|bias)'
target = "flat/{p}"
values = { p = { weight = "kernel", bias = "bias" } }
ops = [{ reshape = "target" }]
[[rules]]
name = "concat"
match = 'joined\\.(?P<part>[01])\\.weight'
target = "joined/kernel"
concat = { axis = 0, by = "part", members = ["0", "1"] }
[[rules]]
match = 'joined\\.bias'
target = "joined/bias"
"""


def source_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def normal(*shape: int, dtype: str = "float32") -> np.ndarray:
        return rng.standard_normal(shape).astype(dtype)

    return {
        "proj.weight": normal(3, 4),  # PyTorch [out, in]
        "proj.bias": normal(3, dtype="float16"),
        "qkv.weight": normal(4, 6),
        "qkv.bias": normal(6),
        "flat.weight": normal(24),
        "flat.bias": normal(2, 3),
        "joined.0.weight": normal(2, 3),
        "joined.1.weight": normal(2, 3),
        "joined.bias": normal(3),
    }


def expected_values(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the rules give each variable, computed with NumPy."""
    expected = {
        "proj/kernel": arrays["proj.weight"].T,
        "proj/bias": arrays["proj.bias"].astype("float32"),
        "flat/kernel": arrays["flat.weight"].reshape(4, 6),
        "flat/bias": arrays["flat.bias"].reshape(6),
        "joined/kernel": np.concatenate([arrays["joined.0.weight"], arrays["joined.1.weight"]]),
        "joined/bias": arrays["joined.bias"],
    }
    for index, name in enumerate("qkv"):
        expected[f"{name}/kernel"] = arrays["qkv.weight"][:, 2 * index : 2 * index + 2]
        expected[f"{name}/bias"] = arrays["qkv.bias"][2 * index : 2 * index + 2]
    return expected


def write_source(kind: str, directory: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    if kind == "safetensors":
        path = directory / "model.safetensors"
        save_file(dict(arrays), str(path))
        return path
    if kind == "npz":
        path = directory / "model.npz"
        np.savez(path, **arrays)  # type: ignore[arg-type]
        return path
    return write_bundle(directory / "ckpt", arrays)


def values_of(model: keras.Model) -> dict[str, np.ndarray]:
    return {variable.path: np.array(variable.numpy(), copy=True) for variable in model.weights}


def assert_values(model: keras.Model, expected: Mapping[str, np.ndarray]) -> None:
    actual = values_of(model)
    assert actual.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(actual[name], array, err_msg=name)


def planned(source: Source, model: keras.Model, rules: str = RULES) -> Plan:
    plan = mapper.make_plan(parse_rules(rules, file="backends.toml"), source, model)
    assert plan.ok, [problem.message for problem in plan.problems]
    return plan


# --- a TensorFlow checkpoint written without TensorFlow (the tensor-bundle format tf_bundle reads) ----------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    return _varint(number << 3) + _varint(value)


def _block(entries: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A table block with a restart point at every entry (no shared prefixes)."""
    body, restarts = b"", []
    for key, value in entries:
        restarts.append(len(body))
        body += _varint(0) + _varint(len(key)) + _varint(len(value)) + key + value
    return body + b"".join(struct.pack("<I", r) for r in restarts or [0]) + struct.pack("<I", len(restarts or [0]))


def write_bundle(prefix: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """A name-based (TF1 ``Saver``-style) float32/float16 checkpoint: ``prefix.index`` + one data file."""
    dtypes = {"float32": 1, "float16": 19}
    data, entries = b"", [(b"", _field(1, 1) + _field(2, 0))]  # header: 1 shard, little-endian
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        raw = array.tobytes()
        shape = b"".join(_field(2, _field(1, dim)) for dim in array.shape)
        entry = _field(1, dtypes[array.dtype.name]) + _field(2, shape) + _field(4, len(data)) + _field(5, len(raw))
        entry += _varint(6 << 3 | 5) + struct.pack("<I", masked_crc32c(raw))
        entries.append((name.encode(), entry))
        data += raw
    index = b""

    def put(block: bytes) -> bytes:
        nonlocal index
        handle = _varint(len(index)) + _varint(len(block))
        index += block + b"\0" + struct.pack("<I", masked_crc32c(block + b"\0"))
        return handle

    data_handle = put(_block(entries))
    meta_handle = put(_block([]))
    index_handle = put(_block([(entries[-1][0], data_handle)]))
    footer = (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    Path(f"{prefix}.index").write_bytes(index + footer)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(data)
    return prefix


def test_bundle_written_here_reads_back_with_every_check(tmp_path: Path) -> None:
    """The writer above makes what the TensorFlow-free reader accepts (and TensorFlow too, on its backend)."""
    arrays = {"b": np.arange(3, dtype="float16"), "a/w": np.ones((2, 2), "float32")}
    directory = tmp_path
    source = open_source(write_bundle(directory / "ckpt", arrays))
    assert type(source).__name__ == "TFCheckpointSource"
    read = source.read(["a/w", "b"])
    for name, array in arrays.items():
        np.testing.assert_array_equal(read[name], array)
        assert read[name].dtype == array.dtype
    if BACKEND == "tensorflow":
        import tensorflow as tf  # only on its own backend

        reader = tf.train.load_checkpoint(str(directory / "ckpt"))
        np.testing.assert_array_equal(reader.get_tensor("a/w"), arrays["a/w"])


# --- plain assignment -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["safetensors", "npz", "tf-checkpoint"])
@pytest.mark.parametrize("rollback", ["verify", "memory", "off"])
def test_transpose_reshape_cast_split_concat_from_each_format(tmp_path: Path, kind: str, rollback: str) -> None:
    arrays = source_arrays()
    source = open_source(write_source(kind, tmp_path, arrays))
    model = build_model()
    plan = planned(source, model)

    result = apply_plan(plan, source, target_from(model), rollback=rollback, batch_bytes=64)  # type: ignore[arg-type]

    assert_values(model, expected_values(arrays))
    assert (result.assigned, result.rollback) == (12, rollback)
    for variable in model.weights:  # the values are the backend's own arrays, and the model still runs
        assert keras.ops.is_tensor(variable.value)
    assert keras.ops.convert_to_numpy(model(np.ones((1, 4), "float32"))[0]).shape == (1, 3)


def test_large_tensors_take_the_fused_copy_path(tmp_path: Path) -> None:
    """Tensors over the small-tensor threshold are transformed while copied once; values stay exact."""
    rng = np.random.default_rng(1)
    arrays = {"proj.weight": rng.standard_normal((96, 256)).astype("float32")}
    inputs = keras.Input((256,))
    model = keras.Model(inputs, keras.layers.Dense(96, name="proj", use_bias=False)(inputs), name="m")
    source = open_source(write_source("safetensors", tmp_path, arrays))
    rules = RULES.split('[[rules]]\nname = "cast"')[0]

    mapper.apply(planned(source, model, rules), source, model)

    np.testing.assert_array_equal(model.get_layer("proj").kernel.numpy(), arrays["proj.weight"].T)


def test_memory_source_arrays_are_not_shared_with_the_model() -> None:
    """A MemorySource's arrays are the caller's: changing one afterwards must not change the model."""
    from mapper.sources.memory import MemorySource

    arrays = source_arrays()
    held = {name: array.copy() for name, array in arrays.items()}
    model = build_model()
    source = MemorySource(arrays)
    mapper.apply(planned(source, model), source, model)
    for array in arrays.values():
        array[...] = 0
    assert_values(model, expected_values(held))


# --- rollback modes under injected faults ---------------------------------------------------------------------------


class FailingSource:
    """Wraps a real source; its ``fail_on``-th ``read`` call raises OSError(EIO), as a failing disk does."""

    def __init__(self, inner: Source, fail_on: int) -> None:
        self.inner = inner
        self.fail_on = fail_on
        self.calls = 0

    description = property(lambda self: self.inner.description)
    checkpoint_prefix = property(lambda self: self.inner.checkpoint_prefix)
    hands_over_reads = property(lambda self: self.inner.hands_over_reads)

    def specs(self) -> VariableMap:
        return self.inner.specs()

    def input_files(self) -> tuple[Path, ...]:
        return self.inner.input_files()

    def read(self, names: Sequence[str]) -> Mapping[str, Any]:
        self.calls += 1
        if self.calls == self.fail_on:
            raise OSError(errno.EIO, "Input/output error")
        return self.inner.read(names)


def _batches(plan: Plan) -> int:
    from mapper.run.batches import plan_batches

    return len(plan_batches(plan, 64))


def truncate_last_tensor(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 8)


def flip_data_byte(prefix: Path) -> None:
    data = Path(f"{prefix}.data-00000-of-00001")
    content = bytearray(data.read_bytes())
    content[-5] ^= 0x40  # in the last tensor (by offset): its crc32c no longer matches
    data.write_bytes(bytes(content))


@pytest.mark.parametrize(
    ("kind", "damage", "rollback", "raised", "fragment"),
    [
        pytest.param(
            "safetensors", truncate_last_tensor, "verify", ApplyError, "verifying the source", id="truncated-verify"
        ),
        pytest.param("safetensors", truncate_last_tensor, "memory", ApplyError, "were restored", id="truncated-memory"),
        pytest.param(
            "safetensors", truncate_last_tensor, "off", PartialApplyError, "partly assigned", id="truncated-off"
        ),
        pytest.param("tf-checkpoint", flip_data_byte, "verify", ApplyError, "checksum mismatch", id="crc-verify"),
        pytest.param("tf-checkpoint", flip_data_byte, "memory", ApplyError, "were restored", id="crc-memory"),
        pytest.param("tf-checkpoint", flip_data_byte, "off", PartialApplyError, "partly assigned", id="crc-off"),
    ],
)
def test_a_source_damaged_after_planning(
    tmp_path: Path, kind: str, damage: Any, rollback: str, raised: type[Exception], fragment: str
) -> None:
    arrays = source_arrays()
    path = write_source(kind, tmp_path, arrays)
    source = open_source(path)
    model = build_model()
    plan = planned(source, model)
    before = values_of(model)
    damage(path)

    with pytest.raises(raised, match=fragment) as error:
        apply_plan(plan, source, target_from(model), rollback=rollback, batch_bytes=64)  # type: ignore[arg-type]

    assert isinstance(error.value.__cause__, CorruptSourceError)
    if raised is PartialApplyError:
        assert isinstance(error.value, PartialApplyError)
        assert error.value.assigned and error.value.not_assigned
        after = values_of(model)
        changed = {name for name in after if not np.array_equal(after[name], before[name])}
        assert changed == set(error.value.assigned)
    else:
        assert type(error.value) is ApplyError
        assert "is unchanged" in str(error.value)
        assert_values(model, before)


@pytest.mark.parametrize(
    ("rollback", "pass_", "raised", "fragment"),
    [
        pytest.param("verify", "verify", ApplyError, "verifying the source: reading batch 2", id="verify-in-verify"),
        pytest.param(
            "verify", "assign", PartialApplyError, "so it changed or failed to read since", id="verify-in-assign"
        ),
        pytest.param("memory", "assign", ApplyError, "restored to their previous values", id="memory"),
        pytest.param("off", "assign", PartialApplyError, "with rollback='off' nothing is restored", id="off"),
    ],
)
def test_an_eio_on_one_read(tmp_path: Path, rollback: str, pass_: str, raised: type[Exception], fragment: str) -> None:
    arrays = source_arrays()
    inner = open_source(write_source("safetensors", tmp_path, arrays))
    model = build_model()
    plan = planned(inner, model)
    count = _batches(plan)
    assert count >= 3
    # The second read of the pass named: in "verify" mode the assignment pass starts after `count` reads.
    fail_on = 2 + (count if rollback == "verify" and pass_ == "assign" else 0)
    source = FailingSource(inner, fail_on)
    before = values_of(model)

    with pytest.raises(raised, match=fragment) as error:
        apply_plan(plan, source, target_from(model), rollback=rollback, batch_bytes=64)  # type: ignore[arg-type]

    assert isinstance(error.value.__cause__, OSError)
    assert error.value.__cause__.errno == errno.EIO
    after = values_of(model)
    if raised is PartialApplyError:
        assert isinstance(error.value, PartialApplyError)
        expected = expected_values(arrays)
        assert len(error.value.assigned) + len(error.value.not_assigned) == 12
        for name in error.value.assigned:
            np.testing.assert_array_equal(after[name], expected[name], err_msg=name)
        for name in error.value.not_assigned:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        assert error.value.assigned[0] in str(error.value)
    else:
        assert_values(model, before)


def test_verify_reads_everything_before_the_first_assignment(tmp_path: Path) -> None:
    """The verify pass reads each batch once; the assignment pass then reads them again, in the same batches."""
    arrays = source_arrays()
    inner = open_source(write_source("npz", tmp_path, arrays))
    model = build_model()
    plan = planned(inner, model)
    seen: list[list[str]] = []

    class Recording(FailingSource):
        def read(self, names: Sequence[str]) -> Mapping[str, Any]:
            seen.append(list(names))
            return self.inner.read(names)

    apply_plan(plan, Recording(inner, 0), target_from(model), batch_bytes=64)

    half = len(seen) // 2
    assert seen[:half] == seen[half:]
    assert sorted(name for names in seen[:half] for name in names) == sorted(arrays)


@pytest.mark.parametrize("rollback", ["verify", "memory", True, False, "undo"])
def test_rollback_modes_and_the_former_booleans(rollback: Any) -> None:
    from mapper.sources.memory import MemorySource

    model = build_model()
    source = MemorySource(source_arrays())
    plan = planned(source, model)
    if rollback == "undo":
        with pytest.raises(ApplyError, match="unknown rollback mode 'undo'"):
            apply_plan(plan, source, target_from(model), rollback=rollback)
        return
    result = apply_plan(plan, source, target_from(model), rollback=rollback)
    assert result.rollback == {True: "memory", False: "off"}.get(rollback, rollback)


# --- signals --------------------------------------------------------------------------------------------------------

SIGNAL_SCRIPT = """
import json, os, signal, sys
import numpy as np
sys.path.insert(0, {tests!r})
import keras
import mapper
from mapper.sources import open_source
from test_apply_keras import build_model, expected_values, planned, source_arrays, values_of, write_source
from pathlib import Path

arrays = source_arrays()
source = open_source(write_source("npz", Path(sys.argv[1]), arrays))
model = build_model()
plan = planned(source, model)
calls = []

def progress(done, total):
    calls.append(done)
    if len(calls) == 1:
        os.kill(os.getpid(), signal.{name})

try:
    mapper.apply(plan, source, model, batch_bytes=64, progress=progress)
except KeyboardInterrupt:
    expected = expected_values(arrays)
    after = values_of(model)
    state = {{
        "assigned": sorted(name for name in after if np.array_equal(after[name], expected[name])),
        "progress": calls,
        "tensorflow": "tensorflow" in sys.modules,
    }}
    print(json.dumps(state))
    sys.exit(130)
print("not interrupted")
"""


def test_sigint_mid_apply_is_delivered_once_the_assignment_pass_ends(tmp_path: Path) -> None:
    """Ctrl-C during the assignment pass: every variable is assigned first, then KeyboardInterrupt (exit 130)."""
    script = SIGNAL_SCRIPT.format(tests=str(Path(__file__).parent), name="SIGINT")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KERAS_BACKEND": BACKEND, "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )

    assert process.returncode == 130, process.stderr[-2000:]
    state = json.loads(process.stdout.strip().splitlines()[-1])
    assert len(state["assigned"]) == 12  # the whole model, not the first batch only
    assert len(state["progress"]) > 1  # the signal came after the first of several batches
    assert state["tensorflow"] == (BACKEND == "tensorflow")  # applying into JAX or torch never imports TensorFlow


def test_sigterm_is_deferred_then_raised_by_the_handler_in_place() -> None:
    with pytest.raises(Terminated), sigterm_raises(), signals_deferred() as arrived:
        os.kill(os.getpid(), signal.SIGTERM)
        assert arrived == [signal.SIGTERM]  # still running: recorded, not raised
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# --- JAX: sharded variables -----------------------------------------------------------------------------------------


def _jax_devices() -> int:
    if BACKEND != "jax":
        pytest.skip("JAX backend only")
    import jax

    if jax.device_count() < 4:
        pytest.skip("needs 4 devices: XLA_FLAGS=--xla_force_host_platform_device_count=4")
    return jax.device_count()


def sharded_model(width: int = 8) -> keras.Model:
    """Dense 'up' (kernel [4, width], its columns split over 4 devices) and 'down' (kernel [width, 4], its rows)."""
    devices = keras.distribution.list_devices()[:4]
    mesh = keras.distribution.DeviceMesh((1, 4), ["batch", "model"], devices)
    layout = keras.distribution.LayoutMap(mesh)
    layout[".*up.*kernel"] = (None, "model")
    layout[".*down.*kernel"] = ("model", None)
    with keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch").scope():
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(width, name="up")(inputs)
        return keras.Model(inputs, keras.layers.Dense(4, name="down")(hidden), name="m")


SHARD_RULES = """
format = 1
[[rules]]
match = '(?P<layer>up|down)\\.weight'
target = "{layer}/kernel"
ops = [{ transpose = [1, 0] }]
[[rules]]
match = '(?P<layer>up|down)\\.bias'
target = "{layer}/bias"
"""


def shard_arrays(width: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    return {
        "up.weight": rng.standard_normal((width, 4)).astype("float32"),
        "up.bias": rng.standard_normal(width).astype("float32"),
        "down.weight": rng.standard_normal((4, width)).astype("float32"),
        "down.bias": rng.standard_normal(4).astype("float32"),
    }


@pytest.mark.parametrize("rollback", ["verify", "memory"])
def test_each_shard_is_filled_with_its_slice_and_the_layout_is_kept(tmp_path: Path, rollback: str) -> None:
    _jax_devices()
    arrays = shard_arrays()
    source = open_source(write_source("safetensors", tmp_path, arrays))
    model = sharded_model()
    shardings = {v.path: v.value.sharding for v in model.weights}
    assert shardings["up/kernel"].shard_shape((4, 8)) == (4, 2)  # really split over the 4 devices

    mapper.apply(planned(source, model, SHARD_RULES), source, model, rollback=rollback)

    expected = {
        "up/kernel": arrays["up.weight"].T,
        "up/bias": arrays["up.bias"],
        "down/kernel": arrays["down.weight"].T,
        "down/bias": arrays["down.bias"],
    }
    for variable in model.weights:
        value = variable.value
        assert value.sharding == shardings[variable.path], variable.path
        assert len(value.addressable_shards) == 4
        for shard in value.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), expected[variable.path][shard.index])


def test_data_parallel_replicas_each_get_the_whole_value() -> None:
    _jax_devices()
    from mapper.sources.memory import MemorySource

    with keras.distribution.DataParallel(devices=keras.distribution.list_devices()[:4]).scope():
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(3, name="d")(inputs))
    shardings = {v.path: v.value.sharding for v in model.weights}
    arrays = {"d.weight": np.arange(12, dtype="float32").reshape(3, 4), "d.bias": np.ones(3, "float32")}
    source = MemorySource(arrays)
    rules = SHARD_RULES.replace("up|down", "d")

    mapper.apply(planned(source, model, rules), source, model)

    expected = {"d/kernel": arrays["d.weight"].T, "d/bias": arrays["d.bias"]}
    for variable in model.weights:
        assert variable.value.sharding == shardings[variable.path]
        assert len(variable.value.addressable_shards) == 4
        for shard in variable.value.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), expected[variable.path])


@pytest.mark.parametrize("rollback", ["verify", "memory", "off"])
def test_a_layout_that_cannot_hold_the_planned_shape_is_refused(tmp_path: Path, rollback: str) -> None:
    """A plan made for kernels 6 wide, applied to the model whose layout splits 8 columns over 4 devices."""
    _jax_devices()
    arrays = shard_arrays(width=6)
    source = open_source(write_source("safetensors", tmp_path, arrays))
    unsharded = keras.Model(*_two_dense(6), name="m")
    plan = planned(source, unsharded, SHARD_RULES)
    model = sharded_model()
    before = values_of(model)

    with pytest.raises(
        TargetError, match=r"sharding P\(.*\) cannot hold \[(4, 6|6, 4)\]: array axis \d is partitioned 4 times"
    ):
        mapper.apply(plan, source, model, rollback=rollback)

    assert_values(model, before)


def _two_dense(width: int) -> tuple[Any, Any]:
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(width, name="up")(inputs)
    return inputs, keras.layers.Dense(4, name="down")(hidden)


# --- inputs refused before anything changes -------------------------------------------------------------------------


def _one_variable_plan(tmp_path: Path) -> tuple[Plan, Source]:
    source = open_source(write_source("npz", tmp_path, {"w": np.ones(2, "float32")}))
    rules = 'format = 1\n[[rules]]\nmatch = "w"\ntarget = "w"\n'
    from mapper.specs import TargetMap, TensorSpec

    plan = mapper.make_plan(parse_rules(rules), source, TargetMap(VariableMap([TensorSpec("w", (2,), "float32")])))
    return plan, source


def _foreign_variable(kind: str) -> Any:
    if kind == "torch.nn.Parameter":
        torch = pytest.importorskip("torch")
        return torch.nn.Parameter(torch.zeros(2))
    jnp = pytest.importorskip("jax.numpy")
    return jnp.zeros(2, "float32")


@pytest.mark.parametrize("kind", ["torch.nn.Parameter", "jax.Array"])
def test_variables_of_another_framework_are_refused(tmp_path: Path, kind: str) -> None:
    plan, source = _one_variable_plan(tmp_path)
    foreign = _foreign_variable(kind)
    with pytest.raises(TargetError, match="not variables"):
        target_from({"w": foreign})
    target = VariableTarget("foreign", plan_target_map(plan), {"w": foreign})
    with pytest.raises(TargetError, match=f"not a keras.Variable of the active Keras backend \\({BACKEND}\\)"):
        apply_plan(plan, source, target)


def plan_target_map(plan: Plan) -> Any:
    from mapper.specs import TargetMap, TensorSpec

    return TargetMap(VariableMap([TensorSpec(a.target, a.target_shape, a.target_dtype) for a in plan.assignments]))


def test_tensorflow_targets_need_the_tensorflow_backend(tmp_path: Path) -> None:
    if BACKEND == "tensorflow":
        pytest.skip("on the TensorFlow backend tf.Variables are what is assigned")
    tf = pytest.importorskip("tensorflow")
    plan, source = _one_variable_plan(tmp_path)
    module = tf.Module(name="module")
    module.w = tf.Variable(np.zeros(2, "float32"), name="w")
    with pytest.raises(TargetError, match="set KERAS_BACKEND=tensorflow"):
        mapper.apply(plan, source, module)
    np.testing.assert_array_equal(module.w.numpy(), np.zeros(2, "float32"))


def test_init_from_checkpoint_without_tensorflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if BACKEND == "tensorflow":
        pytest.skip("TensorFlow is importable on its own backend")
    arrays = {"w": np.ones(2, "float32")}
    source = open_source(write_bundle(tmp_path / "ckpt", arrays))
    variable = keras.Variable(np.zeros(2, "float32"), name="w")
    plan = mapper.make_plan(parse_rules('format = 1\n[[rules]]\nmatch = "w"\ntarget = "w"\n'), source, {"w": variable})
    if "tensorflow" not in sys.modules:
        monkeypatch.setitem(sys.modules, "tensorflow", None)  # type: ignore[arg-type]
        with pytest.raises(ApplyError, match=r"pip install 'weight-mapper\[tensorflow\]' \(or tensorflow-cpu\)"):
            mapper.apply(plan, source, {"w": variable}, method="init_from_checkpoint")
        monkeypatch.undo()
    if _tensorflow_importable():
        with pytest.raises(ApplyError, match=f"Keras variables on the '{BACKEND}' backend; use method='assign'"):
            mapper.apply(plan, source, {"w": variable}, method="init_from_checkpoint")
    np.testing.assert_array_equal(variable.numpy(), np.zeros(2, "float32"))
    mapper.apply(plan, source, {"w": variable})  # the TensorFlow-free way reads the same checkpoint
    np.testing.assert_array_equal(variable.numpy(), arrays["w"])


def _tensorflow_importable() -> bool:
    import importlib.util

    return sys.modules.get("tensorflow", True) is not None and importlib.util.find_spec("tensorflow") is not None
