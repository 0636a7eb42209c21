"""Tests for mapper.specs: TensorSpec, format_shape, VariableMap and TargetMap."""

from __future__ import annotations

import dataclasses

import pytest

from mapper.specs import (
    CHECKPOINT_NAMESPACE,
    DTYPE_SIZES,
    NAMESPACES,
    PATH_NAMESPACE,
    TargetMap,
    TensorSpec,
    VariableMap,
    format_shape,
)


@pytest.mark.parametrize(
    ("shape", "dtype", "size", "nbytes"),
    [
        pytest.param((4, 3), "float32", 12, 48, id="matrix"),
        pytest.param((), "int64", 1, 8, id="scalar"),
        pytest.param((0, 5), "float32", 0, 0, id="empty"),
        pytest.param((2, 2), "bfloat16", 4, 8, id="bfloat16"),
        pytest.param((3,), "complex128", 3, 48, id="complex"),
        pytest.param((3,), "float8_e5m2", 3, 3, id="float8"),
        pytest.param((3,), "string", 3, 0, id="string-has-no-size"),
        pytest.param((3,), "resource", 3, 0, id="unknown-dtype"),
    ],
)
def test_tensor_spec_size_and_bytes(shape: tuple[int, ...], dtype: str, size: int, nbytes: int) -> None:
    spec = TensorSpec("x", shape, dtype)
    assert spec.size == size
    assert spec.nbytes == nbytes


def test_tensor_spec_is_frozen_and_compares_by_value() -> None:
    spec = TensorSpec("d/kernel", (2, 3), "float32")
    assert spec == TensorSpec("d/kernel", (2, 3), "float32")
    assert spec != TensorSpec("d/kernel", (3, 2), "float32")
    assert hash(spec) == hash(TensorSpec("d/kernel", (2, 3), "float32"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.shape = (1,)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("shape", "text"),
    [
        pytest.param((768, 12, 64), "[768, 12, 64]", id="rank-3"),
        pytest.param((), "[]", id="scalar"),
        pytest.param((5,), "[5]", id="vector"),
        pytest.param([2, 3], "[2, 3]", id="list"),
        pytest.param(None, "?", id="unknown"),
    ],
)
def test_format_shape(shape: tuple[int, ...] | None, text: str) -> None:
    assert format_shape(shape) == text


def test_dtype_sizes_are_whole_bytes() -> None:
    assert all(size in (1, 2, 4, 8, 16) for size in DTYPE_SIZES.values())
    assert DTYPE_SIZES["float32"] == 4
    assert DTYPE_SIZES["bfloat16"] == 2


SPECS = [TensorSpec("b/w", (2,), "float32"), TensorSpec("a/w", (3, 3), "int64"), TensorSpec("c", (), "string")]


def test_variable_map_is_an_ordered_read_only_mapping() -> None:
    items = list(SPECS)
    specs = VariableMap(items, description="ckpt")
    assert list(specs) == ["b/w", "a/w", "c"]  # insertion order, not sorted
    assert len(specs) == 3
    assert specs["a/w"] is SPECS[1]
    assert "c" in specs
    assert "x" not in specs
    assert specs.get("x") is None
    assert dict(specs) == {spec.name: spec for spec in SPECS}
    assert specs == {spec.name: spec for spec in SPECS}
    assert specs.description == "ckpt"
    assert specs.nbytes == 2 * 4 + 9 * 8 + 0
    assert repr(specs) == "VariableMap(3 variables, description='ckpt')"
    with pytest.raises(KeyError):
        specs["x"]
    with pytest.raises(TypeError):
        specs["x"] = SPECS[0]  # type: ignore[index]
    with pytest.raises(AttributeError):
        specs.other = 1  # type: ignore[attr-defined]
    assert items == SPECS  # its input is untouched


def test_variable_map_from_a_generator_and_empty() -> None:
    assert list(VariableMap(spec for spec in SPECS)) == ["b/w", "a/w", "c"]
    empty = VariableMap([])
    assert len(empty) == 0
    assert empty.description == ""
    assert empty.nbytes == 0


@pytest.mark.parametrize("description", ["checkpoint 'x'", ""])
def test_variable_map_rejects_duplicate_names(description: str) -> None:
    with pytest.raises(ValueError) as caught:
        VariableMap([*SPECS, TensorSpec("a/w", (1,), "float32")], description=description)
    assert "duplicate variable name 'a/w'" in str(caught.value)
    assert (description or "map") in str(caught.value)


KEYS = {
    "d1/kernel": "model/_operations/1/_kernel/.ATTRIBUTES/VARIABLE_VALUE",
    "d1/bias": "model/_operations/1/bias/.ATTRIBUTES/VARIABLE_VALUE",
}


def _target(**namespaces: dict[str, str]) -> TargetMap:
    return TargetMap(
        VariableMap(
            [
                TensorSpec("d1/kernel", (4, 3), "float32"),
                TensorSpec("d1/bias", (3,), "float32"),
                TensorSpec("seed", (2,), "int64"),  # has no checkpoint key
            ],
            description="model",
        ),
        namespaces,
    )


def test_target_map_path_namespace() -> None:
    target = _target()
    assert target.namespaces == (PATH_NAMESPACE,)
    assert target.names(PATH_NAMESPACE) == ["d1/kernel", "d1/bias", "seed"]
    assert target.lookup(PATH_NAMESPACE, "d1/bias") == TensorSpec("d1/bias", (3,), "float32")
    assert target.lookup(PATH_NAMESPACE, "nothing") is None
    assert target.key_of("d1/kernel", PATH_NAMESPACE) == "d1/kernel"
    assert target.key_of("nothing", PATH_NAMESPACE) is None


def test_target_map_checkpoint_namespace() -> None:
    target = _target(checkpoint=KEYS)
    assert target.namespaces == (PATH_NAMESPACE, CHECKPOINT_NAMESPACE) == NAMESPACES
    # In the target's order, leaving out variables without a key.
    assert target.names(CHECKPOINT_NAMESPACE) == [KEYS["d1/kernel"], KEYS["d1/bias"]]
    assert target.lookup(CHECKPOINT_NAMESPACE, KEYS["d1/kernel"]).name == "d1/kernel"  # type: ignore[union-attr]
    assert target.lookup(CHECKPOINT_NAMESPACE, "d1/kernel") is None  # a path is not a checkpoint key
    assert target.key_of("d1/bias", CHECKPOINT_NAMESPACE) == KEYS["d1/bias"]
    assert target.key_of("seed", CHECKPOINT_NAMESPACE) is None


def test_target_map_unknown_namespace_has_no_names() -> None:
    target = _target(checkpoint=KEYS)
    assert target.names("other") == []
    assert target.lookup("other", "d1/kernel") is None
    assert target.key_of("d1/kernel", "other") is None


def test_target_map_does_not_change_its_inputs_and_is_frozen() -> None:
    keys = {"checkpoint": dict(KEYS)}
    target = TargetMap(_target().variables, keys)
    assert keys == {"checkpoint": KEYS}
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.keys = {}  # type: ignore[misc]
    assert target == TargetMap(_target().variables, {"checkpoint": dict(KEYS)})


def test_path_listed_in_keys_is_not_repeated() -> None:
    target = _target(path={"d1/kernel": "d1/kernel"}, checkpoint=KEYS)
    assert target.namespaces == (PATH_NAMESPACE, CHECKPOINT_NAMESPACE)
