"""TensorFlow checkpoints (TF1 name-based and TF2 object-based, sharded or not) as a Source."""

from __future__ import annotations

import codecs
import difflib
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mapper.errors import CorruptSourceError, SourceError, SourceNotFoundError
from mapper.sources.tf_bundle import (
    BundleEntry,
    BundleFormatError,
    BundleIndex,
    data_file_name,
    read_index,
    read_tensors,
    tensor_chunks,
    verify_tensors,
)
from mapper.specs import TensorSpec, VariableMap
from mapper.text import quoted

# The serialized object graph TF2 checkpoints carry next to the variables; it is not a variable.
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
# The file ``tf.train.CheckpointManager`` and ``tf.compat.v1.train.Saver`` keep beside the checkpoints.
STATE_FILE = "checkpoint"

_DATA_SUFFIX = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
_STATE_LINE = re.compile(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"', re.MULTILINE)
_TF_NOISE = re.compile(r"^\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\](?: name: \S*)?$")


def is_tf_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a TensorFlow checkpoint, from file names alone (TensorFlow is not imported).

    True for a prefix with an ``.index`` or ``.data-*`` file, an ``.index`` or ``.data-*`` file itself, and a
    directory holding a ``checkpoint`` state file or ``.index`` files (opening it then says which prefix to pass).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     print(is_tf_checkpoint(tmp), end=" ")
        ...     _ = Path(tmp, "ckpt-1.index").write_bytes(b"")
        ...     is_tf_checkpoint(f"{tmp}/ckpt-1"), is_tf_checkpoint(f"{tmp}/ckpt-1.index"), is_tf_checkpoint(tmp)
        False (True, True, True)
    """
    text = os.fspath(path)
    if Path(text).is_dir():
        return Path(text, STATE_FILE).is_file() or bool(checkpoint_prefixes(text))
    if Path(text).is_file() and (text.endswith(".index") or _DATA_SUFFIX.search(text)):
        return True
    return _prefix_exists(text)


def checkpoint_prefixes(directory: str | os.PathLike[str]) -> list[str]:
    """The checkpoint prefixes in ``directory`` (from their ``.index`` files), sorted; [] if there is none.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     for name in ("ckpt-2.index", "ckpt-1.index", "notes.txt"):
        ...         _ = Path(tmp, name).write_bytes(b"")
        ...     [Path(prefix).name for prefix in checkpoint_prefixes(tmp)]
        ['ckpt-1', 'ckpt-2']
    """
    try:
        names = sorted(entry.name for entry in os.scandir(directory) if entry.name.endswith(".index"))
    except OSError:
        return []
    return [str(Path(directory, name.removesuffix(".index"))) for name in names]


class TFCheckpointSource:
    """The tensors of a TensorFlow checkpoint, described from its index and read from its data files directly.

    ``path`` may be a checkpoint prefix (``/x/ckpt-1``), its ``.index`` file, or a directory holding a
    ``checkpoint`` state file (its latest checkpoint is used; an absolute path in the state file that no longer
    exists, as TF1 ``Saver`` writes them, is looked up by its base name in that directory). Opening checks the
    files without reading tensors: the index is there, every data shard is there, and no shard is shorter
    than the tensors the index places in it. Opening and reading need no TensorFlow, except for what raw bytes
    cannot represent (see ``read``) and an index this module cannot parse (then TensorFlow's reader is used).

    Attributes:
        prefix: the resolved checkpoint prefix, as ``tf.compat.v1.train.init_from_checkpoint`` wants it.
        description: the path as given, and the prefix it resolved to when that differs.

    Raises:
        SourceNotFoundError: nothing at ``path``; the message names the nearest checkpoints beside it.
        CorruptSourceError: the index file is missing or unreadable, or a data shard is missing or truncated.

    Example:
        >>> import tempfile
        >>> import tensorflow as tf
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     prefix = tf.train.Checkpoint(w=tf.Variable([1.0, 2.0])).write(f"{tmp}/ckpt")
        ...     source = TFCheckpointSource(prefix)
        ...     print(list(source.specs()), source.specs()["w/.ATTRIBUTES/VARIABLE_VALUE"].shape)
        ...     print(source.read(["w/.ATTRIBUTES/VARIABLE_VALUE"])["w/.ATTRIBUTES/VARIABLE_VALUE"])
        ['w/.ATTRIBUTES/VARIABLE_VALUE'] (2,)
        [1. 2.]
    """

    hands_over_reads = True  # read() returns new buffers nothing keeps: the executor may adopt them (no copy)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        given = os.fspath(path)
        self.prefix: str = _resolve_prefix(given)
        # A directory is resolved through its state file, which is then one of the files this source reads.
        self._state = Path(given, STATE_FILE) if Path(given).is_dir() else None
        self.description: str = given if given == self.prefix else f"{given} -> {self.prefix}"
        self._index = _parse_index(self.prefix)
        self._specs = _open_specs(self.prefix, self._index)
        _check_data_files(self.prefix, self._specs, self._index)
        # The whole-tensor entries that can be read as raw bytes, when the specs agree with them.
        self._raw: dict[str, BundleEntry] = {}
        if self._index is not None and self._index.native:
            self._raw = {entry.key: entry for entry in self._index.entries if entry.raw and _agrees(entry, self._specs)}

    @property
    def checkpoint_prefix(self) -> str:
        """The resolved checkpoint prefix (``prefix``), as ``tf.compat.v1.train.init_from_checkpoint`` wants it."""
        return self.prefix

    def input_files(self) -> tuple[Path, ...]:
        """The state file (when opened through a directory), the index and every data file of the checkpoint."""
        data = [Path(self.prefix).with_name(name) for name in sorted(_data_files(self.prefix))]
        return (*((self._state,) if self._state else ()), Path(self.prefix + ".index"), *data)

    def __repr__(self) -> str:
        return f"TFCheckpointSource({self.prefix!r}, {len(self._specs)} tensors)"

    def specs(self) -> VariableMap:
        """Names, shapes and dtypes of every tensor, sorted by name, read from the index when the source was opened.

        The ``_CHECKPOINTABLE_OBJECT_GRAPH`` entry of TF2 checkpoints is left out: it is not a variable.

        Example:
            >>> import tempfile
            >>> import tensorflow as tf
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     ckpt = tf.train.Checkpoint(b=tf.Variable(tf.zeros([2], tf.bfloat16)), a=tf.Variable(1, dtype=tf.int64))
            ...     specs = TFCheckpointSource(ckpt.write(f"{tmp}/ckpt")).specs()
            >>> [(spec.name, spec.shape, spec.dtype) for spec in specs.values()]
            [('a/.ATTRIBUTES/VARIABLE_VALUE', (), 'int64'), ('b/.ATTRIBUTES/VARIABLE_VALUE', (2,), 'bfloat16')]
        """
        return self._specs

    def read(self, names: Sequence[str]) -> dict[str, Any]:
        """Read the named tensors from the data files at the offsets the index gives, checking each one.

        Each tensor of a fixed-size dtype is read with positional reads into its own 64-byte aligned buffer and
        returned as a read-only NumPy array (bfloat16 and float8 via ml_dtypes), after its byte length and its
        crc32c were checked. What raw bytes cannot represent (string, variant and resource tensors, and tensors
        partitioned into slices) is read with one ``tf.raw_ops.RestoreV2`` on the CPU and returned as ``tf.Tensor``.

        Args:
            names: tensor names as ``specs()`` lists them; repeats are read once.

        Returns:
            ``{name: NumPy array or tf.Tensor}`` for each distinct name, in the order given.

        Raises:
            SourceError: a name is not in the checkpoint; the message names it and the closest names that are.
            CorruptSourceError: a tensor cannot be read (checksum mismatch, a data file that became shorter or
                fails to read); the message names the checkpoint and the tensors that fail.

        Example:
            >>> import tempfile
            >>> import tensorflow as tf
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     prefix = tf.train.Checkpoint(w=tf.Variable(3), s=tf.Variable(b"text")).write(f"{tmp}/ckpt")
            ...     values = TFCheckpointSource(prefix).read(["w/.ATTRIBUTES/VARIABLE_VALUE", "s/.ATTRIBUTES/VARIABLE_VALUE"])
            >>> values["w/.ATTRIBUTES/VARIABLE_VALUE"], values["s/.ATTRIBUTES/VARIABLE_VALUE"].numpy()  # array, tf.Tensor
            (array(3, dtype=int32), b'text')
        """
        wanted = list(dict.fromkeys(names))
        unknown = [name for name in wanted if name not in self._specs]
        if unknown:
            raise SourceError(self._unknown_message(unknown), path=self.prefix)
        direct = [self._raw[name] for name in wanted if name in self._raw]
        values: dict[str, Any] = {}
        if direct and self._index is not None:  # self._raw is empty without an index
            values |= read_tensors(self.prefix, self._index, direct)
        rest = [name for name in wanted if name not in self._raw]
        if rest:
            values |= self._restore(rest)
        return {name: values[name] for name in wanted}

    def verify(self, names: Sequence[str]) -> None:
        """Check that the named tensors read in full and match their crc32c, without keeping them.

        Raw tensors pass through one small reused buffer (``tf_bundle.verify_tensors``); what only ``RestoreV2``
        reads (strings, sliced tensors) is read and dropped.

        Raises:
            SourceError, CorruptSourceError: as ``read``.

        Example:
            >>> import tempfile
            >>> import tensorflow as tf
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     prefix = tf.train.Checkpoint(w=tf.Variable([1.0, 2.0])).write(f"{tmp}/ckpt")
            ...     TFCheckpointSource(prefix).verify(["w/.ATTRIBUTES/VARIABLE_VALUE"])
        """
        wanted = list(dict.fromkeys(names))
        unknown = [name for name in wanted if name not in self._specs]
        if unknown:
            raise SourceError(self._unknown_message(unknown), path=self.prefix)
        direct = [self._raw[name] for name in wanted if name in self._raw]
        if direct and self._index is not None:
            verify_tensors(self.prefix, self._index, direct)
        rest = [name for name in wanted if name not in self._raw]
        if rest:
            self._restore(rest)

    def raw_order(self, name: str) -> str | None:
        """The byte order ``read_chunks`` yields the tensor in (this machine's), or None if only TensorFlow reads it.

        None for strings and tensors saved in slices, and for every tensor when the index could not be parsed.

        Raises:
            SourceError: the name is not in the checkpoint.

        Example:
            >>> import sys, tempfile
            >>> import tensorflow as tf
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     prefix = tf.train.Checkpoint(w=tf.Variable(3), s=tf.Variable(b"text")).write(f"{tmp}/ckpt")
            ...     source = TFCheckpointSource(prefix)
            ...     order = source.raw_order("w/.ATTRIBUTES/VARIABLE_VALUE")
            ...     order == {"little": "<", "big": ">"}[sys.byteorder], source.raw_order("s/.ATTRIBUTES/VARIABLE_VALUE")
            (True, None)
        """
        if name not in self._specs:
            raise SourceError(self._unknown_message([name]), path=self.prefix)
        if name not in self._raw:
            return None
        return "<" if sys.byteorder == "little" else ">"

    def position(self, name: str) -> tuple[int, int]:
        """``(shard, byte offset)`` of the tensor's bytes in the data files; after all of them if TensorFlow reads it.

        Raises:
            SourceError: the name is not in the checkpoint.

        Example:
            >>> import tempfile
            >>> import tensorflow as tf
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     prefix = tf.train.Checkpoint(a=tf.Variable([1.0, 2.0]), b=tf.Variable(3.0)).write(f"{tmp}/ckpt")
            ...     source = TFCheckpointSource(prefix)
            ...     source.position("a/.ATTRIBUTES/VARIABLE_VALUE"), source.position("b/.ATTRIBUTES/VARIABLE_VALUE")
            ((0, 0), (0, 8))
        """
        if name not in self._specs:
            raise SourceError(self._unknown_message([name]), path=self.prefix)
        entry = self._raw.get(name)
        if entry is None or self._index is None:
            return (sys.maxsize, 0)
        return (entry.shard, entry.offset)

    def read_chunks(self, name: str, buffer: memoryview) -> Iterator[memoryview]:
        """The tensor's bytes (this machine's byte order, C order) read into ``buffer`` a chunk at a time.

        Each view is valid until the next is asked for. The length is checked read by read, and the crc32c the
        index stores once the last chunk was handed out (see ``tf_bundle.tensor_chunks``).

        Raises:
            SourceError: the name is not in the checkpoint, or ``raw_order`` is None for it (raised by this call).
            CorruptSourceError: a short read, a data file that cannot be read, or a checksum mismatch (while
                iterating).

        Example:
            >>> import tempfile
            >>> import tensorflow as tf
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     prefix = tf.train.Checkpoint(w=tf.Variable([1.0, 2.0])).write(f"{tmp}/ckpt")
            ...     chunks = TFCheckpointSource(prefix).read_chunks("w/.ATTRIBUTES/VARIABLE_VALUE", memoryview(bytearray(4)))
            ...     [len(chunk) for chunk in chunks]
            [4, 4]
        """
        if self.raw_order(name) is None or self._index is None:
            raise SourceError(
                f"{name!r} of checkpoint {self.prefix!r} is not stored as plain bytes (a string, or saved in "
                "slices): read it with read()",
                path=self.prefix,
            )
        return tensor_chunks(self.prefix, self._index, self._raw[name], buffer)

    def _restore(self, wanted: list[str]) -> dict[str, Any]:
        """The named tensors read with one ``RestoreV2``, as ``tf.Tensor``s."""
        tf = _import_tensorflow(f"reading {quoted(wanted)} (string tensors, or tensors saved in slices)", self.prefix)
        dtypes = [tf.as_dtype(self._specs[name].dtype) for name in wanted]
        try:
            tensors = _restore(tf, self.prefix, wanted, dtypes)
        except tf.errors.OpError as error:
            failing = self._failing(tf, wanted, dtypes) or wanted
            raise CorruptSourceError(
                f"cannot read {quoted(failing)} from checkpoint {self.prefix!r}: {_tf_message(error)}; the data "
                "files are damaged or were changed after the index was written: write or copy the checkpoint again",
                path=self.prefix,
            ) from error
        return dict(zip(wanted, tensors, strict=True))

    def _failing(self, tf: Any, names: list[str], dtypes: list[Any]) -> list[str]:
        """The names among ``names`` that fail to read on their own (error path only)."""
        failing = []
        for name, dtype in zip(names, dtypes, strict=True):
            try:
                _restore(tf, self.prefix, [name], [dtype])
            except tf.errors.OpError:
                failing.append(name)
        return failing

    def _unknown_message(self, unknown: list[str]) -> str:
        message = f"checkpoint {self.prefix!r} has no tensor {quoted(unknown)}"
        close = difflib.get_close_matches(unknown[0], list(self._specs), n=3)
        if close:
            message += f"; did you mean {' or '.join(map(repr, close))}?"
        else:
            message += f"; it has {len(self._specs)} tensors, list them with specs()"
        return message


def _import_tensorflow(purpose: str, prefix: str) -> Any:
    """Import TensorFlow for what only it can read from checkpoint ``prefix``, or SourceError saying what to install."""
    try:
        import tensorflow as tf
    except ImportError as error:
        raise SourceError(
            f"checkpoint {prefix!r}: {purpose} needs TensorFlow, which is not installed (every other tensor is read "
            "without it): pip install 'weight-mapper[tensorflow]' (or 'weight-mapper[tensorflow-cpu]')",
            path=prefix,
        ) from error
    return tf


def _restore(tf: Any, prefix: str, names: list[str], dtypes: list[Any]) -> list[Any]:
    """One RestoreV2 of whole tensors, eagerly and on the CPU."""
    with tf.init_scope(), tf.device("/cpu:0"):
        return list(
            tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), dtypes=dtypes)
        )


# --- resolving the path the user gave ---------------------------------------------------------------------------


def _prefix_exists(prefix: str) -> bool:
    """Whether an index or a data file exists for ``prefix``."""
    return Path(prefix + ".index").is_file() or bool(_data_files(prefix))


def _data_files(prefix: str) -> dict[str, tuple[int, int]]:
    """``{file name: (shard, shard count)}`` of the data files of ``prefix``."""
    base = Path(prefix).name
    try:
        entries = list(os.scandir(Path(prefix).parent))
    except OSError:
        return {}
    files = {}
    for entry in entries:
        if entry.name.startswith(base + ".data-"):
            match = _DATA_SUFFIX.fullmatch(entry.name, len(base))
            if match:
                files[entry.name] = (int(match[1]), int(match[2]))
    return files


def _resolve_prefix(given: str) -> str:
    """The checkpoint prefix ``given`` names, or SourceNotFoundError."""
    path = Path(given)
    if path.is_dir():
        return _prefix_from_state(given)
    if path.is_file() and given.endswith(".index"):
        return given.removesuffix(".index")
    match = _DATA_SUFFIX.search(given)
    if match and path.is_file():
        return given[: match.start()]
    if _prefix_exists(given):
        return given
    raise SourceNotFoundError(not_found_message(given), path=given)


def _prefix_from_state(directory: str) -> str:
    """The latest checkpoint named by ``directory``'s state file, found even if the directory was moved."""
    state = Path(directory, STATE_FILE)
    if not state.is_file():
        prefixes = checkpoint_prefixes(directory)
        if prefixes:
            message = f"naming its latest checkpoint; pass a checkpoint prefix instead, e.g. {_nearest_list(prefixes)}"
        else:
            message = "and no checkpoint (no .index file) either; pass the path of a checkpoint"
        raise SourceNotFoundError(f"directory {directory!r} has no {STATE_FILE!r} state file {message}", path=directory)
    try:
        text = state.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CorruptSourceError(
            f"cannot read checkpoint state file {str(state)!r}: {error}", path=str(state)
        ) from error
    match = _STATE_LINE.search(text)
    if not match:
        raise CorruptSourceError(
            f"checkpoint state file {str(state)!r} names no model_checkpoint_path; pass a checkpoint prefix instead"
            + (f", e.g. {_nearest_list(checkpoint_prefixes(directory))}" if checkpoint_prefixes(directory) else ""),
            path=str(state),
        )
    latest = _unescape(state, match[1])
    # A relative path is relative to the directory. An absolute one (TF1 Saver's default) may point where the
    # directory was before it was moved or copied: the checkpoint of that name in the directory given is used.
    # Either way only a checkpoint inside the directory is read: the state file does not choose other files.
    named = Path(latest) if Path(latest).is_absolute() else Path(directory, latest)
    candidate = str(Path(directory, Path(latest).name)) if Path(latest).is_absolute() else str(named)
    if _inside(directory, candidate) and _prefix_exists(candidate):
        return candidate
    if _prefix_exists(str(named)) and not _inside(directory, str(named)):
        raise SourceError(
            f"checkpoint state file {str(state)!r} names {latest!r}, which is outside {directory!r}; weight-mapper "
            "reads only the checkpoint files inside the directory it is given: pass that checkpoint prefix itself "
            "if you mean it",
            path=directory,
        )
    prefixes = checkpoint_prefixes(directory)
    raise SourceNotFoundError(
        f"checkpoint state file {str(state)!r} names {latest!r}, which is neither there nor in {directory!r}"
        + (f"; did you mean {_nearest_list(prefixes, Path(latest).name)}?" if prefixes else ""),
        path=directory,
    )


def _unescape(state: Path, quoted_path: str) -> str:
    """The path a state file's ``model_checkpoint_path`` holds, C escapes undone; CorruptSourceError if it is not text."""
    try:
        return codecs.escape_decode(quoted_path.encode("utf-8"))[0].decode("utf-8")
    except (ValueError, UnicodeDecodeError) as error:  # a bad escape, or escapes that make bytes that are not UTF-8
        raise CorruptSourceError(
            f"checkpoint state file {str(state)!r} names a model_checkpoint_path that is not a valid path ({error}); "
            "pass a checkpoint prefix instead",
            path=str(state),
        ) from error


def _inside(directory: str, path: str) -> bool:
    """Whether ``path`` lies inside ``directory`` once symbolic links and ``..`` are resolved."""
    try:
        return Path(path).resolve().is_relative_to(Path(directory).resolve())
    except (OSError, RuntimeError):  # a symbolic link loop
        return False


def not_found_message(given: str) -> str:
    """Why there is no checkpoint at ``given``, naming the nearest checkpoints beside it.

    Example:
        >>> print(not_found_message("/no/such/dir/ckpt-1"))
        no TensorFlow checkpoint at '/no/such/dir/ckpt-1' (...); directory '/no/such/dir' does not exist
    """
    directory = str(Path(given).parent)
    message = f"no TensorFlow checkpoint at {given!r} (no {given + '.index'!r} and no data files)"
    if not Path(directory).is_dir():
        return message + f"; directory {directory!r} does not exist"
    prefixes = checkpoint_prefixes(directory)
    if not prefixes:
        return message + f"; {directory!r} holds no checkpoint (no .index file)"
    return message + f"; did you mean {_nearest_list(prefixes, Path(given).name)}?"


def _nearest_list(prefixes: list[str], base: str | None = None, count: int = 3) -> str:
    """The ``count`` prefixes whose base names are nearest ``base`` (the last ones if None), quoted."""
    if base is None:
        chosen = prefixes[-count:]
    else:
        by_name = {Path(prefix).name: prefix for prefix in prefixes}
        close = difflib.get_close_matches(base, list(by_name), n=count, cutoff=0.0)
        chosen = [by_name[name] for name in close]
    return " or ".join(repr(prefix) for prefix in chosen)


# --- opening and checking -------------------------------------------------------------------------------------------


def _parse_index(prefix: str) -> BundleIndex | None:
    """The parsed index of ``prefix``; None if it is missing, unreadable or not understood (TensorFlow then says why)."""
    try:
        return read_index(prefix + ".index")
    except (OSError, BundleFormatError):
        return None


def _open_specs(prefix: str, index: BundleIndex | None) -> VariableMap:
    """The specs in the index of ``prefix``; CorruptSourceError if the index is missing or unreadable."""
    path = prefix + ".index"
    if not Path(path).is_file():
        data = sorted(_data_files(prefix))
        raise CorruptSourceError(
            f"checkpoint {prefix!r} has data files ({quoted(data)}) but its index file {path!r} is missing; "
            "it was copied or written incompletely: copy the .index file next to the data files",
            path=prefix,
        )
    if "[" in str(Path(prefix).absolute()):
        raise SourceError(
            f"cannot read checkpoint {prefix!r}: TensorFlow reads a checkpoint's path as a file pattern, so it "
            "cannot read one whose path holds '['; rename the checkpoint's files (or its directory) without '['",
            path=prefix,
        )
    tensors = [entry for entry in index.entries if not entry.key.endswith(" (a slice)")] if index else []
    if index is not None and all(entry.dtype_name for entry in tensors):
        return VariableMap(
            (
                TensorSpec(entry.key, entry.shape, str(entry.dtype_name))
                for entry in sorted(tensors, key=lambda entry: entry.key)
                if entry.key != OBJECT_GRAPH_KEY
            ),
            description=prefix,
        )
    return _tf_specs(prefix)


def _tf_specs(prefix: str) -> VariableMap:
    """The specs TensorFlow's checkpoint reader gives (an index this module does not understand)."""
    tf = _import_tensorflow("reading an index in a layout weight-mapper's own reader does not parse", prefix)
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError, RuntimeError, IndexError) as error:  # IndexError: a cut index
        raise CorruptSourceError(
            f"cannot read the index file {prefix + '.index'!r} of checkpoint {prefix!r}: {_tf_message(error)}; "
            "it is damaged or from an incompatible TensorFlow version",
            path=prefix,
        ) from error
    names = sorted(name for name in shapes if name != OBJECT_GRAPH_KEY)
    return VariableMap(
        (TensorSpec(name, tuple(int(dim) for dim in shapes[name]), dtypes[name].name) for name in names),
        description=prefix,
    )


def _agrees(entry: BundleEntry, specs: VariableMap) -> bool:
    """Whether the index entry has the shape and dtype ``specs`` gives its tensor (a raw read then returns that)."""
    spec = specs.get(entry.key)
    return spec is not None and (spec.shape, spec.dtype) == (entry.shape, entry.dtype_name)


def _check_data_files(prefix: str, specs: VariableMap, index: BundleIndex | None) -> None:
    """CorruptSourceError if a data shard is missing or shorter than the tensors the index places in it."""
    found = _data_files(prefix)
    shard_count = index.num_shards if index is not None else max((count for _, count in found.values()), default=1)
    expected = [data_file_name(prefix, shard, shard_count) for shard in range(shard_count)]
    missing = [name for name in expected if name not in found]
    if missing:
        raise CorruptSourceError(
            f"checkpoint {prefix!r} is missing {len(missing)} of its {shard_count} data file(s): {quoted(missing)}; "
            "copy every .data-* file of the checkpoint",
            path=prefix,
        )
    sizes = [_size(prefix, name) for name in expected]
    if index is not None:
        short = [entry for entry in index.entries if entry.offset + entry.size > sizes[entry.shard]]
        if short:
            shard = short[0].shard
            raise CorruptSourceError(
                f"checkpoint {prefix!r} is truncated: data file {expected[shard]!r} has {sizes[shard]} bytes but "
                f"the index places {quoted(list(dict.fromkeys(entry.key for entry in short)))} up to byte "
                f"{max(entry.offset + entry.size for entry in short if entry.shard == shard)}; "
                "copy or write the checkpoint again",
                path=prefix,
            )
        return
    # The index could not be parsed here (an unknown table layout): compare totals instead.
    needed = sum(spec.nbytes for spec in specs.values())
    if needed > sum(sizes):
        raise CorruptSourceError(
            f"checkpoint {prefix!r} is truncated: its data files ({quoted(expected)}) hold {sum(sizes)} bytes but "
            f"its tensors need at least {needed}; copy or write the checkpoint again",
            path=prefix,
        )


def _size(prefix: str, name: str) -> int:
    """The size of the data file ``name`` of ``prefix``; CorruptSourceError if it cannot be read (a dangling link)."""
    path = Path(prefix).with_name(name)
    try:
        return path.stat().st_size
    except OSError as error:
        what = "is a symbolic link to a file that does not exist" if path.is_symlink() else f"cannot be read ({error})"
        raise CorruptSourceError(
            f"checkpoint {prefix!r}: data file {name!r} {what}; copy every .data-* file of the checkpoint",
            path=prefix,
        ) from error


def _tf_message(error: BaseException) -> str:
    """A TensorFlow error's message without its op and function decorations, on one line."""
    message = getattr(error, "message", None) or str(error)
    return " ".join(_TF_NOISE.sub("", message.strip()).split())
