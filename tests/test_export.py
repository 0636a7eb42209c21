"""mapper.export and ``mapper export``: a keras-hub BERT written back as a Hugging Face checkpoint transformers opens.

The checkpoint is transformers' own (tests/families/bert.py); the export is checked the way a user would check it:
the config.json the model was saved with beside the exported model.safetensors, ``BertModel.from_pretrained``, and
its outputs against the Keras backbone's on the same inputs. Sharding, overwriting, loading weights first and every
refusal (nothing written in each) are checked on the same model. RoBERTa is checked the same way: its export holds
the position rows and the token type table the import drops, restored from --like, so transformers loads every weight.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from families import Family
from families.bert import FAMILIES as BERT_FAMILIES
from families.roberta import FAMILIES as ROBERTA_FAMILIES

import mapper
from mapper.cli import main
from mapper.errors import OutputError, PlanError
from mapper.plan.inverse import NotInvertibleError
from mapper.run.export import INDEX_NAME, WEIGHTS_NAME, RestoreError
from mapper.run.roundtrip import same
from mapper.sources.safetensors import SafetensorsSource

pytestmark = pytest.mark.tf
pytest.importorskip("keras_hub")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

BERT: Family = BERT_FAMILIES[0]


@dataclass(frozen=True)
class Imported:
    """transformers' BERT checkpoint, and a keras-hub backbone that imported it."""

    directory: Path
    backbone: Any
    tensors: dict[str, np.ndarray]


def _backbone(directory: Path) -> Any:
    return BERT.keras_hub_backbone(json.loads((directory / "config.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    directory = BERT.save(tmp_path_factory.mktemp("bert") / "hf")
    backbone = _backbone(directory)
    mapper.transfer(BERT.rules, directory, backbone)
    source = SafetensorsSource(directory / WEIGHTS_NAME)
    return Imported(directory, backbone, source.read(list(source.specs())))


def _exported(directory: Path) -> dict[str, np.ndarray]:
    name = INDEX_NAME if (directory / INDEX_NAME).exists() else WEIGHTS_NAME
    source = SafetensorsSource(directory / name)
    return source.read(list(source.specs()))


def _keras_and_transformers_outputs(imported: Imported, directory: Path) -> tuple[np.ndarray, np.ndarray]:
    shutil.copy(imported.directory / "config.json", directory / "config.json")
    model = transformers.BertModel.from_pretrained(str(directory))  # local files only: the hub is offline
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, 50, size=(2, 9))
    segments = rng.integers(0, 2, size=(2, 9))
    mask = np.ones((2, 9), dtype="int64")
    mask[1, 6:] = 0
    with torch.no_grad():
        theirs = model(
            input_ids=torch.tensor(tokens), token_type_ids=torch.tensor(segments), attention_mask=torch.tensor(mask)
        ).last_hidden_state.numpy()
    ours = imported.backbone({"token_ids": tokens, "segment_ids": segments, "padding_mask": mask})["sequence_output"]
    return np.asarray(ours), theirs


@pytest.mark.parametrize("shard_size", [None, 4000], ids=["one-file", "sharded"])
def test_transformers_opens_the_export_and_computes_what_keras_does(
    imported: Imported, tmp_path: Path, shard_size: int | None
) -> None:
    result = mapper.export(
        BERT.rules, imported.backbone, tmp_path / "out", like=imported.directory, max_shard_bytes=shard_size
    )
    assert result.sharded is (shard_size is not None)
    ours, theirs = _keras_and_transformers_outputs(imported, tmp_path / "out")
    padded = np.zeros((2, 9), dtype=bool)
    padded[1, 6:] = True  # padding positions differ by convention; compare the real tokens
    # Not bit-identical: keras-hub and PyTorch compute GELU and the softmax differently (about 1e-4 here); a weight
    # in the wrong place changes the outputs by whole tenths.
    np.testing.assert_allclose(ours[~padded], theirs[~padded], rtol=1e-3, atol=1e-3)


def test_the_export_is_the_checkpoint_bit_for_bit(imported: Imported, tmp_path: Path) -> None:
    result = mapper.export(BERT.rules, imported.backbone, tmp_path / "out", like=imported.directory)
    exported = _exported(tmp_path / "out")
    assert result.files == (WEIGHTS_NAME,) and sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        WEIGHTS_NAME
    ]
    assert exported.keys() == imported.tensors.keys()
    assert [name for name, value in exported.items() if not same(value, imported.tensors[name])] == []


def test_shards_stay_under_the_limit_and_the_index_lists_every_tensor(imported: Imported, tmp_path: Path) -> None:
    result = mapper.export(
        BERT.rules, imported.backbone, tmp_path / "out", like=imported.directory, max_shard_bytes=4000
    )
    index = json.loads((tmp_path / "out" / INDEX_NAME).read_text(encoding="utf-8"))
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and result.files == (*shards, INDEX_NAME)
    assert set(index["weight_map"]) == set(imported.tensors)
    assert index["metadata"]["total_size"] == sum(value.nbytes for value in imported.tensors.values())
    for name in shards:
        specs = SafetensorsSource(tmp_path / "out" / name).specs()
        assert sum(spec.nbytes for spec in specs.values()) <= 4000 or len(specs) == 1
    assert not [path for path in (tmp_path / "out").iterdir() if path.name.startswith(".")]  # no temporary left


def test_an_existing_export_is_kept_without_overwrite_and_replaced_whole_with_it(
    imported: Imported, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    mapper.export(BERT.rules, imported.backbone, out, like=imported.directory, max_shard_bytes=4000)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(OutputError, match="already holds a checkpoint"):
        mapper.export(BERT.rules, imported.backbone, out, like=imported.directory)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    mapper.export(BERT.rules, imported.backbone, out, like=imported.directory, overwrite=True)
    assert sorted(path.name for path in out.iterdir()) == [WEIGHTS_NAME]  # the old shards and index are gone


def test_the_reference_checkpoint_is_never_replaced(imported: Imported, tmp_path: Path) -> None:
    like = tmp_path / "like"
    shutil.copytree(imported.directory, like)
    before = (like / WEIGHTS_NAME).read_bytes()
    with pytest.raises(OutputError, match="the checkpoint --like reads"):
        mapper.export(BERT.rules, imported.backbone, like, like=like, overwrite=True)
    assert (like / WEIGHTS_NAME).read_bytes() == before


def test_weights_are_loaded_first(imported: Imported, tmp_path: Path) -> None:
    imported.backbone.save_weights(str(tmp_path / "tuned.weights.h5"))
    fresh = _backbone(imported.directory)
    mapper.export(BERT.rules, fresh, tmp_path / "out", like=imported.directory, weights=tmp_path / "tuned.weights.h5")
    exported = _exported(tmp_path / "out")
    assert all(same(value, imported.tensors[name]) for name, value in exported.items())


def test_a_model_that_does_not_fit_writes_nothing(imported: Imported, tmp_path: Path) -> None:
    other = transformers.BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=24,
    )
    transformers.BertModel(other).save_pretrained(str(tmp_path / "small"))
    with pytest.raises(PlanError, match="error"):
        mapper.export(BERT.rules, imported.backbone, tmp_path / "out", like=tmp_path / "small")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def bfloat16(imported: Imported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same checkpoint in bfloat16: the rule file casts it up to the float32 backbone."""
    import ml_dtypes
    from safetensors.numpy import save_file

    directory = tmp_path_factory.mktemp("bf16")
    tensors = {
        name: value.astype(ml_dtypes.bfloat16) if value.dtype == np.float32 else value
        for name, value in imported.tensors.items()
    }
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    shutil.copy(imported.directory / "config.json", directory / "config.json")
    return directory


def test_a_lossy_cast_back_is_refused_naming_each_rule(imported: Imported, bfloat16: Path, tmp_path: Path) -> None:
    with pytest.raises(NotInvertibleError) as raised:
        mapper.export(BERT.rules, imported.backbone, tmp_path / "out", like=bfloat16)
    message = str(raised.value)
    assert "'token embeddings'" in message and "casts bfloat16 to float32" in message and "lossy cast" in message
    assert not (tmp_path / "out").exists()


def test_a_lossy_cast_back_when_allowed_gives_back_a_bfloat16_checkpoint(bfloat16: Path, tmp_path: Path) -> None:
    backbone = _backbone(bfloat16)
    mapper.transfer(BERT.rules, bfloat16, backbone)  # exact: every bfloat16 value is a float32 value
    mapper.export(BERT.rules, backbone, tmp_path / "out", like=bfloat16, lossy_casts=True)
    original = SafetensorsSource(bfloat16 / WEIGHTS_NAME)
    expected = original.read(list(original.specs()))
    assert all(same(value, expected[name]) for name, value in _exported(tmp_path / "out").items())


# --- RoBERTa: tensors the import drops, restored from --like ([[export.restore]]) -------------------------------

ROBERTA: Family = ROBERTA_FAMILIES[0]  # RobertaModel: no prefix, with a pooler
TOKEN_TYPES = "embeddings.token_type_embeddings.weight"


@pytest.fixture(scope="module")
def roberta(tmp_path_factory: pytest.TempPathFactory) -> Imported:
    """transformers' RoBERTa with zero token type embeddings (as checkpoints converted from fairseq), imported."""
    from safetensors.numpy import save_file

    directory = ROBERTA.save(tmp_path_factory.mktemp("roberta") / "hf")
    tensors = SafetensorsSource(directory / WEIGHTS_NAME)
    values = {name: np.array(value) for name, value in tensors.read(list(tensors.specs())).items()}
    values[TOKEN_TYPES] = np.zeros_like(values[TOKEN_TYPES])  # RobertaBackbone has no token types: zero adds none
    save_file(values, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    backbone = ROBERTA.keras_hub_backbone(json.loads((directory / "config.json").read_text(encoding="utf-8")))
    mapper.transfer(ROBERTA.rules, directory, backbone)
    return Imported(directory, backbone, values)


def test_transformers_opens_a_roberta_export_with_every_weight_and_computes_what_keras_does(
    roberta: Imported, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = mapper.export(ROBERTA.rules, roberta.backbone, out, like=roberta.directory)
    assert set(result.inverse.restored) == {"embeddings.position_embeddings.weight", TOKEN_TYPES}
    exported = _exported(out)
    # Every tensor but the pooler's (RobertaBackbone has none), bit for bit: the token types copied from --like.
    assert set(exported) == {name for name in roberta.tensors if not name.startswith("pooler.")}
    assert [name for name, value in exported.items() if not same(value, roberta.tensors[name])] == []
    shutil.copy(roberta.directory / "config.json", out / "config.json")
    model, info = transformers.RobertaModel.from_pretrained(str(out), add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"]  # nothing initialised fresh
    rng = np.random.default_rng(7)
    tokens = rng.integers(2, 50, size=(2, 9))  # not padding_idx (1): positions count from padding_idx + 1
    mask = np.ones((2, 9), dtype="int64")
    tokens[1, 6:], mask[1, 6:] = 1, 0
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    ours = np.asarray(roberta.backbone({"token_ids": tokens, "padding_mask": mask}))
    real = mask.astype(bool)  # padding positions differ by convention; compare the real tokens
    np.testing.assert_allclose(ours[real], theirs[real], rtol=1e-3, atol=1e-3)


def test_a_roberta_export_from_names_and_shapes_alone_is_refused(roberta: Imported, tmp_path: Path) -> None:
    specs = SafetensorsSource(roberta.directory / WEIGHTS_NAME).specs()  # no values: nothing to restore from
    with pytest.raises(RestoreError, match="it was given only names and shapes") as raised:
        mapper.export(ROBERTA.rules, roberta.backbone, tmp_path / "out", like=dict(specs))
    assert set(raised.value.names) == {"embeddings.position_embeddings.weight", TOKEN_TYPES}
    assert not (tmp_path / "out").exists()


# --- the command line ---------------------------------------------------------------------------------------------


@pytest.fixture
def factory(imported: Imported, tmp_path: Path) -> str:
    module = tmp_path / "bert_factory.py"
    module.write_text(
        "import json\nimport pathlib\n\nimport keras_hub\nfrom keras_hub.src.utils.transformers import convert_bert\n\n\n"
        "def build():\n"
        f"    config = json.loads(pathlib.Path({str(imported.directory / 'config.json')!r}).read_text())\n"
        "    return keras_hub.models.BertBackbone(**convert_bert.convert_backbone_config(config))\n",
        encoding="utf-8",
    )
    return f"{module}:build"


def test_cli_export_writes_shards_and_refuses_to_overwrite(
    imported: Imported, factory: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    imported.backbone.save_weights(str(tmp_path / "tuned.weights.h5"))
    args = [
        "export",
        str(BERT.rules),
        "--model",
        factory,
        "--like",
        str(imported.directory),
        "--weights",
        str(tmp_path / "tuned.weights.h5"),
        "--output",
        str(tmp_path / "out"),
        "--max-shard-size",
        "4kB",
    ]
    assert main([*args, "-q"]) == 0
    assert capsys.readouterr().out.startswith(f"exported: {len(imported.tensors)} tensors")
    assert all(same(value, imported.tensors[name]) for name, value in _exported(tmp_path / "out").items())
    assert main(args) == 5
    assert "already holds a checkpoint" in capsys.readouterr().err


def test_cli_export_names_the_rules_a_lossy_cast_blocks(
    imported: Imported, bfloat16: Path, factory: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["export", str(BERT.rules), "--model", factory, "--like", str(bfloat16), "--output", str(tmp_path / "o")]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot export" in err and "'attention projection kernels'" in err and "--allow-lossy-casts" in err
    assert not (tmp_path / "o").exists()


def test_cli_validate_roundtrip(imported: Imported, factory: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", str(BERT.rules), "--roundtrip", "--source", str(imported.directory), "--target", factory])
    assert code == 0
    assert capsys.readouterr().out.startswith(f"round trip: {len(imported.tensors)} checkpoint tensors")
    assert main(["validate", str(BERT.rules), "--roundtrip"]) == 2


def test_export_help_shows_examples_and_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    from mapper import cli

    with pytest.raises(SystemExit):
        main(["export", "--help"])
    shown = capsys.readouterr().out
    assert "mapper export rules/hf-bert-to-keras-hub.toml --model" in shown
    codes = shown.split("exit codes:\n", 1)[1]
    documented = {int(line.split()[0]) for line in codes.splitlines() if line[:2] == "  " and line.split()[0].isdigit()}
    assert documented == {
        value for name, value in vars(cli).items() if name.startswith("EXIT_") and isinstance(value, int)
    }
