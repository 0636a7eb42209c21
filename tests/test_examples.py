"""Inline [[examples]]: rule files carry their own tests, checked without a checkpoint or a model."""

from __future__ import annotations

import pytest

from mapper.authoring.examples import check_examples
from mapper.errors import RuleFileError
from mapper.rules import parse_rules

RULES = """
format = 1
[[rules]]
name = "layers"
match = 'h\\.(?P<i>\\d+)\\.(?P<p>w|b)'
target = "layer_{i + 1}/{p}"
[[rules]]
name = "qkv"
match = 'h\\.(?P<i>\\d+)\\.qkv'
split = { axis = -1, parts = 3 }
targets = ["layer_{i}/q", "layer_{i}/k", "layer_{i}/v"]
[[rules]]
name = "optimizer"
match = '.+/adam_[mv]'
skip = "optimizer state"
"""

CASES = [
    ('source = "h.0.w"\ntarget = "layer_1/w"', True, "target 'layer_1/w' (by rule 1 ('layers'))"),
    ('source = "h.0.w"\ntarget = "layer_1/w"\nrule = "layers"', True, "by rule 1"),
    ('source = "x/adam_m"\nskip = true', True, "skip"),
    ('source = "h.2.qkv"\ntargets = ["layer_2/q", "layer_2/k", "layer_2/v"]', True, "targets"),
    ('source = "h.0.w"\ntarget = "layer_0/w"', False, "expected target 'layer_0/w', got target 'layer_1/w'"),
    ('source = "h.0.x"\nskip = true', False, "expected skip, got no rule matches"),
    ('source = "h.0.w"\nskip = true', False, "expected skip, got target 'layer_1/w'"),
    ('source = "x/adam_v"\ntarget = "x"', False, "expected target 'x', got skip"),
    ('source = "h.0.w"\ntarget = "layer_1/w"\nrule = "qkv"', False, "taken by rule 1 ('layers')"),
]


@pytest.mark.parametrize(("example", "ok", "shown"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_examples_pass_and_fail_with_clear_messages(example: str, ok: bool, shown: str) -> None:
    (result,) = check_examples(parse_rules(RULES + "[[examples]]\n" + example + "\n", file="ex.toml"))
    assert result.ok is ok
    assert shown in str(result)
    assert str(result).startswith(f"example 1 {'ok' if ok else 'FAILED'}")


@pytest.mark.parametrize(
    ("example", "message"),
    [
        (
            'source = "h.0.w"\nrule = "layer"\ntarget = "x"',
            "names rule 'layer', but no rule has that name; did you mean 'layers'?",
        ),
        ('source = "h.0.w"', "exactly one of 'target', 'targets'"),
        ('source = "h.0.w"\ntarget = "a"\nskip = true', "it has target and skip"),
        ('source = "h.0.w"\ntraget = "a"', "unknown key 'traget' (did you mean 'target'?)"),
    ],
    ids=["unknown-rule", "no-expectation", "two-expectations", "typo"],
)
def test_bad_examples_are_rule_file_errors(example: str, message: str) -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_rules(RULES + "[[examples]]\n" + example + "\n", file="ex.toml")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("groups", "ok", "shown"),
    [
        ("{ i = '0', p = 'w' }", True, "example 1 ok"),
        ("{ i = '1' }", False, "expected target 'layer_1/w' with i='1', got groups i='0'"),
        ("{ layer = '0' }", False, "got a rule without group 'layer' (it defines: i, p)"),
    ],
    ids=["right", "wrong-value", "no-such-group"],
)
def test_examples_check_groups(groups: str, ok: bool, shown: str) -> None:
    example = f'source = "h.0.w"\ntarget = "layer_1/w"\ngroups = {groups}'
    (result,) = check_examples(parse_rules(RULES + "[[examples]]\n" + example + "\n", file="ex.toml"))
    assert result.ok is ok
    assert shown in str(result)


def test_an_example_naming_a_group_its_rule_lacks_is_a_rule_file_error() -> None:
    example = 'source = "h.0.w"\ntarget = "layer_1/w"\nrule = "layers"\ngroups = { layer = "0" }'
    with pytest.raises(RuleFileError) as caught:
        parse_rules(RULES + "[[examples]]\n" + example + "\n", file="ex.toml")
    assert "expects group 'layer', which rule 'layers' does not define (it defines: i, p)" in str(caught.value)
