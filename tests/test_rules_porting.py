"""Tests for the porting additions to mapper.rules: [params], split/targets, concat/stack, slice and rearrange."""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapper.errors import MapperError, RuleFileError
from mapper.rules import (
    CombineSpec,
    RearrangeSpec,
    ReshapeSpec,
    Rule,
    RuleSet,
    SliceSpec,
    SplitSpec,
    load_rules,
    parse_rules,
    validate_rules,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

HEADER = "format = 1\n"


def _rule(body: str, params: str = "") -> str:
    """A one-rule file; ``params`` is the body of a [params] table."""
    return HEADER + (f"[params]\n{params}" if params else "") + "[[rules]]\n" + body


def _only_rule(text: str) -> Rule:
    rules = parse_rules(text, file="porting.toml")
    assert len(rules.rules) == 1
    return rules.rules[0]


def _render(rule: Rule, name: str, part: int = 0) -> str:
    matched = rule.fullmatch(name)
    assert matched is not None, (rule.match, name)
    return rule.render(matched, part)


# ---------------------------------------------------------------------------------------------------------------------
# [params]
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [
        pytest.param("num_layers = 12\n", "num_layers", 12, id="int"),
        pytest.param("dropout = 0.1\n", "dropout", 0.1, id="float"),
        pytest.param("whole_float = 2.0\n", "whole_float", 2.0, id="float-that-looks-whole"),
        pytest.param('activation = "gelu"\n', "activation", "gelu", id="string"),
        pytest.param("tied = true\n", "tied", True, id="bool-true"),
        pytest.param("tied = false\n", "tied", False, id="bool-false"),
        pytest.param("_private2 = -3\n", "_private2", -3, id="negative-int-underscore-name"),
    ],
)
def test_params_keep_their_value_and_type(line: str, name: str, value: object) -> None:
    rules = parse_rules(HEADER + "[params]\n" + line)
    assert rules.params == {name: value}
    assert type(rules.params[name]) is type(value)


@pytest.mark.parametrize(
    ("template", "name", "expected"),
    [
        pytest.param("layer_{num_layers}/w", "w", "layer_12/w", id="plain"),
        pytest.param("layer_{num_layers - 1}/w", "w", "layer_11/w", id="minus-one"),
        pytest.param("layer_{num_layers + 1}/w", "w", "layer_13/w", id="plus-one"),
        pytest.param("{activation}/{i}", "w3", "gelu/3", id="string-param-beside-a-group"),
        pytest.param("{ num_layers }/x", "w", "12/x", id="spaces"),
        pytest.param("{{num_layers}}", "w", "{num_layers}", id="escaped-braces-are-literal"),
        pytest.param("{scale}", "w", "0.5", id="float-param-as-text"),
        pytest.param("{tied}", "w", "True", id="bool-param-as-text"),
    ],
)
def test_params_in_templates(template: str, name: str, expected: str) -> None:
    params = 'num_layers = 12\nactivation = "gelu"\nscale = 0.5\ntied = true\n'
    rule = _only_rule(_rule(f'match = "w(?P<i>\\\\d*)"\ntarget = "{template}"\n', params))
    assert _render(rule, name) == expected


def test_a_pattern_group_wins_over_a_param_of_the_same_name() -> None:
    rule = _only_rule(_rule('match = "l(?P<n>\\\\d+)"\ntarget = "x{n}"\n', "n = 99\n"))
    assert _render(rule, "l4") == "x4"


def test_params_in_split_targets_are_resolved() -> None:
    rule = _only_rule(
        _rule(
            'match = "w"\ntargets = ["l{last}/q", "l{last - 1}/k"]\nsplit = { axis = 0, parts = "n" }\n',
            "last = 5\nn = 2\n",
        )
    )
    assert [_render(rule, "w", part) for part in range(2)] == ["l5/q", "l4/k"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            'ops = [{ reshape = ["hidden", "num_heads", -1] }]',
            lambda rule: rule.ops == (ReshapeSpec(reshape=(768, 12, -1)),),
            id="reshape-sizes",
        ),
        pytest.param(
            'targets = ["a", "b", "c"]\nsplit = { axis = -1, parts = "three" }',
            lambda rule: rule.split == SplitSpec(axis=-1, parts=3),
            id="split-parts",
        ),
        pytest.param(
            'targets = ["q", "k", "v"]\nsplit = { axis = 0, sizes = ["hidden", "kv", "kv"] }',
            lambda rule: rule.split == SplitSpec(axis=0, sizes=(768, 128, 128)) and rule.split.count == 3,
            id="split-sizes",
        ),
        pytest.param(
            'stack = { axis = 0, by = "i", count = "num_layers" }',
            lambda rule: (
                rule.stack == CombineSpec(axis=0, by="i", count=24)
                and rule.combine is not None
                and rule.combine.expected == tuple(str(i) for i in range(24))
            ),
            id="stack-count",
        ),
        pytest.param(
            'stack = { axis = 0, by = "i", count = "target" }',
            lambda rule: (
                rule.stack is not None and rule.stack.from_target and rule.stack.expected_for((5, 2)) == tuple("01234")
            ),
            id="stack-count-target",
        ),
        pytest.param(
            'concat = { axis = 0, by = "i", count = "three" }',
            lambda rule: rule.concat == CombineSpec(axis=0, by="i", count=3),
            id="concat-count",
        ),
        pytest.param(
            'ops = [{ rearrange = "(heads dim) hidden -> hidden heads dim", heads = "num_heads" }]',
            lambda rule: isinstance(rule.ops[0], RearrangeSpec) and rule.ops[0].sizes == (("heads", 12),),
            id="rearrange-size",
        ),
        pytest.param(
            'ops = [{ rearrange = "(h d) c -> c h d", h = "num_heads", d = 64 }]',
            lambda rule: isinstance(rule.ops[0], RearrangeSpec) and rule.ops[0].sizes == (("d", 64), ("h", 12)),
            id="rearrange-param-and-literal",
        ),
        pytest.param(
            'ops = [{ rearrange = "(h d) c -> h c d", h = "target", d = "num_heads" }]',
            lambda rule: (
                isinstance(rule.ops[0], RearrangeSpec)
                and rule.ops[0].sizes == (("d", 12),)
                and rule.ops[0].from_target == (("h", 0),)
            ),
            id="rearrange-size-from-target",
        ),
    ],
)
def test_params_as_sizes(body: str, expected: Any) -> None:
    params = "hidden = 768\nnum_heads = 12\nkv = 128\nthree = 3\nnum_layers = 24\n"
    target = "" if "targets" in body else 'target = "t"\n'
    rule = _only_rule(_rule(f'match = "(?P<i>\\\\d+)"\n{target}{body}\n', params))
    assert expected(rule), rule


# ---------------------------------------------------------------------------------------------------------------------
# Bad rule files: one table for every porting check
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A malformed rule file, the field its issue names (None: the rule as a whole) and what the message says."""

    text: str
    field: str | None
    fragments: tuple[str, ...]
    rule: int | None = 1


def _combine(kind: str, spec: str, *, match: str = "(?P<p>[qkv])", target: str = "qkv") -> str:
    return _rule(f'match = "{match}"\ntarget = "{target}"\n{kind} = {spec}\n')


def _split(spec: str, targets: str = '["a", "b"]', extra: str = "") -> str:
    return _rule(f'match = "w"\ntargets = {targets}\nsplit = {spec}\n{extra}')


def _ops(operation: str, params: str = "") -> str:
    return _rule(f'match = "w"\ntarget = "t"\nops = [{operation}]\n', params)


BAD = [
    # --- [params] ---
    pytest.param(
        Bad(HEADER + '[params]\n"num-layers" = 3\n', "params", ("'num-layers' must be an identifier",), rule=None),
        id="param-name-with-a-hyphen",
    ),
    pytest.param(
        Bad(HEADER + '[params]\n"2heads" = 3\n', "params", ("'2heads' must be an identifier",), rule=None),
        id="param-name-starting-with-a-digit",
    ),
    pytest.param(
        Bad(HEADER + '[params]\n"num layers" = 3\n', "params", ("'num layers' must be an identifier",), rule=None),
        id="param-name-with-a-space",
    ),
    pytest.param(
        Bad(
            HEADER + "[params]\nsizes = [1, 2]\n",
            "params",
            ("parameter 'sizes' is [1, 2]", "a whole number, a number, a string or a boolean"),
            rule=None,
        ),
        id="param-list",
    ),
    pytest.param(
        Bad(HEADER + "[params]\nnested = { a = 1 }\n", "params", ("parameter 'nested' is {'a': 1}",), rule=None),
        id="param-table",
    ),
    pytest.param(
        Bad(
            _rule('match = "w"\ntarget = "layer_{num_layer}"\n', "num_layers = 12\nnum_heads = 4\n"),
            "target",
            ("uses group 'num_layer'", "parameters: num_heads, num_layers", "did you mean 'num_layers'?"),
        ),
        id="template-unknown-param-closest",
    ),
    pytest.param(
        Bad(
            _rule('match = "w"\ntarget = "layer_{depth}"\n', "num_layers = 12\n"),
            "target",
            ("uses group 'depth'", "parameters: num_layers", "add '(?P<depth>...)' to 'match'"),
        ),
        id="template-unknown-param-no-close-name",
    ),
    pytest.param(
        Bad(
            _rule('match = "w"\ntarget = "layer_{act + 1}"\n', 'act = "gelu"\n'),
            "target",
            ("adds to parameter 'act' = 'gelu'", "not a whole number"),
        ),
        id="template-arithmetic-on-a-string-param",
    ),
    pytest.param(
        Bad(
            _ops('{ reshape = [768, "num_haeds", -1] }', "num_heads = 12\nhidden = 768\n"),
            "ops",
            (
                "operation 1 (reshape)",
                "'num_haeds'",
                "declared in [params]: hidden, num_heads",
                "did you mean 'num_heads'?",
            ),
        ),
        id="reshape-unknown-param",
    ),
    pytest.param(
        Bad(
            _ops('{ reshape = ["heads", -1] }'),
            "ops",
            ("'heads' is neither a whole number nor a parameter", "declared in [params]: none"),
        ),
        id="reshape-param-without-params",
    ),
    pytest.param(
        Bad(
            _ops('{ reshape = ["num_heads", -1] }', "num_heads = 1.5\n"),
            "ops",
            ("parameter 'num_heads' is 1.5, not a whole number",),
        ),
        id="reshape-float-param",
    ),
    pytest.param(
        Bad(
            _ops('{ reshape = ["act", -1] }', 'act = "gelu"\n'),
            "ops",
            ("parameter 'act' is 'gelu', not a whole number",),
        ),
        id="reshape-string-param",
    ),
    pytest.param(
        Bad(
            _split('{ axis = 0, parts = "num_part" }', extra="", targets='["a", "b"]').replace(
                "[[rules]]", "[params]\nnum_parts = 2\n[[rules]]"
            ),
            "split.parts",
            ("split parts: 'num_part'", "declared in [params]: num_parts", "did you mean 'num_parts'?"),
        ),
        id="split-parts-unknown-param",
    ),
    pytest.param(
        Bad(
            _split('{ axis = 0, sizes = ["size", 2] }').replace("[[rules]]", "[params]\nsize = 2.0\n[[rules]]"),
            "split.sizes",
            ("split sizes ['size', 2]", "parameter 'size' is 2.0, not a whole number"),
        ),
        id="split-sizes-float-param",
    ),
    pytest.param(
        Bad(
            _combine("stack", '{ axis = 0, by = "p", count = "n" }').replace(
                "[[rules]]", "[params]\nn = true\n[[rules]]"
            ),
            "stack.count",
            ("count: parameter 'n' is True, not a whole number",),
        ),
        id="stack-count-bool-param",
    ),
    pytest.param(
        Bad(
            _combine("concat", '{ axis = 0, by = "p", count = "layers" }').replace(
                "[[rules]]", "[params]\nnum_layers = 3\n[[rules]]"
            ),
            "concat.count",
            ("'layers' is neither a whole number nor a parameter", "num_layers"),
        ),
        id="concat-count-unknown-param",
    ),
    pytest.param(
        Bad(
            _ops('{ rearrange = "(heads dim) h -> h heads dim", heads = "num_head" }', "num_heads = 12\n"),
            "ops",
            ("rearrange size heads: 'num_head'", "declared in [params]: num_heads", "did you mean 'num_heads'?"),
        ),
        id="rearrange-size-unknown-param",
    ),
    pytest.param(
        Bad(
            _ops('{ rearrange = "(heads dim) h -> h heads dim", heads = "scale" }', "scale = 0.5\n"),
            "ops",
            ("rearrange size heads", "parameter 'scale' is 0.5, not a whole number"),
        ),
        id="rearrange-size-float-param",
    ),
    pytest.param(
        Bad(
            _ops('{ rearrange = "(heads dim) h -> h (heads dim)", heads = "target" }', "n = 1\n"),
            "ops",
            ('rearrange size heads = "target"', "shares an output axis", "cannot be read off the target"),
        ),
        id="rearrange-size-from-target-on-a-merged-axis",
    ),
    # --- split / targets ---
    pytest.param(
        Bad(_rule('match = "w"\ntargets = ["a", "b"]\n'), None, ("'split' and 'targets' go together",)),
        id="targets-without-split",
    ),
    pytest.param(
        Bad(
            _rule('match = "w"\ntarget = "a"\nsplit = { axis = 0, parts = 2 }\n'),
            None,
            ("'split' and 'targets' go together", "a target for each part"),
        ),
        id="split-without-targets",
    ),
    pytest.param(
        Bad(_split("{ axis = 0, parts = 3 }"), None, ("split makes 3 parts but 'targets' lists 2 names",)),
        id="parts-count-mismatch",
    ),
    pytest.param(
        Bad(
            _split("{ axis = 0, sizes = [1, 2, 3] }", targets='["a"]'),
            None,
            ("split makes 3 parts but 'targets' lists 1 names",),
        ),
        id="sizes-count-mismatch",
    ),
    pytest.param(
        Bad(
            _split("{ axis = 0, parts = 2, sizes = [1, 1] }"),
            "split",
            ("exactly one of 'parts' (equal parts) or 'sizes'",),
        ),
        id="parts-and-sizes",
    ),
    pytest.param(
        Bad(_split("{ axis = 0 }"), "split", ("exactly one of 'parts' (equal parts) or 'sizes'",)),
        id="neither-parts-nor-sizes",
    ),
    pytest.param(
        Bad(_split("{ axis = 0, sizes = [0, 2] }"), "split", ("split sizes [0, 2] must be positive",)),
        id="zero-size",
    ),
    pytest.param(
        Bad(_split("{ axis = 0, parts = 0 }", targets="[]"), "split.parts", ("greater than or equal to 1",)),
        id="zero-parts",
    ),
    pytest.param(
        Bad(_split("{ parts = 2 }"), "split.axis", ("this key is required",)),
        id="split-without-axis",
    ),
    pytest.param(
        Bad(
            _split("{ axis = 0, parts = 2, axes = 1 }"),
            "split.axes",
            ("unknown key 'axes'", "did you mean 'axis'?"),
        ),
        id="split-unknown-key",
    ),
    pytest.param(
        Bad(
            _rule('match = "w"\nskip = "unused"\nsplit = { axis = 0, parts = 2 }\n'),
            None,
            ("a skip rule takes no 'guard', 'ops', 'split'", "it uses no tensor"),
        ),
        id="split-with-skip",
    ),
    pytest.param(
        Bad(
            _rule('match = "w"\ntarget = "a"\ntargets = ["b", "c"]\nsplit = { axis = 0, parts = 2 }\n'),
            None,
            ("exactly one of 'target'", "it has target and targets"),
        ),
        id="target-and-targets",
    ),
    pytest.param(
        Bad(
            _rule('match = "w"\ntargets = ["a", "{i}"]\nsplit = { axis = 0, parts = 2 }\n'),
            "targets",
            ("template '{i}' uses group 'i'", "(it defines: none)"),
        ),
        id="split-target-template-unknown-group",
    ),
    pytest.param(
        Bad(
            _rule(
                'match = "(?P<p>[qkv])"\ntargets = ["a", "b"]\nsplit = { axis = 0, parts = 2 }\n'
                'concat = { axis = 0, by = "p", members = ["q", "k"] }\n'
            ),
            None,
            ("can 'split' one source or join several ('concat'/'stack'), not both", "use two rules"),
        ),
        id="split-with-concat",
    ),
    # --- concat / stack ---
    pytest.param(
        Bad(
            _rule(
                'match = "(?P<p>[qkv])"\ntarget = "qkv"\nconcat = { axis = 0, by = "p", members = ["q", "k"] }\n'
                'stack = { axis = 0, by = "p", count = 2 }\n'
            ),
            None,
            ("a rule can 'concat' or 'stack', not both",),
        ),
        id="concat-and-stack",
    ),
    pytest.param(
        Bad(
            _combine("concat", '{ axis = 0, by = "part", members = ["q", "k"] }'),
            None,
            ("'by' names group 'part'", "the pattern does not define (it defines: p)"),
        ),
        id="by-is-not-a-group",
    ),
    pytest.param(
        Bad(
            _combine("stack", '{ axis = 0, by = "i", count = 2 }', match="l\\\\d+"),
            None,
            ("'by' names group 'i'", "(it defines: none)"),
        ),
        id="by-without-groups",
    ),
    pytest.param(
        Bad(
            _combine("concat", '{ axis = 0, by = "p", members = ["q", "k"] }', target="fused/{p}"),
            None,
            ("the target template uses {p}, the group that tells members apart",),
        ),
        id="template-uses-the-by-group",
    ),
    pytest.param(
        Bad(
            _combine("stack", '{ axis = 0, by = "p", members = ["q"], count = 1 }'),
            "stack",
            ("exactly one of 'members'", "or 'count'"),
        ),
        id="members-and-count",
    ),
    pytest.param(
        Bad(_combine("concat", '{ axis = 0, by = "p" }'), "concat", ("exactly one of 'members'",)),
        id="neither-members-nor-count",
    ),
    pytest.param(
        Bad(
            _combine("concat", '{ axis = 0, by = "p", members = ["q", "k", "q"] }'),
            "concat",
            ("members ['q', 'k', 'q'] lists a value twice",),
        ),
        id="duplicate-members",
    ),
    pytest.param(
        Bad(_combine("stack", '{ axis = 0, by = "p", count = 0 }'), "stack.count", ("greater than or equal to 1",)),
        id="zero-count",
    ),
    pytest.param(
        Bad(
            _combine("concat", '{ axis = 0, by = "p", count = "target" }'),
            None,
            ("concat count = 'target' cannot be", "count = 'target' is for stack"),
        ),
        id="concat-count-target",
    ),
    pytest.param(
        Bad(
            _combine("concat", '{ axis = 0, by = "p", member = ["q"] }'),
            "concat.member",
            ("unknown key 'member'", "did you mean 'members'?"),
        ),
        id="combine-unknown-key",
    ),
    pytest.param(
        Bad(
            _rule('match = "(?P<p>[qkv])"\nskip = "x"\nstack = { axis = 0, by = "p", count = 2 }\n'),
            None,
            ("a skip rule takes no", "'stack'"),
        ),
        id="stack-with-skip",
    ),
    # --- slice ---
    pytest.param(
        Bad(_ops('{ slice = "x" }'), "ops", ("operation 1 (slice)", "'x' is not an index or a start:stop:step slice")),
        id="slice-word",
    ),
    pytest.param(
        Bad(_ops('{ slice = "1:2:3:4" }'), "ops", ("'1:2:3:4' is not an index",)),
        id="slice-four-parts",
    ),
    pytest.param(
        Bad(_ops('{ slice = "::0" }'), "ops", ("'::0' is not an index",)),
        id="slice-step-zero",
    ),
    pytest.param(
        Bad(
            _ops('{ slice = "" }'),
            "ops",
            ("slice ''", 'write e.g. "0" or ":, 1:5"'),
        ),
        id="slice-empty",
    ),
    pytest.param(
        Bad(
            _ops('{ slice = "0,,1" }'),
            "ops",
            ("slice '0,,1'", "'' is not an index"),
        ),
        id="slice-empty-item",
    ),
    pytest.param(
        Bad(_ops('{ slice = "1.5" }'), "ops", ("'1.5' is not an index",)),
        id="slice-float",
    ),
    pytest.param(
        Bad(
            _ops("{ slice = 0 }"),
            "ops",
            ("operation 1 (slice)", "valid string"),
        ),
        id="slice-not-a-string",
    ),
    # --- rearrange ---
    pytest.param(
        Bad(_ops('{ rearrange = "a b" }'), "ops", ("operation 1 (rearrange)", "'a b' needs exactly one '->'")),
        id="rearrange-no-arrow",
    ),
    pytest.param(
        Bad(_ops('{ rearrange = "a -> b -> a" }'), "ops", ("needs exactly one '->'",)),
        id="rearrange-two-arrows",
    ),
    pytest.param(
        Bad(_ops('{ rearrange = "a a -> a" }'), "ops", ("a appears twice on the left",)),
        id="rearrange-repeated-left",
    ),
    pytest.param(
        Bad(_ops('{ rearrange = "(a b) -> a b a" }'), "ops", ("a appears twice on the right",)),
        id="rearrange-repeated-right",
    ),
    pytest.param(
        Bad(_ops('{ rearrange = "a b -> a" }'), "ops", ("b must appear on both sides",)),
        id="rearrange-axis-only-left",
    ),
    pytest.param(
        Bad(_ops('{ rearrange = "a -> a c" }'), "ops", ("c must appear on both sides",)),
        id="rearrange-axis-only-right",
    ),
    pytest.param(
        Bad(_ops('{ rearrange = "((a b) c) -> a b c" }'), "ops", ("nested parentheses",)),
        id="rearrange-nested-parens",
    ),
    pytest.param(
        Bad(_ops('{ rearrange = "(a b -> a b" }'), "ops", ("unclosed parenthesis",)),
        id="rearrange-unclosed-paren",
    ),
    pytest.param(
        Bad(_ops('{ rearrange = "() a -> a" }'), "ops", ("unbalanced or empty parentheses",)),
        id="rearrange-empty-parens",
    ),
    pytest.param(
        Bad(_ops('{ rearrange = "a 2b -> a 2b" }'), "ops", ("'2b' is not an axis name",)),
        id="rearrange-bad-axis-name",
    ),
    pytest.param(
        Bad(
            _ops('{ rearrange = "(heads dim) h -> h heads dim", head = 2 }'),
            "ops",
            ("rearrange binds 'head'", "'(heads dim) h -> h heads dim' does not name", "did you mean 'heads'?"),
        ),
        id="rearrange-binds-an-unnamed-axis",
    ),
    pytest.param(
        Bad(
            _ops('{ rearrange = "(heads dim) h -> h heads dim", heads = -2 }'),
            "ops",
            ("rearrange size heads = -2 must be a positive whole number",),
        ),
        id="rearrange-negative-size",
    ),
    pytest.param(
        Bad(
            _ops('{ rearrange = "(heads dim) h -> h heads dim", heads = 0 }'),
            "ops",
            ("rearrange size heads = 0 must be a positive whole number",),
        ),
        id="rearrange-zero-size",
    ),
    pytest.param(
        Bad(
            _ops('{ rearrange = "(heads dim) h -> h heads dim", heads = true }'),
            "ops",
            ("rearrange size heads: True is neither a whole number nor a parameter",),
        ),
        id="rearrange-bool-size",
    ),
    pytest.param(
        Bad(
            _ops('{ slice = "0", rearrange = "a -> a" }'),
            "ops",
            ("must be a table with exactly one key",),
        ),
        id="rearrange-with-another-operation-key",
    ),
]


@pytest.mark.parametrize("case", BAD)
def test_bad_porting_rule_is_reported_with_its_rule_field_and_fix(case: Bad, tmp_path: Path) -> None:
    path = tmp_path / "porting.toml"
    path.write_text(case.text, encoding="utf-8")
    before = path.read_bytes()

    with pytest.raises(RuleFileError) as caught:
        load_rules(path)

    error = caught.value
    assert isinstance(error, MapperError)
    assert isinstance(error, ValueError)
    issues = [issue for issue in error.issues if issue.field == case.field]
    assert issues, f"no issue for field {case.field!r} in:\n{error}"
    issue = issues[0]
    assert issue.file == str(path)
    assert issue.rule == case.rule
    text = str(issue)
    for fragment in case.fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    if case.rule is not None:
        assert f"rule {case.rule}" in text
    assert str(path) in str(error)
    assert path.read_bytes() == before  # nothing changed


@pytest.mark.parametrize("case", BAD)
def test_bad_porting_rule_from_a_dict_leaves_the_dict_alone(case: Bad) -> None:
    data = tomllib.loads(case.text)
    before = copy.deepcopy(data)
    with pytest.raises(RuleFileError) as caught:
        validate_rules(data, file="dict.toml")
    assert {issue.file for issue in caught.value.issues} == {"dict.toml"}
    assert data == before


def test_one_bad_value_in_params_is_one_issue() -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_rules(HEADER + "[params]\nok = 1\nbad = [1, 2]\n")
    assert len(caught.value.issues) == 1, str(caught.value)


def test_every_porting_problem_of_a_file_is_reported_at_once() -> None:
    text = (
        HEADER
        + "[params]\nnum_heads = 12\n"
        + '[[rules]]\nname = "qkv"\nmatch = "w"\ntargets = ["a", "b"]\nsplit = { axis = 0, parts = 3 }\n'
        + '[[rules]]\nname = "proj"\nmatch = "p"\ntarget = "t"\nops = [{ slice = "x" }, { reshape = ["num_head"] }]\n'
        + '[[rules]]\nname = "group"\nmatch = "(?P<p>.)"\ntarget = "g"\nconcat = { axis = 0, by = "q", count = 2 }\n'
    )
    with pytest.raises(RuleFileError) as caught:
        parse_rules(text, file="many.toml")
    by_rule = {issue.rule_name: str(issue) for issue in caught.value.issues}
    assert set(by_rule) == {"qkv", "proj", "group"}
    assert "split makes 3 parts" in by_rule["qkv"]
    assert "operation 1 (slice)" in by_rule["proj"]
    assert "operation 2 (reshape)" in by_rule["proj"]
    assert "'by' names group 'q'" in by_rule["group"]


# ---------------------------------------------------------------------------------------------------------------------
# Valid porting rules
# ---------------------------------------------------------------------------------------------------------------------


def test_gpt2_c_attn_rule_file_parses() -> None:
    rules = parse_rules(
        """
format = 1
[params]
hidden = 768
num_heads = 12

[[rules]]
name = "fused attention kernel"
match = 'h\\.(?P<i>\\d+)\\.attn\\.c_attn\\.weight'
targets = ["layer_{i}/query/kernel", "layer_{i}/key/kernel", "layer_{i}/value/kernel"]
split = { axis = -1, parts = 3 }
ops = [{ reshape = ["hidden", "num_heads", -1] }]

[[rules]]
name = "qkv"
source = "backbone"
match = 'layers\\.(?P<i>\\d+)\\.attn\\.(?P<part>[qkv])_proj\\.weight'
target = "layer_{i}/attention/qkv"
concat = { axis = -1, by = "part", members = ["q", "k", "v"] }

[[rules]]
match = 'vit\\.embeddings\\.position_embeddings'
target = "position_embedding"
ops = [{ slice = "0" }]
""",
        file="gpt2.toml",
    )
    split, concat, sliced = rules.rules
    assert split.split == SplitSpec(axis=-1, parts=3)
    assert split.targets == ("layer_{i}/query/kernel", "layer_{i}/key/kernel", "layer_{i}/value/kernel")
    assert [_render(split, "h.7.attn.c_attn.weight", part) for part in range(3)] == [
        "layer_7/query/kernel",
        "layer_7/key/kernel",
        "layer_7/value/kernel",
    ]
    assert split.ops == (ReshapeSpec(reshape=(768, 12, -1)),)
    assert concat.source == "backbone"
    assert concat.combine == CombineSpec(axis=-1, by="part", members=("q", "k", "v"))
    assert concat.combine is not None and concat.combine.expected == ("q", "k", "v")
    assert _render(concat, "layers.3.attn.k_proj.weight") == "layer_3/attention/qkv"
    assert sliced.ops == (SliceSpec(slice="0"),)
    assert rules.rule_ref(1).file == "gpt2.toml"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("0", id="index"),
        pytest.param("-1", id="negative-index"),
        pytest.param(":, 1:5", id="full-then-range"),
        pytest.param("::2", id="step"),
        pytest.param(" 0 , 1:3 ", id="spaces"),
        pytest.param("::-1", id="reverse"),
    ],
)
def test_valid_slices(text: str) -> None:
    rule = _only_rule(_ops(f'{{ slice = "{text}" }}'))
    assert rule.ops == (SliceSpec(slice=text),)


@pytest.mark.parametrize(
    ("pattern", "sizes"),
    [
        pytest.param("(heads dim) hidden -> hidden heads dim", {"heads": 12}, id="split-axis"),
        pytest.param("hidden heads dim -> hidden (heads dim)", {}, id="merge-axes-nothing-to-bind"),
        pytest.param("a b c -> c a b", {}, id="plain-permutation"),
        pytest.param("(h d) c -> c (d h)", {"d": 64}, id="bind-the-other-one"),
        pytest.param("x->x", {}, id="no-spaces-round-arrow"),
    ],
)
def test_valid_rearranges(pattern: str, sizes: dict[str, int]) -> None:
    bound = "".join(f", {name} = {size}" for name, size in sizes.items())
    rule = _only_rule(_ops(f'{{ rearrange = "{pattern}"{bound} }}'))
    (operation,) = rule.ops
    assert isinstance(operation, RearrangeSpec)
    assert operation.rearrange == pattern
    assert dict(operation.sizes) == sizes


def test_rule_sets_with_params_are_frozen() -> None:
    rules = parse_rules(_rule('match = "w"\ntarget = "t{n}"\n', "n = 1\n"))
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        rules.rules[0].target = "x"  # type: ignore[misc]
    assert isinstance(rules, RuleSet)


# ---------------------------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------------------------

identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(name=identifiers, value=st.integers(0, 10_000), offset=st.integers(0, 50))
def test_integer_params_render_with_offsets(name: str, value: int, offset: int) -> None:
    rule = _only_rule(
        _rule(
            f'match = "w"\ntargets = ["a{{{name}}}", "b{{{name} + {offset}}}"]\nsplit = {{ axis = 0, parts = 2 }}\n',
            f"{name} = {value}\n",
        )
    )
    assert [_render(rule, "w", part) for part in range(2)] == [f"a{value}", f"b{value + offset}"]


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(1, 4096), min_size=1, max_size=6))
def test_split_sizes_given_as_params_equal_literal_sizes(sizes: list[int]) -> None:
    params = "".join(f"s{index} = {size}\n" for index, size in enumerate(sizes))
    names = ", ".join(f'"s{index}"' for index in range(len(sizes)))
    targets = ", ".join(f'"t{index}"' for index in range(len(sizes)))
    by_name = _only_rule(
        _split(f"{{ axis = 0, sizes = [{names}] }}", targets=f"[{targets}]").replace(
            "[[rules]]", f"[params]\n{params}[[rules]]"
        )
    )
    literal = _only_rule(_split(f"{{ axis = 0, sizes = {sizes} }}", targets=f"[{targets}]"))
    assert by_name.split == literal.split == SplitSpec(axis=0, sizes=tuple(sizes))
