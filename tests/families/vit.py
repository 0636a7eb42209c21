"""ViT as transformers saves it (ViTForImageClassification, and ViTModel without the ``vit.`` prefix) for hf-vit-to-keras-hub.toml."""

from __future__ import annotations

from typing import Any

from families import RULES, Family, PrefixedReference, seeded


def _config() -> Any:
    import transformers

    return transformers.ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        num_labels=3,
    )


def _vit_model() -> Any:
    import transformers

    seeded(10)
    return transformers.ViTModel(_config())  # add_pooling_layer = True: a pooler keras-hub has no place for


def _vit_for_image_classification() -> Any:
    import transformers

    seeded(11)
    return transformers.ViTForImageClassification(_config())


FAMILIES = (
    PrefixedReference(
        "vit",
        RULES / "hf-vit-to-keras-hub.toml",
        "ViTBackbone",
        "convert_vit",
        _vit_model,
        skipped={r"pooler\.dense\..+": "pooler"},
        prefix="vit.",
    ),
    Family(
        "vit-for-image-classification",
        RULES / "hf-vit-to-keras-hub.toml",
        "ViTBackbone",
        "convert_vit",
        _vit_for_image_classification,
        skipped={r"classifier\..+": "classification head"},
    ),
)
