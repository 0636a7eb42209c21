"""Name templates: parsing ``{group}``/``{group + N}`` fields, resolving parameters, rendering for a match."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import methodcaller
from typing import Any

from mapper.rules.common import ParamValue


@dataclass(frozen=True)
class Piece:
    """A template piece: literal text, or a group reference with an integer offset.

    Example:
        >>> parse_template("layer_{i + 1}/kernel")[1]
        Piece(text='', group='i', offset=1)
    """

    text: str = ""
    group: str | int | None = None
    offset: int = 0


class TemplateError(ValueError):
    """A template cannot be rendered for one particular match (arithmetic on a non-number)."""


_FIELD_RE = re.compile(r"\{\s*(?P<group>[A-Za-z_]\w*|\d+)\s*(?:(?P<sign>[+-])\s*(?P<offset>\d+)\s*)?\}")


def parse_template(template: str) -> tuple[Piece, ...]:
    """Split a template into literal text and group fields; raises ValueError for a malformed field.

    Example:
        >>> [piece.text or piece.group for piece in parse_template("{{{0}}}/{i}")]
        ['{', 0, '}/', 'i']
    """
    pieces: list[Piece] = []
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
                pieces.append(Piece(text=literal))
                literal = ""
            group: str | int = found["group"]
            if isinstance(group, str) and group.isdigit():
                group = int(group)
            offset = int(found["offset"] or 0) * (-1 if found["sign"] == "-" else 1)
            pieces.append(Piece(group=group, offset=offset))
            position = found.end()
        elif char == "}":
            raise ValueError(f"unmatched '}}' at position {position} (write '}}}}' for a literal brace)")
        else:
            literal += char
            position += 1
    if literal:
        pieces.append(Piece(text=literal))
    return tuple(pieces)


def compile_template(template: str, pattern: Any, params: Mapping[str, ParamValue]) -> tuple[Piece, ...]:
    """Parse a template and resolve its fields: pattern groups stay fields, parameters become literal text.

    Example:
        >>> import regex
        >>> compile_template("l{i}/{n + 1}", regex.compile("(?P<i>[0-9]+)"), {"n": 2})[2:]
        (Piece(text='/', group=None, offset=0), Piece(text='3', group=None, offset=0))
    """
    groups = set(pattern.groupindex)
    pieces: list[Piece] = []
    for piece in parse_template(template):
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
            pieces.append(Piece(text=str(value)))
            continue
        pieces.append(piece)
    return tuple(pieces)


# Inside a group, what a literal alternation may hold: word characters, '-', '/', and escaped punctuation.
_LITERAL_WORDS = re.compile(r"(?:[\w/-]|\\[^\w\s])+(?:\|(?:[\w/-]|\\[^\w\s])+)*")


def literal_alternatives(pattern: str, group: str) -> tuple[str, ...]:
    """The words named group ``group`` can capture, when it is a literal alternation such as ``(?P<p>weight|bias)``.

    Anything else (a character class, a repetition, a nested group) gives ``()``: the group can capture words
    no one can list.

    Example:
        >>> literal_alternatives(r"(?P<i>\\d+)/(?P<p>weight|bias|running\\.mean)", "p"), literal_alternatives(r"(?P<i>\\d+)", "i")
        (('weight', 'bias', 'running.mean'), ())
    """
    opening = f"(?P<{group}>"
    start = pattern.find(opening)
    if start < 0:
        return ()
    body = pattern[start + len(opening) :]
    found = _LITERAL_WORDS.match(body)
    if found is None or not body[found.end() :].startswith(")"):
        return ()
    return tuple(re.sub(r"\\(.)", r"\1", word) for word in found.group().split("|"))


def renderer(
    pieces: tuple[Piece, ...],
    values: Mapping[str, Mapping[str, str]],
    template: str,
    groupindex: Mapping[str, int] | None = None,
    group_count: int | None = None,
) -> Callable[[Any], str]:
    """A function rendering ``template`` (parsed into ``pieces``) for one match; it raises TemplateError.

    ``groupindex`` (the pattern's) lets the function ask the match for groups by number, which is faster;
    ``group_count`` (the pattern's number of groups) lets it take them all at once when the template uses each
    group once, in order.

    Example:
        >>> import regex
        >>> render = renderer(parse_template("{p}_{i + 1}"), {"p": {"weight": "gamma"}}, "{p}_{i + 1}")
        >>> render(regex.fullmatch("(?P<p>[a-z]+)[.](?P<i>[0-9]+)", "weight.0"))
        'gamma_1'
    """

    def render_slowly(matched: Any) -> str:
        return "".join(
            piece.text if piece.group is None else _value(piece, matched, values, template) for piece in pieces
        )

    groups = tuple(piece.group for piece in pieces if piece.group is not None)
    if not groups or any(isinstance(group, str) and group in values for group in groups):
        return render_slowly
    if groupindex is not None:
        groups = tuple(groupindex.get(group, group) if isinstance(group, str) else group for group in groups)
    every = group_count is not None and groups == tuple(range(1, group_count + 1))
    return _fast_renderer(pieces, groups, every, render_slowly)


def _value(piece: Piece, matched: Any, values: Mapping[str, Mapping[str, str]], template: str) -> str:
    """What a group field renders to for one match: renamed by its value table, offset; raises TemplateError."""
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
    return value or ""


def _fast_renderer(
    pieces: tuple[Piece, ...], groups: tuple[str | int, ...], every: bool, render_slowly: Callable[[Any], str]
) -> Callable[[Any], str]:
    """The renderer of a template without value tables: one call for the groups and one ``%`` per match.

    Planning renders once per matched name, so this is on the hot path. ``every``: the groups are all the
    pattern's, in order, which ``groups()`` gives in one call. Whatever it does not expect (a group that did not
    take part, arithmetic on a non-number, a negative result) goes to ``render_slowly``, which gives the same name or
    raises the same error as always.
    """
    layout = "".join("%s" if piece.group is not None else piece.text.replace("%", "%%") for piece in pieces)
    counted = tuple(
        (position, piece.offset)
        for position, piece in enumerate(p for p in pieces if p.group is not None)
        if piece.offset
    )
    take = _taker(groups, every)

    def render(matched: Any) -> str:
        found = take(matched)
        if None in found:
            return render_slowly(matched)
        return layout % found

    # What each counted group's value becomes, worked out once per value: names of one model repeat their indices.
    shifts: tuple[tuple[int, int, dict[str, int]], ...] = tuple((position, offset, {}) for position, offset in counted)

    def render_counted(matched: Any) -> str:
        found = take(matched)
        if None in found:
            return render_slowly(matched)
        shown = list(found)
        for position, offset, known in shifts:
            value = shown[position]
            shifted = known.get(value)
            if shifted is None:
                if not value.isdigit() or int(value) + offset < 0:
                    return render_slowly(matched)
                shifted = known[value] = int(value) + offset
            shown[position] = shifted  # '%s' writes it as str(shifted)
        return layout % tuple(shown)

    return render_counted if counted else render


def _taker(groups: tuple[str | int, ...], every: bool) -> Callable[[Any], tuple[Any, ...]]:
    """A function from a match to the values of ``groups`` as a tuple (``every``: they are all the groups, in order)."""
    if every:
        return methodcaller("groups")
    if len(groups) > 1:
        return methodcaller("group", *groups)
    (group,) = groups

    def take_one(matched: Any) -> tuple[Any, ...]:
        return (matched.group(group),)

    return take_one


__all__ = ["Piece", "TemplateError", "compile_template", "literal_alternatives", "parse_template", "renderer"]
