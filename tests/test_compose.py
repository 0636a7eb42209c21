"""Rule-file composition: extends (order, merging, cycles, missing files) and parameter overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from mapper.errors import RuleFileError
from mapper.rules import load_rules, parse_param

BASE = """format = 1
description = "base"
[params]
num_layers = 12
scale = 0.5
act = "gelu"
[policies]
unused_source = "warn"
dead_rule = "warn"
[[rules]]
name = "base-rule"
match = 'layer_(?P<i>\\d+)/w'
target = "block_{i}/w"
[[rules]]
name = "last"
match = 'layer_(?P<i>\\d+)/last'
target = "block_{num_layers - 1}/last"
[[keep]]
match = "head/.+"
reason = "new head"
"""

CHILD = """format = 1
extends = ["base.toml"]
[params]
num_layers = 24
[policies]
dead_rule = "error"
[[rules]]
name = "child-rule"
match = "step"
skip = "counter"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "base.toml").write_text(BASE)
    (tmp_path / "child.toml").write_text(CHILD)
    return tmp_path


def test_extending_rules_come_first_and_remember_their_file(folder: Path) -> None:
    rules = load_rules(folder / "child.toml")
    assert [rule.name for rule in rules.rules] == ["child-rule", "base-rule", "last"]
    assert rules.rule_ref(0).file == str(folder / "child.toml") and rules.rule_ref(0).index == 1
    assert rules.rule_ref(1).file == str(folder / "base.toml") and rules.rule_ref(1).index == 1
    assert rules.keep_ref(0).file == str(folder / "base.toml")
    assert rules.files == (str(folder / "child.toml"), str(folder / "base.toml"))


def test_params_and_policies_merge_key_by_key_extending_file_winning(folder: Path) -> None:
    rules = load_rules(folder / "child.toml")
    assert rules.params == {"num_layers": 24, "scale": 0.5, "act": "gelu"}
    assert (rules.policies.unused_source, rules.policies.dead_rule) == ("warn", "error")
    last = rules.rules[2]
    assert last.render(last.fullmatch("layer_3/last")) == "block_23/last"  # base rule sees the child's value


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [({"num_layers": 6}, "block_5/last"), ({"scale": 2}, "block_23/last")],
    ids=["int", "int-for-float"],
)
def test_param_overrides(folder: Path, overrides: dict[str, object], expected: str) -> None:
    rules = load_rules(folder / "child.toml", params=overrides)
    last = rules.rules[2]
    assert last.render(last.fullmatch("layer_0/last")) == expected
    for name, value in overrides.items():
        assert rules.params[name] == value


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"num_layer": 6},
            "--param num_layer: the rule file declares no such parameter (declared: act, num_layers, scale)",
        ),
        ({"num_layers": "six"}, "--param num_layers='six': num_layers is declared as int (24), not str"),
        ({"act": 1}, "declared as str ('gelu'), not int"),
    ],
    ids=["undeclared", "wrong-type", "wrong-type-str"],
)
def test_bad_param_overrides(folder: Path, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(RuleFileError) as caught:
        load_rules(folder / "child.toml", params=overrides)
    assert message in str(caught.value)


def test_cycle_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('format = 1\nextends = ["b.toml"]\n')
    (tmp_path / "b.toml").write_text('format = 1\nextends = ["a.toml"]\n')
    with pytest.raises(RuleFileError) as caught:
        load_rules(tmp_path / "a.toml")
    assert "extends forms a cycle: a.toml -> b.toml -> a.toml" in str(caught.value)


def test_missing_base_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('format = 1\nextends = ["nope.toml"]\n')
    with pytest.raises(RuleFileError) as caught:
        load_rules(tmp_path / "a.toml")
    message = str(caught.value)
    assert "extends 'nope.toml', but there is no file" in message and "field 'extends'" in message


def test_errors_in_a_base_name_the_base(folder: Path) -> None:
    (folder / "base.toml").write_text(BASE.replace('name = "base-rule"', 'name = "base-rule"\nmtach = "x"'))
    with pytest.raises(RuleFileError) as caught:
        load_rules(folder / "child.toml")
    assert f"{folder / 'base.toml'}: rule 1 ('base-rule'), field 'mtach'" in str(caught.value)


def test_a_diamond_uses_each_file_once(tmp_path: Path) -> None:
    (tmp_path / "root.toml").write_text('format = 1\n[[rules]]\nmatch = "r"\nskip = "x"\n')
    (tmp_path / "a.toml").write_text('format = 1\nextends = ["root.toml"]\n[[rules]]\nmatch = "a"\nskip = "x"\n')
    (tmp_path / "b.toml").write_text('format = 1\nextends = ["root.toml"]\n[[rules]]\nmatch = "b"\nskip = "x"\n')
    (tmp_path / "top.toml").write_text('format = 1\nextends = ["a.toml", "b.toml"]\n')
    assert [rule.match for rule in load_rules(tmp_path / "top.toml").rules] == ["a", "r", "b"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("n=24", ("n", 24)), ("x=0.1", ("x", 0.1)), ("flag=true", ("flag", True)), ("act=gelu", ("act", "gelu"))],
)
def test_parse_param(text: str, expected: tuple[str, object]) -> None:
    assert parse_param(text) == expected


def test_parse_param_rejects_garbage() -> None:
    with pytest.raises(RuleFileError, match="is not NAME=VALUE"):
        parse_param("24")
