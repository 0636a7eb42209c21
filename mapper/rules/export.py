"""The ``[export]`` table of a rule file: what writing a model back to the source's names may do beyond inverting rules."""

from __future__ import annotations

from typing import Any, Literal

import regex
from pydantic import Field, PrivateAttr, field_validator, model_validator

from mapper.rules.common import NOT_BLANK, Frozen, not_blank
from mapper.rules.templates import Piece, compile_template, renderer


def _compiled(value: str) -> str:
    """``value`` if it compiles as a regular expression; raises ValueError saying why not."""
    try:
        regex.compile(value)
    except regex.error as error:
        raise ValueError(f"invalid regular expression: {error}") from None
    return value


class Tied(Frozen):
    """One ``[[export.tied]]`` entry: source tensors the import skips that an export writes again from another one.

    Tied weights are the case: ``lm_head.weight`` holds the token embeddings, the import skips it, and an export
    writes the exported ``model.embed_tokens.weight`` under that name too.

    Example:
        >>> tied = Tied(match=r"lm_head\\.weight", same_as="model.embed_tokens.weight", reason="tied embeddings")
        >>> tied.source_of("lm_head.weight")
        'model.embed_tokens.weight'
    """

    match: str = Field(description="A regular expression over source names (as the reference lists them) to write.")
    same_as: str = Field(
        description="Template of the exported source name whose value it gets: '{group}' as in a rule's target."
    )
    reason: str = Field(
        "tied weights", json_schema_extra=NOT_BLANK, description="Why the tensor is a copy; reports show it."
    )

    _pattern: Any = PrivateAttr(None)
    _pieces: tuple[Piece, ...] = PrivateAttr(())

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _compiled(value)

    @field_validator("reason")
    @classmethod
    def _says_why(cls, value: str) -> str:
        return not_blank(value, "reason", 'reason = "tied to the token embeddings"') or value

    @model_validator(mode="after")
    def _template_fits(self) -> Tied:
        self._pattern = regex.compile(self.match)
        self._pieces = compile_template(self.same_as, self._pattern, {})
        return self

    def source_of(self, name: str) -> str | None:
        """The exported name ``name`` is a copy of, if ``match`` matches all of it; else None."""
        matched = self._pattern.fullmatch(name)
        if matched is None:
            return None
        return renderer(self._pieces, {}, self.same_as, self._pattern.groupindex)(matched)


class Restore(Frozen):
    """One ``[[export.restore]]`` entry: source tensors an import drops (in part or whole), written back from ``--like``.

    RoBERTa's position table is the case: the import slices off the rows before ``padding_idx`` (``slice = "2:"``),
    so the model does not hold them; an export writes the model's rows after those of the ``--like`` checkpoint.
    Only a slice that keeps one block of each leading axis (step 1) is restored this way, and only when nothing but
    casts comes before it in the rule's operations. A tensor the import skips (RoBERTa's token type table) is
    copied whole from ``--like``.

    Example:
        >>> restore = Restore(match=r"(?:roberta\\.)?embeddings\\.position_embeddings\\.weight", reason="padding rows")
        >>> restore.matches("roberta.embeddings.position_embeddings.weight"), restore.matches("embeddings.x")
        (True, False)
    """

    match: str = Field(
        description="A regular expression over source names (as the reference lists them, matching all of the "
        "name) whose dropped values an export takes from the --like checkpoint (all of them, for a skipped tensor)."
    )
    reason: str = Field(
        json_schema_extra=NOT_BLANK,
        description="Why the import drops those values and --like holds them; reports show it.",
    )

    _pattern: Any = PrivateAttr(None)

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _compiled(value)

    @field_validator("reason")
    @classmethod
    def _says_why(cls, value: str) -> str:
        return (
            not_blank(value, "reason", 'reason = "positions before padding_idx: the model has no rows for them"')
            or value
        )

    @model_validator(mode="after")
    def _pattern_compiled(self) -> Restore:
        self._pattern = regex.compile(self.match)
        return self

    def matches(self, name: str) -> bool:
        """Whether ``match`` matches all of source name ``name``."""
        return self._pattern.fullmatch(name) is not None


class ExportSection(Frozen):
    """The ``[export]`` table: how ``mapper export`` may differ from the exact inverse of the rules.

    Example:
        >>> ExportSection().lossy_casts
        'error'
    """

    lossy_casts: Literal["error", "allow"] = Field(
        "error",
        description="'allow': an export may cast back to a narrower dtype than the model's (float32 -> bfloat16 "
        "for a bfloat16 checkpoint imported as float32), which rounds values the model changed.",
    )
    tied: tuple[Tied, ...] = Field(
        (), strict=False, description="Skipped source tensors an export writes again as a copy of an exported one."
    )
    restore: tuple[Restore, ...] = Field(
        (),
        strict=False,
        description="Source tensors whose import drops part of them (a slice of leading rows) or all of them (a "
        "skip): an export writes that part back from the --like checkpoint, around the model's values, or copies "
        "the skipped tensor whole.",
    )

    def restore_for(self, name: str) -> Restore | None:
        """The first ``[[export.restore]]`` entry matching source name ``name``, if any.

        Example:
            >>> section = ExportSection(restore=(Restore(match="pos", reason="padding rows"),))
            >>> section.restore_for("pos").reason, section.restore_for("posx")
            ('padding rows', None)
        """
        return next((entry for entry in self.restore if entry.matches(name)), None)


__all__ = ["ExportSection", "Restore", "Tied"]
