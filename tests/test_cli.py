"""The mapper command: every verb on the seed scenario, its exit codes, its help and its errors."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from mapper import cli, demo
from mapper.outputs.files import OUTPUT_FORMATS
from mapper.sources import FORMATS

RULES = str(demo.RULES)
TARGET = "mapper.demo:new_model"


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as a person's would."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    return demo.write_pretrained_checkpoint(tmp_path_factory.mktemp("pretrained"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("verb", ["inspect", "validate", "plan", "apply", "demo"])
def test_every_verb_has_help_with_an_example(capsys: pytest.CaptureFixture[str], verb: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([verb, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert f"mapper {verb}" in out


def test_top_level_help_lists_verbs_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for verb in ("inspect", "validate", "plan", "apply", "demo"):
        assert verb in out
    assert "exit codes:" in out


@pytest.mark.tf
def test_inspect_lists_names_shapes_dtypes_sizes(
    capsys: pytest.CaptureFixture[str], pretrained: tuple[object, Path]
) -> None:
    _, prefix = pretrained
    code, out, _ = run(capsys, "inspect", str(prefix))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"{prefix}: 10 of 10 tensors")
    assert lines[1].split() == ["name", "shape", "dtype", "size"]
    kernel = next(line for line in lines if line.startswith("model/_operations/4/_kernel/"))
    assert kernel.split()[1:] == ["[32,", "10]", "float32", "1.2", "KiB"]
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" not in out


@pytest.mark.tf
def test_inspect_json_and_match(capsys: pytest.CaptureFixture[str], pretrained: tuple[object, Path]) -> None:
    _, prefix = pretrained
    code, out, _ = run(capsys, "inspect", str(prefix), "--format", "json", "--match", "moving")
    assert code == 0
    document = json.loads(out)
    assert [tensor["name"].split("/")[3] for tensor in document["tensors"]] == ["moving_mean", "moving_variance"]
    assert document["total_bytes"] == 2 * 32 * 4


def test_validate_reports_each_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(
        'format = 1\n[[rules]]\nname = "a"\nmtach = "x"\ntarget = "y"\n[[rules]]\nmatch = "a(b"\nskip = "r"\n'
    )
    code, out, err = run(capsys, "validate", RULES, str(broken))
    assert code == cli.EXIT_PROBLEMS
    assert f"ok: {RULES} (3 rules)" in out
    assert "unknown key 'mtach' (did you mean 'match'?)" in err
    assert "rule 2, field 'match': invalid regular expression" in err
    assert "1 of 2 rule files invalid" in err


@pytest.mark.tf
def test_plan_seed_scenario_names_the_head_skip(
    capsys: pytest.CaptureFixture[str], pretrained: tuple[object, Path]
) -> None:
    _, prefix = pretrained
    code, out, _ = run(capsys, "plan", RULES, "--source", str(prefix), "--target", TARGET, "--color", "never")
    assert code == 0
    assert "[32, 10]" in out and "[32, 5]" in out
    assert "new class count" in " ".join(out.split())  # the reason may wrap: where depends on the checkout's path
    assert "\x1b[" not in out


@pytest.mark.tf
@pytest.mark.parametrize("report_format", ["markdown", "json"])
def test_plan_formats_to_file(
    capsys: pytest.CaptureFixture[str], pretrained: tuple[object, Path], tmp_path: Path, report_format: str
) -> None:
    _, prefix = pretrained
    output = tmp_path / f"plan.{report_format}"
    code, out, _ = run(
        capsys,
        "plan",
        RULES,
        "--source",
        str(prefix),
        "--target",
        TARGET,
        "--format",
        report_format,
        "--output",
        str(output),
    )
    assert code == 0
    assert f"written to {output}" in out
    text = output.read_text()
    if report_format == "json":
        json.loads(text)
    else:
        assert text.lstrip().startswith("#") or "|" in text


@pytest.mark.tf
def test_plan_with_errors_exits_1(
    capsys: pytest.CaptureFixture[str], pretrained: tuple[object, Path], tmp_path: Path
) -> None:
    _, prefix = pretrained
    strict = tmp_path / "strict.toml"
    strict.write_text(
        'format = 1\n[target]\nnamespace = "checkpoint"\n[[rules]]\nmatch = "(?P<k>model/.+)"\ntarget = "{k}"\n'
    )
    code, out, _ = run(capsys, "plan", strict.as_posix(), "--source", str(prefix), "--target", TARGET)
    assert code == cli.EXIT_PROBLEMS
    assert "shape_mismatch" in out or "shape" in out


@pytest.mark.tf
def test_apply_saves_weights_and_refuses_to_overwrite(
    capsys: pytest.CaptureFixture[str], pretrained: tuple[object, Path], tmp_path: Path
) -> None:
    model, prefix = pretrained
    output = tmp_path / "finetuned.weights.h5"
    argv = ["apply", RULES, "--source", str(prefix), "--target", TARGET, "--output", str(output), "--quiet"]
    code, out, _ = run(capsys, *argv)
    assert code == 0, out
    assert out.strip().splitlines()[-1].startswith("applied: 8 variables")
    restored = demo.new_model()
    restored.load_weights(str(output))
    np.testing.assert_array_equal(restored.get_layer("d1").kernel, model.get_layer("d1").kernel)  # type: ignore[attr-defined]
    fresh = demo.new_model()
    np.testing.assert_array_equal(restored.get_layer("head").kernel, fresh.get_layer("head").kernel)
    before = output.read_bytes()
    code, _, err = run(capsys, *argv)
    assert code == cli.EXIT_OUTPUT
    assert "already exists; pass --overwrite" in err
    assert output.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["finetuned.weights.h5"]


@pytest.mark.tf
def test_apply_to_checkpoint_prefix(
    capsys: pytest.CaptureFixture[str], pretrained: tuple[object, Path], tmp_path: Path
) -> None:
    _, prefix = pretrained
    output = tmp_path / "out" / "ckpt"
    output.parent.mkdir()
    code, _, _ = run(capsys, "apply", RULES, "--source", str(prefix), "--target", TARGET, "--output", str(output), "-q")
    assert code == 0
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(output))
    original = tf.train.load_checkpoint(str(prefix))
    key = "model/_operations/1/_kernel/.ATTRIBUTES/VARIABLE_VALUE"
    np.testing.assert_array_equal(reader.get_tensor(key), original.get_tensor(key))
    head = "model/_operations/4/_kernel/.ATTRIBUTES/VARIABLE_VALUE"
    assert reader.get_tensor(head).shape == (32, 5)


def _needs_tf(argv: list[str], code: int, message: str, case: str) -> object:
    return pytest.param(argv, code, message, id=case, marks=pytest.mark.tf)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        pytest.param(["inspect", "/no/such/ckpt"], cli.EXIT_INPUT, "/no/such/ckpt", id="missing-source"),
        pytest.param(["validate", "/no/such/rules.toml"], cli.EXIT_PROBLEMS, "no such rule file", id="missing-rules"),
        _needs_tf(
            ["plan", RULES, "--source", "{prefix}", "--target", "mapper.demo:no_such_factory"],
            cli.EXIT_INPUT,
            "has no 'no_such_factory'",
            "missing-factory",
        ),
        _needs_tf(
            ["plan", RULES, "--source", "{prefix}", "--target", "no_such_module_xyz:build"],
            cli.EXIT_INPUT,
            "cannot import 'no_such_module_xyz'",
            "missing-module",
        ),
        _needs_tf(
            ["plan", RULES, "--source", "{prefix}", "--target", "not-a-spec"],
            cli.EXIT_INPUT,
            "is not MODULE:FACTORY",
            "bad-target-spec",
        ),
        _needs_tf(
            ["apply", RULES, "--source", "{prefix}", "--target", TARGET, "--output", "/no/such/dir/ckpt"],
            cli.EXIT_OUTPUT,
            "does not exist",
            "missing-output-dir",
        ),
    ],
)
def test_bad_input_exit_codes(
    capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest, argv: list[str], code: int, message: str
) -> None:
    if "{prefix}" in argv:
        _, prefix = request.getfixturevalue("pretrained")
        argv = [arg.replace("{prefix}", str(prefix)) for arg in argv]
    result, _, err = run(capsys, *argv)
    assert result == code
    assert message in err
    assert err.startswith("mapper: error:")


@pytest.mark.tf
def test_demo_passes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "demo", "--workdir", str(tmp_path))
    assert code == 0, out
    assert "Demo passed." in out
    assert "ok   head/kernel" in out and "kept its initial value" in out
    assert "BAD" not in out


@pytest.mark.parametrize(
    ("verb", "formats"),
    [
        ("inspect", list(FORMATS)),
        ("plan", list(FORMATS)),
        ("apply", list(FORMATS)),
        ("suggest", list(FORMATS)),
        ("convert", [*FORMATS, *OUTPUT_FORMATS]),
    ],
)
def test_help_lists_every_registered_format(capsys: pytest.CaptureFixture[str], verb: str, formats: list[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([verb, "--help"])
    out = capsys.readouterr().out
    for name in formats:
        assert f" {name} " in out.replace(",", " ").replace("{", " ").replace("}", " "), name
    for known in FORMATS.values():  # each summary, whole, in the formats section
        assert " ".join(known.summary.split()) in " ".join(out.split())


@pytest.mark.tf
@pytest.mark.parametrize(
    ("color", "terminal", "no_color", "coloured"),
    [
        ("auto", True, False, True),
        ("auto", False, False, False),
        ("auto", True, True, False),
        ("always", False, True, True),
        ("never", True, False, False),
    ],
    ids=["auto-terminal", "auto-piped", "auto-NO_COLOR", "always", "never"],
)
def test_plan_colours_only_a_terminal(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    pretrained: tuple[object, Path],
    color: str,
    terminal: bool,
    no_color: bool,
    coloured: bool,
) -> None:
    _, prefix = pretrained
    stdout = Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    code = cli.main(["plan", RULES, "--source", str(prefix), "--target", TARGET, "--color", color])
    assert code == cli.EXIT_OK
    shown = stdout.getvalue()
    assert ("\x1b[" in shown) == coloured
    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    assert plain.splitlines()[0] == "Plan OK: 8 mapped, 2 skipped"


@pytest.mark.tf
@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "piped"])
def test_apply_draws_progress_only_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, pretrained: tuple[object, Path], tmp_path: Path, terminal: bool
) -> None:
    _, prefix = pretrained
    stdout, stderr = (Terminal(), Terminal()) if terminal else (io.StringIO(), io.StringIO())
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    output = tmp_path / "out.weights.h5"
    code = cli.main(["apply", RULES, "--source", str(prefix), "--target", TARGET, "--output", str(output)])
    assert code == cli.EXIT_OK
    assert ("\r  applying [" in stderr.getvalue()) == terminal
    assert ("] 8/8 " in stderr.getvalue()) == terminal
    assert stdout.getvalue().splitlines()[-1].startswith("applied: 8 variables")


# --- messages in command-line spelling, and TensorFlow imported quietly by every verb that loads it ---------------


@pytest.fixture(scope="module")
def npz_of_the_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An npz holding the demo model's weights under their Keras paths, and an identity rule file for it."""
    directory = tmp_path_factory.mktemp("npz")
    model = demo.new_model()
    np.savez(directory / "model.npz", **{variable.path: variable.numpy() for variable in model.weights})
    rules = directory / "identity.toml"
    rules.write_text("format = 1\n[[rules]]\nmatch = '(?P<name>.+)'\ntarget = '{name}'\n")
    return directory / "model.npz", rules


@pytest.mark.tf
def test_cli_messages_name_options_not_python_arguments(
    capsys: pytest.CaptureFixture[str],
    pretrained: tuple[object, Path],
    npz_of_the_model: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    _, prefix = pretrained
    npz, rules = npz_of_the_model
    common = ["--target", TARGET, "-q"]

    code, _, exists = run(capsys, "apply", RULES, "--source", str(prefix), *common, "--output", str(prefix))
    assert code == cli.EXIT_OUTPUT
    assert exists == (
        f"mapper: error: {prefix} already exists (ckpt.index, ckpt.data-00000-of-00001); pass --overwrite to replace it\n"
    )

    output = tmp_path / "ckpt"
    argv = [
        "apply",
        str(rules),
        "--source",
        str(npz),
        *common,
        "--output",
        str(output),
        "--method",
        "init_from_checkpoint",
    ]
    code, _, method = run(capsys, *argv)
    assert code == cli.EXIT_APPLY
    assert method.startswith("mapper: error: apply failed: --method init_from_checkpoint reads TensorFlow checkpoints")
    assert method.rstrip().endswith("; use --method assign, which reads any source")
    assert "overwrite=True" not in exists + method and "method=" not in exists + method


@pytest.mark.tf
@pytest.mark.parametrize(
    ("argv", "loads_tensorflow"),
    [
        (["validate", RULES], False),
        (["validate", RULES, "--source", "{npz}"], False),
        (["validate", RULES, "--source", "{prefix}"], True),
        (["validate", RULES, "--source", "pretrained={prefix}"], True),
        (["inspect", "{npz}"], False),
        (["inspect", "{prefix}"], True),
        (["inspect", "--target", TARGET], True),
        (["suggest", "--source", "{prefix}", "--target", TARGET], True),
        (["explain", RULES, "d1/kernel", "--source", "{npz}"], False),
        (["explain", RULES, "d1/kernel", "--source", "{prefix}"], True),
        (["diff", RULES, RULES, "--source", "{npz}", "--target", TARGET], True),
        (["convert", "{rules}", "{npz}", "{out}/converted.safetensors", "-q"], True),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else str(value),
)
def test_verbs_that_load_tensorflow_import_it_quietly_first(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    pretrained: tuple[object, Path],
    npz_of_the_model: tuple[Path, Path],
    tmp_path: Path,
    argv: list[str],
    loads_tensorflow: bool,
) -> None:
    from mapper.cli import terminal

    _, prefix = pretrained
    npz, rules = npz_of_the_model
    places = {"{prefix}": str(prefix), "{npz}": str(npz), "{rules}": str(rules), "{out}": str(tmp_path)}
    filled = [re.sub(r"\{[a-z]+\}", lambda found: places[found.group()], arg) for arg in argv]
    calls: list[str] = []
    monkeypatch.setattr(terminal, "import_tensorflow_quietly", lambda: calls.append("quietly"))

    code, _, err = run(capsys, *filled)

    assert code in (cli.EXIT_OK, cli.EXIT_PROBLEMS), err
    assert calls == (["quietly"] if loads_tensorflow else [])


@pytest.mark.tf
def test_validate_with_a_tf_checkpoint_source_shows_no_tensorflow_start_up_lines(
    pretrained: tuple[object, Path],
) -> None:
    import subprocess

    _, prefix = pretrained
    environment = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-m", "mapper", "validate", RULES, "--source", str(prefix)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=environment,
        cwd=Path(__file__).resolve().parents[1],
    )

    assert done.returncode == cli.EXIT_OK, done.stderr
    assert done.stdout == f"ok: {RULES} (3 rules)\n"
    assert done.stderr == ""
