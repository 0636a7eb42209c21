"""explain: golden outputs for matched, unmatched, guarded and skipped names, and for target questions."""

from __future__ import annotations

from pathlib import Path

import pytest
from golden_files import assert_golden

from mapper.authoring.explain import explain_source, explain_target
from mapper.plan.planner import build_plan
from mapper.rules import load_rules
from mapper.specs import TargetMap, TensorSpec, VariableMap

ROOT = Path(__file__).resolve().parent.parent
H, HEADS, FFN = 8, 2, 16


def _maps() -> tuple[VariableMap, TargetMap]:
    source = [
        TensorSpec("bert/embeddings/word_embeddings", (50, H), "float32"),
        TensorSpec("bert/encoder/layer_0/attention/self/query/kernel", (H, H), "float32"),
        TensorSpec("bert/encoder/layer_0/intermediate/dense/kernel", (H, FFN), "float32"),
        TensorSpec("bert/encoder/layer_0/attention/self/query/kernel/adam_m", (H, H), "float32"),
        TensorSpec("cls/predictions/output_bias", (50,), "float32"),
        TensorSpec("bert/encoder/layer_0/attention/self/qeury/bias", (H,), "float32"),
    ]
    target = [
        TensorSpec("embeddings/embeddings", (50, H), "float32"),
        TensorSpec("layer_0_attention/query/kernel", (H, HEADS, H // HEADS), "float32"),
        TensorSpec("layer_0_intermediate/kernel", (FFN, H), "float32"),
        TensorSpec("layer_0_attention/query/bias", (HEADS, H // HEADS), "float32"),
    ]
    return VariableMap(source, description="model.ckpt"), TargetMap(VariableMap(target, description="encoder"))


@pytest.fixture(scope="module")
def setup() -> tuple[object, VariableMap, object]:
    rules = load_rules(ROOT / "rules" / "tf1-bert-to-keras-encoder.toml")
    source, target = _maps()
    return rules, source, build_plan(rules, source, target)


@pytest.mark.parametrize(
    ("case", "name"),
    [
        ("matched", "bert/encoder/layer_0/attention/self/query/kernel"),
        ("transposed", "bert/encoder/layer_0/intermediate/dense/kernel"),
        ("skipped", "bert/encoder/layer_0/attention/self/query/kernel/adam_m"),
        ("unmatched", "bert/encoder/layer_0/attention/self/qeury/bias"),
        ("not-in-source", "bert/pooler/dense/kernel"),
    ],
)
def test_explain_source_golden(setup: tuple[object, VariableMap, object], case: str, name: str) -> None:
    rules, source, plan = setup
    text = explain_source(rules, name, source=source, plan=plan)  # type: ignore[arg-type]
    assert_golden(f"explain_{case}.txt", text.replace(str(ROOT) + "/", "") + "\n")


def test_explain_guarded(tmp_path: Path) -> None:
    rules_path = tmp_path / "head.toml"
    rules_path.write_text(
        'format = 1\n[[rules]]\nname = "head"\nmatch = "cls/(?P<p>.+)"\ntarget = "head/{p}"\n'
        'guard = { same_shape = true, on_fail = "skip", reason = "new class count" }\n'
    )
    rules = load_rules(rules_path)
    source = VariableMap([TensorSpec("cls/kernel", (8, 10), "float32")])
    target = TargetMap(VariableMap([TensorSpec("head/kernel", (8, 5), "float32")]))
    plan = build_plan(rules, source, target)
    text = explain_source(rules, "cls/kernel", source=source, plan=plan).replace(str(rules_path), "head.toml")
    assert_golden("explain_guarded.txt", text + "\n")
    target_text = explain_target(plan, "head/kernel").replace(str(rules_path), "head.toml")
    assert "left at its initial value: source 'cls/kernel' was skipped" in target_text
    assert "shape [8, 10] does not equal the target's [8, 5]" in target_text


@pytest.mark.parametrize(
    ("case", "name"),
    [
        ("filled", "layer_0_attention/query/kernel"),
        ("unknown", "no/such/variable"),
        ("unfilled", "layer_0_attention/query/bias"),
    ],
)
def test_explain_target_golden(setup: tuple[object, VariableMap, object], case: str, name: str) -> None:
    _, _, plan = setup
    assert_golden(f"explain_target_{case}.txt", explain_target(plan, name).replace(str(ROOT) + "/", "") + "\n")  # type: ignore[arg-type]


COUNTERS = """format = 1
[[rules]]
name = "counters"
match = '(?:.+\\.)?num_batches_tracked'
skip = "BatchNorm step counter"
"""


@pytest.mark.parametrize(
    ("name", "marked"),
    [
        pytest.param("layer1.0.bn1.running_mean", "layer1.0.bn1.|running_mean", id="another-buffer"),
        pytest.param("layer1.0.bn1.num_batches_trackd", "layer1.0.bn1.num_batches_track|d", id="typo"),
        pytest.param("bn1.num_batches_tracked_2", "bn1.num_batches_tracked|_2", id="more-after"),
    ],
)
def test_explain_marks_where_a_pattern_with_an_optional_prefix_stops_fitting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, marked: str
) -> None:
    from mapper import cli

    path = tmp_path / "r.toml"
    path.write_text(COUNTERS)
    cli.main(["explain", str(path), name])
    out = capsys.readouterr().out
    assert f"rule 1 'counters'  no match: {marked}\n" in out
    assert "wants more after the end" not in out
