"""Hostile inputs and faults at the command line: each ends in a named error and its exit code, never a traceback.

One table per input class: target factories, internal errors, diff inputs, signals and broken pipes. Every row
checks the exit code, that standard error names the offending thing, that no traceback reached the user, and that
the inputs are unchanged (and no output appeared). Targets, internal errors and diff inputs run in-process through
``mapper.cli.main``; signals and pipes need a real process, so they run ``python -m mapper`` in a subprocess.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import mapper
from mapper import cli
from mapper.errors import SourceNotFoundError

RULES = "format = 1\n[[rules]]\nmatch = '(?P<name>.+)'\ntarget = 'new/{name}'\n"
# The worktree (or checkout) this suite tests: subprocesses must import the same mapper.
ROOT = Path(mapper.__file__).resolve().parent.parent


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def snapshot(directory: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the files under ``directory``; Python's own bytecode caches are not inputs."""
    return {
        str(file.relative_to(directory)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(directory.rglob("*"))
        if file.is_file() and "__pycache__" not in file.parts
    }


def assert_named_failure(code: int, err: str, expected: int, *names: str) -> None:
    assert code == expected, err
    assert "Traceback" not in err, err
    for name in names:
        assert name in err, err


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A directory with a rule file and a small .npz source: what every hostile command line reads."""
    (tmp_path / "rules.toml").write_text(RULES, encoding="utf-8")
    np.savez(tmp_path / "weights.npz", **{f"layer_{i}/w": np.full((2, 3), i, "float32") for i in range(3)})
    return tmp_path


# --- target factories: the user's code, so whatever it does is reported as the target's fault (exit 3) -------------

TARGETS = [
    # (id, the module's source, the factory's name, what stderr must say besides the spec)
    ("factory-raises", "def build():\n    raise ValueError('no weights here')\n", "build",
     ["the target factory build() raised ValueError: no weights here", "models.py:2, in build"]),
    ("syntax-error", "def build(:\n    pass\n", "build", ["has a syntax error at", "models.py:1"]),
    ("raises-at-import", "raise RuntimeError('boom at import')\n", "build",
     ["importing", "raised RuntimeError: boom at import", "models.py:1, in <module>"]),
    ("exits-at-import", "import sys\nsys.exit(5)\n", "build", ["importing", "called sys.exit(5)"]),
    ("factory-exits", "import sys\ndef build():\n    sys.exit('no')\n", "build",
     ["the target factory build() called sys.exit('no')"]),
    ("missing-dependency", "import no_such_dependency_xyz\n", "build",
     ["cannot import", "No module named 'no_such_dependency_xyz'"]),
    ("returns-int", "def build():\n    return 3\n", "build", ["cannot use int as a target"]),
    ("returns-none", "def build():\n    return None\n", "build", ["cannot use None"]),
    ("returns-empty-dict", "def build():\n    return {}\n", "build", ["the dict given as target is empty"]),
    ("dict-of-non-variables", "def build():\n    return {'w': [1, 2]}\n", "build", ["'w'"]),
    ("attribute-is-not-a-target", "build = 'model.keras'\n", "build", ["cannot use str as a target"]),
    ("no-such-factory", "def build():\n    return {}\n", "biuld", ["has no 'biuld'", "did you mean build"]),
    ("factory-needs-arguments", "def build(classes):\n    return {}\n", "build",
     ["build() raised TypeError", "classes"]),
]  # fmt: skip


@pytest.mark.parametrize(("source", "factory", "names"), [pytest.param(*row[1:], id=row[0]) for row in TARGETS])
@pytest.mark.parametrize("verb", ["convert", "suggest"])
def test_a_target_factory_that_fails_is_exit_3(
    capsys: pytest.CaptureFixture[str], inputs: Path, verb: str, source: str, factory: str, names: list[str]
) -> None:
    (inputs / "models.py").write_text(source, encoding="utf-8")
    spec = f"{inputs / 'models.py'}:{factory}"
    before = snapshot(inputs)
    argv = {
        "convert": [
            "convert",
            str(inputs / "rules.toml"),
            str(inputs / "weights.npz"),
            str(inputs / "out.safetensors"),
        ],
        "suggest": ["suggest", "--source", str(inputs / "weights.npz")],
    }[verb]
    code, err = run(capsys, *argv, "--target", spec)
    assert_named_failure(code, err, cli.EXIT_INPUT, f"--target {spec!r}", *names)
    assert err.startswith("mapper: error:")
    assert snapshot(inputs) == before  # no output, no change to any input


@pytest.mark.parametrize("source", ["raise RuntimeError('boom')\n", "def build(:\n"], ids=["raises", "syntax-error"])
def test_a_target_module_that_fails_to_import_is_not_left_importable(
    capsys: pytest.CaptureFixture[str], inputs: Path, source: str
) -> None:
    (inputs / "hostile_half_run.py").write_text(source, encoding="utf-8")
    code, _ = run(
        capsys, "suggest", "--source", str(inputs / "weights.npz"), "--target", f"{inputs}/hostile_half_run.py:build"
    )
    assert code == cli.EXIT_INPUT and "hostile_half_run" not in sys.modules


def test_a_dotted_target_module_with_a_syntax_error(
    capsys: pytest.CaptureFixture[str], inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = inputs / "hostile_target_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "models.py").write_text("def build(:\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(inputs))
    code, err = run(
        capsys, "suggest", "--source", str(inputs / "weights.npz"), "--target", "hostile_target_pkg.models:build"
    )
    assert_named_failure(code, err, cli.EXIT_INPUT, "'hostile_target_pkg.models' has a syntax error", "models.py:1")


# --- internal errors: a bug is two lines and exit 70; --debug or MAPPER_DEBUG=1 shows the traceback ----------------


def _raises(problem: BaseException) -> Callable[..., int]:
    def verb(*args: object) -> int:
        raise problem

    return verb


INTERNAL = [
    ("runtime-error", RuntimeError("unexpected state\nsecond line"), cli.EXIT_INTERNAL,
     ["mapper: internal error: RuntimeError: unexpected state", "--debug", "MAPPER_DEBUG=1"]),
    ("recursion-error", RecursionError("maximum recursion depth exceeded"), cli.EXIT_INTERNAL,
     ["internal error: RecursionError"]),
    ("memory-error", MemoryError(), cli.EXIT_INTERNAL, ["internal error: MemoryError: (no message)"]),
    ("os-error", PermissionError(errno.EACCES, "Permission denied", "/x"), cli.EXIT_INTERNAL,
     ["internal error: PermissionError", "/x"]),
    ("broken-pipe", BrokenPipeError(errno.EPIPE, "Broken pipe"), cli.EXIT_BROKEN_PIPE, []),
    ("keyboard-interrupt", KeyboardInterrupt(), cli.EXIT_INTERRUPTED, ["mapper: error: interrupted"]),
    ("mapper-error", SourceNotFoundError("no checkpoint at 'x'", path="x"), cli.EXIT_INPUT,
     ["mapper: error: no checkpoint at 'x'"]),
]  # fmt: skip


@pytest.mark.parametrize(("problem", "code", "names"), [pytest.param(*row[1:], id=row[0]) for row in INTERNAL])
def test_an_unexpected_exception_is_a_short_message(
    capsys: pytest.CaptureFixture[str],
    inputs: Path,
    monkeypatch: pytest.MonkeyPatch,
    problem: BaseException,
    code: int,
    names: list[str],
) -> None:
    monkeypatch.delenv("MAPPER_DEBUG", raising=False)
    monkeypatch.setattr("mapper.cli.inspect.inspect", _raises(problem))
    before = snapshot(inputs)
    result, err = run(capsys, "inspect", str(inputs / "weights.npz"))
    assert_named_failure(result, err, code, *names)
    assert len(err.splitlines()) <= 2
    assert snapshot(inputs) == before


@pytest.mark.parametrize(
    ("argv", "environment"),
    [
        pytest.param(["--debug"], None, id="--debug"),
        pytest.param([], "1", id="MAPPER_DEBUG=1"),
        pytest.param([], "yes", id="MAPPER_DEBUG=yes"),
    ],
)
def test_debug_shows_the_traceback(
    capsys: pytest.CaptureFixture[str],
    inputs: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    environment: str | None,
) -> None:
    if environment is None:
        monkeypatch.delenv("MAPPER_DEBUG", raising=False)
    else:
        monkeypatch.setenv("MAPPER_DEBUG", environment)
    monkeypatch.setattr("mapper.cli.inspect.inspect", _raises(RuntimeError("unexpected state")))
    code, err = run(capsys, *argv, "inspect", str(inputs / "weights.npz"))
    assert code == cli.EXIT_INTERNAL
    assert err.startswith("Traceback (most recent call last):")
    assert "in verb" in err and err.rstrip().endswith("mapper: internal error: RuntimeError: unexpected state")


def test_debug_shows_where_a_reported_error_came_from(capsys: pytest.CaptureFixture[str], inputs: Path) -> None:
    (inputs / "models.py").write_text("def build():\n    raise ValueError('no weights here')\n", encoding="utf-8")
    spec = f"{inputs / 'models.py'}:build"
    code, err = run(capsys, "--debug", "suggest", "--source", str(inputs / "weights.npz"), "--target", spec)
    assert code == cli.EXIT_INPUT
    assert "ValueError: no weights here" in err and "The above exception was the direct cause" in err
    assert err.rstrip().splitlines()[-1].startswith("mapper: error: --target")


@pytest.mark.parametrize("debug", [["--debug"], []])
def test_debug_changes_no_exit_code_or_result(
    capsys: pytest.CaptureFixture[str], inputs: Path, debug: list[str]
) -> None:
    code, err = run(capsys, *debug, "validate", str(inputs / "rules.toml"))
    assert (code, err) == (cli.EXIT_OK, "")


# --- diff inputs: plan JSON the CLI parses itself; not a plan is exit 1, as for any invalid plan -------------------


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


DIFF_INPUTS = [
    # (id, the bytes of the 'old' plan file, exit code, what stderr must say besides the file name)
    ("100000-nested-arrays", _deep(100_000).encode(), cli.EXIT_PROBLEMS, ["not a plan", "more than 64 levels deep"]),
    ("100000-nested-objects", ('{"a":' * 100_000 + "1" + "}" * 100_000).encode(), cli.EXIT_PROBLEMS,
     ["not a plan", "levels deep"]),
    ("deep-inside-a-plan", json.dumps({"format": 2, "rule_files": []})[:-1].encode() + b', "x": ' + _deep(5000).encode()
     + b"}", cli.EXIT_PROBLEMS, ["more than 64 levels deep"]),
    ("unclosed-nesting", ("[" * 100_000).encode(), cli.EXIT_PROBLEMS, ["more than 64 levels deep"]),
    ("invalid-json", b"{ not json", cli.EXIT_PROBLEMS, ["not a plan: invalid JSON"]),
    ("not-utf-8", b'{"format": 2, "source": "\xff\xfe"}', cli.EXIT_PROBLEMS, ["not a plan: not UTF-8", "0xff"]),
    ("empty", b"", cli.EXIT_PROBLEMS, ["not a plan"]),
    ("a-number", b"12", cli.EXIT_PROBLEMS, ["plan format None is not supported"]),
    ("other-format", b'{"format": 99}', cli.EXIT_PROBLEMS, ["plan format 99 is not supported"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "code", "names"), [pytest.param(*row[1:], id=row[0]) for row in DIFF_INPUTS])
def test_diff_refuses_what_is_not_a_plan(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: bytes, code: int, names: list[str]
) -> None:
    (tmp_path / "old.json").write_bytes(text)
    (tmp_path / "new.json").write_text('{"format": 2}', encoding="utf-8")
    before = snapshot(tmp_path)
    result, err = run(capsys, "diff", str(tmp_path / "old.json"), str(tmp_path / "new.json"))
    assert_named_failure(result, err, code, str(tmp_path / "old.json"), *names)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("make", "names"),
    [
        pytest.param(lambda path: path.mkdir(), ["cannot read", "Is a directory"], id="a-directory"),
        pytest.param(lambda path: None, ["cannot read", "No such file"], id="missing"),
        pytest.param(lambda path: path.symlink_to(path.parent / "nowhere.json"), ["cannot read"], id="dangling-link"),
    ],
)
def test_diff_of_a_plan_file_that_cannot_be_read_is_exit_3(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, make: Callable[[Path], object], names: list[str]
) -> None:
    make(tmp_path / "old.json")
    code, err = run(capsys, "diff", str(tmp_path / "old.json"), str(tmp_path / "old.json"))
    assert_named_failure(code, err, cli.EXIT_INPUT, str(tmp_path / "old.json"), *names)


# --- signals: SIGTERM is handled like Ctrl-C (cleanup runs), 143; SIGINT stays 130 --------------------------------


def _mapper(*argv: str, **options: object) -> subprocess.Popen[str]:
    """``python -m mapper ARGV`` on this checkout, its output captured as text."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    environment.pop("MAPPER_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, *argv], env=environment, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options
    )  # type: ignore[call-overload]


def _open_for_writing_once_read(fifo: Path, process: subprocess.Popen[str], timeout: float = 60) -> int:
    """Open ``fifo`` for writing as soon as ``process`` has opened it for reading (so it now waits in a read)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as problem:  # ENXIO: no reader yet
            if problem.errno != errno.ENXIO or process.poll() is not None:
                raise AssertionError(f"mapper ended before reading {fifo}: {process.communicate()}") from problem
        time.sleep(0.02)
    raise AssertionError(f"mapper did not open {fifo} within {timeout}s")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize(
    ("sent", "code", "message"),
    [
        pytest.param(signal.SIGTERM, cli.EXIT_TERMINATED, "mapper: error: interrupted (SIGTERM)", id="SIGTERM"),
        pytest.param(signal.SIGINT, cli.EXIT_INTERRUPTED, "mapper: error: interrupted", id="SIGINT"),
    ],
)
def test_a_signal_while_waiting_for_input(tmp_path: Path, sent: signal.Signals, code: int, message: str) -> None:
    """A real signal from outside, while ``mapper diff`` blocks reading a named pipe: exit 128 + signal, no traceback."""
    fifo = tmp_path / "old.json"
    os.mkfifo(fifo)
    (tmp_path / "new.json").write_text('{"format": 2}', encoding="utf-8")
    process = _mapper("-m", "mapper", "diff", str(fifo), str(tmp_path / "new.json"))
    writer = _open_for_writing_once_read(fifo, process)
    try:
        process.send_signal(sent)
        out, err = process.communicate(timeout=60)
    finally:
        os.close(writer)
    assert_named_failure(process.returncode, err, code, message)
    assert err.strip() == message and out == ""


# The convert is stopped part-way by a real signal, sent from its own progress callback after the first batch is
# written (so the output's temporary file exists): deterministic, and the cleanup that runs is the library's.
_SIGNAL_MID_CONVERT = """
import os, signal, sys
import mapper.cli.convert
from mapper.cli import main

class SignalAfterFirstBatch:
    def __call__(self, done, total):
        print("files beside the output at the signal:", os.listdir(os.path.dirname(sys.argv[4])), file=sys.stderr)
        os.kill(os.getpid(), signal.{name})
    def close(self):
        pass

mapper.cli.convert.progress_bar = lambda quiet, verb="converting": SignalAfterFirstBatch()
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.tf
@pytest.mark.parametrize(
    ("sent", "code", "message"),
    [
        pytest.param(signal.SIGTERM, cli.EXIT_TERMINATED, "interrupted (SIGTERM)", id="SIGTERM"),
        pytest.param(signal.SIGINT, cli.EXIT_INTERRUPTED, "interrupted", id="SIGINT"),
    ],
)
@pytest.mark.parametrize("output", ["out.safetensors", "out.weights.h5", "out-ckpt"])
def test_a_signal_mid_convert_leaves_no_temporary_file(
    inputs: Path, sent: signal.Signals, code: int, message: str, output: str
) -> None:
    (inputs / "out").mkdir()
    before = snapshot(inputs)
    script = textwrap.dedent(_SIGNAL_MID_CONVERT).format(name=sent.name)
    argv = ["convert", str(inputs / "rules.toml"), str(inputs / "weights.npz"), str(inputs / "out" / output), "-q"]
    process = _mapper("-c", script, *argv)
    _, err = process.communicate(timeout=300)
    assert_named_failure(process.returncode, err, code, message, "files beside the output at the signal: ['.out")
    assert list((inputs / "out").iterdir()) == [], "temporary files were left beside the output"
    assert snapshot(inputs) == before


def test_sigterm_in_process_restores_the_previous_handler(
    capsys: pytest.CaptureFixture[str], inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def terminated(*args: object) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the SIGTERM handler raises as soon as os.kill returns")

    monkeypatch.setattr("mapper.cli.inspect.inspect", terminated)
    previous = signal.getsignal(signal.SIGTERM)
    code, err = run(capsys, "inspect", str(inputs / "weights.npz"))
    assert_named_failure(code, err, cli.EXIT_TERMINATED, "mapper: error: interrupted (SIGTERM)")
    assert signal.getsignal(signal.SIGTERM) is previous


# --- broken pipes: `mapper inspect ... | head -1` ends quietly with 141 -------------------------------------------


@pytest.mark.parametrize("format_", ["text", "json"])
def test_a_reader_that_goes_away_is_a_quiet_exit_141(tmp_path: Path, format_: str) -> None:
    # Far more output than a pipe and stdout's buffer hold, so mapper is still writing when the reader leaves.
    np.savez(tmp_path / "many.npz", **{f"encoder/layer_{i}/attention/w": np.zeros(1, "float32") for i in range(5000)})
    before = snapshot(tmp_path)
    process = _mapper("-m", "mapper", "inspect", str(tmp_path / "many.npz"), "--format", format_)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # what `head -1` does after its line
    with process.stderr:
        err = process.stderr.read()
    process.wait(timeout=120)
    assert first.strip()
    assert_named_failure(process.returncode, err, cli.EXIT_BROKEN_PIPE)
    assert err == "", err  # neither a traceback nor Python's "Exception ignored ... BrokenPipeError" at exit
    assert snapshot(tmp_path) == before


# --- every exit code is documented in --help ----------------------------------------------------------------------

EXIT_CODES = {name: value for name, value in vars(cli).items() if name.startswith("EXIT_") and isinstance(value, int)}


@pytest.mark.parametrize("verb", [[], ["plan"], ["apply"], ["validate"], ["convert"], ["explain"], ["diff"]])
def test_help_documents_every_exit_code(capsys: pytest.CaptureFixture[str], verb: list[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([*verb, "--help"])
    codes = capsys.readouterr().out.split("exit codes:\n", 1)[1]
    documented = {int(line.split()[0]) for line in codes.splitlines() if line[:2] == "  " and line.split()[0].isdigit()}
    assert documented == set(EXIT_CODES.values()) - ({cli.EXIT_APPLY, cli.EXIT_OUTPUT} if verb == ["diff"] else set())
    assert "--debug" in codes and "MAPPER_DEBUG=1" in codes
