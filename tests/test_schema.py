"""The rule-file JSON Schema: shipped, current, and right about every shipped rule file."""

from __future__ import annotations

import json
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


def test_schema_json_is_stable() -> None:
    assert json.loads(rules_schema_json()) == json.loads(rules_schema_json())
