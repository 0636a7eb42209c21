"""Hostile source files, one table by format: each is a named error, reads nothing outside, and changes nothing."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hostile_support import fingerprint, outside, recording

from mapper.cli import main
from mapper.errors import CorruptSourceError, MapperError, SourceError
from mapper.sources import open_source

# Bytes every file outside the input carries: no message may ever show them.
SECRET = "SECRET-BYTES-OF-ANOTHER-FILE"
DEEP = 100_000


@dataclass(frozen=True)
class Case:
    """A hostile input built under ``input/``, the error it must give and what its message must name."""

    build: Callable[[Path, Path], Path]  # (input directory, elsewhere directory) -> the path to open
    error: type[MapperError]
    parts: tuple[str, ...]
    forbidden: tuple[str, ...] = field(default=())  # what the message must not say
    marks: tuple[Any, ...] = field(default=())


# --- files outside the input, which hostile inputs point at --------------------------------------------------------


def _safetensors_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, array in arrays.items():
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(a.astype("<f4").tobytes() for a in arrays.values())


def _outside_safetensors(elsewhere: Path) -> Path:
    path = elsewhere / "secret.safetensors"
    path.write_bytes(_safetensors_bytes({"w": np.ones(2, np.float32)}, {"note": SECRET}))
    return path


def _outside_torch(elsewhere: Path) -> Path:
    import torch

    path = elsewhere / "secret.bin"
    torch.save({"w": torch.ones(2), "note": SECRET}, path)
    return path


def _index(directory: Path, suffix: str, weight_map: dict[str, str]) -> Path:
    path = directory / f"model{suffix}.index.json"
    path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


# --- safetensors ------------------------------------------------------------------------------------------------------


def _deep_header(directory: Path, elsewhere: Path) -> Path:
    text = b'{"w": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    path = directory / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    return path


def _shard_outside(name: Callable[[Path, Path], str], suffix: str) -> Callable[[Path, Path], Path]:
    def build(directory: Path, elsewhere: Path) -> Path:
        target = _outside_safetensors(elsewhere) if suffix == ".safetensors" else _outside_torch(elsewhere)
        return _index(directory, suffix, {"w": name(directory, target)})

    return build


def _relative(directory: Path, target: Path) -> str:
    return f"../{target.parent.name}/{target.name}"


def _absolute(directory: Path, target: Path) -> str:
    return str(target)


def _linked(directory: Path, target: Path) -> str:
    (directory / f"model-1{target.suffix}").symlink_to(target)
    return f"model-1{target.suffix}"


def _dangling_shard(suffix: str) -> Callable[[Path, Path], Path]:
    def build(directory: Path, elsewhere: Path) -> Path:
        (directory / f"model-1{suffix}").symlink_to(directory / f"gone{suffix}")
        return _index(directory, suffix, {"w": f"model-1{suffix}"})

    return build


def _deep_index(suffix: str) -> Callable[[Path, Path], Path]:
    def build(directory: Path, elsewhere: Path) -> Path:
        path = directory / f"model{suffix}.index.json"
        path.write_text('{"weight_map": ' + "[" * DEEP + "]" * DEEP + "}")
        return path

    return build


# --- torch ------------------------------------------------------------------------------------------------------------


class _Hostile:
    """Unpickling this would run a shell command."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned > pwned.txt",))


def _hostile_global(directory: Path, elsewhere: Path) -> Path:
    import torch

    path = directory / "pytorch_model.bin"
    torch.save({"w": torch.zeros(2), "payload": _Hostile()}, path)
    return path


def _self_referencing_list(directory: Path, elsewhere: Path) -> Path:
    import torch

    loop: list[Any] = [torch.zeros(1)]
    loop.append(loop)
    path = directory / "pytorch_model.bin"
    torch.save({"w": torch.zeros(2), "layers": loop}, path)
    return path


# --- Keras .h5 --------------------------------------------------------------------------------------------------------


def _outside_h5(elsewhere: Path) -> Path:
    path = elsewhere / "secret.h5"
    with h5py.File(path, "w") as file:
        file["x"] = np.frombuffer(SECRET.encode(), np.uint8).astype(np.float32)
    return path


def _h5_external_link(directory: Path, elsewhere: Path) -> Path:
    target = _outside_h5(elsewhere)
    path = directory / "model.weights.h5"
    with h5py.File(path, "w") as file:
        file["layers/dense/vars/0"] = np.ones(2, np.float32)
        file["layers/dense/vars/1"] = h5py.ExternalLink(str(target), "x")
    return path


def _h5_external_group(directory: Path, elsewhere: Path) -> Path:
    target = _outside_h5(elsewhere)
    path = directory / "model.weights.h5"
    with h5py.File(path, "w") as file:
        file["vars/0"] = np.ones(2, np.float32)
        file["layers"] = h5py.ExternalLink(str(target), "/")
    return path


def _h5_virtual(directory: Path, elsewhere: Path) -> Path:
    target = _outside_h5(elsewhere)
    path = directory / "model.weights.h5"
    with h5py.File(path, "w") as file:
        layout = h5py.VirtualLayout((len(SECRET),), np.float32)
        layout[:] = h5py.VirtualSource(str(target), "x", (len(SECRET),))
        file.create_virtual_dataset("layers/dense/vars/0", layout)
    return path


def _h5_external_storage(directory: Path, elsewhere: Path) -> Path:
    target = elsewhere / "raw.bin"
    target.write_bytes(SECRET.encode().ljust(32, b"!"))
    path = directory / "model.weights.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("layers/dense/vars/0", (8,), np.float32, external=[(str(target), 0, 32)])
    return path


def _h5_keras2_external(directory: Path, elsewhere: Path) -> Path:
    target = _outside_h5(elsewhere)
    path = directory / "model.h5"
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = ["d1"]
        file["d1/d1/kernel:0"] = h5py.ExternalLink(str(target), "x")
        file["d1"].attrs["weight_names"] = ["d1/kernel:0"]
    return path


# --- npz --------------------------------------------------------------------------------------------------------------


def _npz_objects(directory: Path, elsewhere: Path) -> Path:
    path = directory / "w.npz"
    np.savez(path, w=np.array([_Hostile()], dtype=object))  # np.savez pickles it; reading must not
    return path


def _npz_truncated(directory: Path, elsewhere: Path) -> Path:
    path = directory / "w.npz"
    np.savez(path, w=np.zeros(100))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --- TensorFlow checkpoints -------------------------------------------------------------------------------------------


def _tf_checkpoint(directory: Path) -> str:
    import tensorflow as tf

    return str(tf.train.Checkpoint(w=tf.Variable([1.0, 2.0])).write(str(directory / "ckpt-1")))


def _tf_dangling_data(directory: Path, elsewhere: Path) -> Path:
    prefix = _tf_checkpoint(directory)
    data = Path(prefix + ".data-00000-of-00001")
    data.unlink()
    data.symlink_to(directory / "gone.data")
    return Path(prefix)


def _tf_state(text: bytes) -> Callable[[Path, Path], Path]:
    def build(directory: Path, elsewhere: Path) -> Path:
        _tf_checkpoint(directory)
        (directory / "checkpoint").write_bytes(text)
        return directory

    return build


def _tf_state_outside(directory: Path, elsewhere: Path) -> Path:
    _tf_checkpoint(elsewhere)
    (directory / "checkpoint").write_text(f'model_checkpoint_path: "{elsewhere / "ckpt-1"}"\n')
    return directory


TF = (pytest.mark.tf,)
NOT_DAMAGED = ("weights_only=False", "damaged")

CASES: dict[str, Case] = {
    "safetensors/deep-header": Case(_deep_header, CorruptSourceError, ("model.safetensors", "too deeply")),
    "safetensors-index/dotdot-shard": Case(
        _shard_outside(_relative, ".safetensors"), SourceError, ("'../elsewhere/secret.safetensors'", "refuses")
    ),
    "safetensors-index/absolute-shard": Case(
        _shard_outside(_absolute, ".safetensors"), SourceError, ("secret.safetensors", "plain relative file name")
    ),
    "safetensors-index/link-outside": Case(
        _shard_outside(_linked, ".safetensors"), SourceError, ("'model-1.safetensors'", "symbolic link")
    ),
    "safetensors-index/dangling-shard": Case(
        _dangling_shard(".safetensors"), CorruptSourceError, ("'model-1.safetensors'", "symbolic links")
    ),
    "safetensors-index/deep-json": Case(_deep_index(".safetensors"), CorruptSourceError, ("index", "too deeply")),
    "torch/hostile-global": Case(
        _hostile_global, SourceError, ("needs code execution", "never runs code", "state_dict"), NOT_DAMAGED
    ),
    "torch/self-referencing-list": Case(_self_referencing_list, SourceError, ("'layers.1'", "holds itself")),
    "torch-index/dotdot-shard": Case(
        _shard_outside(_relative, ".bin"), SourceError, ("'../elsewhere/secret.bin'", "refuses")
    ),
    "torch-index/absolute-shard": Case(_shard_outside(_absolute, ".bin"), SourceError, ("secret.bin", "refuses")),
    "torch-index/link-outside": Case(_shard_outside(_linked, ".bin"), SourceError, ("'model-1.bin'", "outside")),
    "torch-index/dangling-shard": Case(_dangling_shard(".bin"), CorruptSourceError, ("'model-1.bin'", "do not exist")),
    "torch-index/deep-json": Case(_deep_index(".bin"), CorruptSourceError, ("index", "too deeply")),
    "h5/external-link": Case(_h5_external_link, SourceError, ("'layers/dense/vars/1'", "external link")),
    "h5/external-group": Case(_h5_external_group, SourceError, ("'layers'", "external link")),
    "h5/virtual-dataset": Case(_h5_virtual, SourceError, ("'layers/dense/vars/0'", "virtual dataset")),
    "h5/external-storage": Case(_h5_external_storage, SourceError, ("'layers/dense/vars/0'", "other files")),
    "h5/keras2-external-weight": Case(_h5_keras2_external, SourceError, ("'d1/d1/kernel:0'", "external link")),
    "npz/object-array": Case(_npz_objects, SourceError, ("'w'", "refuses to unpickle")),
    "npz/truncated": Case(_npz_truncated, CorruptSourceError, ("w.npz", "damaged or truncated")),
    "tf-checkpoint/dangling-data-file": Case(
        _tf_dangling_data, CorruptSourceError, ("'ckpt-1.data-00000-of-00001'", "symbolic link"), marks=TF
    ),
    "tf-checkpoint/state-not-utf8": Case(
        _tf_state(b'model_checkpoint_path: "\xff\xfe"\n'), CorruptSourceError, ("checkpoint",), marks=TF
    ),
    "tf-checkpoint/state-escape-not-utf8": Case(
        _tf_state(b'model_checkpoint_path: "\\xff"\n'), CorruptSourceError, ("not a valid path",), marks=TF
    ),
    "tf-checkpoint/state-names-outside": Case(_tf_state_outside, SourceError, ("outside", "ckpt-1"), marks=TF),
}


def _params() -> list[Any]:
    return [pytest.param(case, id=name, marks=case.marks) for name, case in CASES.items()]


def _layout(tmp_path: Path) -> tuple[Path, Path]:
    directory, elsewhere = tmp_path / "input", tmp_path / "elsewhere"
    directory.mkdir()
    elsewhere.mkdir()
    return directory, elsewhere


def _open_and_read(path: Path) -> None:
    source = open_source(path)
    source.read(list(source.specs()))


@pytest.mark.parametrize("case", _params())
def test_hostile_source(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """open_source + specs + read: the named error, nothing outside opened, nothing changed, no outside bytes shown."""
    if "torch" in case.build.__qualname__ or ".bin" in repr(case.build.__closure__ or ""):
        pytest.importorskip("torch")
    directory, elsewhere = _layout(tmp_path)
    given = case.build(directory, elsewhere)
    monkeypatch.chdir(directory)  # a payload that did run would write pwned.txt here
    before = fingerprint(tmp_path)
    with recording() as opened, pytest.raises(MapperError) as caught:
        _open_and_read(given)
    message = str(caught.value)
    assert type(caught.value) is case.error, (type(caught.value), message)
    for part in case.parts:
        assert part in message, (part, message)
    for part in case.forbidden:
        assert part not in message, (part, message)
    assert SECRET not in message
    assert outside(opened, tmp_path, directory) == []
    assert fingerprint(tmp_path) == before


CLI_CASES = [
    "safetensors/deep-header",
    "safetensors-index/dotdot-shard",
    "torch/hostile-global",
    "h5/external-link",
    "tf-checkpoint/state-escape-not-utf8",
]


@pytest.mark.parametrize("name", [pytest.param(name, id=name, marks=CASES[name].marks) for name in CLI_CASES])
def test_hostile_source_in_the_cli(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``mapper inspect`` on a hostile source: exit 3 (an input cannot be read), one message, no traceback."""
    if name.startswith("torch"):
        pytest.importorskip("torch")
    directory, elsewhere = _layout(tmp_path)
    given = CASES[name].build(directory, elsewhere)
    before = fingerprint(tmp_path)
    with recording() as opened:
        code = main(["inspect", str(given)])
    captured = capsys.readouterr()
    assert code == 3, captured
    assert "Traceback" not in captured.out + captured.err
    assert CASES[name].parts[0] in captured.err
    assert SECRET not in captured.out + captured.err
    assert outside(opened, tmp_path, directory) == []
    assert fingerprint(tmp_path) == before


# --- files that change after opening ----------------------------------------------------------------------------------


def test_safetensors_truncated_after_opening(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(_safetensors_bytes({"a": np.ones(4, np.float32), "b": np.ones((64, 64), np.float32)}))
    source = open_source(path)
    source.specs()
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size - 100)
    with pytest.raises(CorruptSourceError) as caught:
        source.read(["a", "b"])
    assert str(path) in str(caught.value) and "'b'" in str(caught.value)


def test_torch_truncated_after_opening_is_an_error_not_sigbus(tmp_path: Path) -> None:
    """In a subprocess: torch memory-maps the file, so a SIGBUS would end that process, not pytest."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "pytorch_model.bin"
    torch.save({"small": torch.ones(4), "big": torch.ones(256, 1024)}, path)
    code = f"""
        from pathlib import Path
        from mapper.errors import CorruptSourceError
        from mapper.sources import open_source
        path = Path({str(path)!r})
        source = open_source(path)
        source.specs()
        with path.open("r+b") as file:
            file.truncate(path.stat().st_size // 2)
        try:
            source.read(["big"])
        except CorruptSourceError as error:
            print("CorruptSourceError |", error)
        """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stdout.startswith("CorruptSourceError |"), result.stdout
    for part in [str(path), "changed since it was opened", "'big'"]:
        assert part in result.stdout, result.stdout


def test_hugging_face_cache_links_into_blobs_are_read(tmp_path: Path) -> None:
    """The hub cache's snapshot files are links into the same repository's blobs/: that layout still works."""
    repo = tmp_path / "models--org--name"
    snapshot, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    (blobs / "f00d").write_bytes(_safetensors_bytes({"w": np.arange(3, dtype=np.float32)}))
    (snapshot / "model-00001-of-00001.safetensors").symlink_to(Path("../../blobs/f00d"))
    (blobs / "beef").write_text(json.dumps({"weight_map": {"w": "model-00001-of-00001.safetensors"}}))
    (snapshot / "model.safetensors.index.json").symlink_to(Path("../../blobs/beef"))
    source = open_source(snapshot)
    assert source.read(["w"])["w"].tolist() == [0.0, 1.0, 2.0]
