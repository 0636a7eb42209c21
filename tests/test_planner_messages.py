"""Plan messages that point at the fix: one shape mismatch per rule, no double count, keeps in the file's namespace."""

from __future__ import annotations

import pytest

from mapper.plan import ProblemKind
from mapper.plan.planner import build_plan
from mapper.report import render_text
from tests.test_planner import ruleset, targets, variables

LAYERS = 3
PER_HEAD = '[[rules]]\nname = "attention"\nmatch = \'l(?P<i>\\d+)/(?P<p>q|k|v)\'\ntarget = "layer_{i}/{p}/kernel"\n'


def _layers(source: tuple[int, ...], target: tuple[int, ...], parts: str = "qkv") -> tuple[object, object]:
    names = [(i, p) for i in range(LAYERS) for p in parts]
    return (
        variables(*((f"l{i}/{p}", source) for i, p in names)),
        targets(*((f"layer_{i}/{p}/kernel", target) for i, p in names)),
    )


@pytest.mark.parametrize(
    ("source_shape", "target_shape", "fragments"),
    [
        pytest.param(
            (32,),
            (4, 8),
            (
                "9 sources [32] but their targets are [4, 8], each alike (first: source 'l0/q' -> target "
                "'layer_0/q/kernel'); add { reshape = \"target\" } to the rule's ops (the target's shape, here [4, 8]",
            ),
            id="reshape",
        ),
        pytest.param(
            (8, 4),
            (4, 8),
            ("9 sources [8, 4] but their targets are [4, 8]", "add { transpose = [1, 0] }"),
            id="transpose",
        ),
        pytest.param((10,), (4, 8), ("9 sources [10]", "add a guard with same_shape = true"), id="nothing-fits"),
    ],
)
def test_the_same_mismatch_across_layers_is_one_problem_of_the_rule(
    source_shape: tuple[int, ...], target_shape: tuple[int, ...], fragments: tuple[str, ...]
) -> None:
    source, target = _layers(source_shape, target_shape)
    plan = build_plan(ruleset(PER_HEAD), source, target)
    (problem,) = plan.problems  # and no "9 target variables would keep their initial values" on top
    assert problem.kind is ProblemKind.SHAPE_MISMATCH
    for fragment in fragments:
        assert fragment in problem.message, problem.message
    assert set(problem.names) == set(source) | set(target.variables)
    assert "{ reshape = [" not in problem.message
    report = render_text(plan)
    assert report.startswith("Plan FAILED with 1 error:")
    assert "would keep their initial values" not in report


def test_different_mismatches_of_one_rule_stay_apart() -> None:
    source, target = _layers((32,), (4, 8))
    odd = targets(*((name, (4, 8) if "/q/" in name else (2, 16)) for name in target.variables))
    plan = build_plan(ruleset(PER_HEAD), source, odd)
    messages = [problem.message for problem in plan.problems]
    assert [message.split(" but ")[0] for message in messages] == ["3 sources [32]", "6 sources [32]"]
    assert all(problem.kind is ProblemKind.SHAPE_MISMATCH for problem in plan.problems)


def test_a_single_mismatch_keeps_its_one_target_message() -> None:
    plan = build_plan(
        ruleset('[[rules]]\nmatch = "s"\ntarget = "t"\n'), variables(("s", (12,))), targets(("t", (3, 4)))
    )
    (problem,) = plan.problems
    assert problem.message == (
        "source 's' [12] but target 't' is [3, 4]; add { reshape = \"target\" } to the rule's ops (the target's "
        'shape, here [3, 4]: no sizes in the file), or a guard with on_fail = "skip"'
    )


@pytest.mark.parametrize(
    ("guard", "ops", "kind"),
    [
        pytest.param("", "", ProblemKind.SHAPE_MISMATCH, id="shape-mismatch"),
        pytest.param("", '{ cast = "int32" }', ProblemKind.BAD_OPERATION, id="bad-operation"),
        pytest.param("guard = { rank = 2 }\n", "", ProblemKind.GUARD_FAILED, id="guard-failed"),
    ],
)
def test_a_rule_error_is_not_counted_again_as_an_unfilled_target(guard: str, ops: str, kind: ProblemKind) -> None:
    body = '[[rules]]\nmatch = "s"\ntarget = "t"\n' + guard + (f"ops = [{ops}]\n" if ops else "")
    plan = build_plan(ruleset(body), variables(("s", (12,))), targets(("t", (3, 4)), ("u", (2,))))
    # 'u' is unfilled and nothing says why; 't' has its own error.
    assert [problem.kind for problem in plan.problems] == [kind, ProblemKind.UNFILLED_TARGET]
    assert "1 target variable would keep its initial value without a rule saying so: 'u'" in plan.problems[1].message
    assert [entry.name for entry in plan.unfilled_targets] == ["t", "u"]


CHECKPOINT_KEYS = {"d/kernel": "model/d/kernel/.ATTRIBUTES/VARIABLE_VALUE", "head/kernel": "model/head/.ATTRIBUTES/V"}


@pytest.mark.parametrize(
    ("namespace", "hint"),
    [
        pytest.param(None, "list it in a [[keep]] entry with a reason", id="path"),
        pytest.param(
            "checkpoint",
            'list it in a [[keep]] entry with a reason and namespace = "path" (these are Keras paths; a keep in '
            "this 'checkpoint'-namespace file otherwise matches checkpoint keys)",
            id="checkpoint",
        ),
    ],
)
def test_following_the_unfilled_target_hint_gives_a_live_keep(namespace: str | None, hint: str) -> None:
    key = "model/d/kernel/.ATTRIBUTES/VARIABLE_VALUE" if namespace else "d/kernel"
    body = f'[[rules]]\nmatch = "w"\ntarget = "{key}"\n'
    target = targets(("d/kernel", (2,)), ("head/kernel", (2,)), checkpoint=CHECKPOINT_KEYS)
    plan = build_plan(ruleset(body, namespace=namespace), variables(("w", (2,))), target)
    (problem,) = plan.problems
    assert "'head/kernel'" in problem.message and hint in problem.message
    keep = '[[keep]]\nmatch = "head/kernel"\nreason = "new head"\n' + ('namespace = "path"\n' if namespace else "")
    followed = build_plan(ruleset(body + keep, namespace=namespace), variables(("w", (2,))), target)
    assert followed.ok and followed.problems == ()  # no dead keep (M101)


@pytest.mark.parametrize(
    ("ops", "source", "target", "transformed"),
    [
        pytest.param('{ cast = "float32" }', ((4, 2), "float32"), ((4, 2), "float32"), 0, id="cast-to-own-dtype"),
        pytest.param('{ cast = "target" }', ((4, 2), "float32"), ((4, 2), "float32"), 0, id="cast-target-same"),
        pytest.param("{ reshape = [4, 2] }", ((4, 2), "float32"), ((4, 2), "float32"), 0, id="reshape-to-own-shape"),
        pytest.param("{ transpose = [0, 1] }", ((4, 2), "float32"), ((4, 2), "float32"), 0, id="identity-transpose"),
        pytest.param('{ cast = "float16" }', ((4, 2), "float32"), ((4, 2), "float16"), 1, id="real-cast"),
        pytest.param("{ transpose = [1, 0] }", ((2, 2), "float32"), ((2, 2), "float32"), 1, id="square-transpose"),
        pytest.param(
            '{ cast = "float32" }, { transpose = [1, 0] }', ((4, 2), "float32"), ((2, 4), "float32"), 1, id="one-real"
        ),
    ],
)
def test_only_operations_that_change_the_tensor_count_as_transformed(
    ops: str,
    source: tuple[tuple[int, ...], str],
    target: tuple[tuple[int, ...], str],
    transformed: int,
) -> None:
    body = f'[[rules]]\nmatch = "s"\ntarget = "t"\nops = [{ops}]\n'
    plan = build_plan(ruleset(body), variables(("s", *source)), targets(("t", *target)))
    assert plan.ok, plan.problems
    assert plan.counts()["transformed"] == transformed
    assert plan.assignments[0].operations  # kept in the plan: the executor runs what the plan lists
    summary = render_text(plan).splitlines()[0]
    assert summary == "Plan OK: 1 mapped" + (" (1 transformed)" if transformed else "")
