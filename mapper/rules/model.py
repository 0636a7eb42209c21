"""The rule-file schema, format version 1, as frozen pydantic models; parse_rules() and validate_rules() build it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any, Literal

import regex
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator

from mapper.errors import RuleFileError
from mapper.rules.bound import bounded_fullmatch, place
from mapper.rules.bound import match_timeout as bound_of
from mapper.rules.common import NOT_BLANK, Frozen, ParamValue, closest, exactly_one, not_blank, params_of
from mapper.rules.export import ExportSection, Tied
from mapper.rules.issues import RULES_FORMAT, nesting_issue, pydantic_issue, toml_issue
from mapper.rules.operations import OPERATION_SPECS, CombineSpec, OperationSpec, SplitSpec, parse_operations
from mapper.rules.ref import RuleRef
from mapper.rules.sections import LINT_CODES, SILENCE_SCHEMA, Guard, Policies, TargetSection, check_silence
from mapper.rules.templates import Piece, compile_template, literal_alternatives, renderer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


class Rule(Frozen):
    """One ``[[rules]]`` entry: a full-match pattern over source names and either a target template or a skip.

    Example:
        >>> rule = Rule(match=r"bert/encoder/layer_(?P<i>\\d+)/output/dense/kernel", target="layer_{i + 1}/ffn/kernel")
        >>> rule.render(rule.fullmatch("bert/encoder/layer_0/output/dense/kernel"))
        'layer_1/ffn/kernel'
    """

    model_config = ConfigDict(
        json_schema_extra={
            **exactly_one("target", "targets", "skip"),
            "dependentRequired": {"split": ["targets"], "targets": ["split"]},
            "dependentSchemas": {
                "skip": {"not": {"anyOf": [{"required": [key]} for key in ("guard", "split", "concat", "stack")]}},
                "split": {"not": {"anyOf": [{"required": ["concat"]}, {"required": ["stack"]}]}},
                "concat": {"not": {"required": ["stack"]}},
            },
        }
    )

    name: str | None = Field(None, description="A label for reports and errors.")
    match: str = Field(
        description="A regular expression that must match the whole source name; named groups feed the template."
    )
    target: str | None = Field(
        None, description="Template of the target name: '{group}', '{group + 1}', '{0}' for the whole name."
    )
    skip: str | None = Field(
        None,
        json_schema_extra=NOT_BLANK,
        description="Instead of a target: the reason the matched source tensors go unused.",
    )
    targets: tuple[str, ...] | None = Field(
        None,
        strict=False,
        description="With 'split' (beside 'ops', which then run on each part): a target name template for each part.",
    )
    source: str | None = Field(None, description="In plans over several named sources: the one this rule reads.")
    values: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Per named group, a table that renames what it captured in templates: "
        "{ param = { weight = 'gamma', bias = 'beta' } }.",
    )
    guard: Guard | None = None
    optional: bool = Field(False, description="The rule may match nothing without being reported as dead.")
    silence: dict[str, str] = Field(
        default_factory=dict,
        description="Lint codes this rule silences, each with the reason: { M103 = '...' }.",
        json_schema_extra=SILENCE_SCHEMA,
    )
    split: SplitSpec | None = None
    concat: CombineSpec | None = None
    stack: CombineSpec | None = None
    ops: tuple[OperationSpec, ...] = Field(
        (), strict=False, description=f"Operations applied in order: {', '.join(OPERATION_SPECS)}."
    )

    _pattern: Any = PrivateAttr(None)
    _templates: tuple[tuple[Piece, ...], ...] = PrivateAttr(())
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
        return check_silence(value)

    @field_validator("skip")
    @classmethod
    def _skip_says_why(cls, value: str | None) -> str | None:
        return not_blank(value, "skip", 'skip = "optimizer state"')

    @field_validator("values")
    @classmethod
    def _values_rename_every_word(
        cls, value: dict[str, dict[str, str]], info: ValidationInfo
    ) -> dict[str, dict[str, str]]:
        # A group that can capture only the words of a literal alternation: each needs a new name, or the
        # rule fails at plan time on the first name with the missing word.
        if info.data.get("match") is not None:
            for group, table in value.items():
                missing = [word for word in literal_alternatives(info.data["match"], group) if word not in table]
                if missing:
                    raise ValueError(
                        f"values.{group} does not rename {', '.join(map(repr, missing))}, which group {group!r} can "
                        f"capture; add {', '.join(f'{word} = ...' for word in missing)} to values.{group}, or take "
                        f"{'them' if len(missing) > 1 else 'it'} out of the pattern"
                    )
        return value

    @field_validator("target")
    @classmethod
    def _template_fits(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A field validator (not the model one) so that the issue names 'target' and is reported
        # together with problems in the rule's other fields; 'match' is validated first.
        if value is not None and info.data.get("match") is not None:
            compile_template(value, regex.compile(info.data["match"]), params_of(info))
        return value

    @field_validator("targets")
    @classmethod
    def _templates_fit(cls, value: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        if value is not None and info.data.get("match") is not None:
            for template in value:
                compile_template(template, regex.compile(info.data["match"]), params_of(info))
        return value

    @field_validator("ops", mode="before")
    @classmethod
    def _dispatch_ops(cls, value: object, info: ValidationInfo) -> object:
        return parse_operations(value, info.context)

    @model_validator(mode="after")
    def _target_or_skip(self, info: ValidationInfo) -> Rule:
        self._check_destination()
        self._check_split_and_join()
        pattern = regex.compile(self.match)
        self._check_groups(pattern)
        templates = (self.target,) if self.target is not None else (self.targets or ())
        compiled = tuple(compile_template(template, pattern, params_of(info)) for template in templates)
        combine = self.combine
        if combine is not None and any(piece.group == combine.by for pieces in compiled for piece in pieces):
            raise ValueError(
                f"the target template uses {{{combine.by}}}, the group that tells members apart; every member of a "
                "group must give the same target name"
            )
        self._pattern = pattern
        self._templates = compiled
        return self

    def _check_destination(self) -> None:
        """Exactly one of target, targets and skip; a skip uses no tensor."""
        given = [field for field in ("target", "targets", "skip") if getattr(self, field) is not None]
        if len(given) != 1:
            raise ValueError(
                "a rule needs exactly one of 'target' (a name template), 'targets' (with 'split') or 'skip' (a reason)"
                + (f"; it has {' and '.join(given)}" if given else "")
            )
        if self.skip is not None and (self.guard is not None or self.ops or self.split or self.concat or self.stack):
            raise ValueError("a skip rule takes no 'guard', 'ops', 'split', 'concat' or 'stack': it uses no tensor")

    def _check_split_and_join(self) -> None:
        """Check that split goes with targets, one name a part; a rule splits or joins, and joins one way."""
        if (self.targets is None) != (self.split is None):
            raise ValueError("'split' and 'targets' go together: split one source into a target for each part")
        if self.split is not None and self.targets is not None and len(self.targets) != self.split.count:
            raise ValueError(f"split makes {self.split.count} parts but 'targets' lists {len(self.targets)} names")
        if self.concat is not None and self.stack is not None:
            raise ValueError("a rule can 'concat' or 'stack', not both")
        if self.concat is not None and self.concat.from_target:
            raise ValueError(
                "concat count = 'target' cannot be: the target's size is the members' sizes added up, not their "
                "number; give count = N or members = [...] (count = 'target' is for stack)"
            )
        if self.split is not None and (self.concat is not None or self.stack is not None):
            raise ValueError(
                "a rule can 'split' one source or join several ('concat'/'stack'), not both; use two rules"
            )

    def _check_groups(self, pattern: Any) -> None:
        """The groups ``by`` and ``values`` name are groups of the pattern."""
        combine = self.combine
        defined = ", ".join(sorted(pattern.groupindex)) or "none"
        if combine is not None and combine.by not in pattern.groupindex:
            raise ValueError(
                f"'by' names group {combine.by!r}, which the pattern does not define (it defines: {defined})"
            )
        for group in self.values:
            if group not in pattern.groupindex:
                raise ValueError(
                    f"values names group {group!r}, which the pattern does not define (it defines: {defined})"
                )

    def fullmatch(self, name: str, *, partial: bool = False) -> Any:
        """The match object if the pattern matches all of ``name`` (or, ``partial``, could with more), else None.

        Raises:
            MatchTimeoutError: the match ran past the time bound (``mapper.rules.bound.match_timeout``).
        """
        return bounded_fullmatch(self, name, partial=partial, section="rules")

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
        pattern = self._pattern  # a private attribute costs microseconds to read: once
        return tuple(
            renderer(pieces, self.values, template, pattern.groupindex, pattern.groups)
            for pieces, template in zip(self._templates, templates, strict=True)
        )

    @property
    def combine(self) -> CombineSpec | None:
        """The concat or stack spec, if any."""
        return self.concat or self.stack


class Keep(Frozen):
    """One ``[[keep]]`` entry: target variables to leave at their initial values, with the reason.

    Example:
        >>> Keep(match="head/.*", reason="new head for 5 classes").reason
        'new head for 5 classes'
    """

    name: str | None = None
    match: str = Field(description="A regular expression that must match the whole target name.")
    reason: str = Field(
        description="Why these variables keep their initial values; reports show it.", json_schema_extra=NOT_BLANK
    )
    namespace: Literal["path", "checkpoint"] | None = Field(
        None, description="Namespace of the names 'match' sees; defaults to [target].namespace."
    )
    optional: bool = Field(False, description="The keep may match nothing without being reported as dead.")
    silence: dict[str, str] = Field(
        default_factory=dict,
        description="Lint codes this keep silences, each with the reason.",
        json_schema_extra=SILENCE_SCHEMA,
    )

    _pattern: Any = PrivateAttr(None)
    _origin: tuple[str, int] | None = PrivateAttr(None)

    _compiles = field_validator("match")(Rule._compiles.__func__)  # type: ignore[attr-defined]

    _known_codes = field_validator("silence")(Rule._known_codes.__func__)  # type: ignore[attr-defined]

    @field_validator("reason")
    @classmethod
    def _says_why(cls, value: str) -> str:
        return not_blank(value, "reason", 'reason = "trained from scratch"') or value

    @model_validator(mode="after")
    def _compile(self) -> Keep:
        self._pattern = regex.compile(self.match)
        return self

    def fullmatch(self, name: str) -> Any:
        """The match object if the pattern matches all of ``name``, else None; raises MatchTimeoutError."""
        return bounded_fullmatch(self, name, section="keep")


class Example(Frozen):
    """One ``[[examples]]`` entry: a source name and what the rules must do with it, checked without any checkpoint.

    Example:
        >>> Example(source="bert/embeddings/word_embeddings", target="embeddings/embeddings").skip
        False
    """

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["target"]},
                {"required": ["targets"]},
                {"required": ["skip"], "properties": {"skip": {"const": True}}},
            ]
        }
    )

    source: str = Field(description="A source tensor name.")
    target: str | None = Field(None, description="The target name the rules must give it.")
    targets: tuple[str, ...] | None = Field(
        None, strict=False, description="For a split rule: the target name of every part."
    )
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


class RuleSet(Frozen):
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
        (),
        strict=False,
        description="Base rule files, relative to this one: their rules and keeps come after this file's.",
    )
    rules: tuple[Rule, ...] = Field((), strict=False)
    keep: tuple[Keep, ...] = Field((), strict=False)
    examples: tuple[Example, ...] = Field(
        (), strict=False, description="Source names and what the rules must do with them."
    )
    export: ExportSection = ExportSection()

    _file: str = PrivateAttr("<string>")

    @field_validator("format", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        # true == 1 in Python, so the literal alone would take `format = true`.
        if isinstance(value, bool):
            raise ValueError(f"format {str(value).lower()} is not supported (this weight-mapper reads format = 1)")
        return value

    @model_validator(mode="after")
    def _examples_name_rules(self) -> RuleSet:
        names = [rule.name for rule in self.rules if rule.name]
        for example in self.examples:
            if example.rule is not None and example.rule not in names:
                raise ValueError(
                    f"example for {example.source!r} names rule {example.rule!r}, but no rule has that name"
                    + (closest(example.rule, names) if names else "; no rule has a name")
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


def parse_rules(text: str, *, file: str = "<string>", match_timeout: float | None = None) -> RuleSet:
    """Validate rule-file TOML given as a string; ``file`` names it in errors.

    ``match_timeout`` bounds every match of the file's patterns, in seconds (default: ``$MAPPER_MATCH_TIMEOUT``,
    else one second); a match that runs past it raises ``MatchTimeoutError``.

    Example:
        >>> parse_rules("format = 1\\n[policies]\\nunused_source = 'warn'\\n").policies.unused_source
        'warn'
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RuleFileError([toml_issue(file, error)]) from None
    except RecursionError:
        raise RuleFileError([nesting_issue(file)]) from None
    return validate_rules(data, file=file, match_timeout=match_timeout)


def validate_rules(data: Mapping[str, Any], *, file: str = "<string>", match_timeout: float | None = None) -> RuleSet:
    """Validate an already-parsed rule-file table; ``match_timeout`` as for :func:`parse_rules`.

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
        raise RuleFileError([pydantic_issue(file, data, item, _FIELDS) for item in error.errors()]) from None
    except RecursionError:
        raise RuleFileError([nesting_issue(file)]) from None
    rules._file = file
    timeout = None if match_timeout is None else bound_of(match_timeout)
    for entries in (rules.rules, rules.keep):
        for index, entry in enumerate(entries):
            place(entry, file, index + 1, timeout)
    return rules


# The valid keys of each table, by the key the table stands under, for "did you mean" hints.
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
    "export": tuple(ExportSection.model_fields),
    "tied": tuple(Tied.model_fields),
}


__all__ = [
    "LINT_CODES",
    "RULES_FORMAT",
    "Example",
    "Guard",
    "Keep",
    "Policies",
    "Rule",
    "RuleSet",
    "TargetSection",
    "check_silence",
    "parse_rules",
    "validate_rules",
]
