"""Where a rule came from: the reference plans, problems and reports carry instead of the rule itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class RuleRef:
    """Where a rule came from: its file, its 1-based position there, and its name if it has one.

    Example:
        >>> str(RuleRef("rules/head.toml", 2, "head"))
        "rules/head.toml rule 2 ('head')"
    """

    file: str
    index: int
    name: str | None = None
    section: Literal["rules", "keep"] = "rules"

    def __str__(self) -> str:
        label = "rule" if self.section == "rules" else "keep rule"
        return f"{self.file} {label} {self.index}" + (f" ({self.name!r})" if self.name else "")


__all__ = ["RuleRef"]
