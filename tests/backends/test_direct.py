"""Direct writes (mapper/run/direct.py): large untransformed tensors read straight into the variables, every backend.

Runs under KERAS_BACKEND=tensorflow, jax and torch; imports no TensorFlow (the TF checkpoints are written by
test_apply_keras's ``write_bundle``).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import mapper
from mapper.errors import ApplyError, CorruptSourceError, PartialApplyError
from mapper.ops import Cast, Rearrange, Reshape, Transpose
from mapper.rules import parse_rules
from mapper.run.bands import band_bytes
from mapper.run.direct import DIRECT_MIN_BYTES, Staging, split_batch
from mapper.run.executor import apply_plan
from mapper.run.values import reordering
from mapper.sources import open_source
from mapper.sources._common import VERIFY_CHUNK
from mapper.sources.base import ChunkedSource
from mapper.targets.variables import target_from
from tests.backends.test_apply_keras import write_source

pytestmark = pytest.mark.backends

BACKEND = keras.backend.backend()
WIDE = 512  # a 512 x 512 float32 kernel is 1 MiB: written directly
RULES = """
format = 1
[[rules]]
match = '(?P<layer>big|small)\\.(?P<p>weight|bias)'
target = "{layer}/{p}"
values = { p = { weight = "kernel", bias = "bias" } }
ops = [{ cast = "target" }]  # to the dtype the tensor has: still a plain copy, read into the variable's memory
[[rules]]
match = 'turned\\.weight'
target = "turned/kernel"
ops = [{ transpose = [1, 0] }]
"""


def build_model() -> keras.Model:
    inputs = keras.Input((WIDE,), name="x")
    outputs = [
        keras.layers.Dense(WIDE, name="big")(inputs),
        keras.layers.Dense(4, name="small")(inputs),
        keras.layers.Dense(WIDE, name="turned", use_bias=False)(inputs),
    ]
    return keras.Model(inputs, outputs, name="m")


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "big.weight": rng.standard_normal((WIDE, WIDE)).astype("float32"),
        "big.bias": rng.standard_normal(WIDE).astype("float32"),
        "small.weight": rng.standard_normal((WIDE, 4)).astype("float32"),
        "small.bias": rng.standard_normal(4).astype("float32"),
        "turned.weight": rng.standard_normal((WIDE, WIDE)).astype("float32"),
    }


def expected(source: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "big/kernel": source["big.weight"],
        "big/bias": source["big.bias"],
        "small/kernel": source["small.weight"],
        "small/bias": source["small.bias"],
        "turned/kernel": source["turned.weight"].T,
    }


def values_of(model: keras.Model) -> dict[str, np.ndarray]:
    return {variable.path: np.array(variable.numpy(), copy=True) for variable in model.weights}


class Recording:
    """Wraps a real ChunkedSource, recording which names each path served; ``fail_into`` makes a chunked read fail."""

    def __init__(self, inner: Any, fail_into: str | None = None) -> None:
        self.inner = inner
        self.fail_into = fail_into
        self.read_names: list[str] = []
        self.into_names: list[str] = []
        self.buffer_bytes: dict[str, int] = {}  # the buffer each chunked read went through

    description = property(lambda self: self.inner.description)
    checkpoint_prefix = property(lambda self: self.inner.checkpoint_prefix)
    hands_over_reads = property(lambda self: self.inner.hands_over_reads)

    def specs(self) -> Any:
        return self.inner.specs()

    def input_files(self) -> Any:
        return self.inner.input_files()

    def read(self, names: Any) -> Any:
        self.read_names += list(names)
        return self.inner.read(names)

    def verify(self, names: Any) -> None:
        self.inner.verify(names)

    def raw_order(self, name: str) -> str | None:
        order: str | None = self.inner.raw_order(name)
        return order

    def read_chunks(self, name: str, buffer: memoryview) -> Iterator[memoryview]:
        self.into_names.append(name)
        self.buffer_bytes[name] = len(buffer)
        for number, chunk in enumerate(self.inner.read_chunks(name, buffer)):
            if name == self.fail_into and number == 2:  # after two chunks, as a read failing midway
                raise OSError(errno.EIO, "Input/output error")
            yield chunk


KINDS = ["safetensors", "tf-checkpoint"]


@pytest.mark.parametrize("rollback", ["verify", "off", "memory"])
@pytest.mark.parametrize("kind", KINDS)
def test_large_plain_copies_are_read_into_the_variables(tmp_path: Path, kind: str, rollback: str) -> None:
    source_values = arrays()
    source = Recording(open_source(write_source(kind, tmp_path, source_values)))
    assert isinstance(source, ChunkedSource)
    model = build_model()
    plan = mapper.make_plan(parse_rules(RULES, file="direct.toml"), source, model)

    apply_plan(plan, source, target_from(model), rollback=rollback)  # type: ignore[arg-type]

    after = values_of(model)
    for name, array in expected(source_values).items():
        np.testing.assert_array_equal(after[name], array, err_msg=name)
    # "memory" mode keeps every old buffer alive, so it assigns through read() as before.
    direct = ["big.weight", "turned.weight"] if rollback != "memory" else []
    assert source.into_names == direct
    assert set(source.read_names) == set(arrays()) - set(direct)


@pytest.mark.parametrize("kind", KINDS)
def test_a_transposed_tensor_is_moved_into_place_as_it_is_read(tmp_path: Path, kind: str) -> None:
    """In bands of whole rows into TF's staging buffer; torch, and JAX filling the old value's memory, read it whole."""
    source_values = arrays()
    source = Recording(open_source(write_source(kind, tmp_path, source_values)))
    model = build_model()
    plan = mapper.make_plan(parse_rules(RULES, file="direct.toml"), source, model)

    apply_plan(plan, source, target_from(model))

    np.testing.assert_array_equal(values_of(model)["turned/kernel"], source_values["turned.weight"].T)
    [turned] = [a for a in plan.assignments if a.source == "turned.weight"]
    layout = reordering(turned)
    assert layout is not None
    banded = band_bytes(layout) if BACKEND == "tensorflow" else VERIFY_CHUNK
    assert source.buffer_bytes == {"big.weight": VERIFY_CHUNK, "turned.weight": banded}
    assert banded != VERIFY_CHUNK or BACKEND != "tensorflow"


def test_only_large_single_tensor_assignments_are_direct(tmp_path: Path) -> None:
    source = open_source(write_source("safetensors", tmp_path, arrays()))
    model = build_model()
    plan = mapper.make_plan(parse_rules(RULES, file="direct.toml"), source, model)
    from mapper.run.batches import plan_batches
    from mapper.run.slots import check_targets

    slots = check_targets(plan, target_from(model)).by_name
    [batch] = plan_batches(plan, 64 * 2**20)
    direct, rest = split_batch(batch, source, slots)

    assert [a.source for a in direct] == ["big.weight", "turned.weight"]
    assert sorted(rest.names) == ["big.bias", "small.bias", "small.weight"]
    assert 4 * WIDE * WIDE >= DIRECT_MIN_BYTES > 4 * WIDE * 4


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_first_direct_read_leaves_the_target_unchanged(tmp_path: Path, kind: str) -> None:
    """While nothing is assigned, even a slot that fills its variable's own memory gets the tensor read whole first."""
    source = Recording(open_source(write_source(kind, tmp_path, arrays())), fail_into="big.weight")
    model = build_model()
    plan = mapper.make_plan(parse_rules(RULES, file="direct.toml"), source, model)
    before = values_of(model)

    with pytest.raises(ApplyError) as error:
        apply_plan(plan, source, target_from(model))

    message = str(error.value)
    assert "reading into the variable 'big.weight'" in message
    assert type(error.value) is ApplyError and "is unchanged" in message
    for name, array in before.items():
        np.testing.assert_array_equal(values_of(model)[name], array, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_a_direct_read_failing_midway_after_the_first_assignment(tmp_path: Path, kind: str) -> None:
    """Once a variable is assigned, torch and JAX read a plain copy straight into the variable's memory."""
    source_values = arrays()
    source = Recording(open_source(write_source(kind, tmp_path, source_values)), fail_into="big.weight")
    model = build_model()
    plan = mapper.make_plan(parse_rules(RULES, file="direct.toml"), source, model)
    big = next(weight for weight in model.weights if weight.path == "big/kernel")
    big.assign(np.zeros((WIDE, WIDE), "float32"))  # known values, not read back (on JAX a view would keep the memory)

    with pytest.raises(PartialApplyError) as error:
        apply_plan(plan, source, target_from(model), batch_bytes=4 * WIDE)  # big.bias first, in a batch of its own

    assert list(error.value.assigned) == ["big/bias"]
    after, message = values_of(model)["big/kernel"], str(error.value)
    if BACKEND == "tensorflow":  # a staging buffer, then one scatter: the variable is untouched
        assert "holds part" not in message
        assert not after.any()
    else:  # the parameter's own memory (torch), the memory of the value it replaces (JAX): two chunks got there
        assert "'big/kernel', being read into its own memory, holds part of its new value" in message
        rows = 2 * VERIFY_CHUNK // (4 * WIDE)
        np.testing.assert_array_equal(after[:rows], source_values["big.weight"][:rows])
        assert not after[rows:].any()


def test_a_damaged_tensor_is_found_by_the_direct_read_itself(tmp_path: Path) -> None:
    """With rollback "off" nothing verifies first: read_into's own crc32c check stops the damaged tensor."""
    prefix = write_source("tf-checkpoint", tmp_path, arrays())
    data = Path(f"{prefix}.data-00000-of-00001")
    content = bytearray(data.read_bytes())
    content[4 * WIDE + 100] ^= 0x01  # inside big.weight, which follows big.bias (the tensors are sorted by name)
    data.write_bytes(bytes(content))
    source = open_source(prefix)
    model = build_model()
    plan = mapper.make_plan(parse_rules(RULES, file="direct.toml"), source, model)
    before = values_of(model)

    with pytest.raises(ApplyError, match=r"'big\.weight'.*checksum mismatch") as error:
        apply_plan(plan, source, target_from(model), rollback="off")

    assert isinstance(error.value.__cause__, CorruptSourceError)
    assert type(error.value) is ApplyError  # the first tensor: read whole and checked before its variable changed
    for name, array in before.items():
        np.testing.assert_array_equal(values_of(model)[name], array, err_msg=name)


def test_a_failing_read_of_a_transformed_tensor_changes_no_variable(tmp_path: Path) -> None:
    """A tensor with operations is read whole into a staging buffer before its variable is touched (torch too)."""
    source = Recording(open_source(write_source("safetensors", tmp_path, arrays())), fail_into="turned.weight")
    model = build_model()
    plan = mapper.make_plan(parse_rules(RULES, file="direct.toml"), source, model)
    before = values_of(model)

    with pytest.raises(PartialApplyError) as error:
        apply_plan(plan, source, target_from(model), rollback="off")

    assert list(error.value.assigned) == ["big/kernel"]  # before it in the plan
    assert "turned/kernel" in error.value.not_assigned and "holds part" not in str(error.value)
    np.testing.assert_array_equal(values_of(model)["turned/kernel"], before["turned/kernel"])


def test_staging_grows_and_is_reused() -> None:
    staging = Staging()
    first = staging.array((4,), "float32")
    small = staging.capacity
    second = staging.array((2,), "float64")
    assert staging.capacity == small and second.ctypes.data == first.ctypes.data
    staging.array((small,), "float32")
    assert staging.capacity >= small * 4


def test_staging_prepared_in_the_background_is_the_one_used() -> None:
    staging = Staging()
    staging.prepare(4 * 2**20)
    assert staging.capacity == 4 * 2**20  # waits for the mapping
    prepared = staging.array((1,), "uint8").ctypes.data
    staging.prepare(2**20)  # already holds that much: kept
    whole = staging.array((2**20,), "float32")
    assert whole.ctypes.data == prepared and whole.ctypes.data % 4096 == 0 and staging.capacity == 4 * 2**20


@pytest.mark.parametrize(
    ("shape", "operations"),
    [
        ((300, 500), [Transpose((1, 0))]),  # large: copied in tiles
        ((3, 5), [Transpose((1, 0))]),
        ((512, 768), [Transpose((1, 0)), Reshape((768, 8, 64))]),  # the reshape lands on the destination
        ((512, 768), [Transpose((1, 0)), Cast("float16"), Reshape((768, 512))]),
        ((64, 48), [Reshape((48, 64)), Transpose((1, 0))]),
        ((6, 4), [Cast("float16"), Cast("float32")]),  # rounds through float16
        ((40, 30), [Rearrange("(h d) c -> c h d", (("h", 4),))]),
    ],
)
def test_fused_into_gives_what_the_operations_give(shape: tuple[int, ...], operations: list[Any]) -> None:
    from mapper.ops import apply_numpy
    from mapper.plan import Assignment, RuleRef
    from mapper.run.values import fused_into

    member = np.random.default_rng(1).standard_normal(shape).astype("float32")
    expected_value = apply_numpy(operations, member)
    assignment = Assignment(
        "t",
        "t",
        "w",
        RuleRef("r.toml", 1),
        tuple(operations),
        shape,
        "float32",
        expected_value.shape,
        expected_value.dtype.name,
    )
    out = np.full(expected_value.shape, 7, expected_value.dtype)

    fused_into(member, assignment, out)

    np.testing.assert_array_equal(out, expected_value)
