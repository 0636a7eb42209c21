"""Saving a target's weights after apply: to a TF checkpoint or a Keras .weights.h5, never half a file."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mapper.errors import TargetError
from mapper.targets.base import VariableTarget

_KERAS_SUFFIX = ".weights.h5"


def check_output(path: Path, *, overwrite: bool) -> None:
    """Refuse an output before any work is done: missing directory, or an existing output without ``overwrite``.

    Example:
        >>> check_output(Path("/no/such/dir/ckpt"), overwrite=False)
        Traceback (most recent call last):
        ...
        mapper.errors.TargetError: cannot write /no/such/dir/ckpt: directory /no/such/dir does not exist
    """
    if not path.parent.is_dir():
        raise TargetError(f"cannot write {path}: directory {path.parent} does not exist")
    if not overwrite and _existing_files(path):
        raise TargetError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")


def save_target(target: VariableTarget, path: Path, *, checkpoint_root: str = "model", overwrite: bool = False) -> None:
    """Save the target's weights, written under a temporary name and moved into place only when complete.

    A path ending in ``.weights.h5`` is written with Keras ``save_weights``; any other path is a TF checkpoint
    prefix written with ``tf.train.Checkpoint(**{checkpoint_root: model}).write``.

    Raises:
        TargetError: the target has no model or module to save, or the output is refused (see ``check_output``).

    Example:
        >>> save_target(target, Path("out/model.weights.h5"))  # doctest: +SKIP
    """
    check_output(path, overwrite=overwrite)
    obj = target.obj
    if obj is None:
        raise TargetError(
            f"cannot save {target.description}: saving needs a Keras model or a tf.Module, not bare variables"
        )
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch:
        if path.name.endswith(_KERAS_SUFFIX):
            save_weights = getattr(obj, "save_weights", None)
            if save_weights is None:
                raise TargetError(f"cannot save {target.description} as {_KERAS_SUFFIX}: it is not a Keras model")
            partial = Path(scratch) / path.name
            save_weights(str(partial))
            partial.replace(path)
            return
        import tensorflow as tf

        prefix = Path(scratch) / path.name
        tf.train.Checkpoint(**{checkpoint_root: obj}).write(str(prefix))
        for stale in _existing_files(path):
            stale.unlink()
        # The index is moved last: until it exists, the checkpoint at ``path`` is not there to be read.
        written = sorted(Path(scratch).glob(f"{path.name}.*"), key=lambda file: file.suffix == ".index")
        for file in written:
            shutil.move(str(file), path.parent / file.name)


def _existing_files(path: Path) -> list[Path]:
    if path.exists():
        return [path]
    return sorted(path.parent.glob(f"{path.name}.index")) + sorted(path.parent.glob(f"{path.name}.data-*"))
