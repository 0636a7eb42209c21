"""Tests for mapper.rules: the rule-file schema, load_rules/parse_rules/validate_rules and name templates."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pydantic
import pytest
import regex

from mapper.errors import MapperError, RuleFileError, RuleIssue
from mapper.plan import RuleRef
from mapper.rules import (
    RULES_FORMAT,
    CastSpec,
    Guard,
    Keep,
    Policies,
    ReshapeSpec,
    Rule,
    RuleSet,
    TemplateError,
    TransposeSpec,
    load_rules,
    parse_rules,
    validate_rules,
)

HEADER = "format = 1\n"


def _rule(body: str) -> str:
    return HEADER + "[[rules]]\n" + body


@dataclass(frozen=True)
class Bad:
    """One malformed rule file and the issue it must produce."""

    text: str
    field: str | None
    fragments: tuple[str, ...]
    rule: int | None = None
    name: str | None = None
    section: str = "rule"
    line: int | None = None
    column: int | None = None
    count: int = 1


BAD_FILES = [
    # --- malformed TOML: line and column ---
    pytest.param(
        Bad(_rule('match = "a"\ntarget = \n'), None, ("invalid TOML", "Invalid value"), line=4, column=10),
        id="toml-missing-value",
    ),
    pytest.param(
        Bad(HEADER + '[[rules]]\nmatch = "a\ntarget = "b"\n', None, ("invalid TOML",), line=3),
        id="toml-unclosed-string",
    ),
    pytest.param(Bad("format = 1\nformat = 1\n", None, ("invalid TOML",), line=2), id="toml-duplicate-key"),
    pytest.param(Bad("format = 1\n[[rules]\n", None, ("invalid TOML",), line=2), id="toml-bad-table-header"),
    # --- unknown keys: the closest valid key ---
    pytest.param(
        Bad(
            _rule('name = "r1"\nmtach = "a"\ntarget = "b"\n'),
            "mtach",
            ("unknown key 'mtach'", "did you mean 'match'?"),
            rule=1,
            name="r1",
            count=2,  # 'match' is also missing
        ),
        id="unknown-key-in-rule",
    ),
    pytest.param(
        Bad(_rule('match = "a"\ntraget = "b"\nskip = "c"\n'), "traget", ("unknown key 'traget'", "'target'"), rule=1),
        id="unknown-key-traget",
    ),
    pytest.param(
        Bad("format = 1\npolicy = 3\n", "policy", ("unknown key 'policy'", "'policies'")), id="unknown-key-top"
    ),
    pytest.param(
        Bad(
            HEADER + '[policies]\nunused_sources = "warn"\n',
            "policies.unused_sources",
            ("unknown key 'unused_sources'", "did you mean 'unused_source'?"),
        ),
        id="unknown-key-policies",
    ),
    pytest.param(
        Bad(HEADER + '[target]\nnamespce = "path"\n', "target.namespce", ("did you mean 'namespace'?",)),
        id="unknown-key-target-section",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nguard = { same_shap = true }\n'),
            "guard.same_shap",
            ("unknown key 'same_shap'", "did you mean 'same_shape'?"),
            rule=1,
        ),
        id="unknown-key-guard",
    ),
    pytest.param(
        Bad(
            HEADER + '[[keep]]\nname = "head"\nmatch = "a"\nreasn = "b"\n',
            "reasn",
            ("unknown key 'reasn'", "did you mean 'reason'?"),
            rule=1,
            name="head",
            section="keep rule",
            count=2,  # 'reason' is also missing
        ),
        id="unknown-key-keep",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nops = [{ transpos = [1, 0] }]\n'),
            "ops",
            ("unknown operation 'transpos'", "did you mean 'transpose'?"),
            rule=1,
        ),
        id="unknown-operation",
    ),
    # --- invalid regular expressions: rule and position ---
    pytest.param(
        Bad(
            HEADER + '[[rules]]\nmatch = "ok"\nskip = "x"\n[[rules]]\nname = "bad"\nmatch = "a(b"\ntarget = "b"\n',
            "match",
            ("invalid regular expression", "missing )", "position 3", "a(b\u2192"),
            rule=2,
            name="bad",
        ),
        id="regex-unbalanced-paren",
    ),
    pytest.param(
        Bad(_rule('match = "x[ab"\nskip = "s"\n'), "match", ("invalid regular expression", "position 4"), rule=1),
        id="regex-unterminated-set",
    ),
    pytest.param(
        Bad(_rule('match = "*a"\nskip = "s"\n'), "match", ("invalid regular expression", "position 0"), rule=1),
        id="regex-nothing-to-repeat",
    ),
    pytest.param(
        Bad(
            HEADER + '[[keep]]\nmatch = "head/(.*"\nreason = "new"\n',
            "match",
            ("invalid regular expression", "missing )", "position 8"),
            rule=1,
            section="keep rule",
        ),
        id="regex-in-keep",
    ),
    # --- templates ---
    pytest.param(
        Bad(
            _rule('name = "attn"\nmatch = "(?P<i>\\\\d+)/(?P<j>x)"\ntarget = "{k}"\n'),
            "target",
            ("uses group 'k'", "(it defines: i, j)", "add '(?P<k>...)' to 'match'"),
            rule=1,
            name="attn",
        ),
        id="template-unknown-group",
    ),
    pytest.param(
        Bad(
            _rule('match = "layer_\\\\d+"\ntarget = "{i}"\n'),
            "target",
            ("uses group 'i'", "(it defines: none)", "add '(?P<i>...)'"),
            rule=1,
        ),
        id="template-group-without-groups",
    ),
    pytest.param(
        Bad(
            _rule('match = "(a)"\ntarget = "{2}"\n'), "target", ("uses group 2", "has 1 groups", "group number"), rule=1
        ),
        id="template-group-number-too-high",
    ),
    pytest.param(
        Bad(
            _rule('match = "(?P<i>a)"\ntarget = "{i * 2}"\n'),
            "target",
            ("'{i * 2}'", "is not '{group}', '{group + N}'", "write '{{'"),
            rule=1,
        ),
        id="template-bad-field",
    ),
    pytest.param(
        Bad(_rule('match = "(?P<i>a)"\ntarget = "x{i"\n'), "target", ("'{i'", "position 1"), rule=1),
        id="template-unclosed-field",
    ),
    pytest.param(
        Bad(_rule('match = "(?P<i>a)"\ntarget = "x}"\n'), "target", ("unmatched '}'", "write '}}'"), rule=1),
        id="template-unmatched-close-brace",
    ),
    # --- operations ---
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nops = [{ transpose = [0, 0] }]\n'),
            "ops",
            ("operation 1 (transpose)", "[0, 0] is not a permutation", "e.g. [1, 0]"),
            rule=1,
        ),
        id="transpose-repeated-axis",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nops = [{ cast = "float32" }, { transpose = [0, 2] }]\n'),
            "ops",
            ("operation 2 (transpose)", "[0, 2] is not a permutation", "0..1"),
            rule=1,
        ),
        id="transpose-axis-out-of-range",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nops = [{ reshape = [-1, 2, -1] }]\n'),
            "ops",
            ("operation 1 (reshape)", "more than one -1", "at most one size can be inferred"),
            rule=1,
        ),
        id="reshape-two-unknowns",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nops = [{ reshape = [0, 2] }]\n'),
            "ops",
            ("reshape [0, 2]", "sizes must be positive"),
            rule=1,
        ),
        id="reshape-zero-size",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nops = [{ reshape = [3, -2] }]\n'),
            "ops",
            ("reshape [3, -2]", "sizes must be positive"),
            rule=1,
        ),
        id="reshape-negative-size",
    ),
    pytest.param(
        Bad(_rule('match = "a"\ntarget = "b"\nops = [{ reshape = "targte" }]\n'), "ops", ("'target'",), rule=1),
        id="reshape-misspelled-target",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nops = [{ cast = "flaot32" }]\n'),
            "ops",
            ("operation 1 (cast)", "unknown dtype 'flaot32'", "did you mean 'float32'?"),
            rule=1,
        ),
        id="cast-unknown-dtype",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nops = [{ cast = "string" }]\n'),
            "ops",
            ("unknown dtype 'string'",),
            rule=1,
        ),
        id="cast-to-string",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nops = [{ transpose = [1, 0], cast = "float32" }]\n'),
            "ops",
            ("exactly one key", "{ transpose = [1, 0] }"),
            rule=1,
        ),
        id="operation-with-two-keys",
    ),
    pytest.param(
        Bad(_rule('match = "a"\ntarget = "b"\nops = ["cast"]\n'), "ops", ("exactly one key", "got 'cast'"), rule=1),
        id="operation-not-a-table",
    ),
    pytest.param(
        Bad(_rule('match = "a"\ntarget = "b"\nops = { cast = "float32" }\n'), "ops", ("valid tuple",), rule=1),
        id="ops-not-a-list",
    ),
    # --- guards ---
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nguard = { dtype = "int31" }\n'),
            "guard.dtype",
            ("unknown dtype 'int31'", "did you mean 'int32'?"),
            rule=1,
        ),
        id="guard-unknown-dtype",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nguard = { on_fail = "skip", reason = "r" }\n'),
            "guard",
            ("a guard must check something", "same_shape = true, shape, rank or dtype"),
            rule=1,
        ),
        id="guard-checks-nothing",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nguard = { same_shape = false }\n'),
            "guard",
            ("a guard must check something",),
            rule=1,
        ),
        id="guard-same-shape-false-only",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nguard = { rank = 1, on_fail = "warn" }\n'),
            "guard.on_fail",
            ("'warn' is not allowed", "use 'skip' or 'error'"),
            rule=1,
        ),
        id="guard-on-fail-value",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nguard = { shape = [-2, 3] }\n'),
            "guard.shape",
            ("negative size", "use -1 for 'any size'"),
            rule=1,
        ),
        id="guard-negative-shape",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\ntarget = "b"\nguard = { rank = -1 }\n'),
            "guard.rank",
            ("greater than or equal to 0",),
            rule=1,
        ),
        id="guard-negative-rank",
    ),
    # --- target / skip / match ---
    pytest.param(Bad(_rule('target = "b"\n'), "match", ("this key is required",), rule=1), id="missing-match"),
    pytest.param(
        Bad(_rule('match = 3\ntarget = "b"\n'), "match", ("valid string",), rule=1),
        id="match-not-a-string",
    ),
    pytest.param(
        Bad(
            _rule('name = "both"\nmatch = "a"\ntarget = "b"\nskip = "c"\n'),
            None,
            ("exactly one of 'target'", "or 'skip'"),
            rule=1,
            name="both",
        ),
        id="target-and-skip",
    ),
    pytest.param(
        Bad(_rule('match = "a"\n'), None, ("exactly one of 'target'", "or 'skip'"), rule=1),
        id="neither-target-nor-skip",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\nskip = "unused"\nops = [{ cast = "float32" }]\n'),
            None,
            ("a skip rule takes no 'guard', 'ops'",),
            rule=1,
        ),
        id="skip-with-ops",
    ),
    pytest.param(
        Bad(
            _rule('match = "a"\nskip = "unused"\nguard = { rank = 1 }\n'),
            None,
            ("a skip rule takes no 'guard', 'ops'",),
            rule=1,
        ),
        id="skip-with-guard",
    ),
    pytest.param(
        Bad(HEADER + '[[keep]]\nmatch = "head/.*"\n', "reason", ("this key is required",), rule=1, section="keep rule"),
        id="keep-without-reason",
    ),
    pytest.param(
        Bad(
            HEADER + '[[keep]]\nname = "k"\nmatch = "a"\nreason = "r"\nnamespace = "chk"\n',
            "namespace",
            ("'chk' is not allowed", "use 'path' or 'checkpoint'"),
            rule=1,
            name="k",
            section="keep rule",
        ),
        id="keep-bad-namespace",
    ),
    # --- header, target section, policies ---
    pytest.param(
        Bad("format = 2\n", "format", ("format 2 is not supported", "reads format = 1")), id="format-version-2"
    ),
    pytest.param(Bad('format = "1"\n', "format", ("format '1' is not supported",)), id="format-as-string"),
    pytest.param(
        Bad('[[rules]]\nmatch = "a"\ntarget = "b"\n', "format", ("this key is required",)), id="format-missing"
    ),
    pytest.param(
        Bad(
            HEADER + '[target]\nnamespace = "paths"\n',
            "target.namespace",
            ("'paths' is not allowed", "'path' or 'checkpoint'"),
        ),
        id="target-namespace-value",
    ),
    pytest.param(Bad(HEADER + "rules = 3\n", "rules", ("valid tuple",)), id="rules-not-an-array"),
    *(
        pytest.param(
            Bad(
                HEADER + f'[policies]\n{policy} = "warning"\n',
                f"policies.{policy}",
                ("'warning' is not allowed", "use 'error', 'warn' or 'ignore'"),
            ),
            id=f"policy-{policy}-value",
        )
        for policy in ("unused_source", "unfilled_target", "dead_rule", "double_fill")
    ),
]


def _matching_issue(error: RuleFileError, case: Bad) -> RuleIssue:
    candidates = [issue for issue in error.issues if issue.field == case.field]
    assert candidates, f"no issue for field {case.field!r} in:\n{error}"
    return candidates[0]


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_rule_file_reports_the_file_rule_field_and_fix(case: Bad, tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(case.text, encoding="utf-8")
    before = path.read_bytes()

    with pytest.raises(RuleFileError) as caught:
        load_rules(path)

    error = caught.value
    assert isinstance(error, MapperError)
    assert isinstance(error, ValueError)
    assert len(error.issues) == case.count, str(error)
    issue = _matching_issue(error, case)
    assert issue.file == str(path)
    assert issue.rule == case.rule
    assert issue.rule_name == case.name
    if case.rule is not None:
        assert issue.section == case.section
        label = f"{case.section} {case.rule}" + (f" ({case.name!r})" if case.name else "")
        assert label in str(issue)
    if case.line is not None:
        assert issue.line == case.line
        assert f"{path}:{case.line}:" in str(issue)
    if case.column is not None:
        assert issue.column == case.column
    text = str(issue)
    for fragment in case.fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    # The whole error names the file and counts its problems.
    assert str(path) in str(error)
    assert str(error).startswith(f"{case.count} problem{'s' if case.count != 1 else ''} in rule file")
    # Nothing changed: the file is as it was.
    assert path.read_bytes() == before


@pytest.mark.parametrize("case", BAD_FILES)
def test_parse_rules_names_the_given_file(case: Bad) -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_rules(case.text, file="inline.toml")
    assert {issue.file for issue in caught.value.issues} == {"inline.toml"}


def test_several_problems_are_all_reported_at_once() -> None:
    text = (
        HEADER
        + '[policies]\ndead_rule = "nope"\n'
        + '[[rules]]\nname = "one"\nmatch = "a("\ntarget = "b"\n'  # bad regex
        + '[[rules]]\nmatch = "b"\ntarget = "c"\nskip = "x"\n'  # both target and skip
        + '[[rules]]\nname = "three"\nmatch = "(?P<i>c)"\ntarget = "{j}"\nops = [{ cast = "f32" }]\n'  # two fields
        + '[[rules]]\nmatch = "d"\ntarget = "e"\n'  # fine
        + '[[keep]]\nmatch = "k"\n'  # no reason
    )
    with pytest.raises(RuleFileError) as caught:
        parse_rules(text, file="many.toml")
    issues = caught.value.issues
    where = sorted((issue.section, issue.rule or 0, issue.field or "") for issue in issues)
    assert where == [
        ("keep rule", 1, "reason"),
        ("rule", 0, "policies.dead_rule"),
        ("rule", 1, "match"),
        ("rule", 2, ""),
        ("rule", 3, "ops"),
        ("rule", 3, "target"),
    ]
    assert str(caught.value).startswith("6 problems in rule file many.toml:")
    names = {issue.rule: issue.rule_name for issue in issues if issue.section == "rule"}
    assert names[1] == "one"
    assert names[3] == "three"
    # Both problems inside rule 3's ops are in its one issue.
    ops_issue = next(issue for issue in issues if issue.field == "ops")
    assert "operation 1 (cast)" in ops_issue.message
    assert "did you mean 'float32'?" in ops_issue.message


def test_two_bad_operations_in_one_rule_are_both_named() -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_rules(_rule('match = "a"\ntarget = "b"\nops = [{ transpose = [1, 1] }, { cast = "f32" }]\n'))
    (issue,) = caught.value.issues
    assert "operation 1 (transpose)" in issue.message
    assert "operation 2 (cast)" in issue.message


@pytest.mark.parametrize(
    ("make_path", "fragment"),
    [
        pytest.param(lambda tmp: tmp / "missing.toml", "no such rule file; check the path", id="missing-file"),
        pytest.param(lambda tmp: tmp / "no" / "such" / "dir.toml", "no such rule file", id="missing-directory"),
        pytest.param(lambda tmp: tmp, "cannot read the rule file", id="a-directory"),
    ],
)
def test_unreadable_rule_file(make_path, fragment: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = make_path(tmp_path)
    listing = sorted(tmp_path.iterdir())
    with pytest.raises(RuleFileError) as caught:
        load_rules(path)
    (issue,) = caught.value.issues
    assert issue.file == str(path)
    assert fragment in str(caught.value)
    assert str(path) in str(caught.value)
    assert sorted(tmp_path.iterdir()) == listing


def test_rule_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'format = 1\ndescription = "caf\xe9"\n')
    with pytest.raises(RuleFileError) as caught:
        load_rules(path)
    assert "cannot read the rule file" in str(caught.value)
    assert caught.value.issues[0].file == str(path)


def test_validate_rules_does_not_mutate_its_input() -> None:
    data = {
        "format": 1,
        "policies": {"unused_source": "warn"},
        "rules": [
            {"match": "a", "target": "b", "ops": [{"transpose": [1, 0]}, {"reshape": [-1]}]},
            {"match": "bad(", "skip": "x"},
        ],
    }
    before = copy.deepcopy(data)
    with pytest.raises(RuleFileError):
        validate_rules(data, file="dict")
    assert data == before
    del data["rules"][1]  # type: ignore[attr-defined]
    before = copy.deepcopy(data)
    rules = validate_rules(data, file="dict")
    assert data == before
    assert rules.file == "dict"
    assert rules.rules[0].ops == (TransposeSpec(transpose=(1, 0)), ReshapeSpec(reshape=(-1,)))


# --- valid files ---------------------------------------------------------------------------------------------


FULL_FILE = """
format = 1
description = "BERT from a TF1 checkpoint"

[target]
namespace = "checkpoint"
checkpoint_root = "net"

[policies]
unused_source = "warn"
unfilled_target = "ignore"
dead_rule = "warn"
double_fill = "ignore"

[[rules]]
name = "query"
match = 'bert/encoder/layer_(?P<i>\\d+)/attention/self/query/kernel'
target = "layer_{i + 1}/query/kernel"
ops = [{ transpose = [1, 0] }, { reshape = [768, 12, -1] }, { cast = "bfloat16" }]

[[rules]]
match = "cls/.*"
skip = "pretraining head"

[[rules]]
name = "head"
match = "(?P<rest>head/.*)"
target = "{rest}"
guard = { same_shape = true, on_fail = "skip", reason = "new class count" }
ops = [{ reshape = "target" }]

[[rules]]
match = "emb"
target = "embeddings/{0}"
guard = { shape = [-1, 768], rank = 2, dtype = "float32" }

[[keep]]
name = "new head"
match = "classifier/.*"
reason = "fresh classifier"
namespace = "path"

[[keep]]
match = "pooler/.*"
reason = "unused pooler"
"""


def test_full_rule_file_parses_into_frozen_models() -> None:
    rules = parse_rules(FULL_FILE, file="bert.toml")
    assert rules.format == RULES_FORMAT == 1
    assert rules.description == "BERT from a TF1 checkpoint"
    assert rules.namespace == "checkpoint"
    assert rules.target.checkpoint_root == "net"
    assert rules.policies == Policies(
        unused_source="warn", unfilled_target="ignore", dead_rule="warn", double_fill="ignore"
    )
    query, cls, head, emb = rules.rules
    assert query.name == "query"
    assert query.ops == (TransposeSpec(transpose=(1, 0)), ReshapeSpec(reshape=(768, 12, -1)), CastSpec(cast="bfloat16"))
    assert query.group_names == ("i",)
    assert cls.skip == "pretraining head"
    assert cls.target is None
    assert head.guard == Guard(same_shape=True, on_fail="skip", reason="new class count")
    assert head.ops == (ReshapeSpec(reshape="target"),)
    assert emb.guard == Guard(shape=(-1, 768), rank=2, dtype="float32")
    assert emb.guard.on_fail == "error"
    assert rules.keep == (
        Keep(name="new head", match="classifier/.*", reason="fresh classifier", namespace="path"),
        Keep(match="pooler/.*", reason="unused pooler"),
    )
    assert rules.rule_ref(0) == RuleRef("bert.toml", 1, "query", "rules")
    assert rules.rule_ref(1) == RuleRef("bert.toml", 2, None, "rules")
    assert rules.keep_ref(0) == RuleRef("bert.toml", 1, "new head", "keep")
    with pytest.raises(pydantic.ValidationError):
        rules.description = "changed"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        query.match = "x"  # type: ignore[misc]


VALID_FILES = [
    pytest.param("format = 1\n", {"rules": 0, "keep": 0, "namespace": "path"}, id="header-only"),
    pytest.param('format = 1\ndescription = "x"\n', {"rules": 0}, id="description"),
    pytest.param(_rule('match = "global_step"\nskip = "counter"\n'), {"rules": 1}, id="skip-rule"),
    pytest.param(_rule('match = ".*"\ntarget = "{0}"\n'), {"rules": 1}, id="identity"),
    pytest.param(_rule('match = "(a)(b)"\ntarget = "{2}{1}"\n'), {"rules": 1}, id="numbered-groups"),
    pytest.param(_rule("match = 'x(?P<i>\\d+)'\ntarget = \"y{i-1}\"\n"), {"rules": 1}, id="offset-without-spaces"),
    pytest.param(_rule('match = "a"\ntarget = "{{literal}}"\n'), {"rules": 1}, id="literal-braces"),
    pytest.param(
        _rule('match = "a"\ntarget = "b"\nguard = { same_shape = true }\n'), {"rules": 1}, id="guard-same-shape"
    ),
    pytest.param(_rule('match = "a"\ntarget = "b"\nguard = { rank = 0 }\n'), {"rules": 1}, id="guard-rank-zero"),
    pytest.param(_rule('match = "a"\ntarget = "b"\nguard = { dtype = "string" }\n'), {"rules": 1}, id="guard-string"),
    pytest.param(_rule('match = "a"\ntarget = "b"\nguard = { shape = [] }\n'), {"rules": 1}, id="guard-scalar-shape"),
    pytest.param(_rule('match = "a"\ntarget = "b"\nops = []\n'), {"rules": 1}, id="empty-ops"),
    pytest.param(_rule('match = "a"\ntarget = "b"\nops = [{ transpose = [] }]\n'), {"rules": 1}, id="scalar-transpose"),
    pytest.param(_rule('match = "a"\ntarget = "b"\nops = [{ reshape = [-1] }]\n'), {"rules": 1}, id="flatten"),
    pytest.param(
        _rule('match = "a"\ntarget = "b"\nops = [{ cast = "float8_e4m3fn" }]\n'), {"rules": 1}, id="cast-float8"
    ),
    pytest.param(HEADER + '[[keep]]\nmatch = "a"\nreason = "r"\n', {"keep": 1}, id="keep-only"),
    pytest.param(HEADER + '[target]\nnamespace = "checkpoint"\n', {"namespace": "checkpoint"}, id="checkpoint-space"),
    *(
        pytest.param(
            HEADER + f'[policies]\n{policy} = "{value}"\n', {"policy": (policy, value)}, id=f"{policy}-{value}"
        )
        for policy in ("unused_source", "unfilled_target", "dead_rule", "double_fill")
        for value in ("error", "warn", "ignore")
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALID_FILES)
def test_valid_rule_files(text: str, expected: dict[str, object], tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(text, encoding="utf-8")
    rules = load_rules(path)
    assert rules.model_dump() == parse_rules(text).model_dump()
    assert rules.file == str(path)
    if "rules" in expected:
        assert len(rules.rules) == expected["rules"]
    if "keep" in expected:
        assert len(rules.keep) == expected["keep"]
    if "namespace" in expected:
        assert rules.namespace == expected["namespace"]
    if "policy" in expected:
        policy, value = cast("tuple[str, str]", expected["policy"])
        assert getattr(rules.policies, policy) == value


def test_policies_default_to_error() -> None:
    assert parse_rules(HEADER).policies.model_dump() == {
        "unused_source": "error",
        "unfilled_target": "error",
        "dead_rule": "error",
        "double_fill": "error",
    }


def test_load_rules_accepts_str_and_pathlike(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(_rule('match = "a"\nskip = "s"\n'), encoding="utf-8")
    assert load_rules(str(path)).file == str(path)
    assert load_rules(path).file == str(path)
    assert parse_rules(path.read_text()).file == "<string>"


# --- templates -------------------------------------------------------------------------------------------------


def _render(match: str, target: str, name: str) -> str:
    rule = Rule(match=match, target=target)
    matched = rule.fullmatch(name)
    assert matched is not None
    return rule.render(matched)


TEMPLATES = [
    pytest.param(r"l(?P<i>\d+)/w", "layer_{i + 1}/w", "l0/w", "layer_1/w", id="plus-one"),
    pytest.param(r"l(?P<i>\d+)/w", "layer_{i - 1}/w", "l10/w", "layer_9/w", id="minus-one"),
    pytest.param(r"l(?P<i>\d+)/w", "layer_{i+12}/w", "l3/w", "layer_15/w", id="plus-twelve-no-spaces"),
    pytest.param(r"l(?P<i>\d+)/w", "layer_{ i }/w", "l007/w", "layer_007/w", id="spaces-keep-digits"),
    pytest.param(r"l(?P<i>\d+)/w", "layer_{i + 0}/w", "l007/w", "layer_007/w", id="zero-offset-is-plain"),
    pytest.param(r"l(?P<i>\d+)/w", "layer_{i + 1}/w", "l007/w", "layer_8/w", id="arithmetic-drops-zeros"),
    pytest.param(r"old/.*", "new/{0}", "old/a/b", "new/old/a/b", id="whole-name"),
    pytest.param(r"(a+)(b+)", "{2}-{1}", "aabbb", "bbb-aa", id="numbered-groups"),
    pytest.param(r"(?:(?P<p>bert)\.)?enc/(?P<r>.*)", "{p}x/{r}", "enc/w", "x/w", id="optional-group-absent"),
    pytest.param(r"(?:(?P<p>bert)\.)?enc/(?P<r>.*)", "{p}x/{r}", "bert.enc/w", "bertx/w", id="optional-group-present"),
    pytest.param(r"(?P<n>.*)", "{{{n}}}", "w", "{w}", id="literal-braces-around-field"),
    pytest.param(r"w", "a{{b}}c", "w", "a{b}c", id="literal-braces"),
    pytest.param(r"(?P<n>.*)", "{n}}}", "w", "w}", id="literal-close-brace"),
    pytest.param(r"(?P<i>\d+)", "{i}/{i + 1}/{i - 1}", "5", "5/6/4", id="same-group-three-times"),
]


@pytest.mark.parametrize(("match", "target", "name", "expected"), TEMPLATES)
def test_template_rendering(match: str, target: str, name: str, expected: str) -> None:
    assert _render(match, target, name) == expected


@pytest.mark.parametrize(
    ("match", "target", "names", "expected"),
    [
        pytest.param(r"(?P<n>\w+)", "a%s{n}%%", ["w"], ["a%sw%%"], id="percent-signs-are-text"),
        pytest.param(
            r"l(?P<i>\d+)/(?P<k>\w+)",
            "x{i + 1}/{k}",
            ["l2/w", "l3/w", "l2/b"],
            ["x3/w", "x4/w", "x3/b"],
            id="every-group",
        ),
        pytest.param(r"(?P<a>\w)(?P<b>\w)", "{b}{a}", ["xy", "ab"], ["yx", "ba"], id="groups-reordered"),
        pytest.param(r"(x)(?P<n>\w)", "{n}", ["xa"], ["a"], id="one-group-of-two"),
        pytest.param(
            r"(?P<i>\d+)/(?P<j>\d+)", "{j - 1}.{i + 1}", ["1/1", "2/1", "1/1"], ["0.2", "0.3", "0.2"], id="two-offsets"
        ),
    ],
)
@pytest.mark.parametrize("engine", [regex, re], ids=["regex", "re"])
def test_one_renderer_renders_many_names(
    match: str, target: str, names: list[str], expected: list[str], engine: Any
) -> None:
    # The planner takes one renderer per rule and renders every name the rule matches with it, with matches of
    # the regex package or (for short ASCII names) the standard library's.
    (render,) = Rule(match=match, target=target).renderers()
    assert [render(engine.fullmatch(match, name)) for name in names] == expected


@pytest.mark.parametrize(
    ("match", "target", "name", "fragment"),
    [
        pytest.param(r"(?P<i>\w+)/w", "l{i + 1}", "abc/w", "captured 'abc', not a whole number", id="letters"),
        pytest.param(r"(?P<i>\d+)?/w", "l{i - 1}", "/w", "captured None", id="absent-optional-group"),
        pytest.param(r"(?P<i>-?\d+)/w", "l{i + 1}", "-3/w", "captured '-3'", id="negative-number"),
        pytest.param(r".*", "l{0 + 1}", "x", "group 0", id="whole-name"),
    ],
)
def test_template_arithmetic_on_a_non_number(match: str, target: str, name: str, fragment: str) -> None:
    rule = Rule(match=match, target=target)
    matched = rule.fullmatch(name)
    assert matched is not None
    with pytest.raises(TemplateError) as caught:
        rule.render(matched)
    assert fragment in str(caught.value)
    assert repr(target) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_rule_fullmatch_is_anchored_at_both_ends() -> None:
    rule = Rule(match="foo/w", target="x")
    assert rule.fullmatch("foo/w") is not None
    assert rule.fullmatch("foo/w_1") is None
    assert rule.fullmatch("pre/foo/w") is None
    assert Rule(match="a|ab", target="x").fullmatch("ab") is not None  # fullmatch tries every branch


def test_keep_fullmatch() -> None:
    keep = Keep(match="head/.*", reason="new")
    assert keep.fullmatch("head/kernel") is not None
    assert keep.fullmatch("x/head/kernel") is None
    assert keep.namespace is None


def test_rule_models_reject_unknown_keys_directly() -> None:
    with pytest.raises(pydantic.ValidationError):
        Rule(match="a", target="b", tagret="c")  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        RuleSet.model_validate({"format": 2})


def _validate_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str) -> str:
    """What ``mapper validate`` says on standard error about a rule file it refuses."""
    from mapper import cli

    path = tmp_path / "r.toml"
    path.write_text(text)
    assert cli.main(["validate", str(path)]) == cli.EXIT_PROBLEMS
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("skip = ''", "rule 1, field 'skip': skip is empty: say why", id="empty-skip"),
        pytest.param("skip = '   '", "rule 1, field 'skip': skip is empty: say why", id="blank-skip"),
        pytest.param(
            "target = 'b'\nguard = { same_shape = true, on_fail = 'skip' }",
            "rule 1, field 'guard.reason': on_fail = \"skip\" needs a reason",
            id="guard-skip-without-reason",
        ),
        pytest.param(
            "target = 'b'\nguard = { rank = 2, on_fail = 'skip', reason = '' }",
            "rule 1, field 'guard.reason': reason is empty: say why",
            id="guard-empty-reason",
        ),
    ],
)
def test_validate_requires_the_reasons_the_readme_requires(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, body: str, expected: str
) -> None:
    assert expected in _validate_fails(capsys, tmp_path, f"format = 1\n[[rules]]\nmatch = 'a'\n{body}\n")


def test_validate_requires_a_keep_reason(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    err = _validate_fails(capsys, tmp_path, "format = 1\n[[keep]]\nmatch = 'head/.*'\nreason = ''\n")
    assert "keep rule 1, field 'reason': reason is empty: say why" in err


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        pytest.param(
            "{ split = { axis = -1, parts = 3 } }",
            "operation 1: 'split' is a key of the rule, not an operation: write split = ... beside ops (at rule "
            "level), as in split = { axis = -1, parts = 3 } with targets = [...]; the rule's ops then run on each part",
            id="split",
        ),
        pytest.param(
            "{ split = { axis = -1, parts = 3 }, targets = ['q', 'k', 'v'] }",
            "operation 1: 'split' and 'targets' are keys of the rule, not an operation",
            id="split-and-targets",
        ),
        pytest.param(
            "{ stack = { axis = 0, by = 'p', count = 2 } }",
            "the rule's ops then run on the joined tensor",
            id="stack",
        ),
    ],
)
def test_a_rule_key_written_inside_ops_is_sent_beside_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, operation: str, expected: str
) -> None:
    err = _validate_fails(capsys, tmp_path, f"format = 1\n[[rules]]\nmatch = 'a'\ntarget = 'b'\nops = [{operation}]\n")
    assert expected in err
    assert "did you mean" not in err
