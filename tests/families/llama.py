"""Llama as transformers saves it (LlamaForCausalLM, tied and untied embeddings) for hf-llama-to-keras-hub.toml."""

from __future__ import annotations

from typing import Any

from families import RULES, Family, seeded


def _config(*, tie_word_embeddings: bool) -> Any:
    import transformers

    # Grouped-query attention: 4 query heads share 2 key/value heads, so key and value kernels have half the heads.
    return transformers.LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=4,
        max_position_embeddings=32,
        tie_word_embeddings=tie_word_embeddings,
    )


def _llama_tied() -> Any:
    import transformers

    seeded(10)
    return transformers.LlamaForCausalLM(_config(tie_word_embeddings=True))


def _llama_untied() -> Any:
    import transformers

    seeded(11)
    return transformers.LlamaForCausalLM(_config(tie_word_embeddings=False))


FAMILIES = (
    # Llama 3.2 1B/3B style: the output projection is the token embedding, so no lm_head.weight is saved.
    Family(
        "llama-tied-embeddings",
        RULES / "hf-llama-to-keras-hub.toml",
        "Llama3Backbone",
        "convert_llama3",
        _llama_tied,
        exporter="llama3",
    ),
    # Llama 3 8B style: lm_head.weight fills the embedding's reverse_embeddings.
    Family(
        "llama-untied-embeddings",
        RULES / "hf-llama-to-keras-hub.toml",
        "Llama3Backbone",
        "convert_llama3",
        _llama_untied,
        exporter="llama3",
    ),
)
