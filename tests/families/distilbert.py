"""DistilBERT as transformers saves it (DistilBertModel, and task models with the ``distilbert.`` prefix).

keras-hub's converter asks for ``distilbert.``-prefixed names and cannot read a DistilBertModel checkpoint, which
has no prefix (nor a RobertaModel one): for the base model, the reference is keras-hub loading the same tensors
saved under the task models' prefix (``PrefixedReference``). ``LegacyBuffers`` adds the buffers older transformers
versions saved (``position_ids``, GPT-2's ``attn.bias``), which the rule files skip. gpt2.py and roberta.py import them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from families import RULES, Family, seeded

RULE_FILE = RULES / "hf-distilbert-to-keras-hub.toml"


@dataclass(frozen=True)
class PrefixedReference(Family):
    """A base-model family whose keras-hub reference reads the same tensors renamed ``prefix + name``."""

    prefix: str = ""

    def keras_hub_reference(self, directory: Path) -> Any:
        """keras-hub's converter on a copy of ``directory`` whose tensor names carry ``prefix``."""
        from safetensors.numpy import load_file, save_file

        renamed = directory.with_name(f"{directory.name}-{self.prefix.rstrip('.')}")
        renamed.mkdir(exist_ok=True)
        shutil.copy(directory / "config.json", renamed / "config.json")
        tensors = load_file(str(directory / "model.safetensors"))
        save_file({self.prefix + name: value for name, value in tensors.items()}, str(renamed / "model.safetensors"))
        return super().keras_hub_reference(renamed)


def _no_buffers(config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {}


@dataclass(frozen=True)
class LegacyBuffers(Family):
    """A family whose checkpoint also holds the non-weight buffers ``buffers(config)`` gives, as older versions saved."""

    buffers: Callable[[Mapping[str, Any]], dict[str, np.ndarray]] = _no_buffers

    def save(self, directory: Path) -> Path:
        """The transformers checkpoint, its safetensors file rewritten with the buffers added."""
        import json

        from safetensors.numpy import load_file, save_file

        super().save(directory)
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        tensors = load_file(str(directory / "model.safetensors"))
        save_file({**tensors, **self.buffers(config)}, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory


def position_ids(prefix: str) -> Callable[[Mapping[str, Any]], dict[str, np.ndarray]]:
    """The int64 ``embeddings.position_ids`` buffer [1, max_position_embeddings] under ``prefix``."""

    def buffers(config: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {f"{prefix}embeddings.position_ids": np.arange(config["max_position_embeddings"])[None].astype(np.int64)}

    return buffers


def _config(**sizes: Any) -> Any:
    import transformers

    options = {"dim": 16, "n_layers": 2, "n_heads": 4, "hidden_dim": 32, **sizes}
    return transformers.DistilBertConfig(vocab_size=50, max_position_embeddings=24, **options)


def _distilbert_model() -> Any:
    import transformers

    seeded(20)
    return transformers.DistilBertModel(_config())


def _distilbert_for_masked_lm() -> Any:
    import transformers

    seeded(21)  # another size; vocab_projector.weight is tied to the word embeddings: only its bias is saved
    return transformers.DistilBertForMaskedLM(_config(dim=24, n_layers=3, n_heads=6, hidden_dim=40))


def _distilbert_for_sequence_classification() -> Any:
    import transformers

    seeded(22)
    return transformers.DistilBertForSequenceClassification(_config())


def _family(name: str, make_model: Any, skipped: Mapping[str, str]) -> Family:
    return Family(name, RULE_FILE, "DistilBertBackbone", "convert_distilbert", make_model, skipped=skipped)


HEADS = {r"(?:pre_classifier|classifier)\..+": "task head"}

FAMILIES = (
    PrefixedReference(
        "distilbert", RULE_FILE, "DistilBertBackbone", "convert_distilbert", _distilbert_model, prefix="distilbert."
    ),
    _family(
        "distilbert-for-masked-lm",
        _distilbert_for_masked_lm,
        {r"vocab_(?:transform|layer_norm|projector)\..+": "masked-LM head"},
    ),
    LegacyBuffers(
        "distilbert-for-sequence-classification-position-ids",
        RULE_FILE,
        "DistilBertBackbone",
        "convert_distilbert",
        _distilbert_for_sequence_classification,
        skipped={**HEADS, r"distilbert\.embeddings\.position_ids": "position index buffer"},
        buffers=position_ids("distilbert."),
    ),
)
