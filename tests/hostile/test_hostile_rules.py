"""Hostile rule files: each case through ``mapper validate`` in-process, and the match time bound through the API."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mapper import cli
from mapper.authoring.examples import check_examples
from mapper.authoring.explain import explain_source
from mapper.authoring.lint import lint
from mapper.errors import MatchTimeoutError, RuleFileError
from mapper.plan.planner import build_plan
from mapper.rules import RuleRef, load_rules, parse_rules
from mapper.rules.bound import DEFAULT_MATCH_TIMEOUT, MATCH_TIMEOUT_VARIABLE, match_timeout, proven_length
from mapper.specs import TargetMap, TensorSpec, VariableMap

BOUND = 0.05  # seconds: small, so that every case stays well under a second
LONG = "a" * 60 + "b"  # 61 characters that (a|aa)+ tries in about 2**60 ways before giving up
GREEDY_RULE = 'format = 1\n[[rules]]\nname = "greedy"\nmatch = "(a|aa)+"\nskip = "x"\n'
GREEDY = GREEDY_RULE + f'[[examples]]\nsource = "{LONG}"\nskip = true\n'
RULE = 'format = 1\n[[rules]]\nname = "r"\nmatch = "a"\ntarget = "b"\n'


@dataclass(frozen=True)
class Case:
    """A rule file (text, raw bytes, or None for a directory where the file should be), what validate must say."""

    text: str | bytes | None
    code: int
    fragment: str


def _nested(opening: str, closing: str, depth: int = 10_000) -> str:
    return f"format = 1\n[params]\nx = {opening * depth}1{closing * depth}\n"


CASES = [
    # A pattern that backtracks without end, on the name of an [[examples]] entry.
    pytest.param(Case(GREEDY, 1, "rule 1 ('greedy'), field 'match': pattern '(a|aa)+' ran past"), id="redos-rule"),
    pytest.param(
        Case(GREEDY, 1, "(61 characters) (nested quantifiers such as (a|aa)+"), id="redos-says-what-to-change"
    ),
    pytest.param(
        Case(
            GREEDY.replace('"(a|aa)+"', '"(?:a|aa)*"'),
            1,
            "match time bound of 0.05 s on name 'aaaaaaaaaaaaaaaaaaaa...a",
        ),
        id="redos-non-capturing-star",
    ),
    # Strict types: a string where the schema says boolean or integer, and the other way round.
    pytest.param(
        Case(RULE + 'optional = "no"\n', 1, "field 'optional': Input should be a valid boolean"), id="bool-str"
    ),
    pytest.param(Case(RULE + "optional = 1\n", 1, "field 'optional': Input should be a valid boolean"), id="bool-int"),
    pytest.param(
        Case(RULE + 'guard = { rank = "2" }\n', 1, "field 'guard.rank': Input should be a valid integer"), id="int-str"
    ),
    pytest.param(
        Case(RULE + "guard = { rank = 2.0 }\n", 1, "field 'guard.rank': Input should be a valid integer"),
        id="int-float",
    ),
    pytest.param(
        Case(
            RULE + 'guard = { same_shape = "true" }\n', 1, "field 'guard.same_shape': Input should be a valid boolean"
        ),
        id="guard-bool-str",
    ),
    pytest.param(
        Case(RULE + 'guard = { shape = [4, "4"] }\n', 1, "field 'guard.shape.1': Input should be a valid integer"),
        id="shape-item-str",
    ),
    pytest.param(
        Case(RULE.replace('name = "r"', "name = 3"), 1, "field 'name': Input should be a valid string"), id="str-int"
    ),
    pytest.param(Case(RULE.replace('"b"', "true"), 1, "field 'target': Input should be a valid string"), id="str-bool"),
    pytest.param(
        Case(
            RULE.replace('target = "b"', 'targets = ["b", "c"]\nsplit = { axis = "0", parts = 2 }'), 1, "'split.axis'"
        ),
        id="split-axis-str",
    ),
    pytest.param(
        Case(
            RULE + "ops = [{ transpose = [1.0, 0] }]\n", 1, "operation 1 (transpose): Input should be a valid integer"
        ),
        id="transpose-float",
    ),
    pytest.param(
        Case(
            'format = 1\n[[keep]]\nmatch = "h/.*"\nreason = "new"\noptional = "yes"\n',
            1,
            "keep rule 1, field 'optional'",
        ),
        id="keep-bool-str",
    ),
    pytest.param(
        Case('format = 1\n[[examples]]\nsource = "a"\nskip = "yes"\n', 1, "field 'examples.0.skip'"),
        id="example-bool-str",
    ),
    pytest.param(Case("format = 1\n[target]\nnamespace = 1\n", 1, "field 'target.namespace'"), id="literal-int"),
    pytest.param(Case("format = true\n", 1, "format true is not supported"), id="format-bool"),
    pytest.param(Case('format = "1"\n', 1, "format '1' is not supported"), id="format-str"),
    # Files that cannot be read as rule files at all.
    pytest.param(Case(_nested("[", "]"), 1, "nests arrays or tables too deeply"), id="nested-arrays"),
    pytest.param(Case(_nested("{ a = ", " }"), 1, "nests arrays or tables too deeply"), id="nested-tables"),
    pytest.param(
        Case(b'format = 1\ndescription = "caf\xe9"\n', 1, "cannot read the rule file: 'utf-8' codec"), id="latin-1"
    ),
    pytest.param(Case(None, 1, "cannot read the rule file: [Errno 21] Is a directory"), id="directory"),
    # The control: a valid file still validates.
    pytest.param(Case(RULE + "optional = true\nguard = { rank = 1 }\n", 0, "ok: "), id="valid"),
]


@pytest.mark.parametrize("case", CASES)
def test_validate_refuses_hostile_rule_files(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(MATCH_TIMEOUT_VARIABLE, str(BOUND))
    path = tmp_path / "rules.toml"
    if case.text is None:
        path.mkdir()
    elif isinstance(case.text, bytes):
        path.write_bytes(case.text)
    else:
        path.write_text(case.text)
    started = time.perf_counter()
    code = cli.main(["validate", str(path)])
    elapsed = time.perf_counter() - started
    captured = capsys.readouterr()
    shown = captured.out if code == 0 else captured.err
    assert code == case.code, captured.err
    assert case.fragment in shown
    assert "Traceback" not in captured.err
    assert elapsed < 1.0


# The bound through each API that matches rule-file patterns.


@pytest.fixture
def greedy(tmp_path: Path) -> Path:
    path = tmp_path / "greedy.toml"
    path.write_text(GREEDY)
    return path


def _source(*names: str) -> VariableMap:
    return VariableMap([TensorSpec(name, (1,), "float32") for name in names])


def _assert_bounded(error: MatchTimeoutError, file: str, name: str = LONG) -> None:
    assert isinstance(error, RuleFileError)
    assert error.name == name
    assert error.timeout == BOUND
    assert error.rule == RuleRef(file, 1, "greedy")


def test_planning_stops_at_the_bound(greedy: Path) -> None:
    rules = load_rules(greedy, match_timeout=BOUND)
    started = time.perf_counter()
    with pytest.raises(MatchTimeoutError) as raised:
        build_plan(rules, _source("aaaa", LONG), TargetMap(VariableMap([])))
    assert time.perf_counter() - started < 1.0
    _assert_bounded(raised.value, str(greedy))
    assert f"{greedy}: rule 1 ('greedy'), field 'match'" in str(raised.value)


def test_keep_rules_are_bounded_too(tmp_path: Path) -> None:
    path = tmp_path / "keep.toml"
    path.write_text('format = 1\n[[keep]]\nname = "greedy"\nmatch = "(a|aa)+"\nreason = "new"\n')
    rules = load_rules(path, match_timeout=BOUND)
    with pytest.raises(MatchTimeoutError) as raised:
        build_plan(rules, _source(), TargetMap(_source(LONG)))
    assert raised.value.rule == RuleRef(str(path), 1, "greedy", "keep")
    assert "keep rule 1 ('greedy')" in str(raised.value)


def test_a_base_file_rule_is_named_in_its_own_file(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(GREEDY_RULE)
    (tmp_path / "top.toml").write_text('format = 1\nextends = ["base.toml"]\n[[rules]]\nmatch = "b"\nskip = "x"\n')
    rules = load_rules(tmp_path / "top.toml", match_timeout=BOUND)
    with pytest.raises(MatchTimeoutError) as raised:
        build_plan(rules, _source(LONG), TargetMap(VariableMap([])))
    _assert_bounded(raised.value, str(tmp_path / "base.toml"))


def test_examples_are_bounded(greedy: Path) -> None:
    with pytest.raises(MatchTimeoutError) as raised:
        check_examples(load_rules(greedy, match_timeout=BOUND))
    _assert_bounded(raised.value, str(greedy))


def test_lints_are_bounded(greedy: Path) -> None:
    with pytest.raises(MatchTimeoutError) as raised:
        lint(load_rules(greedy, match_timeout=BOUND), _source(LONG))
    _assert_bounded(raised.value, str(greedy))


def test_explain_is_bounded(greedy: Path) -> None:
    with pytest.raises(MatchTimeoutError) as raised:
        explain_source(load_rules(greedy, match_timeout=BOUND), LONG)
    _assert_bounded(raised.value, str(greedy))


def test_the_environment_sets_the_bound(greedy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MATCH_TIMEOUT_VARIABLE, str(BOUND))
    with pytest.raises(MatchTimeoutError) as raised:
        check_examples(load_rules(greedy))
    _assert_bounded(raised.value, str(greedy))


def test_the_parameter_wins_over_the_environment(greedy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MATCH_TIMEOUT_VARIABLE, "30")
    with pytest.raises(MatchTimeoutError) as raised:
        check_examples(load_rules(greedy, match_timeout=BOUND))
    assert raised.value.timeout == BOUND


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf", "nan"])
def test_a_bad_bound_in_the_environment_is_named(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MATCH_TIMEOUT_VARIABLE, value)
    with pytest.raises(RuleFileError, match=MATCH_TIMEOUT_VARIABLE):
        match_timeout()


def test_a_bad_bound_parameter_is_named() -> None:
    with pytest.raises(RuleFileError, match="match_timeout"):
        parse_rules(RULE, match_timeout=0)


def test_default_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MATCH_TIMEOUT_VARIABLE, raising=False)
    assert match_timeout() == DEFAULT_MATCH_TIMEOUT == 1.0


def test_honest_patterns_match_well_inside_a_small_bound() -> None:
    rules = parse_rules(
        'format = 1\n[[rules]]\nmatch = "(?P<a>.*)/(?P<b>.*)/(?P<c>.*)/x"\ntarget = "{a}"\n'
        '[[rules]]\nmatch = "(?P<rest>.*)"\nskip = "rest"\n',
        match_timeout=BOUND,
    )
    names = ["/".join(["layer_12"] * 30), "a/b/c/x"]
    plan = build_plan(rules, _source(*names), TargetMap(_source("a")))
    assert [assignment.target for assignment in plan.assignments] == ["a"]


def test_the_bound_leaves_rules_equal_to_rules_written_in_python() -> None:
    from mapper.rules import Rule

    rules = parse_rules(RULE, match_timeout=BOUND)
    assert rules.rules[0] == Rule(name="r", match="a", target="b")


# Matches that provably finish within the bound skip the clock (reading it costs more than the match): the proof
# must refuse every pattern that can backtrack without end, and hold on the worst names it admits.


@pytest.mark.parametrize(
    "pattern",
    [
        "(a|aa)+",
        "(?:a|aa)*",
        "(a+)+",
        "(a*)*",
        "(?:ab){3}",
        "(a)\\1",
        "a{e<=1}",
        "(?i)a",
        "(?=a)a",
        "[[:alpha:]]+",
        "a?" * 20,
    ],
)
def test_no_proof_for_patterns_that_may_backtrack(pattern: str) -> None:
    assert proven_length(pattern, 1.0) == -1


@pytest.mark.parametrize(
    ("pattern", "filler"),
    [
        ("(?P<x>.*)/(?P<y>.*)/(?P<z>.*)/x", "/"),
        (".*.*.*.*.*y", "a"),
        ("(?:.+\\.)?(?:.+\\.)?.+\\.z", "."),
        ("(?:bert\\.)?encoder\\.layer\\.(?P<i>\\d+)\\.(?P<part>query|key|value)\\.weight", "1"),
    ],
)
def test_proven_patterns_finish_on_their_worst_names(pattern: str, filler: str) -> None:
    length = proven_length(pattern, BOUND)
    assert length >= 0
    name = filler * length + "#"  # fails only at the very end, after every way of splitting the filler
    started = time.perf_counter()
    assert parse_rules(f"format = 1\n[[rules]]\nmatch = '{pattern}'\nskip = 'x'\n").rules[0].fullmatch(name) is None
    assert time.perf_counter() - started < BOUND


class _Spy:
    """A compiled pattern that records whether each match was given a time bound."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def fullmatch(self, name: str, *, partial: bool = False, timeout: float | None = None) -> None:
        self.timeouts.append(timeout)


def test_names_past_the_proven_length_are_timed() -> None:
    from mapper.plan.matching import RuleMatcher

    rule = parse_rules(
        "format = 1\n[[rules]]\nmatch = '(?P<x>.*)/(?P<y>.*)/x'\nskip = 'x'\n", match_timeout=BOUND
    ).rules[0]
    length = proven_length(rule.match, BOUND)
    spy = _Spy()
    rule._pattern = spy
    names = ["/" * length, "/" * (length + 1)]
    for name in names:
        rule.fullmatch(name)
    matcher = RuleMatcher([rule])
    for name in names:
        matcher.first(name)
        matcher.every(name)
    assert spy.timeouts == [None, BOUND, None, None, BOUND, BOUND]
