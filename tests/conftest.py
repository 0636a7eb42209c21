"""Shared pytest setup: quiet TensorFlow logs, two logical CPU devices, and the TensorFlow-free quick run.

``MAPPER_TEST_NO_TF=1`` (``make test-quick``) runs the suite as if TensorFlow were not installed: importing
``tensorflow``, ``tf_keras``, ``keras`` or ``keras_hub`` raises ImportError, tests marked ``tf`` are deselected, and
so are the doctests of modules that import one of them (their examples build models or read TF checkpoints).
"""

from __future__ import annotations

import ast
import functools
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NO_TF = os.environ.get("MAPPER_TEST_NO_TF", "") not in ("", "0")
BLOCKED = ("tensorflow", "tf_keras", "keras", "keras_hub")


def _block_tensorflow() -> None:
    """Make every import of a blocked package fail as if it were not installed (None in sys.modules does that)."""
    loaded = [name for name in sys.modules if name.split(".")[0] in BLOCKED]
    if loaded:
        raise pytest.UsageError(f"MAPPER_TEST_NO_TF=1, but {', '.join(sorted(loaded)[:3])} was imported already")
    for name in BLOCKED:
        sys.modules[name] = None  # type: ignore[assignment]


if NO_TF:
    _block_tensorflow()


@functools.cache
def _imports_tensorflow(path: Path) -> bool:
    """Whether the module at ``path`` imports a blocked package anywhere (most do it inside the function needing it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name.split(".")[0] in BLOCKED for name in names):
            return True
    return False


def _marked_tf(path: Path) -> bool:
    """Whether the test module at ``path`` is marked ``tf`` as a whole (``pytestmark = pytest.mark.tf``, or a list)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "pytestmark" for target in node.targets):
            marks = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            return any(ast.unparse(mark) == "pytest.mark.tf" for mark in marks)
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under MAPPER_TEST_NO_TF, do not even import test modules marked ``tf``, nor modules whose doctests need TF.

    Test modules marked ``tf`` as a whole may import TensorFlow at the top. Any other module is collected only for its
    doctests, and a module that imports TensorFlow anywhere (mostly inside the function the doctest calls) is skipped.
    None, not False, for everything else: False would override ``--ignore``.
    """
    del config
    if not NO_TF or collection_path.suffix != ".py" or collection_path.name == "conftest.py":
        return None
    if collection_path.name.startswith("test_"):
        return True if _marked_tf(collection_path) else None
    return True if _imports_tensorflow(collection_path) else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under MAPPER_TEST_NO_TF, deselect the tests marked ``tf`` in modules that also hold TensorFlow-free tests."""
    if not NO_TF:
        return
    deselected = [item for item in items if item.get_closest_marker("tf")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("tf")]


# --- two logical CPU devices, for the tf.distribute.MirroredStrategy tests (tests/test_executor.py) ---
def pytest_collection_finish(session: object) -> None:
    """Split the CPU into two logical devices once, after collection and before any test runs.

    TensorFlow accepts this only before it initialises its devices, which importing it does not do;
    doing it here costs nothing when no collected test imported TensorFlow.
    """
    import contextlib

    tf = sys.modules.get("tensorflow")
    if tf is None:
        return
    cpus = tf.config.list_physical_devices("CPU")
    if len(tf.config.get_logical_device_configuration(cpus[0]) or ()) >= 2:
        return
    # RuntimeError: devices were initialised at import time; the tests that need two devices say so.
    with contextlib.suppress(RuntimeError):
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


# --- Hugging Face hub offline (tests/test_rules_hf_*.py): keras-hub imports huggingface_hub, which reads these once
# at import time, so they are set here, before any test module is collected; every test loads local directories. ---
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
