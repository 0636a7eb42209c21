"""Saving a target's weights after apply: to a Keras .weights.h5 (any backend) or a TF checkpoint, never half a file."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

from mapper.errors import OutputError, TargetError
from mapper.interrupts import sigterm_raises
from mapper.outputs import files
from mapper.outputs.faults import check_room, faults_named, h5_size
from mapper.outputs.files import OutputFormat
from mapper.sources.base import Source
from mapper.targets.base import VariableTarget

_KERAS_SUFFIX = ".weights.h5"
# Suffixes of file formats a saved model's weights are not written in: apply writes a ``.weights.h5`` file or a TF
# checkpoint prefix, so ``model.h5`` would silently become ``model.h5.index`` and ``model.h5.data-*``.
_FILE_SUFFIXES = frozenset({".h5", ".hdf5", ".keras", ".safetensors", ".npz", ".bin", ".pt", ".pth"})


def save_format(path: Path) -> OutputFormat:
    """What ``save_target`` writes at ``path``: Keras weights for a ``.weights.h5`` name, else a TF checkpoint.

    Example:
        >>> save_format(Path("out/model.weights.h5")), save_format(Path("out/ckpt[1]"))
        ('keras-h5', 'tf-checkpoint')
    """
    return "keras-h5" if path.name.endswith(_KERAS_SUFFIX) else "tf-checkpoint"


def check_output(path: Path, *, overwrite: bool, sources: Iterable[Source] = (), backend: str | None = None) -> None:
    """Refuse an output before any work: a file suffix, a missing or read-only directory, an existing output, a source.

    A file suffix is refused as ``check_suffix`` says, a TF checkpoint that cannot be written as
    ``check_tf_checkpoint`` says, and a directory given as the output. An existing output is refused without
    ``overwrite``; an output that is, or shares a file with, one of ``sources`` always.

    Args:
        path: the output, as for ``save_target``.
        overwrite: an existing output may be replaced.
        sources: the sources the weights come from.
        backend: the Keras backend the saved model runs on; None if it is not a Keras model (a tf.Module).

    Example:
        >>> check_output(Path("/no/such/dir/ckpt"), overwrite=False)
        Traceback (most recent call last):
        ...
        mapper.errors.OutputError: cannot write /no/such/dir/ckpt: directory /no/such/dir does not exist; ...
    """
    check_suffix(path)
    chosen = save_format(path)
    if chosen == "tf-checkpoint":
        check_tf_checkpoint(path, backend)
    files.check_output(path, chosen, overwrite=overwrite)
    files.check_not_a_source(path, chosen, sources, action="apply")


def check_suffix(path: Path) -> None:
    """Refuse an output named like a file format it would not be written in (``model.h5``, ``model.safetensors``).

    Only a name ending in ``.weights.h5`` is written as a file; any other is a TF checkpoint prefix, so a file
    suffix in it would name a checkpoint as if it were a single file of that format.

    Raises:
        OutputError: saying what to write instead: ``NAME.weights.h5`` for Keras weights, or ``NAME`` for a TF
            checkpoint.

    Example:
        >>> check_suffix(Path("out/model.weights.h5")), check_suffix(Path("out/ckpt-1")), check_suffix(Path("bert.ckpt"))
        (None, None, None)
        >>> check_suffix(Path("out/model.h5"))
        Traceback (most recent call last):
        mapper.errors.OutputError: cannot write out/model.h5: only a name ending in .weights.h5 is saved as a file ...
    """
    suffix = path.suffix.lower()
    if path.name.endswith(_KERAS_SUFFIX) or suffix not in _FILE_SUFFIXES:
        return
    stem = path.name[: -len(suffix)].removesuffix(".weights") or "model"
    convert = "; to write a checkpoint's tensors as safetensors, use mapper convert" if suffix == ".safetensors" else ""
    raise OutputError(
        f"cannot write {path}: only a name ending in {_KERAS_SUFFIX} is saved as a file (Keras weights); any other "
        f"is a TensorFlow checkpoint prefix, so {path} would be written as {path}.index and {path}.data-*, not as "
        f"a {suffix} file; write {path.with_name(stem + _KERAS_SUFFIX)} for Keras weights, or "
        f"{path.with_name(stem)} (no file suffix) for a TF checkpoint{convert}",
        path=path,
    )


def check_tf_checkpoint(path: Path, backend: str | None) -> None:
    """Refuse a TF checkpoint output that cannot be written: TensorFlow is missing, or the model is not on it.

    A TF checkpoint is written by ``tf.train.Checkpoint``, which saves ``tf.Variable``s: a Keras model's variables
    are those only on the TensorFlow backend. Any backend can save ``NAME.weights.h5`` instead.

    Raises:
        OutputError: TensorFlow cannot be imported, or ``backend`` is a Keras backend other than tensorflow;
            the message names the ``.weights.h5`` file to write instead.

    Example:
        >>> check_tf_checkpoint(Path("out/ckpt"), "jax")
        Traceback (most recent call last):
        mapper.errors.OutputError: cannot write the TF checkpoint out/ckpt: ... write out/ckpt.weights.h5 ...
    """
    instead = f"write {path.with_name(path.name + _KERAS_SUFFIX)} (Keras weights, written on every backend)"
    if backend is not None and backend != "tensorflow":
        raise OutputError(
            f"cannot write the TF checkpoint {path}: it is written by tf.train.Checkpoint, which saves tf.Variables, "
            f"and on the Keras backend {backend!r} a model's variables are not tf.Variables; {instead}, or run on "
            "KERAS_BACKEND=tensorflow",
            path=path,
        )
    if not _tensorflow_importable():
        raise OutputError(
            f"cannot write the TF checkpoint {path}: writing one needs TensorFlow, which is not installed; {instead}, "
            "or pip install 'weight-mapper[tensorflow]' (or 'weight-mapper[tensorflow-cpu]')",
            path=path,
        )


def _tensorflow_importable() -> bool:
    """Whether ``import tensorflow`` would work (it is installed and not blocked), without importing it."""
    import importlib.util
    import sys

    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"] is not None
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def _keras_backend(obj: object) -> str | None:
    """The Keras backend ``obj`` runs on if it is a Keras model (or layer), else None."""
    import sys

    keras = sys.modules.get("keras")
    if keras is None or not isinstance(obj, keras.Layer):
        return None
    return str(keras.backend.backend())


def save_target(
    target: VariableTarget,
    path: Path,
    *,
    checkpoint_root: str = "model",
    overwrite: bool = False,
    sources: Iterable[Source] = (),
) -> None:
    """Save the target's weights, written under a temporary name and moved into place only when complete.

    A path ending in ``.weights.h5`` is written with Keras ``save_weights``, on every Keras backend; any other path
    is a TF checkpoint prefix written with ``tf.train.Checkpoint(**{checkpoint_root: model}).write``, which needs
    TensorFlow and, for a Keras model, the TensorFlow backend (see ``check_tf_checkpoint``).

    Args:
        target: the target whose model or module is saved.
        path: the ``.weights.h5`` file, or the TF checkpoint prefix (``out/ckpt`` writes ``out/ckpt.index`` and
            ``out/ckpt.data-*``).
        checkpoint_root: the keyword the model is saved under in the checkpoint.
        overwrite: replace an existing output.
        sources: the sources the weights came from: the output may not be, or share a file with, one of them.

    Raises:
        TargetError: the target has no model or module to save.
        OutputError: the output is refused (see ``check_output``; checked before anything is written), does not fit (the free space, with a margin
            for HDF5, or the file size limit), or writing it failed (a full disk, a read-only directory). Nothing
            is left at the output then: an existing one keeps its contents, and no temporary file remains (after
            SIGTERM, ``Terminated``, neither).

    Example:
        >>> import tempfile, keras
        >>> from mapper.targets import target_from
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_target(target_from(model), Path(tmp, "ckpt-1"))
        ...     sorted(file.name for file in Path(tmp).iterdir())
        ['ckpt-1.data-00000-of-00001', 'ckpt-1.index']
    """
    sources = tuple(sources)
    obj = target.obj
    check_output(path, overwrite=overwrite, sources=sources, backend=_keras_backend(obj))
    if obj is None:
        raise TargetError(
            f"cannot save {target.description}: saving needs a Keras model or a tf.Module, not bare variables"
        )
    chosen = save_format(path)
    if chosen == "keras-h5" and getattr(obj, "save_weights", None) is None:
        raise TargetError(f"cannot save {target.description} as {_KERAS_SUFFIX}: it is not a Keras model")
    _check_room(target, path, chosen)
    with (
        sigterm_raises(),
        faults_named(path),
        tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch,
    ):
        partial = Path(scratch) / path.name
        if chosen == "keras-h5":
            obj.save_weights(str(partial))  # type: ignore[attr-defined]
            _verify_h5(partial, path)
            partial.replace(path)
            return
        import tensorflow as tf

        tf.train.Checkpoint(**{checkpoint_root: obj}).write(str(partial))
        tf.train.load_checkpoint(str(partial))  # the index reads back before anything is moved into place
        files.replace_checkpoint(partial, path, files.checkpoint_files(path))


def _check_room(target: VariableTarget, path: Path, chosen: OutputFormat) -> None:
    """OutputError unless the saved weights fit: in the free space (HDF5 with a margin), under the file size limit."""
    variables = target.map.variables
    total = variables.nbytes
    if chosen == "keras-h5":  # h5py can crash when the disk fills under it: refuse before it starts
        total = h5_size(total, len(variables))
    check_room(path, total=total, largest_file=total)  # tf.train.Checkpoint writes one data file


def _verify_h5(partial: Path, path: Path) -> None:
    """OutputError unless the .weights.h5 just written opens and lists its datasets."""
    import h5py

    try:
        with h5py.File(partial, "r") as file:
            file.visit(lambda _name: None)  # reads every object header
    except (OSError, RuntimeError) as error:
        raise OutputError(
            f"cannot write {path}: the file written does not read back ({error}); nothing was moved into place",
            path=path,
        ) from error


__all__ = ["check_output", "check_suffix", "check_tf_checkpoint", "save_format", "save_target"]
