"""values: per-group tables that rename what a pattern group captured."""

from __future__ import annotations

import pytest


def test_values_rename_what_a_group_captured() -> None:
    from mapper.rules import TemplateError, parse_rules

    rules = parse_rules(
        "format = 1\n[[rules]]\nmatch = 'bn(?P<i>\\d+)\\.(?P<p>weight|bias|running_mean|running_var)'\n"
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
