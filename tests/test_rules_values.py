"""values: per-group tables that rename what a pattern group captured."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_values_rename_what_a_group_captured() -> None:
    from mapper.rules import TemplateError, parse_rules

    # A group that is not a literal alternation can capture a word the table misses: only rendering finds it.
    rules = parse_rules(
        "format = 1\n[[rules]]\nmatch = 'bn(?P<i>\\d+)\\.(?P<p>\\w+)'\n"
        'target = "bn_{i}/{p}"\n'
        "values = { p = { weight = 'gamma', bias = 'beta', running_mean = 'moving_mean' } }\n"
    )
    rule = rules.rules[0]
    assert rule.render(rule.fullmatch("bn1.weight")) == "bn_1/gamma"
    assert rule.render(rule.fullmatch("bn2.running_mean")) == "bn_2/moving_mean"
    with pytest.raises(TemplateError, match=r"captured 'running_var', which values\.p does not rename"):
        rule.render(rule.fullmatch("bn2.running_var"))


def test_values_must_name_a_group() -> None:
    from mapper.errors import RuleFileError
    from mapper.rules import parse_rules

    with pytest.raises(RuleFileError, match="values names group 'q', which the pattern does not define"):
        parse_rules("format = 1\n[[rules]]\nmatch = '(?P<p>a)'\ntarget = '{p}'\nvalues = { q = { a = 'b' } }\n")


@pytest.mark.parametrize(
    ("pattern", "table", "missing"),
    [
        pytest.param("(?P<p>weight|bias|gamma)", "weight = 'kernel', bias = 'bias'", "'gamma'", id="one-word"),
        pytest.param("l(?P<i>\\d+)/(?P<p>q|k|v)_proj", "q = 'query'", "'k', 'v'", id="two-words"),
        pytest.param("(?P<p>running\\.mean|bias)", "bias = 'beta'", "'running.mean'", id="escaped-dot"),
    ],
)
def test_validate_finds_a_word_of_the_alternation_that_values_misses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pattern: str, table: str, missing: str
) -> None:
    from mapper import cli

    path = tmp_path / "r.toml"
    path.write_text(
        f"format = 1\n[[rules]]\nmatch = '{pattern}'\ntarget = 'x/{{p}}'\nvalues = {{ p = {{ {table} }} }}\n"
    )
    assert cli.main(["validate", str(path)]) == cli.EXIT_PROBLEMS
    assert f"rule 1, field 'values': values.p does not rename {missing}, which group 'p' can capture" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("(?P<p>weight|bias)", id="every-word"),
        pytest.param("(?P<p>[a-z]+)", id="a-class"),
        pytest.param("(?P<p>weight|bias)s?", id="alternation-then-more"),
    ],
)
def test_a_table_that_renames_every_word_or_an_open_group_loads(pattern: str) -> None:
    from mapper.rules import parse_rules

    rules = parse_rules(
        f"format = 1\n[[rules]]\nmatch = '{pattern}'\ntarget = 'x/{{p}}'\n"
        "values = { p = { weight = 'kernel', bias = 'bias' } }\n"
    )
    assert rules.rules[0].values == {"p": {"weight": "kernel", "bias": "bias"}}
