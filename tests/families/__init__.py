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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
