"""Turning TOML and pydantic errors into RuleIssues that name the rule, the field and the closest valid key."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from mapper.errors import RuleIssue
from mapper.rules.common import clean_message, closest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

RULES_FORMAT = 1
"""The rule-file format version this weight-mapper reads."""

_ENTRY_SECTIONS = ("rules", "keep")


def toml_issue(file: str, error: tomllib.TOMLDecodeError) -> RuleIssue:
    """The issue for a file that is not valid TOML, with the line and column TOML reports.

    Example:
        >>> try:
        ...     tomllib.loads("format = 1\\nrules = 1 x")
        ... except tomllib.TOMLDecodeError as error:
        ...     issue = toml_issue("r.toml", error)
        >>> issue.message.startswith("invalid TOML"), issue.line
        (True, 2)
    """
    found = re.search(r"at line (\d+), column (\d+)", str(error))
    line, column = (int(found[1]), int(found[2])) if found else (None, None)
    message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(error)) or "invalid TOML"
    return RuleIssue(file, f"invalid TOML: {message}", line=line, column=column)


def nesting_issue(file: str) -> RuleIssue:
    """The issue for a rule file nested too deeply to read (arrays or tables inside each other hundreds deep).

    Example:
        >>> print(nesting_issue("r.toml"))
        r.toml: the rule file nests arrays or tables too deeply to read (no rule file needs more than a few levels)
    """
    return RuleIssue(
        file, "the rule file nests arrays or tables too deeply to read (no rule file needs more than a few levels)"
    )


def pydantic_issue(file: str, data: Mapping[str, Any], item: Any, fields: Mapping[str, Sequence[str]]) -> RuleIssue:
    """Turn one pydantic error into a RuleIssue with rule number, field and a hint.

    Args:
        file: the rule file, for the issue.
        data: the table that was validated, to find the rule's name.
        item: one entry of ``ValidationError.errors()``.
        fields: the valid keys of each table by its key ("" for the top level), for unknown-key hints.

    Example:
        >>> item = {"loc": ("rules", 0, "targt"), "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
        >>> issue = pydantic_issue("r.toml", {"rules": [{"name": "qkv"}]}, item, {"rules": ("match", "target")})
        >>> issue.rule, issue.rule_name, issue.field, issue.message, issue.hint
        (1, 'qkv', 'targt', "unknown key 'targt'", "did you mean 'target'?")
    """
    section, rule_number, rule_name, field_path = _location(data, tuple(item["loc"]))
    # pydantic adds the union member's class name to the location of errors inside a union; drop it.
    field_parts = [str(part) for part in field_path if not (isinstance(part, str) and part.endswith("Spec"))]
    field = ".".join(field_parts) or None
    message, hint = _explained(item, field, field_path, section, fields)
    return RuleIssue(
        file,
        message,
        rule=rule_number,
        rule_name=rule_name,
        field=field,
        hint=hint,
        section="keep rule" if section == "keep" else "rule",
    )


def _location(
    data: Mapping[str, Any], location: tuple[str | int, ...]
) -> tuple[str, int | None, str | None, tuple[str | int, ...]]:
    """The section, 1-based rule number, rule name and the field path inside the rule of an error location."""
    if not (len(location) >= 2 and location[0] in _ENTRY_SECTIONS and isinstance(location[1], int)):
        return "", None, None, location
    section, index = str(location[0]), location[1]
    entries = data.get(section)
    name = None
    if isinstance(entries, list) and index < len(entries) and isinstance(entries[index], Mapping):
        name = entries[index].get("name")
    return section, index + 1, name if isinstance(name, str) else None, location[2:]


def _explained(
    item: Any, field: str | None, field_path: tuple[str | int, ...], section: str, fields: Mapping[str, Sequence[str]]
) -> tuple[str, str | None]:
    """The message and hint for one pydantic error, in rule-file terms."""
    kind = item["type"]
    if kind == "extra_forbidden":
        key = str(field_path[-1])
        parent = field_path[-2] if len(field_path) >= 2 else (section if section else "")
        valid = fields.get(str(parent), fields.get(section, ()))
        hint = (closest(key, valid).removeprefix("; ") or f"valid keys: {', '.join(valid)}") if valid else None
        return f"unknown key {key!r}", hint
    if kind == "missing":
        return "this key is required", None
    if kind == "literal_error" and field == "format":
        return f"format {item.get('input')!r} is not supported", f"this weight-mapper reads format = {RULES_FORMAT}"
    if kind == "literal_error":
        expected = str(item.get("ctx", {}).get("expected", ""))
        return f"{item.get('input')!r} is not allowed", f"use {expected}"
    return clean_message(item["msg"]), None


__all__ = ["RULES_FORMAT", "nesting_issue", "pydantic_issue", "toml_issue"]
