"""Gemma as transformers saves it (GemmaForCausalLM: tied embeddings, head_dim apart from hidden / heads) for hf-gemma-to-keras-hub.toml.

GemmaBackbone always ties its output projection to the token embedding, so every variant is tied (transformers
then saves no ``lm_head.weight``).
"""

from __future__ import annotations

from typing import Any

from families import RULES, Family, seeded


def _gemma(seed: int, *, num_key_value_heads: int) -> Any:
    import transformers

    seeded(seed)
    return transformers.GemmaForCausalLM(
        transformers.GemmaConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=num_key_value_heads,
            head_dim=12,  # not hidden_size / num_attention_heads (8), as in Gemma 7B (256, not 3072 / 16)
            intermediate_size=48,
            max_position_embeddings=64,
        )
    )


def _gemma_grouped_query() -> Any:
    return _gemma(30, num_key_value_heads=2)


def _gemma_multi_query_bfloat16() -> Any:
    import torch

    return _gemma(31, num_key_value_heads=1).to(torch.bfloat16)


FAMILIES = (
    Family(
        "gemma",
        RULES / "hf-gemma-to-keras-hub.toml",
        "GemmaBackbone",
        "convert_gemma",
        _gemma_grouped_query,
        exporter="gemma",
    ),
    # Gemma 2B style: one key/value head, bfloat16 weights, loaded into a float32 backbone as keras-hub does.
    Family(
        "gemma-multi-query-bfloat16",
        RULES / "hf-gemma-to-keras-hub.toml",
        "GemmaBackbone",
        "convert_gemma",
        _gemma_multi_query_bfloat16,
        exporter="gemma",
    ),
)
