"""rules/hf-llama-to-keras-hub.toml against keras-hub's own converter: every Llama3Backbone weight bit-identical.

The checkpoints use grouped-query attention (4 query heads, 2 key/value heads), so key and value kernels have
half the query kernel's heads. keras-hub loads each directory with ``Llama3Backbone.from_preset(directory)``
(its convert_llama3.py, offline); a fresh backbone of the same config is loaded through the rule file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hf_fixtures import (
    HEAD_DIM,
    HEADS,
    HIDDEN,
    KV_HEADS,
    LlamaVariant,
    Ported,
    llama_config,
    weights_by_path,
    write_llama,
)

import mapper
from mapper.errors import PlanError
from mapper.plan import SkipKind
from mapper.report import render_text

pytestmark = pytest.mark.tf
keras_hub = pytest.importorskip("keras_hub")
pytest.importorskip("safetensors")

RULES = Path(__file__).resolve().parent.parent / "rules" / "hf-llama-to-keras-hub.toml"

VARIANTS = {
    # Llama 3.2 1B/3B style: bfloat16, and the output projection is the token embedding (no lm_head.weight saved).
    "tied-embeddings-bfloat16": LlamaVariant(tie_word_embeddings=True, dtype="bfloat16"),
    # Llama 3 8B style, saved by an older transformers that also wrote the rotary inv_freq buffers.
    "separate-lm-head-with-rotary-buffers": LlamaVariant(tie_word_embeddings=False, inv_freq=True),
}


def backbone_for(config: dict[str, Any], **overrides: Any) -> Any:
    """A fresh Llama3Backbone built from a Hugging Face config.json the way keras-hub builds it."""
    from keras_hub.src.utils.transformers import convert_llama3

    return keras_hub.models.Llama3Backbone(**{**convert_llama3.convert_backbone_config(config), **overrides})


@pytest.fixture(scope="module", params=list(VARIANTS.values()), ids=list(VARIANTS))
def ported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Ported:
    hf = write_llama(tmp_path_factory.mktemp("hf_llama"), request.param)
    reference = keras_hub.models.Llama3Backbone.from_preset(str(hf.directory))
    backbone = backbone_for(hf.config)
    initial = weights_by_path(backbone)
    plan = mapper.transfer(RULES, hf.directory, backbone)
    return Ported(hf, weights_by_path(reference), initial, weights_by_path(backbone), plan)


def test_every_weight_is_bit_identical_to_keras_hubs_converter(ported: Ported) -> None:
    assert sorted(ported.ported) == sorted(ported.reference)
    different = [
        path
        for path, expected in ported.reference.items()
        if ported.ported[path].dtype != expected.dtype or not np.array_equal(ported.ported[path], expected)
    ]
    assert different == []


def test_every_weight_was_loaded_from_the_checkpoint(ported: Ported) -> None:
    unchanged = [path for path, value in ported.initial.items() if np.array_equal(value, ported.ported[path])]
    assert unchanged == []


def test_plan_maps_every_tensor_or_skips_it_by_rule(ported: Ported) -> None:
    plan = ported.plan
    assert plan.ok, render_text(plan)
    assert plan.problems == ()
    assert plan.unused_sources == plan.unfilled_targets == ()
    assert sorted(assignment.target for assignment in plan.assignments) == sorted(ported.reference)
    assert {assignment.source for assignment in plan.assignments} == set(ported.hf.tensors) - set(ported.hf.skipped)
    assert {skip.name: skip.kind for skip in plan.skips} == dict.fromkeys(ported.hf.skipped, SkipKind.RULE)
    lm_head = plan.assignment_for("token_embedding/reverse_embeddings")
    if ported.hf.config["tie_word_embeddings"]:
        assert lm_head is None
    else:
        assert lm_head is not None
        assert (lm_head.source, lm_head.source_shape, lm_head.target_shape) == ("lm_head.weight", (50, 16), (16, 50))


@pytest.mark.parametrize(
    ("part", "heads"),
    [("query", HEADS), ("key", KV_HEADS), ("value", KV_HEADS)],
    ids=["query-4-heads", "key-2-heads", "value-2-heads"],
)
def test_grouped_query_attention_shapes(ported: Ported, part: str, heads: int) -> None:
    assignment = ported.plan.assignment_for(f"transformer_layer_1/self_attention/{part}/kernel")
    assert assignment is not None
    assert assignment.source == f"model.layers.1.self_attn.{part[0]}_proj.weight"
    assert (assignment.source_shape, assignment.target_shape) == ((heads * HEAD_DIM, HIDDEN), (HIDDEN, heads, HEAD_DIM))
    assert assignment.source_dtype == ported.hf.config["torch_dtype"]
    assert [operation.describe() for operation in assignment.operations] == [
        "cast[float32]",
        "transpose[1, 0]",
        f"reshape[{HIDDEN}, {heads}, {HEAD_DIM}]",
    ]


def test_report_lists_every_skipped_key_under_its_reason(ported: Ported) -> None:
    text = render_text(ported.plan, verbose=True, width=400)
    if not ported.hf.skipped:
        assert "Skipped" not in text
        return
    section = text.split(f"\nSkipped ({len(ported.hf.skipped)})\n", 1)[1].split("\n\n", 1)[0]
    reason_of: dict[str, str] = {}
    for block in re.split(r"\n(?=  by rule )", section):
        header, *rows = block.splitlines()
        assert header.startswith("  by rule ")
        reason_of |= {row.split()[0]: header for row in rows}
    assert sorted(reason_of) == sorted(ported.hf.skipped)
    for name, word in ported.hf.skipped.items():
        assert word in reason_of[name], (name, reason_of[name])
        assert "not a weight" in reason_of[name]


@pytest.mark.parametrize(
    ("variant", "overrides", "named"),
    [
        pytest.param(
            LlamaVariant(attention_bias=True), {}, "model.layers.0.self_attn.k_proj.bias", id="attention-biases"
        ),
        pytest.param(
            LlamaVariant(), {"num_key_value_heads": HEADS}, "transformer_layer_0/self_attention/key/kernel",
            id="backbone-without-grouped-query-attention",
        ),
        pytest.param(
            LlamaVariant(tie_word_embeddings=False), {"tie_word_embeddings": True}, "token_embedding/reverse_embeddings",
            id="separate-lm-head-into-tied-backbone",
        ),
        pytest.param(
            LlamaVariant(tie_word_embeddings=True), {"tie_word_embeddings": False}, "token_embedding/reverse_embeddings",
            id="tied-checkpoint-into-backbone-with-lm-head",
        ),
    ],
)  # fmt: skip
def test_a_checkpoint_that_does_not_fit_changes_nothing(
    tmp_path: Path, variant: LlamaVariant, overrides: dict[str, Any], named: str
) -> None:
    hf = write_llama(tmp_path, variant)
    backbone = backbone_for(llama_config(variant), **overrides)
    before = weights_by_path(backbone)
    with pytest.raises(PlanError) as raised:
        mapper.transfer(RULES, hf.directory, backbone)
    assert named in str(raised.value)
    after = weights_by_path(backbone)
    assert all(np.array_equal(before[path], after[path]) for path in before)


def test_the_rule_file_needs_no_sizes() -> None:
    # Reshapes take the target's shape: the same file fits every Llama size and head grouping without editing.
    rules = mapper.load_rules(RULES)
    assert rules.params == {}
    assert all(
        not isinstance(getattr(operation, "reshape", "target"), tuple) for rule in rules.rules for operation in rule.ops
    )


def test_a_bfloat16_backbone_takes_the_same_file(tmp_path: Path) -> None:
    # Every rule casts to the target's dtype, so one file fits float32 and bfloat16 backbones alike.
    variant = LlamaVariant(dtype="bfloat16")
    hf = write_llama(tmp_path, variant)
    reference = weights_by_path(keras_hub.models.Llama3Backbone.from_preset(str(hf.directory), dtype="bfloat16"))
    backbone = backbone_for(hf.config, dtype="bfloat16")
    plan = mapper.transfer(RULES, hf.directory, backbone)
    assert plan.ok
    ported = weights_by_path(backbone)
    assert sorted(ported) == sorted(reference)
    assert [path for path, value in reference.items() if not np.array_equal(ported[path], value)] == []
    assert {value.dtype.name for value in ported.values()} == {"bfloat16"}
