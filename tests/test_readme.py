"""The README stays true: its Python example runs as written, and its rule-file snippets pass schema and loader."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from mapper.authoring.schema import rules_schema
from mapper.rules import parse_rules

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
RULE_SECTION = README.split("## A rule file", 1)[1].split("\n## ", 1)[0]
SCHEMA = jsonschema.Draft202012Validator(rules_schema())
# Inline snippets of the rule-file section that are whole operation tables, such as `{ reshape = "target" }`.
OPERATIONS = sorted(
    {
        re.sub(r"\s+", " ", found)
        for found in re.findall(r"`(\{ (?:transpose|reshape|cast|slice|rearrange) = [^`]*\})`", RULE_SECTION)
    }
)
# Inline snippets that are one key of a rule, such as `split = { axis = -1, parts = 3 }`.
RULE_KEYS = sorted(set(re.findall(r"`((?:values|split|concat|stack|guard|silence) = \{[^`]*\})`", RULE_SECTION)))
PARAMS = "[params]\nnum_heads = 12\nnum_layers = 2\n"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_readme_starts_with_the_two_commands() -> None:
    head = README.split("## ", 1)[0]
    assert "make demo" in head and "make test" in head
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_rule_file_example_validates() -> None:
    example = _blocks("toml")[0]
    rules = parse_rules(example, file="README.md")
    assert [rule.name for rule in rules.rules][:2] == ["attention", "head"]


def _accepted(text: str) -> None:
    """Both the JSON Schema (as editors check it) and the loader (as mapper does) take the rule file ``text``."""
    assert [error.message for error in SCHEMA.iter_errors(tomllib.loads(text))] == []
    parse_rules(text, file="README.md")


@pytest.mark.parametrize("block", _blocks("toml"), ids=lambda block: block.split("\n", 3)[2][:30])
def test_every_rule_file_block_passes_schema_and_loader(block: str) -> None:
    _accepted(block)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_operation_snippet_passes_schema_and_loader(operation: str) -> None:
    _accepted(f"format = 1\n{PARAMS}[[rules]]\nmatch = 'a'\ntarget = 'b'\nops = [{operation}]\n")


@pytest.mark.parametrize("key", RULE_KEYS)
def test_every_rule_key_snippet_passes_schema_and_loader(key: str) -> None:
    body = {
        "values": "match = '(?P<p>weight|bias)'\ntarget = '{p}'",
        "split": "match = 'a'\ntargets = ['q', 'k', 'v']",
        "guard": "match = 'a'\ntarget = 'b'",
        "silence": "match = 'a'\ntarget = 'b'",
    }.get(key.split(" ", 1)[0], "match = '(?P<part>q|k|v)'\ntarget = 'qkv'")
    _accepted(f"format = 1\n{PARAMS}[[rules]]\n{body}\n{key}\n")


def test_the_snippets_cover_the_operations_and_keys() -> None:
    assert {snippet.split(" ")[1] for snippet in OPERATIONS} == {"transpose", "reshape", "cast", "slice", "rearrange"}
    assert {'{ reshape = [768, "num_heads", -1] }', '{ reshape = "target" }'} <= set(OPERATIONS)
    assert {key.split(" ")[0] for key in RULE_KEYS} >= {"values", "split", "stack", "silence"}


@pytest.mark.parametrize(
    "documented",
    [
        pytest.param("`split` and `targets` are\n  keys of the rule, beside `ops`", id="split-beside-ops"),
        pytest.param("`ops` then run on each part", id="ops-on-each-part"),
        pytest.param("works the same in each of a split's `targets` templates", id="templates-in-targets"),
        pytest.param('`[target]\n  namespace`; `namespace = "path"`', id="keep-namespace"),
        pytest.param("`[target] checkpoint_root`", id="checkpoint-root"),
    ],
)
def test_the_rule_section_documents(documented: str) -> None:
    assert documented in RULE_SECTION


@pytest.mark.tf
def test_python_example_runs_as_written() -> None:
    pytest.importorskip("tensorflow")
    (example,) = _blocks("python")
    done = subprocess.run(
        [sys.executable, "-c", example],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Plan OK" in done.stdout
