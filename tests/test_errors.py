"""Tests for mapper.errors: the MapperError tree, RuleIssue rendering and the errors' fields."""

from __future__ import annotations

import pytest

import mapper.errors as errors_module
from mapper.errors import (
    ApplyError,
    CorruptSourceError,
    MapperError,
    MatchTimeoutError,
    OperationError,
    OutputError,
    PartialApplyError,
    PlanError,
    RuleFileError,
    RuleIssue,
    SourceError,
    SourceNotFoundError,
    TargetError,
)

TREE = [
    pytest.param(RuleFileError, (MapperError, ValueError), id="RuleFileError"),
    pytest.param(MatchTimeoutError, (RuleFileError, MapperError, ValueError), id="MatchTimeoutError"),
    pytest.param(OperationError, (MapperError, ValueError), id="OperationError"),
    pytest.param(PlanError, (MapperError, ValueError), id="PlanError"),
    pytest.param(SourceError, (MapperError, OSError), id="SourceError"),
    pytest.param(SourceNotFoundError, (SourceError, MapperError, FileNotFoundError, OSError), id="SourceNotFoundError"),
    pytest.param(CorruptSourceError, (SourceError, MapperError, OSError), id="CorruptSourceError"),
    pytest.param(TargetError, (MapperError, LookupError), id="TargetError"),
    pytest.param(OutputError, (TargetError, MapperError, LookupError), id="OutputError"),
    pytest.param(ApplyError, (MapperError, RuntimeError), id="ApplyError"),
    pytest.param(PartialApplyError, (ApplyError, MapperError, RuntimeError), id="PartialApplyError"),
]


@pytest.mark.parametrize(("error_type", "bases"), TREE)
def test_error_tree(error_type: type[Exception], bases: tuple[type[Exception], ...]) -> None:
    for base in bases:
        assert issubclass(error_type, base)
    assert issubclass(error_type, Exception)
    assert error_type.__name__ in (errors_module.__doc__ or "")  # the module docstring draws the tree


def test_every_error_class_is_in_the_tree() -> None:
    defined = {
        value
        for value in vars(errors_module).values()
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == errors_module.__name__
    }
    assert defined == {MapperError, *(param.values[0] for param in TREE)}


@pytest.mark.parametrize(
    ("issue", "text"),
    [
        pytest.param(RuleIssue("r.toml", "no such rule file"), "r.toml: no such rule file", id="file-only"),
        pytest.param(
            RuleIssue("r.toml", "expected '='", line=3, column=7), "r.toml:3:7: expected '='", id="line-and-column"
        ),
        pytest.param(RuleIssue("r.toml", "bad", line=3), "r.toml:3: bad", id="line-only"),
        pytest.param(
            RuleIssue("r.toml", "unknown key 'mtach'", rule=2, field="mtach", hint="did you mean 'match'?"),
            "r.toml: rule 2, field 'mtach': unknown key 'mtach' (did you mean 'match'?)",
            id="rule-field-hint",
        ),
        pytest.param(RuleIssue("r.toml", "x", rule=1, rule_name="head"), "r.toml: rule 1 ('head'): x", id="named-rule"),
        pytest.param(RuleIssue("r.toml", "x", rule=1, section="keep rule"), "r.toml: keep rule 1: x", id="keep-rule"),
        pytest.param(
            RuleIssue("r.toml", "bad value", field="policies.dead_rule", hint="use 'error'"),
            "r.toml: field 'policies.dead_rule': bad value (use 'error')",
            id="field-without-rule",
        ),
    ],
)
def test_rule_issue_text(issue: RuleIssue, text: str) -> None:
    assert str(issue) == text


def test_rule_file_error_counts_and_lists_every_issue() -> None:
    issues = [RuleIssue("b.toml", "first", rule=1), RuleIssue("a.toml", "second", line=2, column=1)]
    error = RuleFileError(issues)
    assert error.issues == tuple(issues)
    assert str(error).splitlines() == [
        "2 problems in rule file a.toml, b.toml:",
        "  b.toml: rule 1: first",
        "  a.toml:2:1: second",
    ]
    single = RuleFileError(issues[:1])
    assert str(single).startswith("1 problem in rule file b.toml:")
    issues.clear()
    assert len(error.issues) == 2  # holds its own copy


def test_errors_carry_their_fields() -> None:
    operation = OperationError("cannot reshape [6] into [4]", operation="reshape")
    assert (str(operation), operation.operation) == ("cannot reshape [6] into [4]", "reshape")
    problems = [object(), object()]
    plan_error = PlanError("2 errors in plan", problems=problems, plan="the plan")
    assert plan_error.problems == tuple(problems)
    assert plan_error.plan == "the plan"
    source = SourceNotFoundError("no checkpoint at 'x'", path="x")
    assert (str(source), source.path) == ("no checkpoint at 'x'", "x")
    corrupt = CorruptSourceError("index file missing", path="ckpt")
    assert (str(corrupt), corrupt.path) == ("index file missing", "ckpt")
    # TargetError is a LookupError but, unlike KeyError, does not quote its message.
    assert str(TargetError("no variable 'head/kernel'")) == "no variable 'head/kernel'"
    assert str(ApplyError("read failed")) == "read failed"


@pytest.mark.parametrize(
    ("raise_it", "builtin"),
    [
        pytest.param(lambda: RuleFileError([RuleIssue("r", "m")]), ValueError, id="RuleFileError-as-ValueError"),
        pytest.param(
            lambda: SourceNotFoundError("m", path="p"), FileNotFoundError, id="not-found-as-FileNotFoundError"
        ),
        pytest.param(lambda: CorruptSourceError("m", path="p"), OSError, id="corrupt-as-OSError"),
        pytest.param(lambda: TargetError("m"), LookupError, id="TargetError-as-LookupError"),
        pytest.param(lambda: ApplyError("m"), RuntimeError, id="ApplyError-as-RuntimeError"),
    ],
)
def test_errors_can_be_caught_by_their_builtin(raise_it, builtin: type[Exception]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(builtin):
        raise raise_it()
    with pytest.raises(MapperError):
        raise raise_it()
