"""Every catalogue family (tests/families/): its rule file loads transformers' own checkpoint as keras-hub does.

For each family a tiny random model is saved by ``transformers`` (``save_pretrained``); keras-hub's converter
loads the directory (``Backbone.from_preset``, offline) and a fresh backbone of the same config is loaded through
the shipped rule file: every weight must be bit-identical, every source tensor assigned or skipped under the
reason the family names, and the rule file shorter than the converter it replaces.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from families import Family, all_families, weights_by_path

import mapper
from mapper.plan import Plan

pytestmark = pytest.mark.tf
pytest.importorskip("keras_hub")
pytest.importorskip("transformers")

FAMILIES = all_families()


@dataclass(frozen=True)
class Loaded:
    """One transformers checkpoint loaded by keras-hub (the reference) and through the rule file."""

    family: Family
    directory: Path
    reference: dict[str, np.ndarray]
    initial: dict[str, np.ndarray]
    ported: dict[str, np.ndarray]
    plan: Plan


@pytest.fixture(scope="module", params=FAMILIES, ids=[family.name for family in FAMILIES])
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    family: Family = request.param
    directory = family.save(tmp_path_factory.mktemp(family.name))
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    reference = weights_by_path(family.keras_hub_reference(directory))
    backbone = family.keras_hub_backbone(config)
    initial = weights_by_path(backbone)
    plan = mapper.transfer(family.rules, directory, backbone)
    return Loaded(family, directory, reference, initial, weights_by_path(backbone), plan)


def test_every_weight_is_bit_identical_to_keras_hubs_converter(loaded: Loaded) -> None:
    assert loaded.ported.keys() == loaded.reference.keys()
    different = [
        path
        for path, value in loaded.reference.items()
        if value.dtype != loaded.ported[path].dtype or value.tobytes() != loaded.ported[path].tobytes()
    ]
    assert different == []


def test_every_weight_came_from_the_checkpoint(loaded: Loaded) -> None:
    assert {a.target for a in loaded.plan.assignments} == set(loaded.reference)
    unchanged = [path for path, value in loaded.initial.items() if np.array_equal(value, loaded.ported[path])]
    assert unchanged == []  # random initial values: a weight equal to its initial value was not loaded


def test_every_source_tensor_is_assigned_or_skipped_for_its_reason(loaded: Loaded) -> None:
    assert loaded.plan.unused_sources == ()
    for skip in loaded.plan.skips:
        if skip.side != "source":
            continue
        words = [word for pattern, word in loaded.family.skipped.items() if re.fullmatch(pattern, skip.name)]
        assert words, f"{skip.name!r} was skipped ({skip.reason}), but the family expects it to be assigned"
        assert all(word in skip.reason for word in words), (skip.name, skip.reason)


def test_the_rule_file_is_shorter_than_the_converter_it_replaces(loaded: Loaded) -> None:
    lines = len(loaded.family.rules.read_text(encoding="utf-8").splitlines())
    assert lines < loaded.family.converter_lines
