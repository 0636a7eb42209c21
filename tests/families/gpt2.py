"""GPT-2 as transformers saves it (GPT2Model, and task models with the ``transformer.`` prefix) for hf-gpt2-to-keras-hub.toml."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from families import RULES, Family, LegacyBuffers, seeded

RULE_FILE = RULES / "hf-gpt2-to-keras-hub.toml"


def gpt2_config(**changes: Any) -> Any:
    import transformers

    options = {"n_embd": 16, "n_layer": 2, "n_head": 4, **changes}
    # the default bos/eos ids (50256) lie outside the tiny vocabulary
    return transformers.GPT2Config(vocab_size=50, n_positions=24, bos_token_id=0, eos_token_id=0, **options)


def _gpt2_model() -> Any:
    import transformers

    seeded(10)
    return transformers.GPT2Model(gpt2_config())


def _gpt2_lm_head_model() -> Any:
    import transformers

    seeded(11)  # another size; lm_head.weight is tied to wte: save_pretrained does not write it
    return transformers.GPT2LMHeadModel(gpt2_config(n_embd=24, n_layer=3, n_head=6))


def _gpt2_lm_head_model_untied_bfloat16() -> Any:
    import torch
    import transformers

    seeded(12)  # tie_word_embeddings = false: lm_head.weight is saved, and keras-hub ignores it;
    # bfloat16: keras-hub (and cast = "target") load it into a float32 backbone
    return transformers.GPT2LMHeadModel(gpt2_config(tie_word_embeddings=False)).to(torch.bfloat16)


def _gpt2_for_sequence_classification() -> Any:
    import transformers

    seeded(13)
    return transformers.GPT2ForSequenceClassification(gpt2_config(pad_token_id=0))


def _attention_buffers(config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The causal mask and masked bias each attention layer saved before transformers made them non-persistent."""
    size = config["n_positions"]
    mask = np.tril(np.ones((size, size), np.float32))[None, None]
    buffers = {}
    for i in range(config["n_layer"]):
        buffers[f"transformer.h.{i}.attn.bias"] = mask
        buffers[f"transformer.h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    return buffers


def _family(name: str, make_model: Any, skipped: Mapping[str, str] | None = None) -> Family:
    return Family(name, RULE_FILE, "GPT2Backbone", "convert_gpt2", make_model, exporter="gpt2", skipped=skipped or {})


FAMILIES = (
    _family("gpt2", _gpt2_model),
    _family("gpt2-lm-head", _gpt2_lm_head_model),
    _family("gpt2-lm-head-untied-bfloat16", _gpt2_lm_head_model_untied_bfloat16, {r"lm_head\.weight": "untied"}),
    LegacyBuffers(
        "gpt2-for-sequence-classification-attention-buffers",
        RULE_FILE,
        "GPT2Backbone",
        "convert_gpt2",
        _gpt2_for_sequence_classification,
        exporter="gpt2",
        skipped={r"score\..+": "task head", r"transformer\.h\.\d+\.attn\.(?:bias|masked_bias)": "causal-mask buffer"},
        buffers=_attention_buffers,
    ),
)
