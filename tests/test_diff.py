"""Plan diff: what a model or rule change did to a mapping (golden), and its refusals."""

from __future__ import annotations

import dataclasses
import json

import pytest
from golden_files import GOLDEN, assert_golden

from mapper.authoring.diff import diff_plans, load_plan_for_diff, render_diff
from mapper.errors import PlanError
from mapper.plan.planner import build_plan
from mapper.rules import parse_rules
from mapper.specs import TargetMap, TensorSpec, VariableMap

RULES = """format = 1
[policies]
unfilled_target = "warn"
[[rules]]
match = 'enc/layer_(?P<i>\\d+)/(?P<p>q|k|v)/w'
target = "layer_{i}/{p}/kernel"
ops = [{ transpose = [1, 0] }]
[[rules]]
match = 'enc/layer_(?P<i>\\d+)/(?P<p>q|k|v)/b'
target = "layer_{i}/{p}/bias"
"""


def _plan(layers: int, *, transpose: bool = True, width: int = 4) -> object:
    source = [
        TensorSpec(f"enc/layer_{i}/{p}/{kind}", (width, 4) if kind == "w" else (4,), "float32")
        for i in range(layers)
        for p in "qkv"
        for kind in "wb"
    ]
    target = [
        TensorSpec(f"layer_{i}/{p}/{kind}", (4, width) if kind == "kernel" else (4,), "float32")
        for i in range(4)
        for p in "qkv"
        for kind in ("kernel", "bias")
    ]
    rules = RULES if transpose else RULES.replace("ops = [{ transpose = [1, 0] }]\n", "")
    return build_plan(parse_rules(rules, file="r.toml"), VariableMap(source), TargetMap(VariableMap(target)))


def test_diff_golden() -> None:
    old = _plan(2)  # a model with 2 layers' weights
    new = _plan(4, width=4)  # the checkpoint grew to 4 layers
    changed_new = dataclasses.replace(
        new,
        assignments=tuple(
            dataclasses.replace(a, operations=()) if a.target == "layer_0/q/kernel" else a
            for a in new.assignments  # type: ignore[attr-defined]
        ),
    )
    diff = diff_plans(old, changed_new)  # type: ignore[arg-type]
    assert len(diff.added) == 12 and len(diff.changed) == 1 and not diff.removed
    assert_golden("diff.txt", render_diff(diff, old_label="plan-2.json", new_label="plan-4.json") + "\n")
    assert_golden("diff.md", render_diff(diff, old_label="plan-2.json", new_label="plan-4.json", markdown=True) + "\n")


def test_identical_plans_have_no_diff() -> None:
    plan = _plan(2)
    diff = diff_plans(plan, plan)  # type: ignore[arg-type]
    assert diff.empty
    assert render_diff(diff) == "no change: both plans fill every target the same way"


def test_diff_refuses_other_format_versions() -> None:
    text = json.loads(_plan(2).to_json())  # type: ignore[attr-defined]
    text["format"] = 3
    with pytest.raises(PlanError) as caught:
        load_plan_for_diff(json.dumps(text), "new.json")
    assert "new.json: plan format 3 is not supported" in str(caught.value)
    old = _plan(2)
    with pytest.raises(PlanError, match="cannot diff a plan of format 2 with one of format 7"):
        diff_plans(old, dataclasses.replace(old, format=7))  # type: ignore[type-var]


def test_a_json_report_can_be_diffed() -> None:
    from mapper.report import render_json

    plan = _plan(2)
    assert load_plan_for_diff(render_json(plan), "report.json") == plan  # type: ignore[arg-type]


@pytest.mark.parametrize("fixture", ["plan_v1_named_sources.json", "report_v1_named_sources.json"])
def test_a_format_1_plan_or_report_diffs_against_format_2(fixture: str) -> None:
    # Written by the format-1 code from the plan test_plan.named_sources_plan() builds today.
    from test_plan import named_sources_plan

    from mapper.report import render_json

    old = load_plan_for_diff((GOLDEN / fixture).read_text(encoding="utf-8"), fixture)
    plan = named_sources_plan()
    assert old == plan
    for new in (plan.to_json(), render_json(plan)):
        assert diff_plans(old, load_plan_for_diff(new, "new.json")).empty
    changed = dataclasses.replace(plan, assignments=plan.assignments[1:])
    assert [a.target for a in diff_plans(old, changed).removed] == [plan.assignments[0].target]
