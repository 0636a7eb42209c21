"""Rendering, patterns: a draft's atoms rendered as the rule's regular expression and target template."""

from __future__ import annotations

import re
from collections.abc import Mapping

from mapper.authoring.suggest._generalise import Draft
from mapper.authoring.suggest._names import ROLES, canonical

_INDEX_NAMES = ("i", "j", "k", "l", "m", "n")


def group_labels(draft: Draft) -> dict[str, str]:
    """Readable names for a draft's groups: i, j, k... for indices; part/param for alternations."""
    names: dict[str, str] = {}
    indices = 0
    used: set[str] = set()
    for position, (kind, text) in enumerate(draft.source_atoms):
        if kind == "g":
            name = _INDEX_NAMES[indices] if indices < len(_INDEX_NAMES) else f"i{indices}"
            indices += 1
            key = text
        elif kind == "a":
            options = [canonical(option) for option in text.split("|")]
            name = "param" if all(len(words) == 1 and words[0] in ROLES for words in options) else "part"
            key = str(position)
        else:
            continue
        base, number = name, 2
        while name in used:
            name = f"{base}{number}"
            number += 1
        used.add(name)
        names[key] = name
    return names


def render_pattern(draft: Draft, names: Mapping[str, str]) -> str:
    parts: list[str] = []
    for position, (kind, text) in enumerate(draft.source_atoms):
        if kind == "g":
            values = draft.narrowed.get(text)
            body = "|".join(values) if values else (r"[1-9]\d*" if text in _decremented(draft) else r"\d+")
            parts.append(f"(?P<{names[text]}>{body})")
        elif kind == "a":
            parts.append(f"(?P<{names[str(position)]}>{'|'.join(re.escape(option) for option in text.split('|'))})")
        else:
            parts.append(re.escape(text))
    return "".join(parts)


def _decremented(draft: Draft) -> set[str]:
    """Index groups the template takes 1 from: their pattern refuses 0, which would give a negative index."""
    return {text.split(":")[0] for kind, text in draft.target_atoms if kind == "r" and text.endswith(":-1")}


def render_template(draft: Draft, names: Mapping[str, str]) -> str:
    parts: list[str] = []
    for kind, text in draft.target_atoms:
        if kind == "r":
            slot, offset = text.split(":")
            number = int(offset)
            parts.append(
                f"{{{names[slot]}}}" if number == 0 else f"{{{names[slot]} {'+' if number > 0 else '-'} {abs(number)}}}"
            )
        elif kind == "ra":
            parts.append(f"{{{names[text]}}}")
        else:
            parts.append(text.replace("{", "{{").replace("}", "}}"))
    return "".join(parts)
