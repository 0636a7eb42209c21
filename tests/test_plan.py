"""Tests for mapper.plan: the Plan data model, its derived views and its JSON round trip."""

from __future__ import annotations

import dataclasses
import json
from typing import get_args

import pytest

from mapper.errors import MapperError, PlanError
from mapper.ops import Cast, Combine, Concat, Operation, Rearrange, Reshape, Slice, SplitPart, Stack, Transpose
from mapper.plan import (
    PLAN_FORMAT,
    Assignment,
    Plan,
    Problem,
    ProblemKind,
    RuleRef,
    Severity,
    Skip,
    SkipKind,
    TensorEntry,
)

RULE = RuleRef("rules/a.toml", 1, "query")
KEEP = RuleRef("rules/b.toml", 2, None, "keep")


def full_plan() -> Plan:
    """A plan with every field, every operation, every skip kind and every problem kind populated."""
    return Plan(
        rule_files=("rules/a.toml", "rules/b.toml"),
        source="ckpt/model.ckpt-100",
        target="keras Functional 'bert'",
        namespace="checkpoint",
        assignments=(
            Assignment(
                "layer_1/query/kernel",
                "model/_operations/3/_kernel/.ATTRIBUTES/VARIABLE_VALUE",
                "bert/encoder/layer_0/attention/self/query/kernel",
                RULE,
                (Transpose((1, 0)), Reshape((8, 2, 4)), Cast("bfloat16")),
                (8, 8),
                "float32",
                (8, 2, 4),
                "bfloat16",
            ),
            Assignment("plain/w", "plain/w", "old/w", RuleRef("rules/a.toml", 3), (), (), "int64", (), "int64"),
            Assignment(
                "experts/kernel",
                "experts/kernel",
                "experts.0.w",
                RuleRef("rules/a.toml", 4, "experts"),
                (
                    SplitPart(axis=-1, part=0, parts=2, start=0, stop=6),
                    Slice((0, (None, None, None), (1, None, 2))),
                    Rearrange("(h d) c -> c h d", (("h", 2),)),
                ),
                (1, 4, 12),
                "float32",
                (6, 2, 1),
                "float32",
                members=("experts.0.w", "experts.1.w"),
                member_shapes=((1, 4, 12), (1, 4, 12)),
                combine=Stack(0),
                source_id="backbone",
            ),
            Assignment(
                "fused/kernel",
                "fused/kernel",
                "q",
                RULE,
                (),
                (4,),
                "float32",
                (8,),
                "float32",
                members=("q", "k"),
                member_shapes=((4,), (4,)),
                combine=Concat(0),
            ),
        ),
        skips=(
            Skip("global_step", "source", SkipKind.RULE, "step counter", RuleRef("rules/a.toml", 2), source_shape=()),
            Skip(
                "cls/w",
                "source",
                SkipKind.GUARD,
                "new class count",
                RULE,
                source_shape=(10, 4),
                target_shape=(5, 4),
                target="head/w",
                detail="shape [10, 4] does not equal the target's [5, 4]",
            ),
            Skip("head/b", "target", SkipKind.KEEP, "fresh head", KEEP, target_shape=(5,)),
            Skip("opt/m", "source", SkipKind.RULE, "optimizer", RULE, source_shape=(2,), source_id="head"),
        ),
        unused_sources=(TensorEntry("extra/w", (3, 3), "float16"), TensorEntry("x", (1,), "int8", "head")),
        unfilled_targets=(TensorEntry("new/scale", (7,), "bfloat16"),),
        problems=tuple(
            Problem(kind, severity, f"{kind.value} happened", rule, names)
            for kind, severity, rule, names in [
                (ProblemKind.UNUSED_SOURCE, Severity.WARNING, None, ("extra/w",)),
                (ProblemKind.UNFILLED_TARGET, Severity.ERROR, None, ("new/scale",)),
                (ProblemKind.DEAD_RULE, Severity.WARNING, KEEP, ()),
                (ProblemKind.DOUBLE_FILL, Severity.ERROR, RULE, ("t", "s")),
                (ProblemKind.MISSING_TARGET, Severity.ERROR, RULE, ("s", "t")),
                (ProblemKind.SHAPE_MISMATCH, Severity.ERROR, RULE, ("s", "t")),
                (ProblemKind.DTYPE_MISMATCH, Severity.ERROR, RULE, ("s", "t")),
                (ProblemKind.GUARD_FAILED, Severity.ERROR, RULE, ("s", "t")),
                (ProblemKind.BAD_OPERATION, Severity.ERROR, RULE, ("s", "t")),
                (ProblemKind.BAD_TEMPLATE, Severity.ERROR, RULE, ("s",)),
                (ProblemKind.BAD_GROUP, Severity.ERROR, RULE, ("experts.0.w",)),
                (ProblemKind.UNKNOWN_SOURCE, Severity.ERROR, RULE, ("head",)),
                (ProblemKind.LINT, Severity.WARNING, RULE, ()),
            ]
        ),
    )


def test_full_plan_covers_every_kind() -> None:
    plan = full_plan()
    assert {problem.kind for problem in plan.problems} == set(ProblemKind)
    assert {skip.kind for skip in plan.skips} == set(SkipKind)
    assert {type(op) for a in plan.assignments for op in a.operations} == set(get_args(Operation))
    assert {type(a.combine) for a in plan.assignments if a.combine} == set(get_args(Combine))
    # Every field of every record is set to something other than its default somewhere.
    for record_type, records in [
        (Skip, plan.skips),
        (Plan, [plan]),
        (Assignment, plan.assignments),
        (TensorEntry, plan.unused_sources),
    ]:
        for field in dataclasses.fields(record_type):
            if field.name.startswith("_"):
                continue
            if field.name == "format" or field.default is dataclasses.MISSING:
                continue  # required fields are set anyway; tuple fields are checked by the lines above
            assert any(getattr(record, field.name) != field.default for record in records), field.name


@pytest.mark.parametrize("indent", [2, None, 0], ids=["indented", "compact", "zero-indent"])
def test_json_round_trip_with_every_field(indent: int | None) -> None:
    plan = full_plan()
    text = plan.to_json(indent=indent)
    again = Plan.from_json(text)
    assert again == plan
    assert Plan.from_json(text.encode()) == plan
    # Types survive, not just values.
    assert isinstance(again.assignments[0].operations[0], Transpose)
    assert isinstance(again.assignments[0].operations[1], Reshape)
    assert isinstance(again.assignments[0].operations[2], Cast)
    assert again.assignments[0].source_shape == (8, 8)
    assert isinstance(again.assignments[0].source_shape, tuple)
    assert again.skips[1].kind is SkipKind.GUARD
    assert again.problems[0].severity is Severity.WARNING
    assert again.problems[2].rule == KEEP
    assert again.assignment_for("layer_1/query/kernel") == plan.assignments[0]
    # The derived views agree.
    assert again.counts() == plan.counts()
    assert again.source_bytes == plan.source_bytes
    # And writing it again gives the same text.
    assert again.to_json(indent=indent) == text


def test_json_is_plain_data() -> None:
    data = json.loads(full_plan().to_json())
    assert data["format"] == PLAN_FORMAT
    assert data["namespace"] == "checkpoint"
    assert data["assignments"][0]["operations"] == [
        {"perm": [1, 0], "kind": "transpose"},
        {"shape": [8, 2, 4], "kind": "reshape"},
        {"dtype": "bfloat16", "kind": "cast"},
    ]
    assert data["skips"][1]["kind"] == "guard"
    assert data["skips"][1]["detail"] == "shape [10, 4] does not equal the target's [5, 4]"
    assert data["problems"][0]["severity"] == "warning"
    assert data["problems"][0]["kind"] == "unused_source"
    assert "_by_target" not in data
    assert "\n" not in full_plan().to_json(indent=None)


def test_empty_plan_round_trips() -> None:
    plan = Plan(rule_files=(), source="s", target="t", namespace="path")
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param(lambda data: {**data, "format": 2}, "2", id="newer-version"),
        pytest.param(lambda data: {**data, "format": 0}, "0", id="older-version"),
        pytest.param(lambda data: {**data, "format": "1"}, "'1'", id="version-as-string"),
        pytest.param(
            lambda data: {key: value for key, value in data.items() if key != "format"}, "None", id="no-version"
        ),
        pytest.param(lambda data: [data], "None", id="not-an-object"),
    ],
)
def test_from_json_of_another_format_is_a_plan_error(text, shown: str) -> None:  # type: ignore[no-untyped-def]
    document = json.dumps(text(json.loads(full_plan().to_json())))
    with pytest.raises(PlanError) as caught:
        Plan.from_json(document)
    assert isinstance(caught.value, MapperError)
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert f"plan format {shown} is not supported" in message
    assert f"reads format {PLAN_FORMAT}" in message
    assert "re-create the plan" in message
    assert caught.value.problems == ()
    assert caught.value.plan is None


def test_views() -> None:
    plan = full_plan()
    assert not plan.ok
    assert [problem.kind for problem in plan.warnings] == [
        ProblemKind.UNUSED_SOURCE,
        ProblemKind.DEAD_RULE,
        ProblemKind.LINT,
    ]
    assert len(plan.errors) == 10
    assert all(problem.is_error for problem in plan.errors)
    assert plan.has_operations
    assert plan.assignment_for("plain/w") is plan.assignments[1]
    assert plan.assignment_for("nothing") is None
    assert plan.counts() == {
        "mapped": 4,
        "transformed": 3,
        "skipped_by_rule": 2,
        "skipped_by_guard": 1,
        "kept_by_rule": 1,
        "unused": 2,
        "unfilled": 1,
        "errors": 10,
        "warnings": 3,
    }
    # 8*8 float32 + one int64 scalar + two stacked [1, 4, 12] float32 members + two concatenated [4] float32
    assert plan.source_bytes == 64 * 4 + 8 + 2 * 48 * 4 + 2 * 4 * 4
    assert plan.assignments[0].transformed
    assert not plan.assignments[1].transformed


def test_ok_plan_and_no_operations() -> None:
    plan = dataclasses.replace(
        full_plan(),
        assignments=full_plan().assignments[1:2],
        problems=tuple(problem for problem in full_plan().problems if not problem.is_error),
    )
    assert plan.ok
    assert not plan.has_operations
    assert plan.counts()["errors"] == 0
    assert plan.assignment_for("layer_1/query/kernel") is None


def test_unknown_dtype_counts_no_bytes() -> None:
    assignment = Assignment("t", "t", "s", RULE, (), (4,), "string", (4,), "string")
    plan = Plan(rule_files=(), source="s", target="t", namespace="path", assignments=(assignment,))
    assert plan.source_bytes == 0


def test_records_are_frozen() -> None:
    plan = full_plan()
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.source = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.assignments[0].source = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.skips[0].reason = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.problems[0].message = "other"  # type: ignore[misc]


def test_plans_compare_by_value() -> None:
    assert full_plan() == full_plan()
    assert full_plan() != dataclasses.replace(full_plan(), namespace="path")
    assert full_plan() != dataclasses.replace(full_plan(), assignments=full_plan().assignments[:1])


@pytest.mark.parametrize(
    ("ref", "text"),
    [
        pytest.param(RuleRef("r.toml", 2, "head"), "r.toml rule 2 ('head')", id="named-rule"),
        pytest.param(RuleRef("r.toml", 1), "r.toml rule 1", id="unnamed-rule"),
        pytest.param(RuleRef("r.toml", 3, "new", "keep"), "r.toml keep rule 3 ('new')", id="named-keep"),
        pytest.param(RuleRef("r.toml", 1, None, "keep"), "r.toml keep rule 1", id="unnamed-keep"),
    ],
)
def test_rule_ref_text(ref: RuleRef, text: str) -> None:
    assert str(ref) == text


def test_enums_are_strings() -> None:
    assert ProblemKind("bad_template") is ProblemKind.BAD_TEMPLATE
    assert Severity("warning") is Severity.WARNING
    assert SkipKind("guard") is SkipKind.GUARD
    assert isinstance(ProblemKind.DEAD_RULE, str)
    assert ProblemKind.DEAD_RULE.value == "dead_rule"


@pytest.mark.parametrize(
    ("text", "shown"),
    [("{not json", "invalid JSON"), ('{"format": 1, "rule_files": 3}', "not a valid plan")],
    ids=["not-json", "bad-structure"],
)
def test_from_json_of_garbage_is_a_plan_error(text: str, shown: str) -> None:
    with pytest.raises(PlanError) as caught:
        Plan.from_json(text)
    assert shown in str(caught.value)
