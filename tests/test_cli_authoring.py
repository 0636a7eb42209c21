"""The authoring verbs (validate with examples and lints, explain, suggest, schema, diff) and terminal behaviour."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from mapper import cli, demo
from mapper.authoring.schema import rules_schema_json
from mapper.rules import parse_rules

ROOT = Path(__file__).resolve().parent.parent
RULES = str(demo.RULES)
TARGET = "mapper.demo:new_model"


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.write_pretrained_checkpoint(tmp_path_factory.mktemp("pretrained"))[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


EXAMPLES = """format = 1
[params]
width = 2
[[rules]]
name = "dense"
match = 'old/(?P<n>\\w+)/w'
target = "new/{n}/kernel"
[[examples]]
source = "old/a/w"
target = "new/a/kernel"
"""


def test_validate_runs_examples(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(EXAMPLES)
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLES.replace('target = "new/a/kernel"', 'target = "new/b/kernel"'))
    code, out, err = run(capsys, "validate", str(good), str(bad))
    assert code == cli.EXIT_PROBLEMS
    assert f"ok: {good} (1 rule, 1 example passed)" in out
    assert "example 1 FAILED: 'old/a/w': expected target 'new/b/kernel', got target 'new/a/kernel'" in err
    assert "1 of 2 rule files invalid" in err


@pytest.mark.tf
def test_validate_lints_on_a_source_and_strict_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, prefix: Path
) -> None:
    shadowed = tmp_path / "shadowed.toml"
    shadowed.write_text(
        'format = 1\n[target]\nnamespace = "checkpoint"\n[[rules]]\nmatch = "(?P<k>.+)"\ntarget = "{k}"\n'
        '[[rules]]\nname = "never"\nmatch = "model/.+"\nskip = "x"\n'
    )
    code, out, err = run(capsys, "validate", str(shadowed), "--source", str(prefix))
    assert code == cli.EXIT_OK
    assert "mapper: warning: M102" in err and "rule 2 ('never') never fires" in err
    assert "1 lint warning" in out
    code, _, err = run(capsys, "validate", str(shadowed), "--source", str(prefix), "--strict")
    assert code == cli.EXIT_PROBLEMS and "1 lint warning (--strict)" in err


@pytest.mark.parametrize(
    ("param", "code", "shown"),
    [
        ("width=3", cli.EXIT_OK, "ok:"),
        ("widht=3", cli.EXIT_PROBLEMS, "--param widht: the rule file declares no such parameter (declared: width)"),
        ("width=wide", cli.EXIT_PROBLEMS, "width is declared as int (2), not str"),
        ("nonsense", cli.EXIT_PROBLEMS, "is not NAME=VALUE"),
    ],
    ids=["ok", "undeclared", "wrong-type", "malformed"],
)
def test_validate_param(capsys: pytest.CaptureFixture[str], tmp_path: Path, param: str, code: int, shown: str) -> None:
    path = tmp_path / "r.toml"
    path.write_text(EXAMPLES)
    result, out, err = run(capsys, "validate", str(path), "--param", param)
    assert result == code
    assert shown in out + err


@pytest.mark.tf
def test_explain_a_source_name_with_the_plans_verdict(capsys: pytest.CaptureFixture[str], prefix: Path) -> None:
    name = "model/_operations/4/_kernel/.ATTRIBUTES/VARIABLE_VALUE"
    code, out, _ = run(capsys, "explain", RULES, name, "--source", str(prefix), "--target", TARGET)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(name)
    assert lines[1] == "  source: [32, 10] float32"
    assert "rule 1 'same architecture'  MATCH" in lines[2]
    assert "rule 2 'optimizer'          no match: |model/" in lines[3]
    assert "plan: skipped by guard" in lines[-1] and "[32, 10] -> target [32, 5]" in lines[-1]


@pytest.mark.tf
def test_explain_a_target_name(capsys: pytest.CaptureFixture[str], prefix: Path) -> None:
    code, out, _ = run(
        capsys, "explain", RULES, "d1/kernel", "--target-name", "--source", str(prefix), "--target", TARGET
    )
    assert code == 0
    assert out.splitlines() == [
        "d1/kernel",
        f"  filled from 'model/_operations/1/_kernel/.ATTRIBUTES/VARIABLE_VALUE' [16, 32] float32 by {RULES} rule 1 "
        "('same architecture')",
    ]


def test_explain_target_name_needs_a_plan(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "explain", RULES, "d1/kernel", "--target-name")
    assert code == cli.EXIT_USAGE and "--target-name needs --source and --target" in err


@pytest.mark.tf
def test_suggest_drafts_a_file_that_plans(capsys: pytest.CaptureFixture[str], prefix: Path, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "suggest", "--source", str(prefix), "--target", TARGET)
    assert code == 0
    draft = tmp_path / "draft.toml"
    draft.write_text(out)
    rules = parse_rules(out, file=str(draft))
    assert len(rules.rules) == 1  # a checkpoint of the same architecture: one guarded rule (issue 11)
    code, report, _ = run(capsys, "plan", str(draft), "--source", str(prefix), "--target", TARGET, "--color", "never")
    # Every backbone variable is placed; the new head's shape changed, so the guard leaves it, with a reason.
    assert code == 0
    assert report.splitlines()[0] == "Plan OK: 8 mapped, 2 skipped"
    assert "head/kernel [32, 5]" in report


def test_schema_prints_the_shipped_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0 and out == rules_schema_json()
    assert (ROOT / "schema" / "rules-v1.json").read_text() == out


@pytest.mark.tf
def test_diff_of_two_plans(capsys: pytest.CaptureFixture[str], prefix: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    common = ["--source", str(prefix), "--target", TARGET, "--format", "json"]
    assert run(capsys, "plan", RULES, *common, "--output", str(first))[0] == 0
    looser = tmp_path / "looser.toml"
    looser.write_text(demo.RULES.read_text().replace("model/.+", "model/_operations/[12]/.+"))
    run(capsys, "plan", str(looser), *common, "--output", str(second))
    code, out, _ = run(capsys, "diff", str(first), str(first))
    assert (code, out.strip()) == (0, "no change: both plans fill every target the same way")
    code, out, _ = run(capsys, "diff", str(first), str(second))
    assert code == cli.EXIT_PROBLEMS
    assert "0 added, 2 removed, 0 changed" in out.splitlines()[0]
    assert "d2/{bias,kernel}" in out
    code, out, _ = run(
        capsys, "diff", RULES, str(looser), "--source", str(prefix), "--target", TARGET, "--format", "markdown"
    )
    assert code == cli.EXIT_PROBLEMS and out.startswith("#### Plan diff")


def test_diff_of_rule_files_needs_maps(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "diff", RULES, RULES)
    assert code == cli.EXIT_USAGE and "give --source and --target" in err


def _run_on_a_terminal(argv: list[str]) -> str:
    """Run ``python -m mapper`` with stdout and stderr on a pseudo-terminal, as a person would; return what it showed."""
    leader, follower = pty.openpty()
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "120"}
    environment.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "mapper", *argv],
        stdout=follower,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        env=environment,
    )
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    process.wait(timeout=120)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.tf
def test_a_fresh_process_on_a_real_terminal_shows_colour_and_progress(prefix: Path, tmp_path: Path) -> None:
    # The one subprocess smoke test: the console entry point, a real tty and TensorFlow's quiet import together.
    # Colour and progress decisions themselves are tested in-process (tests/test_cli.py).
    output = tmp_path / "out.weights.h5"
    shown = _run_on_a_terminal(["apply", RULES, "--source", str(prefix), "--target", TARGET, "--output", str(output)])
    assert "\x1b[" in shown
    assert "applying [" in shown and "applied: 8 variables" in shown
    assert output.is_file()


@pytest.mark.tf
def test_quiet_plan_prints_the_verdict(capsys: pytest.CaptureFixture[str], prefix: Path) -> None:
    code, out, _ = run(capsys, "plan", RULES, "--source", str(prefix), "--target", TARGET, "-q")
    assert code == 0 and out.strip() == "Plan OK: 8 mapped, 2 skipped"


def test_pre_commit_hook_runs_validate() -> None:
    import yaml

    (hook,) = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "mapper-validate" and hook["entry"] == "mapper validate"
    assert hook["language"] == "python" and hook["types"] == ["toml"]
