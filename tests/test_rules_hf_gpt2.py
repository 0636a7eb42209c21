"""rules/hf-gpt2-to-keras-hub.toml beyond the catalogue: a feed-forward width other than 4 * n_embd (n_inner).

keras-hub's convert_backbone_config ignores n_inner (it builds intermediate_dim = 4 * n_embd), so its converter
cannot load such a checkpoint. The rule file holds no sizes: it loads one into a backbone built with
intermediate_dim = n_inner, and refuses, naming the tensors, a backbone built as keras-hub builds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from families import Family, seeded
from families.gpt2 import RULE_FILE, gpt2_config

import mapper
from mapper.plan import ProblemKind

pytestmark = pytest.mark.tf
keras_hub = pytest.importorskip("keras_hub")
pytest.importorskip("transformers")

FEED_FORWARD = {f"h.{i}.mlp.{name}" for i in (0, 1) for name in ("c_fc.weight", "c_fc.bias", "c_proj.weight")}


def _gpt2_with_n_inner() -> Any:
    import transformers

    seeded(15)
    return transformers.GPT2Model(gpt2_config(n_inner=40))  # 4 * n_embd would be 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    family = Family("gpt2-n-inner", RULE_FILE, "GPT2Backbone", "convert_gpt2", _gpt2_with_n_inner)
    directory = family.save(tmp_path_factory.mktemp("gpt2-n-inner"))
    return directory, json.loads((directory / "config.json").read_text(encoding="utf-8"))


def backbone(config: dict[str, Any], **overrides: Any) -> Any:
    """A GPT2Backbone built from config.json as keras-hub's converter builds it, with ``overrides``."""
    from keras_hub.src.utils.transformers import convert_gpt2

    return keras_hub.models.GPT2Backbone(**{**convert_gpt2.convert_backbone_config(config), **overrides})


def test_a_backbone_with_intermediate_dim_n_inner_gets_every_tensor(checkpoint: tuple[Path, dict[str, Any]]) -> None:
    from safetensors.numpy import load_file

    directory, config = checkpoint
    model = backbone(config, intermediate_dim=config["n_inner"])
    plan = mapper.transfer(RULE_FILE, directory, model)
    assert plan.unused_sources == ()
    assert {a.source for a in plan.assignments} >= FEED_FORWARD
    kernel = model.get_layer("transformer_layer_1")._feedforward_intermediate_dense.kernel
    assert np.array_equal(
        np.array(kernel.numpy()), load_file(str(directory / "model.safetensors"))["h.1.mlp.c_fc.weight"]
    )


def test_a_backbone_built_as_keras_hub_builds_it_is_refused_naming_the_feed_forward(
    checkpoint: tuple[Path, dict[str, Any]],
) -> None:
    directory, config = checkpoint
    plan = mapper.make_plan(mapper.load_rules(RULE_FILE), directory, backbone(config))
    mismatched = {name for p in plan.problems if p.kind is ProblemKind.SHAPE_MISMATCH for name in p.names}
    assert mismatched >= FEED_FORWARD
    assert not plan.ok
