"""rules/keras2-h5-to-keras3.toml against tf-keras's own .h5 loading, on a tiny CNN with a nested Sequential block.

tf-keras writes the .h5 files (``save_weights("x.h5")``, and whole-model ``save("x.h5")`` of a compiled model whose
optimizer has its slots, so the file holds optimizer state too). The reference loads each file with tf-keras itself
(``load_weights`` / ``load_model``) and copies the weights into a Keras 3 twin layer by layer, by layer name; the
rule file fills another fresh twin. Every variable must be bit-identical by path. The two layouts the rule file
documents as needing a change must fail loudly, and the change its description gives must then load them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import mapper
from mapper.errors import PlanError
from mapper.plan import ProblemKind
from mapper.report import render_text
from mapper.rules import parse_rules
from mapper.sources import open_source
from tests.vision_fixtures import (
    assert_bit_identical,
    build_cnn,
    build_sequential,
    copy_layer_by_layer,
    randomize,
    variable_bytes,
)

pytestmark = pytest.mark.tf
pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

RULES = Path(__file__).resolve().parent.parent / "rules" / "keras2-h5-to-keras3.toml"


@dataclass(frozen=True)
class Written:
    """A Keras 2 .h5 file, its layout as the source reports it, and the Keras 3 reference loaded from it."""

    path: Path
    layout: str
    dataset_prefix: str
    reference: Any


def _save_weights(directory: Path) -> tuple[Path, Any]:
    model = build_cnn(tf_keras)
    randomize(model, seed=1)
    path = directory / "weights.h5"
    model.save_weights(str(path))
    loaded = build_cnn(tf_keras)
    loaded.load_weights(str(path))
    return path, loaded


def _save_model(directory: Path) -> tuple[Path, Any]:
    model = build_cnn(tf_keras)
    randomize(model, seed=2)
    model.compile(optimizer=tf_keras.optimizers.Adam(0.01), loss="mse")
    # Optimizer slots, as after training (a real training step would cost seconds of tracing).
    model.optimizer.build(model.trainable_variables)
    path = directory / "model.h5"
    with warnings.catch_warnings():
        # tf-keras calls .h5 legacy; writing that legacy format is the point here.
        warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file", category=UserWarning)
        model.save(str(path))
    return path, tf_keras.models.load_model(str(path), compile=False)


WRITERS: dict[str, tuple[Callable[[Path], tuple[Path, Any]], str, str]] = {
    "save_weights": (_save_weights, "keras2", ""),
    "model.save": (_save_model, "keras2-model", "model_weights/"),
}


@pytest.fixture(scope="module", params=list(WRITERS), ids=list(WRITERS))
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Written:
    writer, layout, dataset_prefix = WRITERS[request.param]
    path, loaded = writer(tmp_path_factory.mktemp("keras2_h5"))
    reference = build_cnn(keras)
    copy_layer_by_layer(loaded, reference)
    return Written(path, layout, dataset_prefix, reference)


def test_the_file_is_a_keras2_h5(written: Written) -> None:
    assert getattr(open_source(written.path), "layout", None) == written.layout
    if written.layout == "keras2-model":
        with h5py.File(written.path, "r") as file:
            assert "optimizer_weights" in file  # the rule file must not care


def test_plan_maps_every_weight_and_nothing_else(written: Written) -> None:
    model = build_cnn(keras)
    plan = mapper.make_plan(RULES, written.path, model)
    assert plan.ok, render_text(plan)
    assert plan.problems == () and plan.skips == ()
    assert plan.unused_sources == () and plan.unfilled_targets == ()
    assert {assignment.target for assignment in plan.assignments} == {weight.path for weight in model.weights}
    assert all(not assignment.operations for assignment in plan.assignments)
    nested = plan.assignment_for("block/block_bn/moving_variance")
    assert nested is not None and nested.source == "block/block_bn/moving_variance"


def test_every_variable_is_bit_identical_to_tf_keras_loading(written: Written) -> None:
    model = build_cnn(keras)
    initial = variable_bytes(model)
    mapper.transfer(RULES, written.path, model)
    # The reference really loaded the file: none of its weights is still at a fresh model's initial value.
    reference = variable_bytes(written.reference)
    assert all(reference[path] != initial[path] for path in initial)
    assert_bit_identical(model, written.reference)


def test_weights_equal_the_h5_datasets(written: Written) -> None:
    # A second, format-level reference: the datasets themselves, read with h5py.
    model = build_cnn(keras)
    mapper.transfer(RULES, written.path, model)
    with h5py.File(written.path, "r") as file:
        for path, dataset in [
            ("conv1/kernel", "conv1/conv1/kernel:0"),
            ("bn2/moving_variance", "bn2/bn2/moving_variance:0"),
            ("block/block_dense/kernel", "block/block_dense/kernel:0"),
            ("head/bias", "head/head/bias:0"),
        ]:
            expected = np.asarray(file[written.dataset_prefix + dataset])
            actual = next(np.asarray(weight) for weight in model.weights if weight.path == path)
            assert actual.tobytes() == expected.tobytes(), path


def _tf_keras_file(directory: Path, build: Callable[[Any], Any]) -> Path:
    model = build(tf_keras)
    randomize(model, seed=4)
    path = directory / "limitation.h5"
    model.save_weights(str(path))
    return path


@dataclass(frozen=True)
class Limitation:
    """A layout the rule file does not cover: the model, a weight it cannot place, the name it should have had."""

    build: Callable[[Any], Any]
    source: str
    closest: str
    workaround: tuple[str, str]  # the edit the rule file's description tells users to make: (old text, new text)


LIMITATIONS = {
    "nested-functional-model": Limitation(
        lambda k: build_cnn(k, nested="functional"),
        "block/block_dense/kernel",
        "block_dense/kernel",
        (
            "[[rules]]",
            "[[rules]]\nmatch = 'block/(?P<rest>.+)'\ntarget = \"{rest}\"\n"
            "silence = { M103 = 'the nested model drops its name' }\n\n[[rules]]",
        ),
    ),
    "top-level-sequential": Limitation(
        build_sequential,
        "conv1/kernel",
        "net/conv1/kernel",
        ('prefix = ""', 'prefix = "net/"'),
    ),
}


@pytest.mark.parametrize("case", list(LIMITATIONS.values()), ids=list(LIMITATIONS))
def test_documented_limitations_are_errors_naming_the_weight_and_change_nothing(
    tmp_path: Path, case: Limitation
) -> None:
    path = _tf_keras_file(tmp_path, case.build)
    model = case.build(keras)
    before = variable_bytes(model)
    with pytest.raises(PlanError, match=r"nothing was changed") as raised:
        mapper.transfer(RULES, path, model)
    plan = raised.value.plan
    missing = [problem for problem in plan.errors if problem.kind is ProblemKind.MISSING_TARGET]
    assert missing, render_text(plan)
    (problem,) = [problem for problem in missing if case.source in problem.names]
    assert f"source {case.source!r} maps to {case.source!r}" in problem.message
    assert repr(case.closest) in problem.message  # the closest existing name is the right one
    assert case.closest in {entry.name for entry in plan.unfilled_targets}
    assert variable_bytes(model) == before


@pytest.mark.parametrize("case", list(LIMITATIONS.values()), ids=list(LIMITATIONS))
def test_the_documented_workaround_loads_bit_identically(tmp_path: Path, case: Limitation) -> None:
    path = _tf_keras_file(tmp_path, case.build)
    loaded = case.build(tf_keras)
    loaded.load_weights(str(path))
    reference = case.build(keras)
    copy_layer_by_layer(loaded, reference)
    text = RULES.read_text(encoding="utf-8")
    old, new = case.workaround
    assert text.count(old) == 1
    rules = parse_rules(text.replace(old, new), file="with-workaround.toml")
    model = case.build(keras)
    plan = mapper.transfer(rules, path, model)
    assert plan.problems == () and plan.unused_sources == () and plan.unfilled_targets == ()
    assert_bit_identical(model, reference)
