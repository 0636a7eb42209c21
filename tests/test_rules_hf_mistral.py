"""rules/hf-mistral-to-keras-hub.toml rounds through float16 as keras-hub's converter does; the Llama file does not.

The catalogue (tests/test_catalogue.py) checks the Mistral file bit for bit against keras-hub. This module pins what
its description promises beyond that: the values are the checkpoint's rounded to float16 (so a float32 checkpoint
loses precision, as it does in keras-hub), and hf-llama-to-keras-hub.toml loads the same checkpoint into the same
MistralBackbone with the checkpoint's values as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from families import RULES
from families.mistral import FAMILIES

import mapper

pytestmark = pytest.mark.tf
pytest.importorskip("keras_hub")
pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

MISTRAL = next(family for family in FAMILIES if family.name == "mistral")  # the float32 checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return MISTRAL.save(tmp_path_factory.mktemp("hf_mistral"))


@pytest.mark.parametrize(
    ("rules", "rounded"),
    [
        pytest.param(RULES / "hf-mistral-to-keras-hub.toml", True, id="mistral-file-rounds-as-keras-hub"),
        pytest.param(RULES / "hf-llama-to-keras-hub.toml", False, id="llama-file-keeps-full-precision"),
    ],
)
def test_float32_checkpoint_values(checkpoint: Path, rules: Path, rounded: bool) -> None:
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    backbone = MISTRAL.keras_hub_backbone(config)
    plan = mapper.transfer(rules, checkpoint, backbone)
    assert plan.ok and len(plan.assignments) == len(backbone.weights)
    tensors = safetensors_numpy.load_file(str(checkpoint / "model.safetensors"))
    source = tensors["model.layers.1.self_attn.q_proj.weight"]
    expected = source.astype(np.float16).astype(np.float32) if rounded else source
    assert not np.array_equal(source.astype(np.float16).astype(np.float32), source)  # the rounding shows
    query = backbone.get_layer("transformer_layer_1")._self_attention_layer._query_dense.kernel.numpy()
    np.testing.assert_array_equal(query, expected.T.reshape(query.shape))
