"""rules/hf-roberta-to-keras-hub.toml beyond the catalogue: what goes wrong when the backbone is built wrongly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from families.roberta import FAMILIES

import mapper
from mapper.plan import ProblemKind

pytestmark = pytest.mark.tf
keras_hub = pytest.importorskip("keras_hub")
pytest.importorskip("transformers")

ROBERTA = next(family for family in FAMILIES if family.name == "roberta-for-masked-lm")


@pytest.mark.parametrize(
    ("offset", "problems"),
    [
        pytest.param(2, [], id="max-position-embeddings-minus-2"),
        pytest.param(
            0, [(ProblemKind.SHAPE_MISMATCH, "roberta.embeddings.position_embeddings.weight")], id="no-offset"
        ),
    ],
)
def test_the_backbone_needs_max_position_embeddings_minus_the_padding_offset(
    tmp_path: Path, offset: int, problems: list[tuple[ProblemKind, str]]
) -> None:
    from keras_hub.src.utils.transformers import convert_roberta

    directory = ROBERTA.save(tmp_path / "roberta")
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    options = {**convert_roberta.convert_backbone_config(config)}
    options["max_sequence_length"] = config["max_position_embeddings"] - offset
    plan = mapper.make_plan(mapper.load_rules(ROBERTA.rules), directory, keras_hub.models.RobertaBackbone(**options))
    found = [(problem.kind, name) for problem in plan.problems if problem.is_error for name in problem.names]
    assert [problem for problem in problems if problem not in found] == []
    assert plan.ok is (problems == [])
