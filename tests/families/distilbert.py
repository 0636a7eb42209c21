"""DistilBERT as transformers saves it (DistilBertModel, and task models with the ``distilbert.`` prefix).

keras-hub's converter asks for ``distilbert.``-prefixed names and cannot read a DistilBertModel checkpoint, which
has no prefix (nor a RobertaModel one: ``roberta.py`` uses ``PrefixedReference`` too): for the base model, the
reference is keras-hub loading the same tensors saved under the task models' prefix.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _config() -> Any:
    import transformers

    return transformers.DistilBertConfig(
        vocab_size=50, dim=16, n_layers=2, n_heads=4, hidden_dim=32, max_position_embeddings=24
    )


def _distilbert_model() -> Any:
    import transformers

    seeded(20)
    return transformers.DistilBertModel(_config())


def _distilbert_for_masked_lm() -> Any:
    import transformers

    seeded(21)  # vocab_projector.weight is tied to the word embeddings: save_pretrained writes only its bias
    return transformers.DistilBertForMaskedLM(_config())


def _distilbert_for_sequence_classification() -> Any:
    import transformers

    seeded(22)
    return transformers.DistilBertForSequenceClassification(_config())


FAMILIES = (
    PrefixedReference(
        "distilbert", RULE_FILE, "DistilBertBackbone", "convert_distilbert", _distilbert_model, prefix="distilbert."
    ),
    Family(
        "distilbert-for-masked-lm",
        RULE_FILE,
        "DistilBertBackbone",
        "convert_distilbert",
        _distilbert_for_masked_lm,
        skipped={r"vocab_(?:transform|layer_norm|projector)\..+": "masked-LM head"},
    ),
    Family(
        "distilbert-for-sequence-classification",
        RULE_FILE,
        "DistilBertBackbone",
        "convert_distilbert",
        _distilbert_for_sequence_classification,
        skipped={r"(?:pre_classifier|classifier)\..+": "task head"},
    ),
)
