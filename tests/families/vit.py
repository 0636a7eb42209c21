"""ViT as transformers saves it (ViTForImageClassification, and ViTModel without the ``vit.`` prefix) for hf-vit-to-keras-hub.toml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from families import RULES, Family, seeded


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


@dataclass(frozen=True)
class PrefixedReference(Family):
    """A family whose checkpoint keras-hub's converter reads only under the ``vit.`` prefix a task model adds.

    keras-hub's convert_vit.py asks for ``vit.embeddings...`` and its loader only ever adds a prefix (it
    matches keys by suffix), so ``from_preset`` fails on a ViTModel directory, whose keys have no prefix. The
    reference is therefore keras-hub's converter on a copy of the same tensors with ``vit.`` put in front; the
    rule file reads the directory transformers wrote.
    """

    def keras_hub_reference(self, directory: Path) -> Any:
        import shutil

        from safetensors.numpy import load_file, save_file

        copy = directory.with_name(f"{directory.name}-with-vit-prefix")
        copy.mkdir(exist_ok=True)
        shutil.copy(directory / "config.json", copy / "config.json")
        tensors = load_file(str(directory / "model.safetensors"))
        save_file({f"vit.{name}": value for name, value in tensors.items()}, str(copy / "model.safetensors"))
        return super().keras_hub_reference(copy)


FAMILIES = (
    PrefixedReference(
        "vit",
        RULES / "hf-vit-to-keras-hub.toml",
        "ViTBackbone",
        "convert_vit",
        _vit_model,
        skipped={r"pooler\.dense\..+": "pooler"},
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
