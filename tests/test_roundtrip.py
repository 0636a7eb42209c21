"""Every shipped Hugging Face rule file runs both ways: export(import(checkpoint)) and import(export(model)) are exact.

The catalogue (tests/families/, every family other helpers add included) and the timm ResNet rule file: each
checkpoint is written by transformers (or as timm names it), imported into a fresh keras-hub backbone, exported
again, and compared bit for bit; then the backbone's first random values are exported, imported, and compared. For
families keras-hub can also export (``Family.exporter``), our export is bit-identical to keras-hub's exporter.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from families import Family, all_families

import mapper
from mapper.dtypes import FLOATS
from mapper.plan.inverse import NotInvertibleError, exact_cast
from mapper.run.roundtrip import roundtrip, same
from mapper.sources.safetensors import SafetensorsSource
from tests.vision_fixtures import TinyResNet, write_timm_resnet

pytestmark = pytest.mark.tf
pytest.importorskip("keras_hub")
pytest.importorskip("transformers")

FAMILIES = all_families()
EXPORTERS = [family for family in FAMILIES if family.exporter is not None]
TIMM_RULES = Path(__file__).resolve().parent.parent / "rules" / "timm-resnet-to-keras-hub.toml"
# Rule files that cannot run backwards (for some checkpoints), and what every blocker must then say, naming its rule.
# Mistral's file rounds every tensor through float16, as keras-hub's converter does, so the import itself loses what
# float16 cannot hold. (RoBERTa's position table drops the rows before padding_idx + 1, slice "2:": its file
# declares them in [[export.restore]], and the export writes them back from the checkpoint; it declares the token
# type table, which the import skips, too: the export copies it whole from the checkpoint.)
NOT_INVERTIBLE = {
    "hf-mistral-to-keras-hub.toml": "the import casts float16 to float32",
}
# Tensors an export writes in part or whole from the checkpoint ([[export.restore]]), by rule file.
RESTORED = {"hf-roberta-to-keras-hub.toml": r"(?:roberta\.)?embeddings\.(?:position|token_type)_embeddings\.weight"}
RESNETS = {
    "timm-resnet18": TinyResNet("resnet18", filters=(64, 16), blocks=(2, 1), strides=(1, 2)),
    "timm-resnet50": TinyResNet("resnet50", filters=(64, 8), blocks=(1, 2), strides=(1, 2)),
}


def _config(directory: Path) -> dict[str, Any]:
    return dict(json.loads((directory / "config.json").read_text(encoding="utf-8")))


def _rounds_back(directory: Path, backbone: Any) -> bool:
    """Whether the backbone holds a wider float than the checkpoint (bfloat16 imported as float32): the way back rounds."""
    stored = {spec.dtype for spec in SafetensorsSource(directory / "model.safetensors").specs().values()}
    held = {str(weight.dtype) for weight in backbone.weights}
    return any(not exact_cast(wide, narrow) for wide in held & FLOATS for narrow in stored & FLOATS)


@pytest.mark.parametrize("family", FAMILIES, ids=[family.name for family in FAMILIES])
def test_catalogue_family_round_trips_bit_identically(family: Family, tmp_path: Path) -> None:
    directory = family.save(tmp_path / "hf")
    backbone = family.keras_hub_backbone(_config(directory))
    lossy = _rounds_back(directory, backbone)
    if lossy:  # without leave, a cast back that rounds is refused, naming the rules
        with pytest.raises(NotInvertibleError, match="lossy cast on the way back"):
            mapper.export(family.rules, backbone, tmp_path / "refused", like=directory)
    try:
        trip = roundtrip(family.rules, directory, backbone, workdir=tmp_path / "work", lossy_casts=lossy)
    except NotInvertibleError as refused:  # only the known reasons, each blocker naming its rule
        assert family.rules.name in NOT_INVERTIBLE, str(refused)
        blockers = refused.problems
        assert blockers and all(NOT_INVERTIBLE[family.rules.name] in blocker.reason for blocker in blockers)  # type: ignore[attr-defined]
        assert all(blocker.rule is not None for blocker in blockers)  # type: ignore[attr-defined]
        return
    assert trip.ok, trip.summary()
    pattern = RESTORED.get(family.rules.name)  # only what the rule file declares is written in part from the checkpoint
    assert bool(trip.restored) is (pattern is not None)
    checkpoint = SafetensorsSource(directory / "model.safetensors").specs()
    # Every tensor declared is restored (compared bit for bit with the rest), none dropped: a skipped one too.
    assert set(trip.restored) == {name for name in checkpoint if re.fullmatch(pattern or "", name)}, trip.restored
    assert not {left.name for left in trip.dropped} & set(trip.restored)
    assert trip.checkpoint_tensors + len(trip.dropped) == len(checkpoint)
    assert trip.model_variables == len(backbone.weights)
    for left in trip.dropped:  # only what the family says the rule file skips is left out
        assert any(re.fullmatch(pattern, left.name) for pattern in family.skipped), (left.name, left.reason)


@pytest.mark.parametrize("name", list(RESNETS))
def test_timm_resnet_round_trips_bit_identically(name: str, tmp_path: Path) -> None:
    import keras_hub

    config = RESNETS[name]
    write_timm_resnet(tmp_path / "timm", config, seed=3)
    backbone = keras_hub.models.ResNetBackbone(**config.backbone_config())
    trip = roundtrip(TIMM_RULES, tmp_path / "timm", backbone, workdir=tmp_path / "work")
    assert trip.ok, trip.summary()
    assert {left.name for left in trip.dropped} == {
        name
        for name in SafetensorsSource(tmp_path / "timm" / "model.safetensors").specs()
        if name.startswith("fc.") or name.endswith("num_batches_tracked")
    }


def _keras_hub_export(family: Family, backbone: Any) -> dict[str, np.ndarray]:
    module = importlib.import_module(f"keras_hub.src.utils.transformers.export.{family.exporter}")
    weights = getattr(module, f"get_{family.exporter}_weights_map")(backbone, include_lm_head=False)
    return {name: np.array(value.numpy() if hasattr(value, "numpy") else value) for name, value in weights.items()}


@pytest.mark.parametrize("family", EXPORTERS, ids=[family.name for family in EXPORTERS])
def test_export_is_bit_identical_to_keras_hubs_exporter(family: Family, tmp_path: Path) -> None:
    directory = family.save(tmp_path / "hf")
    backbone = family.keras_hub_backbone(_config(directory))
    mapper.transfer(family.rules, directory, backbone)
    # The imported values all come from the checkpoint's dtype, so casting them back is exact: allowed here.
    result = mapper.export(family.rules, backbone, tmp_path / "out", like=directory, lossy_casts=True)
    ours = SafetensorsSource(tmp_path / "out" / result.files[-1])
    written = ours.read(list(ours.specs()))
    checkpoint = SafetensorsSource(directory / "model.safetensors").specs()
    # keras-hub names tensors as the task model saves them (GPT-2's "transformer." prefix); we follow the checkpoint.
    theirs = {_ours(name, written): value for name, value in _keras_hub_export(family, backbone).items()}
    assert set(theirs) <= set(written) | {left.name for left in result.inverse.dropped}
    # Where keras-hub's exporter writes a shape transformers did not (Gemma with head_dim apart from hidden / heads:
    # q_proj transposed, k_proj/v_proj of the wrong size), transformers is right and the round trip proves ours.
    compared = [name for name in theirs if name in written and theirs[name].shape == checkpoint[name].shape]
    assert len(compared) >= len(theirs) // 2
    # keras-hub exports the backbone's dtype; ours writes the checkpoint's: compare the values in ours.
    different = [name for name in compared if not same(written[name], theirs[name].astype(written[name].dtype))]
    assert different == []


def _ours(name: str, written: dict[str, Any]) -> str:
    """Our name for keras-hub's: the same, or the same without or with one leading prefix."""
    if name in written:
        return name
    unprefixed = name.split(".", 1)[-1]
    return unprefixed if unprefixed in written else next((n for n in written if n.endswith("." + name)), name)
