"""Support for the hostile-output table: one write (convert or save), run here or in a child process, and its outcome.

Run as a script (``python outputs_support.py '<json case>'``), it performs the case and prints its outcome as one
JSON line; a fault that kills the process (a segmentation fault, SIGTERM) shows in the exit code instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

IDENTITY = "format = 1\n[[rules]]\nmatch = '(?P<name>.+)'\ntarget = '{name}'\n"
# Four 512 KiB tensors; batches of two, so that a fault can strike after the first batch was written.
TENSORS = 4
SHAPE = (256, 512)
BATCH_BYTES = 1_100_000
# How each output kind is written: convert (through a writer) or save_target after apply, and the file suffix.
KINDS = {
    "tf-checkpoint": ("convert", ""),
    "safetensors": ("convert", ".safetensors"),
    "keras-h5": ("convert", ".weights.h5"),
    "save-tf": ("save", ""),
    "save-keras": ("save", ".weights.h5"),
}


def snapshot(directory: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``directory``, hidden ones too."""
    return {
        str(file.relative_to(directory)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(directory.rglob("*"))
        if file.is_file()
    }


def write_source(directory: Path) -> Path:
    """An npz source of ``TENSORS`` float32 tensors of ``SHAPE``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    path = directory / "source.npz"
    np.savez(path, **{f"layers/t{index}/vars/0": rng.random(SHAPE, np.float32) for index in range(TENSORS)})
    return path


def output_path(directory: Path, kind: str, stem: str = "model") -> Path:
    return directory / f"{stem}{KINDS[kind][1]}"


def own_files(output: Path, kind: str) -> set[str]:
    """Names in the output's directory that belong to the output (a TF checkpoint: its index and data files)."""
    if KINDS[kind][1]:
        return {output.name}
    return {file.name for file in output.parent.iterdir() if file.name.startswith(f"{output.name}.")}


# --- one case, performed ----------------------------------------------------------------------------------------


def perform(case: dict[str, Any]) -> dict[str, Any]:
    """Write the case's output; the outcome is ``{"ok": True}`` or the error's class, bases, message, errno."""
    if case.get("fsize"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"], resource.RLIM_INFINITY))
    try:
        if KINDS[case["kind"]][0] == "convert":
            _convert(case)
        else:
            _save(case)
    except Exception as error:
        return {
            "error": type(error).__name__,
            "bases": [base.__name__ for base in type(error).__mro__],
            "message": str(error),
            "errno": getattr(error, "errno", None),
        }
    return {"ok": True}


def _after_first_batch(case: dict[str, Any]) -> None:
    if case.get("fill"):
        fill(Path(case["fill"]))
    if case.get("sigterm"):
        os.kill(os.getpid(), signal.SIGTERM)


def _convert(case: dict[str, Any]) -> None:
    from mapper.api import convert
    from mapper.rules import parse_rules
    from mapper.sources.npz import NpzSource

    def progress(done: int, total: int) -> None:
        if done < total:
            _after_first_batch(case)

    convert(
        parse_rules(IDENTITY),
        NpzSource(case["source"]),
        case["output"],
        format=None if case["kind"] == "tf-checkpoint" else case["kind"],
        overwrite=case.get("overwrite", False),
        progress=progress,
        batch_bytes=BATCH_BYTES,
    )


def _save(case: dict[str, Any]) -> None:
    import keras
    import tensorflow as tf

    from mapper.outputs.save import save_target
    from mapper.sources.npz import NpzSource
    from mapper.targets import target_from

    class Model(keras.Sequential):  # type: ignore[misc]
        def save_weights(self, *args: Any, **kwargs: Any) -> None:
            super().save_weights(*args, **kwargs)
            _after_first_batch(case)

    if case.get("sigterm") or case.get("fill"):
        write = tf.train.Checkpoint.write

        def write_then_fault(self: Any, *args: Any, **kwargs: Any) -> Any:
            written = write(self, *args, **kwargs)
            _after_first_batch(case)
            return written

        tf.train.Checkpoint.write = write_then_fault
    model = Model([keras.Input((512,)), keras.layers.Dense(1024)])
    save_target(
        target_from(model),
        Path(case["output"]),
        overwrite=case.get("overwrite", False),
        sources=[NpzSource(case["source"])],
    )


def fill(path: Path) -> None:
    """Fill the file system of ``path`` with a file there, until no byte more fits."""
    with path.open("wb", buffering=0) as file:  # unbuffered: nothing left to fail when it is closed
        for size in (65536, 1):  # big pieces, then the last few bytes one at a time
            with contextlib.suppress(OSError):
                while True:
                    file.write(b"\0" * size)


def run_child(case: dict[str, Any], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Perform ``case`` in a child Python process with the current worktree's ``mapper`` importable."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, __file__, json.dumps(case)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=root,
        check=False,
    )


def outcome_of(completed: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON outcome a child printed last."""
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    assert completed.returncode == 0 and lines, (
        f"the child died (exit {completed.returncode}):\n{completed.stdout}\n{completed.stderr[-3000:]}"
    )
    return dict(json.loads(lines[-1]))


# --- file systems -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``directory`` for the block; RuntimeError says why one cannot be mounted."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise RuntimeError("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        raise RuntimeError(f"mount -t tmpfs failed: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


def make_read_only(directory: Path) -> None:
    """Make ``directory`` refuse new files: remount its tmpfs read-only (root), or take away write permission."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True, capture_output=True)
    else:
        directory.chmod(0o555)


if __name__ == "__main__":
    print(json.dumps(perform(json.loads(sys.argv[1]))), flush=True)
