"""Mixtral as transformers saves it (MixtralForCausalLM, float32 and bfloat16) for hf-mixtral-to-keras-hub.toml.

MixtralModel is not a variant: keras-hub's converter reads ``model.``-prefixed names and lm_head.weight, which
it does not have (MixtralBackbone never ties embeddings), and so does the rule file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from families import RULES, Family, seeded


def config(num_local_experts: int = 4) -> Any:
    """A tiny Mixtral: 2 layers, grouped-query attention (4 query heads, 2 key/value heads), top-2 routing."""
    import transformers

    return transformers.MixtralConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=num_local_experts,
        num_experts_per_tok=2,
        max_position_embeddings=64,
    )


def _mixtral_for_causal_lm() -> Any:
    import transformers

    seeded(20)
    return transformers.MixtralForCausalLM(config())


def _mixtral_for_causal_lm_bfloat16() -> Any:
    import torch
    import transformers

    seeded(21)
    return transformers.MixtralForCausalLM(config()).to(torch.bfloat16)


@dataclass(frozen=True)
class FreshNames(Family):
    """A family whose backbone has auto-named layers: Keras's name counters are reset before each build.

    MixtralTransformerDecoder makes its MixtralSparseMoeBlock without a name, so the paths of its weights carry
    a process-wide counter (``mixtral_sparse_moe_block_2`` in the second backbone a process builds), and the
    catalogue compares weights by path. ``keras.utils.clear_session()`` before each build gives both backbones
    the names a fresh process would (the reference's weights are copied out before the second build). The rule
    file needs no such help: it targets checkpoint keys, which follow attributes, not names.
    """

    def keras_hub_backbone(self, config: Mapping[str, Any]) -> Any:
        import keras

        keras.utils.clear_session()
        return super().keras_hub_backbone(config)

    def keras_hub_reference(self, directory: Path) -> Any:
        import keras

        keras.utils.clear_session()
        return super().keras_hub_reference(directory)


FAMILIES = (
    FreshNames(
        "mixtral-for-causal-lm",
        RULES / "hf-mixtral-to-keras-hub.toml",
        "MixtralBackbone",
        "convert_mixtral",
        _mixtral_for_causal_lm,
    ),
    FreshNames(
        "mixtral-for-causal-lm-bfloat16",
        RULES / "hf-mixtral-to-keras-hub.toml",
        "MixtralBackbone",
        "convert_mixtral",
        _mixtral_for_causal_lm_bfloat16,
        dtype="bfloat16",
    ),
)
