"""rules/hf-mixtral-to-keras-hub.toml beyond the catalogue: other expert counts, a wrong one, auto-named layers.

The catalogue (tests/families/mixtral.py) loads 4-expert checkpoints. The rule file's stack takes the number of
experts from the backbone (``count = "target"``), so an 8-expert checkpoint (every released Mixtral) loads with
no edit, here into a backbone built after keras-hub's own in the same process, whose mixture-of-experts layers
therefore have other paths than the reference's (``mixtral_sparse_moe_block_2``): the rule file's checkpoint
keys must not care. A backbone with another expert count, and a conversion with no backbone, are plan errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from families.mixtral import config

import mapper
from mapper.plan import ProblemKind
from mapper.plan.conversion import plan_conversion
from mapper.sources import open_source

pytestmark = pytest.mark.tf
keras_hub = pytest.importorskip("keras_hub")
pytest.importorskip("transformers")

RULES = Path(__file__).resolve().parent.parent / "rules" / "hf-mixtral-to-keras-hub.toml"


def save_mixtral(directory: Path, experts: int, seed: int) -> Path:
    """A MixtralForCausalLM checkpoint directory with ``experts`` experts per layer, every weight random."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.MixtralForCausalLM(config(num_local_experts=experts))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    model.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def four_experts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_mixtral(tmp_path_factory.mktemp("mixtral4"), 4, seed=30)


def fresh_backbone(directory: Path, **overrides: Any) -> Any:
    from keras_hub.src.utils.transformers import convert_mixtral

    hf_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    return keras_hub.models.MixtralBackbone(**{**convert_mixtral.convert_backbone_config(hf_config), **overrides})


def test_eight_experts_load_bit_identical_into_a_backbone_with_other_layer_names(tmp_path: Path) -> None:
    directory = save_mixtral(tmp_path, 8, seed=31)
    reference = keras_hub.models.MixtralBackbone.from_preset(str(directory))
    backbone = fresh_backbone(directory)
    moe_layers = {weight.path.split("/")[1] for weight in backbone.weights if "sparse_moe" in weight.path}
    assert moe_layers.isdisjoint(weight.path.split("/")[1] for weight in reference.weights)  # other names

    plan = mapper.transfer(RULES, directory, backbone)

    assert plan.unused_sources == () and len(plan.assignments) == len(backbone.weights)
    for ported, expected in zip(backbone.weights, reference.weights, strict=True):  # same order, other names
        assert ported.shape == expected.shape, ported.path
        assert ported.numpy().tobytes() == expected.numpy().tobytes(), ported.path


@pytest.mark.parametrize(
    ("num_experts", "complaint"),
    [
        pytest.param(8, "missing e = '4', '5', '6', '7'", id="backbone-with-8-for-4"),
        pytest.param(2, "unexpected e = '2', '3'", id="backbone-with-2-for-4"),
    ],
)
def test_a_backbone_with_another_expert_count_is_a_plan_error_naming_the_experts(
    four_experts: Path, num_experts: int, complaint: str
) -> None:
    plan = mapper.make_plan(
        mapper.load_rules(RULES), four_experts, fresh_backbone(four_experts, num_experts=num_experts)
    )

    assert not plan.ok
    groups = [problem for problem in plan.problems if problem.kind is ProblemKind.BAD_GROUP]
    assert len(groups) == 2 * 3  # every layer's three expert kernels
    assert all(complaint in problem.message for problem in groups), groups[0].message


def test_a_conversion_without_a_backbone_asks_for_the_number_of_experts(four_experts: Path) -> None:
    plan = plan_conversion(mapper.load_rules(RULES), open_source(four_experts))

    assert not plan.ok
    (problem,) = [problem for problem in plan.problems if 'count = "target"' in problem.message]
    assert "rule 6 ('experts')" in problem.message and "convert with a model" in problem.message
    assert len(problem.names) == 2 * 3 * 4  # every expert kernel of both layers
