"""Tiny random Hugging Face model directories (config.json + model.safetensors), as transformers would save them.

The tensor names follow what keras-hub's converters read (``keras_hub/src/utils/transformers/convert_*.py``)
and what ``save_pretrained`` writes: PyTorch layouts (``nn.Linear.weight`` is ``[out, in]``), the ``bert.``
prefix of task models, legacy ``LayerNorm.gamma``/``beta`` names of checkpoints converted from TF1 BERT, and
buffers older transformers versions saved (``embeddings.position_ids``, ``rotary_emb.inv_freq``).
Importing this module switches the Hugging Face hub to offline mode: every load in these tests is local.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from mapper.plan import Plan

# keras-hub imports huggingface_hub, which reads these once at import time; the tests load local directories only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE, MAX_POSITIONS = 50, 16, 2, 4, 2, 32, 24
HEAD_DIM = HIDDEN // HEADS


@dataclass(frozen=True)
class HFModel:
    """A Hugging Face model directory written by this module, and what a rule file should do with it."""

    directory: Path
    config: dict[str, Any]
    tensors: dict[str, np.ndarray]
    skipped: dict[str, str] = field(default_factory=dict)  # tensor name -> the word its skip reason must contain

    @property
    def safetensors(self) -> Path:
        """The weights file."""
        return self.directory / "model.safetensors"


@dataclass(frozen=True)
class BertVariant:
    """How a BERT checkpoint names its tensors: a task model's prefix, LayerNorm names, extra heads and buffers."""

    architecture: str = "BertModel"
    prefix: str = ""
    layer_norm: tuple[str, str] = ("weight", "bias")
    head: str | None = None  # "pretraining" (BertForPreTraining) or "classifier" (BertForSequenceClassification)
    position_ids: bool = False
    pooler: bool = True
    dtype: str = "float32"  # the dtype of the weights (config.json's torch_dtype); buffers keep theirs


@dataclass(frozen=True)
class LlamaVariant:
    """A Llama checkpoint: tied or separate output embeddings, rotary buffers of older transformers, biases."""

    tie_word_embeddings: bool = True
    inv_freq: bool = False
    attention_bias: bool = False
    dtype: str = "float32"  # Llama 3 checkpoints are bfloat16; the rotary buffers stay float32


def write_hf_model(
    directory: Path, config: Mapping[str, Any], tensors: Mapping[str, np.ndarray], skipped: Mapping[str, str]
) -> HFModel:
    """Write ``config.json`` and ``model.safetensors`` (with the ``{"format": "pt"}`` metadata transformers writes)."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_file(dict(tensors), str(directory / "model.safetensors"), metadata={"format": "pt"})
    return HFModel(directory, dict(config), dict(tensors), dict(skipped))


def _random(seed: int, dtype: str) -> Any:
    generator = np.random.default_rng(seed)
    numpy_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)

    def normal(*shape: int) -> np.ndarray:
        return generator.standard_normal(shape).astype(numpy_dtype)

    return normal


def bert_config(variant: BertVariant = BertVariant()) -> dict[str, Any]:
    """A tiny ``BertConfig.to_dict()``: 2 layers, hidden 16, 4 heads, vocabulary 50, intermediate 32."""
    labels = {"id2label": {str(i): f"LABEL_{i}" for i in range(3)}} if variant.head == "classifier" else {}
    labels |= {"label2id": {f"LABEL_{i}": i for i in range(3)}} if labels else {}
    return labels | {
        "architectures": [variant.architecture],
        "attention_probs_dropout_prob": 0.1,
        "classifier_dropout": None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": MAX_POSITIONS,
        "model_type": "bert",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "torch_dtype": variant.dtype,
        "transformers_version": "4.46.0",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": VOCAB,
    }


def bert_tensors(variant: BertVariant = BertVariant(), seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors ``BertModel``/``BertForPreTraining.save_pretrained`` writes, and the ones a port must skip."""
    normal = _random(seed, variant.dtype)
    scale, offset = variant.layer_norm
    p = variant.prefix
    tensors: dict[str, np.ndarray] = {
        f"{p}embeddings.word_embeddings.weight": normal(VOCAB, HIDDEN),
        f"{p}embeddings.position_embeddings.weight": normal(MAX_POSITIONS, HIDDEN),
        f"{p}embeddings.token_type_embeddings.weight": normal(2, HIDDEN),
        f"{p}embeddings.LayerNorm.{scale}": normal(HIDDEN),
        f"{p}embeddings.LayerNorm.{offset}": normal(HIDDEN),
    }
    skipped: dict[str, str] = {}
    if variant.position_ids:
        tensors[f"{p}embeddings.position_ids"] = np.arange(MAX_POSITIONS, dtype=np.int64)[None, :]
        skipped[f"{p}embeddings.position_ids"] = "buffer"
    for i in range(LAYERS):
        layer = f"{p}encoder.layer.{i}"
        for part in ("query", "key", "value"):
            tensors[f"{layer}.attention.self.{part}.weight"] = normal(HIDDEN, HIDDEN)
            tensors[f"{layer}.attention.self.{part}.bias"] = normal(HIDDEN)
        tensors[f"{layer}.attention.output.dense.weight"] = normal(HIDDEN, HIDDEN)
        tensors[f"{layer}.attention.output.dense.bias"] = normal(HIDDEN)
        tensors[f"{layer}.attention.output.LayerNorm.{scale}"] = normal(HIDDEN)
        tensors[f"{layer}.attention.output.LayerNorm.{offset}"] = normal(HIDDEN)
        tensors[f"{layer}.intermediate.dense.weight"] = normal(INTERMEDIATE, HIDDEN)
        tensors[f"{layer}.intermediate.dense.bias"] = normal(INTERMEDIATE)
        tensors[f"{layer}.output.dense.weight"] = normal(HIDDEN, INTERMEDIATE)
        tensors[f"{layer}.output.dense.bias"] = normal(HIDDEN)
        tensors[f"{layer}.output.LayerNorm.{scale}"] = normal(HIDDEN)
        tensors[f"{layer}.output.LayerNorm.{offset}"] = normal(HIDDEN)
    if variant.pooler:
        tensors[f"{p}pooler.dense.weight"] = normal(HIDDEN, HIDDEN)
        tensors[f"{p}pooler.dense.bias"] = normal(HIDDEN)
    if variant.head == "pretraining":
        # cls.predictions.decoder.weight is tied to the word embeddings: save_pretrained leaves it out.
        heads = {
            "cls.predictions.bias": normal(VOCAB),
            "cls.predictions.transform.dense.weight": normal(HIDDEN, HIDDEN),
            "cls.predictions.transform.dense.bias": normal(HIDDEN),
            f"cls.predictions.transform.LayerNorm.{scale}": normal(HIDDEN),
            f"cls.predictions.transform.LayerNorm.{offset}": normal(HIDDEN),
            "cls.seq_relationship.weight": normal(2, HIDDEN),
            "cls.seq_relationship.bias": normal(2),
        }
        tensors |= heads
        skipped |= dict.fromkeys(heads, "pretraining")
    elif variant.head == "classifier":
        heads = {"classifier.weight": normal(3, HIDDEN), "classifier.bias": normal(3)}
        tensors |= heads
        skipped |= dict.fromkeys(heads, "task head")
    return tensors, skipped


def write_bert(directory: Path, variant: BertVariant = BertVariant(), seed: int = 0) -> HFModel:
    """A tiny random BERT directory in the given naming variant."""
    tensors, skipped = bert_tensors(variant, seed)
    return write_hf_model(directory, bert_config(variant), tensors, skipped)


def llama_config(variant: LlamaVariant = LlamaVariant()) -> dict[str, Any]:
    """A tiny ``LlamaConfig.to_dict()`` with grouped-query attention: 4 query heads share 2 key/value heads."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": variant.attention_bias,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": 64,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-5,
        "rope_scaling": None,
        "rope_theta": 500000.0,
        "tie_word_embeddings": variant.tie_word_embeddings,
        "torch_dtype": variant.dtype,
        "transformers_version": "4.46.0",
        "use_cache": True,
        "vocab_size": VOCAB,
    }


def llama_tensors(
    variant: LlamaVariant = LlamaVariant(), seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors ``LlamaForCausalLM.save_pretrained`` writes (no ``lm_head`` when tied), and the ones to skip."""
    normal = _random(seed, variant.dtype)
    tensors: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal(VOCAB, HIDDEN)}
    skipped: dict[str, str] = {}
    for i in range(LAYERS):
        layer = f"model.layers.{i}"
        tensors[f"{layer}.input_layernorm.weight"] = normal(HIDDEN)
        tensors[f"{layer}.post_attention_layernorm.weight"] = normal(HIDDEN)
        tensors[f"{layer}.self_attn.q_proj.weight"] = normal(HEADS * HEAD_DIM, HIDDEN)
        tensors[f"{layer}.self_attn.k_proj.weight"] = normal(KV_HEADS * HEAD_DIM, HIDDEN)
        tensors[f"{layer}.self_attn.v_proj.weight"] = normal(KV_HEADS * HEAD_DIM, HIDDEN)
        tensors[f"{layer}.self_attn.o_proj.weight"] = normal(HIDDEN, HEADS * HEAD_DIM)
        if variant.attention_bias:
            tensors[f"{layer}.self_attn.q_proj.bias"] = normal(HEADS * HEAD_DIM)
            tensors[f"{layer}.self_attn.k_proj.bias"] = normal(KV_HEADS * HEAD_DIM)
            tensors[f"{layer}.self_attn.v_proj.bias"] = normal(KV_HEADS * HEAD_DIM)
            tensors[f"{layer}.self_attn.o_proj.bias"] = normal(HIDDEN)
        tensors[f"{layer}.mlp.gate_proj.weight"] = normal(INTERMEDIATE, HIDDEN)
        tensors[f"{layer}.mlp.up_proj.weight"] = normal(INTERMEDIATE, HIDDEN)
        tensors[f"{layer}.mlp.down_proj.weight"] = normal(HIDDEN, INTERMEDIATE)
        if variant.inv_freq:
            name = f"{layer}.self_attn.rotary_emb.inv_freq"
            tensors[name] = (1.0 / 500000.0 ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)).astype(np.float32)
            skipped[name] = "rotary"
    tensors["model.norm.weight"] = normal(HIDDEN)
    if not variant.tie_word_embeddings:
        tensors["lm_head.weight"] = normal(VOCAB, HIDDEN)
    return tensors, skipped


def write_llama(directory: Path, variant: LlamaVariant = LlamaVariant(), seed: int = 0) -> HFModel:
    """A tiny random Llama directory (grouped-query attention) in the given variant."""
    tensors, skipped = llama_tensors(variant, seed)
    return write_hf_model(directory, llama_config(variant), tensors, skipped)


def weights_by_path(model: Any) -> dict[str, np.ndarray]:
    """Every weight of a Keras model by its path, as NumPy arrays."""
    return {weight.path: np.array(weight.numpy()) for weight in model.weights}


@dataclass(frozen=True)
class Ported:
    """One checkpoint loaded twice: by keras-hub (the reference) and through the rule file."""

    hf: HFModel
    reference: dict[str, np.ndarray]
    initial: dict[str, np.ndarray]
    ported: dict[str, np.ndarray]
    plan: Plan
