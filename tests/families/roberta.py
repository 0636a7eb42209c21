"""RoBERTa as transformers saves it (RobertaModel, and task models with the ``roberta.`` prefix) for hf-roberta-to-keras-hub.toml.

keras-hub's converter asks for ``roberta.``-prefixed names and cannot read a RobertaModel checkpoint: for the base
model, the reference is keras-hub loading the same tensors renamed (``PrefixedReference``).
"""

from __future__ import annotations

from typing import Any

from families import RULES, Family, LegacyBuffers, PrefixedReference, position_ids, seeded

RULE_FILE = RULES / "hf-roberta-to-keras-hub.toml"
TOKEN_TYPES = {r"(?:roberta\.)?embeddings\.token_type_embeddings\.weight": "token type embeddings"}


def _config(**sizes: Any) -> Any:
    import transformers

    options = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 32, **sizes}
    # as roberta-base: one token type, positions offset by padding_idx + 1
    return transformers.RobertaConfig(
        vocab_size=50, max_position_embeddings=26, type_vocab_size=1, pad_token_id=1, **options
    )


def _roberta_model() -> Any:
    import transformers

    seeded(30)  # with its pooler (add_pooling_layer = True, the default)
    return transformers.RobertaModel(_config())


def _roberta_for_masked_lm() -> Any:
    import transformers

    seeded(31)  # another size; lm_head.decoder.weight is tied to the word embeddings: save_pretrained does not write it
    return transformers.RobertaForMaskedLM(
        _config(hidden_size=24, num_hidden_layers=3, num_attention_heads=6, intermediate_size=40)
    )


def _roberta_for_sequence_classification() -> Any:
    import transformers

    seeded(32)
    return transformers.RobertaForSequenceClassification(_config())


FAMILIES = (
    PrefixedReference(
        "roberta",
        RULE_FILE,
        "RobertaBackbone",
        "convert_roberta",
        _roberta_model,
        skipped={**TOKEN_TYPES, r"pooler\..+": "pooler"},
        prefix="roberta.",
    ),
    Family(
        "roberta-for-masked-lm",
        RULE_FILE,
        "RobertaBackbone",
        "convert_roberta",
        _roberta_for_masked_lm,
        skipped={**TOKEN_TYPES, r"lm_head\..+": "masked-LM head"},
    ),
    LegacyBuffers(
        "roberta-for-sequence-classification-position-ids",
        RULE_FILE,
        "RobertaBackbone",
        "convert_roberta",
        _roberta_for_sequence_classification,
        skipped={**TOKEN_TYPES, r"classifier\..+": "task head", r"roberta\.embeddings\.position_ids": "position index"},
        buffers=position_ids("roberta."),
    ),
)
