"""NumPy ``.npz`` archives (``np.savez`` / ``np.savez_compressed``) as a Source; pickled members are refused."""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mapper.errors import CorruptSourceError, SourceError, SourceNotFoundError
from mapper.sources._common import ZIP_MAGICS, check_names, head, zip_members
from mapper.specs import TensorSpec, VariableMap
from mapper.text import quoted

NPY_SUFFIX = ".npy"
# Errors that reading a damaged zip member can raise.
_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def is_npz(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an ``.npz`` archive: a zip file whose members are all ``.npy`` files.

    A PyTorch file is a zip archive too, but its members are ``archive/data.pkl`` and raw storages.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     np.savez(f"{tmp}/w.npz", w=np.zeros(2))
        ...     _ = Path(tmp, "x.npz").write_bytes(b"PK\\x03\\x04 not really")
        ...     is_npz(f"{tmp}/w.npz"), is_npz(f"{tmp}/x.npz"), is_npz(tmp)
        (True, False, False)
    """
    text = os.fspath(path)
    if not Path(text).is_file():
        return False
    members = zip_members(text)
    return bool(members) and all(member.endswith(NPY_SUFFIX) for member in members or ())


class NpzSource:
    """The arrays of an ``.npz`` archive, described from each member's ``.npy`` header and read member by member.

    Names are the member names without ``.npy`` (the keywords given to ``np.savez``; ``/`` in them is kept).
    Opening reads each member's header, never its data. Members holding Python objects would need pickle to
    read and are refused, as is ``allow_pickle``: there is no option to turn it on.

    Attributes:
        path: the archive.
        description: the path.

    Raises:
        SourceNotFoundError: no file at ``path``.
        SourceError: the file is not an ``.npz`` archive, or a member holds objects or an unsupported dtype.
        CorruptSourceError: the archive or a member's header is damaged.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     np.savez_compressed(f"{tmp}/w.npz", **{"dense/kernel": np.ones((2, 3), "float32")})
        ...     source = NpzSource(f"{tmp}/w.npz")
        ...     print(source.specs()["dense/kernel"], source.read(["dense/kernel"])["dense/kernel"].sum())
        TensorSpec(name='dense/kernel', shape=(2, 3), dtype='float32') 6.0
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: str = os.fspath(path)
        self.description: str = self.path
        if not Path(self.path).is_file():
            raise SourceNotFoundError(f"no .npz file at {self.path!r}", path=self.path)
        members = zip_members(self.path)
        if members is None and head(self.path, 4) in ZIP_MAGICS:
            raise CorruptSourceError(
                f".npz archive {self.path!r} is damaged or truncated: its zip directory cannot be read; "
                "write or copy it again",
                path=self.path,
            )
        if members is None:
            raise SourceError(
                f"{self.path!r} is not an .npz archive: it is not a zip file (first bytes {head(self.path, 8)!r})",
                path=self.path,
            )
        others = [member for member in members if not member.endswith(NPY_SUFFIX)]
        if others:
            raise SourceError(
                f"{self.path!r} is a zip archive but not an .npz: it holds {quoted(others)}, which are not .npy "
                "arrays" + ("; it looks like a PyTorch file" if any(_is_pickle(m) for m in others) else ""),
                path=self.path,
            )
        specs = []
        with zipfile.ZipFile(self.path) as archive:
            for member in members:
                specs.append(self._spec(archive, member))
        self._specs = VariableMap(specs, description=self.path)

    checkpoint_prefix: str | None = None  # not a TF checkpoint
    hands_over_reads = False  # zip members are not aligned for a zero-copy hand-over

    def input_files(self) -> tuple[Path, ...]:
        """The archive."""
        return (Path(self.path),)

    def __repr__(self) -> str:
        return f"NpzSource({self.path!r}, {len(self._specs)} arrays)"

    def specs(self) -> VariableMap:
        """Names, shapes and dtypes of every array, in archive order, from the ``.npy`` headers read at open.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     np.savez(f"{tmp}/w.npz", b=np.zeros(3, "int8"), a=np.zeros((), "bool"))
            ...     [(s.name, s.shape, s.dtype) for s in NpzSource(f"{tmp}/w.npz").specs().values()]
            [('b', (3,), 'int8'), ('a', (), 'bool')]
        """
        return self._specs

    def read(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Read the named arrays with ``np.load(..., allow_pickle=False)``; other members are not decompressed.

        Args:
            names: names as ``specs()`` lists them; repeats are read once.

        Returns:
            ``{name: array}`` for each distinct name, in the order given, in native byte order.

        Raises:
            SourceError: a name is not in the archive; the message names it and the closest names that are.
            CorruptSourceError: a member's data is damaged (failed CRC, truncated); the message names it.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     np.savez(f"{tmp}/w.npz", w=np.arange(3))
            ...     NpzSource(f"{tmp}/w.npz").read(["w"])
            {'w': array([0, 1, 2])}
        """
        wanted = check_names(names, self._specs, what=f".npz archive {self.path!r}", path=self.path)
        arrays = {}
        try:
            archive = np.load(self.path, allow_pickle=False)
        except _READ_ERRORS as error:
            raise CorruptSourceError(f"cannot open .npz archive {self.path!r}: {error}", path=self.path) from error
        with archive:
            for name in wanted:
                try:
                    array = archive[name]
                except (*_READ_ERRORS, KeyError) as error:
                    raise CorruptSourceError(
                        f"cannot read array {name!r} from .npz archive {self.path!r}: {error}; the member is "
                        "damaged or the archive changed since it was opened: write or copy it again",
                        path=self.path,
                    ) from error
                arrays[name] = array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))
        return arrays

    def _spec(self, archive: zipfile.ZipFile, member: str) -> TensorSpec:
        """The spec of one member, from its ``.npy`` header alone."""
        name = member.removesuffix(NPY_SUFFIX)
        try:
            with archive.open(member) as stream:
                version = np.lib.format.read_magic(stream)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
        except _READ_ERRORS as error:
            raise CorruptSourceError(
                f"cannot read the header of array {name!r} in .npz archive {self.path!r}: {error}; "
                "the archive is damaged: write or copy it again",
                path=self.path,
            ) from error
        return TensorSpec(name, tuple(int(dim) for dim in shape), self._dtype(name, dtype))

    def _dtype(self, name: str, dtype: np.dtype[Any]) -> str:
        """The dtype name of a member; SourceError for objects (pickle) and other non-numeric data."""
        if dtype.hasobject:
            raise SourceError(
                f"array {name!r} in .npz archive {self.path!r} holds Python objects, which only pickle can read; "
                "weight-mapper refuses to unpickle (allow_pickle is never turned on): save numeric arrays instead",
                path=self.path,
            )
        if dtype.kind not in "biufc" or dtype.names is not None:
            raise SourceError(
                f"array {name!r} in .npz archive {self.path!r} has dtype {dtype.str!r}, which is not a numeric "
                "tensor dtype (np.save stores bfloat16 as raw 2-byte void data and loses its type: save such "
                "arrays as float32, or use safetensors)",
                path=self.path,
            )
        return dtype.name


def _is_pickle(member: str) -> bool:
    return member.endswith(".pkl")
