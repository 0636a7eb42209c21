"""Targets: the variables of a model, named so that a plan can be made for them (TensorFlow loaded only on use)."""

from __future__ import annotations

from mapper.targets.base import VariableTarget
from mapper.targets.variables import target_from

__all__ = ["VariableTarget", "target_from"]
