"""Qwen2 as transformers saves it (Qwen2ForCausalLM: q/k/v biases, tied or separate lm_head) for hf-qwen2-to-keras-hub.toml."""

from __future__ import annotations

from typing import Any

from families import RULES, Family, seeded


def _config(*, tie_word_embeddings: bool) -> Any:
    import transformers

    return transformers.Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: key/value kernels and biases have 2 heads
        intermediate_size=48,
        max_position_embeddings=64,
        tie_word_embeddings=tie_word_embeddings,
    )


def _qwen2_tied() -> Any:
    import transformers

    seeded(20)
    return transformers.Qwen2ForCausalLM(_config(tie_word_embeddings=True))


def _qwen2_separate_lm_head() -> Any:
    import transformers

    seeded(21)
    return transformers.Qwen2ForCausalLM(_config(tie_word_embeddings=False))


FAMILIES = (
    # Qwen2.5-0.5B style: the output projection is the token embedding, no lm_head.weight saved.
    Family(
        "qwen2-tied-embeddings",
        RULES / "hf-qwen2-to-keras-hub.toml",
        "QwenBackbone",
        "convert_qwen",
        _qwen2_tied,
        exporter="qwen",
    ),
    # Qwen2.5-7B style: lm_head.weight fills reverse_embeddings.
    Family(
        "qwen2-separate-lm-head",
        RULES / "hf-qwen2-to-keras-hub.toml",
        "QwenBackbone",
        "convert_qwen",
        _qwen2_separate_lm_head,
        exporter="qwen",
    ),
)
