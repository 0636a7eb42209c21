"""The Python API on the seed scenario, and every bad input of the core issue: a named error, and nothing changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import mapper
from mapper import demo
from mapper.plan import ProblemKind
from mapper.report import render_text

pytestmark = pytest.mark.tf
tf = pytest.importorskip("tensorflow")

SHIPPED = demo.RULES.read_text()
D1_KERNEL = "model/_operations/1/_kernel/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    return demo.write_pretrained_checkpoint(tmp_path_factory.mktemp("pretrained"))


def weights(model: object) -> dict[str, np.ndarray]:
    return {variable.path: variable.numpy() for variable in model.weights}  # type: ignore[attr-defined]


def test_seed_scenario_through_the_api(pretrained: tuple[object, Path]) -> None:
    source_model, prefix = pretrained
    model = demo.new_model()
    initial = weights(model)
    rules = mapper.load_rules(demo.RULES)
    plan = mapper.make_plan(rules, prefix, model)
    _assert_unchanged(model, initial)  # planning reads no tensor and changes nothing
    assert plan.ok
    assert plan.counts()["mapped"] == 8 and plan.counts()["skipped_by_guard"] == 2
    head = next(skip for skip in plan.skips if skip.target == "head/kernel")
    assert (head.source_shape, head.target_shape) == ((32, 10), (32, 5))
    report = render_text(plan, width=200)
    assert "[32, 10]" in report and "[32, 5]" in report and "head/kernel" in report
    result = mapper.apply(plan, prefix, model)
    assert result.assigned == 8
    after = weights(model)
    expected = weights(source_model)
    for name, value in after.items():
        reference = initial[name] if name.startswith("head/") else expected[name]
        np.testing.assert_array_equal(value, reference, err_msg=name)


def test_plan_round_trips_through_json(pretrained: tuple[object, Path]) -> None:
    _, prefix = pretrained
    plan = mapper.make_plan(demo.RULES, prefix, demo.new_model())
    assert mapper.Plan.from_json(plan.to_json()) == plan


GUARDED_IDENTITY = """
[[rules]]
match = '(?P<key>model/.+)'
target = "{key}"
guard = { same_shape = true, on_fail = "skip", reason = "new head" }
"""
HEADER = 'format = 1\n[target]\nnamespace = "checkpoint"\n'


def _rule(body: str) -> str:
    return HEADER + "[[rules]]\n" + body + GUARDED_IDENTITY


RULE_FILE_CASES = [
    ("malformed-toml", HEADER + "[[rules]\nmatch = 'x'\n", "invalid TOML", "r.toml:4:"),
    ("unknown-key", HEADER + "[[rules]]\nmtach = 'x'\nskip = 'y'\n", "unknown key 'mtach'", "did you mean 'match'?"),
    ("invalid-regex", HEADER + "[[rules]]\nmatch = 'a(b'\nskip = 'y'\n", "invalid regular expression", "position 3"),
    (
        "template-group",
        HEADER + "[[rules]]\nmatch = '(?P<k>.+)'\ntarget = '{key}'\n",
        "uses group 'key'",
        "it defines: k",
    ),
]


@pytest.mark.parametrize(
    ("case", "text", "message", "detail"), RULE_FILE_CASES, ids=[case[0] for case in RULE_FILE_CASES]
)
def test_bad_rule_files(
    pretrained: tuple[object, Path], tmp_path: Path, case: str, text: str, message: str, detail: str
) -> None:
    _, prefix = pretrained
    path = tmp_path / "r.toml"
    path.write_text(text)
    model = demo.new_model()
    before = weights(model)
    with pytest.raises(mapper.RuleFileError) as caught:
        mapper.transfer(path, prefix, model)
    assert message in str(caught.value) and detail in str(caught.value)
    assert str(path) in str(caught.value)
    _assert_unchanged(model, before)


PLAN_CASES = [
    (
        "impossible-reshape",
        _rule(f"match = '{D1_KERNEL}'\ntarget = '{D1_KERNEL}'\nops = [{{ reshape = [7, -1] }}]\n"),
        ProblemKind.BAD_OPERATION,
        "cannot reshape [16, 32] (512 elements) into [7, -1]",
    ),
    (
        "permutation-length",
        _rule(f"match = '{D1_KERNEL}'\ntarget = '{D1_KERNEL}'\nops = [{{ transpose = [2, 0, 1] }}]\n"),
        ProblemKind.BAD_OPERATION,
        "transpose [2, 0, 1] is not a permutation of the 2 axes",
    ),
    (
        "incompatible-cast",
        _rule(f"match = '{D1_KERNEL}'\ntarget = '{D1_KERNEL}'\nops = [{{ cast = 'int32' }}]\n"),
        ProblemKind.BAD_OPERATION,
        "cannot cast float32 to int32",
    ),
    (
        "missing-target",
        _rule(f"match = '{D1_KERNEL}'\ntarget = 'model/_operations/9/_kernel/.ATTRIBUTES/VARIABLE_VALUE'\n"),
        ProblemKind.MISSING_TARGET,
        "the target has no variable of that name",
    ),
    (
        "double-fill",
        _rule(
            "match = 'model/_operations/1/bias/.ATTRIBUTES/VARIABLE_VALUE'\n"
            "target = 'model/_operations/3/bias/.ATTRIBUTES/VARIABLE_VALUE'\n"
        ),
        ProblemKind.DOUBLE_FILL,
        "target 'd2/bias' is filled twice",
    ),
    (
        "unfilled-target",
        _rule("match = 'model/_operations/1/.+'\nskip = 'not wanted'\n"),
        ProblemKind.UNFILLED_TARGET,
        "'d1/kernel'",
    ),
]


@pytest.mark.parametrize(("case", "text", "kind", "message"), PLAN_CASES, ids=[case[0] for case in PLAN_CASES])
def test_bad_plans_raise_plan_error_and_change_nothing(
    pretrained: tuple[object, Path], tmp_path: Path, case: str, text: str, kind: ProblemKind, message: str
) -> None:
    _, prefix = pretrained
    path = tmp_path / "r.toml"
    path.write_text(text)
    model = demo.new_model()
    before = weights(model)
    with pytest.raises(mapper.PlanError) as caught:
        mapper.transfer(path, prefix, model)
    kinds = {problem.kind for problem in caught.value.problems}  # type: ignore[attr-defined]
    assert kind in kinds
    assert message in str(caught.value)
    assert "nothing was changed" in str(caught.value)
    _assert_unchanged(model, before)


def test_missing_source_path(tmp_path: Path) -> None:
    model = demo.new_model()
    before = weights(model)
    with pytest.raises(mapper.SourceNotFoundError) as caught:
        mapper.transfer(demo.RULES, tmp_path / "no-such-ckpt", model)
    assert "no-such-ckpt" in str(caught.value)
    _assert_unchanged(model, before)


def test_prefix_without_index(pretrained: tuple[object, Path], tmp_path: Path) -> None:
    _, prefix = pretrained
    copy = tmp_path / "ckpt"
    for data in Path(prefix).parent.glob("ckpt.data-*"):
        (tmp_path / data.name).write_bytes(data.read_bytes())
    model = demo.new_model()
    before = weights(model)
    with pytest.raises(mapper.CorruptSourceError) as caught:
        mapper.transfer(demo.RULES, copy, model)
    assert "index" in str(caught.value) and str(copy) in str(caught.value)
    _assert_unchanged(model, before)


def _assert_unchanged(model: object, before: dict[str, np.ndarray]) -> None:
    after = weights(model)
    assert after.keys() == before.keys()
    for name, value in after.items():
        np.testing.assert_array_equal(value, before[name], err_msg=f"{name} changed")
