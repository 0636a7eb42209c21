"""Keras weights in HDF5: Keras 3 ``.weights.h5`` and Keras 2 (tf-keras) ``.h5`` files, as a Source."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mapper.dtypes import ML_DTYPES
from mapper.errors import CorruptSourceError, SourceError, SourceNotFoundError
from mapper.sources._common import check_names, head, numpy_dtype, optional_import
from mapper.specs import TensorSpec, VariableMap
from mapper.text import quoted

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# HDF5 looks for its superblock at 0 and, after a user block, at 512, 1024, 2048, ...
_SUPERBLOCK_OFFSETS = (0, 512, 1024, 2048, 4096)
# The top-level groups of a Keras 3 weights file (``_layer_checkpoint_dependencies`` in files from Keras 2.13/3.0).
KERAS3_GROUPS = ("layers", "vars", "_layer_checkpoint_dependencies")
KERAS3 = "keras3"
KERAS2 = "keras2"
KERAS2_MODEL = "keras2-model"
_LAYOUTS = {
    KERAS3: "Keras 3 weights",
    KERAS2: "Keras 2 weights",
    KERAS2_MODEL: "Keras 2 whole model, weights under 'model_weights'",
}
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class _Dataset:
    """A tensor's spec and the path of its dataset in the file."""

    spec: TensorSpec
    path: str


def is_hdf5(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an HDF5 file, from its signature (at byte 0, or after a user block).

    Example:
        >>> import tempfile
        >>> import h5py
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with h5py.File(f"{tmp}/x.h5", "w") as file:
        ...         _ = file.create_dataset("w", data=[1.0])
        ...     is_hdf5(f"{tmp}/x.h5"), is_hdf5(tmp)
        (True, False)
    """
    text = os.fspath(path)
    if not Path(text).is_file():
        return False
    start = head(text, _SUPERBLOCK_OFFSETS[-1] + len(HDF5_MAGIC))
    return any(start[offset : offset + len(HDF5_MAGIC)] == HDF5_MAGIC for offset in _SUPERBLOCK_OFFSETS)


class KerasH5Source:
    """The weights in a Keras HDF5 file, described from its structure and read dataset by dataset.

    Two layouts are understood; ``layout`` says which one the file has:

    - ``"keras3"``: Keras 3 ``model.save_weights("x.weights.h5")`` (and the ``model.weights.h5`` inside a
      ``.keras`` archive). Names are the datasets' HDF5 paths: ``layers/dense/vars/0``; a nested model or layer
      adds its own groups, ``layers/sequential/layers/dense/vars/1`` or ``layers/block/proj/vars/0``. Groups are
      named after the layer class, not the layer's name (the ``vars`` group's ``name`` attribute holds that).
      Files from Keras 2.13 / early Keras 3 use ``_layer_checkpoint_dependencies`` where later ones use ``layers``;
      their names keep it.
    - ``"keras2"`` / ``"keras2-model"``: Keras 2 (tf-keras) ``save_weights("x.h5")``, and ``model.save("x.h5")``,
      whose weights are under ``model_weights``. Each layer group lists its weights in a ``weight_names``
      attribute (``d1/kernel:0``). The name of a weight is its weight name without the ``:0`` suffix, with the
      layer's name in front unless the weight name already starts with it: ``d1/kernel`` for a Dense layer
      ``d1``; ``inner/inner_d/kernel`` for the Dense ``inner_d`` inside a nested model ``inner``;
      ``bert/tf_bert_model/bert/embeddings/word_embeddings/weight`` in a Hugging Face ``tf_model.h5``.
      Names are unique because layer names are.

    bfloat16 weights are stored by h5py as 2-byte opaque data; Keras 3 marks them with a ``dtype`` attribute,
    tf-keras does not, so 2-byte opaque data is taken to be bfloat16. Specs come in the model's order.

    Attributes:
        path: the file.
        layout: ``"keras3"``, ``"keras2"`` or ``"keras2-model"``.
        description: the path and the layout.

    Raises:
        SourceNotFoundError: no file at ``path``.
        SourceError: the file is HDF5 but not Keras weights (the message says what its top level holds), or h5py
            is not installed.
        CorruptSourceError: the file is damaged, or a layer lists a weight that is not there.

    Example:
        >>> import tempfile
        >>> import h5py
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with h5py.File(f"{tmp}/m.weights.h5", "w") as file:
        ...         _ = file.create_dataset("layers/dense/vars/0", data=np.ones((4, 3), "float32"))
        ...         _ = file.create_dataset("layers/dense/vars/1", data=np.zeros(3, "float32"))
        ...     source = KerasH5Source(f"{tmp}/m.weights.h5")
        ...     print(source.layout, list(source.specs()), source.read(["layers/dense/vars/0"])["layers/dense/vars/0"].sum())
        keras3 ['layers/dense/vars/0', 'layers/dense/vars/1'] 12.0
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: str = os.fspath(path)
        if not Path(self.path).is_file():
            raise SourceNotFoundError(f"no Keras .h5 file at {self.path!r}", path=self.path)
        if not is_hdf5(self.path):
            raise SourceError(
                f"{self.path!r} is not an HDF5 file (it does not carry the HDF5 signature; first bytes "
                f"{head(self.path, 8)!r}), so it cannot hold Keras .h5 weights",
                path=self.path,
            )
        with self._open() as file:
            self.layout: str = _layout(self.path, file)
            datasets = list(
                _keras3(self.path, file) if self.layout == KERAS3 else _keras2(self.path, file, self.layout)
            )
        self._datasets = {dataset.spec.name: dataset for dataset in datasets}
        self.description: str = f"{self.path} ({_LAYOUTS[self.layout]})"
        self._specs = VariableMap((dataset.spec for dataset in datasets), description=self.path)

    checkpoint_prefix: str | None = None  # not a TF checkpoint
    hands_over_reads = False  # h5py arrays are not aligned for a zero-copy hand-over

    def input_files(self) -> tuple[Path, ...]:
        """The HDF5 file."""
        return (Path(self.path),)

    def __repr__(self) -> str:
        return f"KerasH5Source({self.path!r}, {self.layout}, {len(self._datasets)} tensors)"

    def specs(self) -> VariableMap:
        """Names, shapes and dtypes of every weight, in the model's order, from the structure read at open.

        Example:
            >>> import tempfile
            >>> import h5py
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     with h5py.File(f"{tmp}/m.h5", "w") as file:
            ...         file.attrs["layer_names"] = ["d1"]
            ...         _ = file.create_dataset("d1/d1/kernel:0", data=np.zeros((2, 2), "float16"))
            ...         file["d1"].attrs["weight_names"] = ["d1/kernel:0"]
            ...     KerasH5Source(f"{tmp}/m.h5").specs()["d1/kernel"]
            TensorSpec(name='d1/kernel', shape=(2, 2), dtype='float16')
        """
        return self._specs

    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Read the named weights into NumPy arrays (bfloat16 via ml_dtypes); other datasets are not touched.

        Args:
            names: names as ``specs()`` lists them; repeats are read once.

        Returns:
            ``{name: array}`` for each distinct name, in the order given.

        Raises:
            SourceError: a name is not in the file; the message names it and the closest names that are.
            CorruptSourceError: HDF5 could not read a dataset (damaged data, failed checksum); the message names it.

        Example:
            >>> import tempfile
            >>> import h5py
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     with h5py.File(f"{tmp}/m.weights.h5", "w") as file:
            ...         _ = file.create_dataset("vars/0", data=np.arange(3, dtype="int64"))
            ...     KerasH5Source(f"{tmp}/m.weights.h5").read(["vars/0"])
            {'vars/0': array([0, 1, 2])}
        """
        wanted = check_names(names, self._datasets, what=f"Keras .h5 file {self.path!r}", path=self.path)
        if not wanted:
            return {}
        arrays = {}
        with self._open() as file:
            for name in wanted:
                dataset = self._datasets[name]
                # Checked again: the file may have changed since it was opened, and HDF5 follows links natively.
                stored = member(self.path, file, dataset.path)
                if stored is not None and hasattr(stored, "shape"):
                    check_storage(self.path, dataset.path, stored)
                try:
                    if stored is None or not hasattr(stored, "shape"):
                        raise KeyError(f"there is no dataset {dataset.path!r} any more")
                    array = np.asarray(stored[()])
                except (OSError, KeyError, ValueError, RuntimeError) as error:
                    raise CorruptSourceError(
                        f"cannot read weight {name!r} (dataset {dataset.path!r}) from Keras .h5 file {self.path!r}: "
                        f"{error}; the file is damaged or changed since it was opened: write or copy it again",
                        path=self.path,
                    ) from error
                if dataset.spec.dtype in ML_DTYPES and dataset.spec.dtype != str(array.dtype):
                    array = array.view(numpy_dtype(dataset.spec.dtype, path=self.path))
                arrays[name] = array
        return arrays

    def _open(self) -> Any:
        """The file opened read-only with h5py; CorruptSourceError if HDF5 cannot open it."""
        h5py = optional_import("h5py", purpose=f"reading Keras .h5 file {self.path!r}", path=self.path)
        try:
            return h5py.File(self.path, "r")
        except OSError as error:
            raise CorruptSourceError(
                f"cannot open HDF5 file {self.path!r}: {error}; it is truncated or damaged: write or copy it again",
                path=self.path,
            ) from error


def member(path: str, group: Any, key: str) -> Any:
    """The object at ``key`` (``a/b/c``) under ``group``, or None; SourceError for a link to another file.

    Each step is checked before it is followed: HDF5 opens the file an external link names by itself, so an
    external link is refused without following it. Datasets are checked by ``check_storage``.

    Example:
        >>> import tempfile
        >>> import h5py
        >>> tmp = tempfile.TemporaryDirectory()
        >>> file = h5py.File(f"{tmp.name}/x.h5", "w")
        >>> file["vars/0"] = np.zeros(2)
        >>> file["vars/1"] = h5py.ExternalLink("/etc/elsewhere.h5", "w")
        >>> member(file.filename, file, "vars/0").shape, member(file.filename, file, "none")
        ((2,), None)
        >>> member(file.filename, file, "vars/1")
        Traceback (most recent call last):
        mapper.errors.SourceError: HDF5 file '.../x.h5': 'vars/1' is an external link to '/etc/elsewhere.h5' ...
        >>> file.close(); tmp.cleanup()
    """
    item = group
    walked = [part for part in str(group.name).split("/") if part]  # named from the file's root in messages
    for step in key.split("/"):
        walked.append(step)
        link = item.get(step, getlink=True) if hasattr(item, "keys") else None
        if link is None:
            return None
        if type(link).__name__ == "ExternalLink":
            raise SourceError(
                f"HDF5 file {path!r}: {'/'.join(walked)!r} is an external link to {link.filename!r} (object "
                f"{link.path!r} there); weight-mapper reads only the file it is given and does not follow links to "
                "other files: copy the data into this file",
                path=path,
            )
        item = item.get(step)
    return item


def check_storage(path: str, name: str, dataset: Any) -> None:
    """SourceError if ``dataset``'s data lies in other files: a virtual dataset, or external raw storage.

    Example:
        >>> import tempfile
        >>> import h5py
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with h5py.File(f"{tmp}/x.h5", "w") as file:
        ...         dataset = file.create_dataset("w", (2,), "f4", external=[("/etc/raw.bin", 0, 8)])
        ...         check_storage(f"{tmp}/x.h5", "w", dataset)
        Traceback (most recent call last):
        mapper.errors.SourceError: HDF5 file '.../x.h5': dataset 'w' keeps its data in other files ('/etc/raw.bin'); ...
    """
    if dataset.is_virtual:
        sources = sorted({source.file_name for source in dataset.virtual_sources()})
        where, kind = sources, "is a virtual dataset whose data lies in"
    elif dataset.external:
        where, kind = sorted({str(entry[0]) for entry in dataset.external}), "keeps its data in other files"
    else:
        return
    raise SourceError(
        f"HDF5 file {path!r}: dataset {name!r} {kind} ({quoted(where)}); weight-mapper reads only the file it is "
        "given: write the values (dataset[()]) into a file of their own, and pass that",
        path=path,
    )


def _layout(path: str, file: Any) -> str:
    """Which Keras layout ``file`` has; SourceError saying what its top level holds if none."""
    weights = member(path, file, "model_weights")
    if weights is not None and hasattr(weights, "keys") and "layer_names" in weights.attrs:
        return KERAS2_MODEL
    if "layer_names" in file.attrs:
        return KERAS2
    if any(hasattr(member(path, file, group), "keys") for group in KERAS3_GROUPS):
        return KERAS3
    groups = [key for key in file if hasattr(member(path, file, key), "keys")]
    datasets = [key for key in file if key not in groups]
    raise SourceError(
        f"HDF5 file {path!r} is not Keras weights: its top level holds groups [{quoted(sorted(groups))}], datasets "
        f"[{quoted(sorted(datasets))}] and attributes [{quoted(sorted(file.attrs))}]; expected a Keras 3 "
        "'.weights.h5' (groups 'layers' or 'vars') or a Keras 2 '.h5' (a 'layer_names' attribute, or a "
        "'model_weights' group). Convert other HDF5 layouts to .npz or safetensors",
        path=path,
    )


def _natural(key: str) -> list[Any]:
    """Sort key that puts ``vars/2`` before ``vars/10`` and ``dense_2`` before ``dense_10``.

    Not ``mapper.text.natural_key``: that one breaks ties between ``02`` and ``2`` by the text and reads at most
    18 ASCII digits as a number, so names such as ``x02b``/``x2a`` would come in another order, and with them
    the specs of existing files.
    """
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(key)]


def _keras3(path: str, file: Any) -> Iterator[_Dataset]:
    """Every dataset of a Keras 3 weights file, named by its path; a layer's own variables before its sublayers'."""

    def walk(group: Any, prefix: str, above: frozenset[Any]) -> Iterator[_Dataset]:
        keys = sorted(group, key=_natural)
        # A layer's own variables (its ``vars`` group) come before those of the layers it holds, as in ``weights``.
        for key in [key for key in keys if key == "vars"] + [key for key in keys if key != "vars"]:
            item = member(path, group, key)
            if hasattr(item, "keys"):
                if item.id in above:  # a link back to a group that holds it: the walk would never end
                    raise CorruptSourceError(
                        f"HDF5 file {path!r}: group {prefix + key!r} links back to a group that holds it; "
                        "Keras weights files have no such links: save the weights again",
                        path=path,
                    )
                yield from walk(item, f"{prefix}{key}/", above | {item.id})
            elif item is not None and hasattr(item, "shape"):
                check_storage(path, f"{prefix}{key}", item)
                yield _dataset(f"{prefix}{key}", f"{prefix}{key}", item)

    return walk(file, "", frozenset({file.id}))


def _keras2(path: str, file: Any, layout: str) -> Iterator[_Dataset]:
    """Every weight of a Keras 2 file, in ``layer_names`` and ``weight_names`` order."""
    root = member(path, file, "model_weights") if layout == KERAS2_MODEL else file
    prefix = "model_weights/" if layout == KERAS2_MODEL else ""
    for layer in _strings(root.attrs["layer_names"]):
        group = member(path, root, layer)
        if group is None or not hasattr(group, "keys"):
            raise CorruptSourceError(
                f"Keras .h5 file {path!r} lists layer {layer!r} in 'layer_names' but has no group for it; "
                "the file is damaged: save the weights again",
                path=path,
            )
        for weight in _strings(group.attrs.get("weight_names", [])):
            dataset = member(path, group, weight)
            if dataset is None or not hasattr(dataset, "shape"):
                raise CorruptSourceError(
                    f"Keras .h5 file {path!r}: layer {layer!r} lists weight {weight!r} but there is no dataset "
                    f"{prefix + layer + '/' + weight!r}; the file is damaged: save the weights again",
                    path=path,
                )
            check_storage(path, f"{prefix}{layer}/{weight}", dataset)
            name = weight.removesuffix(":0")
            if not name.startswith(layer + "/"):
                name = f"{layer}/{name}"
            yield _dataset(name, f"{prefix}{layer}/{weight}", dataset)


def _strings(values: Any) -> list[str]:
    """An HDF5 string-array attribute as Python strings (h5py gives bytes or str, by version)."""
    return [value.decode("utf-8") if isinstance(value, bytes) else str(value) for value in np.asarray(values).ravel()]


def _dataset(name: str, path: str, dataset: Any) -> _Dataset:
    """The spec of one dataset: opaque 2-byte data is bfloat16; a ``dtype`` attribute (Keras 3) says so too."""
    dtype = dataset.dtype
    declared = dataset.attrs.get("dtype")
    if isinstance(declared, bytes):
        declared = declared.decode("utf-8")
    if isinstance(declared, str) and declared in ML_DTYPES:
        kind = declared
    elif dtype.kind == "V" and dtype.itemsize == 2 and dtype.names is None:
        kind = "bfloat16"
    elif dtype.kind in "biufc":
        kind = dtype.name
    elif dtype.kind in "SUO":
        kind = "string"
    else:
        kind = str(dtype)
    return _Dataset(TensorSpec(name, tuple(int(dim) for dim in dataset.shape), kind), path)
