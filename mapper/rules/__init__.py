"""Rule files, format version 1: the TOML schema as frozen pydantic models, and load_rules()."""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
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

from mapper.dtypes import KNOWN_DTYPES
from mapper.errors import OperationError, RuleFileError, RuleIssue
from mapper.ops import Slice, parse_rearrange
from mapper.rules.ref import RuleRef

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


ParamValue = int | float | str | bool
Size = int | str  # a literal size, or the name of an integer in [params]


def _params(info: ValidationInfo | None) -> Mapping[str, ParamValue]:
    context = info.context if info is not None else None
    return context.get("params", {}) if isinstance(context, Mapping) else {}


def _resolve_size(value: Size, params: Mapping[str, ParamValue], what: str) -> int:
    """A size given as an int or as the name of an integer parameter."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value in params:
        resolved = params[value]
        if isinstance(resolved, int) and not isinstance(resolved, bool):
            return resolved
        raise ValueError(f"{what}: parameter {value!r} is {resolved!r}, not a whole number")
    declared = ", ".join(sorted(params)) or "none"
    hint = _closest(str(value), sorted(params)) if params else ""
    raise ValueError(
        f"{what}: {value!r} is neither a whole number nor a parameter (declared in [params]: {declared}){hint}"
    )


class ReshapeSpec(_Frozen):
    """``{ reshape = [768, "num_heads", -1] }`` (sizes, parameter names, at most one -1) or ``{ reshape = "target" }``."""

    reshape: tuple[int, ...] | Literal["target"]

    @field_validator("reshape", mode="before")
    @classmethod
    def _resolve(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, (list, tuple)):
            return tuple(_resolve_size(dim, _params(info), f"reshape {list(value)}") for dim in value)
        return value

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
    """``{ cast = "float32" }`` or ``{ cast = "target" }`` (the target's dtype): change the dtype, keeping its kind."""

    cast: str

    @field_validator("cast")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value != "target" and value not in KNOWN_DTYPES:
            raise ValueError(_unknown_dtype_message(value))
        return value


class SliceSpec(_Frozen):
    """``{ slice = "0" }``: NumPy-style indexing of the leading axes; an index drops its axis, ``a:b`` keeps it."""

    slice: str

    @field_validator("slice")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            Slice.parse(value)
        except OperationError as error:
            raise ValueError(str(error)) from None
        return value


class RearrangeSpec(BaseModel):
    """``{ rearrange = "(heads dim) hidden -> hidden heads dim", heads = "num_heads" }``: einops-style axes.

    Keys besides ``rearrange`` bind axis sizes, to whole numbers or parameter names.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    rearrange: str

    @field_validator("rearrange")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            parse_rearrange(value)
        except OperationError as error:
            raise ValueError(str(error)) from None
        return value

    @model_validator(mode="after")
    def _sizes(self, info: ValidationInfo) -> RearrangeSpec:
        left, right = parse_rearrange(self.rearrange)
        names = {name for group in left + right for name in group}
        sizes: dict[str, int] = {}
        for name, value in (self.model_extra or {}).items():
            if name not in names:
                raise ValueError(
                    f"rearrange binds {name!r}, which {self.rearrange!r} does not name{_closest(name, sorted(names))}"
                )
            sizes[name] = _resolve_size(value, _params(info), f"rearrange size {name}")
            if sizes[name] <= 0:
                raise ValueError(f"rearrange size {name} = {sizes[name]} must be a positive whole number")
        object.__setattr__(self, "__pydantic_private__", {"sizes": tuple(sorted(sizes.items()))})
        return self

    @property
    def sizes(self) -> tuple[tuple[str, int], ...]:
        """The bound sizes, resolved."""
        private = self.__pydantic_private__ or {}
        sizes: tuple[tuple[str, int], ...] = private.get("sizes", ())
        return sizes


OperationSpec = TransposeSpec | ReshapeSpec | CastSpec | SliceSpec | RearrangeSpec
_OPERATION_MODELS: dict[str, type[BaseModel]] = {
    "transpose": TransposeSpec,
    "reshape": ReshapeSpec,
    "cast": CastSpec,
    "slice": SliceSpec,
    "rearrange": RearrangeSpec,
}


class SplitSpec(_Frozen):
    """``split = { axis = -1, parts = 3 }`` or ``{ axis = 0, sizes = [4096, 1024, 1024] }``: one source, several targets.

    Part ``i`` goes to ``targets[i]``; the rule's ``ops`` then apply to each part.
    """

    axis: int
    parts: int | None = Field(None, ge=1)
    sizes: tuple[int, ...] | None = None

    @field_validator("parts", mode="before")
    @classmethod
    def _resolve_parts(cls, value: object, info: ValidationInfo) -> object:
        return _resolve_size(value, _params(info), "split parts") if isinstance(value, str) else value

    @field_validator("sizes", mode="before")
    @classmethod
    def _resolve_sizes(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, (list, tuple)):
            return tuple(_resolve_size(size, _params(info), f"split sizes {list(value)}") for size in value)
        return value

    @model_validator(mode="after")
    def _parts_or_sizes(self) -> SplitSpec:
        if (self.parts is None) == (self.sizes is None):
            raise ValueError("split needs exactly one of 'parts' (equal parts) or 'sizes' (a size for each part)")
        if self.sizes is not None and any(size <= 0 for size in self.sizes):
            raise ValueError(f"split sizes {list(self.sizes)} must be positive")
        return self

    @property
    def count(self) -> int:
        """How many parts."""
        return self.parts if self.parts is not None else len(self.sizes or ())


class CombineSpec(_Frozen):
    """``concat``/``stack = { axis = 0, by = "part", members = ["query", "key", "value"] }``: several sources, one target.

    Sources matching the rule are grouped by their target name; ``by`` names the pattern group that tells
    members apart, and ``members`` (values in order) or ``count`` (0 to count - 1) says which must be present,
    each exactly once.
    """

    axis: int
    by: str
    members: tuple[str, ...] | None = None
    count: int | None = Field(None, ge=1)

    @field_validator("count", mode="before")
    @classmethod
    def _resolve_count(cls, value: object, info: ValidationInfo) -> object:
        return _resolve_size(value, _params(info), "count") if isinstance(value, str) else value

    @model_validator(mode="after")
    def _members_or_count(self) -> CombineSpec:
        if (self.members is None) == (self.count is None):
            raise ValueError("give exactly one of 'members' (the values of the 'by' group, in order) or 'count'")
        if self.members is not None and len(set(self.members)) != len(self.members):
            raise ValueError(f"members {list(self.members)} lists a value twice")
        return self

    @property
    def expected(self) -> tuple[str, ...]:
        """The member values, in order."""
        return self.members if self.members is not None else tuple(str(i) for i in range(self.count or 0))


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


def _compile_template(template: str, pattern: Any, params: Mapping[str, ParamValue]) -> tuple[_Piece, ...]:
    """Parse a template and resolve its fields: pattern groups stay fields, parameters become literal text."""
    groups = set(pattern.groupindex)
    pieces: list[_Piece] = []
    for piece in _parse_template(template):
        if isinstance(piece.group, int) and piece.group > pattern.groups:
            raise ValueError(
                f"template {template!r} uses group {piece.group}, but the pattern has {pattern.groups} groups; "
                "use a group number from 0 (the whole name) to the number of groups, or a named group"
            )
        if isinstance(piece.group, str) and piece.group not in groups:
            if piece.group not in params:
                defined = ", ".join(sorted(groups)) or "none"
                declared = f"; parameters: {', '.join(sorted(params))}" if params else ""
                close = difflib.get_close_matches(piece.group, [*sorted(groups), *sorted(params)], n=1, cutoff=0.6)
                fix = f"add '(?P<{piece.group}>...)' to 'match'"
                raise ValueError(
                    f"template {template!r} uses group {piece.group!r}, which the pattern does not define "
                    f"(it defines: {defined}{declared}); "
                    + (f"did you mean {close[0]!r}? If not, {fix}" if close else fix)
                )
            value = params[piece.group]
            if piece.offset:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError(
                        f"template {template!r} adds to parameter {piece.group!r} = {value!r}, not a whole number"
                    )
                value = value + piece.offset
            pieces.append(_Piece(text=str(value)))
            continue
        pieces.append(piece)
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
    targets: tuple[str, ...] | None = Field(None, description="With 'split': a target name template for each part.")
    source: str | None = Field(None, description="In plans over several named sources: the one this rule reads.")
    values: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Per named group, a table that renames what it captured in templates: "
        "{ param = { weight = 'gamma', bias = 'beta' } }.",
    )
    guard: Guard | None = None
    optional: bool = Field(False, description="The rule may match nothing without being reported as dead.")
    silence: dict[str, str] = Field(
        default_factory=dict, description="Lint codes this rule silences, each with the reason: { M103 = '...' }."
    )
    split: SplitSpec | None = None
    concat: CombineSpec | None = None
    stack: CombineSpec | None = None
    ops: tuple[OperationSpec, ...] = Field(
        (), description="Operations applied in order: transpose, reshape, cast, slice, rearrange."
    )

    _pattern: Any = PrivateAttr(None)
    _templates: tuple[tuple[_Piece, ...], ...] = PrivateAttr(())
    _origin: tuple[str, int] | None = PrivateAttr(None)  # (file, 1-based index) once composed by ``extends``

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

    @field_validator("silence")
    @classmethod
    def _known_codes(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_silence(value)

    @field_validator("target")
    @classmethod
    def _template_fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A field validator (not the model one) so that the issue names 'target' and is reported
        # together with problems in the rule's other fields; 'match' is validated first.
        if value is not None and info.data.get("match") is not None:
            _compile_template(value, regex.compile(info.data["match"]), _params(info))
        return value

    @field_validator("targets")
    @classmethod
    def _templates_fit(cls, value: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        if value is not None and info.data.get("match") is not None:
            for template in value:
                _compile_template(template, regex.compile(info.data["match"]), _params(info))
        return value

    @field_validator("ops", mode="before")
    @classmethod
    def _dispatch_ops(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, (list, tuple)):
            return value
        typed: list[object] = []
        failures: list[str] = []
        for position, operation in enumerate(value, start=1):
            kinds = [key for key in operation if key in _OPERATION_MODELS] if isinstance(operation, Mapping) else []
            if not isinstance(operation, Mapping) or len(kinds) != 1 or (len(operation) > 1 and kinds != ["rearrange"]):
                unknown = (
                    [key for key in operation if key not in _OPERATION_MODELS] if isinstance(operation, Mapping) else []
                )
                if isinstance(operation, Mapping) and len(operation) == 1 and unknown:
                    failures.append(
                        f"operation {position}: unknown operation {unknown[0]!r}{_closest(unknown[0], _OPERATION_MODELS)}"
                    )
                    continue
                failures.append(
                    f"operation {position} must be a table with exactly one key of {', '.join(_OPERATION_MODELS)} "
                    f"(rearrange may add axis sizes), such as {{ transpose = [1, 0] }}; got {operation!r}"
                )
                continue
            (key,) = kinds
            try:
                typed.append(_OPERATION_MODELS[key].model_validate(operation, context=info.context))
            except ValidationError as error:
                detail = "; ".join(_clean_message(item["msg"]) for item in error.errors())
                failures.append(f"operation {position} ({key}): {detail}")
        if failures:
            raise ValueError("; ".join(failures))
        return tuple(typed)

    @model_validator(mode="after")
    def _target_or_skip(self, info: ValidationInfo) -> Rule:
        given = [field for field in ("target", "targets", "skip") if getattr(self, field) is not None]
        if len(given) != 1:
            raise ValueError(
                "a rule needs exactly one of 'target' (a name template), 'targets' (with 'split') or 'skip' (a reason)"
                + (f"; it has {' and '.join(given)}" if given else "")
            )
        if self.skip is not None and (self.guard is not None or self.ops or self.split or self.concat or self.stack):
            raise ValueError("a skip rule takes no 'guard', 'ops', 'split', 'concat' or 'stack': it uses no tensor")
        if (self.targets is None) != (self.split is None):
            raise ValueError("'split' and 'targets' go together: split one source into a target for each part")
        if self.split is not None and self.targets is not None and len(self.targets) != self.split.count:
            raise ValueError(f"split makes {self.split.count} parts but 'targets' lists {len(self.targets)} names")
        if self.concat is not None and self.stack is not None:
            raise ValueError("a rule can 'concat' or 'stack', not both")
        if self.split is not None and (self.concat is not None or self.stack is not None):
            raise ValueError(
                "a rule can 'split' one source or join several ('concat'/'stack'), not both; use two rules"
            )
        pattern = regex.compile(self.match)
        combine = self.concat or self.stack
        if combine is not None and combine.by not in pattern.groupindex:
            defined = ", ".join(sorted(pattern.groupindex)) or "none"
            raise ValueError(
                f"'by' names group {combine.by!r}, which the pattern does not define (it defines: {defined})"
            )
        for group in self.values:
            if group not in pattern.groupindex:
                defined = ", ".join(sorted(pattern.groupindex)) or "none"
                raise ValueError(
                    f"values names group {group!r}, which the pattern does not define (it defines: {defined})"
                )
        params = _params(info)
        templates = (self.target,) if self.target is not None else (self.targets or ())
        compiled = tuple(_compile_template(template, pattern, params) for template in templates)
        if combine is not None and any(piece.group == combine.by for pieces in compiled for piece in pieces):
            raise ValueError(
                f"the target template uses {{{combine.by}}}, the group that tells members apart; every member of a "
                "group must give the same target name"
            )
        self._pattern = pattern
        self._templates = compiled
        return self

    def fullmatch(self, name: str) -> Any:
        """The match object if the pattern matches all of ``name``, else None."""
        return self._pattern.fullmatch(name)

    @property
    def group_names(self) -> tuple[str, ...]:
        """Named groups the pattern defines."""
        return tuple(self._pattern.groupindex)

    def render(self, matched: Any, part: int = 0) -> str:
        """The target name (of split part ``part``) for a match; raises TemplateError for bad arithmetic."""
        return self.renderers()[part](matched)

    def renderers(self) -> tuple[Callable[[Any], str], ...]:
        """One function per target template (one, or one per split part) from a match to the target name.

        The planner takes these once per rule: they hold what they need, so rendering a name costs no
        attribute look-ups on the model.
        """
        templates = (self.target,) if self.target is not None else (self.targets or ())
        return tuple(
            _renderer(pieces, self.values, template)
            for pieces, template in zip(self._templates, templates, strict=True)
        )

    @property
    def combine(self) -> CombineSpec | None:
        """The concat or stack spec, if any."""
        return self.concat or self.stack


def _renderer(
    pieces: tuple[_Piece, ...], values: Mapping[str, Mapping[str, str]], template: str
) -> Callable[[Any], str]:
    """A function rendering ``template`` (parsed into ``pieces``) for one match."""

    def render(matched: Any) -> str:
        parts: list[str] = []
        for piece in pieces:
            if piece.group is None:
                parts.append(piece.text)
                continue
            value = matched.group(piece.group)
            table = values.get(piece.group) if isinstance(piece.group, str) else None
            if table is not None and value is not None:
                if value not in table:
                    raise TemplateError(
                        f"group {piece.group!r} captured {value!r}, which values.{piece.group} does not rename "
                        f"(it renames: {', '.join(sorted(table))})"
                    )
                value = table[value]
            if piece.offset:
                if value is None or not value.isdigit():
                    raise TemplateError(
                        f"template {template!r} adds {piece.offset:+d} to group {piece.group!r}, "
                        f"which captured {value!r}, not a whole number"
                    )
                number = int(value) + piece.offset
                if number < 0:
                    raise TemplateError(
                        f"template {template!r} gives {number} for group {piece.group!r} = {value!r}: "
                        "a negative number is never a layer index; check the offset"
                    )
                value = str(number)
            parts.append(value or "")
        return "".join(parts)

    return render


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
    silence: dict[str, str] = Field(
        default_factory=dict, description="Lint codes this keep silences, each with the reason."
    )

    _pattern: Any = PrivateAttr(None)
    _origin: tuple[str, int] | None = PrivateAttr(None)

    _compiles = field_validator("match")(Rule._compiles.__func__)  # type: ignore[attr-defined]

    _known_codes = field_validator("silence")(Rule._known_codes.__func__)  # type: ignore[attr-defined]

    @model_validator(mode="after")
    def _compile(self) -> Keep:
        self._pattern = regex.compile(self.match)
        return self

    def fullmatch(self, name: str) -> Any:
        """The match object if the pattern matches all of ``name``, else None."""
        return self._pattern.fullmatch(name)


class Example(_Frozen):
    """One ``[[examples]]`` entry: a source name and what the rules must do with it, checked without any checkpoint.

    Example:
        >>> Example(source="bert/embeddings/word_embeddings", target="embeddings/embeddings").skip
        False
    """

    source: str = Field(description="A source tensor name.")
    target: str | None = Field(None, description="The target name the rules must give it.")
    targets: tuple[str, ...] | None = Field(None, description="For a split rule: the target name of every part.")
    skip: bool = Field(False, description="true: the rules must skip this name.")
    rule: str | None = Field(None, description="The name of the rule that must take it.")
    groups: dict[str, str] | None = Field(
        None, description="What named groups of that rule's pattern must capture: { i = '3', part = 'query' }."
    )

    @model_validator(mode="after")
    def _one_expectation(self) -> Example:
        given = [name for name, value in (("target", self.target), ("targets", self.targets)) if value is not None]
        if self.skip:
            given.append("skip")
        if len(given) != 1:
            raise ValueError(
                "an example needs exactly one of 'target', 'targets' (for a split rule) or 'skip = true'"
                + (f"; it has {' and '.join(given)}" if given else "")
            )
        return self


class RuleSet(_Frozen):
    """A whole rule file: header, target namespace, policies, rules and keeps.

    Example:
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "(?P<n>.*)"\\ntarget = "{n}"\\n', file="inline.toml")
        >>> len(rules.rules), rules.file, rules.rule_ref(0)
        (1, 'inline.toml', RuleRef(file='inline.toml', index=1, name=None, section='rules'))
    """

    format: Literal[1] = Field(description="Rule file format version; this weight-mapper reads version 1.")
    description: str = ""
    params: dict[str, ParamValue] = Field(
        default_factory=dict, description="Named values for templates ('{num_layers}') and operation sizes."
    )
    target: TargetSection = TargetSection()
    policies: Policies = Policies()
    extends: tuple[str, ...] = Field(
        (), description="Base rule files, relative to this one: their rules and keeps come after this file's."
    )
    rules: tuple[Rule, ...] = ()
    keep: tuple[Keep, ...] = ()
    examples: tuple[Example, ...] = Field((), description="Source names and what the rules must do with them.")

    _file: str = PrivateAttr("<string>")

    @model_validator(mode="after")
    def _examples_name_rules(self) -> RuleSet:
        names = [rule.name for rule in self.rules if rule.name]
        for example in self.examples:
            if example.rule is not None and example.rule not in names:
                raise ValueError(
                    f"example for {example.source!r} names rule {example.rule!r}, but no rule has that name"
                    + (_closest(example.rule, names) if names else "; no rule has a name")
                )
            if example.rule is not None and example.groups:
                rule = next(rule for rule in self.rules if rule.name == example.rule)
                defined = sorted(regex.compile(rule.match).groupindex)
                for group in example.groups:
                    if group not in defined:
                        raise ValueError(
                            f"example for {example.source!r} expects group {group!r}, which rule {example.rule!r} does "
                            f"not define (it defines: {', '.join(defined) or 'none'})"
                        )
        return self

    @field_validator("params", mode="before")
    @classmethod
    def _scalars(cls, value: object) -> object:
        # One clear issue per bad value, instead of one per member of the ParamValue union.
        if isinstance(value, Mapping):
            for name, item in value.items():
                if not isinstance(item, (int, float, str, bool)):
                    raise ValueError(
                        f"parameter {name!r} is {item!r}; a parameter is a whole number, a number, a string or a "
                        "boolean"
                    )
        return value

    @field_validator("params")
    @classmethod
    def _identifiers(cls, value: dict[str, ParamValue]) -> dict[str, ParamValue]:
        for name in value:
            if not name.isidentifier():
                raise ValueError(f"parameter name {name!r} must be an identifier (letters, digits, '_')")
        return value

    @property
    def file(self) -> str:
        """The path the rules were loaded from (as given), or ``<string>``."""
        return self._file

    @property
    def namespace(self) -> str:
        """The target namespace the templates produce."""
        return self.target.namespace

    @property
    def files(self) -> tuple[str, ...]:
        """This file and every file it extends, in precedence order."""
        found = [self.file]
        origins = [entry._origin for entry in self.rules] + [keep._origin for keep in self.keep]
        for origin in origins:
            if origin is not None and origin[0] not in found:
                found.append(origin[0])
        return tuple(found)

    def rule_ref(self, index: int) -> RuleRef:
        """The RuleRef for ``rules[index]`` (0-based in, 1-based out), in the file the rule came from."""
        rule = self.rules[index]
        file, number = rule._origin or (self.file, index + 1)
        return RuleRef(file, number, rule.name, "rules")

    def keep_ref(self, index: int) -> RuleRef:
        """The RuleRef for ``keep[index]``, in the file the keep came from."""
        keep = self.keep[index]
        file, number = keep._origin or (self.file, index + 1)
        return RuleRef(file, number, keep.name, "keep")


def load_rules(path: str | os.PathLike[str], *, params: Mapping[str, Any] | None = None) -> RuleSet:
    """Read and validate a rule file and the files it ``extends``, reporting every problem at once.

    ``extends = ["base.toml"]`` paths are relative to the file that names them. The composed rule set lists
    the extending file's rules (and keeps, and examples) first, then each base's, depth first; a file reached
    twice is used once. ``[params]``, ``[policies]`` and ``[target]`` are merged key by key, the extending file
    winning. ``params`` overrides declared parameters (as ``--param`` does); each must be declared somewhere
    in the chain and keep its declared type.

    Args:
        path: the TOML file.
        params: parameter overrides.

    Returns:
        The validated, frozen RuleSet; each rule remembers the file and position it came from.

    Raises:
        RuleFileError: a file is missing, is not valid TOML (with line and column), breaks the schema, extends
            a missing file or itself (a cycle), or an override is undeclared or of the wrong type; each issue names
            the file, the rule, the field, what is wrong and how to fix it.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "base.toml").write_text('format = 1\\n[params]\\nn = 2\\n[[rules]]\\nmatch = "step"\\nskip = "counter"\\n')
        >>> _ = (folder / "r.toml").write_text('format = 1\\nextends = ["base.toml"]\\n[[rules]]\\nmatch = "w"\\ntarget = "v{n}"\\n')
        >>> rules = load_rules(folder / "r.toml", params={"n": 3})
        >>> [rule.match for rule in rules.rules], rules.rules[0].render(rules.rules[0].fullmatch("w")), rules.params
        (['w', 'step'], 'v3', {'n': 3})
    """
    file = os.fspath(path)
    chain = _collect_chain(file, ())
    merged_params: dict[str, Any] = {}
    merged_policies: dict[str, Any] = {}
    merged_target: dict[str, Any] = {}
    for _, data in reversed(chain):
        for merged, key in ((merged_params, "params"), (merged_policies, "policies"), (merged_target, "target")):
            table = data.get(key, {})
            if isinstance(table, Mapping):
                merged.update(table)
    merged_params.update(_checked_overrides(file, merged_params, params or {}))
    issues: list[RuleIssue] = []
    parts: list[RuleSet] = []
    for member_file, data in chain:
        try:
            parts.append(validate_rules({**data, "params": merged_params}, file=member_file))
        except RuleFileError as error:
            issues.extend(error.issues)
    if issues:
        raise RuleFileError(issues)
    if len(parts) == 1:
        return parts[0]
    for part in parts:
        for index, entry in enumerate(part.rules):
            entry._origin = (part.file, index + 1)
        for index, keep in enumerate(part.keep):
            keep._origin = (part.file, index + 1)
    head = parts[0]
    composed = RuleSet.model_validate(
        {
            "format": head.format,
            "description": head.description,
            "params": merged_params,
            "target": merged_target,
            "policies": merged_policies,
            "extends": head.extends,
            "rules": [entry for part in parts for entry in part.rules],
            "keep": [keep for part in parts for keep in part.keep],
            "examples": [example for part in parts for example in part.examples],
        },
        context={"params": merged_params},
    )
    composed._file = file
    return composed


def _collect_chain(file: str, seen: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """This file's table, then every file it extends, depth first, each file once."""
    resolved = os.path.realpath(file)
    if resolved in seen:
        cycle = " -> ".join([*(Path(step).name for step in seen), Path(resolved).name])
        raise RuleFileError(
            [RuleIssue(file, f"extends forms a cycle: {cycle}", field="extends", hint="remove one link")]
        )
    data = _read_table(file)
    chain = [(file, data)]
    entries = data.get("extends", [])
    if not isinstance(entries, list):
        return chain  # the schema reports the wrong type
    for entry in entries:
        if not isinstance(entry, str):
            continue
        base = os.fspath(Path(file).parent / entry)
        if not Path(base).is_file():
            raise RuleFileError(
                [
                    RuleIssue(
                        file,
                        f"extends {entry!r}, but there is no file {base}",
                        field="extends",
                        hint="paths are relative to the file that names them",
                    )
                ]
            )
        for member in _collect_chain(base, (*seen, resolved)):
            if all(os.path.realpath(member[0]) != os.path.realpath(known) for known, _ in chain):
                chain.append(member)
    return chain


def _read_table(file: str) -> dict[str, Any]:
    try:
        text = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuleFileError([RuleIssue(file, "no such rule file; check the path")]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise RuleFileError([RuleIssue(file, f"cannot read the rule file: {error}")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        line, column = _toml_position(error)
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(error)) or "invalid TOML"
        raise RuleFileError([RuleIssue(file, f"invalid TOML: {message}", line=line, column=column)]) from None


def _checked_overrides(file: str, declared: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides that name declared parameters and keep their types (an int may stand for a float)."""
    issues: list[RuleIssue] = []
    checked: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            hint = _closest(name, sorted(declared)).removeprefix("; ") if declared else None
            issues.append(
                RuleIssue(
                    file, f"--param {name}: the rule file declares no such parameter (declared: {known})", hint=hint
                )
            )
            continue
        current = declared[name]
        fits = type(value) is type(current) or (isinstance(current, float) and type(value) is int)
        if not fits:
            issues.append(
                RuleIssue(
                    file,
                    f"--param {name}={value!r}: {name} is declared as {type(current).__name__} ({current!r}), "
                    f"not {type(value).__name__}",
                )
            )
            continue
        checked[name] = float(value) if isinstance(current, float) else value
    if issues:
        raise RuleFileError(issues)
    return checked


def parse_param(text: str) -> tuple[str, Any]:
    """Parse a ``NAME=VALUE`` command-line override; the value is read as TOML (``24``, ``0.1``, ``true``) or a string.

    Example:
        >>> parse_param("num_layers=24"), parse_param("act=gelu"), parse_param("scale=0.5")
        (('num_layers', 24), ('act', 'gelu'), ('scale', 0.5))
    """
    name, separator, raw = text.partition("=")
    if not separator or not name.strip().isidentifier():
        raise RuleFileError([RuleIssue("--param", f"{text!r} is not NAME=VALUE", hint="e.g. --param num_layers=24")])
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return name.strip(), value


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
    params = data.get("params", {})
    usable = (
        {key: value for key, value in params.items() if isinstance(key, str) and key.isidentifier()}
        if isinstance(params, Mapping)
        else {}
    )
    try:
        rules = RuleSet.model_validate(data, context={"params": usable})
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
    "examples": tuple(Example.model_fields),
    "split": tuple(SplitSpec.model_fields),
    "concat": tuple(CombineSpec.model_fields),
    "stack": tuple(CombineSpec.model_fields),
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


# The lint codes a rule can silence; mapper.authoring.lint documents each.
LINT_CODES: Mapping[str, str] = {
    "M101": "dead rule: it matched no name",
    "M102": "shadowed rule: earlier rules take every name it matches",
    "M103": "overlapping rules: another rule also matches some of its names, with a different target",
    "M104": "template output is not a valid name in the target's namespace",
}


def _check_silence(value: dict[str, str]) -> dict[str, str]:
    for code, reason in value.items():
        if code not in LINT_CODES:
            raise ValueError(f"unknown lint code {code!r}{_closest(code, sorted(LINT_CODES))}")
        if not reason.strip():
            raise ValueError(f'silencing {code} needs a reason, e.g. {code} = "the catch-all is meant to overlap"')
    return value


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
    "Example",
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
    "parse_param",
    "parse_rules",
    "validate_rules",
]
