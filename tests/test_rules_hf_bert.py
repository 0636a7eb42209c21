"""rules/hf-bert-to-keras-hub.toml against keras-hub's own converter: every BertBackbone weight bit-identical.

Each checkpoint is a tiny random Hugging Face directory (tests/hf_fixtures.py). keras-hub loads it with
``BertBackbone.from_preset(directory)`` (its convert_bert.py, offline); a fresh backbone of the same config is
loaded through the rule file; the two must agree bit for bit on every weight.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hf_fixtures import BertVariant, Ported, bert_config, weights_by_path, write_bert

import mapper
from mapper.errors import PlanError
from mapper.plan import SkipKind
from mapper.report import render_text

pytestmark = pytest.mark.tf
keras_hub = pytest.importorskip("keras_hub")
pytest.importorskip("safetensors")

RULES = Path(__file__).resolve().parent.parent / "rules" / "hf-bert-to-keras-hub.toml"

# The naming variants the rule file must accept, each as a model class of transformers would save it.
VARIANTS = {
    "BertModel": BertVariant(),
    "BertForPreTraining-legacy-names": BertVariant(
        architecture="BertForPreTraining",
        prefix="bert.",
        layer_norm=("gamma", "beta"),
        head="pretraining",
        position_ids=True,
    ),
    "BertForSequenceClassification-float16": BertVariant(
        architecture="BertForSequenceClassification", prefix="bert.", head="classifier", dtype="float16"
    ),
}


def backbone_for(config: dict[str, Any], **overrides: Any) -> Any:
    """A fresh BertBackbone built from a Hugging Face config.json the way keras-hub builds it."""
    from keras_hub.src.utils.transformers import convert_bert

    return keras_hub.models.BertBackbone(**{**convert_bert.convert_backbone_config(config), **overrides})


@pytest.fixture(scope="module", params=list(VARIANTS.values()), ids=list(VARIANTS))
def ported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Ported:
    hf = write_bert(tmp_path_factory.mktemp("hf_bert"), request.param)
    reference = keras_hub.models.BertBackbone.from_preset(str(hf.directory))
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
    # Not vacuous: no weight kept the value the fresh backbone was built with.
    unchanged = [path for path, value in ported.initial.items() if np.array_equal(value, ported.ported[path])]
    assert unchanged == []


def test_plan_maps_every_tensor_or_skips_it_by_rule(ported: Ported) -> None:
    plan = ported.plan
    assert plan.ok, render_text(plan)
    assert plan.problems == ()  # no errors and no warnings (no dead rule: the optional ones may match nothing)
    assert plan.unused_sources == plan.unfilled_targets == ()
    assert sorted(assignment.target for assignment in plan.assignments) == sorted(ported.reference)
    assert {assignment.source for assignment in plan.assignments} == set(ported.hf.tensors) - set(ported.hf.skipped)
    assert {skip.name: skip.kind for skip in plan.skips} == dict.fromkeys(ported.hf.skipped, SkipKind.RULE)


def test_attention_kernels_are_transposed_then_split_into_heads(ported: Ported) -> None:
    query = ported.plan.assignment_for("transformer_layer_1/self_attention_layer/query/kernel")
    assert query is not None
    assert query.source.endswith("encoder.layer.1.attention.self.query.weight")
    assert [operation.describe() for operation in query.operations] == [
        "cast[float32]",
        "transpose[1, 0]",
        "reshape[16, 4, 4]",
    ]
    assert query.source_dtype == ported.hf.config["torch_dtype"]
    assert query.target_dtype == "float32"
    output = ported.plan.assignment_for("transformer_layer_0/self_attention_layer/attention_output/kernel")
    assert output is not None
    assert (output.source_shape, output.target_shape) == ((16, 16), (4, 4, 16))


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
        assert "BertBackbone has none" in reason_of[name] or "not a weight" in reason_of[name]


@pytest.mark.parametrize(
    ("variant", "overrides", "named"),
    [
        pytest.param(BertVariant(pooler=False), {}, "pooled_dense/kernel", id="checkpoint-without-pooler"),
        pytest.param(BertVariant(prefix="roberta."), {}, "roberta.embeddings.word_embeddings.weight", id="roberta"),
        pytest.param(BertVariant(), {"num_layers": 1}, "transformer_layer_1/", id="backbone-with-fewer-layers"),
        pytest.param(
            BertVariant(), {"intermediate_dim": 64}, "transformer_layer_0/feedforward_intermediate_dense/kernel",
            id="backbone-with-another-intermediate-size",
        ),
    ],
)  # fmt: skip
def test_a_checkpoint_that_does_not_fit_changes_nothing(
    tmp_path: Path, variant: BertVariant, overrides: dict[str, Any], named: str
) -> None:
    hf = write_bert(tmp_path, variant)
    backbone = backbone_for(bert_config(variant), **overrides)
    before = weights_by_path(backbone)
    with pytest.raises(PlanError) as raised:
        mapper.transfer(RULES, hf.directory, backbone)
    assert named in str(raised.value)
    after = weights_by_path(backbone)
    assert all(np.array_equal(before[path], after[path]) for path in before)


def test_the_rule_file_needs_no_sizes() -> None:
    # Attention reshapes take the target's shape: the same file fits every BERT size without editing.
    rules = mapper.load_rules(RULES)
    assert rules.params == {}
    assert all(
        not isinstance(getattr(operation, "reshape", "target"), tuple) for rule in rules.rules for operation in rule.ops
    )


def test_variants_cover_both_prefixes_and_both_layer_norm_namings() -> None:
    assert {variant.prefix for variant in VARIANTS.values()} == {"", "bert."}
    assert {variant.layer_norm for variant in VARIANTS.values()} == {("weight", "bias"), ("gamma", "beta")}
    assert {variant.dtype for variant in VARIANTS.values()} == {"float32", "float16"}
