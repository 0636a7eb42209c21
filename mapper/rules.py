"""Rule files, format version 1: the TOML schema as frozen pydantic models, and load_rules()."""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import regex
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mapper.errors import RuleFileError, RuleIssue
from mapper.ops import KNOWN_DTYPES
from mapper.plan import RuleRef

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

RULES_FORMAT = 1
Policy = Literal["error", "warn", "ignore"]
_TENSOR_DTYPES = KNOWN_DTYPES | {"string"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Policies(_Frozen):
    """What the planner does about leftovers; every policy is ``error`` unless the file says otherwise.

    Example:
        >>> Policies(unused_source="warn").dead_rule
        'error'
    """

    unused_source: Policy = Field("error", description="A source tensor that no rule matched.")
    unfilled_target: Policy = Field("error", description="A target variable that nothing fills or keeps.")
    dead_rule: Policy = Field("error", description="A rule or keep rule that matched no name.")
    double_fill: Policy = Field("error", description="A second rule filling a target already filled; the first wins.")


class TargetSection(_Frozen):
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


class Guard(_Frozen):
    """Conditions a matched source tensor must meet; ``on_fail`` says whether a failure skips or errs.

    ``shape``, ``rank`` and ``dtype`` test the source tensor as stored (``-1`` in ``shape`` accepts any
    size); ``same_shape`` tests that the result of the rule's operations has the target's shape.

    Example:
        >>> Guard(same_shape=True, on_fail="skip", reason="new class count").on_fail
        'skip'
    """

    same_shape: bool = False
    shape: tuple[int, ...] | None = None
    rank: int | None = Field(None, ge=0)
    dtype: str | None = None
    on_fail: Literal["skip", "error"] = "error"
    reason: str | None = None

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        if value is not None and value not in _TENSOR_DTYPES:
            raise ValueError(_unknown_dtype_message(value))
        return value

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


class TransposeSpec(_Frozen):
    """``{ transpose = [1, 0] }``: output axis i is input axis perm[i]."""

    transpose: tuple[int, ...]

    @field_validator("transpose")
    @classmethod
    def _is_permutation(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if sorted(value) != list(range(len(value))):
            raise ValueError(
                f"transpose {list(value)} is not a permutation; list each axis 0..{len(value) - 1} once, "
                f"e.g. {list(reversed(range(len(value))))}"
            )
        return value


class ReshapeSpec(_Frozen):
    """``{ reshape = [768, 12, -1] }`` (at most one -1) or ``{ reshape = "target" }`` (the target's shape)."""

    reshape: tuple[int, ...] | Literal["target"]

    @field_validator("reshape")
    @classmethod
    def _one_unknown(cls, value: tuple[int, ...] | str) -> tuple[int, ...] | str:
        if isinstance(value, tuple):
            if sum(1 for dim in value if dim == -1) > 1:
                raise ValueError(f"reshape {list(value)} has more than one -1; at most one size can be inferred")
            if any(dim < -1 or dim == 0 for dim in value):
                raise ValueError(f"reshape {list(value)}: sizes must be positive (or a single -1)")
        return value


class CastSpec(_Frozen):
    """``{ cast = "float32" }``: change the dtype, keeping the value's kind."""

    cast: str

    @field_validator("cast")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in KNOWN_DTYPES:
            raise ValueError(_unknown_dtype_message(value))
        return value


OperationSpec = TransposeSpec | ReshapeSpec | CastSpec
_OPERATION_MODELS: dict[str, type[_Frozen]] = {"transpose": TransposeSpec, "reshape": ReshapeSpec, "cast": CastSpec}


@dataclass(frozen=True)
class _Piece:
    """A template piece: literal text, or a group reference with an integer offset."""

    text: str = ""
    group: str | int | None = None
    offset: int = 0


class TemplateError(ValueError):
    """A template cannot be rendered for one particular match (arithmetic on a non-number)."""


_FIELD_RE = re.compile(r"\{\s*(?P<group>[A-Za-z_]\w*|\d+)\s*(?:(?P<sign>[+-])\s*(?P<offset>\d+)\s*)?\}")


def _parse_template(template: str) -> tuple[_Piece, ...]:
    pieces: list[_Piece] = []
    position = 0
    literal = ""
    while position < len(template):
        char = template[position]
        if template.startswith("{{", position) or template.startswith("}}", position):
            literal += char
            position += 2
        elif char == "{":
            found = _FIELD_RE.match(template, position)
            if not found:
                end = template.find("}", position)
                shown = template[position : end + 1] if end >= 0 else template[position:]
                raise ValueError(
                    f"template field {shown!r} at position {position} is not '{{group}}', '{{group + N}}' or "
                    "'{group - N}' (write '{{' for a literal brace)"
                )
            if literal:
                pieces.append(_Piece(text=literal))
                literal = ""
            group: str | int = found["group"]
            if isinstance(group, str) and group.isdigit():
                group = int(group)
            offset = int(found["offset"] or 0) * (-1 if found["sign"] == "-" else 1)
            pieces.append(_Piece(group=group, offset=offset))
            position = found.end()
        elif char == "}":
            raise ValueError(f"unmatched '}}' at position {position} (write '}}}}' for a literal brace)")
        else:
            literal += char
            position += 1
    if literal:
        pieces.append(_Piece(text=literal))
    return tuple(pieces)


class Rule(_Frozen):
    """One ``[[rules]]`` entry: a full-match pattern over source names and either a target template or a skip.

    Example:
        >>> rule = Rule(match=r"bert/encoder/layer_(?P<i>\\d+)/output/dense/kernel", target="layer_{i + 1}/ffn/kernel")
        >>> rule.render(rule.fullmatch("bert/encoder/layer_0/output/dense/kernel"))
        'layer_1/ffn/kernel'
    """

    name: str | None = Field(None, description="A label for reports and errors.")
    match: str = Field(
        description="A regular expression that must match the whole source name; named groups feed the template."
    )
    target: str | None = Field(
        None, description="Template of the target name: '{group}', '{group + 1}', '{0}' for the whole name."
    )
    skip: str | None = Field(None, description="Instead of a target: the reason the matched source tensors go unused.")
    guard: Guard | None = None
    optional: bool = Field(False, description="The rule may match nothing without being reported as dead.")
    ops: tuple[OperationSpec, ...] = Field((), description="Operations applied in order: transpose, reshape, cast.")

    _pattern: Any = PrivateAttr(None)
    _template: tuple[_Piece, ...] = PrivateAttr(())

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            regex.compile(value)
        except regex.error as error:
            position = error.pos if error.pos is not None else len(value)
            raise ValueError(
                f"invalid regular expression: {error.msg} at position {position}: "
                f"{value[:position]}\u2192{value[position:]}"
            ) from None
        return value

    @field_validator("target")
    @classmethod
    def _template_fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A field validator (not the model one) so that the issue names 'target' and is reported
        # together with problems in the rule's other fields; 'match' is validated first.
        match = info.data.get("match")
        if value is None:
            return value
        pieces = _parse_template(value)
        if match is None:
            return value
        pattern = regex.compile(match)
        groups = set(pattern.groupindex)
        for piece in pieces:
            if isinstance(piece.group, str) and piece.group not in groups:
                defined = ", ".join(sorted(groups)) or "none"
                raise ValueError(
                    f"template {value!r} uses group {piece.group!r}, which the pattern does not define "
                    f"(it defines: {defined}); add '(?P<{piece.group}>...)' to 'match'"
                )
            if isinstance(piece.group, int) and piece.group > pattern.groups:
                raise ValueError(
                    f"template {value!r} uses group {piece.group}, but the pattern has {pattern.groups} groups; "
                    "use a group number from 0 (the whole name) to the number of groups, or a named group"
                )
        return value

    @field_validator("ops", mode="before")
    @classmethod
    def _dispatch_ops(cls, value: object) -> object:
        if not isinstance(value, (list, tuple)):
            return value
        typed: list[object] = []
        failures: list[str] = []
        for position, operation in enumerate(value, start=1):
            if not isinstance(operation, Mapping) or len(operation) != 1:
                failures.append(
                    f"operation {position} must be a table with exactly one key ({', '.join(_OPERATION_MODELS)}), "
                    f"such as {{ transpose = [1, 0] }}; got {operation!r}"
                )
                continue
            ((key, _),) = operation.items()
            if key not in _OPERATION_MODELS:
                failures.append(f"operation {position}: unknown operation {key!r}{_closest(key, _OPERATION_MODELS)}")
                continue
            try:
                typed.append(_OPERATION_MODELS[key].model_validate(operation))
            except ValidationError as error:
                detail = "; ".join(_clean_message(item["msg"]) for item in error.errors())
                failures.append(f"operation {position} ({key}): {detail}")
        if failures:
            raise ValueError("; ".join(failures))
        return tuple(typed)

    @model_validator(mode="after")
    def _target_or_skip(self) -> Rule:
        if (self.target is None) == (self.skip is None):
            raise ValueError("a rule needs exactly one of 'target' (a name template) or 'skip' (a reason)")
        if self.skip is not None and (self.guard is not None or self.ops):
            raise ValueError("a skip rule takes no 'guard' or 'ops': it uses no tensor")
        self._pattern = regex.compile(self.match)
        if self.target is not None:
            self._template = _parse_template(self.target)
        return self

    def fullmatch(self, name: str) -> Any:
        """The match object if the pattern matches all of ``name``, else None."""
        return self._pattern.fullmatch(name)

    @property
    def group_names(self) -> tuple[str, ...]:
        """Named groups the pattern defines."""
        return tuple(self._pattern.groupindex)

    def render(self, matched: Any) -> str:
        """The target name for a match of this rule; raises TemplateError for arithmetic on a non-number."""
        parts: list[str] = []
        for piece in self._template:
            if piece.group is None:
                parts.append(piece.text)
                continue
            value = matched.group(piece.group)
            if piece.offset:
                if value is None or not value.isdigit():
                    raise TemplateError(
                        f"template {self.target!r} adds {piece.offset:+d} to group {piece.group!r}, "
                        f"which captured {value!r}, not a whole number"
                    )
                number = int(value) + piece.offset
                if number < 0:
                    raise TemplateError(
                        f"template {self.target!r} gives {number} for group {piece.group!r} = {value!r}: "
                        "a negative number is never a layer index; check the offset"
                    )
                value = str(number)
            parts.append(value or "")
        return "".join(parts)


class Keep(_Frozen):
    """One ``[[keep]]`` entry: target variables to leave at their initial values, with the reason.

    Example:
        >>> Keep(match="head/.*", reason="new head for 5 classes").reason
        'new head for 5 classes'
    """

    name: str | None = None
    match: str = Field(description="A regular expression that must match the whole target name.")
    reason: str = Field(description="Why these variables keep their initial values; reports show it.")
    namespace: Literal["path", "checkpoint"] | None = Field(
        None, description="Namespace of the names 'match' sees; defaults to [target].namespace."
    )
    optional: bool = Field(False, description="The keep may match nothing without being reported as dead.")

    _pattern: Any = PrivateAttr(None)

    _compiles = field_validator("match")(Rule._compiles.__func__)  # type: ignore[attr-defined]

    @model_validator(mode="after")
    def _compile(self) -> Keep:
        self._pattern = regex.compile(self.match)
        return self

    def fullmatch(self, name: str) -> Any:
        """The match object if the pattern matches all of ``name``, else None."""
        return self._pattern.fullmatch(name)


class RuleSet(_Frozen):
    """A whole rule file: header, target namespace, policies, rules and keeps.

    Example:
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "(?P<n>.*)"\\ntarget = "{n}"\\n', file="inline.toml")
        >>> len(rules.rules), rules.file, rules.rule_ref(0)
        (1, 'inline.toml', RuleRef(file='inline.toml', index=1, name=None, section='rules'))
    """

    format: Literal[1] = Field(description="Rule file format version; this weight-mapper reads version 1.")
    description: str = ""
    target: TargetSection = TargetSection()
    policies: Policies = Policies()
    rules: tuple[Rule, ...] = ()
    keep: tuple[Keep, ...] = ()

    _file: str = PrivateAttr("<string>")

    @property
    def file(self) -> str:
        """The path the rules were loaded from (as given), or ``<string>``."""
        return self._file

    @property
    def namespace(self) -> str:
        """The target namespace the templates produce."""
        return self.target.namespace

    def rule_ref(self, index: int) -> RuleRef:
        """The RuleRef for ``rules[index]`` (0-based in, 1-based out)."""
        return RuleRef(self.file, index + 1, self.rules[index].name, "rules")

    def keep_ref(self, index: int) -> RuleRef:
        """The RuleRef for ``keep[index]``."""
        return RuleRef(self.file, index + 1, self.keep[index].name, "keep")


def load_rules(path: str | os.PathLike[str]) -> RuleSet:
    """Read and validate a rule file, reporting every problem in it at once.

    Args:
        path: the TOML file.

    Returns:
        The validated, frozen RuleSet.

    Raises:
        RuleFileError: the file is missing, is not valid TOML (with line and column), or breaks the schema;
            each issue names the rule, the field, what is wrong and how to fix it.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "r.toml"
        >>> _ = path.write_text('format = 1\\n[[rules]]\\nmatch = "global_step"\\nskip = "step counter"\\n')
        >>> load_rules(path).rules[0].skip
        'step counter'
    """
    file = os.fspath(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuleFileError([RuleIssue(file, "no such rule file; check the path")]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise RuleFileError([RuleIssue(file, f"cannot read the rule file: {error}")]) from None
    return parse_rules(text, file=file)


def parse_rules(text: str, *, file: str = "<string>") -> RuleSet:
    """Validate rule-file TOML given as a string; ``file`` names it in errors.

    Example:
        >>> parse_rules("format = 1\\n[policies]\\nunused_source = 'warn'\\n").policies.unused_source
        'warn'
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        line, column = _toml_position(error)
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(error)) or "invalid TOML"
        raise RuleFileError([RuleIssue(file, f"invalid TOML: {message}", line=line, column=column)]) from None
    return validate_rules(data, file=file)


def validate_rules(data: Mapping[str, Any], *, file: str = "<string>") -> RuleSet:
    """Validate an already-parsed rule-file table.

    Example:
        >>> validate_rules({"format": 1}).rules
        ()
    """
    try:
        rules = RuleSet.model_validate(data)
    except ValidationError as error:
        raise RuleFileError([_issue(file, data, item) for item in error.errors()]) from None
    rules._file = file
    return rules


def _toml_position(error: Exception) -> tuple[int | None, int | None]:
    found = re.search(r"at line (\d+), column (\d+)", str(error))
    return (int(found[1]), int(found[2])) if found else (None, None)


_FIELDS: dict[str, tuple[str, ...]] = {
    "": tuple(RuleSet.model_fields),
    "rules": tuple(Rule.model_fields),
    "keep": tuple(Keep.model_fields),
    "guard": tuple(Guard.model_fields),
    "policies": tuple(Policies.model_fields),
    "target": tuple(TargetSection.model_fields),
}


def _issue(file: str, data: Mapping[str, Any], item: Any) -> RuleIssue:
    """Turn one pydantic error into a RuleIssue with rule number, field and a hint."""
    location: tuple[str | int, ...] = tuple(item["loc"])
    rule_number: int | None = None
    rule_name: str | None = None
    section = ""
    if len(location) >= 2 and location[0] in ("rules", "keep") and isinstance(location[1], int):
        section = str(location[0])
        index = location[1]
        rule_number = index + 1
        entries = data.get(section)
        if isinstance(entries, list) and index < len(entries) and isinstance(entries[index], Mapping):
            name = entries[index].get("name")
            rule_name = name if isinstance(name, str) else None
        field_path = location[2:]
    else:
        field_path = location
    # pydantic adds the union member's class name to the location of errors inside a union; drop it.
    field_parts = [str(part) for part in field_path if not (isinstance(part, str) and part.endswith("Spec"))]
    field = ".".join(field_parts) or None
    message = _clean_message(item["msg"])
    hint = None
    kind = item["type"]
    if kind == "extra_forbidden":
        key = str(field_path[-1])
        parent = field_path[-2] if len(field_path) >= 2 else (section if section else "")
        valid = _FIELDS.get(str(parent), _FIELDS.get(section, ()))
        message = f"unknown key {key!r}"
        hint = (_closest(key, valid).removeprefix("; ") or f"valid keys: {', '.join(valid)}") if valid else None
    elif kind == "missing":
        message = "this key is required"
    elif kind == "literal_error" and field == "format":
        message = f"format {item.get('input')!r} is not supported"
        hint = f"this weight-mapper reads format = {RULES_FORMAT}"
    elif kind == "literal_error":
        expected = str(item.get("ctx", {}).get("expected", ""))
        message = f"{item.get('input')!r} is not allowed"
        hint = f"use {expected}"
    return RuleIssue(
        file,
        message,
        rule=rule_number,
        rule_name=rule_name,
        field=field,
        hint=hint,
        section="keep rule" if section == "keep" else "rule",
    )


def _clean_message(message: str) -> str:
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _closest(word: str, choices: Sequence[str] | Mapping[str, object]) -> str:
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {matches[0]!r}?" if matches else f"; valid: {', '.join(choices)}"


def _unknown_dtype_message(value: str) -> str:
    return f"unknown dtype {value!r}{_closest(value, sorted(_TENSOR_DTYPES))}"


__all__ = [
    "RULES_FORMAT",
    "CastSpec",
    "Guard",
    "Keep",
    "OperationSpec",
    "Policies",
    "ReshapeSpec",
    "Rule",
    "RuleSet",
    "TargetSection",
    "TemplateError",
    "TransposeSpec",
    "load_rules",
    "parse_rules",
    "validate_rules",
]
