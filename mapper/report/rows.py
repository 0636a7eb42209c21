"""What the reports show, computed once for text and Markdown: counts, rule labels, and rows of names, skips and problems."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from mapper.naming import escape, group_names, group_pairs
from mapper.plan import Plan, Problem, ProblemKind, RuleRef, Skip, SkipKind, TensorEntry
from mapper.specs import format_shape
from mapper.text import natural_key, plural

COUNT_LABELS = {
    "mapped": "mapped",
    "transformed": "transformed",
    "skipped_by_rule": "skipped by rule",
    "skipped_by_guard": "skipped by guard",
    "kept_by_rule": "kept by rule",
    "unused": "unused sources",
    "unfilled": "unfilled targets",
    "errors": "errors",
    "warnings": "warnings",
}
# The text report's count grid: what happens, what is left on purpose, what is wrong.
COUNT_COLUMNS = (
    ("mapped", "transformed"),
    ("skipped_by_rule", "skipped_by_guard", "kept_by_rule"),
    ("unused", "unfilled", "errors", "warnings"),
)


def verdict(plan: Plan) -> str:
    """``OK`` or ``FAILED with 3 errors``."""
    return "OK" if plan.ok else f"FAILED with {plural(len(plan.errors), 'error')}"


def summary(plan: Plan) -> str:
    """The verdict line's tail: the counts that are not zero, mapped always."""
    return ", ".join(summary_parts(plan))


def summary_parts(plan: Plan) -> list[str]:
    """The verdict line's counts, each as its own part, so a layout can break between them."""
    counts = plan.counts()
    parts = [
        f"{counts['mapped']} mapped" + (f" ({counts['transformed']} transformed)" if counts["transformed"] else "")
    ]
    skipped = counts["skipped_by_rule"] + counts["skipped_by_guard"]
    parts += [f"{skipped} skipped"] if skipped else []
    parts += [f"{counts['kept_by_rule']} kept"] if counts["kept_by_rule"] else []
    parts += [plural(counts["unused"], "unused source")] if counts["unused"] else []
    parts += [plural(counts["unfilled"], "unfilled target")] if counts["unfilled"] else []
    parts += [plural(counts["warnings"], "warning")] if counts["warnings"] else []
    return parts


def rule_label(rule: RuleRef) -> str:
    """``rules/bert.toml#3 'head'``; keep rules count separately: ``rules/bert.toml#keep.1``."""
    where = f"{rule.file}#{rule.index}" if rule.section == "rules" else f"{rule.file}#keep.{rule.index}"
    return where + (f" {rule.name!r}" if rule.name else "")


def rule_order(plan: Plan) -> Callable[[RuleRef | None], tuple[int, str, int, int]]:
    """A sort key for rules: by the plan's rule files, rules before keeps, then by index; no rule last."""
    files = {file: position for position, file in enumerate(plan.rule_files)}

    def key(rule: RuleRef | None) -> tuple[int, str, int, int]:
        if rule is None:
            return (len(files) + 1, "", 0, 0)
        return (files.get(rule.file, len(files)), rule.file, 0 if rule.section == "rules" else 1, rule.index)

    return key


@dataclass(frozen=True, slots=True)
class NameRow:
    """One line of a section of names (skips, unused sources, unfilled targets): ``count`` names and their shapes."""

    count: int
    name: str
    other: str | None  # a guard skip's target when its name differs
    source_shape: tuple[int, ...] | None
    target_shape: tuple[int, ...] | None
    dtype: str = ""
    detail: str | None = None  # what a guard found, when it adds to the shapes
    source_id: str | None = None  # plans over several named sources: the source ``name`` belongs to


@dataclass(frozen=True, slots=True)
class ProblemRow:
    """One line of the Errors or Warnings section: ``count`` problems alike but for their names."""

    count: int
    kind: str
    message: str
    rule: RuleRef | None
    names: tuple[str, ...]  # grouped names the message does not already show


def name_shapes(row: NameRow, *, arrow: str, code: Callable[[str], str], text: Callable[[str], str]) -> str:
    """A name row's shapes column: ``[10] -> head/w [5]``, the dtype, and what a guard found.

    ``code`` formats a name and ``text`` the guard's finding, as the report's format needs; ``arrow`` is "becomes".
    """
    parts = []
    if row.source_shape is not None:
        parts.append(format_shape(row.source_shape))
    if row.target_shape is not None:
        target = f"{code(row.other)} " if row.other else ("target " if parts else "")
        parts.append(f"{target}{format_shape(row.target_shape)}")
    elif row.other:
        parts.append(code(row.other))
    shown = f" {arrow} ".join(parts) + (f" {row.dtype}" if row.dtype else "")
    return f"{shown}: {text(row.detail)}" if row.detail else shown


def source_prefix(source_id: str | None) -> str:
    """``backbone:`` before a name (or pattern) of a named source; nothing for single-source plans."""
    return "" if source_id is None else escape(source_id) + ":"


def name_rows(items: Sequence[NameRow], *, verbose: bool) -> list[NameRow]:
    """Group single-name rows (``other`` set to the name when there is no other) by everything but the names."""
    if verbose:
        rows = [
            replace(
                item,
                name=("" if item.source_id is None else item.source_id + ":") + item.name,
                other=None if item.other == item.name else item.other,
            )
            for item in items
        ]
        return sorted(rows, key=lambda row: natural_key(row.name))
    buckets: dict[tuple[object, ...], list[NameRow]] = {}
    for item in items:
        key = (item.source_id, item.source_shape, item.target_shape, item.dtype, item.detail)
        buckets.setdefault(key, []).append(item)
    keyed: list[tuple[tuple[tuple[int, str], ...], NameRow]] = []
    for members in buckets.values():
        prefix = source_prefix(members[0].source_id)
        for group in group_pairs((member.name, member.other or member.name) for member in members):
            other = None if group.right == group.left else group.right
            row = replace(members[0], count=group.count, name=prefix + group.left, other=other)
            keyed.append((natural_key(row.name), row))
    return [row for _, row in sorted(keyed, key=lambda item: item[0])]


_SHAPE_TEXT = re.compile(r"\[[0-9, ]*\]")


def _guard_detail(skip: Skip, *, verbose: bool) -> str | None:
    """What a guard found, unless the reason or the shapes shown beside it already say it."""
    detail = skip.detail
    if not detail or detail in skip.reason:
        return None
    if not verbose:
        shown = {format_shape(shape) for shape in (skip.source_shape, skip.target_shape) if shape is not None}
        if all(shape in shown for shape in _SHAPE_TEXT.findall(detail)) and not re.search(
            "[0-9]", _SHAPE_TEXT.sub("", detail)
        ):
            return None
    return detail


def skip_blocks(
    plan: Plan, kinds: Iterable[SkipKind], *, verbose: bool
) -> list[tuple[SkipKind, RuleRef, str, list[NameRow]]]:
    """Skips of ``kinds`` grouped by kind, rule and reason, in rule order."""
    wanted = set(kinds)
    order = rule_order(plan)
    blocks: dict[tuple[SkipKind, RuleRef, str], list[Skip]] = {}
    for skip in plan.skips:
        if skip.kind in wanted:
            blocks.setdefault((skip.kind, skip.rule, skip.reason), []).append(skip)
    result: list[tuple[SkipKind, RuleRef, str, list[NameRow]]] = []
    for kind, rule, reason in sorted(blocks, key=lambda key: (order(key[1]), key[0].value, key[2])):
        items = [
            NameRow(
                1,
                skip.name,
                skip.target or skip.name,
                skip.source_shape,
                skip.target_shape,
                detail=_guard_detail(skip, verbose=verbose),
                source_id=skip.source_id,
            )
            for skip in blocks[kind, rule, reason]
        ]
        result.append((kind, rule, reason, name_rows(items, verbose=verbose)))
    return result


def entry_rows(entries: Sequence[TensorEntry], *, verbose: bool) -> list[NameRow]:
    """Unused sources or unfilled targets as name rows, grouped unless ``verbose``."""
    items = [
        NameRow(1, entry.name, entry.name, entry.shape, None, entry.dtype, source_id=entry.source_id)
        for entry in entries
    ]
    return name_rows(items, verbose=verbose)


def _problem_template(problem: Problem) -> str | None:
    """The message with its one or two quoted names replaced by markers, or None when that is not clean."""
    message = problem.message
    if not 1 <= len(problem.names) <= 2 or "\x00" in message or "\x01" in message:
        return None
    for index, name in sorted(enumerate(problem.names), key=lambda item: -len(item[1])):
        quoted = repr(name)
        if not quoted.startswith("'") or quoted not in message:
            if index == 1 and name == problem.names[0]:
                continue  # the same name twice: the first marker covers it
            return None
        message = message.replace(quoted, chr(index))
    return message


def problem_rows(problems: Sequence[Problem], *, verbose: bool) -> list[ProblemRow]:
    """One row per problem, except that messages alike but for their names share a row with patterns."""

    def row(problem: Problem, count: int, message: str, names: Sequence[str]) -> ProblemRow:
        # Unused sources and unfilled targets have sections of their own; other names show unless quoted.
        listed = problem.kind in (ProblemKind.UNUSED_SOURCE, ProblemKind.UNFILLED_TARGET)
        hidden = [] if listed else [name for name in names if name not in message]
        kind = problem.kind.value.replace("_", " ") + (f" {problem.code}" if problem.code else "")
        return ProblemRow(count, kind, message, problem.rule, tuple(group_names(hidden)))

    if verbose:
        return [row(problem, 1, problem.message, problem.names) for problem in problems]
    alike: dict[tuple[object, ...], list[Problem]] = {}
    for position, problem in enumerate(problems):
        template = _problem_template(problem)
        key: tuple[object, ...] = (
            (position,) if template is None else (problem.kind, problem.code, problem.severity, problem.rule, template)
        )
        alike.setdefault(key, []).append(problem)
    rows: list[ProblemRow] = []
    for key, members in alike.items():
        if len(members) == 1:
            rows.append(row(members[0], 1, members[0].message, members[0].names))
            continue
        template = str(key[-1])
        pairs = Counter((member.names[0], member.names[-1]) for member in members)
        for group in group_pairs(pairs):
            message = template.replace("\x00", f"'{group.left}'").replace("\x01", f"'{group.right}'")
            rows.append(row(members[0], sum(pairs[pair] for pair in group.pairs()), message, ()))
    return rows


def same_name(count: int) -> str:
    """What a report shows for a source named like its target."""
    return "same name" if count == 1 else "same names"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """Make control characters (escape codes, newlines) visible, so names cannot disturb the layout."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def prose(text: str) -> str:
    """A message on one logical line: whitespace runs become one space, other control characters are shown."""
    return clean(" ".join(text.split()))


__all__ = [
    "COUNT_COLUMNS",
    "COUNT_LABELS",
    "NameRow",
    "ProblemRow",
    "clean",
    "entry_rows",
    "name_rows",
    "name_shapes",
    "problem_rows",
    "prose",
    "rule_label",
    "rule_order",
    "same_name",
    "skip_blocks",
    "source_prefix",
    "summary",
    "summary_parts",
    "verdict",
]
