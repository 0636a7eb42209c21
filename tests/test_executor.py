"""Tests for mapper.run.executor: prechecks, batching, operations, rollback, init_from_checkpoint, distribution, graph mode."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from checkpoints import data_files, distinct_values, flip_bytes, functional_model, weights_of, write_keras_checkpoint

from mapper.dtypes import numpy_dtype
from mapper.errors import ApplyError, CorruptSourceError, PartialApplyError, PlanError, SourceError, TargetError
from mapper.ops import Cast, Operation, Reshape, Transpose, apply_numpy, infer_all
from mapper.plan import Assignment, Plan, Problem, ProblemKind, RuleRef, Severity
from mapper.run.batches import MAX_BATCH_TENSORS
from mapper.run.executor import ApplyResult, apply_plan, init_from_checkpoint_map
from mapper.run.values import NUMPY_OPS_MAX_BYTES
from mapper.sources.memory import MemorySource
from mapper.sources.tf_checkpoint import TFCheckpointSource
from mapper.specs import TargetMap, TensorSpec, VariableMap
from mapper.targets.base import VariableTarget
from mapper.targets.variables import target_from

pytestmark = pytest.mark.tf

RULE = RuleRef("test.toml", 1, "test")


# --- helpers --------------------------------------------------------------------------------------


def make_target(variables: Mapping[str, Any], description: str = "test model") -> VariableTarget:
    """A VariableTarget over tf.Variables (or Keras variables), named by the dict keys."""
    specs = [TensorSpec(name, tuple(v.shape), tf.as_dtype(v.dtype).name) for name, v in variables.items()]
    return VariableTarget(description, TargetMap(VariableMap(specs)), dict(variables))


def assignment(
    target: str, source: str, shape: Sequence[int], dtype: str = "float32", operations: Sequence[Operation] = ()
) -> Assignment:
    target_shape, target_dtype = infer_all(operations, tuple(shape), dtype)
    return Assignment(target, target, source, RULE, tuple(operations), tuple(shape), dtype, target_shape, target_dtype)


def make_plan(*assignments: Assignment, problems: Sequence[Problem] = ()) -> Plan:
    return Plan(("test.toml",), "source", "target", "path", assignments=assignments, problems=tuple(problems))


def identity_plan(source: Mapping[str, np.ndarray], names: Mapping[str, str] | None = None) -> Plan:
    """Source name -> target name (the same name unless ``names`` renames), no operations."""
    names = names or {name: name for name in source}
    return make_plan(*(assignment(names[s], s, a.shape, str(a.dtype)) for s, a in source.items() if s in names))


def values(target: VariableTarget) -> dict[str, np.ndarray]:
    return {name: np.array(v.numpy(), copy=True) for name, v in target.variables.items()}


def assert_values(target: VariableTarget, expected: Mapping[str, np.ndarray]) -> None:
    actual = values(target)
    assert actual.keys() == expected.keys()
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype, name
        np.testing.assert_array_equal(actual[name], array, err_msg=name)


def zeros_like(arrays: Mapping[str, np.ndarray], names: Mapping[str, str] | None = None) -> dict[str, tf.Variable]:
    names = names or {name: name for name in arrays}
    return {names[s]: tf.Variable(np.zeros_like(a)) for s, a in arrays.items() if s in names}


def arrays(
    count: int, shape: tuple[int, ...] = (16, 16), dtype: str = "float32", seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer_{i}/w": rng.standard_normal(shape).astype(dtype) for i in range(count)}


class CountingSource:
    """Wraps a real source and records each ``read`` (and ``verify``) call's names; optionally fails on one call."""

    def __init__(self, inner: Any, *, fail_on: int | None = None, error: BaseException | None = None) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []
        self.fail_on = fail_on
        self.error = error

    @property
    def description(self) -> str:
        return str(self.inner.description)

    def specs(self) -> VariableMap:
        return self.inner.specs()  # type: ignore[no-any-return]

    def read(self, names: Sequence[str]) -> Mapping[str, Any]:
        self._count(names)
        return self.inner.read(names)  # type: ignore[no-any-return]

    def _verify(self, names: Sequence[str]) -> None:
        self._count(names)
        self.inner.verify(names)

    def _count(self, names: Sequence[str]) -> None:
        self.calls.append(list(names))
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise self.error or RuntimeError("read failed")

    def __getattr__(self, name: str) -> Any:  # prefix, and verify (counted too), when the inner source has them
        if name == "verify" and hasattr(self.inner, "verify"):
            return self._verify
        return getattr(self.inner, name)


# --- operations -----------------------------------------------------------------------------------

OPERATION_CASES = [
    pytest.param((4, 6), "float32", (Transpose((1, 0)),), id="transpose"),
    pytest.param((8, 6), "float32", (Reshape((8, 2, 3)),), id="reshape"),
    pytest.param((8, 6), "float32", (Transpose((1, 0)), Reshape((6, 2, 4))), id="transpose-reshape"),
    pytest.param((5, 3, 2, 2), "float32", (Transpose((2, 3, 1, 0)),), id="conv-permute"),
    pytest.param((4, 6), "float32", (Cast("bfloat16"),), id="cast-bfloat16"),
    pytest.param((4, 6), "float32", (Cast("float16"), Transpose((1, 0))), id="cast-float16-transpose"),
    pytest.param((4, 6), "int64", (Cast("float32"),), id="cast-int64-float32"),
    pytest.param((4, 6), "int32", (Reshape((24,)), Cast("int64")), id="reshape-cast-int64"),
    pytest.param((6,), "float32", (), id="no-operations"),
    # Larger than NUMPY_OPS_MAX_BYTES: transformed while copied once into an aligned buffer TensorFlow adopts.
    pytest.param((160, 128), "float32", (Transpose((1, 0)),), id="large-transpose"),
    pytest.param((160, 128), "float32", (Transpose((1, 0)), Reshape((128, 4, 40))), id="large-transpose-reshape"),
    pytest.param((160, 128), "float32", (Cast("bfloat16"),), id="large-cast-bfloat16"),
    pytest.param((160, 128), "int64", (Cast("float32"), Reshape((20480,))), id="large-cast-reshape"),
]


def sample(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    rng = np.random.default_rng(math.prod(shape))
    if dtype.startswith("int"):
        return rng.integers(-1000, 1000, shape).astype(dtype)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def test_large_cases_exceed_numpy_threshold() -> None:
    assert 160 * 128 * 4 > NUMPY_OPS_MAX_BYTES > 8 * 6 * 8


@pytest.mark.parametrize(("shape", "dtype", "operations"), OPERATION_CASES)
def test_operations_give_the_numpy_computed_values_from_numpy_source(
    shape: tuple[int, ...], dtype: str, operations: tuple[Operation, ...]
) -> None:
    array = sample(shape, dtype)
    expected = apply_numpy(operations, array)
    plan = make_plan(assignment("v", "src", shape, dtype, operations))
    target = make_target({"v": tf.Variable(np.zeros_like(expected))})

    result = apply_plan(plan, MemorySource({"src": array}), target)

    assert_values(target, {"v": expected})
    assert result == ApplyResult(1, array.nbytes, 1, "assign", result.seconds)


def test_result_counts_each_source_tensor_once() -> None:
    source = MemorySource({"shared": np.arange(6, dtype="float32"), "other": np.ones(3, "int32")})
    plan = make_plan(
        assignment("a", "shared", (6,)),
        assignment("b", "shared", (6,), operations=(Reshape((2, 3)),)),
        assignment("c", "other", (3,), "int32"),
    )
    target = make_target(
        {
            "a": tf.Variable(np.zeros(6, "float32")),
            "b": tf.Variable(np.zeros((2, 3), "float32")),
            "c": tf.Variable([0, 0, 0]),
        }
    )

    result = apply_plan(plan, source, target, rollback="memory")

    assert (result.assigned, result.bytes_read, result.batches, result.method) == (3, 24 + 12, 1, "assign")
    assert source.reads == ["shared", "other"]
    assert_values(
        target,
        {
            "a": np.arange(6, dtype="float32"),
            "b": np.arange(6, dtype="float32").reshape(2, 3),
            "c": np.ones(3, "int32"),
        },
    )


# --- batching -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "budget", "expected"),
    [
        pytest.param([1024] * 6, 3000, [[0, 1], [2, 3], [4, 5]], id="two-per-batch"),
        pytest.param([1024] * 6, 3072, [[0, 1, 2], [3, 4, 5]], id="exact-fit"),
        pytest.param([1024] * 4, 1 << 30, [[0, 1, 2, 3]], id="one-batch"),
        pytest.param([512, 8192, 512, 512], 2048, [[0], [1], [2, 3]], id="large-tensor-alone"),
        pytest.param([8192, 512], 2048, [[0], [1]], id="large-tensor-first"),
        pytest.param([1024] * 3, 1, [[0], [1], [2]], id="tiny-budget"),
    ],
)
def test_batches_respect_batch_bytes(sizes: list[int], budget: int, expected: list[list[int]]) -> None:
    source_arrays = {f"t{i}": np.arange(size // 4, dtype="float32") + i for i, size in enumerate(sizes)}
    source = CountingSource(MemorySource(source_arrays))
    target = make_target(zeros_like(source_arrays))
    calls: list[tuple[int, int]] = []

    result = apply_plan(
        identity_plan(source_arrays),
        source,
        target,
        batch_bytes=budget,
        progress=lambda *a: calls.append(a),
        rollback="memory",
    )

    assert source.calls == [[f"t{i}" for i in batch] for batch in expected]
    for batch in source.calls:
        assert len(batch) == 1 or sum(source_arrays[name].nbytes for name in batch) <= budget
    assert result.batches == len(expected)
    done = list(np.cumsum([len(batch) for batch in expected]))
    assert calls == [(int(d), len(sizes)) for d in done]
    assert_values(target, source_arrays)


def test_batches_hold_at_most_max_tensors() -> None:
    source_arrays = arrays(MAX_BATCH_TENSORS + 5, shape=(2,))
    source = CountingSource(MemorySource(source_arrays))
    target = make_target(zeros_like(source_arrays))

    apply_plan(identity_plan(source_arrays), source, target, rollback="memory")

    assert [len(batch) for batch in source.calls] == [MAX_BATCH_TENSORS, 5]
    assert_values(target, source_arrays)


def test_only_planned_tensors_are_read() -> None:
    source_arrays = arrays(6)
    source = MemorySource(source_arrays)
    planned = {"layer_1/w": "a", "layer_4/w": "b"}
    target = make_target(zeros_like(source_arrays, planned))

    apply_plan(identity_plan(source_arrays, planned), source, target, rollback="memory")

    assert source.reads == ["layer_1/w", "layer_4/w"]
    assert_values(target, {"a": source_arrays["layer_1/w"], "b": source_arrays["layer_4/w"]})


def test_variables_outside_the_plan_are_left_alone() -> None:
    source_arrays = arrays(2)
    keep = tf.Variable(np.full((3,), 7.0, "float32"))
    target = make_target({**zeros_like(source_arrays), "kept": keep})

    apply_plan(identity_plan(source_arrays), MemorySource(source_arrays), target)

    assert_values(target, {**source_arrays, "kept": np.full((3,), 7.0, "float32")})


# --- prechecks: each error is raised before any variable changes ------------------------------------

BASE = {"a/w": np.arange(12, dtype="float32").reshape(3, 4), "b/w": np.arange(4, dtype="int32")}
BASE_TARGETS = {"a/kernel": ((4, 3), "float32"), "b/w": ((4,), "int32")}


def _error_problem(i: int) -> Problem:
    return Problem(ProblemKind.MISSING_TARGET, Severity.ERROR, f"no target 'missing_{i}'", RULE, (f"missing_{i}",))


def _base_assignments(
    *, last: Assignment | None = None, first_ops: tuple[Operation, ...] = (Transpose((1, 0)),)
) -> tuple[Assignment, ...]:
    first = assignment("a/kernel", "a/w", (3, 4), "float32", first_ops)
    return (first, last or assignment("b/w", "b/w", (4,), "int32"))


PRECHECK_CASES: list[Any] = [
    pytest.param(
        {"problems": [_error_problem(0)]},
        PlanError,
        ["1 error", "no target 'missing_0'"],
        id="plan-error",
    ),
    pytest.param(
        {"problems": [_error_problem(i) for i in range(8)]},
        PlanError,
        ["8 errors", "missing_4", "and 3 more"],
        id="plan-many-errors",
    ),
    pytest.param(
        {
            "assignments": _base_assignments(
                last=Assignment("b/w", "b/w", "b/w", RULE, (Reshape((2, 2)),), (4,), "int32", (4,), "int32")
            )
        },
        PlanError,
        ["'b/w' -> 'b/w'", "[2, 2] int32", "[4] int32", "plan again"],
        id="plan-inconsistent-shape",
    ),
    pytest.param(
        {
            "assignments": _base_assignments(
                last=Assignment("b/w", "b/w", "b/w", RULE, (Reshape((3,)),), (4,), "int32", (3,), "int32")
            )
        },
        PlanError,
        ["'b/w' -> 'b/w'", "cannot reshape [4]"],
        id="plan-bad-operation",
    ),
    pytest.param(
        {"assignments": _base_assignments(last=assignment("b/kernel", "b/w", (4,), "int32"))},
        TargetError,
        ["no variable 'b/kernel'", "'b/w'", "plan again"],
        id="target-missing",
    ),
    pytest.param(
        {"targets": {"b/w": ((5,), "int32")}},
        TargetError,
        ["'b/w'", "[5] int32", "[4] int32", "model changed"],
        id="target-shape-changed",
    ),
    pytest.param(
        {"targets": {"b/w": ((4,), "int64")}},
        TargetError,
        ["'b/w'", "[4] int64", "[4] int32"],
        id="target-dtype-changed",
    ),
    pytest.param(
        {"target_objects": {"b/w": np.zeros(4, "int32")}},
        TargetError,
        ["'b/w'", "ndarray", "not a keras.Variable of the active Keras backend (tensorflow) or a tf.Variable"],
        id="target-not-a-variable",
    ),
    pytest.param(
        {"assignments": _base_assignments(last=assignment("b/w", "b/x", (4,), "int32"))},
        SourceError,
        ["no tensor 'b/x'", "closest names: 'b/w'", "plan again"],
        id="source-missing",
    ),
    pytest.param(
        {"source": {**BASE, "b/w": np.arange(5, dtype="int32")}},
        SourceError,
        ["'b/w'", "[5] int32", "[4] int32", "source changed"],
        id="source-shape-changed",
    ),
    pytest.param(
        {"source": {**BASE, "b/w": np.arange(4, dtype="int64")}},
        SourceError,
        ["'b/w'", "[4] int64", "[4] int32"],
        id="source-dtype-changed",
    ),
    pytest.param(
        {"method": "init_from_checkpoint"},
        ApplyError,
        ["cannot transform", "'a/w' -> 'a/kernel' via transpose[1, 0]", "method='assign'"],
        id="init-from-checkpoint-with-operations",
    ),
    pytest.param(
        {"method": "init_from_checkpoint", "first_ops": (), "targets": {"a/kernel": ((3, 4), "float32")}},
        ApplyError,
        ["MemorySource", "no checkpoint prefix", "method='assign'"],
        id="init-from-checkpoint-not-a-checkpoint",
    ),
    pytest.param({"method": "restore"}, ApplyError, ["unknown method 'restore'", "'assign'"], id="unknown-method"),
    pytest.param({"batch_bytes": 0}, ApplyError, ["batch_bytes", "0"], id="zero-batch-bytes"),
]


@pytest.mark.parametrize(("case", "error", "fragments"), PRECHECK_CASES)
def test_precheck_errors_change_nothing(case: dict[str, Any], error: type[Exception], fragments: list[str]) -> None:
    source = MemorySource(case.get("source", BASE), description="ckpt-memory")
    variables: dict[str, Any] = {
        name: tf.Variable(np.full(shape, 5, dtype))
        for name, (shape, dtype) in {**BASE_TARGETS, **case.get("targets", {})}.items()
    }
    variables.update(case.get("target_objects", {}))
    target = VariableTarget("test model", TargetMap(VariableMap([])), variables)
    assignments = case.get("assignments") or _base_assignments(first_ops=case.get("first_ops", (Transpose((1, 0)),)))
    plan = make_plan(*assignments, problems=case.get("problems", ()))
    before = {name: v.numpy().copy() for name, v in variables.items() if isinstance(v, tf.Variable)}

    with pytest.raises(error) as raised:
        apply_plan(plan, source, target, method=case.get("method", "assign"), batch_bytes=case.get("batch_bytes", 1024))

    for fragment in fragments:
        assert fragment in str(raised.value)
    assert source.reads == []
    for name, array in before.items():
        np.testing.assert_array_equal(variables[name].numpy(), array)
    if error is PlanError and case.get("problems"):
        assert isinstance(raised.value, PlanError)
        assert raised.value.problems == tuple(case["problems"])


def test_precheck_happy_path_of_the_table_applies() -> None:
    """The table's base case is valid, so each case above fails only for the reason it names."""
    variables = {name: tf.Variable(np.full(shape, 5, dtype)) for name, (shape, dtype) in BASE_TARGETS.items()}
    target = VariableTarget("test model", TargetMap(VariableMap([])), variables)

    apply_plan(make_plan(*_base_assignments()), MemorySource(BASE), target, batch_bytes=1024)

    np.testing.assert_array_equal(variables["a/kernel"].numpy(), BASE["a/w"].T)
    np.testing.assert_array_equal(variables["b/w"].numpy(), BASE["b/w"])


# --- rollback -------------------------------------------------------------------------------------


def test_old_values_stay_valid_after_the_variable_changes() -> None:
    """The executor keeps previous values by holding a read tensor, no copy: TF variables are copy-on-write."""
    variable = tf.Variable(np.arange(6, dtype="float32").reshape(2, 3))
    held = tf.raw_ops.ReadVariableOp(resource=variable.handle, dtype=variable.dtype)

    tf.raw_ops.AssignVariableOp(resource=variable.handle, value=tf.fill((2, 3), 5.0), validate_shape=True)
    variable.assign_add(tf.ones((2, 3)), read_value=False)
    variable.scatter_nd_update([[0, 0]], [99.0])
    variable.assign(tf.zeros((2, 3)), read_value=False)

    np.testing.assert_array_equal(held.numpy(), np.arange(6, dtype="float32").reshape(2, 3))
    np.testing.assert_array_equal(variable.numpy(), np.zeros((2, 3), "float32"))


def test_old_values_of_keras_variables_stay_valid() -> None:
    layer = keras.layers.Dense(3)
    layer.build((None, 2))
    before = layer.kernel.numpy().copy()
    held = tf.raw_ops.ReadVariableOp(resource=layer.kernel.value.handle, dtype=tf.float32)

    layer.kernel.assign(np.ones((2, 3), "float32"))
    layer.kernel.value.assign_add(tf.ones((2, 3)))

    np.testing.assert_array_equal(held.numpy(), before)


@pytest.mark.parametrize(
    ("make_error", "raised"),
    [
        pytest.param(lambda: SourceError("network dropped", path="remote"), ApplyError, id="source-error"),
        pytest.param(lambda: MemoryError("out of memory"), ApplyError, id="memory-error"),
        pytest.param(KeyboardInterrupt, KeyboardInterrupt, id="keyboard-interrupt"),
    ],
)
def test_failure_in_a_later_batch_restores_earlier_batches(
    make_error: Callable[[], BaseException], raised: type[BaseException]
) -> None:
    source_arrays = arrays(6, shape=(8, 8))
    source = CountingSource(MemorySource(source_arrays), fail_on=3, error=make_error())
    target = make_target(zeros_like(source_arrays))
    before = values(target)

    with pytest.raises(raised) as error:
        apply_plan(identity_plan(source_arrays), source, target, batch_bytes=2 * 256, rollback="memory")

    assert len(source.calls) == 3
    assert_values(target, before)
    if raised is ApplyError:
        message = str(error.value)
        assert "reading batch 3 of 3" in message
        assert "'layer_4/w'" in message
        assert "4 variables assigned before the failure were restored" in message
        assert error.value.__cause__ is source.error


def test_failure_in_the_first_read_says_nothing_was_assigned() -> None:
    source_arrays = arrays(2)
    source = CountingSource(MemorySource(source_arrays), fail_on=1, error=SourceError("disk gone", path="x"))
    target = make_target(zeros_like(source_arrays))

    with pytest.raises(ApplyError, match="no variable had been assigned yet"):
        apply_plan(identity_plan(source_arrays), source, target, rollback=False)

    assert_values(target, {name: np.zeros_like(a) for name, a in source_arrays.items()})


def test_failing_progress_callback_is_rolled_back() -> None:
    source_arrays = arrays(4, shape=(4,))
    target = make_target(zeros_like(source_arrays))
    before = values(target)

    def progress(done: int, total: int) -> None:
        if done == total:
            raise ValueError("progress bar closed")

    with pytest.raises(ApplyError, match="reporting progress after batch 2 of 2") as error:
        apply_plan(
            identity_plan(source_arrays),
            MemorySource(source_arrays),
            target,
            batch_bytes=32,
            progress=progress,
            rollback="memory",
        )

    assert isinstance(error.value.__cause__, ValueError)
    assert_values(target, before)


class LyingSource(MemorySource):
    """A source whose data for 'layer_1/w' is flat, unlike its specs; as NumPy or as a tf.Tensor."""

    def __init__(self, arrays_by_name: Mapping[str, np.ndarray], *, as_tensor: bool) -> None:
        super().__init__(arrays_by_name, description="lying")
        self.as_tensor = as_tensor

    def read(self, names: Sequence[str]) -> dict[str, Any]:
        read = {name: a.reshape(-1) if name == "layer_1/w" else a for name, a in super().read(names).items()}
        return {name: tf.constant(a) for name, a in read.items()} if self.as_tensor else read


@pytest.mark.parametrize(
    ("as_tensor", "operations", "expected"),
    [
        pytest.param(False, (), r"reading 'layer_1/w' from lying gave \[4\] float32, not the \[2, 2\]", id="numpy"),
        pytest.param(
            False, (Transpose((1, 0)),), r"reading 'layer_1/w' from lying gave \[4\] float32", id="numpy-transpose"
        ),
        pytest.param(True, (), r"assigning 'layer_1/w'.*wrong shape", id="tensor"),
        pytest.param(True, (Reshape((4,)),), r"reading 'layer_1/w' from lying gave \[4\] float32", id="tensor-reshape"),
    ],
)
def test_source_that_returns_other_data_than_its_specs_is_rolled_back(
    as_tensor: bool, operations: tuple[Operation, ...], expected: str
) -> None:
    source_arrays = arrays(3, shape=(2, 2))
    plan = make_plan(*(assignment(name, name, (2, 2), operations=operations) for name in source_arrays))
    shape = infer_all(operations, (2, 2), "float32")[0]
    target = make_target({name: tf.Variable(np.zeros(shape, "float32")) for name in source_arrays})
    before = values(target)

    with pytest.raises(ApplyError, match=expected) as raised:
        apply_plan(plan, LyingSource(source_arrays, as_tensor=as_tensor), target, batch_bytes=16, rollback="memory")

    assert "the 1 variable assigned before the failure was restored" in str(raised.value)
    assert_values(target, before)


def test_rollback_false_leaves_earlier_batches_assigned_and_says_so() -> None:
    source_arrays = arrays(4, shape=(4,))
    source = CountingSource(MemorySource(source_arrays), fail_on=2, error=SourceError("gone", path="x"))
    target = make_target(zeros_like(source_arrays))

    with pytest.raises(PartialApplyError, match="with rollback='off' nothing is restored") as error:
        apply_plan(identity_plan(source_arrays), source, target, batch_bytes=32, rollback=False)

    assert "test model is partly assigned: 2 of 4 variables have their new values" in str(error.value)
    assert error.value.assigned == ("layer_0/w", "layer_1/w")
    assert error.value.not_assigned == ("layer_2/w", "layer_3/w")
    after = values(target)
    for name in ["layer_0/w", "layer_1/w"]:
        np.testing.assert_array_equal(after[name], source_arrays[name])
    for name in ["layer_2/w", "layer_3/w"]:
        np.testing.assert_array_equal(after[name], np.zeros(4, "float32"))


# --- Keras 3 variables ----------------------------------------------------------------------------


def test_keras_variables_are_assigned_through_their_tf_variable() -> None:
    model = functional_model()
    target = target_from(model)
    source_arrays = {
        f"src/{name}": np.full(v.shape, i, "float32") for i, (name, v) in enumerate(target.variables.items())
    }
    plan = identity_plan(source_arrays, {f"src/{name}": name for name in target.variables})

    apply_plan(plan, MemorySource(source_arrays), target)

    for name, variable in target.variables.items():
        np.testing.assert_array_equal(variable.numpy(), source_arrays[f"src/{name}"])


# --- tf.distribute.MirroredStrategy ---------------------------------------------------------------


@pytest.fixture
def strategy() -> tf.distribute.MirroredStrategy:
    devices = [device.name for device in tf.config.list_logical_devices("CPU")]
    if len(devices) < 2:
        pytest.fail(
            f"MirroredStrategy tests need two logical CPU devices, found {devices}: tests/conftest.py configures "
            "them after collection, so no test module may run TensorFlow ops at import time"
        )
    return tf.distribute.MirroredStrategy(devices[:2])


def replica_values(variable: Any, strategy: tf.distribute.Strategy) -> list[np.ndarray]:
    inner = variable.value if isinstance(variable, keras.Variable) else variable
    return [np.asarray(v.numpy()) for v in strategy.experimental_local_results(inner)]


def test_mirrored_assign_sets_every_replica(strategy: tf.distribute.MirroredStrategy) -> None:
    with strategy.scope():
        model = functional_model()
    target = target_from(model)
    # Every variable from "src/<path>"; the head's kernel stored transposed, to cover operations too.
    transposed = {name: name.endswith("head/kernel") for name in target.variables}
    source_arrays = {
        f"src/{name}": sample(tuple(v.shape)[::-1] if transposed[name] else tuple(v.shape), "float32")
        for name, v in target.variables.items()
    }
    plan = make_plan(
        *(
            assignment(name, f"src/{name}", source_arrays[f"src/{name}"].shape, operations=(Transpose((1, 0)),))
            if transposed[name]
            else assignment(name, f"src/{name}", source_arrays[f"src/{name}"].shape)
            for name in target.variables
        )
    )
    assert sum(transposed.values()) == 1

    apply_plan(plan, MemorySource(source_arrays), target, batch_bytes=64)

    for name, variable in target.variables.items():
        expected = source_arrays[f"src/{name}"].T if transposed[name] else source_arrays[f"src/{name}"]
        replicas = replica_values(variable, strategy)
        assert len(replicas) == 2
        for replica in replicas:
            np.testing.assert_array_equal(replica, expected, err_msg=name)


def test_mirrored_rollback_restores_every_replica(strategy: tf.distribute.MirroredStrategy) -> None:
    with strategy.scope():
        model = functional_model()
    target = target_from(model)
    before = {name: replica_values(v, strategy) for name, v in target.variables.items()}
    source_arrays = {name: np.full(v.shape, 3.0, "float32") for name, v in target.variables.items()}
    source = CountingSource(MemorySource(source_arrays), fail_on=3, error=SourceError("gone", path="x"))

    with pytest.raises(ApplyError, match="restored"):
        apply_plan(identity_plan(source_arrays), source, target, batch_bytes=8, rollback="memory")

    for name, variable in target.variables.items():
        for replica, old in zip(replica_values(variable, strategy), before[name], strict=True):
            np.testing.assert_array_equal(replica, old, err_msg=name)


# --- TensorFlow checkpoints -----------------------------------------------------------------------


def write_checkpoint(directory: Path, arrays_by_name: Mapping[str, np.ndarray], name: str = "ckpt") -> str:
    """A name-based checkpoint holding exactly ``arrays_by_name`` under those keys, written by SaveV2."""
    prefix = str(directory / name)
    names = list(arrays_by_name)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(arrays_by_name[n]) for n in names],
    )
    return prefix


def checkpoint_plan(target: VariableTarget, source: TFCheckpointSource) -> Plan:
    """Every target variable from the checkpoint key it would have: a renaming plan without operations."""
    specs = source.specs()
    found = []
    for name, spec in target.map.variables.items():
        key = target.map.key_of(name, "checkpoint")
        assert key is not None, name
        found.append(Assignment(name, key, key, RULE, (), specs[key].shape, specs[key].dtype, spec.shape, spec.dtype))
    return make_plan(*found)


@pytest.mark.parametrize(("shape", "dtype", "operations"), OPERATION_CASES)
def test_operations_give_the_numpy_computed_values_from_checkpoint(
    tmp_path: Path, shape: tuple[int, ...], dtype: str, operations: tuple[Operation, ...]
) -> None:
    array = sample(shape, dtype)
    expected = apply_numpy(operations, array)
    source = TFCheckpointSource(write_checkpoint(tmp_path, {"enc/src": array}))
    target = make_target({"v": tf.Variable(np.zeros_like(expected))})

    apply_plan(make_plan(assignment("v", "enc/src", shape, dtype, operations)), source, target)

    assert_values(target, {"v": expected})


def test_bfloat16_checkpoint_tensors_cast_to_float32(tmp_path: Path) -> None:
    array = sample((4, 6), "float32").astype(numpy_dtype("bfloat16"))
    source = TFCheckpointSource(write_checkpoint(tmp_path, {"w": array}))
    target = make_target({"v": tf.Variable(np.zeros((6, 4), "float32"))})
    operations = (Cast("float32"), Transpose((1, 0)))

    apply_plan(make_plan(assignment("v", "w", (4, 6), "bfloat16", operations)), source, target)

    assert_values(target, {"v": apply_numpy(operations, array)})


def test_assign_and_init_from_checkpoint_give_identical_keras_variables(tmp_path: Path) -> None:
    original = functional_model()
    distinct_values(original.weights)
    prefix, stored = write_keras_checkpoint(original, tmp_path)
    source = TFCheckpointSource(prefix)
    restored: dict[str, list[np.ndarray]] = {}
    for method in ("assign", "init_from_checkpoint"):
        model = functional_model()
        target = target_from(model)
        plan = checkpoint_plan(target, source)
        assert plan.source_bytes > 0 and not plan.has_operations

        result = apply_plan(plan, source, target, method=method)

        assert (result.assigned, result.bytes_read, result.method) == (8, plan.source_bytes, method)
        restored[method] = [np.array(v.numpy(), copy=True) for v in model.weights]
    for assigned, initialised, expected in zip(
        restored["assign"], restored["init_from_checkpoint"], weights_of(original), strict=True
    ):
        np.testing.assert_array_equal(assigned, expected)
        np.testing.assert_array_equal(initialised, expected)
    assert len(stored) == 8


def test_checkpoint_reads_one_restore_per_batch_and_only_planned_tensors(tmp_path: Path) -> None:
    source_arrays = arrays(7, shape=(8, 8))  # 256 bytes each
    source_arrays["unused/w"] = np.ones((1000,), "float32")
    source = CountingSource(TFCheckpointSource(write_checkpoint(tmp_path, source_arrays)))
    planned = {name: name for name in source_arrays if name != "unused/w"}
    target = make_target(zeros_like(source_arrays, planned))

    result = apply_plan(identity_plan(source_arrays, planned), source, target, batch_bytes=3 * 256, rollback="memory")

    assert [len(call) for call in source.calls] == [3, 3, 1]
    assert [name for call in source.calls for name in call] == list(planned)
    assert result.batches == 3
    assert result.bytes_read == 7 * 256
    assert_values(target, {name: source_arrays[name] for name in planned})


def test_one_checkpoint_tensor_feeds_several_variables(tmp_path: Path) -> None:
    shared = sample((3, 4), "float32")
    source = TFCheckpointSource(write_checkpoint(tmp_path, {"shared": shared}))
    for method in ("assign", "init_from_checkpoint"):
        target = make_target(
            {"a": tf.Variable(np.zeros((3, 4), "float32")), "b": tf.Variable(np.zeros((3, 4), "float32"))}
        )
        plan = make_plan(assignment("a", "shared", (3, 4)), assignment("b", "shared", (3, 4)))
        mapping = init_from_checkpoint_map(plan, target)
        assert mapping == [("shared", target.variables["a"]), ("shared", target.variables["b"])]

        apply_plan(plan, source, target, method=method)

        assert_values(target, {"a": shared, "b": shared})


def test_init_from_checkpoint_map_unwraps_keras_variables() -> None:
    model = functional_model()
    target = target_from(model)
    plan = make_plan(*(assignment(name, f"ckpt/{name}", spec.shape) for name, spec in target.map.variables.items()))

    mapping = init_from_checkpoint_map(plan, target)

    assert isinstance(mapping, dict)
    assert list(mapping) == [f"ckpt/{name}" for name in target.map.variables]
    for name, variable in target.variables.items():
        assert mapping[f"ckpt/{name}"] is variable.value
        assert isinstance(mapping[f"ckpt/{name}"], tf.Variable)


def test_init_from_checkpoint_map_refuses_operations() -> None:
    target = make_target({"v": tf.Variable(np.zeros((3, 2), "float32"))})
    plan = make_plan(assignment("v", "w", (2, 3), operations=(Transpose((1, 0)),)))

    with pytest.raises(ApplyError, match=r"'w' -> 'v' via transpose\[1, 0\].*method='assign'"):
        init_from_checkpoint_map(plan, target)


# --- rollback after a real read failure: a corrupted tensor in the second batch ------------------------


def corrupted_checkpoint(
    directory: Path, count: int = 6, corrupt: str = "layer_3/w"
) -> tuple[str, dict[str, np.ndarray]]:
    """A checkpoint of ``count`` [8, 8] float32 tensors with bytes flipped inside ``corrupt``'s data."""
    source_arrays = arrays(count, shape=(8, 8), seed=3)
    prefix = write_checkpoint(directory, source_arrays)
    (data_file,) = data_files(prefix)
    offset = data_file.read_bytes().find(source_arrays[corrupt].tobytes())
    assert offset >= 0
    flip_bytes(data_file, offset + 100)
    return prefix, source_arrays


@pytest.mark.parametrize("method", ["assign", "init_from_checkpoint"])
def test_verify_finds_a_corrupted_tensor_before_the_first_assignment(tmp_path: Path, method: str) -> None:
    """The default: the crc32c mismatch in batch 2 is found by the verify pass; no assignment pass is started."""
    prefix, source_arrays = corrupted_checkpoint(tmp_path)
    source = CountingSource(TFCheckpointSource(prefix))
    target = make_target(zeros_like(source_arrays))
    before = values(target)

    with pytest.raises(ApplyError, match="verifying the source: reading batch 2 of 3") as raised:
        apply_plan(identity_plan(source_arrays), source, target, method=method, batch_bytes=2 * 256)

    assert type(raised.value) is ApplyError
    assert isinstance(raised.value.__cause__, CorruptSourceError)
    assert "no variable had been assigned yet" in str(raised.value)
    # Batches are verified two at a time, so the third may have been checked alongside; none was read twice (no
    # assignment pass started).
    first_two = [["layer_0/w", "layer_1/w"], ["layer_2/w", "layer_3/w"]]
    assert sorted(source.calls) in (first_two, [*first_two, ["layer_4/w", "layer_5/w"]])
    assert_values(target, before)


def test_verify_reports_the_first_damaged_batch_in_order_though_batches_are_checked_at_once(tmp_path: Path) -> None:
    """Batches are verified two at a time; with batches 2 and 3 damaged, batch 2 is the one named, every time."""
    prefix, source_arrays = corrupted_checkpoint(tmp_path, count=6, corrupt="layer_2/w")
    (data_file,) = data_files(prefix)
    flip_bytes(data_file, data_file.read_bytes().find(source_arrays["layer_5/w"].tobytes()) + 100)
    target = make_target(zeros_like(source_arrays))
    before = values(target)

    for _ in range(5):
        with pytest.raises(ApplyError, match="verifying the source: reading batch 2 of 3") as raised:
            apply_plan(identity_plan(source_arrays), TFCheckpointSource(prefix), target, batch_bytes=2 * 256)
        assert "'layer_2/w'" in str(raised.value.__cause__) and "layer_5" not in str(raised.value.__cause__)
    assert_values(target, before)


def test_verify_then_a_failing_assignment_pass_names_what_was_assigned() -> None:
    """A read that fails only in the assignment pass (the source changed after the verify pass): partly assigned."""
    source_arrays = arrays(6, shape=(8, 8))
    source = CountingSource(MemorySource(source_arrays), fail_on=3 + 2, error=SourceError("gone", path="x"))
    target = make_target(zeros_like(source_arrays))

    with pytest.raises(PartialApplyError, match="verified before the first assignment") as raised:
        apply_plan(identity_plan(source_arrays), source, target, batch_bytes=2 * 256)

    assert raised.value.assigned == ("layer_0/w", "layer_1/w")
    assert raised.value.not_assigned == tuple(f"layer_{i}/w" for i in range(2, 6))
    assert "2 of 6 variables have their new values ('layer_{0,1}/w')" in str(raised.value)
    after = values(target)
    for name in raised.value.assigned:
        np.testing.assert_array_equal(after[name], source_arrays[name])
    for name in raised.value.not_assigned:
        np.testing.assert_array_equal(after[name], np.zeros((8, 8), "float32"))


@pytest.mark.parametrize("method", ["assign", "init_from_checkpoint"])
def test_corrupted_tensor_in_second_batch_rolls_back_the_first(tmp_path: Path, method: str) -> None:
    prefix, source_arrays = corrupted_checkpoint(tmp_path)
    source = TFCheckpointSource(prefix)
    target = make_target(zeros_like(source_arrays))
    for index, variable in enumerate(target.variables.values()):
        variable.assign(np.full((8, 8), -index, "float32"))
    before = values(target)

    with pytest.raises(ApplyError) as raised:
        apply_plan(identity_plan(source_arrays), source, target, method=method, batch_bytes=2 * 256, rollback="memory")

    message = str(raised.value)
    assert "batch 2 of 3" in message
    assert "'layer_3/w'" in message
    assert "2 variables assigned before the failure" in message
    assert "restored to their previous values" in message
    assert isinstance(raised.value.__cause__, (CorruptSourceError, tf.errors.DataLossError))
    assert_values(target, before)


def test_corrupted_tensor_without_rollback_leaves_the_first_batch_assigned(tmp_path: Path) -> None:
    prefix, source_arrays = corrupted_checkpoint(tmp_path)
    target = make_target(zeros_like(source_arrays))

    with pytest.raises(PartialApplyError, match="is partly assigned") as raised:
        apply_plan(
            identity_plan(source_arrays), TFCheckpointSource(prefix), target, batch_bytes=2 * 256, rollback=False
        )

    assert isinstance(raised.value.__cause__, CorruptSourceError)
    after = values(target)
    for name in ["layer_0/w", "layer_1/w"]:
        np.testing.assert_array_equal(after[name], source_arrays[name])
    for name in ["layer_2/w", "layer_3/w", "layer_4/w", "layer_5/w"]:
        np.testing.assert_array_equal(after[name], np.zeros((8, 8), "float32"))


# --- distribution and graph mode with checkpoints -------------------------------------------------


@pytest.mark.parametrize("method", ["assign", "init_from_checkpoint"])
def test_mirrored_keras_model_from_checkpoint(
    tmp_path: Path, strategy: tf.distribute.MirroredStrategy, method: str
) -> None:
    original = functional_model()
    distinct_values(original.weights)
    prefix, stored = write_keras_checkpoint(original, tmp_path)
    with strategy.scope():
        model = functional_model()
    target = target_from(model)
    source = TFCheckpointSource(prefix)

    apply_plan(checkpoint_plan(target, source), source, target, method=method, batch_bytes=32)

    for name, variable in target.variables.items():
        expected = stored[target.map.key_of(name, "checkpoint") or ""]
        replicas = replica_values(variable, strategy)
        assert len(replicas) == 2
        for replica in replicas:
            np.testing.assert_array_equal(replica, expected, err_msg=name)


@pytest.mark.parametrize("use_resource", [True, False], ids=["resource-variables", "reference-variables"])
def test_graph_mode_init_from_checkpoint_sets_initializers(tmp_path: Path, use_resource: bool) -> None:
    source_arrays = {"bert/dense/kernel": sample((3, 4), "float32"), "bert/dense/bias": sample((4,), "float32")}
    source = TFCheckpointSource(write_checkpoint(tmp_path, source_arrays))
    renames = {"bert/dense/kernel": "model/kernel", "bert/dense/bias": "model/bias"}
    graph = tf.Graph()
    with graph.as_default():
        variables = {
            target: tf.compat.v1.get_variable(
                target,
                shape=source_arrays[name].shape,
                initializer=tf.zeros_initializer(),
                use_resource=use_resource,
            )
            for name, target in renames.items()
        }
        target = make_target(variables, description="graph")
        plan = identity_plan(source_arrays, renames)
        with pytest.raises(ApplyError, match="needs eager execution"):
            apply_plan(plan, source, target)

        result = apply_plan(plan, source, target, method="init_from_checkpoint")

        init = tf.compat.v1.global_variables_initializer()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(init)
            got = session.run(variables)
    assert result.assigned == 2
    for name, target_name in renames.items():
        np.testing.assert_array_equal(got[target_name], source_arrays[name])


def test_graph_mode_init_from_checkpoint_map(tmp_path: Path) -> None:
    source_arrays = {"old/w": sample((2, 5), "float32")}
    prefix = write_checkpoint(tmp_path, source_arrays)
    graph = tf.Graph()
    with graph.as_default():
        variable = tf.compat.v1.get_variable("new/w", shape=(2, 5), initializer=tf.zeros_initializer())
        target = make_target({"new/w": variable})
        mapping = init_from_checkpoint_map(identity_plan(source_arrays, {"old/w": "new/w"}), target)
        assert mapping == {"old/w": variable}

        tf.compat.v1.train.init_from_checkpoint(prefix, mapping)

        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            np.testing.assert_array_equal(session.run(variable), source_arrays["old/w"])


# --- porting operations: split, concat, stack, slice, rearrange ---------------------------------------
#
# Each case is a rule file and the source tensors it reads; ``expected`` computes every target's value with
# plain NumPy, independently of mapper.ops. Plans are made by the real planner. "small" tensors take the NumPy
# path of the executor, "large" ones (above NUMPY_OPS_MAX_BYTES) the fused one-copy path.

HEADS = 4


def _qkv_source(hidden: int) -> dict[str, np.ndarray]:
    return {
        "h.0.attn.c_attn.weight": sample((hidden, 3 * hidden), "float32"),
        "h.0.attn.c_attn.bias": sample((3 * hidden,), "float32"),
    }


def _qkv_expected(source: Mapping[str, np.ndarray], hidden: int) -> dict[str, np.ndarray]:
    kernel, bias = source["h.0.attn.c_attn.weight"], source["h.0.attn.c_attn.bias"]
    expected = {}
    for index, part in enumerate(("query", "key", "value")):
        columns = slice(index * hidden, (index + 1) * hidden)
        expected[f"layer_0/{part}/kernel"] = kernel[:, columns].reshape(hidden, HEADS, hidden // HEADS)
        expected[f"layer_0/{part}/bias"] = bias[columns].reshape(HEADS, hidden // HEADS)
    return expected


SPLIT_RULES = """
format = 1
[[rules]]
match = 'h\\.(?P<i>\\d+)\\.attn\\.c_attn\\.weight'
split = { axis = -1, parts = 3 }
targets = ["layer_{i}/query/kernel", "layer_{i}/key/kernel", "layer_{i}/value/kernel"]
ops = [{ reshape = "target" }]
[[rules]]
match = 'h\\.(?P<i>\\d+)\\.attn\\.c_attn\\.bias'
split = { axis = 0, parts = 3 }
targets = ["layer_{i}/query/bias", "layer_{i}/key/bias", "layer_{i}/value/bias"]
ops = [{ reshape = "target" }]
"""


def _concat_source(hidden: int) -> dict[str, np.ndarray]:
    return {f"attn.{part}.weight": sample((hidden, hidden), "float32") + i for i, part in enumerate("qkv")}


def _concat_expected(source: Mapping[str, np.ndarray], hidden: int) -> dict[str, np.ndarray]:
    joined = np.concatenate([source[f"attn.{part}.weight"] for part in "qkv"], axis=0)
    return {"attention/qkv/kernel": joined.T.copy()}


CONCAT_RULES = """
format = 1
[[rules]]
match = 'attn\\.(?P<part>[qkv])\\.weight'
concat = { axis = 0, by = "part", members = ["q", "k", "v"] }
target = "attention/qkv/kernel"
ops = [{ transpose = [1, 0] }]
"""


def _stack_source(hidden: int) -> dict[str, np.ndarray]:
    # Stored out of order: the group is put in `count` order, not the source's.
    return {f"layer_{i}/ln/gamma": sample((hidden, 16), "bfloat16") + i for i in (2, 0, 3, 1)}


def _stack_expected(source: Mapping[str, np.ndarray], hidden: int) -> dict[str, np.ndarray]:
    stacked = np.stack([source[f"layer_{i}/ln/gamma"] for i in range(4)], axis=0)
    return {"stacked/gamma": stacked.astype(np.float32)}


STACK_RULES = """
format = 1
[[rules]]
match = 'layer_(?P<i>\\d+)/ln/gamma'
stack = { axis = 0, by = "i", count = 4 }
target = "stacked/gamma"
ops = [{ cast = "float32" }]
"""


def _slice_source(hidden: int) -> dict[str, np.ndarray]:
    return {"vit.pos_embed": sample((1, 17, hidden), "float32"), "vit.cls_token": sample((1, 1, hidden), "float32")}


def _slice_expected(source: Mapping[str, np.ndarray], hidden: int) -> dict[str, np.ndarray]:
    return {
        "position/embeddings": source["vit.pos_embed"][0],
        "cls/token": source["vit.cls_token"][0, 0],
    }


SLICE_RULES = """
format = 1
[[rules]]
match = 'vit\\.pos_embed'
target = "position/embeddings"
ops = [{ slice = "0" }]
[[rules]]
match = 'vit\\.cls_token'
target = "cls/token"
ops = [{ slice = "0, 0" }]
"""
# Dropping the first axis and the class position: a slice that keeps a range.
PATCH_RULES = """
format = 1
[[rules]]
match = 'vit\\.pos_embed'
target = "patches/embeddings"
ops = [{ slice = "0, 1:" }]
[[rules]]
match = 'vit\\.cls_token'
skip = "not in this test"
"""


def _rearrange_source(hidden: int) -> dict[str, np.ndarray]:
    return {"blocks.0.attn.q.weight": sample((hidden, hidden), "float32")}


def _rearrange_expected(source: Mapping[str, np.ndarray], hidden: int) -> dict[str, np.ndarray]:
    weight = source["blocks.0.attn.q.weight"]  # [(heads dim), hidden], PyTorch's [out, in]
    return {"block_0/query/kernel": weight.reshape(HEADS, hidden // HEADS, hidden).transpose(2, 0, 1)}


REARRANGE_RULES = """
format = 1
[params]
num_heads = 4
[[rules]]
match = 'blocks\\.(?P<i>\\d+)\\.attn\\.q\\.weight'
target = "block_{i}/query/kernel"
ops = [{ rearrange = "(heads dim) hidden -> hidden heads dim", heads = "num_heads" }]
"""

PortCase = tuple[
    str, Callable[[int], dict[str, np.ndarray]], Callable[[Mapping[str, np.ndarray], int], dict[str, np.ndarray]]
]
PORT_CASES: dict[str, PortCase] = {
    "split-qkv-kernel-and-bias": (SPLIT_RULES, _qkv_source, _qkv_expected),
    "concat-qkv-then-transpose": (CONCAT_RULES, _concat_source, _concat_expected),
    "stack-layers-then-cast": (STACK_RULES, _stack_source, _stack_expected),
    "slice-position-embedding": (SLICE_RULES, _slice_source, _slice_expected),
    "rearrange-heads": (REARRANGE_RULES, _rearrange_source, _rearrange_expected),
}
SIZES = {"small": 8, "large": 1024}


def port_plan(rules_text: str, source: Any, expected: Mapping[str, np.ndarray]) -> tuple[Plan, VariableTarget]:
    """A plan made by the real planner from a rule file, for a target of zero variables shaped like ``expected``."""
    from mapper.plan.planner import build_plan
    from mapper.rules import parse_rules

    target = make_target({name: tf.Variable(np.zeros_like(value)) for name, value in expected.items()})
    plan = build_plan(parse_rules(rules_text, file="port.toml"), source.specs(), target.map)
    assert plan.ok, [problem.message for problem in plan.problems]
    return plan, target


def _port_source(kind: str, tmp_path: Path, arrays_by_name: Mapping[str, np.ndarray]) -> Any:
    if kind == "memory":
        return CountingSource(MemorySource(arrays_by_name))
    return CountingSource(TFCheckpointSource(write_checkpoint(tmp_path, arrays_by_name)))


@pytest.mark.parametrize("case", list(PORT_CASES))
def test_port_cases_take_both_paths(case: str) -> None:
    """Small cases take the small-tensor path only; large ones have an assignment taking the fused-copy path."""
    rules_text, make_source, make_expected = PORT_CASES[case]
    read: dict[str, list[int]] = {}
    for size, hidden in SIZES.items():
        arrays_by_name = make_source(hidden)
        plan, _ = port_plan(rules_text, MemorySource(arrays_by_name), make_expected(arrays_by_name, hidden))
        read[size] = [sum(arrays_by_name[name].nbytes for name in a.source_names) for a in plan.assignments]
    assert max(read["small"]) <= NUMPY_OPS_MAX_BYTES < max(read["large"])


@pytest.mark.parametrize("source_kind", ["memory", "checkpoint"])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("case", list(PORT_CASES))
def test_porting_operations_give_the_numpy_computed_values(
    tmp_path: Path, case: str, size: str, source_kind: str
) -> None:
    rules_text, make_source, make_expected = PORT_CASES[case]
    hidden = SIZES[size]
    arrays_by_name = make_source(hidden)
    expected = make_expected(arrays_by_name, hidden)
    source = _port_source(source_kind, tmp_path, arrays_by_name)
    plan, target = port_plan(rules_text, source, expected)

    result = apply_plan(plan, source, target, rollback="memory")

    assert_values(target, expected)
    # Every source tensor is read once, whatever number of targets it feeds.
    read = [name for call in source.calls for name in call]
    assert sorted(read) == sorted(arrays_by_name)
    assert result.bytes_read == sum(array.nbytes for array in arrays_by_name.values())
    assert result.assigned == len(expected)


def test_slice_keeping_a_range_of_an_axis() -> None:
    arrays_by_name = _slice_source(8)
    source = MemorySource(arrays_by_name)
    expected = {"patches/embeddings": arrays_by_name["vit.pos_embed"][0, 1:]}
    plan, target = port_plan(PATCH_RULES, source, expected)

    apply_plan(plan, source, target)

    assert_values(target, expected)


def test_split_parts_share_one_read_in_one_batch() -> None:
    arrays_by_name = _qkv_source(8)
    expected = _qkv_expected(arrays_by_name, 8)
    source = CountingSource(MemorySource(arrays_by_name))
    plan, target = port_plan(SPLIT_RULES, source, expected)

    result = apply_plan(plan, source, target, batch_bytes=1, rollback="memory")  # every tensor in a batch of its own

    assert source.calls == [["h.0.attn.c_attn.weight"], ["h.0.attn.c_attn.bias"]]
    assert result.batches == 2
    assert_values(target, expected)


def test_concat_members_are_read_in_one_batch_even_over_budget() -> None:
    arrays_by_name = {**_concat_source(8), "other": np.ones(4, "float32")}
    expected = {**_concat_expected(arrays_by_name, 8), "other": arrays_by_name["other"]}
    source = CountingSource(MemorySource(arrays_by_name))
    rules_text = CONCAT_RULES + "[[rules]]\nmatch = 'other'\ntarget = 'other'\n"
    plan, target = port_plan(rules_text, source, expected)
    (joined,) = [a for a in plan.assignments if a.combine is not None]
    assert joined.members == ("attn.q.weight", "attn.k.weight", "attn.v.weight")

    apply_plan(plan, source, target, batch_bytes=16, rollback="memory")

    assert sorted(map(sorted, source.calls)) == [["attn.k.weight", "attn.q.weight", "attn.v.weight"], ["other"]]
    assert_values(target, expected)


def test_batches_count_every_member_of_a_join() -> None:
    from mapper.run.batches import plan_batches

    arrays_by_name = {**_concat_source(8), **{f"t{i}": np.ones(64, "float32") for i in range(3)}}
    rules_text = CONCAT_RULES + "[[rules]]\nmatch = '(?P<n>t\\d)'\ntarget = '{n}'\n"
    expected = {**_concat_expected(arrays_by_name, 8), **{f"t{i}": arrays_by_name[f"t{i}"] for i in range(3)}}
    plan, _ = port_plan(rules_text, MemorySource(arrays_by_name), expected)

    batches = plan_batches(plan, 3 * 256 + 256)

    by_names = {batch.names: batch.nbytes for batch in batches}
    members = ("attn.q.weight", "attn.k.weight", "attn.v.weight")
    # The planner resolves joins last; the three members (768 bytes) do not fit beside t0..t2 (768 bytes).
    assert [batch.names for batch in batches] == [("t0", "t1", "t2"), members]
    assert [len(batch.assignments) for batch in batches] == [3, 1]
    assert sum(by_names.values()) == plan.source_bytes
    for batch in batches:
        assert len(batch.names) == 1 or batch.nbytes <= 3 * 256 + 256


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        pytest.param(
            {"drop": "attn.k.weight"}, ["no tensor 'attn.k.weight'", "member 2 of 3 of the concat"], id="missing"
        ),
        pytest.param(
            {"reshape": ("attn.v.weight", (4, 16))},
            ["'attn.v.weight'", "[4, 16] float32", "[8, 8] float32", "member 3 of 3"],
            id="reshaped",
        ),
    ],
)
def test_member_missing_or_changed_at_apply_time_is_a_source_error(
    change: dict[str, Any], fragments: list[str]
) -> None:
    arrays_by_name = {**_concat_source(8), "other": np.ones(4, "float32")}
    expected = {**_concat_expected(arrays_by_name, 8), "other": arrays_by_name["other"]}
    rules_text = "format = 1\n[[rules]]\nmatch = 'other'\ntarget = 'other'\n" + CONCAT_RULES.removeprefix(
        "\nformat = 1"
    )
    plan, target = port_plan(rules_text, MemorySource(arrays_by_name), expected)
    changed = dict(arrays_by_name)
    if "drop" in change:
        del changed[change["drop"]]
    else:
        name, shape = change["reshape"]
        changed[name] = changed[name].reshape(shape)
    source = MemorySource(changed)
    before = values(target)

    with pytest.raises(SourceError) as raised:
        apply_plan(plan, source, target)

    for fragment in fragments:
        assert fragment in str(raised.value)
    assert source.reads == []
    assert_values(target, before)


def test_init_from_checkpoint_refuses_joins(tmp_path: Path) -> None:
    arrays_by_name = {f"layer_{i}/ln/gamma": np.full(3, i, "float32") for i in range(4)}
    source = TFCheckpointSource(write_checkpoint(tmp_path, arrays_by_name))
    plan, target = port_plan(
        STACK_RULES.replace('ops = [{ cast = "float32" }]', ""), source, {"stacked/gamma": np.zeros((4, 3), "float32")}
    )
    assert plan.has_operations and not plan.assignments[0].operations
    before = values(target)

    with pytest.raises(ApplyError, match=r"cannot transform or join.*via stack\[axis 0\].*method='assign'"):
        apply_plan(plan, source, target, method="init_from_checkpoint")
    with pytest.raises(ApplyError, match="cannot transform or join"):
        init_from_checkpoint_map(plan, target)

    assert_values(target, before)
    apply_plan(plan, source, target)
    assert_values(target, {"stacked/gamma": np.stack(list(arrays_by_name.values()))})


# Since plan format 2 a join is described once, so its members cannot disagree with each other or the source;
# what a hand-made plan can still get wrong is the shapes.
INCONSISTENT_JOINS = [
    pytest.param(
        {"target_shape": (5,)}, "turn 2 members [2] float32, ... into [4] float32, not the planned [5]", id="shape"
    ),
]


@pytest.mark.parametrize(("change", "fragment"), INCONSISTENT_JOINS)
def test_inconsistent_join_in_a_plan_is_a_plan_error(change: dict[str, Any], fragment: str) -> None:
    import dataclasses

    from mapper.ops import Concat
    from mapper.plan import Join, JoinMember

    base = Assignment(
        "t",
        "t",
        "a",
        RULE,
        (),
        (2,),
        "float32",
        (4,),
        "float32",
        join=Join(Concat(0), (JoinMember("b", (2,)),)),
    )
    broken = dataclasses.replace(base, **change)
    source = MemorySource({"a": np.zeros(2, "float32"), "b": np.ones(2, "float32")})
    target = make_target({"t": tf.Variable(np.zeros(broken.target_shape, "float32"))})

    with pytest.raises(PlanError, match="inconsistent") as raised:
        apply_plan(make_plan(broken), source, target)

    assert fragment in str(raised.value)
    assert source.reads == []
    apply_plan(make_plan(base), source, make_target({"t": tf.Variable(np.zeros(4, "float32"))}))


# --- several named sources --------------------------------------------------------------------------

MULTI_RULES = """
format = 1
[[rules]]
source = "backbone"
match = 'encoder/(?P<rest>.+)'
target = "encoder/{rest}"
[[rules]]
source = "head"
match = 'classifier\\.weight'
target = "head/kernel"
ops = [{ transpose = [1, 0] }]
[[rules]]
source = "head"
match = 'classifier\\.bias'
target = "head/bias"
"""


def two_sources(tmp_path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A TF checkpoint 'backbone' and a safetensors file 'head', both real files; and the expected values."""
    from safetensors.numpy import save_file

    from mapper.sources import open_source

    backbone = {"encoder/dense/kernel": sample((4, 6), "float32"), "encoder/dense/bias": sample((6,), "float32")}
    head = {"classifier.weight": sample((3, 6), "float32"), "classifier.bias": sample((3,), "float32")}
    prefix = write_checkpoint(tmp_path, backbone)
    save_file(head, str(tmp_path / "head.safetensors"))
    sources = {
        "backbone": CountingSource(open_source(prefix)),
        "head": CountingSource(open_source(tmp_path / "head.safetensors")),
    }
    expected = {
        **backbone,
        "head/kernel": head["classifier.weight"].T.copy(),
        "head/bias": head["classifier.bias"],
    }
    return sources, {**backbone, **head}, expected


def multi_plan(sources: Mapping[str, Any], expected: Mapping[str, np.ndarray]) -> tuple[Plan, VariableTarget]:
    from mapper.plan.planner import build_plan
    from mapper.rules import parse_rules
    from mapper.specs import SourceSet

    target = make_target({name: tf.Variable(np.zeros_like(value)) for name, value in expected.items()})
    source_set = SourceSet({name: source.specs() for name, source in sources.items()})
    plan = build_plan(parse_rules(MULTI_RULES, file="multi.toml"), source_set, target.map)
    assert plan.ok, [problem.message for problem in plan.problems]
    return plan, target


def test_multi_source_apply_reads_each_source_for_its_own_tensors(tmp_path: Path) -> None:
    sources, _, expected = two_sources(tmp_path)
    plan, target = multi_plan(sources, expected)
    assert {a.source_id for a in plan.assignments} == {"backbone", "head"}

    result = apply_plan(plan, sources, target, rollback="memory")

    assert_values(target, expected)
    assert sorted(n for call in sources["backbone"].calls for n in call) == sorted(
        ["encoder/dense/bias", "encoder/dense/kernel"]
    )
    assert sorted(n for call in sources["head"].calls for n in call) == ["classifier.bias", "classifier.weight"]
    assert result.batches == 2 and result.assigned == 4


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_multi_source_init_from_checkpoint_reads_each_checkpoint(tmp_path: Path, graph: bool) -> None:
    backbone = {"encoder/dense/kernel": sample((4, 6), "float32")}
    head = {"classifier.weight": sample((6, 3), "float32"), "classifier.bias": sample((3,), "float32")}
    sources = {
        "backbone": TFCheckpointSource(write_checkpoint(tmp_path, backbone, "backbone")),
        "head": TFCheckpointSource(write_checkpoint(tmp_path, head, "head")),
    }
    expected = {**backbone, "head/kernel": head["classifier.weight"], "head/bias": head["classifier.bias"]}
    rules_text = MULTI_RULES.replace("ops = [{ transpose = [1, 0] }]", "")
    from mapper.plan.planner import build_plan
    from mapper.rules import parse_rules
    from mapper.specs import SourceSet

    specs = SourceSet({name: source.specs() for name, source in sources.items()})
    if not graph:
        target = make_target({name: tf.Variable(np.zeros_like(value)) for name, value in expected.items()})
        plan = build_plan(parse_rules(rules_text), specs, target.map)
        result = apply_plan(plan, sources, target, method="init_from_checkpoint")
        assert (result.assigned, result.batches) == (3, 2)
        assert_values(target, expected)
        with pytest.raises(ApplyError, match="reads 2 sources"):
            init_from_checkpoint_map(plan, target)
        return
    with tf.Graph().as_default() as built:
        variables = {
            name: tf.compat.v1.get_variable(name, shape=value.shape, initializer=tf.zeros_initializer())
            for name, value in expected.items()
        }
        target = make_target(variables, description="graph")
        plan = build_plan(parse_rules(rules_text), specs, target.map)
        apply_plan(plan, sources, target, method="init_from_checkpoint")
        with tf.compat.v1.Session(graph=built) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            got = session.run(variables)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value)


def test_multi_source_init_from_checkpoint_refuses_a_source_that_is_no_checkpoint(tmp_path: Path) -> None:
    sources, _, expected = two_sources(tmp_path)
    expected["head/kernel"] = expected["head/kernel"].T.copy()
    from mapper.plan.planner import build_plan
    from mapper.rules import parse_rules
    from mapper.specs import SourceSet

    target = make_target({name: tf.Variable(np.zeros_like(value)) for name, value in expected.items()})
    rules = parse_rules(MULTI_RULES.replace("ops = [{ transpose = [1, 0] }]", ""))
    plan = build_plan(rules, SourceSet({name: source.specs() for name, source in sources.items()}), target.map)
    assert plan.ok and not plan.has_operations
    before = values(target)

    with pytest.raises(ApplyError, match=r"head\.safetensors is a CountingSource with no checkpoint prefix"):
        apply_plan(plan, sources, target, method="init_from_checkpoint")

    assert sources["backbone"].calls == [] and sources["head"].calls == []
    assert_values(target, before)


@pytest.mark.parametrize(
    ("give", "error", "fragments"),
    [
        pytest.param(
            "only-backbone", SourceError, ["reads source 'head'", "2 assignments", "head=PATH"], id="missing-named"
        ),
        pytest.param(
            "single", SourceError, ["2 named sources", "'backbone', 'head'", "pass them by name"], id="single-source"
        ),
        pytest.param("empty", ApplyError, ["no sources were given"], id="empty-mapping"),
    ],
)
def test_multi_source_mismatches_change_nothing(
    tmp_path: Path, give: str, error: type[Exception], fragments: list[str]
) -> None:
    sources, _, expected = two_sources(tmp_path)
    plan, target = multi_plan(sources, expected)
    given: Any = {
        "only-backbone": {"backbone": sources["backbone"]},
        "single": sources["backbone"],
        "empty": {},
    }[give]
    before = values(target)

    with pytest.raises(error) as raised:
        apply_plan(plan, given, target)

    for fragment in fragments:
        assert fragment in str(raised.value)
    assert sources["backbone"].calls == [] and sources["head"].calls == []
    assert_values(target, before)


def test_single_source_plan_accepts_a_one_entry_mapping_and_refuses_two(tmp_path: Path) -> None:
    source_arrays = arrays(2)
    target = make_target(zeros_like(source_arrays))
    plan = identity_plan(source_arrays)

    apply_plan(plan, {"only": MemorySource(source_arrays)}, target)
    assert_values(target, source_arrays)

    with pytest.raises(ApplyError, match="made for one unnamed source, but 2 named sources were given"):
        apply_plan(plan, {"a": MemorySource(source_arrays), "b": MemorySource(source_arrays)}, target)


def test_multi_source_failure_in_the_second_source_rolls_back_the_first(tmp_path: Path) -> None:
    sources, _, expected = two_sources(tmp_path)
    plan, target = multi_plan(sources, expected)
    sources["head"].fail_on = 1
    sources["head"].error = SourceError("disk gone", path="head")
    before = values(target)

    with pytest.raises(ApplyError, match="variables assigned before the failure were restored"):
        apply_plan(plan, sources, target, rollback="memory")

    assert len(sources["backbone"].calls) == 1
    assert_values(target, before)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "bool"])
def test_large_numpy_values_become_tensors_exactly(dtype: str) -> None:
    from mapper.run.values import to_tensor

    values = (np.random.default_rng(0).normal(size=(300, 257)) * 100).astype(dtype)  # > 64 KiB, odd row length
    tensor = to_tensor(values, tf)
    assert tensor.dtype.name == dtype and tuple(tensor.shape) == values.shape
    np.testing.assert_array_equal(tensor.numpy(), values)
    variable = tf.Variable(tf.zeros_like(tensor))
    variable.assign(tensor)
    np.testing.assert_array_equal(variable.numpy(), values)


# --- one copy per tensor ----------------------------------------------------------------------------


class KeepingSource(CountingSource):
    """A spy: keeps every array ``read`` returns, to look at the buffers afterwards (a real caller must not)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.returned: dict[str, Any] = {}

    def read(self, names: Sequence[str]) -> Mapping[str, Any]:
        result = super().read(names)
        self.returned.update(result)
        return result


def safetensors_source(tmp_path: Path, arrays_by_name: Mapping[str, np.ndarray]) -> KeepingSource:
    from safetensors.numpy import save_file

    from mapper.sources.safetensors import SafetensorsSource

    save_file(dict(arrays_by_name), str(tmp_path / "model.safetensors"))
    return KeepingSource(SafetensorsSource(tmp_path / "model.safetensors"))


def writable(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = True
    return view


@pytest.mark.parametrize("rollback", [True, False])
def test_untransformed_read_becomes_the_variable_buffer_without_a_copy(tmp_path: Path, rollback: bool) -> None:
    source_arrays = {"w": sample((160, 128), "float32"), "b": sample((4,), "float32")}
    source = safetensors_source(tmp_path, source_arrays)
    target = make_target(zeros_like(source_arrays))
    apply_plan(identity_plan(source_arrays), source, target, rollback=rollback)
    assert_values(target, source_arrays)
    # The variable's buffer is the array the source read into: writing through it shows in the variable.
    writable(source.returned["w"])[0, 0] = 12345.0
    assert target.variables["w"].numpy()[0, 0] == 12345.0
    assert not source.returned["w"].flags.writeable  # the source's array itself was not changed


def test_a_read_feeding_two_variables_is_copied_for_each(tmp_path: Path) -> None:
    """Adopting one buffer for two variables would make training one change the other."""
    kernel = sample((160, 128), "float32")
    source = safetensors_source(tmp_path, {"w": kernel})
    target = make_target({"a": tf.Variable(np.zeros_like(kernel)), "b": tf.Variable(np.zeros_like(kernel))})
    plan = make_plan(assignment("a", "w", kernel.shape), assignment("b", "w", kernel.shape))
    apply_plan(plan, source, target)
    target.variables["a"].assign_add(tf.ones_like(kernel))
    np.testing.assert_array_equal(target.variables["b"].numpy(), kernel)
    np.testing.assert_array_equal(source.returned["w"], kernel)


def test_memory_source_arrays_are_never_adopted() -> None:
    """A MemorySource returns the caller's own arrays: the variable must get its own copy."""
    kernel = sample((160, 128), "float32")
    source_arrays = {"w": aligned_copy(kernel)}
    target = make_target(zeros_like(source_arrays))
    apply_plan(identity_plan(source_arrays), MemorySource(source_arrays), target)
    source_arrays["w"][0, 0] = 12345.0
    np.testing.assert_array_equal(target.variables["w"].numpy(), kernel)


def aligned_copy(array: np.ndarray) -> np.ndarray:
    from mapper.run.values import aligned_empty

    result = aligned_empty(array.shape, array.dtype)
    result[...] = array
    return result


@pytest.mark.parametrize(
    ("operations", "copies"),
    [
        pytest.param((Reshape((128, 160)),), 0, id="reshape-is-free"),
        pytest.param((Transpose((1, 0)),), 1, id="transpose"),
        pytest.param((Transpose((1, 0)), Reshape((128, 4, 40))), 1, id="transpose-reshape"),
        pytest.param((Cast("bfloat16"), Transpose((1, 0))), 1, id="cast-transpose"),
        pytest.param((Transpose((1, 0)), Cast("float16"), Reshape((20480,))), 1, id="transpose-cast-reshape"),
        pytest.param((Cast("float32"), Reshape((128, 160))), 0, id="cast-to-the-same-dtype-is-free"),
        pytest.param((Cast("float16"), Cast("float32"), Transpose((1, 0))), 2, id="two-casts-round-twice"),
    ],
)
def test_fused_transforms_copy_once_and_match_numpy(
    tmp_path: Path, operations: tuple[Operation, ...], copies: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mapper.run.values as values_module

    made: list[tuple[int, ...]] = []
    real = values_module.aligned_empty

    def counting(shape: Sequence[int], dtype: Any) -> np.ndarray:
        made.append(tuple(shape))
        return real(shape, dtype)

    monkeypatch.setattr(values_module, "aligned_empty", counting)
    kernel = sample((160, 128), "float32")
    source = safetensors_source(tmp_path, {"w": kernel})
    planned = assignment("t", "w", kernel.shape, "float32", operations)
    expected = apply_numpy(operations, kernel)
    target = make_target({"t": tf.Variable(np.zeros(expected.shape, expected.dtype))})
    apply_plan(make_plan(planned), source, target)
    assert_values(target, {"t": expected})
    assert len(made) == copies
    if copies:  # the variable holds the buffer the copy went into
        assert not np.shares_memory(target.variables["t"].numpy(), source.returned["w"])
    else:
        writable(source.returned["w"]).reshape(-1)[0] = 12345.0
        assert target.variables["t"].numpy().reshape(-1)[0] == 12345.0


def test_tensorflow_targets_are_refused_on_jax_where_tensorflow_is_installed() -> None:
    """The backends run blocks TensorFlow, so this case runs here: JAX backend, TensorFlow importable, a tf.Module."""
    root = Path(__file__).resolve().parent.parent
    test = "tests/backends/test_apply_keras.py::test_tensorflow_targets_need_the_tensorflow_backend"
    environment = {key: value for key, value in os.environ.items() if key != "MAPPER_TEST_BLOCK_TF"}
    environment |= {"KERAS_BACKEND": "jax", "PYTHONPATH": str(root)}
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout[-2000:]
    assert "1 passed" in finished.stdout


def test_batches_of_a_tf_checkpoint_read_its_tensors_in_file_order(tmp_path: Path) -> None:
    """Small tensors that lie back to back share one read, whatever order the plan assigns them in."""
    from mapper.run.batches import plan_batches

    prefix, values = write_keras_checkpoint(functional_model(), tmp_path)  # written kernel first, listed bias first
    source = TFCheckpointSource(prefix)
    plan, target = port_plan("format = 1\n[[rules]]\nmatch = '(?P<n>.+)'\ntarget = '{n}'\n", source, values)
    in_file = sorted((a.source for a in plan.assignments), key=source.position)
    assert [a.source for a in plan.assignments] != in_file  # the plan's own order differs

    [batch] = plan_batches(plan, 2**20, {None: source.position})
    [unordered] = plan_batches(plan, 2**20)

    assert list(batch.names) == in_file and list(unordered.names) == [a.source for a in plan.assignments]
    apply_plan(plan, source, target)
    assert_values(target, values)
