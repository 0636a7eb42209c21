"""Outputs: the files an output path stands for (names with glob characters too), never an overwritten source."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from formats import snapshot, write_safetensors, write_sharded_safetensors, write_torch

from mapper import cli, demo
from mapper.api import convert
from mapper.errors import OutputError, TargetError
from mapper.interrupts import EXIT_TERMINATED, Terminated, sigterm_raises
from mapper.outputs.faults import faults_named
from mapper.outputs.files import checkpoint_files, output_files
from mapper.outputs.save import check_output, save_target
from mapper.rules import parse_rules
from mapper.sources import SOURCE_CLASSES, KerasH5Source, NpzSource, SafetensorsSource, Source, TorchSource, open_source
from mapper.sources.memory import MemorySource
from mapper.specs import TensorSpec
from mapper.targets import target_from

pytestmark = pytest.mark.tf

IDENTITY = "format = 1\n[[rules]]\nmatch = '(?P<name>.+)'\ntarget = '{name}'\n"
# Output names with each glob character in them, and an ordinary one.
NAMES = ["c[1]", "c*", "c?", "c[*?]", "plain"]
# TensorFlow globs checkpoint paths when it reads them: a checkpoint with '[' in its path cannot be read back.
TF_NAMES = [name for name in NAMES if "[" not in name]
# The file name an output of each convert format gets from a stem.
CONVERT_OUTPUTS = {"tf-checkpoint": "{}", "safetensors": "{}.safetensors", "keras-h5": "{}.weights.h5"}
APPLY_OUTPUTS = {"tf-checkpoint": "{}", "keras-h5": "{}.weights.h5"}


def listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def read_all(path: Path) -> dict[str, np.ndarray]:
    source = open_source(path)
    return {name: np.asarray(value) for name, value in source.read(list(source.specs())).items()}


def write_checkpoint(prefix: Path, arrays: dict[str, np.ndarray]) -> Path:
    names = list(arrays)
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(arrays[name]) for name in names],
    )
    return prefix


def write_keras3_h5(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as file:
        for name, array in arrays.items():
            file.create_dataset(name, data=array)
    return path


# --- the files an output stands for ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_files_take_the_prefix_literally(tmp_path: Path, name: str) -> None:
    mine = [f"{name}.index", f"{name}.data-00000-of-00001"]
    for file in [*mine, "c1.index", "c1.data-00000-of-00001", "cx.index", "c.index"]:
        (tmp_path / file).write_bytes(b"")

    assert [file.name for file in checkpoint_files(tmp_path / name)] == mine
    assert [file.name for file in output_files(tmp_path / name, "tf-checkpoint")] == mine


# --- convert: written, refused the second time, never over another checkpoint ---------------------------------------


def convert_cases() -> list[tuple[str, str]]:
    return [(kind, name) for kind in CONVERT_OUTPUTS for name in (TF_NAMES if kind == "tf-checkpoint" else NAMES)]


@pytest.mark.parametrize(("output_format", "name"), convert_cases())
def test_convert_writes_names_with_glob_characters_and_refuses_them_the_second_time(
    tmp_path: Path, name: str, output_format: str
) -> None:
    output = tmp_path / CONVERT_OUTPUTS[output_format].format(name)
    arrays = {"layers/a/vars/0": np.arange(3, dtype=np.float32)}
    convert(parse_rules(IDENTITY), MemorySource(arrays), output)

    np.testing.assert_array_equal(read_all(output)["layers/a/vars/0"], arrays["layers/a/vars/0"])
    before = snapshot(tmp_path)
    with pytest.raises(TargetError, match=r"already exists.*pass --overwrite"):
        convert(parse_rules(IDENTITY), MemorySource(arrays), output)
    assert snapshot(tmp_path) == before


def test_a_checkpoint_path_with_a_bracket_is_refused_before_any_work(tmp_path: Path) -> None:
    source = MemorySource({"w": np.zeros(2, np.float32)})

    with pytest.raises(TargetError, match=r"with '\[' in it the checkpoint could never be read back"):
        convert(parse_rules(IDENTITY), source, tmp_path / "c[1]")

    assert source.reads == []
    assert listing(tmp_path) == []


def test_a_checkpoint_source_with_a_bracket_is_refused_by_name(tmp_path: Path) -> None:
    from mapper.errors import SourceError

    tf.raw_ops.SaveV2(prefix=str(tmp_path / "c[1]"), tensor_names=["w"], shape_and_slices=[""], tensors=[[1.0]])

    with pytest.raises(SourceError, match=r"cannot read one whose path holds '\['"):
        open_source(tmp_path / "c[1]")


def test_convert_overwrite_of_a_glob_name_leaves_the_checkpoints_it_would_match(tmp_path: Path) -> None:
    rules = parse_rules(IDENTITY)
    convert(rules, MemorySource({"w": np.zeros(2, np.float32)}), tmp_path / "c1")
    convert(rules, MemorySource({"w": np.ones(2, np.float32)}), tmp_path / "c*")
    others = snapshot(tmp_path)

    convert(rules, MemorySource({"w": np.full(2, 2, np.float32)}), tmp_path / "c*", overwrite=True)

    assert listing(tmp_path) == sorted(others)
    np.testing.assert_array_equal(read_all(tmp_path / "c1")["w"], np.zeros(2, np.float32))
    np.testing.assert_array_equal(read_all(tmp_path / "c*")["w"], np.full(2, 2, np.float32))


def _source_files(output_format: str, path: Path) -> Path:
    """A source in ``output_format``'s format at ``path``: what a conversion to the same path would replace."""
    arrays = {"layers/a/vars/0": np.arange(4, dtype=np.float32)}
    if output_format == "tf-checkpoint":
        return write_checkpoint(path, arrays)
    if output_format == "safetensors":
        return write_safetensors(path, arrays)
    return write_keras3_h5(path, arrays)


@pytest.mark.parametrize(("output_format", "name"), convert_cases())
def test_convert_never_overwrites_a_source_with_glob_characters_in_its_name(
    tmp_path: Path, name: str, output_format: str
) -> None:
    path = _source_files(output_format, tmp_path / CONVERT_OUTPUTS[output_format].format(name))
    before = snapshot(tmp_path)

    with pytest.raises(TargetError, match=r"which the source .* reads; a conversion never touches its source"):
        convert(parse_rules(IDENTITY), open_source(path), path, overwrite=True)

    assert snapshot(tmp_path) == before


# --- apply --output: the CLI and save_target -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    return demo.write_pretrained_checkpoint(tmp_path_factory.mktemp("pretrained"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def apply_cases(names: list[str]) -> list[tuple[str, str]]:
    return [(kind, name) for kind in APPLY_OUTPUTS for name in names if kind == "keras-h5" or "[" not in name]


APPLY_ARGV = ["apply", str(demo.RULES), "--target", "mapper.demo:new_model", "-q"]


@pytest.mark.parametrize(("output_format", "name"), apply_cases(["ckpt[1]", "c*", "c?"]))
def test_cli_apply_writes_names_with_glob_characters_and_refuses_them_the_second_time(
    capsys: pytest.CaptureFixture[str], pretrained: tuple[Any, Path], tmp_path: Path, name: str, output_format: str
) -> None:
    model, prefix = pretrained
    (tmp_path / "out").mkdir()
    output = tmp_path / "out" / APPLY_OUTPUTS[output_format].format(name)
    argv = [*APPLY_ARGV, "--source", str(prefix), "--output", str(output)]

    code, out, err = run(capsys, *argv)

    assert code == cli.EXIT_OK, err
    assert out.strip().endswith(f"weights saved to {output}")
    restored = demo.new_model()
    if output_format == "keras-h5":
        assert listing(tmp_path / "out") == [output.name]
        restored.load_weights(str(output))
    else:
        assert listing(tmp_path / "out") == [f"{name}.data-00000-of-00001", f"{name}.index"]
        tf.train.Checkpoint(model=restored).read(str(output)).expect_partial()
    np.testing.assert_array_equal(restored.get_layer("d1").kernel, model.get_layer("d1").kernel)
    before = snapshot(tmp_path)

    code, _, err = run(capsys, *argv)

    assert code == cli.EXIT_OUTPUT
    assert "already exists" in err and "--overwrite" in err
    assert snapshot(tmp_path) == before


def test_cli_apply_to_a_checkpoint_path_with_a_bracket_is_refused(
    capsys: pytest.CaptureFixture[str], pretrained: tuple[Any, Path], tmp_path: Path
) -> None:
    _, prefix = pretrained

    code, out, err = run(capsys, *APPLY_ARGV, "--source", str(prefix), "--output", str(tmp_path / "ckpt[1]"))

    assert code == cli.EXIT_OUTPUT
    assert "could never be read back" in err and "weights saved" not in out
    assert listing(tmp_path) == []


def test_cli_apply_with_its_source_as_output_is_refused_before_the_model_changes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, prefix = demo.write_pretrained_checkpoint(tmp_path)
    before = snapshot(tmp_path)

    code, out, err = run(capsys, *APPLY_ARGV, "--source", str(prefix), "--output", str(prefix), "--overwrite")

    assert code == cli.EXIT_OUTPUT
    assert "which the source" in err and "reads" in err and "weights saved" not in out
    assert "applied:" not in out
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("output_format", "name"), apply_cases(["w[0]", "w*"]))
def test_save_target_writes_and_refuses_an_existing_output(tmp_path: Path, output_format: str, name: str) -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    output = tmp_path / APPLY_OUTPUTS[output_format].format(name)
    save_target(target_from(model), output)
    before = snapshot(tmp_path)

    with pytest.raises(TargetError, match=r"already exists.*pass --overwrite"):
        save_target(target_from(model), output)
    with pytest.raises(TargetError, match=r"already exists.*pass --overwrite"):
        check_output(output, overwrite=False)

    assert snapshot(tmp_path) == before
    save_target(target_from(model), output, overwrite=True)
    assert listing(tmp_path) == sorted(before)


def test_save_target_overwrite_of_a_glob_name_leaves_the_checkpoints_it_would_match(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    save_target(target_from(model), tmp_path / "c1")
    save_target(target_from(model), tmp_path / "c*")
    before = snapshot(tmp_path)

    save_target(target_from(model), tmp_path / "c*", overwrite=True)

    assert listing(tmp_path) == sorted(before)
    assert snapshot(tmp_path)["c1.index"] == before["c1.index"]


@pytest.mark.parametrize(("output_format", "name"), apply_cases(["c[1]", "c*", "plain"]))
def test_save_target_never_overwrites_a_source(tmp_path: Path, name: str, output_format: str) -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    output = tmp_path / APPLY_OUTPUTS[output_format].format(name)
    save_target(target_from(model), output)
    source = open_source(output)
    before = snapshot(tmp_path)

    for call in (
        lambda: save_target(target_from(model), output, overwrite=True, sources=[source]),
        lambda: check_output(output, overwrite=True, sources=[source]),
    ):
        with pytest.raises(TargetError, match=r"which the source .* reads; apply never touches its source"):
            call()

    assert snapshot(tmp_path) == before


# --- apply --output named like a file format: refused before any work ------------------------------------------


@pytest.mark.parametrize(
    ("name", "keras_name", "prefix"),
    [
        ("model.h5", "model.weights.h5", "model"),
        ("model.hdf5", "model.weights.h5", "model"),
        ("model.weights.hdf5", "model.weights.h5", "model"),
        ("model.keras", "model.weights.h5", "model"),
        ("model.safetensors", "model.weights.h5", "model"),
        ("model.npz", "model.weights.h5", "model"),
        ("pytorch_model.bin", "pytorch_model.weights.h5", "pytorch_model"),
        ("model.pt", "model.weights.h5", "model"),
        ("model.pth", "model.weights.h5", "model"),
        ("MODEL.H5", "MODEL.weights.h5", "MODEL"),
    ],
)
def test_cli_apply_refuses_an_output_named_like_a_file_format(
    capsys: pytest.CaptureFixture[str],
    pretrained: tuple[Any, Path],
    tmp_path: Path,
    name: str,
    keras_name: str,
    prefix: str,
) -> None:
    _, source = pretrained
    output = tmp_path / name
    argv = [
        "apply",
        str(demo.RULES),
        "--target",
        "mapper.demo:new_model",
        "--source",
        str(source),
        "--output",
        str(output),
    ]

    code, out, err = run(capsys, *argv)

    assert code == cli.EXIT_OUTPUT
    assert out == ""  # refused before the plan: no report, no "weights saved to"
    assert err.startswith(f"mapper: error: cannot write {output}: only a name ending in .weights.h5 is saved as a file")
    assert f"so {output} would be written as {output}.index and {output}.data-*" in err
    assert (
        f"write {tmp_path / keras_name} for Keras weights, or {tmp_path / prefix} (no file suffix) for a TF checkpoint"
        in err
    )
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("bert_model.ckpt", ["bert_model.ckpt.data-00000-of-00001", "bert_model.ckpt.index"]),
        ("ckpt-1", ["ckpt-1.data-00000-of-00001", "ckpt-1.index"]),
        ("model.weights.h5", ["model.weights.h5"]),
    ],
)
def test_cli_apply_writes_prefixes_and_weights_files_as_named(
    capsys: pytest.CaptureFixture[str], pretrained: tuple[Any, Path], tmp_path: Path, name: str, written: list[str]
) -> None:
    _, source = pretrained

    code, out, err = run(capsys, *APPLY_ARGV, "--source", str(source), "--output", str(tmp_path / name))

    assert code == cli.EXIT_OK, err
    assert out.strip().endswith(f"weights saved to {tmp_path / name}")
    assert listing(tmp_path) == written


def test_save_target_refuses_an_output_named_like_a_file_format(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])

    with pytest.raises(OutputError, match=r"write .*model\.weights\.h5 for Keras weights"):
        save_target(target_from(model), tmp_path / "model.h5")
    with pytest.raises(OutputError, match=r"safetensors file; .* use mapper convert$"):
        check_output(tmp_path / "model.safetensors", overwrite=False)

    assert listing(tmp_path) == []


# --- output problems exit 5 (EXIT_OUTPUT), for apply and convert alike, as --help says ---------------------------


def _output_argv(verb: str, source: Path, output: Path) -> list[str]:
    if verb == "apply":
        return [*APPLY_ARGV, "--source", str(source), "--output", str(output)]
    return ["convert", str(demo.RULES), str(source), str(output), "-q"]


@pytest.mark.parametrize("verb", ["apply", "convert"])
@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("exists", "already exists (ckpt.index); pass --overwrite to replace it"),
        ("no-directory", "does not exist; create it first (mkdir -p"),
        ("a-directory", "it is a directory; give a file name inside it"),
    ],
)
def test_cli_output_problems_exit_5(
    capsys: pytest.CaptureFixture[str],
    pretrained: tuple[Any, Path],
    tmp_path: Path,
    verb: str,
    case: str,
    fragment: str,
) -> None:
    _, source = pretrained
    output = {"exists": tmp_path / "ckpt", "no-directory": tmp_path / "missing" / "ckpt", "a-directory": tmp_path}[case]
    if case == "exists":
        (tmp_path / "ckpt.index").write_bytes(b"")
    before = snapshot(tmp_path)

    code, out, err = run(capsys, *_output_argv(verb, source, output))

    assert code == cli.EXIT_OUTPUT == 5
    assert fragment in err and out == ""
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("verb", ["apply", "convert"])
def test_help_documents_exit_5_for_outputs(capsys: pytest.CaptureFixture[str], verb: str) -> None:
    with pytest.raises(SystemExit):
        cli.main([verb, "--help"])

    shown = " ".join(capsys.readouterr().out.split())

    assert "5 the output cannot be written: it exists (pass --overwrite), its directory is missing" in shown


# --- the Source contract: every file a source reads is listed ------------------------------------------------------


@pytest.fixture
def opened_files() -> Iterator[list[str]]:
    """The paths Python opens while the test records them (native libraries such as HDF5 and TF are not seen)."""
    opened: list[str] = []
    recording.append(opened)
    yield opened
    recording.remove(opened)


recording: list[list[str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and recording and isinstance(args[0], (str, bytes, Path)):
        recording[-1].append(str(Path(args[0].decode() if isinstance(args[0], bytes) else args[0]).resolve()))


sys.addaudithook(_audit)


def _tf_directory(directory: Path) -> Path:
    tf.train.CheckpointManager(tf.train.Checkpoint(w=tf.Variable([1.0])), str(directory), max_to_keep=1).save()
    return directory


def _torch_index(directory: Path) -> Path:
    import json

    import torch

    write_torch(directory / "a.bin", {"a": torch.zeros(2)})
    write_torch(directory / "b.bin", {"b": torch.ones(2)})
    index = directory / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "a.bin", "b": "b.bin"}}))
    return index


SOURCES: dict[str, Callable[[Path], Path]] = {
    "tf-checkpoint": lambda d: write_checkpoint(d / "c*", {"w": np.zeros(2, np.float32)}),
    "tf-checkpoint-directory": _tf_directory,
    "safetensors": lambda d: write_safetensors(d / "m[1].safetensors", {"w": np.zeros(2, np.float32)}),
    "safetensors-index": lambda d: write_sharded_safetensors(d, [{"a": np.zeros(2)}, {"b": np.ones(2)}])[0],
    "keras-h5": lambda d: write_keras3_h5(d / "m[1].weights.h5", {"layers/d/vars/0": np.zeros(2)}),
    "npz": lambda d: (np.savez(d / "w[1].npz", w=np.zeros(2)), d / "w[1].npz")[1],
    "torch": lambda d: write_torch(d / "w[1].pt", {"w": __import__("torch").zeros(2)}),
    "torch-index": _torch_index,
}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_a_source_lists_every_file_it_reads(tmp_path: Path, kind: str, opened_files: list[str]) -> None:
    directory = tmp_path / "src"
    directory.mkdir()
    path = SOURCES[kind](directory)
    expected = {str(file.resolve()) for file in directory.rglob("*") if file.is_file()}
    opened_files.clear()

    source = open_source(path)
    source.read(list(source.specs()))

    listed = {str(file.resolve()) for file in source.input_files()}
    assert listed == expected
    assert {file for file in opened_files if file.startswith(str(tmp_path.resolve()))} <= listed  # not imports
    assert isinstance(source, Source)
    assert (source.checkpoint_prefix is not None) == kind.startswith("tf-checkpoint")


def test_every_source_class_implements_the_contract() -> None:
    assert {cls.__name__ for cls in SOURCE_CLASSES} == {
        "TFCheckpointSource",
        "SafetensorsSource",
        "KerasH5Source",
        "NpzSource",
        "TorchSource",
        "MemorySource",
    }
    for cls in (KerasH5Source, NpzSource, SafetensorsSource, TorchSource, MemorySource):
        assert cls.checkpoint_prefix is None
    assert MemorySource({"w": np.zeros(1)}).input_files() == ()


# --- write faults: named as OutputError, nothing left behind ----------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        pytest.param(OSError(errno.ENOSPC, "No space left on device"), "no space left on device", id="ENOSPC"),
        pytest.param(OSError(errno.EFBIG, "File too large"), "file size limit", id="EFBIG"),
        pytest.param(OSError(errno.EACCES, "Permission denied"), "permission denied", id="EACCES"),
        pytest.param(OSError(errno.EROFS, "Read-only file system"), "read-only file system", id="EROFS"),
        pytest.param(RuntimeError("x; No space left on device [Op:SaveV2]"), "no space left on device", id="tf-text"),
        pytest.param(RuntimeError("errno = 27, error message = 'File too large'"), "file size limit", id="h5py-text"),
    ],
)
def test_write_faults_are_output_errors_naming_output_and_cause(error: Exception, cause: str) -> None:
    with pytest.raises(OutputError) as raised, faults_named("out/model.safetensors"):
        raise error

    assert str(raised.value).startswith("cannot write out/model.safetensors: ")
    assert cause in str(raised.value)
    assert raised.value.path == "out/model.safetensors"
    assert raised.value.__cause__ is error


def test_other_errors_pass_through_faults_named() -> None:
    with pytest.raises(ValueError, match="bad shape"), faults_named("out/ckpt"):
        raise ValueError("bad shape")


def test_a_directory_without_write_permission_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.access", lambda *args, **kwargs: False)  # root writes anywhere: pretend it may not

    with pytest.raises(OutputError, match=r"permission denied in directory .*; make its directory writable") as raised:
        check_output(tmp_path / "ckpt", overwrite=True)
    assert raised.value.errno == errno.EACCES


@pytest.mark.parametrize("output_format", ["safetensors", "keras-h5", "tf-checkpoint"])
def test_a_fault_while_writing_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output_format: str
) -> None:
    from mapper.outputs.writers import open_writer

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = open_writer(tmp_path / "out", [TensorSpec("a/w", (2,), "float32")], format=output_format)
    monkeypatch.setattr(type(writer), "_write", full)
    with pytest.raises(OutputError, match="no space left on device"), writer:
        writer.write("a/w", np.ones(2, np.float32))

    assert listing(tmp_path) == []


def test_an_h5_file_that_does_not_read_back_is_not_moved_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mapper.outputs.writers import KerasH5Writer

    writer = KerasH5Writer(tmp_path / "m.weights.h5", [TensorSpec("a/w", (2,), "float32")])
    writer.write("a/w", np.ones(2, np.float32))
    monkeypatch.setattr(writer, "specs", {**writer.specs, "a/lost": TensorSpec("a/lost", (1,), "float32")})
    writer.written.add("a/lost")

    with pytest.raises(OutputError, match=r"does not read back \(1 dataset missing or misshapen, first 'a/lost'\)"):
        writer.commit()
    assert listing(tmp_path) == []


def test_an_h5_output_that_does_not_fit_is_refused_before_h5py_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mapper.outputs import faults
    from mapper.outputs.writers import KerasH5Writer

    monkeypatch.setattr(faults, "free_bytes", lambda directory: faults.H5_MARGIN_BYTES)  # just the margin free

    with pytest.raises(OutputError, match=r"no space left on device: it needs about .* free") as raised:
        KerasH5Writer(tmp_path / "m.weights.h5", [TensorSpec("a/w", (2,), "float32")])
    assert raised.value.errno == errno.ENOSPC
    assert listing(tmp_path) == []


# --- SIGTERM, like SIGINT ------------------------------------------------------------------------------------------


def test_sigterm_raises_terminated_and_restores_the_default() -> None:
    with pytest.raises(Terminated) as raised, sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at the next bytecode: this never completes

    assert raised.value.code == EXIT_TERMINATED == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_sigterm_raises_leaves_a_handler_someone_installed() -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_raises_does_nothing_outside_the_main_thread() -> None:
    seen: list[object] = []

    def in_thread() -> None:
        with sigterm_raises():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == [signal.SIG_DFL]


# --- tensors written from their bytes, a chunk at a time ---------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "fragment"),
    [
        pytest.param([b"\0" * 4], "4 bytes were given for 'w', not the 8", id="too-few"),
        pytest.param([b"\0" * 8, b"\0"], "run past its 8 bytes", id="too-many"),
    ],
)
@pytest.mark.parametrize("suffix", [".safetensors", ""])
def test_write_chunks_takes_exactly_the_tensors_bytes(
    tmp_path: Path, suffix: str, chunks: list[bytes], fragment: str
) -> None:
    from mapper.outputs.writers import open_writer

    path = tmp_path / f"out{suffix}"
    writer = open_writer(path, [TensorSpec("w", (2,), "float32"), TensorSpec("v", (1,), "float32")])
    with pytest.raises(TargetError, match=fragment):
        writer.write_chunks("w", [memoryview(chunk) for chunk in chunks])
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_write_chunks_is_refused_by_writers_that_take_arrays(tmp_path: Path) -> None:
    from mapper.outputs.writers import open_writer

    writer = open_writer(tmp_path / "w.h5", [TensorSpec("w", (1,), "float32")])
    with pytest.raises(TargetError, match="takes arrays, not bytes"):
        writer.write_chunks("w", [memoryview(b"\0" * 4)])
    writer.abort()


@pytest.mark.parametrize("suffix", [".safetensors", ""])
def test_writing_after_commit_is_an_output_error(tmp_path: Path, suffix: str) -> None:
    from mapper.outputs.writers import open_writer

    path = tmp_path / f"out{suffix}"
    writer = open_writer(path, [TensorSpec("w", (2,), "float32")], format="safetensors" if suffix else "tf-checkpoint")
    writer.write("w", np.ones(2, np.float32))
    writer.commit()
    with pytest.raises(OutputError, match="already committed or aborted"):
        writer._write(TensorSpec("w", (2,), "float32"), np.ones(2, np.float32))  # past base's checks: the fd itself
