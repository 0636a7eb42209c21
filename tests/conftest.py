"""Shared pytest setup: quiet TensorFlow logs, two logical CPU devices for the distribution tests."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --- two logical CPU devices, for the tf.distribute.MirroredStrategy tests (tests/test_executor.py) ---
def pytest_collection_finish(session: object) -> None:
    """Split the CPU into two logical devices once, after collection and before any test runs.

    TensorFlow accepts this only before it initialises its devices, which importing it does not do;
    doing it here costs nothing when no collected test imported TensorFlow.
    """
    import contextlib
    import sys

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
