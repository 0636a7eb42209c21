"""GPT-2 as transformers saves it (GPT2Model, and task models with the ``transformer.`` prefix) for hf-gpt2-to-keras-hub.toml."""

from __future__ import annotations

from typing import Any

from families import RULES, Family, seeded

RULE_FILE = RULES / "hf-gpt2-to-keras-hub.toml"


def _config(**changes: Any) -> Any:
    import transformers

    return transformers.GPT2Config(
        vocab_size=50,
        n_positions=24,
        n_embd=16,
        n_layer=2,
        n_head=4,
        bos_token_id=0,  # the defaults (50256) lie outside the tiny vocabulary
        eos_token_id=0,
        **changes,
    )


def _gpt2_model() -> Any:
    import transformers

    seeded(10)
    return transformers.GPT2Model(_config())


def _gpt2_lm_head_model() -> Any:
    import transformers

    seeded(11)  # lm_head.weight is tied to wte: save_pretrained does not write it
    return transformers.GPT2LMHeadModel(_config())


def _gpt2_lm_head_model_untied() -> Any:
    import transformers

    seeded(12)  # tie_word_embeddings = false: lm_head.weight is saved, and keras-hub ignores it
    return transformers.GPT2LMHeadModel(_config(tie_word_embeddings=False))


def _gpt2_for_sequence_classification() -> Any:
    import transformers

    seeded(13)
    return transformers.GPT2ForSequenceClassification(_config(pad_token_id=0))


def _family(name: str, make_model: Any, skipped: dict[str, str] | None = None) -> Family:
    return Family(name, RULE_FILE, "GPT2Backbone", "convert_gpt2", make_model, exporter="gpt2", skipped=skipped or {})


FAMILIES = (
    _family("gpt2", _gpt2_model),
    _family("gpt2-lm-head", _gpt2_lm_head_model),
    _family("gpt2-lm-head-untied", _gpt2_lm_head_model_untied, {r"lm_head\.weight": "untied"}),
    _family("gpt2-for-sequence-classification", _gpt2_for_sequence_classification, {r"score\..+": "task head"}),
)
