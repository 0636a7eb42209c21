"""Sources of tensors: the Source protocol, an in-memory source, and ``open_source`` for files on disk."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from mapper.errors import CorruptSourceError, SourceError, SourceNotFoundError
from mapper.sources import tf_checkpoint
from mapper.sources.base import Source
from mapper.sources.h5 import KerasH5Source, is_hdf5
from mapper.sources.memory import MemorySource
from mapper.sources.npz import NpzSource, is_npz
from mapper.sources.safetensors import SafetensorsSource, is_safetensors
from mapper.sources.tf_checkpoint import TFCheckpointSource
from mapper.sources.torch import TorchSource, is_torch_file
from mapper.specs import SourceSet, TensorSpec, VariableMap
from mapper.text import quoted

SourceLike = Source | str | os.PathLike[str]
# One source, or several by name for rule files whose rules say ``source = "name"``.
SourcesLike = SourceLike | Mapping[str, SourceLike]

__all__ = [
    "FORMATS",
    "SOURCE_CLASSES",
    "KerasH5Source",
    "MemorySource",
    "NpzSource",
    "SafetensorsSource",
    "Source",
    "SourceFormat",
    "TFCheckpointSource",
    "TorchSource",
    "SourceLike",
    "SourcesLike",
    "detect_format",
    "open_source",
    "source_specs",
]


@dataclass(frozen=True)
class SourceFormat:
    """A file format ``open_source`` knows: how to recognise it and how to open it.

    ``detect`` must be cheap (file names, a few header bytes, a zip directory) and must not import heavy
    libraries; ``open`` may. ``suffixes`` are the file name endings that make ``open_source`` try this format
    when no format recognises a file's contents, so that a damaged file gets this format's specific error.

    Example:
        >>> FORMATS["tf-checkpoint"].summary
        'TensorFlow checkpoint: a prefix such as ckpt-1, its .index file, or a directory with a checkpoint file'
    """

    name: str
    summary: str
    detect: Callable[[str], bool]
    open: Callable[[str], Source]
    suffixes: tuple[str, ...] = ()


# Formats in detection order: the first whose ``detect`` accepts a path opens it. A Hugging Face directory holding
# both model.safetensors and pytorch_model.bin therefore opens as safetensors.
FORMATS: dict[str, SourceFormat] = {
    "tf-checkpoint": SourceFormat(
        "tf-checkpoint",
        "TensorFlow checkpoint: a prefix such as ckpt-1, its .index file, or a directory with a checkpoint file",
        tf_checkpoint.is_tf_checkpoint,
        TFCheckpointSource,
    ),
    "safetensors": SourceFormat(
        "safetensors",
        "a .safetensors file, a *.safetensors.index.json shard index, or a directory holding one of them",
        is_safetensors,
        SafetensorsSource,
        (".safetensors", ".safetensors.index.json"),
    ),
    "keras-h5": SourceFormat(
        "keras-h5",
        "Keras weights in HDF5: Keras 3 .weights.h5, or Keras 2 .h5 from save_weights or model.save",
        is_hdf5,
        KerasH5Source,
        (".h5", ".hdf5"),
    ),
    "npz": SourceFormat("npz", "a NumPy .npz archive of arrays (np.savez)", is_npz, NpzSource, (".npz",)),
    "pytorch": SourceFormat(
        "pytorch",
        "a PyTorch state dict (.bin/.pt/.pth from torch.save), a *.bin.index.json shard index, or a directory "
        "holding pytorch_model.bin; needs torch",
        is_torch_file,
        TorchSource,
        (".bin", ".pt", ".pth", ".bin.index.json"),
    ),
}


# Every Source class of the package, typed so that mypy flags one that lacks a member of the Source protocol.
SOURCE_CLASSES: tuple[type[Source], ...] = (
    TFCheckpointSource,
    SafetensorsSource,
    KerasH5Source,
    NpzSource,
    TorchSource,
    MemorySource,
)


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """The name of the first format in ``FORMATS`` that recognises ``path`` from its contents, or None.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with open(f"{tmp}/weights.bin", "wb") as file:  # the name misleads, the contents do not
        ...         np.savez(file, w=np.zeros(2))
        ...     detect_format(f"{tmp}/weights.bin"), detect_format(tmp)
        ('npz', None)
    """
    text = os.fspath(path)
    return next((name for name, known in FORMATS.items() if known.detect(text)), None)


def open_source(path: str | os.PathLike[str], *, format: str | None = None) -> Source:
    """Open the checkpoint at ``path``, detecting its format from its contents unless ``format`` is given.

    Detection reads file names, a few header bytes and zip directories, never tensor data: a safetensors header,
    the HDF5 signature (Keras .h5), a zip of ``.npy`` members (.npz) or of ``*/data.pkl`` (PyTorch), a legacy
    PyTorch pickle, or TensorFlow checkpoint files. A file no format recognises but whose name ends like one
    (``.safetensors``, ``.h5``, ``.npz``, ``.bin``, ...) is tried as that format: a damaged file gets that
    format's CorruptSourceError, and a file that is not that format at all an error saying why not.

    Args:
        path: a file, a checkpoint prefix, a shard index or a directory.
        format: one of ``FORMATS`` (``"tf-checkpoint"``, ``"safetensors"``, ``"keras-h5"``, ``"npz"``,
            ``"pytorch"``); None to detect.

    Returns:
        A Source whose ``specs()`` describe the tensors without reading them.

    Raises:
        SourceNotFoundError: nothing exists at ``path``; the message names the nearest checkpoints beside it.
        SourceError: the format is unknown or cannot be detected (the message lists the supported formats), or
            the file is not in the format forced (the message says which format it looks like).
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
        return _open_as(text, format)
    detected = detect_format(text)
    if detected is not None:
        return FORMATS[detected].open(text)
    if not Path(text).is_dir():
        # A damaged or missing ``model.safetensors`` gets the safetensors error, not a generic one.
        by_suffix = [known for known in FORMATS.values() if text.endswith(known.suffixes)]
        if by_suffix:
            return _open_by_suffix(text, by_suffix[0])
    if not Path(text).exists():
        # Most often a mistyped checkpoint prefix: name the nearest checkpoints beside it.
        raise SourceNotFoundError(tf_checkpoint.not_found_message(text), path=text)
    kind = "directory" if Path(text).is_dir() else "file"
    raise SourceError(f"cannot tell the format of {kind} {text!r} from its contents; {_supported()}", path=text)


def _open_as(text: str, format: str) -> Source:
    """Open ``text`` in the format forced; a SourceError gains advice when the contents look like another format."""
    known = FORMATS.get(format)
    if known is None:
        raise SourceError(f"unknown source format {format!r} for {text!r}; {_supported()}", path=text)
    try:
        return known.open(text)
    except SourceNotFoundError:
        raise
    except SourceError as error:
        detected = detect_format(text)
        if detected is None or detected == format:
            raise
        # Same class, same path: only the advice is added.
        raise type(error)(
            f"{error}; it looks like a {detected!r} source ({FORMATS[detected].summary}): "
            f"pass format={detected!r}, or leave format out to detect it",
            path=error.path,
        ) from error


def _open_by_suffix(text: str, known: SourceFormat) -> Source:
    """Open a file no format recognised as the format its name suggests, saying why not if it is not that format."""
    try:
        return known.open(text)
    except (SourceNotFoundError, CorruptSourceError):
        raise
    except SourceError as error:  # not that format after all: say what the name suggested, and why not
        raise SourceError(
            f"cannot tell the format of file {text!r} from its contents (its name suggests "
            f"{known.name!r}, but: {error}); {_supported()}",
            path=text,
        ) from error


def source_specs(
    source: SourcesLike | Mapping[str, TensorSpec] | Mapping[str, VariableMap] | SourceSet,
) -> tuple[Mapping[str, TensorSpec] | SourceSet, str]:
    """What the planner needs of ``source``: its specs (a SourceSet for named sources) and a description.

    ``source`` is a Source, a path, a SourceSet, a VariableMap, a plain ``{name: TensorSpec}`` map (one source's
    specs), or ``{source name: Source, path or VariableMap}`` (named sources). Paths are opened, reading no tensor.

    Raises:
        SourceError: a mapping mixes tensor specs with named sources, or a path cannot be opened.

    Example:
        >>> import numpy as np
        >>> specs, described = source_specs({"head": MemorySource({"w": np.zeros(2)}, description="h.npz")})
        >>> type(specs).__name__, described
        ('SourceSet', 'head=h.npz')
        >>> source_specs({"w": TensorSpec("w", (2,), "float32"), "head": MemorySource({"w": np.zeros(2)})})
        Traceback (most recent call last):
        mapper.errors.SourceError: the sources mix tensor specs ('w') with named sources ('head'); ...
    """
    if isinstance(source, (SourceSet, VariableMap)):
        return source, source.description
    if isinstance(source, (str, os.PathLike)):
        source = open_source(source)
    if not isinstance(source, Mapping):
        return source.specs(), source.description
    specs = [name for name, value in source.items() if isinstance(value, TensorSpec)]
    if len(specs) == len(source):  # every value is a spec (or there is none): one source's specs
        return cast("Mapping[str, TensorSpec]", source), str(getattr(source, "description", None) or "source")
    if specs:
        named = [name for name in source if name not in specs]
        raise SourceError(
            f"the sources mix tensor specs ({quoted(specs)}) with named sources ({quoted(named)}); give either "
            "{name: TensorSpec} for one source or {source name: Source or path} for several",
            path="source",
        )
    maps: dict[str, VariableMap] = {}
    for name, value in source.items():
        if isinstance(value, VariableMap):
            maps[name] = value
        else:
            opened = open_source(value) if isinstance(value, (str, os.PathLike)) else cast("Source", value)
            maps[name] = VariableMap(opened.specs().values(), description=opened.description)
    named_sources = SourceSet(maps)
    return named_sources, named_sources.description


def _supported() -> str:
    return "supported formats: " + "; ".join(f"{name!r} ({known.summary})" for name, known in FORMATS.items())
