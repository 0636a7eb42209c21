"""The small tables of a rule file: ``[target]``, ``[policies]``, a rule's ``guard``, and lint silencing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from mapper.rules.common import (
    NOT_BLANK,
    TENSOR_DTYPES,
    Frozen,
    closest,
    exactly_one,
    not_blank,
    unknown_dtype_message,
)

_DTYPES: dict[str, Any] = {"enum": sorted(TENSOR_DTYPES)}

Policy = Literal["error", "warn", "ignore"]

# The lint codes a rule can silence; mapper.authoring.lint documents each.
LINT_CODES: Mapping[str, str] = {
    "M101": "dead rule: it matched no name",
    "M102": "shadowed rule: earlier rules take every name it matches",
    "M103": "overlapping rules: another rule also matches some of its names, with a different target",
    "M104": "template output is not a valid name in the target's namespace",
}


SILENCE_SCHEMA: dict[str, Any] = {"propertyNames": {"enum": list(LINT_CODES)}, "additionalProperties": NOT_BLANK}


def check_silence(value: dict[str, str]) -> dict[str, str]:
    """A ``silence`` table whose codes are lint codes, each with a reason; raises ValueError.

    Example:
        >>> check_silence({"M101": "optional layer"})
        {'M101': 'optional layer'}
    """
    for code, reason in value.items():
        if code not in LINT_CODES:
            raise ValueError(f"unknown lint code {code!r}{closest(code, sorted(LINT_CODES))}")
        if not reason.strip():
            raise ValueError(f'silencing {code} needs a reason, e.g. {code} = "the catch-all is meant to overlap"')
    return value


class Policies(Frozen):
    """What the planner does about leftovers; every policy is ``error`` unless the file says otherwise.

    Example:
        >>> Policies(unused_source="warn").dead_rule
        'error'
    """

    unused_source: Policy = Field("error", description="A source tensor that no rule matched.")
    unfilled_target: Policy = Field("error", description="A target variable that nothing fills or keeps.")
    dead_rule: Policy = Field("error", description="A rule or keep rule that matched no name.")
    double_fill: Policy = Field("error", description="A second rule filling a target already filled; the first wins.")


class TargetSection(Frozen):
    """Which of the target's name spaces the templates of this file produce.

    Example:
        >>> TargetSection().namespace
        'path'
    """

    namespace: Literal["path", "checkpoint"] = Field(
        "path",
        description="'path': Keras variable paths such as 'd1/kernel'. 'checkpoint': the keys a "
        "tf.train.Checkpoint written from the same model would have.",
    )
    checkpoint_root: str = Field("model", description="The keyword the checkpoint's root object was saved under.")


class Guard(Frozen):
    """Conditions a matched source tensor must meet; ``on_fail`` says whether a failure skips or errs.

    ``shape``, ``rank`` and ``dtype`` test the source tensor as stored (``-1`` in ``shape`` accepts any
    size); ``same_shape`` tests that the result of the rule's operations has the target's shape.

    Example:
        >>> Guard(same_shape=True, on_fail="skip", reason="new class count").on_fail
        'skip'
    """

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["same_shape"], "properties": {"same_shape": {"const": True}}},
                *exactly_one("shape", "rank", "dtype")["oneOf"],
            ],
            "if": {"required": ["on_fail"], "properties": {"on_fail": {"const": "skip"}}},
            "then": {"required": ["reason"]},
        }
    )

    same_shape: bool = False
    shape: tuple[int, ...] | None = Field(None, strict=False)
    rank: int | None = Field(None, ge=0)
    dtype: str | None = Field(None, json_schema_extra=_DTYPES)
    on_fail: Literal["skip", "error"] = "error"
    reason: str | None = Field(
        None,
        validate_default=True,
        json_schema_extra=NOT_BLANK,
        description="Why a failure is expected; required with on_fail = 'skip', as reports show it.",
    )

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        if value is not None and value not in TENSOR_DTYPES:
            raise ValueError(unknown_dtype_message(value))
        return value

    @field_validator("reason")
    @classmethod
    def _reason_when_skipping(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("on_fail") == "skip":
            raise ValueError(
                'on_fail = "skip" needs a reason: the skip is reported with it, e.g. reason = "new class count"'
            )
        return not_blank(value, "reason", 'reason = "new class count"')

    @field_validator("shape")
    @classmethod
    def _valid_shape(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and any(dim < -1 for dim in value):
            raise ValueError(f"shape {list(value)} has a negative size; use -1 for 'any size'")
        return value

    @model_validator(mode="after")
    def _checks_something(self) -> Guard:
        if not self.same_shape and self.shape is None and self.rank is None and self.dtype is None:
            raise ValueError("a guard must check something: set same_shape = true, shape, rank or dtype")
        return self


__all__ = ["LINT_CODES", "SILENCE_SCHEMA", "Guard", "Policies", "Policy", "TargetSection", "check_silence"]
