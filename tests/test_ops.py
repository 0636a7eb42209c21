"""Tests for mapper.ops: one table row per operation kind, castable, shape inference, resolve_reshape and apply_numpy."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapper.dtypes import DTYPE_SIZES, KNOWN_DTYPES, castable, numpy_dtype
from mapper.errors import MapperError, OperationError
from mapper.ops import Cast, Reshape, Transpose, apply_numpy, infer_all, resolve_reshape
from mapper.rules import OPERATION_SPECS, NeedsTargetError, parse_rules, resolve_operations
from mapper.specs import TensorSpec

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


Spec = tuple[tuple[int, ...], str]  # shape and dtype


@dataclass(frozen=True)
class Row:
    """One operation kind: a rule file's spec for it, and what it makes of a small tensor."""

    key: str  # the operation's key in a rule file's ``ops``
    spec: str  # the TOML inline table, as a rule file writes it
    given: Spec
    expected: Spec
    described: str  # describe(), as reports show it
    numpy: Callable[[np.ndarray], np.ndarray]  # the same result, written in plain NumPy
    target: TensorSpec | None = None  # what ``"target"`` refers to; None: no model


F32 = "float32"
# Adding an operation: its class in mapper.ops, its spec in mapper.rules.operations, and a row here.
OPERATIONS = [
    Row("transpose", "{ transpose = [1, 0] }", ((2, 3), F32), ((3, 2), F32), "transpose[1, 0]", lambda a: a.T),
    Row("reshape", "{ reshape = [3, -1] }", ((2, 3), F32), ((3, 2), F32), "reshape[3, 2]", lambda a: a.reshape(3, 2)),
    Row("reshape", '{ reshape = "target" }', ((2, 3), F32), ((6,), F32), "reshape[6]", lambda a: a.reshape(6),
        target=TensorSpec("v", (6,), F32)),
    Row("cast", '{ cast = "float16" }', ((2, 3), F32), ((2, 3), "float16"), "cast[float16]",
        lambda a: a.astype("float16")),
    Row("cast", '{ cast = "target" }', ((2, 3), "int32"), ((2, 3), "float64"), "cast[float64]",
        lambda a: a.astype("float64"), target=TensorSpec("v", (2, 3), "float64")),
    Row("slice", '{ slice = "1, ::2" }', ((2, 3, 4), F32), ((2, 4), F32), "slice[1, ::2]", lambda a: a[1, ::2]),
    Row("rearrange", '{ rearrange = "(h d) c -> c h d", h = 2 }', ((4, 3), F32), ((3, 2, 2), F32),
        "rearrange[(h d) c -> c h d; h=2]", lambda a: a.reshape(2, 2, 3).transpose(2, 0, 1)),
]  # fmt: skip


@pytest.mark.parametrize("row", OPERATIONS, ids=[f"{row.key}-{row.spec}" for row in OPERATIONS])
def test_each_operation_from_rule_file_to_result(row: Row) -> None:
    rules = parse_rules(f'format = 1\n[[rules]]\nmatch = "w"\ntarget = "v"\nops = [{row.spec}]\n')
    (spec,) = rules.rules[0].ops
    assert isinstance(spec, OPERATION_SPECS[row.key])
    shape, dtype = row.given
    operations, *result_spec = resolve_operations([spec], shape, dtype, row.target)
    assert tuple(result_spec) == row.expected
    (operation,) = operations
    assert operation.infer(shape, dtype) == row.expected
    assert operation.describe() == row.described
    array = np.arange(math.prod(shape)).astype(dtype).reshape(shape)
    result = apply_numpy(operations, array)
    np.testing.assert_array_equal(result, row.numpy(array))
    assert (result.shape, str(result.dtype)) == row.expected


def test_the_table_has_a_row_for_every_operation_the_rules_accept() -> None:
    assert {row.key for row in OPERATIONS} == set(OPERATION_SPECS)


def test_the_readme_lists_exactly_the_operations_the_rules_accept() -> None:
    (bullet,) = re.findall(r"^- \*\*Operations\*\*.*?(?=^- |^$)", README, flags=re.MULTILINE | re.DOTALL)
    listed = re.findall(r"`\{ (\w+) = ", bullet)
    assert sorted(set(listed)) == sorted(OPERATION_SPECS)
    assert list(dict.fromkeys(listed)) == list(OPERATION_SPECS), "list them in the order the rules name them"


CASTS = [
    ("float32", "float32", True),
    ("float32", "bfloat16", True),
    ("bfloat16", "float32", True),
    ("float16", "float64", True),
    ("float32", "float8_e4m3fn", True),
    ("float32", "complex64", True),
    ("int64", "float32", True),
    ("int8", "int64", True),
    ("uint8", "int8", True),
    ("int32", "complex128", True),
    ("bool", "int32", True),
    ("bool", "float32", True),
    ("bool", "bool", True),
    ("string", "string", True),
    ("float32", "int32", False),
    ("bfloat16", "int8", False),
    ("float32", "bool", False),
    ("int32", "bool", False),
    ("bool", "complex64", False),
    ("complex64", "float32", False),
    ("complex64", "complex128", True),
    ("string", "float32", False),
    ("float32", "string", False),
    ("resource", "float32", False),
]


@pytest.mark.parametrize(
    ("source", "target", "allowed"), [pytest.param(*case, id=f"{case[0]}-{case[1]}") for case in CASTS]
)
def test_castable(source: str, target: str, allowed: bool) -> None:
    assert castable(source, target) is allowed
    if source in KNOWN_DTYPES and target in KNOWN_DTYPES:
        if allowed:
            assert Cast(target).infer((2, 3), source) == ((2, 3), target)
        else:
            with pytest.raises(OperationError) as caught:
                Cast(target).infer((2, 3), source)
            assert caught.value.operation == "cast"
            assert f"cannot cast {source} to {target}" in str(caught.value)


def test_every_known_dtype_casts_to_itself_and_has_a_size() -> None:
    assert frozenset(DTYPE_SIZES) == KNOWN_DTYPES
    for dtype in KNOWN_DTYPES:
        assert castable(dtype, dtype)
        assert numpy_dtype(dtype).itemsize == DTYPE_SIZES[dtype]


TRANSPOSES = [
    pytest.param((1, 0), (768, 3072), (3072, 768), id="matrix"),
    pytest.param((2, 3, 1, 0), (64, 3, 7, 5), (7, 5, 3, 64), id="conv-oihw-to-hwio"),
    pytest.param((0, 1), (2, 3), (2, 3), id="identity"),
    pytest.param((), (), (), id="scalar"),
    pytest.param((0,), (5,), (5,), id="vector"),
    pytest.param((1, 0), (0, 3), (3, 0), id="empty-axis"),
]


@pytest.mark.parametrize(("perm", "shape", "expected"), TRANSPOSES)
def test_transpose_infer(perm: tuple[int, ...], shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    assert Transpose(perm).infer(shape, "float16") == (expected, "float16")
    assert apply_numpy([Transpose(perm)], np.zeros(shape, "float32")).shape == expected


@pytest.mark.parametrize(
    ("perm", "shape", "fragments"),
    [
        pytest.param((1, 0), (2, 3, 4), ("transpose [1, 0]", "3 axes", "[2, 3, 4]", "[0, 1, 2]"), id="too-short"),
        pytest.param((2, 1, 0), (2, 3), ("transpose [2, 1, 0]", "2 axes", "[0, 1]"), id="too-long"),
        pytest.param((0, 0), (2, 3), ("transpose [0, 0]",), id="repeated-axis"),
        pytest.param((1, 2), (2, 3), ("transpose [1, 2]",), id="axis-out-of-range"),
        pytest.param((0,), (), ("0 axes", "[]"), id="scalar"),
    ],
)
def test_transpose_that_does_not_fit(perm: tuple[int, ...], shape: tuple[int, ...], fragments: tuple[str, ...]) -> None:
    with pytest.raises(OperationError) as caught:
        Transpose(perm).infer(shape, "float32")
    assert isinstance(caught.value, MapperError)
    assert caught.value.operation == "transpose"
    for fragment in fragments:
        assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("target", "shape", "ok"),
    [
        pytest.param((768, 12, 64), (768, 768), True, id="split-heads"),
        pytest.param((24,), (2, 3, 4), True, id="flatten"),
        pytest.param((1, 6), (6,), True, id="add-axis"),
        pytest.param((), (1, 1), True, id="to-scalar"),
        pytest.param((4,), (6,), False, id="fewer-elements"),
        pytest.param((5, 5), (6, 4), False, id="more-elements"),
    ],
)
def test_reshape_infer(target: tuple[int, ...], shape: tuple[int, ...], ok: bool) -> None:
    if ok:
        assert Reshape(target).infer(shape, "int8") == (target, "int8")
        return
    with pytest.raises(OperationError) as caught:
        Reshape(target).infer(shape, "int8")
    assert caught.value.operation == "reshape"
    assert f"({math.prod(shape)} elements)" in str(caught.value)
    assert f"({math.prod(target)} elements)" in str(caught.value)


@pytest.mark.parametrize(
    ("requested", "shape", "expected"),
    [
        pytest.param([768, -1, 64], (768, 768), (768, 12, 64), id="middle"),
        pytest.param([-1], (2, 3, 4), (24,), id="flatten"),
        pytest.param([-1, 4], (2, 3, 4), (6, 4), id="leading"),
        pytest.param([3, 4], (12,), (3, 4), id="no-unknown"),
        pytest.param([1, -1], (5,), (1, 5), id="add-axis"),
        pytest.param([], (1,), (), id="to-scalar"),
    ],
)
def test_resolve_reshape(requested: list[int], shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    before = list(requested)
    resolved = resolve_reshape(requested, shape)
    assert resolved == Reshape(expected)
    assert resolved.infer(shape, "float32") == (expected, "float32")
    assert requested == before


@pytest.mark.parametrize(
    ("requested", "shape", "fragments"),
    [
        pytest.param([-1, -1], (4,), ("at most one -1",), id="two-unknowns"),
        pytest.param([2, -2], (4,), ("dimensions must be positive",), id="negative"),
        pytest.param([0, 4], (4,), ("dimensions must be positive",), id="zero"),
        pytest.param([4, -1], (9,), ("[9] (9 elements)", "9 is not a multiple of 4"), id="not-a-multiple"),
        pytest.param([0, -1], (0, 3), ("[0, -1]",), id="zero-next-to-unknown"),
    ],
)
def test_resolve_reshape_errors(requested: list[int], shape: tuple[int, ...], fragments: tuple[str, ...]) -> None:
    with pytest.raises(OperationError) as caught:
        resolve_reshape(requested, shape)
    assert caught.value.operation == "reshape"
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_infer_all_chains_and_stops_at_the_first_misfit() -> None:
    operations: list[Transpose | Reshape | Cast] = [Transpose((1, 0)), Reshape((2, 3, 2)), Cast("bfloat16")]
    assert infer_all(operations, (6, 2), "float32") == ((2, 3, 2), "bfloat16")
    assert infer_all([], (6, 2), "float32") == ((6, 2), "float32")
    misfit: list[Transpose | Reshape | Cast] = [Cast("int32"), Transpose((1, 0))]
    with pytest.raises(OperationError) as caught:
        infer_all(misfit, (6, 2), "float32")
    assert caught.value.operation == "cast"


@pytest.mark.parametrize(
    ("operation", "text"),
    [
        pytest.param(Transpose((2, 3, 1, 0)), "transpose[2, 3, 1, 0]", id="transpose"),
        pytest.param(Reshape((768, 12, 64)), "reshape[768, 12, 64]", id="reshape"),
        pytest.param(Reshape(()), "reshape[]", id="reshape-scalar"),
        pytest.param(Cast("bfloat16"), "cast[bfloat16]", id="cast"),
    ],
)
def test_describe(operation: Transpose | Reshape | Cast, text: str) -> None:
    assert operation.describe() == text
    assert operation.kind == text.split("[")[0]


def test_apply_numpy_values_and_no_mutation() -> None:
    array = np.arange(12, dtype="float32").reshape(3, 4)
    original = array.copy()
    out = apply_numpy([Transpose((1, 0)), Reshape((2, 6)), Cast("float16")], array)
    np.testing.assert_array_equal(out, original.T.reshape(2, 6).astype("float16"))
    assert out.dtype == np.float16
    np.testing.assert_array_equal(array, original)
    assert array.dtype == np.float32
    assert apply_numpy([], array) is array


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_apply_numpy_casts_through_ml_dtypes(dtype: str) -> None:
    out = apply_numpy([Cast(dtype)], np.array([1.0, 2.0, 0.5], "float32"))
    assert out.dtype == np.dtype(getattr(ml_dtypes, dtype))
    np.testing.assert_array_equal(out.astype("float32"), [1.0, 2.0, 0.5])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("float32", np.dtype("float32")),
        ("int64", np.dtype("int64")),
        ("bool", np.dtype("bool")),
        ("complex64", np.dtype("complex64")),
        ("bfloat16", np.dtype(ml_dtypes.bfloat16)),
        ("float8_e4m3fn", np.dtype(ml_dtypes.float8_e4m3fn)),
    ],
)
def test_numpy_dtype(name: str, expected: np.dtype[Any]) -> None:
    assert numpy_dtype(name) == expected
    assert str(numpy_dtype(name)) == name


@st.composite
def _shape_and_operations(draw: st.DrawFn) -> tuple[tuple[int, ...], list[Transpose | Reshape | Cast]]:
    shape = tuple(draw(st.lists(st.integers(1, 4), max_size=4)))
    operations: list[Transpose | Reshape | Cast] = []
    current = shape
    for _ in range(draw(st.integers(0, 4))):
        choice = draw(st.sampled_from(["transpose", "reshape", "cast"]))
        if choice == "transpose":
            operation: Transpose | Reshape | Cast = Transpose(tuple(draw(st.permutations(range(len(current))))))
        elif choice == "reshape":
            # Split the element count into random factors, with a -1 resolved by resolve_reshape.
            total = math.prod(current)
            dims = [d for d in range(1, total + 1) if total % d == 0]
            first = draw(st.sampled_from(dims))
            operation = resolve_reshape([first, -1] if draw(st.booleans()) else [-1, first], current)
        else:
            operation = Cast(draw(st.sampled_from(["float32", "float64", "float16"])))
        current, _ = operation.infer(current, "float32")
        operations.append(operation)
    return shape, operations


@settings(max_examples=100, deadline=None)
@given(case=_shape_and_operations())
def test_inferred_shape_matches_numpy(case: tuple[tuple[int, ...], list[Transpose | Reshape | Cast]]) -> None:
    shape, operations = case
    array = np.arange(math.prod(shape), dtype="float32").reshape(shape)
    shape_after, dtype_after = infer_all(operations, shape, "float32")
    out = apply_numpy(operations, array)
    assert out.shape == shape_after
    assert str(out.dtype) == dtype_after
    # No element is lost or invented along the way.
    assert sorted(out.astype("float64").ravel().tolist()) == sorted(array.astype("float64").ravel().tolist())


def test_an_operation_that_needs_a_target_says_how_far_it_got() -> None:
    rules = parse_rules(
        'format = 1\n[[rules]]\nmatch = "w"\ntarget = "v"\nops = [{ transpose = [1, 0] }, { reshape = "target" }]\n'
    )
    with pytest.raises(NeedsTargetError) as caught:
        resolve_operations(rules.rules[0].ops, (2, 3), "float32", None)
    assert isinstance(caught.value, OperationError)
    assert (caught.value.shape, caught.value.dtype, caught.value.operation) == ((3, 2), "float32", "reshape")
