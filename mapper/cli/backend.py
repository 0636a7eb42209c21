"""The Keras backend a command runs on (chosen as Keras chooses it), and which commands need TensorFlow."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from mapper.cli.inputs import UsageError
from mapper.errors import ApplyError, TargetError

BACKENDS = ("tensorflow", "jax", "torch")
_INSTALL_TENSORFLOW = "pip install 'weight-mapper[tensorflow]' (or 'weight-mapper[tensorflow-cpu]')"
# Commands that build a Keras model whatever their options say.
_MODEL_COMMANDS = frozenset({"apply", "demo", "export"})
# Commands that, on the TensorFlow backend, always load TensorFlow (a Keras model, or tensors streamed through it).
_TENSORFLOW_COMMANDS = frozenset({"plan", "apply", "demo", "convert", "export"})


def configured_backend(environ: Mapping[str, str] = os.environ) -> str:
    """The Keras backend as Keras chooses it: the one it runs on once imported, else ``backend_setting``.

    Example:
        >>> configured_backend() in BACKENDS
        True
    """
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return str(keras.backend.backend())
    return backend_setting(environ)


def backend_setting(environ: Mapping[str, str]) -> str:
    """The backend Keras would import: ``KERAS_BACKEND``, else the ``backend`` of ``keras.json``, else tensorflow.

    The name is not checked here (see ``selected_backend``).

    Example:
        >>> backend_setting({"KERAS_BACKEND": "jax"}), backend_setting({"KERAS_HOME": "/no/such/dir"})
        ('jax', 'tensorflow')
    """
    return environ.get("KERAS_BACKEND", "") or _keras_json_backend(environ) or "tensorflow"


def _keras_json_backend(environ: Mapping[str, str]) -> str | None:
    """The ``backend`` of Keras's ``keras.json`` (in ``KERAS_HOME``, else ``~/.keras``, else ``/tmp/.keras``)."""
    if "KERAS_HOME" in environ:
        home = Path(environ["KERAS_HOME"])
    else:
        base = Path.home()
        home = (base if os.access(base, os.W_OK) else Path("/tmp")) / ".keras"  # as Keras does
    try:
        config = json.loads((home / "keras.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    backend = config.get("backend") if isinstance(config, dict) else None
    return backend if isinstance(backend, str) and backend else None


def loads_a_model(args: argparse.Namespace) -> bool:
    """Whether the command builds a Keras model: ``apply``, ``demo``, ``export``, or any command given ``--target``.

    Example:
        >>> loads_a_model(argparse.Namespace(command="validate")), loads_a_model(argparse.Namespace(command="demo"))
        (False, True)
    """
    return args.command in _MODEL_COMMANDS or bool(getattr(args, "target", None))


def selected_backend(args: argparse.Namespace, backend: str | None = None) -> str:
    """The Keras backend the command runs on (``backend``, else ``configured_backend()``), checked if it builds a model.

    Raises:
        UsageError: the command builds a model (``loads_a_model``) and the backend is not tensorflow, jax or torch;
            the CLI exits with 2.

    Example:
        >>> selected_backend(argparse.Namespace(command="validate"), "nope")
        'nope'
        >>> selected_backend(argparse.Namespace(command="demo"), "nope")
        Traceback (most recent call last):
        mapper.cli.inputs.UsageError: KERAS_BACKEND='nope' is not a Keras backend weight-mapper runs on; ...
    """
    chosen = configured_backend() if backend is None else backend
    if chosen in BACKENDS or not loads_a_model(args):
        return chosen
    named = f"KERAS_BACKEND={chosen!r}" if os.environ.get("KERAS_BACKEND") or backend is not None else None
    raise UsageError(
        f"{named or f'the backend {chosen!r} of keras.json'} is not a Keras backend weight-mapper runs on; set "
        f"KERAS_BACKEND to one of {', '.join(BACKENDS)} (unset, Keras reads ~/.keras/keras.json, else uses tensorflow)"
    )


def importable(package: str) -> bool:
    """Whether ``package`` can be imported (it is installed and not blocked), without importing it.

    Example:
        >>> importable("json"), importable("no_such_package_here")
        (True, False)
    """
    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def check_backend_installed(backend: str) -> None:
    """TargetError naming what to install unless Keras and the package of its backend ``backend`` can be imported.

    Example:
        >>> check_backend_installed("no-such-backend")
        Traceback (most recent call last):
        mapper.errors.TargetError: the Keras backend is 'no-such-backend', which weight-mapper does not run on; ...
    """
    if backend not in BACKENDS:
        raise TargetError(
            f"the Keras backend is {backend!r}, which weight-mapper does not run on; set KERAS_BACKEND to one of "
            f"{', '.join(BACKENDS)}"
        )
    missing = next((package for package in (backend, "keras") if not importable(package)), None)
    if missing is not None:
        raise TargetError(f"the Keras backend is {backend!r}, but {missing} is not installed: {install_hint(backend)}")


def install_hint(backend: str) -> str:
    """What to install to run Keras on ``backend``, and the other choices, for a message.

    Example:
        >>> install_hint("jax")
        "pip install 'weight-mapper[jax]', or set KERAS_BACKEND to tensorflow or torch if you have that installed"
    """
    others = " or ".join(name for name in BACKENDS if name != backend)
    install = _INSTALL_TENSORFLOW if backend == "tensorflow" else f"pip install 'weight-mapper[{backend}]'"
    return f"{install}, or set KERAS_BACKEND to {others} if you have that installed"


def missing_package_hint(problem: BaseException) -> str:
    """``; pip install ...`` when ``problem`` is a missing Keras or Keras backend package, else "".

    Example:
        >>> missing_package_hint(ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow"))
        "; pip install 'weight-mapper[tensorflow]' (or 'weight-mapper[tensorflow-cpu]'), or set KERAS_BACKEND to ..."
        >>> missing_package_hint(ValueError("no"))
        ''
    """
    if not isinstance(problem, ModuleNotFoundError) or problem.name is None:
        return ""
    package = problem.name.split(".")[0]
    if package == "keras":
        package = configured_backend()
    return f"; {install_hint(package)}" if package in BACKENDS else ""


def check_method(method: str, backend: str) -> None:
    """ApplyError, before any work, when ``--method init_from_checkpoint`` cannot run: it needs TensorFlow.

    ``tf.compat.v1.train.init_from_checkpoint`` initialises ``tf.Variable``s, which a Keras model's variables are
    only on the TensorFlow backend.

    Example:
        >>> check_method("assign", "jax")
        >>> check_method("init_from_checkpoint", "jax")
        Traceback (most recent call last):
        mapper.errors.ApplyError: --method init_from_checkpoint runs TensorFlow's tf.compat.v1.train.init_from_checkpoint, ...
    """
    if method != "init_from_checkpoint":
        return
    if backend != "tensorflow":
        raise ApplyError(
            "--method init_from_checkpoint runs TensorFlow's tf.compat.v1.train.init_from_checkpoint, which fills "
            f"tf.Variables, and on the Keras backend {backend!r} a model's variables are not tf.Variables; use "
            "--method assign (any backend), or KERAS_BACKEND=tensorflow; nothing was changed"
        )
    if not importable("tensorflow"):
        raise ApplyError(
            "--method init_from_checkpoint runs TensorFlow's tf.compat.v1.train.init_from_checkpoint, and "
            f"TensorFlow is not installed: use --method assign, or {_INSTALL_TENSORFLOW}; nothing was changed"
        )


def needs_tensorflow(args: argparse.Namespace, backend: str) -> bool:
    """Whether the command will load TensorFlow, so that the CLI imports it quietly first.

    On the TensorFlow backend: the commands that build a Keras model or stream tensors, any ``--target``, and TF
    checkpoint sources (whose string tensors TensorFlow reads). On JAX and PyTorch, none: what needs TensorFlow
    there (a TF checkpoint output, ``--method init_from_checkpoint``) is refused before any work, and a source that
    needs it (a TF checkpoint's string tensors) imports it itself.

    Example:
        >>> needs_tensorflow(argparse.Namespace(command="validate", source=None), "tensorflow")
        False
        >>> needs_tensorflow(argparse.Namespace(command="apply", source=["w.npz"], target="m.py:build"), "tensorflow")
        True
        >>> needs_tensorflow(argparse.Namespace(command="apply", source=["w.npz"], target="m.py:build"), "jax")
        False
    """
    from mapper.cli.inputs import reads_a_tf_checkpoint

    if backend != "tensorflow":
        return False
    if args.command in _TENSORFLOW_COMMANDS or getattr(args, "target", None):
        return True
    return reads_a_tf_checkpoint(args)


__all__ = [
    "BACKENDS",
    "check_backend_installed",
    "check_method",
    "backend_setting",
    "configured_backend",
    "importable",
    "install_hint",
    "loads_a_model",
    "missing_package_hint",
    "needs_tensorflow",
    "selected_backend",
]
