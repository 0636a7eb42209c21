"""Reusing a JAX value's memory (mapper/run/reuse.py): only when nothing else can see it; shards filled where they lie.

Runs under KERAS_BACKEND=jax only (the other backends never make a JaxSlot); the sharded case needs the 4 CPU
devices tests/conftest.py asks XLA for.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import mapper
from mapper.rules import parse_rules
from mapper.run.reuse import HostBuffers, host_view
from mapper.sources import open_source
from tests.backends.test_apply_keras import SHARD_RULES, _jax_devices, planned, shard_arrays, sharded_model
from tests.backends.test_direct import RULES, arrays, build_model, expected, write_source

pytestmark = [
    pytest.mark.backends,
    pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX backend only"),
]


def pointers(model: keras.Model) -> dict[str, list[int]]:
    """Each weight's buffer addresses, shard by shard (reading them makes no NumPy view, so no alias either)."""
    return {
        weight.path: [shard.data.unsafe_buffer_pointer() for shard in weight.value.addressable_shards]
        for weight in model.weights
    }


def port(tmp_path: Path, model: keras.Model, rules: str = RULES, **options: Any) -> dict[str, np.ndarray]:
    source_values = arrays()
    source = open_source(write_source("safetensors", tmp_path, source_values))
    mapper.apply(mapper.make_plan(parse_rules(rules, file="direct.toml"), source, model), source, model, **options)
    return expected(source_values)


def test_a_value_nothing_else_holds_is_filled_where_it_lies(tmp_path: Path) -> None:
    model = build_model()
    before = pointers(model)

    wanted = port(tmp_path, model)

    after = pointers(model)
    assert after["big/kernel"] == before["big/kernel"]  # a plain copy, read into the old value's memory
    assert after["turned/kernel"] == before["turned/kernel"]  # a transpose, fused into it
    for weight in model.weights:
        np.testing.assert_array_equal(weight.numpy(), wanted[weight.path], err_msg=weight.path)


def _held(weight: Any) -> Any:
    return weight.value  # the caller keeps the old jax.Array


def _aliased(weight: Any) -> Any:
    import jax

    value = weight.value
    return jax.make_array_from_single_device_arrays(value.shape, value.sharding, [value])  # a second array, one buffer


def _viewed(weight: Any) -> Any:
    return weight.numpy()  # JAX keeps a host view of the value, through an array of its own over the same buffer


@pytest.mark.parametrize("keep", [_held, _aliased, _viewed], ids=["held", "aliased", "viewed"])
def test_a_value_something_else_can_see_keeps_its_memory(tmp_path: Path, keep: Callable[[Any], Any]) -> None:
    model = build_model()
    big = next(weight for weight in model.weights if weight.path == "big/kernel")
    old = np.full(big.shape, 3.0, "float32")
    big.assign(old)  # known values, in a new array of JAX's own (reading them back would make a view: see _viewed)
    kept = keep(big)
    before = pointers(model)

    wanted = port(tmp_path, model)

    assert pointers(model)["big/kernel"] != before["big/kernel"]  # a new buffer: the kept one is not written
    np.testing.assert_array_equal(np.asarray(kept), old)
    np.testing.assert_array_equal(big.numpy(), wanted["big/kernel"])


def test_memory_mode_snapshots_keep_every_old_value(tmp_path: Path) -> None:
    model = build_model()
    before = pointers(model)

    port(tmp_path, model, rollback="memory")

    after = pointers(model)
    assert all(after[path] != before[path] for path in ("big/kernel", "turned/kernel"))


def test_a_sharded_value_is_given_new_shards_in_its_layout(tmp_path: Path) -> None:
    """Kernels split over 4 devices, 1 MiB each: JAX keeps an array per shard, so their memory is never alone."""
    _jax_devices()
    width = 2**16
    source_values = shard_arrays(width)
    source = open_source(write_source("safetensors", tmp_path, source_values))
    model = sharded_model(width)
    shardings = {weight.path: weight.value.sharding for weight in model.weights}
    before = pointers(model)

    mapper.apply(planned(source, model, SHARD_RULES), source, model)

    after = pointers(model)
    wanted = {"up/kernel": source_values["up.weight"].T, "down/kernel": source_values["down.weight"].T}
    for path in wanted:
        assert len(after[path]) == 4 and not set(after[path]) & set(before[path]), path
    for weight in model.weights:
        assert weight.value.sharding == shardings[weight.path]
        for shard in weight.value.addressable_shards:
            if weight.path in wanted:
                np.testing.assert_array_equal(np.asarray(shard.data), wanted[weight.path][shard.index])


def test_arrays_over_overlapping_host_memory_are_not_alone() -> None:
    import jax

    memory = np.frombuffer(mmap.mmap(-1, 2 * 4096), np.float32)
    first, overlapping = (jax.device_put(memory[start : start + 1024]) for start in (0, 512))
    # Adopted without a copy (the host memory is page-aligned), so they do overlap, by half.
    assert [first.unsafe_buffer_pointer(), overlapping.unsafe_buffer_pointer()] == [
        memory[start:].ctypes.data for start in (0, 512)
    ]

    buffers = HostBuffers()

    assert not buffers.alone(first) and not buffers.alone(overlapping)


def test_a_host_view_writes_the_array_and_keeps_its_buffer_alive() -> None:
    import jax.numpy as jnp

    array = jnp.zeros((4, 3), "float32") + 1
    view = host_view(array)
    assert view is not None
    pointer = array.unsafe_buffer_pointer()
    view[1] = 7
    assert np.asarray(array)[1].tolist() == [7.0, 7.0, 7.0]
    del array
    assert view.ctypes.data == pointer and view[1].tolist() == [7.0, 7.0, 7.0] and view[0].tolist() == [1.0, 1.0, 1.0]
