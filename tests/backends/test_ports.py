"""The shipped BERT and Llama rule files on the Keras backend of the run: bit-identical to keras-hub's converter there.

For each BERT and Llama family of the catalogue (tests/families/), transformers saves a tiny random model; keras-hub's
own converter loads the directory (``Backbone.from_preset``) on this run's backend, and a fresh backbone of the
same config is loaded through the rule file on the same backend: every weight must be bit-identical, in dtype too,
and every weight must have come from the checkpoint. Under ``MAPPER_TEST_BLOCK_TF=1`` on JAX and PyTorch this proves
the port needs no TensorFlow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from families import RULES, Family, all_families, weights_by_path

import mapper
from mapper.plan import Plan

pytestmark = pytest.mark.backends
keras = pytest.importorskip("keras")
pytest.importorskip("keras_hub")
pytest.importorskip("transformers")

PORTED_RULES = {RULES / "hf-bert-to-keras-hub.toml", RULES / "hf-llama-to-keras-hub.toml"}
FAMILIES = tuple(family for family in all_families() if family.rules in PORTED_RULES)


@dataclass(frozen=True)
class Ported:
    """One transformers checkpoint loaded by keras-hub (the reference) and through the rule file, on one backend."""

    family: Family
    directory: Path
    reference: dict[str, np.ndarray]
    initial: dict[str, np.ndarray]
    ported: dict[str, np.ndarray]
    backbone: Any
    plan: Plan


@pytest.fixture(scope="module", params=FAMILIES, ids=[family.name for family in FAMILIES])
def ported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Ported:
    family: Family = request.param
    directory = family.save(tmp_path_factory.mktemp(family.name))
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    reference = weights_by_path(family.keras_hub_reference(directory))
    backbone = family.keras_hub_backbone(config)
    initial = weights_by_path(backbone)
    plan = mapper.transfer(family.rules, directory, backbone)
    return Ported(family, directory, reference, initial, weights_by_path(backbone), backbone, plan)


def test_both_families_are_ported() -> None:
    assert {family.rules for family in FAMILIES} == PORTED_RULES
    assert any(family.name.startswith("llama-tied") for family in FAMILIES)
    assert any(family.name.startswith("llama-untied") for family in FAMILIES)


def test_the_run_is_on_the_backend_it_was_given() -> None:
    assert keras.backend.backend() == (os.environ.get("KERAS_BACKEND") or "tensorflow")


def test_every_weight_is_bit_identical_to_keras_hubs_converter_on_this_backend(ported: Ported) -> None:
    assert ported.ported.keys() == ported.reference.keys()
    different = [
        path
        for path, expected in ported.reference.items()
        if ported.ported[path].dtype != expected.dtype or ported.ported[path].tobytes() != expected.tobytes()
    ]
    assert different == []


def test_every_weight_came_from_the_checkpoint(ported: Ported) -> None:
    assert {assignment.target for assignment in ported.plan.assignments} == set(ported.reference)
    unchanged = [path for path, value in ported.initial.items() if np.array_equal(value, ported.ported[path])]
    assert unchanged == []  # random initial values: a weight equal to its initial value was not loaded


def test_the_ported_backbone_exports_back_to_the_checkpoint_on_this_backend(
    ported: Ported, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``mapper export`` reads the variables through this backend: the checkpoint comes back bit for bit."""
    from safetensors.numpy import load_file

    exported = tmp_path_factory.mktemp(f"{ported.family.name}-export")
    mapper.export(ported.family.rules, ported.backbone, exported, like=ported.directory, overwrite=True)
    checkpoint = load_file(str(ported.directory / "model.safetensors"))
    written = load_file(str(exported / "model.safetensors"))
    assert written.keys() <= checkpoint.keys() and written
    different = [name for name, value in written.items() if value.tobytes() != checkpoint[name].tobytes()]
    assert different == []


def test_the_ported_backbone_still_runs_on_this_backend(ported: Ported) -> None:
    inputs = {
        "token_ids": np.array([[1, 2, 3, 4]], "int32"),
        "padding_mask": np.ones((1, 4), "int32"),
    }
    if ported.family.backbone == "BertBackbone":
        inputs["segment_ids"] = np.zeros((1, 4), "int32")
    outputs = ported.backbone(inputs)
    hidden = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
    values = keras.ops.convert_to_numpy(hidden)
    assert values.shape[:2] == (1, 4) and np.isfinite(values).all()


def test_a_bert_sharded_over_four_jax_devices_is_filled_shard_by_shard(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The README's "Distributed models" example: heads and the feed-forward split over a 4-device model axis."""
    if keras.backend.backend() != "jax" or len(keras.distribution.list_devices()) < 4:
        pytest.skip("needs the JAX backend with 4 devices (tests/conftest.py sets XLA_FLAGS)")
    (family,) = [family for family in FAMILIES if family.name == "bert"]
    directory = family.save(tmp_path_factory.mktemp("sharded-bert"))
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    reference = weights_by_path(family.keras_hub_reference(directory))
    devices = keras.distribution.list_devices()[:4]
    mesh = keras.distribution.DeviceMesh((1, 4), ["batch", "model"], devices)
    layout = keras.distribution.LayoutMap(mesh)
    layout[".*(query|key|value)/kernel"] = (None, "model", None)
    layout[".*intermediate_dense/kernel"] = (None, "model")
    with keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch").scope():
        backbone = family.keras_hub_backbone(config)
    shardings = {weight.path: weight.value.sharding for weight in backbone.weights}
    split = [path for path, sharding in shardings.items() if not sharding.is_fully_replicated]
    assert len(split) == 2 * 4  # two layers: query, key, value and the intermediate kernel

    mapper.transfer(family.rules, directory, backbone)

    assert {weight.path: weight.value.sharding for weight in backbone.weights} == shardings
    ported = weights_by_path(backbone)
    assert [path for path, value in reference.items() if value.tobytes() != ported[path].tobytes()] == []
