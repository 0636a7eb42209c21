"""Lints: each code fires on a minimal rule file, and a per-rule reason silences it."""

from __future__ import annotations

import pytest

from mapper.authoring.lint import lint, lint_codes
from mapper.plan import ProblemKind, Severity
from mapper.plan.planner import build_plan
from mapper.rules import RuleSet, parse_rules
from mapper.specs import TargetMap, TensorSpec, VariableMap

SOURCE = VariableMap(
    [
        TensorSpec("dense/w", (2, 2), "float32"),
        TensorSpec("dense/b", (2,), "float32"),
        TensorSpec("head/w", (2, 3), "float32"),
    ]
)


def rules(body: str, namespace: str = "path") -> RuleSet:
    return parse_rules(f'format = 1\n[target]\nnamespace = "{namespace}"\n' + body, file="lint.toml")


CASES = [
    pytest.param(
        '[[rules]]\nmatch = "(?P<x>.+)/w"\ntarget = "{x}/kernel"\n[[rules]]\nmatch = "dense/w"\ntarget = "dense/weights"\n'
        '[[rules]]\nmatch = ".+"\nskip = "rest"\n',
        "M102",
        2,
        "never fires: each of the 1 name(s) it matches is taken first by rule 1",
        id="M102-shadowed",
    ),
    pytest.param(
        '[[rules]]\nmatch = "(?P<x>dense|head)/(?P<p>w|b)"\ntarget = "{x}/{p}"\n[[rules]]\nmatch = "(?P<x>.+)/(?P<p>w)"\n'
        'target = "{x}/other"\n[[rules]]\nmatch = "extra/w"\nskip = "x"\noptional = true\n',
        None,
        None,
        None,
        id="shadowed-not-overlap",
    ),
    pytest.param(
        '[[rules]]\nmatch = "dense/(?P<p>w|b)"\ntarget = "dense/{p}"\n[[rules]]\nmatch = "(?P<x>.+)/w"\ntarget = "{x}/kernel"\n',
        "M103",
        1,
        "both match 1 name(s), such as 'dense/w', with different outcomes; rule 1 wins",
        id="M103-overlap",
    ),
    pytest.param(
        '[[rules]]\nmatch = "(?P<x>.+)"\ntarget = "{x} copy"\n', "M104", 1, "contains white space", id="M104-space"
    ),
    pytest.param(
        '[[rules]]\nmatch = "(?P<x>.+)"\ntarget = "a//{x}"\n', "M104", 1, "contains '//'", id="M104-empty-segment"
    ),
    pytest.param(
        '[[rules]]\nmatch = "(?P<x>.+)"\ntarget = "model/{x}/kernel"\n',
        "M104",
        1,
        "does not end in '/.ATTRIBUTES/VARIABLE_VALUE'",
        id="M104-checkpoint-suffix",
    ),
]


@pytest.mark.parametrize(("body", "code", "rule", "message"), CASES)
def test_each_lint_fires(body: str, code: str | None, rule: int | None, message: str | None) -> None:
    namespace = "checkpoint" if "ATTRIBUTES" in (message or "") else "path"
    findings = lint(rules(body, namespace), SOURCE)
    if code is None:
        assert [f.code for f in findings] == ["M102"]
        return
    (finding,) = [f for f in findings if f.code == code]
    assert finding.kind is ProblemKind.LINT and finding.severity is Severity.WARNING
    assert finding.rule is not None and finding.rule.index == rule
    assert message is not None and message in finding.message
    assert finding.message.startswith(code)


@pytest.mark.parametrize(("body", "code", "rule", "message"), [case for case in CASES if case.values[1]])
def test_a_reason_silences_each_lint(body: str, code: str, rule: int, message: str) -> None:
    namespace = "checkpoint" if "ATTRIBUTES" in message else "path"
    lines = body.split("[[rules]]\n")
    lines[rule] = f'silence = {{ {code} = "reviewed: meant this way" }}\n' + lines[rule]
    silenced = rules("[[rules]]\n".join(lines), namespace)
    assert code not in {f.code for f in lint(silenced, SOURCE)}


def test_dead_rule_is_m101_and_silenceable() -> None:
    body = '[[rules]]\nmatch = ".+"\nskip = "all"\n[[rules]]\nmatch = "nothing"\nskip = "x"\n'
    target = TargetMap(VariableMap([]))
    (dead,) = build_plan(rules(body), SOURCE, target).problems
    assert (dead.kind, dead.code) == (ProblemKind.DEAD_RULE, "M101")
    quiet = body + 'silence = { M101 = "kept for older checkpoints" }\n'
    assert build_plan(rules(quiet), SOURCE, target).problems == ()


@pytest.mark.parametrize(
    ("silence", "message"),
    [('{ M999 = "x" }', "unknown lint code 'M999'"), ('{ M103 = " " }', "silencing M103 needs a reason")],
    ids=["unknown-code", "empty-reason"],
)
def test_silence_is_validated(silence: str, message: str) -> None:
    from mapper.errors import RuleFileError

    with pytest.raises(RuleFileError) as caught:
        rules(f'[[rules]]\nmatch = "a"\nskip = "b"\nsilence = {silence}\n')
    assert message in str(caught.value)


def test_codes_are_documented() -> None:
    import mapper.authoring.lint

    for code in lint_codes():
        assert code in (mapper.authoring.lint.__doc__ or "")


@pytest.mark.parametrize(
    "template", ["stack{i - 1}_block{b}/kernel", "{x}/kernel", "a/{x}"], ids=["arithmetic", "lead", "tail"]
)
def test_template_fields_are_not_white_space(template: str) -> None:
    body = f'[[rules]]\nmatch = "(?P<i>\\\\d+)/(?P<b>\\\\d+)/(?P<x>.+)"\ntarget = "{template}"\n'
    assert [f for f in lint(rules(body)) if f.code == "M104"] == []
