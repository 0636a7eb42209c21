"""DistilBERT as transformers saves it (DistilBertModel, and task models with the ``distilbert.`` prefix).

keras-hub's converter asks for ``distilbert.``-prefixed names and cannot read a DistilBertModel checkpoint, which
has no prefix: for the base model, the reference is keras-hub loading the same tensors saved under the task
models' prefix (``PrefixedReference``). ``LegacyBuffers`` adds the ``position_ids`` buffer older versions saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from families import RULES, Family, LegacyBuffers, PrefixedReference, position_ids, seeded

RULE_FILE = RULES / "hf-distilbert-to-keras-hub.toml"


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
