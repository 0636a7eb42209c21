"""BERT as transformers saves it (BertModel, and task models with the ``bert.`` prefix) for hf-bert-to-keras-hub.toml."""

from __future__ import annotations

from typing import Any

from families import RULES, Family, seeded


def _config() -> Any:
    import transformers

    return transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=24,
        type_vocab_size=2,
    )


def _bert_model() -> Any:
    import transformers

    seeded(0)
    return transformers.BertModel(_config())


def _bert_for_pretraining() -> Any:
    import transformers

    seeded(1)
    return transformers.BertForPreTraining(_config())


def _bert_for_sequence_classification() -> Any:
    import transformers

    seeded(2)
    return transformers.BertForSequenceClassification(_config())


FAMILIES = (
    Family("bert", RULES / "hf-bert-to-keras-hub.toml", "BertBackbone", "convert_bert", _bert_model),
    Family(
        "bert-for-pretraining",
        RULES / "hf-bert-to-keras-hub.toml",
        "BertBackbone",
        "convert_bert",
        _bert_for_pretraining,
        skipped={r"cls\..+": "pretraining heads"},
    ),
    Family(
        "bert-for-sequence-classification",
        RULES / "hf-bert-to-keras-hub.toml",
        "BertBackbone",
        "convert_bert",
        _bert_for_sequence_classification,
        skipped={r"classifier\..+": "task head"},
    ),
)
