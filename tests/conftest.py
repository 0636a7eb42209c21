"""Shared pytest setup: quiet TensorFlow logs, two logical CPU devices, the TensorFlow-free runs, four JAX devices.

``MAPPER_TEST_NO_TF=1`` (``make test-quick``) runs the suite as if TensorFlow were not installed: importing
``tensorflow``, ``tf_keras``, ``keras`` or ``keras_hub`` raises ImportError, tests marked ``tf`` are deselected, and
so are the doctests of modules that import one of them (their examples build models or read TF checkpoints).

``MAPPER_TEST_BLOCK_TF=1`` (``make test`` with ``KERAS_BACKEND=jax`` or ``torch``, on ``-m backends tests/backends``)
makes only ``tensorflow`` and ``tf_keras`` unimportable: Keras and keras-hub run on the other backend, so every test
marked ``backends`` proves its part needs no TensorFlow. Under ``KERAS_BACKEND=jax`` the CPU is split into four XLA
devices (``XLA_FLAGS``, unless set), for sharded (``ModelParallel``) targets.
"""

from __future__ import annotations

import ast
import functools
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


NO_TF = _flag("MAPPER_TEST_NO_TF")
BLOCK_TF = _flag("MAPPER_TEST_BLOCK_TF")
BLOCKED = ("tensorflow", "tf_keras", "keras", "keras_hub")
TENSORFLOW = ("tensorflow", "tf_keras")  # what MAPPER_TEST_BLOCK_TF blocks: Keras itself runs on jax or torch


def _block(packages: tuple[str, ...], flag: str) -> None:
    """Make every import of ``packages`` fail as if they were not installed (None in sys.modules does that)."""
    loaded = [name for name in sys.modules if name.split(".")[0] in packages]
    if loaded:
        raise pytest.UsageError(f"{flag}=1, but {', '.join(sorted(loaded)[:3])} was imported already")
    for name in packages:
        sys.modules[name] = None  # type: ignore[assignment]


if NO_TF:
    _block(BLOCKED, "MAPPER_TEST_NO_TF")
elif BLOCK_TF:
    _block(TENSORFLOW, "MAPPER_TEST_BLOCK_TF")

# Four XLA CPU devices for the sharded JAX targets; XLA reads the flag once, when JAX first initialises a backend.
if os.environ.get("KERAS_BACKEND") == "jax":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")


def _imported(node: ast.AST) -> list[str]:
    """The top-level package names an import statement imports; [] for any other node (relative imports too)."""
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module.split(".")[0]]
    return []


def _imports_blocked(source: str) -> bool:
    """Whether Python ``source`` imports a blocked package anywhere (most modules do it inside the function)."""
    return any(name in BLOCKED for node in ast.walk(ast.parse(source)) for name in _imported(node))


@functools.cache
def _imports_tensorflow(path: Path) -> bool:
    """Whether the module at ``path`` imports a blocked package anywhere."""
    return _imports_blocked(path.read_text(encoding="utf-8"))


def _doctest_needs_tf(item: pytest.Item) -> bool:
    """A doctest needs TensorFlow if its module imports it or one of its examples does."""
    if not isinstance(item, pytest.DoctestItem) or item.dtest is None:
        return False
    if item.path.suffix == ".py" and _imports_tensorflow(item.path):
        return True
    return any(_imports_blocked(example.source) for example in item.dtest.examples)


def _marked_tf(path: Path) -> bool:
    """Whether the test module at ``path`` is marked ``tf`` as a whole (``pytestmark = pytest.mark.tf``, or a list)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "pytestmark" for target in node.targets):
            marks = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
            return any(ast.unparse(mark) == "pytest.mark.tf" for mark in marks)
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under MAPPER_TEST_NO_TF, do not import test modules marked ``tf`` or importing Keras at the top, nor helper
    modules that import TensorFlow.

    Test modules marked ``tf`` as a whole may import TensorFlow at the top; so may the helpers in tests/ (collected
    only for their doctests). A conftest's collection hooks see only its own directory: ``mapper/`` is handled in
    ``pytest_collection_modifyitems``. None, not False, for everything else: False would override ``--ignore``.
    """
    del config
    if not NO_TF or collection_path.suffix != ".py" or collection_path.name == "conftest.py":
        return None
    if collection_path.name.startswith("test_"):
        # Marked tf, or a backends module that imports Keras at its top: neither can be imported without Keras.
        return True if _marked_tf(collection_path) or _imports_at_top(collection_path, BLOCKED) else None
    return True if _imports_tensorflow(collection_path) else None


@functools.cache
def _imports_at_top(path: Path, packages: tuple[str, ...]) -> bool:
    """Whether the module at ``path`` imports one of ``packages`` outside any function or class."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(name in packages for node in body for name in _imported(node))


def _check_backend_modules(items: list[pytest.Item]) -> None:
    """A test marked ``backends`` runs on every backend: its module may not import TensorFlow at the top."""
    offending = sorted(
        {
            str(item.path)
            for item in items
            if item.get_closest_marker("backends")
            and item.path.suffix == ".py"
            and _imports_at_top(item.path, TENSORFLOW)
        }
    )
    if offending:
        raise pytest.UsageError(f"tests marked 'backends' must not import TensorFlow at module level: {offending}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under MAPPER_TEST_NO_TF, deselect the tests marked ``tf``, and the doctests that need TensorFlow.

    Test modules marked as a whole were not collected at all (``pytest_ignore_collect``); this hook sees every item,
    the doctests of ``mapper/`` included (they import without TensorFlow: the package imports it lazily). In every
    run, a module with tests marked ``backends`` must not import TensorFlow at its top.
    """
    _check_backend_modules(items)
    if not NO_TF:
        return
    deselected = [item for item in items if item.get_closest_marker("tf") or _doctest_needs_tf(item)]
    if deselected:
        chosen = set(deselected)
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in chosen]


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
