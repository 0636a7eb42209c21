"""rules/hf-mixtral-to-keras-hub.toml beyond the catalogue: another expert count, a wrong one, auto-named layers.

The catalogue (tests/families/mixtral.py) loads 8-expert checkpoints, the rule file's default ``num_experts``.
Here a 4-expert MixtralForCausalLM is loaded with ``num_experts = 4`` (as ``--param num_experts=4`` gives it),
into a backbone built after keras-hub's own in the same process, so its mixture-of-experts layers have other
paths than the reference's (``mixtral_sparse_moe_block_2``): the rule file's checkpoint keys must not care.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from families.mixtral import config

import mapper
from mapper.plan import ProblemKind

pytestmark = pytest.mark.tf
keras_hub = pytest.importorskip("keras_hub")
pytest.importorskip("transformers")

RULES = Path(__file__).resolve().parent.parent / "rules" / "hf-mixtral-to-keras-hub.toml"


@pytest.fixture(scope="module")
def four_experts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MixtralForCausalLM checkpoint directory with 4 experts per layer, every weight random."""
    import torch
    import transformers

    torch.manual_seed(30)
    model = transformers.MixtralForCausalLM(config(num_local_experts=4))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    directory = tmp_path_factory.mktemp("mixtral4")
    model.save_pretrained(str(directory))
    return directory


def fresh_backbone(directory: Path) -> Any:
    from keras_hub.src.utils.transformers import convert_mixtral

    hf_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    return keras_hub.models.MixtralBackbone(**convert_mixtral.convert_backbone_config(hf_config))


def test_another_expert_count_loads_bit_identical_with_the_param(four_experts: Path) -> None:
    reference = keras_hub.models.MixtralBackbone.from_preset(str(four_experts))
    backbone = fresh_backbone(four_experts)
    moe_paths = {weight.path.split("/")[1] for weight in backbone.weights if "sparse_moe" in weight.path}
    assert moe_paths.isdisjoint(weight.path.split("/")[1] for weight in reference.weights)  # other names

    plan = mapper.transfer(mapper.load_rules(RULES, params={"num_experts": 4}), four_experts, backbone)

    assert plan.unused_sources == () and len(plan.assignments) == len(backbone.weights)
    for ported, expected in zip(backbone.weights, reference.weights, strict=True):  # same order, other names
        assert ported.shape == expected.shape and ported.numpy().tobytes() == expected.numpy().tobytes(), ported.path


@pytest.mark.parametrize(
    ("num_experts", "complaint"),
    [
        pytest.param(None, "missing e = '4', '5', '6', '7'", id="default-8-for-4"),
        pytest.param(2, "unexpected e = '2', '3'", id="2-for-4"),
    ],
)
def test_a_wrong_expert_count_is_a_plan_error_naming_the_experts(
    four_experts: Path, num_experts: int | None, complaint: str
) -> None:
    params = {} if num_experts is None else {"num_experts": num_experts}
    plan = mapper.make_plan(mapper.load_rules(RULES, params=params), four_experts, fresh_backbone(four_experts))

    assert not plan.ok
    groups = [problem for problem in plan.problems if problem.kind is ProblemKind.BAD_GROUP]
    assert len(groups) == 2 * 3  # every layer's three expert kernels
    assert all(complaint in problem.message for problem in groups), groups[0].message
