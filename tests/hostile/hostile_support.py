"""Tools for the hostile-input tests: an audit hook that records every file opened, and file fingerprints."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The lists the hook records into while ``recording`` blocks run (the innermost last). Audit hooks cannot be removed,
# so one hook is installed for the whole session and does nothing between blocks.
_recorders: list[list[str]] = []


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _recorders and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _recorders[-1].append(os.fsdecode(args[0]))


sys.addaudithook(_hook)


@contextmanager
def recording() -> Iterator[list[str]]:
    """Record the path of every file Python opens inside the block (``open``, ``os.open``, ``io.open``).

    Native code (HDF5, TensorFlow, torch's memory map) opens files the hook cannot see: the sources check those
    formats' links before native code follows them, and the tests check that no bytes of other files come out.
    """
    opened: list[str] = []
    _recorders.append(opened)
    try:
        yield opened
    finally:
        _recorders.pop()


def outside(opened: list[str], root: Path, inside: Path) -> list[str]:
    """The opened paths under ``root`` that do not lie under ``inside``, symbolic links resolved.

    Files outside ``root`` (the interpreter's modules, /proc) are not the test's business: ``root`` holds both the
    input and the files the hostile input points at.
    """
    real_root, real_inside = root.resolve(), inside.resolve()
    resolved = [Path(path).resolve() for path in opened]
    return [str(path) for path in resolved if path.is_relative_to(real_root) and not path.is_relative_to(real_inside)]


def fingerprint(root: Path) -> dict[str, str]:
    """``{relative path: sha256 or link target}`` of everything under ``root``, symbolic links not followed."""
    prints = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            prints[key] = "-> " + str(path.readlink())
        elif path.is_file():
            prints[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return prints
