"""Tests for the planner's fast paths: RuleMatcher's digit-shape memo, digit_blind, and the positional records."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mapper.errors import MatchTimeoutError
from mapper.ops import Concat, Transpose
from mapper.plan import (
    Assignment,
    Join,
    JoinMember,
    Plan,
    Problem,
    ProblemKind,
    RuleRef,
    Severity,
    Skip,
    SkipKind,
    TensorEntry,
)
from mapper.plan.matching import RuleMatcher
from mapper.plan.planner import build_plan
from mapper.plan.records import positional
from mapper.rules import Rule, parse_rules
from mapper.rules.bound import digit_blind
from mapper.specs import TargetMap, TensorSpec, VariableMap

# --- digit_blind --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "blind"),
    [
        pytest.param(r"layer_(?P<i>\d+)/kernel", True, id="digit-class"),
        pytest.param(r"(?P<layer2>\w+)/.*", True, id="digit-in-group-name"),
        pytest.param(r"a\d{2,3}b", True, id="digits-in-counted-quantifier"),
        pytest.param(r"[a-z_]+/[*-@]", True, id="range-over-all-digits"),
        pytest.param("block_3/.*", False, id="literal-digit"),
        pytest.param("[0-5]x", False, id="partial-digit-range"),
        pytest.param("[^0-9]", False, id="digits-named-in-set"),
        pytest.param(r"\x31", False, id="hex-escape-of-a-digit"),
        pytest.param(r"(a)\1", False, id="backreference"),
        pytest.param(r"(?P<a>\d)(?P=a)", False, id="named-backreference"),
        pytest.param("(?i)a", False, id="flags"),
        pytest.param(r"(?=\d)\d", False, id="lookahead"),
        pytest.param(r"(\d)+", False, id="repeated-group"),
        pytest.param("", True, id="empty"),
    ],
)
def test_digit_blind(pattern: str, blind: bool) -> None:
    assert digit_blind(pattern) is blind


_NAMES = st.text("ab/_0123456789x.", max_size=10)


@settings(max_examples=200, deadline=None)
@given(
    pattern=st.sampled_from([r"a\d+", r"\d\d?/x", r"[a-z]\w*", r".*_\d", r"(?:\d|a)?b", r"\d{2}", r"[/-a]+"]),
    name=_NAMES,
    digits=st.lists(st.sampled_from("0123456789"), min_size=10, max_size=10),
)
def test_a_digit_blind_pattern_answers_alike_for_other_digits(pattern: str, name: str, digits: list[str]) -> None:
    assert digit_blind(pattern)
    other = name.translate(str.maketrans("0123456789", "".join(digits)))
    assert (regex.fullmatch(pattern, name) is None) == (regex.fullmatch(pattern, other) is None), (name, other)


# --- RuleMatcher against the plain first match ----------------------------------------------------------------

# Pieces that make digits matter: literal digits in prefixes and later, classes that take some digits and not
# others, counted repeats, group names with digits, and the usual wildcards.
_PIECES = [
    "b1/",
    "b12/",
    "b2",
    "/",
    "_",
    "x",
    "3",
    r"\d",
    r"\d+",
    r"\d{2}",
    "[0-4]",
    "[5-9]+",
    "[a-z_]+",
    ".",
    ".*",
    ".+?",
    r"(?P<g1>\d+)",
    "(?:1|22)",
    "(x|/)",
    r"\w*",
]


@st.composite
def _digit_patterns(draw: st.DrawFn) -> str:
    pattern = "".join(draw(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=5)))
    if draw(st.integers(0, 5)) == 0:
        pattern += "|" + "".join(draw(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=3)))
    return pattern


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False  # a group name used twice
    return True


digit_patterns = _digit_patterns().filter(_compiles)


def _variants(name: str, digits: Sequence[str]) -> list[str]:
    """``name`` with its digits replaced in turn by each of ``digits``: names of one digit shape."""
    return [re.sub("[0-9]", digit, name) for digit in digits] + [name]


def _plain_first(patterns: Sequence[str], name: str) -> tuple[int, regex.Match[str]] | None:
    for index, pattern in enumerate(patterns):
        matched = regex.fullmatch(pattern, name)
        if matched is not None:
            return index, matched
    return None


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    patterns=st.lists(digit_patterns, min_size=1, max_size=6),
    digits=st.lists(st.sampled_from("0123456789"), min_size=1, max_size=4),
)
def test_rule_matcher_agrees_with_the_plain_first_match(
    data: st.DataObject, patterns: list[str], digits: list[str]
) -> None:
    # Names each pattern matches, and the same names with other digits, so that many share a digit shape and
    # the memo decides them; in a random order, so the memo is filled by any of them.
    names = [data.draw(st.from_regex(re.compile(pattern), fullmatch=True), label=pattern) for pattern in patterns]
    names += data.draw(st.lists(_NAMES, max_size=3), label="random names")
    names = data.draw(st.permutations([v for name in names if name.isascii() for v in _variants(name, digits)]))
    skips = {index for index in range(len(patterns)) if index % 2}
    matcher = RuleMatcher([Rule(match=pattern, skip="x") for pattern in patterns], matchless=skips)
    for name in names:
        found, expected = matcher.first(name), _plain_first(patterns, name)
        assert (found and found[0]) == (expected and expected[0]), (patterns, name)
        if found is not None and expected is not None and found[1] is not None:
            assert found[1].groups() == expected[1].groups(), (patterns, name)
            assert found[1].span() == expected[1].span()
        if found is not None and found[1] is None:
            assert found[0] in skips  # only a matchless pattern answers without a match


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    patterns=st.lists(digit_patterns, min_size=1, max_size=6),
    digits=st.lists(st.sampled_from("0123456789"), min_size=1, max_size=4),
)
def test_firsts_gives_what_first_gives_name_by_name(
    data: st.DataObject, patterns: list[str], digits: list[str]
) -> None:
    names = [data.draw(st.from_regex(re.compile(pattern), fullmatch=True), label=pattern) for pattern in patterns]
    names += data.draw(st.lists(_NAMES, max_size=3), label="random names")
    names = data.draw(st.permutations([v for name in names for v in _variants(name, digits)]))
    skips = {index for index in range(len(patterns)) if index % 2}
    rules = [Rule(match=pattern, skip="x") for pattern in patterns]
    one_by_one, together = RuleMatcher(rules, matchless=skips), RuleMatcher(rules, matchless=skips)
    for name, found in zip(names, together.firsts(names), strict=True):
        expected = one_by_one.first(name)
        assert (found and found[0]) == (expected and expected[0]), (patterns, name)
        assert (found and found[1] and found[1].groups()) == (expected and expected[1] and expected[1].groups())


def test_names_of_one_shape_go_to_the_winner_alone() -> None:
    rules = [Rule(match=r"b3/(?P<i>\d+)", target="x"), Rule(match=r"b(?P<k>\d+)/(?P<i>\d+)", target="y")]
    matcher = RuleMatcher(rules, matchless=[1])
    assert matcher.first("b3/12")[0] == 0  # type: ignore[index]
    first_of_its_shape = matcher.first("b4/12")  # "b4/" starts with "b" only: other candidates, searched
    assert first_of_its_shape is not None
    assert first_of_its_shape[0] == 1
    assert first_of_its_shape[1] is not None
    assert matcher.first("b5/12") == (1, None)  # remembered for b0/00 among those candidates: not even run
    found = matcher.first("b3/45")  # remembered for "b3/" names: the winner alone is run, for its groups
    assert found is not None
    assert (found[0], found[1].group("i")) == (0, "45")


def test_a_pattern_with_a_literal_digit_after_its_prefix_is_tried_every_time() -> None:
    rules = [Rule(match=r"l\d/k1", skip="one"), Rule(match=r"l\d/k\d", skip="other")]
    matcher = RuleMatcher(rules)
    assert [matcher.first(name)[0] for name in ("l1/k2", "l2/k1", "l3/k3", "l4/k1")] == [1, 0, 1, 0]  # type: ignore[index]


def test_names_beyond_the_proven_length_are_matched_with_the_clock_every_time() -> None:
    rules = parse_rules(
        "format = 1\n[[rules]]\nmatch = 'a(?P<x>\\d+)(?P<y>\\d+)(?P<z>\\d+)b'\nskip = 'x'\n"
        "[[rules]]\nmatch = '.*'\nskip = 'y'\n",
        match_timeout=0.05,
    )
    matcher = RuleMatcher(rules.rules)
    assert matcher.first("a123b")[0] == 0  # type: ignore[index]
    assert matcher.first("a1234c")[0] == 1  # type: ignore[index]
    for digit in "12":  # one digit shape: the second is not answered from memory, so it times out too
        with pytest.raises(MatchTimeoutError, match="ran past the match time bound"):
            matcher.first("a" + digit * 3000 + "c")


# --- the planner over the same rule sets ---------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    patterns=st.lists(digit_patterns, min_size=1, max_size=5),
    digits=st.lists(st.sampled_from("0123456789"), min_size=1, max_size=3),
)
def test_each_name_in_a_plan_is_taken_by_its_first_matching_rule(
    data: st.DataObject, patterns: list[str], digits: list[str]
) -> None:
    names = [data.draw(st.from_regex(re.compile(pattern), fullmatch=True), label=pattern) for pattern in patterns]
    names = list(dict.fromkeys(v for name in names if name.isascii() for v in _variants(name, digits)))
    # Even rules skip, odd ones rename every name to t/<name>.
    body = "".join(
        f"[[rules]]\nmatch = '''{pattern}'''\n" + ('skip = "s"\n' if index % 2 == 0 else 'target = "t/{0}"\n')
        for index, pattern in enumerate(patterns)
    )
    rules = parse_rules(
        'format = 1\n[policies]\nunused_source = "ignore"\nunfilled_target = "ignore"\ndead_rule = "ignore"\n' + body
    )
    source = VariableMap(TensorSpec(name, (2,), "float32") for name in names)
    target = TargetMap(VariableMap(TensorSpec(f"t/{name}", (2,), "float32") for name in names))
    plan = build_plan(rules, source, target)
    taken = {skip.name: skip.rule.index - 1 for skip in plan.skips}
    taken.update({assignment.source: assignment.rule.index - 1 for assignment in plan.assignments})
    for name in names:
        expected = _plain_first(patterns, name)
        assert taken.get(name) == (expected and expected[0]), (patterns, name)
        if expected is not None and expected[0] % 2:
            assert plan.assignment_for(f"t/{name}") is not None
    assert [entry.name for entry in plan.unused_sources] == [n for n in names if _plain_first(patterns, n) is None]


# --- positional records --------------------------------------------------------------------------------------

REF = RuleRef("r.toml", 3, "rule", "rules")
_OTHERS = (JoinMember("k", (1, 4)),)


@dataclass(frozen=True)
class _Unslotted:
    value: int


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(Skip("w", SkipKind.RULE, "why", REF, (2,), None, None, None, "hf"), id="skip"),
        pytest.param(Skip("w", SkipKind.GUARD, "g", REF, (2,), (3,), "t", "detail"), id="guard-skip"),
        pytest.param(
            Assignment("t", "k", "s", REF, (Transpose((1, 0)),), (2, 3), "float32", (3, 2), "float32"),
            id="assignment",
        ),
        pytest.param(
            Assignment("t", "k", "q", REF, (), (2, 4), "float32", (3, 4), "float32", Join(Concat(0), _OTHERS), "hf"),
            id="joining-assignment",
        ),
        pytest.param(JoinMember("m", (1, 4)), id="join-member"),
        pytest.param(Problem(ProblemKind.DEAD_RULE, Severity.WARNING, "m", REF, ("a",), "M101"), id="problem"),
        pytest.param(TensorEntry("x", (), "int64", "hf"), id="tensor-entry"),
    ],
)
def test_positional_makes_the_same_record(record: object) -> None:
    values = [getattr(record, name) for name in type(record).__slots__]  # type: ignore[attr-defined]
    made = positional(type(record))(*values)
    assert made == record
    assert type(made) is type(record)
    assert hash(made) == hash(record)
    assert repr(made) == repr(record)


def test_positional_takes_one_value_per_field() -> None:
    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        positional(TensorEntry)("x", (), "int64")


@pytest.mark.parametrize("cls", [Plan, _Unslotted], ids=["post-init", "not-slotted"])
def test_positional_refuses_a_class_whose_init_does_more(cls: type) -> None:
    with pytest.raises(TypeError, match="only sets its fields"):
        positional(cls)
