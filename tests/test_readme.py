"""The README stays true: its Python example runs as written, and its rule-file example validates."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mapper.rules import parse_rules

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_readme_starts_with_the_two_commands() -> None:
    head = README.split("## ", 1)[0]
    assert "make demo" in head and "make test" in head
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_rule_file_example_validates() -> None:
    (example,) = _blocks("toml")
    rules = parse_rules(example, file="README.md")
    assert [rule.name for rule in rules.rules][:2] == ["attention", "head"]


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
