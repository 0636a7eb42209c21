"""The rule-file JSON Schema: shipped, current, and right about every shipped rule file."""

from __future__ import annotations

import sys
from pathlib import Path

import jsonschema
import pytest

from mapper.authoring.schema import SCHEMA_ID, rules_schema, rules_schema_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "rules").glob("*.toml"))
VALIDATOR = jsonschema.Draft202012Validator(rules_schema())


def test_the_shipped_schema_file_is_current() -> None:
    assert (ROOT / "schema" / "rules-v1.json").read_text() == rules_schema_json(), (
        "run: mapper schema > schema/rules-v1.json"
    )


def test_the_schema_is_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(rules_schema())
    assert rules_schema()["$id"] == SCHEMA_ID


@pytest.mark.parametrize("path", SHIPPED, ids=[path.name for path in SHIPPED])
def test_every_shipped_rule_file_validates_and_declares_the_schema(path: Path) -> None:
    assert list(VALIDATOR.iter_errors(tomllib.loads(path.read_text()))) == []
    assert path.read_text().startswith("#:schema ../schema/rules-v1.json\n")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"format": 1, "rules": [{"mtach": "x", "skip": "y"}]}, "'mtach' was unexpected"),
        ({"format": 2}, "1 was expected"),
        ({"format": 1, "policies": {"unused_source": "maybe"}}, "'maybe' is not one of"),
        (
            {"format": 1, "rules": [{"match": "a", "target": "b", "ops": [{"transpose": "x"}]}]},
            "is not valid under any",
        ),
    ],
    ids=["unknown-key", "format", "policy", "operation"],
)
def test_the_schema_rejects_malformed_files(document: dict[str, object], message: str) -> None:
    errors = [error.message for error in VALIDATOR.iter_errors(document)]
    assert any(message in error for error in errors), errors


def _rule(body: str, params: str = "") -> str:
    return f"format = 1\n[params]\nheads = 2\n{params}[[rules]]\nmatch = '(?P<p>a|b)'\n{body}\n"


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        pytest.param(_rule("target = 'x'\nops = [{ reshape = [4, 'heads', -1] }]"), True, id="reshape-param"),
        pytest.param(_rule("targets = ['x', 'y']\nsplit = { axis = 0, parts = 'heads' }"), True, id="split-param"),
        pytest.param(_rule("targets = ['x', 'y']\nsplit = { axis = 0, sizes = ['heads', 2] }"), True, id="sizes-param"),
        pytest.param(_rule("target = 'x'\nconcat = { axis = 0, by = 'p', count = 'heads' }"), True, id="count-param"),
        pytest.param(_rule("target = 'x'\nops = [{ rearrange = '(h d) -> h d', h = 'heads' }]"), True, id="rearrange"),
        pytest.param(
            _rule("target = 'x'\nops = [{ rearrange = '(h d) -> h d', h = [2] }]"), False, id="rearrange-list"
        ),
        pytest.param(_rule("target = 'x'\nops = [{ cast = 'float23' }]"), False, id="unknown-dtype"),
        pytest.param(_rule("skip = ''"), False, id="empty-skip"),
        pytest.param(_rule("skip = '  '"), False, id="blank-skip"),
        pytest.param(_rule("target = 'x'\nguard = { same_shape = true, on_fail = 'skip' }"), False, id="no-reason"),
        pytest.param(_rule("target = 'x'\nguard = { rank = 2, on_fail = 'skip', reason = 'r' }"), True, id="reason"),
        pytest.param(_rule("target = 'x'\nguard = { on_fail = 'error' }"), False, id="guard-checks-nothing"),
        pytest.param(_rule("target = 'x'\nskip = 'y'"), False, id="target-and-skip"),
        pytest.param(_rule("targets = ['x']"), False, id="targets-without-split"),
        pytest.param(_rule("skip = 'y'\nguard = { rank = 1 }"), False, id="skip-with-guard"),
        pytest.param(_rule("target = 'x'\nsilence = { M101 = '' }"), False, id="silence-without-reason"),
        pytest.param(_rule("target = 'x'\nsilence = { M109 = 'r' }"), False, id="unknown-lint-code"),
        pytest.param(_rule("targets = ['x']\nsplit = { axis = 0 }"), False, id="split-without-parts"),
        pytest.param("format = 1\n[[keep]]\nmatch = 'h'\nreason = ''\n", False, id="keep-without-reason"),
        pytest.param("format = 1\n[[keep]]\nmatch = 'h'\nreason = 'r'\nnamespace = 'path'\n", True, id="keep-ns"),
        pytest.param("format = 1\n[target]\ncheckpoint_root = 'net'\n", True, id="checkpoint-root"),
        pytest.param("format = 1\n[[examples]]\nsource = 'a'\n", False, id="example-expects-nothing"),
        pytest.param("format = 1\n[[examples]]\nsource = 'a'\ntarget = 'b'\nskip = false\n", True, id="example"),
    ],
)
def test_the_schema_and_the_loader_agree(text: str, accepted: bool) -> None:
    from mapper.errors import RuleFileError
    from mapper.rules import parse_rules

    schema_accepts = not list(VALIDATOR.iter_errors(tomllib.loads(text)))
    try:
        parse_rules(text)
        loader_accepts = True
    except RuleFileError:
        loader_accepts = False
    assert (schema_accepts, loader_accepts) == (accepted, accepted)
