"""Sources of tensors: the Source protocol, an in-memory source, and ``open_source`` for files on disk."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mapper.errors import SourceError, SourceNotFoundError
from mapper.sources import tf_checkpoint
from mapper.sources.base import Source
from mapper.sources.memory import MemorySource
from mapper.sources.tf_checkpoint import TFCheckpointSource

__all__ = ["FORMATS", "MemorySource", "Source", "SourceFormat", "TFCheckpointSource", "open_source"]


@dataclass(frozen=True)
class SourceFormat:
    """A file format ``open_source`` knows: how to recognise it from file names and how to open it.

    ``detect`` must be cheap and must not import heavy libraries; ``open`` may.

    Example:
        >>> FORMATS["tf-checkpoint"].summary
        'TensorFlow checkpoint: a prefix such as ckpt-1, its .index file, or a directory with a checkpoint file'
    """

    name: str
    summary: str
    detect: Callable[[str], bool]
    open: Callable[[str], Source]


# Formats in detection order; add new ones here (safetensors, .h5, .npz).
FORMATS: dict[str, SourceFormat] = {
    "tf-checkpoint": SourceFormat(
        "tf-checkpoint",
        "TensorFlow checkpoint: a prefix such as ckpt-1, its .index file, or a directory with a checkpoint file",
        tf_checkpoint.is_tf_checkpoint,
        TFCheckpointSource,
    ),
}


def open_source(path: str | os.PathLike[str], *, format: str | None = None) -> Source:
    """Open the checkpoint at ``path``, detecting its format from the file names unless ``format`` is given.

    Args:
        path: a file, a checkpoint prefix or a directory.
        format: one of ``FORMATS`` (``"tf-checkpoint"``); None to detect.

    Returns:
        A Source whose ``specs()`` describe the tensors without reading them.

    Raises:
        SourceNotFoundError: nothing exists at ``path``; the message names the nearest checkpoints beside it.
        SourceError: the format is unknown or cannot be detected; the message lists the supported formats.
        CorruptSourceError: the files are there but incomplete or damaged.

    Example:
        >>> import tempfile
        >>> import tensorflow as tf
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     prefix = tf.train.Checkpoint(w=tf.Variable([1.0])).write(f"{tmp}/ckpt-1")
        ...     print(type(open_source(prefix + ".index")).__name__, list(open_source(prefix).specs()))
        TFCheckpointSource ['w/.ATTRIBUTES/VARIABLE_VALUE']
        >>> open_source("weights.bin", format="pickle")
        Traceback (most recent call last):
        mapper.errors.SourceError: unknown source format 'pickle' for 'weights.bin'; supported formats: ...
    """
    text = os.fspath(path)
    if format is not None:
        known = FORMATS.get(format)
        if known is None:
            raise SourceError(f"unknown source format {format!r} for {text!r}; {_supported()}", path=text)
        return known.open(text)
    for candidate in FORMATS.values():
        if candidate.detect(text):
            return candidate.open(text)
    if not Path(text).exists():
        # Most often a mistyped checkpoint prefix: name the nearest checkpoints beside it.
        raise SourceNotFoundError(tf_checkpoint.not_found_message(text), path=text)
    kind = "directory" if Path(text).is_dir() else "file"
    raise SourceError(f"cannot tell the format of {kind} {text!r} from its name; {_supported()}", path=text)


def _supported() -> str:
    return "supported formats: " + "; ".join(f"{name!r} ({known.summary})" for name, known in FORMATS.items())
