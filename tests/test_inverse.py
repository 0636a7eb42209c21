"""Inverse plans (mapper.plan.inverse) and the [export] table: every invertible operation undone exactly, the rest named.

No TensorFlow: plans are built from rule text and specs, and run backwards on NumPy arrays.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from mapper.errors import OperationError, RuleFileError
from mapper.ops import Cast, Operation, Rearrange, Reshape, Slice, SplitPart, Transpose, apply_numpy
from mapper.plan.inverse import Inverse, NotInvertibleError, exact_cast, inverse_operations, invert
from mapper.plan.planner import build_plan
from mapper.rules import parse_rules
from mapper.run.export import RestoreError, shard, shard_names, tensor_value, write_export
from mapper.sources.safetensors import SafetensorsSource
from mapper.specs import TargetMap, TensorSpec, VariableMap
from mapper.targets.base import VariableTarget

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    ("operations", "shape"),
    [
        ((Transpose((1, 0)),), (3, 4)),
        ((Transpose((2, 3, 1, 0)),), (5, 3, 2, 2)),
        ((Reshape((2, 3, 4)),), (6, 4)),
        ((Transpose((1, 0)), Reshape((4, 2, 3))), (6, 4)),
        ((Slice((0,)),), (1, 17, 8)),
        ((Slice((0, 0)),), (1, 1, 8)),
        ((Slice(((None, None, None), 0)),), (3, 1, 4)),
        ((Rearrange("(heads dim) hidden -> hidden heads dim", (("heads", 2),)),), (8, 6)),
        ((Cast("float32"), Transpose((1, 0))), (2, 5)),
    ],
    ids=[
        "transpose",
        "permute",
        "reshape",
        "transpose-reshape",
        "slice-leading",
        "slice-two",
        "slice-inner",
        "rearrange",
        "identity-cast",
    ],
)
def test_inverse_operations_give_back_the_tensor_exactly(
    operations: tuple[Operation, ...], shape: tuple[int, ...]
) -> None:
    original = RNG.standard_normal(shape).astype("float32")
    forward = apply_numpy(operations, original)
    back = apply_numpy(inverse_operations(operations, shape, "float32"), forward)
    assert back.shape == original.shape and back.dtype == original.dtype
    assert back.tobytes() == original.tobytes()


@pytest.mark.parametrize(
    ("operation", "shape", "dtype", "words"),
    [
        (Cast("float32"), (2,), "bfloat16", "lossy cast on the way back"),
        (Cast("float32"), (2,), "float16", "lossy cast on the way back"),
        (Cast("float64"), (2,), "float32", "lossy cast on the way back"),
        (Slice((0,)), (2, 4), "float32", "keeps one of 2 entries"),
        (Slice(((0, 2, None),)), (4,), "float32", "does not keep the whole axis"),
        (Slice(((None, None, -1),)), (4,), "float32", "does not keep the whole axis"),
        (SplitPart(0, 0, 2, 0, 2), (4,), "float32", "alone cannot be undone"),
    ],
    ids=["bf16-import", "f16-import", "f32-import", "slice-drops", "slice-part", "slice-reversed", "split-part"],
)
def test_operations_without_an_exact_inverse_say_why(
    operation: Operation, shape: tuple[int, ...], dtype: str, words: str
) -> None:
    # The import casts ``dtype`` up: a bfloat16 checkpoint loaded as float32 rounds on the way back.
    with pytest.raises(OperationError, match=words):
        inverse_operations([operation], shape, dtype)


def test_a_lossy_cast_back_is_allowed_when_asked() -> None:
    assert inverse_operations([Cast("float32")], (2,), "bfloat16", lossy=True) == (Cast("bfloat16"),)


def test_a_cast_down_on_import_casts_up_on_export_exactly() -> None:
    # float32 -> float16 on import rounds once; the model's float16 values all come back exactly as float32.
    assert inverse_operations([Cast("float16")], (2,), "float32") == (Cast("float32"),)


@pytest.mark.parametrize(
    ("source", "target", "exact"),
    [
        ("bfloat16", "float32", True),
        ("float16", "float32", True),
        ("float32", "float64", True),
        ("float8_e4m3fn", "bfloat16", True),
        ("float32", "bfloat16", False),
        ("bfloat16", "float16", False),
        ("float16", "bfloat16", False),
        ("int8", "int16", True),
        ("uint8", "int16", True),
        ("int8", "uint16", False),
        ("int64", "int32", False),
        ("int16", "float32", True),
        ("int32", "float32", False),
        ("int32", "float64", True),
        ("bool", "float16", True),
    ],
)
def test_exact_cast(source: str, target: str, exact: bool) -> None:
    assert exact_cast(source, target) is exact


def _plan(text: str, sources: list[TensorSpec], targets: list[TensorSpec]) -> object:
    plan = build_plan(parse_rules("format = 1\n" + text), VariableMap(sources), TargetMap(VariableMap(targets)))
    assert plan.ok, plan.problems
    return plan


def _export(inverse: Inverse, variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {tensor.name: tensor_value(tensor, variables) for tensor in inverse.tensors}


def _import(
    text: str, values: dict[str, np.ndarray], targets: list[TensorSpec]
) -> tuple[Inverse, dict[str, np.ndarray]]:
    """Plan, run the plan forward on NumPy, and invert it: the inverse and the variables it would read."""
    from mapper.ops import NUMPY, combine_values

    sources = [TensorSpec(name, value.shape, str(value.dtype)) for name, value in values.items()]
    plan = _plan(text, sources, targets)
    variables = {}
    for a in plan.assignments:  # type: ignore[attr-defined]
        members = [values[name] for name in a.source_names]
        joined = members[0] if a.join is None else combine_values(a.join.combine, members, NUMPY)
        variables[a.target] = apply_numpy(a.operations, joined)
    return invert(plan), variables  # type: ignore[arg-type]


def test_a_split_is_joined_again() -> None:
    fused = RNG.standard_normal((4, 12)).astype("float32")
    text = """
[[rules]]
match = "c_attn"
split = { axis = -1, parts = 3 }
targets = ["q/kernel", "k/kernel", "v/kernel"]
ops = [{ reshape = [4, 2, 2] }]
"""
    inverse, variables = _import(
        text, {"c_attn": fused}, [TensorSpec(f"{p}/kernel", (4, 2, 2), "float32") for p in "qkv"]
    )
    assert inverse.ok and [t.name for t in inverse.tensors] == ["c_attn"]
    assert _export(inverse, variables)["c_attn"].tobytes() == fused.tobytes()


@pytest.mark.parametrize(
    "join",
    ["concat = { axis = 0, by = 'p', members = ['k', 'v'] }", "stack = { axis = 1, by = 'p', members = ['k', 'v'] }"],
)
def test_a_join_is_taken_apart_again(join: str) -> None:
    values = {"k": RNG.standard_normal((2, 3)).astype("float32"), "v": RNG.standard_normal((2, 3)).astype("float32")}
    shape = (4, 3) if join.startswith("concat") else (2, 2, 3)
    text = f'[[rules]]\nmatch = "(?P<p>k|v)"\ntarget = "kv"\n{join}\nops = [{{ transpose = {list(range(len(shape)))[::-1]} }}]\n'
    inverse, variables = _import(text, values, [TensorSpec("kv", shape[::-1], "float32")])
    exported = _export(inverse, variables)
    assert inverse.ok and sorted(exported) == ["k", "v"]
    assert all(exported[name].tobytes() == values[name].tobytes() for name in values)


def test_blockers_name_the_rule_and_the_reason() -> None:
    text = """
[[rules]]
name = "cast up"
match = "w"
target = "w"
ops = [{ cast = "float32" }]

[[rules]]
name = "first row"
match = "rows"
target = "row"
ops = [{ slice = "0" }]
"""
    sources = [TensorSpec("w", (2,), "bfloat16"), TensorSpec("rows", (3, 2), "float32")]
    targets = [TensorSpec("w", (2,), "float32"), TensorSpec("row", (2,), "float32")]
    inverse = invert(_plan(text, sources, targets))  # type: ignore[arg-type]
    assert [blocker.rule.name for blocker in inverse.blockers if blocker.rule] == ["cast up", "first row"]
    message = str(NotInvertibleError.of(inverse))
    assert (
        "'cast up'" in message and "lossy cast" in message and "'first row'" in message and "keeps one of 3" in message
    )
    assert invert(
        _plan(text.replace('"0"', '":"'), sources, [targets[0], TensorSpec("row", (3, 2), "float32")]),  # type: ignore[arg-type]
        lossy_casts=True,
    ).ok


def test_two_variables_exporting_to_one_name_block() -> None:
    plan = _plan(
        '[[rules]]\nmatch = "w"\ntarget = "a"\n', [TensorSpec("w", (2,), "float32")], [TensorSpec("a", (2,), "float32")]
    )
    twice = dataclasses.replace(
        plan, assignments=(*plan.assignments, dataclasses.replace(plan.assignments[0], target="b"))
    )  # type: ignore[type-var, attr-defined]
    inverse = invert(twice)
    assert not inverse.ok and "2 exports write source name 'w'" in str(inverse.blockers[0])


def test_an_incomplete_split_blocks() -> None:
    text = '[[rules]]\nmatch = "qkv"\nsplit = { axis = 0, parts = 3 }\ntargets = ["q", "k", "v"]\n'
    plan = _plan(text, [TensorSpec("qkv", (6,), "float32")], [TensorSpec(name, (2,), "float32") for name in "qkv"])
    inverse = invert(dataclasses.replace(plan, assignments=plan.assignments[:2]))  # type: ignore[type-var, attr-defined]
    assert "part 3 missing" in str(inverse.blockers[0])


TIED = """
[[rules]]
match = "embed.weight"
target = "embeddings"

[[rules]]
match = "lm_head.weight"
skip = "tied to the token embeddings"

[[rules]]
match = "position_ids"
skip = "a buffer"

[[export.tied]]
match = 'lm_head\\.(?P<p>weight)'
same_as = "embed.{p}"
"""


def test_skipped_tensors_are_dropped_and_tied_ones_copied() -> None:
    sources = [
        TensorSpec("embed.weight", (5, 2), "float32"),
        TensorSpec("lm_head.weight", (5, 2), "float32"),
        TensorSpec("position_ids", (1, 5), "int64"),
    ]
    rules = parse_rules("format = 1\n" + TIED)
    plan = build_plan(
        rules, VariableMap(sources), TargetMap(VariableMap([TensorSpec("embeddings", (5, 2), "float32")]))
    )
    inverse = invert(plan, rules.export)
    assert [(t.name, t.copy_of) for t in inverse.tensors] == [
        ("embed.weight", None),
        ("lm_head.weight", "embed.weight"),
    ]
    assert [(left.name, left.reason) for left in inverse.dropped] == [("position_ids", "a buffer")]
    wrong = parse_rules("format = 1\n" + TIED.replace('"embed.{p}"', '"embedding.{p}"'))
    assert "does not write" in str(invert(plan, wrong.export).blockers[0])


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('[export]\nlossy_casts = "sometimes"', "lossy_casts"),
        ('[export]\nlossy = "allow"', "did you mean 'lossy_casts'"),
        ('[[export.tied]]\nmatch = "a("\nsame_as = "b"', "invalid regular expression"),
        ('[[export.tied]]\nmatch = "a"\nsame_as = "{i}"', "i"),
        ('[[export.tied]]\nmatch = "a"\nsame_as = "b"\nreason = " "', "reason"),
        ('[[export.restore]]\nmatch = "a"', "export.restore.0.reason': this key is required"),
        ('[[export.restore]]\nmatch = "a("\nreason = "r"', "invalid regular expression"),
        ('[[export.restore]]\nmatch = "a"\nreason = " "', "reason is empty"),
        ('[[export.restore]]\nmatch = "a"\nreason = "r"\nfrom = "b"', "unknown key 'from'"),
    ],
    ids=[
        "lossy-value",
        "unknown-key",
        "bad-regex",
        "unknown-group",
        "blank-reason",
        "restore-no-reason",
        "restore-bad-regex",
        "restore-blank-reason",
        "restore-unknown-key",
    ],
)
def test_the_export_table_is_validated(table: str, words: str) -> None:
    with pytest.raises(RuleFileError, match=words):
        parse_rules("format = 1\n" + table)


def test_lossy_casts_allowed_by_the_rule_file() -> None:
    rules = parse_rules(
        'format = 1\n[export]\nlossy_casts = "allow"\n[[rules]]\nmatch = "w"\ntarget = "w"\nops = [{ cast = "float32" }]'
    )
    plan = build_plan(
        rules,
        VariableMap([TensorSpec("w", (2,), "bfloat16")]),
        TargetMap(VariableMap([TensorSpec("w", (2,), "float32")])),
    )
    assert invert(plan, rules.export).ok
    assert not invert(plan, rules.export, lossy_casts=False).ok


def test_shards_follow_the_size_limit_and_transformers_names() -> None:
    specs = [TensorSpec(f"t{i}", (10,), "float32") for i in range(5)]  # 40 bytes each
    parts = shard(specs, 100)
    assert [len(part) for part in parts] == [2, 2, 1]
    assert shard_names(3)[1] == "model-00002-of-00003.safetensors"
    assert [len(part) for part in shard(specs, 10)] == [1] * 5  # a tensor above the limit gets a shard alone


def test_the_export_table_merges_over_extends(tmp_path: Path) -> None:
    from mapper.rules import load_rules

    (tmp_path / "base.toml").write_text(
        'format = 1\n[export]\nlossy_casts = "allow"\n[[rules]]\nmatch = "b"\ntarget = "b"\n', encoding="utf-8"
    )
    (tmp_path / "top.toml").write_text(
        'format = 1\nextends = ["base.toml"]\n[[export.tied]]\nmatch = "t"\nsame_as = "b"\n'
        '[[rules]]\nmatch = "t"\nskip = "tied"\n',
        encoding="utf-8",
    )
    export = load_rules(tmp_path / "top.toml").export
    assert export.lossy_casts == "allow" and [tied.match for tied in export.tied] == ["t"]


def _restoring(slice_text: str, shape: tuple[int, ...], *, declared: bool = True, more: str = "") -> str:
    restore = '[[export.restore]]\nmatch = "table"\nreason = "rows the import drops"\n' if declared else ""
    return f'{restore}[[rules]]\nmatch = "table"\ntarget = "t"\nops = [{{ cast = "float32" }}, {{ slice = "{slice_text}" }}{more}]\n'


@pytest.mark.parametrize(
    ("slice_text", "shape", "more", "region"),
    [
        ("2:", (7, 3), "", ((2, 7),)),
        (":-1", (5, 2), "", ((0, 4),)),
        ("1:3, 1:", (4, 5, 2), "", ((1, 3), (1, 5))),
        ("3", (5, 2), "", ((3, 4),)),
        ("2:", (6, 4), ", { transpose = [1, 0] }", ((2, 6),)),
    ],
    ids=["prefix", "suffix", "two-axes", "one-row", "then-transpose"],
)
def test_a_declared_slice_is_restored_from_like_bit_for_bit(
    slice_text: str, shape: tuple[int, ...], more: str, region: tuple[tuple[int, int], ...]
) -> None:
    from mapper.sources.memory import MemorySource

    original = RNG.standard_normal(shape).astype("float32")
    forward = apply_numpy([Slice.parse(slice_text)], original)
    target = forward.T if more else forward
    text = _restoring(slice_text, shape, more=more)
    rules = parse_rules("format = 1\n" + text)
    plan = build_plan(
        rules,
        VariableMap([TensorSpec("table", shape, "float32")]),
        TargetMap(VariableMap([TensorSpec("t", target.shape, "float32")])),
    )
    inverse = invert(plan, rules.export)
    assert inverse.ok and inverse.restored == ("table",)
    tensor = inverse.tensors[0]
    assert tensor.restore is not None and tensor.restore.region == region
    assert "(1 in part from --like)" in inverse.summary()
    tuned = target + 1  # the model changed its block; the rest comes from like as it is
    exported = tensor_value(tensor, {"t": tuned}, MemorySource({"table": original}))
    expected = original.copy()
    block = tuple(slice(start, stop) for start, stop in region)
    expected[block] = (tuned.T if more else tuned).reshape(expected[block].shape)
    assert exported.shape == shape and exported.dtype == original.dtype and exported.tobytes() == expected.tobytes()
    untouched = tensor_value(tensor, {"t": target}, MemorySource({"table": original}))
    assert untouched.tobytes() == original.tobytes()  # export(import(x)) is x


@pytest.mark.parametrize(
    ("text", "shape", "target", "words"),
    [
        (_restoring("2:", (7, 3), declared=False), (7, 3), (5, 3), "declare the source tensor in [[export.restore]]"),
        (_restoring("3", (5, 2), declared=False), (5, 2), (2,), "declare the source tensor in [[export.restore]]"),
        (_restoring("::2", (6, 3)), (6, 3), (3, 3), "does not keep one block of each axis"),
        (
            '[[export.restore]]\nmatch = "table"\nreason = "r"\n[[rules]]\nmatch = "table"\ntarget = "t"\n'
            'ops = [{ transpose = [1, 0] }, { slice = "1:" }]\n',
            (4, 3),
            (2, 4),
            "but transpose",
        ),
    ],
    ids=["undeclared", "undeclared-row", "steps", "not-first"],
)
def test_a_slice_that_drops_values_blocks_naming_the_fix(
    text: str, shape: tuple[int, ...], target: tuple[int, ...], words: str
) -> None:
    rules = parse_rules("format = 1\n" + text)
    plan = build_plan(
        rules,
        VariableMap([TensorSpec("table", shape, "float32")]),
        TargetMap(VariableMap([TensorSpec("t", target, "float32")])),
    )
    inverse = invert(plan, rules.export)
    assert not inverse.ok and inverse.restored == ()
    assert words in str(NotInvertibleError.of(inverse))
    assert "[[export.restore]]" in str(inverse.blockers[0])


SKIPPED = """
[[export.restore]]
match = "table"
reason = "the model has no place for it"

[[rules]]
match = "w"
target = "t"

[[rules]]
match = "table"
skip = "no place for it"

[[rules]]
match = "ids"
skip = "a buffer"
"""


def _skipped_plan(table: TensorSpec, text: str = SKIPPED) -> tuple[object, object, VariableMap]:
    rules = parse_rules("format = 1\n" + text)
    sources = VariableMap([TensorSpec("w", (4, 2), "float32"), table, TensorSpec("ids", (1, 6), "int64")])
    plan = build_plan(rules, sources, TargetMap(VariableMap([TensorSpec("t", (4, 2), "float32")])))
    return plan, rules.export, sources


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64"])
def test_a_declared_skipped_tensor_is_copied_whole_from_like(dtype: str) -> None:
    from mapper.sources.memory import MemorySource

    table = (RNG.standard_normal((3, 5)) * 100).astype(dtype)
    plan, export, sources = _skipped_plan(TensorSpec("table", table.shape, dtype))
    inverse = invert(plan, export, sources=sources)  # type: ignore[arg-type]
    assert inverse.ok and inverse.restored == ("table",)
    assert [left.name for left in inverse.dropped] == ["ids"]  # undeclared skips are still dropped
    tensor = inverse.tensor("table")
    assert tensor is not None and tensor.restore is not None and tensor.restore.whole and tensor.pieces == ()
    assert (tensor.shape, tensor.dtype, tensor.restore.reason) == ((3, 5), dtype, "the model has no place for it")
    assert "(1 whole from --like)" in inverse.summary() and "the whole tensor from --like's 'table'" in (
        tensor.restore.describe()
    )
    exported = tensor_value(tensor, {}, MemorySource({"table": table}))
    assert exported.shape == table.shape and exported.dtype == table.dtype and exported.tobytes() == table.tobytes()


def test_a_skipped_tensor_restored_whole_needs_the_checkpoints_specs_and_yields_to_tied() -> None:
    plan, export, _ = _skipped_plan(TensorSpec("table", (4, 2), "float32"))
    blocked = invert(plan, export)  # type: ignore[arg-type]
    assert not blocked.ok and "copies the skipped 'table' whole from --like" in str(blocked.blockers[0])
    tied = SKIPPED + '[[export.tied]]\nmatch = "table"\nsame_as = "w"\n'
    plan, export, sources = _skipped_plan(TensorSpec("table", (4, 2), "float32"), tied)
    inverse = invert(plan, export, sources=sources)  # type: ignore[arg-type]
    assert inverse.ok and inverse.restored == () and inverse.tensor("table").copy_of == "w"  # type: ignore[union-attr]


def _restore_inverse(whole: bool) -> tuple[Inverse, VariableTarget]:
    """An export of ``table`` [6, 2]: its rows 2: from the model, or (skipped on import) all of it from --like."""
    target = VariableTarget(
        "m", TargetMap(VariableMap([TensorSpec("t", (4, 2), "float32")])), {"t": np.ones((4, 2), "float32")}
    )
    if whole:
        plan, export, sources = _skipped_plan(TensorSpec("table", (6, 2), "float32"))
        return invert(plan, export, sources=sources), target  # type: ignore[arg-type]
    rules = parse_rules("format = 1\n" + _restoring("2:", (6, 2)))
    plan = build_plan(
        rules,
        VariableMap([TensorSpec("table", (6, 2), "float32")]),
        TargetMap(VariableMap([TensorSpec("t", (4, 2), "float32")])),
    )
    return invert(plan, rules.export), target


@pytest.mark.parametrize("whole", [False, True], ids=["in-part", "whole"])
@pytest.mark.parametrize(
    ("like", "words"),
    [
        (None, "it was given only names and shapes"),
        ({"table": np.zeros((7, 2), "float32")}, "it is [7, 2] float32 there, but the export writes [6, 2] float32"),
        ({"table": np.zeros((6, 2), "float16")}, "it is [6, 2] float16 there"),
        ({"other": np.zeros((6, 2), "float32")}, "it is not there"),
    ],
    ids=["no-like", "other-shape", "other-dtype", "missing-tensor"],
)
def test_a_restore_without_its_like_tensor_writes_nothing(
    like: dict[str, np.ndarray] | None, words: str, whole: bool, tmp_path: Path
) -> None:
    from mapper.sources.memory import MemorySource

    inverse, target = _restore_inverse(whole)
    source = None if like is None else MemorySource(like)
    with pytest.raises(RestoreError, match=re.escape(words)) as raised:
        write_export(inverse, target, tmp_path / "out", like=source)
    assert raised.value.names == ("table",)
    assert ("whole" if whole else "in part") in str(raised.value)
    assert not (tmp_path / "out").exists()
    good = MemorySource({"table": np.full((6, 2), 7, "float32")})
    written = write_export(inverse, target, tmp_path / "ok", like=good)
    value = SafetensorsSource(tmp_path / "ok" / written.files[0]).read(["table"])["table"]
    assert value.tolist() == [[7.0, 7.0]] * (6 if whole else 2) + [[1.0, 1.0]] * (0 if whole else 4)
