"""The ``mapper`` command on the Keras backend of the run (tensorflow, jax or torch), in fresh processes.

Each command runs in a subprocess on this run's ``KERAS_BACKEND`` with this worktree's ``mapper``, through a small
wrapper that can make TensorFlow unimportable and records which TensorFlow modules the command loaded. On JAX and
PyTorch no command here may load TensorFlow; where a task needs it (a TF checkpoint output, ``--method
init_from_checkpoint``, a TF checkpoint's string tensors), running without TensorFlow is a named error with its
exit code, before anything is written. An unknown ``KERAS_BACKEND`` is a usage error naming the accepted ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mapper import cli, demo
from mapper.cli.backend import BACKENDS, importable

pytestmark = pytest.mark.backends
pytest.importorskip("keras")  # the fixtures build the demo's models on this run's backend

ROOT = Path(__file__).resolve().parents[2]
BACKEND = os.environ.get("KERAS_BACKEND") or "tensorflow"
TARGET = "mapper.demo:new_model"
TENSORFLOW = ("tensorflow", "tf_keras")

# Runs ``mapper.cli.main`` on each argument list of the JSON in argv[1], one after the other in this process, after
# MAPPER_TEST_BLOCK_TF=1 made TensorFlow unimportable; writes each one's exit code, output streams and the TensorFlow
# modules loaded by then, as JSON, to the file MAPPER_TEST_RESULTS names.
WRAPPER = """
import contextlib, io, json, os, sys
if os.environ.get("MAPPER_TEST_BLOCK_TF") == "1":
    for name in ("tensorflow", "tf_keras"):
        sys.modules[name] = None
from mapper.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    loaded = sorted(n for n, m in sys.modules.items() if m is not None and n.split(".")[0] in ("tensorflow", "tf_keras"))
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue(), "tensorflow": loaded})
with open(os.environ["MAPPER_TEST_RESULTS"], "w") as file:
    json.dump(results, file)
"""

# Writes a name-based TF checkpoint (tf.raw_ops.SaveV2) at PREFIX of the arrays in the .npz NPZ, plus a string
# tensor 'vocab'; PREFIX and NPZ are set by a first line.
SAVE_CHECKPOINT = """
import numpy as np
import tensorflow as tf
arrays = np.load(NPZ)
names = sorted(arrays.files)
tensors = [tf.constant(arrays[name]) for name in names] + [tf.constant([b"a", b"b"])]
tf.raw_ops.SaveV2(prefix=PREFIX, tensor_names=[*names, "vocab"], shape_and_slices=[""] * len(tensors), tensors=tensors)
"""


@dataclass(frozen=True)
class Ran:
    """A finished ``mapper`` subprocess: exit code, output streams, and the TensorFlow modules it loaded."""

    code: int
    out: str
    err: str
    tensorflow: list[str]


def mapper_runs(
    tmp: Path, *commands: list[str], backend: str | None = BACKEND, block_tf: bool | None = None, **environ: str
) -> list[Ran]:
    """Run each ``mapper`` command, in order, in one fresh process on ``backend`` (None: KERAS_BACKEND unset) with
    ``environ``; TensorFlow blocked as in this run unless ``block_tf`` says. The TensorFlow modules of each result are
    the ones loaded by the end of that command."""
    results = tmp / f"results-{len(list(tmp.glob('results-*')))}.json"
    blocked = os.environ.get("MAPPER_TEST_BLOCK_TF") == "1" if block_tf is None else block_tf
    environment = {
        **{key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"},
        **({"KERAS_BACKEND": backend} if backend is not None else {}),
        **environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "MAPPER_TEST_RESULTS": str(results),
        "MAPPER_TEST_BLOCK_TF": "1" if blocked else "0",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, json.dumps(commands)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0 and results.is_file(), done.stderr
    return [Ran(**result) for result in json.loads(results.read_text())]


def mapper(tmp: Path, *argv: str, backend: str | None = BACKEND, block_tf: bool | None = None, **environ: str) -> Ran:
    """Run ``mapper ARGV`` in a fresh process (see ``mapper_runs``)."""
    return mapper_runs(tmp, list(argv), backend=backend, block_tf=block_tf, **environ)[0]


def assert_no_tensorflow_unless_its_backend(ran: Ran) -> None:
    if BACKEND != "tensorflow":
        assert ran.tensorflow == [], ran.err


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, np.ndarray], Path]:
    """The demo's pretrained weights by Keras path, and the safetensors file that holds them (written on this backend)."""
    model, path = demo.write_pretrained_safetensors(tmp_path_factory.mktemp("pretrained"))
    return {weight.path: np.asarray(weight.numpy()) for weight in model.weights}, path


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if not path.name.startswith("results-"))


# --- the backend: as Keras chooses it, and an unknown one refused ---------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["demo"],
        ["apply", str(demo.PATH_RULES), "--source", "{source}", "--target", TARGET, "--output", "out.weights.h5"],
        ["plan", str(demo.PATH_RULES), "--source", "{source}", "--target", TARGET],
    ],
    ids=["demo", "apply", "plan"],
)
def test_an_unknown_keras_backend_is_a_usage_error_naming_the_accepted_ones(
    tmp_path: Path, pretrained: tuple[dict[str, np.ndarray], Path], argv: list[str]
) -> None:
    filled = [arg.replace("{source}", str(pretrained[1])) for arg in argv]

    ran = mapper(tmp_path, *filled, backend="theano")

    assert ran.code == cli.EXIT_USAGE, ran.err
    assert ran.err.startswith("mapper: error: KERAS_BACKEND='theano' is not a Keras backend")
    assert all(name in ran.err for name in BACKENDS)
    assert "Traceback" not in ran.err
    assert files_in(tmp_path) == []


def test_without_keras_backend_the_backend_of_keras_json_is_used_as_keras_does(
    tmp_path: Path, pretrained: tuple[dict[str, np.ndarray], Path]
) -> None:
    home = tmp_path / "keras-home"
    home.mkdir()
    (home / "keras.json").write_text(json.dumps({"backend": "theano", "floatx": "float32"}))
    argv = ["plan", str(demo.PATH_RULES), "--source", str(pretrained[1]), "--target", TARGET]

    refused = mapper(tmp_path, *argv, backend=None, KERAS_HOME=str(home))
    (home / "keras.json").write_text(json.dumps({"backend": BACKEND, "floatx": "float32"}))
    chosen = mapper(tmp_path, *argv, "--format", "json", backend=None, KERAS_HOME=str(home))

    assert refused.code == cli.EXIT_USAGE, refused.err
    assert refused.err.startswith("mapper: error: the backend 'theano' of keras.json is not a Keras backend")
    assert chosen.code == cli.EXIT_OK, chosen.err
    assert json.loads(chosen.out)["plan"]["target"].startswith("keras.Model")
    assert_no_tensorflow_unless_its_backend(chosen)


def test_a_command_that_builds_no_model_ignores_the_keras_backend(
    tmp_path: Path, pretrained: tuple[dict[str, np.ndarray], Path]
) -> None:
    ran = mapper(tmp_path, "inspect", str(pretrained[1]), backend="theano")

    assert ran.code == cli.EXIT_OK, ran.err
    assert "d1/kernel" in ran.out
    assert ran.tensorflow == []


# --- apply and the demo, end to end on this backend ------------------------------------------------------------------


def test_apply_saves_keras_weights_on_this_backend(
    tmp_path: Path, pretrained: tuple[dict[str, np.ndarray], Path]
) -> None:
    weights, source = pretrained
    output = tmp_path / "fine-tuned.weights.h5"

    ran = mapper(
        tmp_path, "apply", str(demo.PATH_RULES), "--source", str(source), "--target", TARGET, "--output", str(output)
    )

    assert ran.code == cli.EXIT_OK, ran.err
    assert ran.out.splitlines()[-1].startswith("applied: 8 variables (") and str(output) in ran.out
    assert_no_tensorflow_unless_its_backend(ran)
    assert files_in(tmp_path) == [output.name]  # no temporary file left beside it
    restored, fresh = demo.new_model(), demo.new_model()
    restored.load_weights(str(output))
    for weight, initial in zip(restored.weights, fresh.weights, strict=True):
        expected = np.asarray(initial.numpy()) if weight.path.startswith("head/") else weights[weight.path]
        assert np.array_equal(np.asarray(weight.numpy()), expected), weight.path


@pytest.mark.skipif(BACKEND == "tensorflow", reason="tests/test_cli.py runs the TensorFlow demo in-process")
def test_the_demo_passes_on_this_backend(tmp_path: Path) -> None:
    ran = mapper(tmp_path, "demo", "--workdir", str(tmp_path / "demo"))

    assert ran.code == cli.EXIT_OK, ran.err + ran.out
    assert "Demo passed." in ran.out and "BAD" not in ran.out
    assert "ok   head/kernel" in ran.out
    assert_no_tensorflow_unless_its_backend(ran)
    saved = "ckpt.index" if BACKEND == "tensorflow" else "model.weights.h5"
    assert saved in files_in(tmp_path / "demo" / "finetune")


NO_TENSORFLOW_NEEDED = [
    ["inspect", "{source}"],
    ["inspect", "--target", TARGET],
    ["validate", str(demo.PATH_RULES), "--source", "{source}"],
    ["plan", str(demo.PATH_RULES), "--source", "{source}", "--target", TARGET],
    ["explain", str(demo.PATH_RULES), "d1/kernel", "--source", "{source}", "--target", TARGET],
    ["suggest", "--source", "{source}", "--target", TARGET],
]


@pytest.mark.skipif(BACKEND == "tensorflow", reason="on the TensorFlow backend they import it quietly, first")
def test_commands_that_need_no_tensorflow_do_not_load_it(
    tmp_path: Path, pretrained: tuple[dict[str, np.ndarray], Path]
) -> None:
    commands = [[arg.replace("{source}", str(pretrained[1])) for arg in argv] for argv in NO_TENSORFLOW_NEEDED]

    runs = mapper_runs(tmp_path, *commands)

    assert [ran.code for ran in runs] == [cli.EXIT_OK] * len(commands), [ran.err for ran in runs]
    assert runs[-1].tensorflow == []  # loaded modules stay loaded: the last run saw them all


# --- what needs TensorFlow, without it: a named error, its exit code, nothing written ---------------------------------


@pytest.mark.parametrize(
    ("options", "code", "words"),
    [
        (["--output", "{out}/ckpt"], cli.EXIT_OUTPUT, ["TF checkpoint", "{out}/ckpt.weights.h5"]),
        (
            ["--output", "{out}/model.weights.h5", "--method", "init_from_checkpoint"],
            cli.EXIT_APPLY,
            ["--method init_from_checkpoint", "--method assign", "nothing was changed"],
        ),
    ],
    ids=["tf-checkpoint-output", "init-from-checkpoint"],
)
def test_what_needs_tensorflow_is_refused_before_any_work_without_it(
    tmp_path: Path, pretrained: tuple[dict[str, np.ndarray], Path], options: list[str], code: int, words: list[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    filled = [option.replace("{out}", str(out)) for option in options]

    ran = mapper(
        tmp_path,
        "apply",
        str(demo.PATH_RULES),
        "--source",
        str(pretrained[1]),
        "--target",
        TARGET,
        *filled,
        block_tf=True,
    )

    assert ran.code == code, ran.err
    message = ran.err.strip()
    assert message.startswith("mapper: error:") and len(message.splitlines()) == 1, message
    for word in words:
        assert word.replace("{out}", str(out)) in message
    install_or_backend = "pip install 'weight-mapper[tensorflow]'" if BACKEND == "tensorflow" else repr(BACKEND)
    assert install_or_backend in message
    assert ran.out == ""  # refused before the plan was even made
    assert files_in(out) == []
    assert ran.tensorflow == []


@pytest.mark.skipif(BACKEND == "tensorflow", reason="on the TensorFlow backend a TF checkpoint is a valid output")
def test_a_tf_checkpoint_output_is_refused_on_this_backend_even_with_tensorflow(
    tmp_path: Path, pretrained: tuple[dict[str, np.ndarray], Path]
) -> None:
    if not importable("tensorflow") and os.environ.get("MAPPER_TEST_BLOCK_TF") != "1":
        pytest.skip("TensorFlow is not installed")
    output = tmp_path / "ckpt"

    ran = mapper(
        tmp_path,
        *("apply", str(demo.PATH_RULES), "--source", str(pretrained[1]), "--target", TARGET, "--output", str(output)),
        block_tf=False,
    )

    assert ran.code == cli.EXIT_OUTPUT, ran.err
    assert f"on the Keras backend {BACKEND!r} a model's variables are not tf.Variables" in ran.err
    assert f"write {output}.weights.h5" in ran.err
    assert files_in(tmp_path) == []
    assert ran.tensorflow == []


# --- TF checkpoint sources, read by weight-mapper's own reader -------------------------------------------------------


@pytest.fixture(scope="module")
def tf_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, pretrained: tuple[dict[str, np.ndarray], Path]
) -> tuple[Path, Path]:
    """A name-based TF checkpoint of the demo's pretrained weights by Keras path (plus a string tensor 'vocab'),
    written by TensorFlow in a separate process, and a rule file that skips 'vocab'."""
    if not importable("tensorflow") and os.environ.get("MAPPER_TEST_BLOCK_TF") != "1":
        pytest.skip("writing the TF checkpoint needs TensorFlow installed")
    directory = tmp_path_factory.mktemp("tf-checkpoint")
    np.savez(directory / "weights.npz", **pretrained[0])
    script = f"PREFIX, NPZ = {str(directory / 'ckpt')!r}, {str(directory / 'weights.npz')!r}\n{SAVE_CHECKPOINT}"
    if importable("tensorflow"):  # TensorFlow can be imported here (on its backend it is loaded already)
        exec(script, {})
    else:  # TensorFlow is blocked in this process only
        environment = {key: value for key, value in os.environ.items() if key != "MAPPER_TEST_BLOCK_TF"}
        subprocess.run(
            [sys.executable, "-c", script],
            env={**environment, "TF_CPP_MIN_LOG_LEVEL": "3"},
            check=True,
            capture_output=True,
            timeout=600,
        )
    rules = directory / "rules.toml"
    rules.write_text(
        f'format = 1\nextends = ["{demo.PATH_RULES.as_posix()}"]\n'
        "[[rules]]\nmatch = 'vocab'\nskip = 'a vocabulary, not a weight'\n"
    )
    return directory / "ckpt", rules


def test_a_tf_checkpoint_source_is_applied_without_tensorflow(
    tmp_path: Path, tf_checkpoint: tuple[Path, Path], pretrained: tuple[dict[str, np.ndarray], Path]
) -> None:
    prefix, rules = tf_checkpoint
    output = tmp_path / "model.weights.h5"

    inspected = mapper(tmp_path, "inspect", str(prefix), block_tf=True)

    assert inspected.code == cli.EXIT_OK, inspected.err
    assert "vocab" in inspected.out and "d1/kernel" in inspected.out
    assert inspected.tensorflow == []
    if BACKEND == "tensorflow":
        return  # a Keras model on TensorFlow needs TensorFlow: tests/test_cli.py applies TF checkpoints there
    ran = mapper(tmp_path, "apply", str(rules), "--source", str(prefix), "--target", TARGET, "--output", str(output))
    assert ran.code == cli.EXIT_OK, ran.err
    assert_no_tensorflow_unless_its_backend(ran)
    restored = demo.new_model()
    restored.load_weights(str(output))
    assert np.array_equal(np.asarray(restored.get_layer("d1").kernel.numpy()), pretrained[0]["d1/kernel"])


def test_a_string_tensor_without_tensorflow_is_a_named_error(tf_checkpoint: tuple[Path, Path]) -> None:
    from mapper.errors import SourceError
    from mapper.sources.tf_checkpoint import TFCheckpointSource

    source = TFCheckpointSource(tf_checkpoint[0])
    assert source.read(["d1/kernel"])["d1/kernel"].shape == (16, 32)  # read directly, TensorFlow or not
    if importable("tensorflow"):
        assert source.read(["vocab"])["vocab"].numpy().tolist() == [b"a", b"b"]
        return
    with pytest.raises(SourceError, match=r"needs TensorFlow, which is not installed .*weight-mapper\[tensorflow\]"):
        source.read(["vocab"])


def test_an_index_the_own_reader_cannot_parse_needs_tensorflow_and_says_so(tmp_path: Path) -> None:
    from mapper.errors import CorruptSourceError, SourceError
    from mapper.sources.tf_checkpoint import TFCheckpointSource

    (tmp_path / "ckpt.index").write_bytes(b"not an SSTable, and too short to be one")
    (tmp_path / "ckpt.data-00000-of-00001").write_bytes(b"")

    with pytest.raises(SourceError) as raised:
        TFCheckpointSource(tmp_path / "ckpt")

    if importable("tensorflow"):  # TensorFlow's reader gets the last word, and finds the index damaged
        assert isinstance(raised.value, CorruptSourceError)
        assert "cannot read the index file" in str(raised.value)
    else:
        assert not isinstance(raised.value, CorruptSourceError)
        assert "reading an index in a layout weight-mapper's own reader does not parse needs TensorFlow" in str(
            raised.value
        )
        assert "pip install 'weight-mapper[tensorflow]'" in str(raised.value)
