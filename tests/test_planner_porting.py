"""Tests for the porting additions to mapper.plan.planner: split, concat/stack, slice, rearrange and named sources."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mapper.dtypes import numpy_dtype
from mapper.errors import OperationError
from mapper.ops import (
    NUMPY,
    Concat,
    Rearrange,
    Reshape,
    Slice,
    SplitPart,
    Stack,
    Transpose,
    apply_numpy,
    apply_operations,
    combine_values,
    infer_all,
)
from mapper.plan import Assignment, NamedSource, Plan, Problem, ProblemKind, RuleRef, Severity, Skip, SkipKind
from mapper.plan.conversion import plan_conversion
from mapper.plan.planner import build_plan
from mapper.rules import RuleSet, parse_rules
from mapper.specs import SourceSet, TargetMap, TensorSpec, VariableMap

FILE = "porting.toml"
QUIET = {"unused_source": "ignore", "unfilled_target": "ignore", "dead_rule": "ignore"}
H = 8  # hidden size
HEADS = 2
DIM = H // HEADS

Item = tuple[str, tuple[int, ...]] | tuple[str, tuple[int, ...], str]


def ruleset(body: str, policies: Mapping[str, str] | None = None, *, params: str = "") -> RuleSet:
    text = "format = 1\n"
    if params:
        text += "[params]\n" + params
    if policies:
        text += "[policies]\n" + "".join(f'{key} = "{value}"\n' for key, value in policies.items())
    return parse_rules(text + body, file=FILE)


def variables(*items: Item, description: str = "") -> VariableMap:
    return VariableMap(
        (TensorSpec(item[0], item[1], item[2] if len(item) == 3 else "float32") for item in items),
        description=description,
    )


def targets(*items: Item) -> TargetMap:
    return TargetMap(variables(*items))


def ref(index: int, name: str | None = None, section: str = "rules") -> RuleRef:
    return RuleRef(FILE, index, name, section)  # type: ignore[arg-type]


def problems(plan: Plan) -> list[tuple[ProblemKind, Severity]]:
    return [(problem.kind, problem.severity) for problem in plan.problems]


def only_problem(plan: Plan, kind: ProblemKind) -> Problem:
    assert [problem.kind for problem in plan.problems] == [kind], [problem.message for problem in plan.problems]
    return plan.problems[0]


def random_values(specs: Mapping[str, TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(seed)
    return {name: generator.standard_normal(spec.shape).astype(numpy_dtype(spec.dtype)) for name, spec in specs.items()}


def run(assignment: Assignment, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """What an executor computes for one assignment, with NumPy: combine first, then the operations."""
    if assignment.combine is not None:
        joined = combine_values(assignment.combine, [values[name] for name in assignment.members], NUMPY)
        result: np.ndarray = apply_operations(assignment.operations, joined, NUMPY)
        return result
    return apply_numpy(assignment.operations, values[assignment.source])


def snapshot(*objects: object) -> list[object]:
    return [copy.deepcopy(dict(item)) if isinstance(item, Mapping) else repr(item) for item in objects]


# ---------------------------------------------------------------------------------------------------------------------
# split
# ---------------------------------------------------------------------------------------------------------------------

QKV = ("query", "key", "value")


def test_fused_qkv_in_pytorch_layout_is_split_on_axis_0_then_transposed_and_reshaped() -> None:
    rules = ruleset(
        '[[rules]]\nname = "fused qkv"\n'
        'match = "layers\\\\.(?P<i>\\\\d+)\\\\.attn\\\\.qkv\\\\.weight"\n'
        'targets = ["layer_{i}/query/kernel", "layer_{i}/key/kernel", "layer_{i}/value/kernel"]\n'
        'split = { axis = 0, parts = 3 }\nops = [{ transpose = [1, 0] }, { reshape = ["hidden", "heads", -1] }]\n',
        params=f"hidden = {H}\nheads = {HEADS}\n",
    )
    source = variables(("layers.0.attn.qkv.weight", (3 * H, H)))
    target = targets(*((f"layer_0/{part}/kernel", (H, HEADS, DIM)) for part in QKV))
    plan = build_plan(rules, source, target)
    assert plan.ok, plan.problems
    assert plan.problems == ()
    assert [(a.source, a.target) for a in plan.assignments] == [
        ("layers.0.attn.qkv.weight", f"layer_0/{part}/kernel") for part in QKV
    ]
    for part, assignment in enumerate(plan.assignments):
        assert assignment.operations == (
            SplitPart(axis=0, part=part, parts=3, start=part * H, stop=(part + 1) * H),
            Transpose((1, 0)),
            Reshape((H, HEADS, DIM)),
        )
        assert (assignment.source_shape, assignment.target_shape) == ((3 * H, H), (H, HEADS, DIM))
        assert assignment.rule == ref(1, "fused qkv")
        assert assignment.source_names == ("layers.0.attn.qkv.weight",)
        assert assignment.members == () and assignment.combine is None
    # The numbers: part i of the rows, transposed to [in, out], out split into heads.
    values = random_values(source)
    fused = values["layers.0.attn.qkv.weight"]
    for part, assignment in enumerate(plan.assignments):
        expected = fused[part * H : (part + 1) * H].T.reshape(H, HEADS, DIM)
        np.testing.assert_array_equal(run(assignment, values), expected)


def test_gpt2_c_attn_kernel_and_bias_are_split_on_the_last_axis() -> None:
    rules = ruleset(
        '[[rules]]\nname = "c_attn kernel"\nmatch = "h\\\\.(?P<i>\\\\d+)\\\\.attn\\\\.c_attn\\\\.weight"\n'
        'targets = ["layer_{i}/query/kernel", "layer_{i}/key/kernel", "layer_{i}/value/kernel"]\n'
        'split = { axis = -1, parts = 3 }\nops = [{ reshape = ["hidden", "heads", -1] }]\n'
        '[[rules]]\nname = "c_attn bias"\nmatch = "h\\\\.(?P<i>\\\\d+)\\\\.attn\\\\.c_attn\\\\.bias"\n'
        'targets = ["layer_{i}/query/bias", "layer_{i}/key/bias", "layer_{i}/value/bias"]\n'
        'split = { axis = -1, parts = 3 }\nops = [{ reshape = ["heads", -1] }]\n',
        params=f"hidden = {H}\nheads = {HEADS}\n",
    )
    source = variables(
        *(
            (f"h.{i}.attn.c_attn.{w}", (H, 3 * H) if w == "weight" else (3 * H,))
            for i in range(2)
            for w in ("weight", "bias")
        )
    )
    target = targets(
        *(
            (f"layer_{i}/{part}/{kind}", (H, HEADS, DIM) if kind == "kernel" else (HEADS, DIM))
            for i in range(2)
            for part in QKV
            for kind in ("kernel", "bias")
        )
    )
    plan = build_plan(rules, source, target)
    assert plan.ok, plan.problems
    assert len(plan.assignments) == 12
    assert {a.target for a in plan.assignments} == set(target.variables)
    values = random_values(source, seed=1)
    for assignment in plan.assignments:
        split = assignment.operations[0]
        assert isinstance(split, SplitPart)
        assert (split.axis, split.parts) == (-1, 3)
        assert QKV[split.part] in assignment.target
        fused = values[assignment.source]
        part = fused[..., split.part * H : (split.part + 1) * H]
        expected = part.reshape(H, HEADS, DIM) if fused.ndim == 2 else part.reshape(HEADS, DIM)
        np.testing.assert_array_equal(run(assignment, values), expected)


def test_split_by_sizes_for_a_grouped_query_fused_tensor() -> None:
    kv = 2
    rules = ruleset(
        '[[rules]]\nmatch = "wqkv"\ntargets = ["q", "k", "v"]\nsplit = { axis = 0, sizes = ["hidden", "kv", "kv"] }\n'
        "ops = [{ transpose = [1, 0] }]\n",
        params=f"hidden = {H}\nkv = {kv}\n",
    )
    plan = build_plan(
        rules, variables(("wqkv", (H + 2 * kv, H))), targets(("q", (H, H)), ("k", (H, kv)), ("v", (H, kv)))
    )
    assert plan.ok, plan.problems
    assert [(a.target, a.operations[0]) for a in plan.assignments] == [
        ("q", SplitPart(0, 0, 3, 0, H)),
        ("k", SplitPart(0, 1, 3, H, H + kv)),
        ("v", SplitPart(0, 2, 3, H + kv, H + 2 * kv)),
    ]


@pytest.mark.parametrize(
    ("split", "shape", "fragments"),
    [
        pytest.param(
            "{ axis = -1, parts = 3 }",
            (H, 25),
            ("source 'fused' [8, 25]", "cannot split an axis of size 25 into 3 equal parts", "give the part sizes"),
            id="parts-do-not-divide",
        ),
        pytest.param(
            "{ axis = 0, sizes = [4, 2, 1] }",
            (H, H),
            ("source 'fused' [8, 8]", "split sizes [4, 2, 1] add up to 7, but the axis has size 8"),
            id="sizes-do-not-sum",
        ),
        pytest.param(
            "{ axis = 2, parts = 3 }",
            (H, 24),
            ("split along axis 2", "the tensor of shape [8, 24] has 2 axes"),
            id="axis-out-of-range",
        ),
        pytest.param(
            "{ axis = 0, parts = 3 }",
            (),
            ("split along axis 0", "shape [] has 0 axes"),
            id="scalar",
        ),
    ],
)
def test_splits_that_do_not_fit_are_bad_operations(
    split: str, shape: tuple[int, ...], fragments: tuple[str, ...]
) -> None:
    rules = ruleset(f'[[rules]]\nname = "fused"\nmatch = "fused"\ntargets = ["a", "b", "c"]\nsplit = {split}\n')
    source = variables(("fused", shape))
    target = targets(("a", (H, H)), ("b", (H, H)), ("c", (H, H)))
    before = snapshot(source, target)
    plan = build_plan(rules, source, target)
    assert snapshot(source, target) == before
    assert plan.assignments == ()
    bad = [problem for problem in plan.problems if problem.kind is ProblemKind.BAD_OPERATION]
    assert len(bad) == 1
    assert bad[0].rule == ref(1, "fused")
    assert bad[0].names == ("fused",)
    for fragment in fragments:
        assert fragment in bad[0].message, bad[0].message
    assert [entry.name for entry in plan.unfilled_targets] == ["a", "b", "c"]
    assert not plan.ok


def test_each_split_part_is_checked_against_its_own_target() -> None:
    rules = ruleset('[[rules]]\nmatch = "fused"\ntargets = ["a", "b"]\nsplit = { axis = -1, parts = 2 }\n', QUIET)
    plan = build_plan(rules, variables(("fused", (4, 6))), targets(("a", (4, 3)), ("b", (3, 4))))
    assert [a.target for a in plan.assignments] == ["a"]
    problem = only_problem(plan, ProblemKind.SHAPE_MISMATCH)
    assert problem.names == ("fused", "b")
    assert "source 'fused' [4, 6] becomes [4, 3] but target 'b' is [3, 4]" in problem.message
    assert "add { transpose = [1, 0] }" in problem.message


def test_split_parts_that_name_a_missing_target() -> None:
    rules = ruleset('[[rules]]\nmatch = "fused"\ntargets = ["a", "bb"]\nsplit = { axis = 0, parts = 2 }\n', QUIET)
    plan = build_plan(rules, variables(("fused", (4,))), targets(("a", (2,)), ("b", (2,))))
    assert [a.target for a in plan.assignments] == ["a"]
    problem = only_problem(plan, ProblemKind.MISSING_TARGET)
    assert problem.names == ("fused", "bb")
    assert "closest: 'b'" in problem.message


def test_two_split_parts_naming_one_target_are_a_double_fill() -> None:
    rules = ruleset('[[rules]]\nmatch = "fused"\ntargets = ["a", "a"]\nsplit = { axis = 0, parts = 2 }\n')
    plan = build_plan(rules, variables(("fused", (4,))), targets(("a", (2,))))
    assert [a.operations[0] for a in plan.assignments] == [SplitPart(0, 0, 2, 0, 2)]
    problem = only_problem(plan, ProblemKind.DOUBLE_FILL)
    assert "target 'a' is filled twice" in problem.message


# ---------------------------------------------------------------------------------------------------------------------
# concat / stack
# ---------------------------------------------------------------------------------------------------------------------

CONCAT_QKV = (
    '[[rules]]\nname = "qkv"\nmatch = "layers\\\\.(?P<i>\\\\d+)\\\\.attn\\\\.(?P<part>[a-z])_proj\\\\.weight"\n'
    'target = "layer_{i}/attention/qkv"\nconcat = { axis = -1, by = "part", members = ["q", "k", "v"] }\n'
)


def gqa_source(*layers: int, order: str = "qkv", kv: int = 2) -> VariableMap:
    return variables(
        *((f"layers.{i}.attn.{part}_proj.weight", (H, H if part == "q" else kv)) for i in layers for part in order)
    )


def test_concat_of_different_sizes_along_the_last_axis() -> None:
    source = gqa_source(0, 1, order="vkq")  # the members come in the 'members' order, not the source's
    plan = build_plan(
        ruleset(CONCAT_QKV), source, targets(("layer_0/attention/qkv", (H, 12)), ("layer_1/attention/qkv", (H, 12)))
    )
    assert plan.ok, plan.problems
    first = plan.assignments[0]
    assert first.target == "layer_0/attention/qkv"
    assert first.members == tuple(f"layers.0.attn.{part}_proj.weight" for part in "qkv")
    assert first.source == first.members[0] == first.source_names[0]
    assert first.source_shapes == ((H, H), (H, 2), (H, 2))
    assert first.combine == Concat(-1)
    assert first.operations == ()
    assert first.transformed
    assert (first.source_shape, first.target_shape) == ((H, H), (H, 12))
    values = random_values(source, seed=2)
    expected = np.concatenate([values[name] for name in first.members], axis=-1)
    np.testing.assert_array_equal(run(first, values), expected)
    assert plan.source_bytes == 2 * (H * H + 2 * H * 2) * 4


def test_concat_then_operations() -> None:
    rules = ruleset(
        '[[rules]]\nmatch = "(?P<part>[qkv])"\ntarget = "qkv"\nconcat = { axis = 0, by = "part", members = ["q", "k", "v"] }\n'
        "ops = [{ transpose = [1, 0] }]\n"
    )
    source = variables(("q", (4, 3)), ("k", (2, 3)), ("v", (2, 3)))
    plan = build_plan(rules, source, targets(("qkv", (3, 8))))
    assert plan.ok, plan.problems
    (assignment,) = plan.assignments
    assert (assignment.combine, assignment.operations) == (Concat(0), (Transpose((1, 0)),))
    values = random_values(source, seed=3)
    np.testing.assert_array_equal(run(assignment, values), np.concatenate([values["q"], values["k"], values["v"]]).T)


def test_stack_of_per_layer_tensors_with_a_count() -> None:
    layers = 12
    rules = ruleset(
        '[[rules]]\nname = "experts"\nmatch = "blocks\\\\.(?P<i>\\\\d+)\\\\.w"\ntarget = "stacked/kernel"\n'
        'stack = { axis = 0, by = "i", count = "num_layers" }\n',
        params=f"num_layers = {layers}\n",
    )
    # Listed in text order (0, 1, 10, 11, 2, ...): the members still come out 0..11.
    names = sorted(f"blocks.{i}.w" for i in range(layers))
    source = variables(*((name, (3, 5)) for name in names))
    plan = build_plan(rules, source, targets(("stacked/kernel", (layers, 3, 5))))
    assert plan.ok, plan.problems
    (assignment,) = plan.assignments
    assert assignment.members == tuple(f"blocks.{i}.w" for i in range(layers))
    assert assignment.combine == Stack(0)
    assert assignment.source_shapes == ((3, 5),) * layers
    values = random_values(source, seed=4)
    np.testing.assert_array_equal(
        run(assignment, values), np.stack([values[f"blocks.{i}.w"] for i in range(layers)], axis=0)
    )


def test_stack_along_the_last_axis() -> None:
    rules = ruleset('[[rules]]\nmatch = "w(?P<i>\\\\d)"\ntarget = "t"\nstack = { axis = -1, by = "i", count = 2 }\n')
    plan = build_plan(rules, variables(("w0", (3,)), ("w1", (3,))), targets(("t", (3, 2))))
    assert plan.ok, plan.problems
    assert plan.assignments[0].combine == Stack(-1)


STACK_FROM_TARGET = '[[rules]]\nname = "experts"\nmatch = "w(?P<e>\\\\d+)"\ntarget = "t"\nstack = { axis = AXIS, by = "e", count = "target" }\n'


@pytest.mark.parametrize(
    ("axis", "members", "target_shape", "fragment"),
    [
        pytest.param(0, 3, (3, 2), None, id="complete"),
        pytest.param(-1, 12, (2, 12), None, id="last-axis-natural-order"),
        pytest.param(0, 3, (4, 2), "missing e = '3'", id="target-wants-more"),
        pytest.param(0, 3, (2, 2), "unexpected e = '2'", id="target-wants-fewer"),
    ],
)
def test_a_stack_with_count_target_takes_the_number_of_members_from_the_target(
    axis: int, members: int, target_shape: tuple[int, ...], fragment: str | None
) -> None:
    rules = ruleset(STACK_FROM_TARGET.replace("AXIS", str(axis)))
    source = variables(*((f"w{e}", (2,)) for e in sorted(map(str, range(members)))))
    plan = build_plan(rules, source, targets(("t", target_shape)))
    if fragment is None:
        assert plan.ok, plan.problems
        (assignment,) = plan.assignments
        assert assignment.members == tuple(f"w{e}" for e in range(members))  # 0, 1, 2, ..., 10, 11
        assert assignment.combine == Stack(axis)
        return
    assert [problem.kind for problem in plan.problems] == [ProblemKind.BAD_GROUP, ProblemKind.UNFILLED_TARGET]
    bad = plan.problems[0]
    expected = ", ".join(repr(str(e)) for e in range(target_shape[axis]))
    assert f"needs each of e = {expected} exactly once" in bad.message and fragment in bad.message, bad.message


def test_a_stack_with_count_target_and_no_such_target_reports_the_name_not_the_group() -> None:
    plan = build_plan(ruleset(STACK_FROM_TARGET.replace("AXIS", "0")), variables(("w0", (2,))), targets(("u", (1, 2))))
    assert [problem.kind for problem in plan.problems if problem.kind is not ProblemKind.UNFILLED_TARGET] == [
        ProblemKind.MISSING_TARGET
    ]


PREFIXED = (
    '[[rules]]\nname = "qkv"\nmatch = "(?:model\\\\.)?layers\\\\.(?P<i>\\\\d+)\\\\.(?P<part>[a-z])"\n'
    'target = "layer_{i}/qkv"\nconcat = { axis = 0, by = "part", members = ["q", "k", "v"] }\n'
)


@pytest.mark.parametrize(
    ("body", "names", "fragments"),
    [
        pytest.param(
            PREFIXED,
            ("layers.0.q", "layers.0.k"),
            ("missing part = 'v'",),
            id="missing-member",
        ),
        pytest.param(
            PREFIXED,
            ("layers.0.q", "layers.0.k", "layers.0.v", "model.layers.0.q"),
            ("part = 'q' given twice (layers.0.q, model.layers.0.q)",),
            id="duplicated-through-an-optional-prefix",
        ),
        pytest.param(
            PREFIXED,
            ("layers.0.q", "layers.0.k", "layers.0.v", "layers.0.x"),
            ("unexpected part = 'x'",),
            id="unexpected-member",
        ),
        pytest.param(
            PREFIXED,
            ("layers.0.k", "layers.0.x", "model.layers.0.k"),
            ("missing part = 'q', 'v'", "part = 'k' given twice", "unexpected part = 'x'"),
            id="all-three-at-once",
        ),
        pytest.param(
            '[[rules]]\nname = "qkv"\nmatch = "layers\\\\.(?P<i>\\\\d+)\\\\.(?P<part>\\\\d+)"\n'
            'target = "layer_{i}/qkv"\nstack = { axis = 0, by = "part", count = 3 }\n',
            ("layers.0.0", "layers.0.2", "layers.0.3"),
            ("needs each of part = '0', '1', '2' exactly once", "missing part = '1'", "unexpected part = '3'"),
            id="stack-count",
        ),
    ],
)
def test_bad_groups_name_the_target_and_the_members(
    body: str, names: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    source = variables(*((name, (2,)) for name in names))
    target = targets(("layer_0/qkv", (6,)))
    before = snapshot(source, target)
    plan = build_plan(ruleset(body), source, target)
    assert snapshot(source, target) == before
    assert plan.assignments == ()
    assert not plan.ok
    (bad,) = [problem for problem in plan.problems if problem.kind is ProblemKind.BAD_GROUP]
    assert bad.severity is Severity.ERROR
    assert bad.rule == ref(1, "qkv")
    assert sorted(bad.names) == sorted(names)
    assert "group for target 'layer_0/qkv'" in bad.message
    assert "exactly once" in bad.message
    for fragment in fragments:
        assert fragment in bad.message, bad.message
    assert [entry.name for entry in plan.unfilled_targets] == ["layer_0/qkv"]


def test_one_bad_group_does_not_spoil_the_others() -> None:
    source = variables(*((f"layers.{i}.{part}", (2,)) for i in range(3) for part in "qkv" if (i, part) != (1, "v")))
    target = targets(*((f"layer_{i}/qkv", (6,)) for i in range(3)))
    plan = build_plan(ruleset(PREFIXED, {"unfilled_target": "ignore"}), source, target)
    assert [a.target for a in plan.assignments] == ["layer_0/qkv", "layer_2/qkv"]
    problem = only_problem(plan, ProblemKind.BAD_GROUP)
    assert "'layer_1/qkv'" in problem.message
    assert problem.names == ("layers.1.q", "layers.1.k")


@pytest.mark.parametrize(
    ("target_shape", "fragments"),
    [
        pytest.param(
            (12, H),
            ("become [8, 12] but target 'layer_0/attention/qkv' is [12, 8]", "add { transpose = [1, 0] }"),
            id="transposed",
        ),
        pytest.param((H, 3, 4), ("become [8, 12]", 'add { reshape = "target" }', "here [8, 3, 4]"), id="reshape"),
        pytest.param((H, 13), ("become [8, 12]", "add a guard with same_shape = true"), id="nothing-fits"),
    ],
)
def test_the_combined_shape_is_checked_against_the_target_with_hints(
    target_shape: tuple[int, ...], fragments: tuple[str, ...]
) -> None:
    plan = build_plan(ruleset(CONCAT_QKV, QUIET), gqa_source(0), targets(("layer_0/attention/qkv", target_shape)))
    problem = only_problem(plan, ProblemKind.SHAPE_MISMATCH)
    # Every member is named with its own shape: they differ.
    assert (
        "sources 'layers.0.attn.q_proj.weight' [8, 8], 'layers.0.attn.k_proj.weight' [8, 2], "
        "'layers.0.attn.v_proj.weight' [8, 2]"
    ) in problem.message
    for fragment in fragments:
        assert fragment in problem.message, problem.message
    assert problem.names == (*gqa_source(0), "layer_0/attention/qkv")


@pytest.mark.parametrize(
    ("body", "shapes", "fragment"),
    [
        pytest.param(
            'concat = { axis = 0, by = "p", members = ["a", "b"] }',
            ((2, 3), (2, 4)),
            "cannot concat [2, 3] and [2, 4] along axis 0: every other axis must agree",
            id="concat-other-axis-differs",
        ),
        pytest.param(
            'concat = { axis = 2, by = "p", members = ["a", "b"] }',
            ((2, 3), (2, 3)),
            "concat along axis 2: the members have 2 axes",
            id="concat-axis-out-of-range",
        ),
        pytest.param(
            'stack = { axis = 0, by = "p", members = ["a", "b"] }',
            ((2, 3), (3, 2)),
            "cannot stack [2, 3] with [3, 2]: members must have one shape",
            id="stack-shapes-differ",
        ),
    ],
)
def test_groups_that_do_not_fit_together_are_bad_operations(
    body: str, shapes: tuple[tuple[int, ...], ...], fragment: str
) -> None:
    rules = ruleset(f'[[rules]]\nmatch = "(?P<p>[ab])"\ntarget = "t"\n{body}\n', QUIET)
    plan = build_plan(rules, variables(("a", shapes[0]), ("b", shapes[1])), targets(("t", (4, 3))))
    problem = only_problem(plan, ProblemKind.BAD_OPERATION)
    assert fragment in problem.message, problem.message
    assert problem.names == ("a", "b", "t")


def test_group_members_of_different_dtypes_are_a_bad_operation() -> None:
    rules = ruleset(
        '[[rules]]\nmatch = "(?P<p>[ab])"\ntarget = "t"\nconcat = { axis = 0, by = "p", members = ["a", "b"] }\n', QUIET
    )
    plan = build_plan(rules, variables(("a", (2,), "float32"), ("b", (2,), "float16")), targets(("t", (4,))))
    problem = only_problem(plan, ProblemKind.BAD_OPERATION)
    assert "cannot concat members of different dtypes ('a' float32, 'b' float16)" in problem.message


def test_a_combined_dtype_mismatch_suggests_a_cast() -> None:
    rules = ruleset(
        '[[rules]]\nmatch = "(?P<p>[ab])"\ntarget = "t"\nstack = { axis = 0, by = "p", count = 2 }\n'.replace(
            "[ab]", "[01]"
        ),
        QUIET,
    )
    plan = build_plan(rules, variables(("0", (2,), "float16"), ("1", (2,), "float16")), targets(("t", (2, 2))))
    problem = only_problem(plan, ProblemKind.DTYPE_MISMATCH)
    assert "sources '0', '1' are float16 but target 't' is float32" in problem.message
    assert 'add { cast = "float32" }' in problem.message


# ---------------------------------------------------------------------------------------------------------------------
# slice and rearrange
# ---------------------------------------------------------------------------------------------------------------------


def test_slice_drops_the_leading_axis_of_a_position_embedding() -> None:
    rules = ruleset(
        '[[rules]]\nmatch = "vit\\\\.embeddings\\\\.(?P<n>position_embeddings|cls_token)"\ntarget = "{n}"\n'
        'ops = [{ slice = "0" }]\n'
    )
    source = variables(("vit.embeddings.position_embeddings", (1, 17, H)), ("vit.embeddings.cls_token", (1, 1, H)))
    plan = build_plan(rules, source, targets(("position_embeddings", (17, H)), ("cls_token", (1, H))))
    assert plan.ok, plan.problems
    assert [a.operations for a in plan.assignments] == [(Slice((0,)),), (Slice((0,)),)]
    values = random_values(source, seed=5)
    for assignment in plan.assignments:
        np.testing.assert_array_equal(run(assignment, values), values[assignment.source][0])


@pytest.mark.parametrize(
    ("text", "shape", "target_shape", "problem"),
    [
        pytest.param("0, 1:", (1, 17, H), (16, H), None, id="index-and-range"),
        pytest.param(":, ::2", (2, 6), (2, 3), None, id="step"),
        pytest.param("-1", (3, H), (H,), None, id="negative-index"),
        pytest.param("3", (3, H), (H,), "index 3 is out of range for an axis of size 3", id="index-out-of-range"),
        pytest.param(
            "0, 0, 0", (1, H), (), "indexes 3 axes, but the tensor of shape [1, 8] has 2", id="too-many-items"
        ),
        pytest.param("0", (1, 17, H), (1, 17, H), "SHAPE", id="forgotten-squeeze-is-a-shape-mismatch"),
    ],
)
def test_slices(text: str, shape: tuple[int, ...], target_shape: tuple[int, ...], problem: str | None) -> None:
    rules = ruleset(f'[[rules]]\nmatch = "w"\ntarget = "t"\nops = [{{ slice = "{text}" }}]\n', QUIET)
    plan = build_plan(rules, variables(("w", shape)), targets(("t", target_shape)))
    if problem is None:
        assert plan.ok, plan.problems
        source = variables(("w", shape))
        values = random_values(source)
        assert run(plan.assignments[0], values).shape == target_shape
    elif problem == "SHAPE":
        only_problem(plan, ProblemKind.SHAPE_MISMATCH)
    else:
        found = only_problem(plan, ProblemKind.BAD_OPERATION)
        assert problem in found.message
        assert found.names == ("w", "t")


def test_rearrange_with_a_bound_size() -> None:
    rules = ruleset(
        '[[rules]]\nmatch = "w"\ntarget = "k"\n'
        'ops = [{ rearrange = "(heads dim) hidden -> hidden heads dim", heads = "num_heads" }]\n',
        params=f"num_heads = {HEADS}\n",
    )
    source = variables(("w", (H, 6)))
    plan = build_plan(rules, source, targets(("k", (6, HEADS, DIM))))
    assert plan.ok, plan.problems
    (assignment,) = plan.assignments
    assert assignment.operations == (Rearrange("(heads dim) hidden -> hidden heads dim", (("heads", HEADS),)),)
    values = random_values(source)
    np.testing.assert_array_equal(run(assignment, values), values["w"].reshape(HEADS, DIM, 6).transpose(2, 0, 1))


def test_rearrange_that_merges_needs_no_sizes() -> None:
    rules = ruleset('[[rules]]\nmatch = "w"\ntarget = "k"\nops = [{ rearrange = "h d c -> c (h d)" }]\n')
    plan = build_plan(rules, variables(("w", (2, 3, 5))), targets(("k", (5, 6))))
    assert plan.ok, plan.problems


@pytest.mark.parametrize("heads", [1, HEADS, 4])
def test_rearrange_reads_a_size_bound_to_target_off_the_target(heads: int) -> None:
    # Gemma's query kernel: [heads * head_dim, hidden] -> [heads, hidden, head_dim], one rule for every head count.
    rules = ruleset(
        '[[rules]]\nmatch = "w"\ntarget = "k"\n'
        'ops = [{ rearrange = "(heads dim) hidden -> heads hidden dim", heads = "target" }]\n'
    )
    source = variables(("w", (H, 6)))
    plan = build_plan(rules, source, targets(("k", (heads, 6, H // heads))))
    assert plan.ok, plan.problems
    (assignment,) = plan.assignments
    assert assignment.operations == (Rearrange("(heads dim) hidden -> heads hidden dim", (("heads", heads),)),)
    values = random_values(source)
    expected = values["w"].reshape(heads, H // heads, 6).transpose(0, 2, 1)
    np.testing.assert_array_equal(run(assignment, values), expected)


def test_a_rearrange_size_bound_to_target_needs_a_target() -> None:
    rules = ruleset(
        '[[rules]]\nname = "q"\nmatch = "w"\ntarget = "k"\n'
        'ops = [{ rearrange = "(heads dim) hidden -> heads hidden dim", heads = "target" }]\n'
    )
    plan = plan_conversion(rules, {"w": TensorSpec("w", (H, 6), "float32")})
    problem = only_problem(plan, ProblemKind.BAD_OPERATION)
    assert problem.rule == ref(1, "q")
    assert "rule 1 ('q') uses heads = \"target\", which takes the shape from a target model" in problem.message
    assert "write the rearrange sizes, e.g. heads = 12, or convert with a model" in problem.message


@pytest.mark.parametrize(
    ("operation", "shape", "fragments"),
    [
        pytest.param(
            '{ rearrange = "(heads dim) hidden -> heads (hidden dim)", heads = "target" }',
            (H, 6),
            ("gives 2 axes, but target 'k' has shape [6, 2, 4], so heads = \"target\" cannot be read off it",),
            id="size-from-a-target-of-another-rank",
        ),
        pytest.param(
            '{ rearrange = "(heads dim) hidden -> hidden heads dim" }',
            (H, 6),
            ("cannot tell the sizes of heads and dim from an axis of size 8", "bind all but one, e.g. heads = N"),
            id="unbound",
        ),
        pytest.param(
            '{ rearrange = "(heads dim) hidden -> hidden heads dim", heads = 3 }',
            (H, 6),
            ("axis of size 8 cannot hold (heads dim) with the bound sizes [3]",),
            id="bound-size-does-not-divide",
        ),
        pytest.param(
            '{ rearrange = "(heads dim) hidden -> hidden heads dim", heads = 2, dim = 3 }',
            (H, 6),
            ("(heads dim) has size 6, but the axis has size 8",),
            id="both-bound-wrongly",
        ),
        pytest.param(
            '{ rearrange = "a b c -> c b a" }',
            (H, 6),
            ("expects 3 input axes, but the tensor has shape [8, 6]",),
            id="wrong-rank",
        ),
    ],
)
def test_rearranges_that_do_not_fit_say_what_to_bind(
    operation: str, shape: tuple[int, ...], fragments: tuple[str, ...]
) -> None:
    rules = ruleset(f'[[rules]]\nname = "attn"\nmatch = "w"\ntarget = "k"\nops = [{operation}]\n', QUIET)
    plan = build_plan(rules, variables(("w", shape)), targets(("k", (6, HEADS, DIM))))
    problem = only_problem(plan, ProblemKind.BAD_OPERATION)
    assert problem.rule == ref(1, "attn")
    assert "source 'w' [8, 6] float32 -> target 'k'" in problem.message
    for fragment in fragments:
        assert fragment in problem.message, problem.message


@pytest.mark.parametrize("size", [0, -2])
def test_a_rearrange_with_a_size_below_one_is_refused_even_when_built_directly(size: int) -> None:
    operation = Rearrange("(heads dim) hidden -> hidden heads dim", (("heads", size),))
    with pytest.raises(OperationError) as caught:
        operation.infer((H, 6), "float32")
    assert f"size heads = {size} must be a positive whole number" in str(caught.value)
    assert caught.value.operation == "rearrange"


# ---------------------------------------------------------------------------------------------------------------------
# guards and keeps on split and combined rules
# ---------------------------------------------------------------------------------------------------------------------


SPLIT_AB = '[[rules]]\nname = "fused"\nmatch = "fused"\ntargets = ["a", "b"]\nsplit = { axis = 0, sizes = [4, 2] }\n'


@pytest.mark.parametrize(
    ("guard", "shape", "assigned", "guard_skips", "problem"),
    [
        pytest.param("{ shape = [6, -1] }", (6, 3), ["a", "b"], [], None, id="source-shape-passes"),
        pytest.param(
            '{ shape = [12, -1], on_fail = "skip", reason = "other model size" }',
            (6, 3),
            [],
            ["a", "b"],
            None,
            id="source-shape-fails-every-part-skipped",
        ),
        pytest.param("{ rank = 1 }", (6, 3), [], [], ProblemKind.GUARD_FAILED, id="source-rank-fails-error"),
        pytest.param(
            '{ same_shape = true, on_fail = "skip", reason = "b changed" }',
            (6, 4),
            ["a"],
            ["b"],
            None,
            id="same-shape-checks-each-part",
        ),
    ],
)
def test_guards_on_split_rules(
    guard: str, shape: tuple[int, ...], assigned: list[str], guard_skips: list[str], problem: ProblemKind | None
) -> None:
    rules = ruleset(SPLIT_AB + f"guard = {guard}\n", {"unfilled_target": "ignore"})
    plan = build_plan(rules, variables(("fused", shape)), targets(("a", (4, shape[1])), ("b", (2, 3))))
    assert [a.target for a in plan.assignments] == assigned
    skips = [skip for skip in plan.skips if skip.kind is SkipKind.GUARD]
    assert [(skip.name, skip.target) for skip in skips] == [("fused", target) for target in guard_skips]
    assert all(skip.rule == ref(1, "fused") for skip in skips)
    if problem is None:
        assert plan.problems == ()
    else:
        assert {found.kind for found in plan.problems} == {problem}
        assert all("source 'fused' [6, 3]" in found.message for found in plan.problems)


@pytest.mark.parametrize(
    ("on_fail", "kind"),
    [pytest.param("skip", None, id="skip"), pytest.param("error", ProblemKind.GUARD_FAILED, id="error")],
)
def test_a_guard_on_a_combined_rule_fails_the_whole_group(on_fail: str, kind: ProblemKind | None) -> None:
    rules = ruleset(
        '[[rules]]\nname = "qkv"\nmatch = "(?P<p>[qkv])"\ntarget = "qkv"\n'
        'concat = { axis = 0, by = "p", members = ["q", "k", "v"] }\n'
        f'guard = {{ dtype = "float32", on_fail = "{on_fail}", reason = "half precision copy" }}\n',
        {"unfilled_target": "ignore"},
    )
    source = variables(("q", (2,)), ("k", (2,), "float16"), ("v", (2,)))
    plan = build_plan(rules, source, targets(("qkv", (6,))))
    assert plan.assignments == ()
    if kind is None:
        assert plan.problems == ()
        assert [(skip.name, skip.kind, skip.target) for skip in plan.skips] == [
            (name, SkipKind.GUARD, "qkv") for name in ("q", "k", "v")
        ]
        assert {skip.reason for skip in plan.skips} == {"half precision copy"}
        assert {skip.detail for skip in plan.skips} == {"dtype float16 is not float32"}
    else:
        assert [(problem.kind, problem.names) for problem in plan.problems] == [
            (kind, (name, "qkv")) for name in ("q", "k", "v")
        ]


def test_a_same_shape_guard_on_a_group_checks_the_combined_shape() -> None:
    rules = ruleset(
        '[[rules]]\nmatch = "l(?P<i>\\\\d)"\ntarget = "t"\nstack = { axis = 0, by = "i", count = 2 }\n'
        'guard = { same_shape = true, on_fail = "skip", reason = "layer count changed" }\n',
        {"unfilled_target": "ignore"},
    )
    plan = build_plan(rules, variables(("l0", (3,)), ("l1", (3,))), targets(("t", (3, 3))))
    assert plan.problems == ()
    assert [(skip.name, skip.detail) for skip in plan.skips] == [
        (name, "shape [2, 3] does not equal the target's [3, 3]") for name in ("l0", "l1")
    ]


def test_keep_rules_against_split_targets() -> None:
    rules = ruleset(
        '[[rules]]\nname = "c_attn"\nmatch = "c_attn"\ntargets = ["query", "key", "value"]\nsplit = { axis = -1, parts = 3 }\n'
        '[[keep]]\nname = "fresh key"\nmatch = "key"\nreason = "trained from scratch"\n'
    )
    plan = build_plan(rules, variables(("c_attn", (2, 6))), targets(*((part, (2, 2)) for part in QKV)))
    assert plan.ok, plan.problems
    assert [(a.target, a.operations[0]) for a in plan.assignments] == [
        ("query", SplitPart(-1, 0, 3, 0, 2)),
        ("value", SplitPart(-1, 2, 3, 4, 6)),
    ]
    by_side = {(skip.side, skip.kind): skip for skip in plan.skips}
    source_skip = by_side["source", SkipKind.RULE]
    assert (source_skip.name, source_skip.target, source_skip.rule) == ("c_attn", "key", ref(1, "c_attn"))
    assert "target 'key' is kept at its initial value by porting.toml keep rule 1 ('fresh key')" in source_skip.reason
    assert by_side["target", SkipKind.KEEP] == Skip(
        "key", SkipKind.KEEP, "trained from scratch", ref(1, "fresh key", "keep"), target_shape=(2, 2)
    )


def test_keep_rules_against_a_combined_target() -> None:
    rules = ruleset(
        '[[rules]]\nmatch = "(?P<p>[qkv])"\ntarget = "qkv"\nconcat = { axis = 0, by = "p", members = ["q", "k", "v"] }\n'
        '[[keep]]\nmatch = "qkv"\nreason = "fresh"\n'
    )
    plan = build_plan(rules, variables(("q", (2,)), ("k", (2,)), ("v", (2,))), targets(("qkv", (6,))))
    assert plan.ok, plan.problems
    assert plan.assignments == ()
    assert [(skip.name, skip.side, skip.target) for skip in plan.skips if skip.side == "source"] == [
        (name, "source", "qkv") for name in ("q", "k", "v")
    ]


@pytest.mark.parametrize("policy", ["warn", "ignore"])
def test_a_double_fill_by_a_group_skips_every_member(policy: str) -> None:
    rules = ruleset(
        '[[rules]]\nname = "plain"\nmatch = "qkv"\ntarget = "qkv"\n'
        '[[rules]]\nname = "joined"\nmatch = "(?P<p>[qkv])"\ntarget = "qkv"\n'
        'concat = { axis = 0, by = "p", members = ["q", "k", "v"] }\n',
        {"double_fill": policy},
    )
    source = variables(("qkv", (6,)), ("q", (2,)), ("k", (2,)), ("v", (2,)))
    plan = build_plan(rules, source, targets(("qkv", (6,))))
    assert plan.ok
    assert [a.source for a in plan.assignments] == ["qkv"]
    assert [(skip.name, skip.source_shape, skip.target) for skip in plan.skips] == [
        (name, (2,), "qkv") for name in ("q", "k", "v")
    ]
    assert all("already filled from 'qkv'" in (skip.detail or "") for skip in plan.skips)
    if policy == "warn":
        problem = only_problem(plan, ProblemKind.DOUBLE_FILL)
        assert problem.names == ("q", "k", "v", "qkv")
        assert "from concat('q', 'k', 'v') by porting.toml rule 2 ('joined')" in problem.message


def test_a_double_fill_error_by_a_group_names_every_member() -> None:
    rules = ruleset(
        '[[rules]]\nmatch = "qkv"\ntarget = "qkv"\n'
        '[[rules]]\nmatch = "(?P<p>[qkv])"\ntarget = "qkv"\nconcat = { axis = 0, by = "p", members = ["q", "k", "v"] }\n'
    )
    plan = build_plan(rules, variables(("qkv", (6,)), ("q", (2,)), ("k", (2,)), ("v", (2,))), targets(("qkv", (6,))))
    problem = only_problem(plan, ProblemKind.DOUBLE_FILL)
    assert problem.names == ("q", "k", "v", "qkv")
    assert plan.skips == ()


# ---------------------------------------------------------------------------------------------------------------------
# named sources
# ---------------------------------------------------------------------------------------------------------------------

NAMED = (
    '[[rules]]\nname = "backbone"\nsource = "backbone"\nmatch = "enc/(?P<n>.*)"\ntarget = "encoder/{n}"\n'
    '[[rules]]\nname = "head"\nsource = "head"\nmatch = "(?P<n>dense/.*)"\ntarget = "head/{n}"\n'
    '[[rules]]\nname = "steps"\nmatch = "global_step"\nskip = "training counter"\n'
)


def two_sources() -> SourceSet:
    return SourceSet(
        {
            "backbone": variables(
                ("enc/w", (2,)), ("dense/kernel", (3, 3)), ("global_step", (), "int64"), description="bb.ckpt"
            ),
            "head": variables(
                ("dense/kernel", (3, 3)), ("global_step", (), "int64"), ("extra", (1,)), description="head.safetensors"
            ),
        }
    )


def test_rules_read_their_own_source_and_rules_without_one_read_every_source() -> None:
    sources = two_sources()
    target = targets(("encoder/w", (2,)), ("head/dense/kernel", (3, 3)))
    before = snapshot(sources["backbone"], sources["head"], target)
    plan = build_plan(ruleset(NAMED, {"unused_source": "warn"}), sources, target)
    assert snapshot(sources["backbone"], sources["head"], target) == before
    assert plan.ok, plan.problems
    assert plan.source == (NamedSource("backbone", "bb.ckpt"), NamedSource("head", "head.safetensors"))
    assert [(a.source_id, a.source, a.target) for a in plan.assignments] == [
        ("backbone", "enc/w", "encoder/w"),
        ("head", "dense/kernel", "head/dense/kernel"),
    ]
    # The head rule does not read the backbone's dense/kernel; the skip rule reads both sources.
    assert [(entry.source_id, entry.name) for entry in plan.unused_sources] == [
        ("backbone", "dense/kernel"),
        ("head", "extra"),
    ]
    assert [(skip.source_id, skip.name) for skip in plan.skips] == [
        ("backbone", "global_step"),
        ("head", "global_step"),
    ]
    warning = only_problem(plan, ProblemKind.UNUSED_SOURCE)
    assert warning.severity is Severity.WARNING


def test_a_rule_naming_an_unknown_source() -> None:
    rules = ruleset(NAMED + '[[rules]]\nname = "typo"\nsource = "haed"\nmatch = "x"\nskip = "x"\n', QUIET)
    plan = build_plan(rules, two_sources(), targets(("encoder/w", (2,)), ("head/dense/kernel", (3, 3))))
    problem = only_problem(plan, ProblemKind.UNKNOWN_SOURCE)
    assert problem.rule == ref(4, "typo")
    assert problem.names == ("haed",)
    assert "reads source 'haed', but the plan's sources are: backbone, head" in problem.message


def test_an_unknown_source_is_not_also_a_dead_rule() -> None:
    rules = ruleset('[[rules]]\nname = "typo"\nsource = "haed"\nmatch = "x"\nskip = "x"\n', {"unused_source": "ignore"})
    plan = build_plan(rules, two_sources(), targets())
    assert [problem.kind for problem in plan.problems] == [ProblemKind.UNKNOWN_SOURCE]


def test_a_rule_with_a_source_in_a_single_source_plan() -> None:
    rules = ruleset(
        '[[rules]]\nname = "head"\nsource = "head"\nmatch = "w"\ntarget = "w"\n', {"unfilled_target": "ignore"}
    )
    plan = build_plan(rules, variables(("w", (1,))), targets(("w", (1,))))
    kinds = [problem.kind for problem in plan.problems]
    assert kinds == [ProblemKind.UNKNOWN_SOURCE, ProblemKind.UNUSED_SOURCE]
    assert "the plan has one unnamed source; give sources by name (--source NAME=PATH)" in plan.problems[0].message
    assert plan.assignments == ()


@pytest.mark.parametrize("policy", ["error", "warn", "ignore"])
def test_a_target_claimed_from_two_sources_is_always_an_error(policy: str) -> None:
    rules = ruleset(
        '[[rules]]\nname = "all"\nmatch = "dense/kernel"\ntarget = "head/dense/kernel"\n',
        {**QUIET, "double_fill": policy},
    )
    plan = build_plan(rules, two_sources(), targets(("head/dense/kernel", (3, 3))))
    assert [(a.source_id, a.source) for a in plan.assignments] == [("backbone", "dense/kernel")]
    problem = only_problem(plan, ProblemKind.DOUBLE_FILL)
    assert problem.severity is Severity.ERROR
    assert "from backbone:dense/kernel" in problem.message
    assert "from head:dense/kernel" in problem.message
    assert plan.skips == ()
    assert not plan.ok


def test_a_double_fill_within_one_source_follows_the_policy() -> None:
    rules = ruleset('[[rules]]\nmatch = "enc/.*"\ntarget = "t"\n', {"double_fill": "ignore"})
    sources = SourceSet({"one": variables(("enc/a", (2,)), ("enc/b", (2,))), "two": variables()})
    plan = build_plan(rules, sources, targets(("t", (2,))))
    assert plan.problems == ()
    assert [(a.source_id, a.source) for a in plan.assignments] == [("one", "enc/a")]
    assert [(skip.source_id, skip.name, skip.detail) for skip in plan.skips] == [
        ("one", "enc/b", "'t' already filled from one:enc/a by porting.toml rule 1")
    ]


def test_groups_never_mix_members_of_two_sources() -> None:
    rules = ruleset(
        '[[rules]]\nname = "qkv"\nmatch = "(?P<p>[qkv])"\ntarget = "qkv"\nconcat = { axis = 0, by = "p", members = ["q", "k", "v"] }\n',
        {"unfilled_target": "ignore"},
    )
    sources = SourceSet({"a": variables(("q", (2,))), "b": variables(("k", (2,)), ("v", (2,)))})
    plan = build_plan(rules, sources, targets(("qkv", (6,))))
    assert plan.assignments == ()
    bad = [problem for problem in plan.problems if problem.kind is ProblemKind.BAD_GROUP]
    assert [problem.names for problem in bad] == [("q",), ("k", "v")]


def test_a_group_within_one_named_source() -> None:
    rules = ruleset(
        '[[rules]]\nsource = "b"\nmatch = "(?P<p>[qkv])"\ntarget = "qkv"\nconcat = { axis = 0, by = "p", members = ["q", "k", "v"] }\n',
        {"unused_source": "ignore"},
    )
    sources = SourceSet({"a": variables(("q", (2,))), "b": variables(("k", (2,)), ("v", (2,)), ("q", (2,)))})
    plan = build_plan(rules, sources, targets(("qkv", (6,))))
    assert plan.ok, plan.problems
    (assignment,) = plan.assignments
    assert (assignment.source_id, assignment.members) == ("b", ("q", "k", "v"))
    assert [(entry.source_id, entry.name) for entry in plan.unused_sources] == [("a", "q")]


@pytest.mark.parametrize(
    ("rule_source", "dead"),
    [
        pytest.param('source = "head"\n', True, id="pattern-matches-only-in-another-source"),
        pytest.param('source = "backbone"\n', False, id="pattern-matches-in-its-source"),
        pytest.param("", False, id="no-source-reads-all"),
    ],
)
def test_dead_rules_per_source(rule_source: str, dead: bool) -> None:
    rules = ruleset(
        f'[[rules]]\nname = "encoder"\n{rule_source}match = "enc/w"\ntarget = "encoder/w"\n',
        {"unused_source": "ignore", "unfilled_target": "ignore"},
    )
    plan = build_plan(rules, two_sources(), targets(("encoder/w", (2,))))
    dead_rules = [problem for problem in plan.problems if problem.kind is ProblemKind.DEAD_RULE]
    assert bool(dead_rules) is dead
    if dead:
        assert "rule 1 ('encoder') matched no name in source 'head' (pattern 'enc/w')" in dead_rules[0].message


def test_split_and_keep_with_named_sources_carry_the_source_id() -> None:
    rules = ruleset(
        '[[rules]]\nsource = "head"\nmatch = "fused"\ntargets = ["a", "b"]\nsplit = { axis = 0, parts = 2 }\n'
        '[[keep]]\nmatch = "b"\nreason = "fresh"\n',
        {"unused_source": "ignore"},
    )
    sources = SourceSet({"backbone": variables(("fused", (4,))), "head": variables(("fused", (4,)))})
    plan = build_plan(rules, sources, targets(("a", (2,)), ("b", (2,))))
    assert plan.ok, plan.problems
    assert [(a.source_id, a.target) for a in plan.assignments] == [("head", "a")]
    assert [(skip.source_id, skip.name, skip.side) for skip in plan.skips] == [
        ("head", "fused", "source"),
        (None, "b", "target"),
    ]
    assert Plan.from_json(plan.to_json()) == plan


# ---------------------------------------------------------------------------------------------------------------------
# hypothesis: random split/concat/stack plans keep the invariants
# ---------------------------------------------------------------------------------------------------------------------

_RULES = [
    # split rules over the fused tensors
    '[[rules]]\nmatch = "src/(?P<i>\\\\d+)/fused"\ntargets = ["dst/{i}/a", "dst/{i}/b", "dst/{i}/c"]\n'
    "split = { axis = -1, parts = 3 }\n",
    '[[rules]]\nmatch = "src/(?P<i>\\\\d+)/fused"\ntargets = ["dst/{i}/a", "dst/{i}/b"]\nsplit = { axis = 0, sizes = [4, 2] }\n',
    '[[rules]]\nmatch = "src/(?P<i>\\\\d+)/fused"\ntargets = ["dst/{i}/a", "dst/{i - 1}/b", "dst/{i}/c"]\n'
    'split = { axis = -1, parts = 3 }\nguard = { same_shape = true, on_fail = "skip", reason = "expected" }\n',
    '[[rules]]\nmatch = "src/(?P<i>\\\\d+)/fused"\ntargets = ["dst/{i}/a", "dst/0/a"]\nsplit = { axis = 0, parts = 2 }\n'
    'ops = [{ reshape = "target" }]\n',
    # concat and stack rules over q/k/v, with an optional prefix that can duplicate members
    '[[rules]]\nmatch = "(?:m/)?src/(?P<i>\\\\d+)/(?P<p>[qkv])"\ntarget = "dst/{i}/qkv"\n'
    'concat = { axis = -1, by = "p", members = ["q", "k", "v"] }\n',
    '[[rules]]\nmatch = "src/(?P<i>\\\\d+)/(?P<p>[qkv])"\ntarget = "dst/{i}/qkv"\n'
    'concat = { axis = 0, by = "p", members = ["q", "k", "v"] }\nops = [{ transpose = [1, 0] }]\n',
    '[[rules]]\nmatch = "src/(?P<i>\\\\d+)/(?P<p>[qkv])"\ntarget = "dst/stack/{p}"\nstack = { axis = 0, by = "i", count = 3 }\n',
    '[[rules]]\nmatch = "src/(?P<i>\\\\d+)/(?P<p>[qkv])"\ntarget = "dst/stack/{p}"\nstack = { axis = 0, by = "i", count = 2 }\n'
    'guard = { dtype = "float32", on_fail = "skip", reason = "expected" }\n',
    # plain rules that compete for the same names and targets
    '[[rules]]\nmatch = "src/(?P<i>\\\\d+)/fused"\ntarget = "dst/{i}/qkv"\n',
    '[[rules]]\nmatch = "(?:m/)?src/(?P<i>\\\\d+)/(?P<k>\\\\w+)"\ntarget = "dst/{i}/{k}"\n',
    '[[rules]]\nmatch = "src/(?P<i>\\\\d+)/(?P<k>\\\\w+)"\ntarget = "dst/0/qkv"\nops = [{ reshape = "target" }]\n',
    '[[rules]]\nmatch = "src/.*/x"\nskip = "extra"\n',
    '[[rules]]\nmatch = "m/.*"\nskip = "prefixed copy"\n',
]
_KEEPS = [
    '[[keep]]\nmatch = "dst/0/.*"\nreason = "new layer"\n',
    '[[keep]]\nmatch = "dst/.*/b"\nreason = "fresh"\n',
]
# A [6, 3] fused tensor is q, k and v of [2, 3] joined along axis 0, so split, concat and plain rules compete.
_FUSED_SHAPES = [(6, 3), (6, 3), (6, 6), (4, 6), (6,), (5, 3)]
_MEMBER_SHAPES = [(2, 3), (2, 3), (4, 2), (4,)]


@st.composite
def porting_inputs(draw: st.DrawFn) -> tuple[RuleSet, VariableMap | SourceSet, TargetMap]:
    sources: dict[str, TensorSpec] = {}
    member_shape = draw(st.sampled_from(_MEMBER_SHAPES))
    for layer in range(3):
        names = [f"src/{layer}/fused", *(f"src/{layer}/{part}" for part in "qkvx"), f"m/src/{layer}/q"]
        for name in names:
            if draw(st.integers(0, 9)) == 0 or (name.startswith("m/") and draw(st.integers(0, 3))):
                continue  # most names exist; a prefixed duplicate now and then
            if name.endswith("fused"):
                shape = draw(st.sampled_from(_FUSED_SHAPES))
            else:
                # Members usually agree on shape, as real checkpoints do; sometimes not.
                shape = member_shape if draw(st.integers(0, 3)) else draw(st.sampled_from(_MEMBER_SHAPES))
            dtype = "float32" if draw(st.integers(0, 9)) else "float16"
            sources[name] = TensorSpec(name, shape, dtype)
    # Targets: the shapes the rules would produce, usually, so that plans have assignments as well as problems.
    target_specs: dict[str, TensorSpec] = {}

    def add(name: str, likely: Sequence[tuple[int, ...]]) -> None:
        if draw(st.integers(0, 5)) == 0:
            return
        if likely and draw(st.integers(0, 4)):
            shape = draw(st.sampled_from(likely))
        else:
            shape = draw(st.sampled_from([(2,), (6, 6), (6, 3), (3, 6)]))
        target_specs[name] = TensorSpec(name, shape, "float32")

    for layer in range(3):
        fused = sources.get(f"src/{layer}/fused")
        for index, part in enumerate("abc"):
            likely = []
            if fused is not None:
                likely += [
                    (*fused.shape[:-1], fused.shape[-1] // 3),
                    (fused.shape[0] * (4 - 2 * index) // 6, *fused.shape[1:]),
                ]
            add(f"dst/{layer}/{part}", likely)
        members = [sources[f"src/{layer}/{part}"].shape for part in "qkv" if f"src/{layer}/{part}" in sources]
        likely = []
        if members:
            likely += [
                (*members[0][:-1], sum(shape[-1] for shape in members)),
                (sum(shape[0] for shape in members), *members[0][1:])[::-1],
            ]
        add(f"dst/{layer}/qkv", likely)
        for part in "qkvx":
            add(f"dst/{layer}/{part}", [member_shape])
    for part in "qkv":
        add(f"dst/stack/{part}", [(3, *member_shape), (2, *member_shape)])

    # Rule order matters (first match wins), so the joining rules are drawn first half of the time.
    rules = draw(st.lists(st.sampled_from(_RULES), min_size=1, max_size=4))
    if draw(st.booleans()):
        rules.insert(0, draw(st.sampled_from([rule for rule in _RULES if "concat" in rule or "stack" in rule])))
    body = "".join(rules)
    body += "".join(draw(st.lists(st.sampled_from(_KEEPS), max_size=1)))
    policy = st.sampled_from(["error", "warn", "ignore"])
    policies = {key: draw(policy) for key in ("unused_source", "unfilled_target", "dead_rule", "double_fill")}
    target = TargetMap(VariableMap(target_specs.values()))
    if not draw(st.booleans()):
        return ruleset(body, policies), VariableMap(sources.values()), target
    # Named sources: layer 2 (and every prefixed copy) lives in a second source; some rules read only one.
    first = [spec for name, spec in sources.items() if "/2/" not in name and not name.startswith("m/")]
    second = [spec for spec in sources.values() if spec not in first]
    chosen = draw(st.sampled_from(['source = "one"\n', 'source = "two"\n', "", ""]))
    body = body.replace("[[rules]]\n", "[[rules]]\n" + chosen, 1)
    return ruleset(body, policies), SourceSet({"one": VariableMap(first), "two": VariableMap(second)}), target


def _first_rule(rules: RuleSet, name: str, source_id: str | None) -> int | None:
    for index, rule in enumerate(rules.rules):
        if rule.source not in (None, source_id):
            continue  # the planner gives a rule only the names of its own source
        if rule.fullmatch(name) is not None:
            return index
    return None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=porting_inputs())
def test_porting_plan_invariants(inputs: tuple[RuleSet, VariableMap | SourceSet, TargetMap]) -> None:
    rules, source, target = inputs
    maps: dict[str | None, VariableMap] = dict(source.items()) if isinstance(source, SourceSet) else {None: source}
    every = {name: (source_id, spec) for source_id, specs in maps.items() for name, spec in specs.items()}
    assert len(every) == sum(len(specs) for specs in maps.values()), "names are unique across the sources"
    before = snapshot(*maps.values(), target)
    plan = build_plan(rules, source, target)
    assert snapshot(*maps.values(), target) == before

    # No target is assigned twice.
    assigned = [a.target for a in plan.assignments]
    assert len(assigned) == len(set(assigned))

    # Every source name is accounted for: once, or once per split part, across assignments' source_names, source
    # skips, unused sources and the names of error problems raised by a rule.
    seen = Counter(
        [name for a in plan.assignments for name in a.source_names]
        + [skip.name for skip in plan.skips if skip.side == "source"]
        + [entry.name for entry in plan.unused_sources]
        + [
            name
            for problem in plan.problems
            if problem.is_error and problem.rule is not None
            for name in problem.names
            if name in every
        ]
    )
    assert set(seen) == set(every)
    unused = {entry.name for entry in plan.unused_sources}
    for name, (source_id, _) in every.items():
        index = _first_rule(rules, name, source_id)
        assert (index is None) == (name in unused), name
        split = rules.rules[index].split if index is not None else None
        if split is None:
            assert seen[name] == 1, (name, seen[name])
        else:
            failed = any(problem.is_error and name in problem.names for problem in plan.problems)
            assert 1 <= seen[name] <= split.count if failed else seen[name] == split.count, (name, seen[name])

    # Every assignment reads what its source holds, and its combine and operations give the target's shape and dtype.
    values = {name: np.zeros(spec.shape, numpy_dtype(spec.dtype)) for name, (_, spec) in every.items()}
    for a in plan.assignments:
        spec = target.variables[a.target]
        assert (a.target_shape, a.target_dtype) == (spec.shape, spec.dtype)
        for name in a.source_names:
            assert every[name][0] == a.source_id
        assert a.source == a.source_names[0]
        assert (a.source_shape, a.source_dtype) == (every[a.source][1].shape, every[a.source][1].dtype)
        shape: tuple[int, ...] = a.source_shape
        if a.combine is not None:
            assert a.source_shapes == tuple(every[name][1].shape for name in a.members)
            shape, _ = a.combine.infer(a.source_shapes, a.source_dtype)
        assert infer_all(a.operations, shape, a.source_dtype) == (spec.shape, spec.dtype)
        result = run(a, values)
        assert (result.shape, str(result.dtype)) == (spec.shape, spec.dtype)

    # A target claimed from two sources is an error, never a quiet skip.
    for skip in plan.skips:
        if skip.detail and "already filled" in skip.detail:
            earlier = plan.assignment_for(skip.target or "")
            assert earlier is not None and earlier.source_id == skip.source_id

    # Unused entries and skips carry the source they came from.
    for entry in plan.unused_sources:
        assert entry.source_id == every[entry.name][0]
    for skip in plan.skips:
        if skip.side == "source":
            assert skip.source_id == every[skip.name][0]

    assert plan.ok == (not any(problem.is_error for problem in plan.problems))
    assert Plan.from_json(plan.to_json()) == plan
    assert Plan.from_json(plan.to_json(indent=None)) == plan


def test_porting_plans_round_trip_through_json() -> None:
    rules = ruleset(
        CONCAT_QKV
        + '[[rules]]\nmatch = "fused"\ntargets = ["a", "b"]\nsplit = { axis = 0, parts = 2 }\nops = [{ slice = "0" }]\n'
    )
    source = VariableMap([*gqa_source(0).values(), TensorSpec("fused", (2, 3), "float32")])
    plan = build_plan(rules, source, targets(("layer_0/attention/qkv", (H, 12)), ("a", (3,)), ("b", (3,))))
    assert plan.ok, plan.problems
    assert Plan.from_json(plan.to_json()) == plan
    assert {type(a.combine) for a in plan.assignments} == {Concat, type(None)}
