"""The JSON Schema of rule files, generated from the pydantic models, for editors (taplo / Even Better TOML)."""

from __future__ import annotations

import json
from typing import Any

from mapper.rules import RULES_FORMAT, RuleSet

SCHEMA_ID = f"https://weight-mapper.dev/schema/rules-v{RULES_FORMAT}.json"


def rules_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) a rule file's TOML, read as JSON, must satisfy.

    It checks structure, keys, types and enumerations; what only the loader can check (regular
    expressions compile, templates use defined groups, parameters exist) is left to ``mapper validate``.

    Example:
        >>> schema = rules_schema()
        >>> schema["$schema"], sorted(schema["properties"])[:3]
        ('https://json-schema.org/draft/2020-12/schema', ['description', 'examples', 'export'])
    """
    schema = RuleSet.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": f"weight-mapper rule file, format {RULES_FORMAT}",
    }


def rules_schema_json() -> str:
    """The schema as indented JSON text, as ``mapper schema`` prints it and ``schema/`` ships it.

    Example:
        >>> rules_schema_json().startswith("{")
        True
    """
    return json.dumps(rules_schema(), indent=2, sort_keys=True) + "\n"


__all__ = ["SCHEMA_ID", "rules_schema", "rules_schema_json"]
