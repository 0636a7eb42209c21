"""Mistral as transformers saves it (MistralForCausalLM: grouped-query attention, separate lm_head) for hf-mistral-to-keras-hub.toml.

MistralBackbone never ties its embeddings and keras-hub's converter reads ``lm_head.weight`` unconditionally, so
there is no tied variant: keras-hub cannot load one either.
"""

from __future__ import annotations

from typing import Any

from families import RULES, Family, seeded


def _mistral(seed: int = 10, head_dim: int | None = None) -> Any:
    import transformers

    seeded(seed)
    return transformers.MistralForCausalLM(
        transformers.MistralConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,  # grouped-query attention: key/value kernels have 2 heads
            head_dim=head_dim,  # None: hidden_size / num_attention_heads
            intermediate_size=48,
            max_position_embeddings=64,
            sliding_window=16,
            tie_word_embeddings=False,
        )
    )


def _mistral_bfloat16() -> Any:
    import torch

    return _mistral(11, head_dim=12).to(torch.bfloat16)


FAMILIES = (
    Family(
        "mistral",
        RULES / "hf-mistral-to-keras-hub.toml",
        "MistralBackbone",
        "convert_mistral",
        _mistral,
        exporter="mistral",
    ),
    # Mistral NeMo style: bfloat16 (as Mistral's releases are; loaded into a float32 backbone, as keras-hub does by
    # default) and a head_dim apart from hidden_size / num_attention_heads (NeMo: 128, not 5120 / 32).
    Family(
        "mistral-bfloat16",
        RULES / "hf-mistral-to-keras-hub.toml",
        "MistralBackbone",
        "convert_mistral",
        _mistral_bfloat16,
        exporter="mistral",
    ),
)
