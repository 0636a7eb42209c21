"""Tests for mapper.plan: the Plan data model, its derived views and its JSON round trip."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import get_args

import pytest
from golden_files import GOLDEN

from mapper.errors import MapperError, PlanError
from mapper.ops import Cast, Combine, Concat, Operation, Rearrange, Reshape, Slice, SplitPart, Stack, Transpose
from mapper.plan import (
    PLAN_FORMAT,
    Assignment,
    Join,
    JoinMember,
    NamedSource,
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
                join=Join(Stack(0), (JoinMember("experts.1.w", (1, 4, 12)),)),
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
                join=Join(Concat(0), (JoinMember("k", (4,)),)),
            ),
        ),
        skips=(
            Skip("global_step", SkipKind.RULE, "step counter", RuleRef("rules/a.toml", 2), source_shape=()),
            Skip(
                "cls/w",
                SkipKind.GUARD,
                "new class count",
                RULE,
                source_shape=(10, 4),
                target_shape=(5, 4),
                target="head/w",
                detail="shape [10, 4] does not equal the target's [5, 4]",
            ),
            Skip("head/b", SkipKind.KEEP, "fresh head", KEEP, target_shape=(5,)),
            Skip("opt/m", SkipKind.RULE, "optimizer", RULE, source_shape=(2,), source_id="head"),
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


def named_sources_plan() -> Plan:
    """A real planner plan over two named sources: a copy, a concat group, a split, a guard skip, a skip and a keep."""
    from mapper.plan.planner import build_plan
    from mapper.rules import parse_rules
    from mapper.specs import SourceSet, TargetMap, TensorSpec, VariableMap

    rules = parse_rules(
        "format = 1\n"
        '[[rules]]\nname = "encoder"\nsource = "backbone"\nmatch = "enc/(?P<rest>.*)"\ntarget = "encoder/{rest}"\n'
        '[[rules]]\nname = "qkv"\nsource = "backbone"\nmatch = "attn/(?P<p>[qkv])"\ntarget = "attn/qkv"\n'
        'concat = { axis = 0, by = "p", members = ["q", "k", "v"] }\n'
        '[[rules]]\nname = "fused"\nsource = "head"\nmatch = "fused"\ntargets = ["head/a", "head/b"]\n'
        "split = { axis = 0, parts = 2 }\n"
        '[[rules]]\nname = "classes"\nsource = "head"\nmatch = "cls/(?P<rest>.*)"\ntarget = "classes/{rest}"\n'
        'guard = { same_shape = true, on_fail = "skip", reason = "new class count" }\n'
        '[[rules]]\nmatch = "global_step"\nskip = "training counter"\n'
        '[[keep]]\nmatch = "head/b"\nreason = "fresh"\n',
        file="rules/named.toml",
    )

    def specs(*items: tuple[str, tuple[int, ...]], description: str) -> VariableMap:
        return VariableMap((TensorSpec(name, shape, "float32") for name, shape in items), description=description)

    sources = SourceSet(
        {
            "backbone": specs(
                ("enc/w", (2, 3)),
                ("attn/q", (2, 4)),
                ("attn/k", (1, 4)),
                ("attn/v", (1, 4)),
                ("global_step", ()),
                description="TensorFlow checkpoint bb/ckpt-1",
            ),
            "head": specs(
                ("fused", (4,)),
                ("cls/w", (10,)),
                ("global_step", ()),
                ("extra", (1,)),
                description="safetensors file head.safetensors (4 tensors)",
            ),
        }
    )
    target = TargetMap(
        specs(
            ("encoder/w", (2, 3)),
            ("attn/qkv", (4, 4)),
            ("head/a", (2,)),
            ("head/b", (2,)),
            ("classes/w", (5,)),
            description="model",
        )
    )
    return build_plan(rules, sources, target)


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
        pytest.param(lambda data: {**data, "format": 3}, "3", id="newer-version"),
        pytest.param(lambda data: {**data, "format": 0}, "0", id="older-version"),
        pytest.param(lambda data: {**data, "format": "1"}, "'1'", id="version-as-string"),
        pytest.param(lambda data: {**data, "format": True}, "True", id="version-as-boolean"),
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
    assert "reads formats 1 and 2" in message
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


# ---------------------------------------------------------------------------------------------------------------------
# Format 2: named sources, joins and skips as data; format 1 still read
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "make"),
    [("plan_v1_full.json", full_plan), ("plan_v1_named_sources.json", named_sources_plan)],
    ids=["full", "named-sources"],
)
def test_a_format_1_plan_reads_as_the_plan_it_was_written_from(fixture: str, make: Callable[[], Plan]) -> None:
    # The fixtures were written by the format-1 code (commit 9b38209) from these same plans.
    old = Plan.from_json((GOLDEN / fixture).read_text(encoding="utf-8"))
    plan = make()
    assert old == plan
    assert old == Plan.from_json(plan.to_json())
    assert old.format == PLAN_FORMAT == 2
    assert old.to_json() == plan.to_json()


def test_named_sources_are_records() -> None:
    plan = named_sources_plan()
    assert plan.source == (
        NamedSource("backbone", "TensorFlow checkpoint bb/ckpt-1"),
        NamedSource("head", "safetensors file head.safetensors (4 tensors)"),
    )
    assert plan.named_sources == plan.source
    assert full_plan().named_sources == ()
    assert json.loads(plan.to_json())["source"] == [
        {"id": "backbone", "description": "TensorFlow checkpoint bb/ckpt-1"},
        {"id": "head", "description": "safetensors file head.safetensors (4 tensors)"},
    ]


def test_a_skip_side_follows_from_its_kind() -> None:
    sides = {(skip.kind, skip.side) for plan in (full_plan(), named_sources_plan()) for skip in plan.skips}
    assert sides == {(SkipKind.RULE, "source"), (SkipKind.GUARD, "source"), (SkipKind.KEEP, "target")}
    assert all("side" not in skip for skip in json.loads(full_plan().to_json())["skips"])


def test_a_join_is_described_once() -> None:
    (joined,) = [a for a in named_sources_plan().assignments if a.join is not None]
    assert (joined.source, joined.source_shape) == ("attn/q", (2, 4))
    assert joined.join == Join(Concat(0), (JoinMember("attn/k", (1, 4)), JoinMember("attn/v", (1, 4))))
    assert joined.source_names == joined.members == ("attn/q", "attn/k", "attn/v")
    assert joined.source_shapes == ((2, 4), (1, 4), (1, 4))
    assert joined.combine == Concat(0)
    data = json.loads(named_sources_plan().to_json())["assignments"]
    assert [item["join"] for item in data if item["join"]] == [
        {
            "combine": {"axis": 0, "kind": "concat"},
            "others": [{"name": "attn/k", "shape": [1, 4]}, {"name": "attn/v", "shape": [1, 4]}],
        }
    ]
    assert not {"members", "member_shapes", "combine"} & {key for item in data for key in item}
    plain = full_plan().assignments[1]
    assert (plain.join, plain.combine, plain.members) == (None, None, ())
    assert (plain.source_names, plain.source_shapes) == (("old/w",), ((),))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param(
            "backbone=a.ckpt, head=b, c.npz",
            (NamedSource("backbone", "a.ckpt"), NamedSource("head", "b, c.npz")),
            id="comma-in-a-description",
        ),
        pytest.param(
            "backbone=a.ckpt, two more",
            (NamedSource("backbone", "a.ckpt, two more"), NamedSource("head", "")),
            id="one-not-named",
        ),
        pytest.param("two sources", "two sources", id="no-id-named"),
    ],
)
def test_format_1_named_sources_are_read_from_their_text(source: str, expected: object) -> None:
    data = json.loads((GOLDEN / "plan_v1_named_sources.json").read_text(encoding="utf-8"))
    assert Plan.from_json(json.dumps({**data, "source": source})).source == expected


def test_a_format_1_plan_over_one_source_keeps_its_description() -> None:
    data = json.loads((GOLDEN / "plan_v1_full.json").read_text(encoding="utf-8"))
    # Its records carry source ids (a hand-made plan), but its description names none: it stays a description.
    assert Plan.from_json(json.dumps(data)).source == "ckpt/model.ckpt-100"
    bare = {**data, "assignments": [], "skips": [], "unused_sources": []}
    assert Plan.from_json(json.dumps(bare)).source == "ckpt/model.ckpt-100"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"assignments": [3]}, id="assignment-not-an-object"),
        pytest.param({"skips": ["x"]}, id="skip-not-an-object"),
        pytest.param({"assignments": [{"combine": {"kind": "concat", "axis": 0}, "members": 3}]}, id="bad-members"),
    ],
)
def test_a_broken_format_1_plan_is_a_plan_error(change: dict[str, object]) -> None:
    data = json.loads((GOLDEN / "plan_v1_full.json").read_text(encoding="utf-8"))
    with pytest.raises(PlanError, match="not a valid plan"):
        Plan.from_json(json.dumps({**data, **change}))
