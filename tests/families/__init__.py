"""The catalogue of shipped Hugging Face rule sets: one module per family, each checkpoint made by transformers itself.

Every module in this package defines ``FAMILIES``: a tuple of ``Family`` records (a family may have several
variants: a task head, tied embeddings, a dtype). ``tests/test_catalogue.py`` runs the same checks on each one:
the plan has no errors and accounts for every tensor, every weight is bit-identical to keras-hub's own converter
(``Backbone.from_preset`` on the same directory, offline), and the rule file is shorter than that converter.
Checkpoints come from ``transformers`` (a tiny config, random weights, ``save_pretrained``), so names, layouts and
dtypes are the real ones rather than hand-written copies. Importing this package switches the hub to offline mode.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

RULES = Path(__file__).resolve().parents[2] / "rules"


@dataclass(frozen=True)
class Family:
    """One rule file and one way transformers saves a model it reads.

    ``make_model`` returns a transformers ``PreTrainedModel`` with random weights (seeded) and a tiny config;
    ``save`` writes it with ``save_pretrained``. ``backbone`` and ``converter`` name keras-hub's backbone class
    (``keras_hub.models.<backbone>``) and converter module (``keras_hub/src/utils/transformers/<converter>.py``),
    ``exporter`` keras-hub's exporter module under ``.../transformers/export/`` where keras-hub has one.
    ``skipped`` maps a regex of source names to a word their skip reason must contain; every other source
    tensor must be assigned.
    """

    name: str  # test id, e.g. "gpt2" or "bert-for-masked-lm"
    rules: Path
    backbone: str
    converter: str
    make_model: Callable[[], Any]
    exporter: str | None = None
    skipped: Mapping[str, str] = field(default_factory=dict)
    dtype: str | None = None  # the backbone's dtype when not float32 (the checkpoint's torch dtype)

    def save(self, directory: Path) -> Path:
        """Write the checkpoint directory (config.json + model.safetensors) as transformers saves it."""
        import torch

        model = self.make_model()
        with torch.no_grad():  # every parameter random, biases and norms too: a swapped bias must show
            for parameter in model.parameters():
                parameter.normal_(0.0, 0.5)
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(directory))
        return directory

    def keras_hub_backbone(self, config: Mapping[str, Any]) -> Any:
        """A fresh, randomly initialised backbone built from ``config.json`` the way keras-hub's converter builds it."""
        import keras_hub

        converter = importlib.import_module(f"keras_hub.src.utils.transformers.{self.converter}")
        options = dict(converter.convert_backbone_config(dict(config)))
        if self.dtype is not None:
            options["dtype"] = self.dtype
        return getattr(keras_hub.models, self.backbone)(**options)

    def keras_hub_reference(self, directory: Path) -> Any:
        """The backbone keras-hub's own converter loads from ``directory``."""
        import keras_hub

        cls = getattr(keras_hub.models, self.backbone)
        return (
            cls.from_preset(str(directory)) if self.dtype is None else cls.from_preset(str(directory), dtype=self.dtype)
        )

    @property
    def converter_lines(self) -> int:
        """Lines of keras-hub's converter module, which the rule file replaces."""
        converter = importlib.import_module(f"keras_hub.src.utils.transformers.{self.converter}")
        return len(Path(str(converter.__file__)).read_text(encoding="utf-8").splitlines())


@dataclass(frozen=True)
class PrefixedReference(Family):
    """A base-model family whose keras-hub reference reads the same tensors renamed ``prefix + name``.

    keras-hub's converters for DistilBERT, RoBERTa and ViT ask for the task models' prefixed names
    (``distilbert.``, ``roberta.``, ``vit.``), and its loader only ever adds a prefix, so ``from_preset`` fails
    on a base-model directory. The reference is keras-hub's converter on a copy of the same tensors with the
    prefix put in front; the rule file reads the directory transformers wrote.
    """

    prefix: str = ""

    def keras_hub_reference(self, directory: Path) -> Any:
        """keras-hub's converter on a copy of ``directory`` whose tensor names carry ``prefix``."""
        from safetensors.numpy import load_file, save_file

        renamed = directory.with_name(f"{directory.name}-{self.prefix.rstrip('.')}")
        renamed.mkdir(exist_ok=True)
        shutil.copy(directory / "config.json", renamed / "config.json")
        tensors = load_file(str(directory / "model.safetensors"))
        save_file({self.prefix + name: value for name, value in tensors.items()}, str(renamed / "model.safetensors"))
        return super().keras_hub_reference(renamed)


def _no_buffers(config: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {}


@dataclass(frozen=True)
class LegacyBuffers(Family):
    """A family whose checkpoint also holds the non-weight buffers ``buffers(config)`` gives, as older versions saved."""

    buffers: Callable[[Mapping[str, Any]], dict[str, np.ndarray]] = _no_buffers

    def save(self, directory: Path) -> Path:
        """The transformers checkpoint, its safetensors file rewritten with the buffers added."""
        import json

        from safetensors.numpy import load_file, save_file

        super().save(directory)
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        tensors = load_file(str(directory / "model.safetensors"))
        save_file({**tensors, **self.buffers(config)}, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory


def position_ids(prefix: str) -> Callable[[Mapping[str, Any]], dict[str, np.ndarray]]:
    """The int64 ``embeddings.position_ids`` buffer [1, max_position_embeddings] under ``prefix``."""

    def buffers(config: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {f"{prefix}embeddings.position_ids": np.arange(config["max_position_embeddings"])[None].astype(np.int64)}

    return buffers


def weights_by_path(model: Any) -> dict[str, np.ndarray]:
    """Every weight of a Keras model by its path, as NumPy arrays copied off the backend's tensors (any backend)."""
    import keras

    return {weight.path: np.array(keras.ops.convert_to_numpy(weight.value)) for weight in model.weights}


def seeded(seed: int) -> None:
    """Seed torch so that a family's random weights are the same in every run."""
    import torch

    torch.manual_seed(seed)


def all_families() -> tuple[Family, ...]:
    """Every family of every module in this package, in module order."""
    found: list[Family] = []
    for module in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda info: info.name):
        found.extend(importlib.import_module(f"families.{module.name}").FAMILIES)
    return tuple(found)
