"""Tests for mapper.sources.tf_checkpoint and open_source: real checkpoints of every layout, and every bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import checkpoints
import numpy as np
import pytest
import tensorflow as tf

from mapper.errors import CorruptSourceError, SourceError, SourceNotFoundError
from mapper.sources import FORMATS, Source, TFCheckpointSource, open_source
from mapper.sources.tf_bundle import BundleFormatError, read_index
from mapper.sources.tf_checkpoint import OBJECT_GRAPH_KEY, checkpoint_prefixes, is_tf_checkpoint

pytestmark = pytest.mark.tf

Written = tuple[str, dict[str, np.ndarray]]


def assert_reads(source: TFCheckpointSource, expected: dict[str, np.ndarray]) -> None:
    """specs() lists exactly the written tensors with their shapes and dtypes, and read() returns their values.

    Tensors of fixed-size dtypes come back as read-only NumPy arrays; partitioned ones (read by RestoreV2) as
    tf.Tensors.
    """
    specs = source.specs()
    assert list(specs) == sorted(expected)
    for name, value in expected.items():
        assert specs[name].shape == value.shape
        assert specs[name].dtype == str(value.dtype)
    values = source.read(list(expected))
    assert list(values) == list(expected)
    for name, value in expected.items():
        assert isinstance(values[name], np.ndarray | tf.Tensor)
        np.testing.assert_array_equal(np.asarray(values[name]), value)


# --- fixtures: one directory per checkpoint layout, written once per module ---------------------------------------


@pytest.fixture(scope="module")
def keras_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Written:
    model = checkpoints.functional_model()
    checkpoints.distinct_values(model.weights)
    return checkpoints.write_keras_checkpoint(model, tmp_path_factory.mktemp("keras"))


@pytest.fixture(scope="module")
def tf1_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return checkpoints.write_tf1_checkpoint(tmp_path_factory.mktemp("tf1"))


@pytest.fixture(scope="module")
def tf1_sharded_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return checkpoints.write_tf1_checkpoint(tmp_path_factory.mktemp("tf1_sharded"), sharded=True)


@pytest.fixture(scope="module")
def tf2_sharded_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return checkpoints.write_sharded_tf2_checkpoint(tmp_path_factory.mktemp("tf2_sharded"))


def copy_checkpoint(prefix: str, directory: Path) -> str:
    """Copy every file of a checkpoint into ``directory`` (to damage the copy); returns the new prefix."""
    directory.mkdir(parents=True, exist_ok=True)
    source = Path(prefix)
    for file in source.parent.glob(source.name + ".*"):
        shutil.copy(file, directory / file.name)
    return str(directory / source.name)


# --- every layout reads back what was written ---------------------------------------------------------------------


def test_keras3_object_based_checkpoint(keras_ckpt: Written) -> None:
    prefix, values = keras_ckpt
    source = TFCheckpointSource(prefix)
    assert_reads(source, values)
    assert OBJECT_GRAPH_KEY not in source.specs()
    assert "model/_operations/1/_kernel/.ATTRIBUTES/VARIABLE_VALUE" in source.specs()
    assert source.prefix == prefix
    assert source.description == prefix
    assert isinstance(source, Source)


def test_tf1_name_based_checkpoint(tf1_ckpt: Written) -> None:
    prefix, values = tf1_ckpt
    source = TFCheckpointSource(prefix)
    assert_reads(source, values)
    specs = source.specs()
    assert specs["bert/encoder/layer_0/attention/self/query/kernel"].shape == (8, 8)
    assert specs["bert/encoder/layer_0/attention/self/query/kernel/adam_m"].dtype == "float32"
    assert (specs["global_step"].shape, specs["global_step"].dtype) == ((), "int64")


@pytest.mark.parametrize(
    ("fixture", "shards"),
    [("tf1_sharded_ckpt", 2), ("tf2_sharded_ckpt", 5)],
    ids=["tf1-saver-two-devices", "tf2-max-shard-size-policy"],
)
def test_sharded_checkpoint(fixture: str, shards: int, request: pytest.FixtureRequest) -> None:
    prefix, values = request.getfixturevalue(fixture)
    assert len(checkpoints.data_files(prefix)) == shards
    assert_reads(TFCheckpointSource(prefix), values)  # one read spanning every shard


@pytest.mark.skipif(not checkpoints.HAS_TF_KERAS, reason="tf-keras is not installed")
def test_tf_keras_checkpoint(tmp_path: Path) -> None:
    prefix, values = checkpoints.write_tf_keras_checkpoint(tmp_path)
    source = TFCheckpointSource(prefix)
    assert_reads(source, values)
    assert "layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE" in source.specs()


def test_read_dtypes_bfloat16_int64_string(tmp_path: Path) -> None:
    variables = {
        "half": tf.Variable(tf.constant([1.5, -2.0], tf.bfloat16)),
        "count": tf.Variable(tf.constant(2**40, tf.int64)),
        "label": tf.Variable(tf.constant(b"bert")),
    }
    source = TFCheckpointSource(tf.train.Checkpoint(**variables).write(str(tmp_path / "ckpt")))
    specs = source.specs()
    assert {name.split("/")[0]: spec.dtype for name, spec in specs.items()} == {
        "count": "int64",
        "half": "bfloat16",
        "label": "string",
    }
    values = source.read(list(specs))
    assert values["label/.ATTRIBUTES/VARIABLE_VALUE"].numpy() == b"bert"  # a string: read by RestoreV2
    assert values["count/.ATTRIBUTES/VARIABLE_VALUE"] == 2**40
    assert str(values["half/.ATTRIBUTES/VARIABLE_VALUE"].dtype) == "bfloat16"


def test_read_repeats_once_and_empty_batch(tf1_ckpt: Written) -> None:
    prefix, values = tf1_ckpt
    source = TFCheckpointSource(prefix)
    assert source.read([]) == {}
    read = source.read(["global_step", "bert/pooler/dense/bias", "global_step"])
    assert list(read) == ["global_step", "bert/pooler/dense/bias"]
    np.testing.assert_array_equal(read["bert/pooler/dense/bias"], values["bert/pooler/dense/bias"])


def test_read_inside_tf_function_still_returns_values(tf1_ckpt: Written) -> None:
    source = TFCheckpointSource(tf1_ckpt[0])
    seen = {}

    @tf.function
    def step() -> tf.Tensor:
        seen.update(source.read(["global_step"]))
        return tf.constant(0)

    step()
    assert int(seen["global_step"]) == 7


# --- the path the user gives ------------------------------------------------------------------------------------------


def test_index_file_data_file_and_pathlike_resolve_to_the_prefix(tf2_sharded_ckpt: Written) -> None:
    prefix = tf2_sharded_ckpt[0]
    for given in (prefix + ".index", str(checkpoints.data_files(prefix)[1]), Path(prefix)):
        source = TFCheckpointSource(given)
        assert source.prefix == prefix
        assert len(source.specs()) == 6


def test_directory_uses_the_latest_checkpoint_of_its_state_file(tmp_path: Path) -> None:
    prefixes = checkpoints.write_manager_checkpoints(tmp_path, count=3)
    source = TFCheckpointSource(tmp_path)
    assert source.prefix == prefixes[-1]
    assert source.description == f"{tmp_path} -> {prefixes[-1]}"
    assert int(source.read(["step/.ATTRIBUTES/VARIABLE_VALUE"])["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 2


def test_moved_tf1_directory_with_absolute_state_paths(tmp_path: Path) -> None:
    old_prefix, values = checkpoints.write_tf1_checkpoint(tmp_path / "old")
    assert f'"{old_prefix}"' in (tmp_path / "old" / "checkpoint").read_text()  # TF1 writes absolute paths
    shutil.move(tmp_path / "old", tmp_path / "new")
    source = TFCheckpointSource(tmp_path / "new")
    assert source.prefix == str(tmp_path / "new" / "model.ckpt-7")
    np.testing.assert_array_equal(source.read(["global_step"])["global_step"], values["global_step"])


def test_copied_tf1_directory_reads_the_copy_not_the_original(tmp_path: Path) -> None:
    checkpoints.write_tf1_checkpoint(tmp_path / "original")
    shutil.copytree(tmp_path / "original", tmp_path / "copy")
    assert TFCheckpointSource(tmp_path / "copy").prefix == str(tmp_path / "copy" / "model.ckpt-7")


def test_relative_state_paths(tmp_path: Path) -> None:
    checkpoints.write_tf1_checkpoint(tmp_path / "rel", relative_paths=True, global_step=3)
    assert TFCheckpointSource(tmp_path / "rel").prefix == str(tmp_path / "rel" / "model.ckpt-3")


# --- specs() come from the index alone -------------------------------------------------------------------------------


def test_specs_do_not_read_tensors_and_reading_a_damaged_tensor_fails(tf1_ckpt: Written, tmp_path: Path) -> None:
    prefix = copy_checkpoint(tf1_ckpt[0], tmp_path)
    victim = "bert/embeddings/word_embeddings"
    entry = next(entry for entry in read_index(prefix + ".index").entries if entry.key == victim)
    data_file = checkpoints.data_files(prefix)[0]
    size = data_file.stat().st_size
    checkpoints.flip_bytes(data_file, entry.offset + entry.size // 2)
    assert data_file.stat().st_size == size

    source = TFCheckpointSource(prefix)  # opening checks sizes only: the damage is not seen yet
    assert source.specs()[victim].shape == (16, 8)
    assert len(source.specs()) == len(tf1_ckpt[1])
    np.testing.assert_array_equal(source.read(["global_step"])["global_step"], 7)
    before = checkpoints.snapshot(tmp_path)
    with pytest.raises(CorruptSourceError) as caught:
        source.read(["global_step", victim, "bert/pooler/dense/bias"])
    message = str(caught.value)
    assert repr(victim) in message
    assert prefix in message
    assert "'global_step'" not in message  # only the tensor that fails is named
    assert "Checksum" in message or "checksum" in message
    assert caught.value.path == prefix
    assert checkpoints.snapshot(tmp_path) == before


def test_index_layout_agrees_with_tensorflow(
    keras_ckpt: Written, tf1_ckpt: Written, tf1_sharded_ckpt: Written, tf2_sharded_ckpt: Written
) -> None:
    for prefix, values in (keras_ckpt, tf1_ckpt, tf1_sharded_ckpt, tf2_sharded_ckpt):
        index = read_index(prefix + ".index")
        shards, entries = index.num_shards, index.entries
        assert shards == len(checkpoints.data_files(prefix))
        by_key = {entry.key: entry for entry in entries if not entry.key.endswith(" (a slice)")}
        assert set(by_key) - {OBJECT_GRAPH_KEY} == set(values)
        for name, value in values.items():
            slices = [entry for entry in entries if entry.key == f"{name} (a slice)"]
            if slices:  # MaxShardSizePolicy cuts tensors across shards: the whole-tensor entry holds no bytes
                assert (by_key[name].size, sum(entry.size for entry in slices)) == (0, value.nbytes)
            else:
                assert by_key[name].size == value.nbytes


def test_index_layout_of_garbage_is_none(tmp_path: Path) -> None:
    garbage = tmp_path / "x.index"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(BundleFormatError, match="magic number"):
        read_index(str(garbage))
    with pytest.raises(FileNotFoundError):
        read_index(str(tmp_path / "missing.index"))


# --- bad inputs: the specific error, a message naming the offender, and no file changed ------------------------------


def _missing_prefix(tmp_path: Path, prefix: str) -> tuple[str, list[str]]:
    copy_checkpoint(prefix, tmp_path)
    return str(tmp_path / "ckpt-2"), ["no TensorFlow checkpoint at", str(tmp_path / "ckpt-2"), "did you mean", "ckpt'"]


def _missing_directory(tmp_path: Path, prefix: str) -> tuple[str, list[str]]:
    return str(tmp_path / "nowhere" / "ckpt"), [str(tmp_path / "nowhere"), "does not exist"]


def _directory_without_state_file(tmp_path: Path, prefix: str) -> tuple[str, list[str]]:
    copy_checkpoint(prefix, tmp_path)
    return str(tmp_path), [str(tmp_path), "'checkpoint' state file", str(tmp_path / "ckpt")]


def _state_file_naming_a_missing_checkpoint(tmp_path: Path, prefix: str) -> tuple[str, list[str]]:
    copy_checkpoint(prefix, tmp_path)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/ckpt-9"\n')
    return str(tmp_path), ["/elsewhere/ckpt-9", "did you mean", str(tmp_path / "ckpt")]


NOT_FOUND = [
    _missing_prefix,
    _missing_directory,
    _directory_without_state_file,
    _state_file_naming_a_missing_checkpoint,
]


@pytest.mark.parametrize("make", NOT_FOUND, ids=lambda make: make.__name__.strip("_").replace("_", "-"))
def test_not_found(make: Callable[[Path, str], tuple[str, list[str]]], tmp_path: Path, keras_ckpt: Written) -> None:
    given, expected = make(tmp_path, keras_ckpt[0])
    before = checkpoints.snapshot(tmp_path)
    for opener in (TFCheckpointSource, open_source):
        with pytest.raises(SourceNotFoundError) as caught:
            opener(given)
        assert isinstance(caught.value, FileNotFoundError)
        for part in expected:
            assert part in str(caught.value), (part, str(caught.value))
    assert checkpoints.snapshot(tmp_path) == before


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="has no 'checkpoint' state file and no checkpoint"):
        TFCheckpointSource(tmp_path)
    with pytest.raises(SourceError, match="cannot tell the format of directory") as caught:
        open_source(tmp_path)  # a directory may hold another format: no claim that it is a TF checkpoint
    assert str(tmp_path) in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def _without_index(prefix: str) -> list[str]:
    Path(prefix + ".index").unlink()
    return ["index file", prefix + ".index", "is missing"]


def _garbage_index(prefix: str) -> list[str]:
    checkpoints.flip_bytes(Path(prefix + ".index"), 20, 16)
    return ["cannot read the index file", prefix + ".index"]


def _truncated_last_shard(prefix: str) -> list[str]:
    last = checkpoints.data_files(prefix)[-1]
    checkpoints.truncate(last, 8)
    return ["truncated", last.name]


def _truncated_middle_shard_by_four_bytes(prefix: str) -> list[str]:
    # The files together still hold more bytes than the tensors need: only the per-shard layout shows this.
    middle = checkpoints.data_files(prefix)[2]
    checkpoints.truncate(middle, 4)
    return ["truncated", middle.name, "v"]


def _missing_shard(prefix: str) -> list[str]:
    missing = checkpoints.data_files(prefix)[1]
    missing.unlink()
    return ["missing 1 of its 5 data file(s)", missing.name]


def _no_data_files(prefix: str) -> list[str]:
    for file in checkpoints.data_files(prefix):
        file.unlink()
    return ["missing 5 of its 5 data file(s)", "ckpt.data-00000-of-00005"]


CORRUPT = [_without_index, _garbage_index, _truncated_last_shard, _truncated_middle_shard_by_four_bytes]
CORRUPT += [_missing_shard, _no_data_files]


@pytest.mark.parametrize("damage", CORRUPT, ids=lambda damage: damage.__name__.strip("_").replace("_", "-"))
def test_corrupt(damage: Callable[[str], list[str]], tmp_path: Path, tf2_sharded_ckpt: Written) -> None:
    prefix = copy_checkpoint(tf2_sharded_ckpt[0], tmp_path)
    expected = damage(prefix)
    before = checkpoints.snapshot(tmp_path)
    for opener in (TFCheckpointSource, open_source):
        with pytest.raises(CorruptSourceError) as caught:
            opener(prefix)
        assert not isinstance(caught.value, SourceNotFoundError)
        for part in [prefix, *expected]:
            assert part in str(caught.value), (part, str(caught.value))
        assert caught.value.path == prefix
    assert checkpoints.snapshot(tmp_path) == before


def test_truncated_single_file_checkpoint(tf1_ckpt: Written, tmp_path: Path) -> None:
    prefix = copy_checkpoint(tf1_ckpt[0], tmp_path)
    checkpoints.truncate(checkpoints.data_files(prefix)[0], 1)
    with pytest.raises(CorruptSourceError, match=r"truncated: data file 'model\.ckpt-7\.data-00000-of-00001'"):
        TFCheckpointSource(prefix)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["bert/pooler/dense/kernal"], ["'bert/pooler/dense/kernal'", "did you mean 'bert/pooler/dense/kernel'"]),
        (["global_step", "nope/a", "nope/b"], ["'nope/a', 'nope/b'", "list them with specs()"]),
        ([OBJECT_GRAPH_KEY], [repr(OBJECT_GRAPH_KEY)]),
    ],
    ids=["typo", "several-unknown", "object-graph-is-not-a-tensor"],
)
def test_read_unknown_names(tf1_ckpt: Written, names: list[str], expected: list[str]) -> None:
    source = TFCheckpointSource(tf1_ckpt[0])
    specs_before = dict(source.specs())
    with pytest.raises(SourceError) as caught:
        source.read(names)
    assert type(caught.value) is SourceError
    for part in [tf1_ckpt[0], *expected]:
        assert part in str(caught.value)
    assert dict(source.specs()) == specs_before


# --- open_source ----------------------------------------------------------------------------------------------------


def test_open_source_detects_each_form(tf2_sharded_ckpt: Written, tmp_path: Path) -> None:
    prefix = tf2_sharded_ckpt[0]
    checkpoints.write_manager_checkpoints(tmp_path, count=1)
    for given in (prefix, prefix + ".index", Path(prefix), tmp_path):
        assert isinstance(open_source(given), TFCheckpointSource)
    assert open_source(prefix, format="tf-checkpoint").prefix == prefix  # type: ignore[attr-defined]


def test_open_source_unknown_format(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\x00" * 8)
    with pytest.raises(SourceError) as caught:
        open_source(weights, format="pickle")
    assert "unknown source format 'pickle'" in str(caught.value)
    assert "'tf-checkpoint'" in str(caught.value)
    with pytest.raises(SourceError) as caught:
        open_source(weights)
    assert type(caught.value) is SourceError
    assert f"cannot tell the format of file '{weights}'" in str(caught.value)
    assert "supported formats: 'tf-checkpoint'" in str(caught.value)
    assert weights.read_bytes() == b"\x00" * 8
    assert next(iter(FORMATS)) == "tf-checkpoint"


def test_detection_helpers(tf2_sharded_ckpt: Written, tmp_path: Path) -> None:
    prefix = tf2_sharded_ckpt[0]
    assert is_tf_checkpoint(prefix)
    assert is_tf_checkpoint(str(checkpoints.data_files(prefix)[0]))
    assert not is_tf_checkpoint(prefix + "-other")
    assert not is_tf_checkpoint(tmp_path)
    assert checkpoint_prefixes(Path(prefix).parent) == [prefix]
    assert checkpoint_prefixes(tmp_path / "missing") == []


def test_importing_sources_and_targets_does_not_import_tensorflow() -> None:
    code = "import sys, mapper.sources, mapper.targets; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.split() == ["False", "False"]
