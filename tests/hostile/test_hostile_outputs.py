"""Hostile outputs: every output kind against every fault, as a table; the output is refused or written, never half.

Each case asserts the error class (OutputError), that its message names the output and the cause, that nothing
but the output's own files changed in its directory, and that the source is unchanged. Disk faults and SIGTERM
run in a child process, so that a crash (h5py on a full disk) fails the case instead of killing pytest.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from outputs_support import (
    KINDS,
    make_read_only,
    outcome_of,
    output_path,
    own_files,
    perform,
    run_child,
    snapshot,
    tmpfs,
    write_source,
)

from mapper.interrupts import EXIT_TERMINATED

pytestmark = pytest.mark.tf

READ_ONLY_CAUSES = ("permission denied", "read-only file system")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_source(tmp_path / "source")


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a tmpfs of a given size (unmounted at the end); skips when not root or when mount fails."""
    with_mounts: list[Any] = []

    def mount_one(size: str) -> Path:
        context = tmpfs(tmp_path / f"mnt{len(with_mounts)}", size)
        try:
            directory = context.__enter__()
        except RuntimeError as reason:
            pytest.skip(f"needs a small tmpfs for a full disk: {reason}")
        with_mounts.append(context)
        return directory

    yield mount_one
    for context in reversed(with_mounts):
        context.__exit__(None, None, None)


def case(kind: str, output: Path, source: Path, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "output": str(output), "source": str(source), **extra}


def assert_refused(outcome: dict[str, Any], output: Path, *causes: str) -> None:
    assert outcome.get("error") == "OutputError", outcome
    assert "TargetError" in outcome["bases"]  # every existing `except TargetError` still catches it
    assert str(output) in outcome["message"] or repr(str(output)) in outcome["message"]
    assert any(cause in outcome["message"] for cause in causes), outcome["message"]


# --- refused before any work: in this process ---------------------------------------------------------------------


def _exists(tmp_path: Path, kind: str, source: Path) -> tuple[Path, dict[str, Any], tuple[str, ...]]:
    directory = tmp_path / "out"
    directory.mkdir()
    output = output_path(directory, kind)
    assert perform(case(kind, output, source)) == {"ok": True}
    return output, case(kind, output, source), ("already exists",)


def _missing_directory(tmp_path: Path, kind: str, source: Path) -> tuple[Path, dict[str, Any], tuple[str, ...]]:
    (tmp_path / "out").mkdir()
    output = output_path(tmp_path / "out" / "missing", kind)
    return output, case(kind, output, source), ("does not exist",)


def _directory_as_output(tmp_path: Path, kind: str, source: Path) -> tuple[Path, dict[str, Any], tuple[str, ...]]:
    output = output_path(tmp_path / "out", kind)
    output.mkdir(parents=True)
    return output, case(kind, output, source), ("it is a directory",)


PRE_CHECKS = {"exists": _exists, "missing-directory": _missing_directory, "directory": _directory_as_output}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", PRE_CHECKS)
def test_refused_before_any_work(tmp_path: Path, source: Path, kind: str, fault: str) -> None:
    output, spec, causes = PRE_CHECKS[fault](tmp_path, kind, source)
    before, source_digest = snapshot(tmp_path / "out"), digest(source)

    assert_refused(perform(spec), output, *causes)
    assert snapshot(tmp_path / "out") == before
    assert digest(source) == source_digest


@pytest.mark.parametrize("kind", KINDS)
def test_glob_characters_touch_only_the_output(tmp_path: Path, source: Path, kind: str) -> None:
    directory = tmp_path / "out"
    directory.mkdir()
    neighbours = ["c1.safetensors", "cx.weights.h5", "c1.index", "c1.data-00000-of-00001", "c.index"]
    for name in neighbours:
        (directory / name).write_bytes(name.encode())
    output = output_path(directory, kind, "c[1]*?")
    before, source_digest = snapshot(directory), digest(source)

    outcome = perform(case(kind, output, source, overwrite=True))

    if kind in ("tf-checkpoint", "save-tf"):  # TensorFlow could never read a checkpoint with '[' back
        assert_refused(outcome, output, "could never be read back")
        assert snapshot(directory) == before
    else:
        assert outcome == {"ok": True}
        after = snapshot(directory)
        assert set(after) - set(before) == own_files(output, kind)
        assert {name: after[name] for name in before} == before
    assert digest(source) == source_digest


@pytest.mark.parametrize("kind", KINDS)
def test_read_only_directory_is_refused(tmp_path: Path, source: Path, kind: str, mount: Callable[[str], Path]) -> None:
    directory = mount("4m") if os.geteuid() == 0 else tmp_path / "ro"
    directory.mkdir(exist_ok=True)
    (directory / "other.txt").write_text("someone else's")
    make_read_only(directory)
    output = output_path(directory, kind)
    before, source_digest = snapshot(directory), digest(source)

    assert_refused(perform(case(kind, output, source, overwrite=True)), output, *READ_ONLY_CAUSES)
    assert snapshot(directory) == before
    assert digest(source) == source_digest


# --- disk faults and SIGTERM: in a child process ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_full_disk_is_refused_before_writing(source: Path, kind: str, mount: Callable[[str], Path]) -> None:
    directory = mount("1m") / "out"
    directory.mkdir()
    output = output_path(directory, kind)
    source_digest = digest(source)

    assert_refused(outcome_of(run_child(case(kind, output, source))), output, "no space left on device")
    assert snapshot(directory) == {}
    assert digest(source) == source_digest


@pytest.mark.parametrize("kind", ["tf-checkpoint", "safetensors", "keras-h5"])
def test_disk_filling_up_while_writing_fails_cleanly(source: Path, kind: str, mount: Callable[[str], Path]) -> None:
    volume = mount("4m")
    directory = volume / "out"
    directory.mkdir()
    output = output_path(directory, kind)
    source_digest = digest(source)

    completed = run_child(case(kind, output, source, fill=str(volume / "filler")))

    assert_refused(outcome_of(completed), output, "no space left on device")
    assert "nothing was written" in outcome_of(completed)["message"]
    assert snapshot(directory) == {}
    assert digest(source) == source_digest


@pytest.mark.parametrize("kind", KINDS)
def test_file_size_limit_fails_cleanly(tmp_path: Path, source: Path, kind: str) -> None:
    directory = tmp_path / "out"
    directory.mkdir()
    output = output_path(directory, kind)
    source_digest = digest(source)

    # Over one tensor (512 KiB), under one batch of two: a TF checkpoint meets the limit while writing a shard.
    outcome = outcome_of(run_child(case(kind, output, source, fsize=700_000)))

    assert_refused(outcome, output, "file size limit")
    assert snapshot(directory) == {}
    assert digest(source) == source_digest


@pytest.mark.parametrize("kind", KINDS)
def test_sigterm_removes_the_temporary_files(tmp_path: Path, source: Path, kind: str) -> None:
    directory = tmp_path / "out"
    directory.mkdir()
    (directory / "other.txt").write_text("someone else's")
    output = output_path(directory, kind)
    before, source_digest = snapshot(directory), digest(source)

    completed = run_child(case(kind, output, source, sigterm=True))

    assert completed.returncode == EXIT_TERMINATED, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    assert snapshot(directory) == before
    assert digest(source) == source_digest
