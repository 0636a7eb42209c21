"""What every rule-file model shares: the frozen base, parameter sizes, closest-name hints and dtype names."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo

from mapper.dtypes import KNOWN_DTYPES

ParamValue = int | float | str | bool
Size = int | str  # a literal size, or the name of an integer in [params]
# What a size may be as the file writes it, for the JSON Schema: the loader resolves names, then checks the value.
SizeInput = Annotated[int, Field(ge=-1)] | str
PositiveSizeInput = Annotated[int, Field(ge=1)] | str
SIZE_SCHEMA: dict[str, Any] = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
# A reason, a skip: text with something in it besides spaces (the validators say so in words).
NOT_BLANK: dict[str, Any] = {"pattern": r"\S"}
# A guard may test for string tensors, which no operation produces.
TENSOR_DTYPES = KNOWN_DTYPES | {"string"}


class Frozen(BaseModel):
    """The base of every rule-file model: immutable, an unknown key is an error, and types are strict.

    Strict: ``optional = "no"`` or ``rank = "2"`` is an error naming the field, not a value pydantic converts
    (an integer still stands for a float). Tuple fields take TOML's lists with ``Field(strict=False)``; their
    items stay strict.

    Example:
        >>> Frozen.model_config["extra"], Frozen.model_config["strict"]
        ('forbid', True)
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


def params_of(info: ValidationInfo | None) -> Mapping[str, ParamValue]:
    """The ``[params]`` table a validator sees through the validation context (empty without one).

    Example:
        >>> params_of(None)
        {}
    """
    context = info.context if info is not None else None
    return context.get("params", {}) if isinstance(context, Mapping) else {}


def resolve_size(value: Size, params: Mapping[str, ParamValue], what: str) -> int:
    """A size given as an int or as the name of an integer parameter; raises ValueError naming ``what``.

    Example:
        >>> resolve_size(3, {}, "split parts"), resolve_size("heads", {"heads": 12}, "reshape")
        (3, 12)
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value in params:
        resolved = params[value]
        if isinstance(resolved, int) and not isinstance(resolved, bool):
            return resolved
        raise ValueError(f"{what}: parameter {value!r} is {resolved!r}, not a whole number")
    declared = ", ".join(sorted(params)) or "none"
    hint = closest(str(value), sorted(params)) if params else ""
    raise ValueError(
        f"{what}: {value!r} is neither a whole number nor a parameter (declared in [params]: {declared}){hint}"
    )


def resolve_sizes(value: object, params: Mapping[str, ParamValue], what: str) -> object:
    """A list of sizes with parameter names resolved; anything else as it is, for pydantic to report its type.

    Example:
        >>> resolve_sizes([768, "heads", -1], {"heads": 12}, "reshape"), resolve_sizes("target", {}, "reshape")
        ((768, 12, -1), 'target')
    """
    if isinstance(value, (list, tuple)):
        return tuple(resolve_size(size, params, f"{what} {list(value)}") for size in value)
    return value


def closest(word: str, choices: Sequence[str] | Mapping[str, object]) -> str:
    """A hint to append to a message: the closest of ``choices``, or all of them when none is close.

    Example:
        >>> closest("tranpose", ["transpose", "reshape"]), closest("x", ["a", "b"])
        ("; did you mean 'transpose'?", '; valid: a, b')
    """
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {matches[0]!r}?" if matches else f"; valid: {', '.join(choices)}"


def not_blank(value: str | None, field: str, example: str) -> str | None:
    """``value`` unless it is empty or only spaces; raises ValueError naming ``field`` with an ``example``.

    Example:
        >>> not_blank("optimizer state", "skip", 'skip = "optimizer state"')
        'optimizer state'
    """
    if value is not None and not value.strip():
        raise ValueError(f"{field} is empty: say why (reports show it), e.g. {example}")
    return value


def exactly_one(*fields: str) -> dict[str, Any]:
    """The JSON Schema clause of a table that needs exactly one of ``fields``.

    Example:
        >>> exactly_one("parts", "sizes")
        {'oneOf': [{'required': ['parts']}, {'required': ['sizes']}]}
    """
    return {"oneOf": [{"required": [field]} for field in fields]}


def clean_message(message: str) -> str:
    """A pydantic error message without the prefix pydantic adds to a validator's own message.

    Example:
        >>> clean_message("Value error, shape is bad")
        'shape is bad'
    """
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def unknown_dtype_message(value: str) -> str:
    """The message for a dtype name weight-mapper does not know, with the closest known one.

    Example:
        >>> unknown_dtype_message("float23")
        "unknown dtype 'float23'; did you mean 'float32'?"
    """
    return f"unknown dtype {value!r}{closest(value, sorted(TENSOR_DTYPES))}"


__all__ = [
    "NOT_BLANK",
    "SIZE_SCHEMA",
    "TENSOR_DTYPES",
    "Frozen",
    "ParamValue",
    "PositiveSizeInput",
    "Size",
    "SizeInput",
    "clean_message",
    "closest",
    "exactly_one",
    "not_blank",
    "params_of",
    "resolve_size",
    "resolve_sizes",
    "unknown_dtype_message",
]
