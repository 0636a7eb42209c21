"""rules/hf-gemma-to-keras-hub.toml refuses what GemmaBackbone has no place for, where keras-hub drops it silently.

The catalogue (tests/test_catalogue.py) checks the tied checkpoints bit for bit against keras-hub. An untied
GemmaForCausalLM saves lm_head.weight, which keras-hub's converter never reads (GemmaBackbone always ties its
output projection); the rule file reports it as an unused source, so the plan fails instead of losing the head.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from families import RULES, Family
from families.gemma import FAMILIES

import mapper

pytestmark = pytest.mark.tf
pytest.importorskip("keras_hub")
pytest.importorskip("transformers")


def _untied_gemma() -> object:
    model = FAMILIES[0].make_model()
    model.config.tie_word_embeddings = False
    return type(model)(model.config)


def test_an_untied_lm_head_is_an_unused_source_not_dropped(tmp_path: Path) -> None:
    family = Family(
        "gemma-untied", RULES / "hf-gemma-to-keras-hub.toml", "GemmaBackbone", "convert_gemma", _untied_gemma
    )
    directory = family.save(tmp_path)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    assert config["tie_word_embeddings"] is False
    plan = mapper.make_plan(family.rules, directory, family.keras_hub_backbone(config))
    assert not plan.ok
    assert [entry.name for entry in plan.unused_sources] == ["lm_head.weight"]
    assert plan.unfilled_targets == ()
    family.keras_hub_reference(directory)  # keras-hub's converter loads it, without the head
