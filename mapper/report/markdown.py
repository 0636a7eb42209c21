"""The Markdown report: a verdict heading, counts and sections as tables, for pull-request comments."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from mapper.plan import Plan, Problem, SkipKind, TensorEntry
from mapper.report.assignments import assignment_blocks
from mapper.report.rows import (
    COUNT_LABELS,
    NameRow,
    clean,
    entry_rows,
    name_shapes,
    problem_rows,
    prose,
    rule_label,
    skip_blocks,
    summary,
    verdict,
)
from mapper.specs import format_shape
from mapper.text import human_bytes, plural

# Grouped rows a Markdown section shows before it folds into <details>, and at most.
_MD_FOLD_ROWS = 10
_MD_MAX_ROWS = 200

# Markup that could change how prose renders: always these; "_" only where it can start or end emphasis
# (not between two letters or digits); "(" only right after "]", where it would make a link.
_MD_SPECIAL = re.compile(r"[\\`*~<|]|(?<![^\W_])_|_(?![^\W_])|(?<=\])\(")
_QUOTED = re.compile(r"'([^'\s]+)'")


def _md_code(text: str) -> str:
    """A code span, safe inside a table cell."""
    text = clean(text).replace("|", "\\|")
    fence = "`"
    while fence in text:
        fence += "`"
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def _md_text(text: str) -> str:
    """Prose for a table cell: markup characters escaped, ``'quoted'`` names shown as code."""
    text = prose(text)
    pieces: list[str] = []
    position = 0
    for match in _QUOTED.finditer(text):
        pieces += [_md_escape(text[position : match.start()]), _md_code(match.group(1))]
        position = match.end()
    pieces.append(_md_escape(text[position:]))
    return "".join(pieces)


def _md_escape(text: str) -> str:
    return _MD_SPECIAL.sub(lambda match: "\\" + match.group(), text)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Iterable[int] = ()) -> list[str]:
    right = set(numeric)
    rule = ["---:" if index in right else "---" for index in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    shown = rows[:_MD_MAX_ROWS]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in shown]
    if len(rows) > len(shown):
        lines += ["", f"*{len(rows) - len(shown)} more rows not shown; the JSON report has every one.*"]
    return lines


def _md_section(title: str, count: str, table: list[str], *, fold: bool) -> list[str]:
    if fold:
        return ["", "<details>", f"<summary><b>{title}</b> ({count})</summary>", "", *table, "", "</details>"]
    return ["", f"#### {title} ({count})", "", *table]


def _md_count(count: int) -> str:
    return str(count) if count > 1 else ""


def _md_shapes(row: NameRow) -> str:
    return name_shapes(row, arrow="→", code=_md_code, text=_md_text)


def render_markdown(plan: Plan) -> str:
    """Render a plan for a pull-request comment: a verdict heading, a table of counts, then sections as tables.

    The sections are those of ``render_text``, grouped the same way. Sections longer than ten rows fold into
    ``<details>`` blocks (errors never fold) so the comment stays short; names are code spans and pipes are
    escaped. A section shows at most 200 rows and says how many more there are.

    Args:
        plan: The plan to describe.

    Returns:
        GitHub-flavoured Markdown, without a trailing newline.

    Example:
        >>> plan = Plan(("rules/empty.toml",), "old.ckpt", "model", "path")
        >>> print(render_markdown(plan))
        ### ✅ Plan OK: 0 mapped
        <BLANKLINE>
        - **rule files:** `rules/empty.toml`
        - **source:** `old.ckpt`
        - **target:** `model`
        - **namespace:** `path`
        <BLANKLINE>
        | mapped | transformed | skipped by rule | skipped by guard | kept by rule | unused sources | unfilled targets | errors | warnings |
        |---:|---:|---:|---:|---:|---:|---:|---:|---:|
        | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 |
    """
    counts = plan.counts()
    icon = "✅" if plan.ok else "❌"
    lines = [f"### {icon} Plan {verdict(plan)}: {_md_text(summary(plan))}", ""]
    files = ", ".join(_md_code(file) for file in plan.rule_files) or "(none)"
    if isinstance(plan.source, str):
        sources = [f"- **source:** {_md_code(prose(plan.source))}"]
    else:
        sources = ["- **sources:**"] + [
            f"  - {_md_code(named.id)}: {_md_code(prose(named.description)) if named.description else '?'}"
            for named in plan.source
        ]
    lines += [
        f"- **rule files:** {files}",
        *sources,
        f"- **target:** {_md_code(prose(plan.target))}",
        f"- **namespace:** {_md_code(plan.namespace)}",
        "",
    ]
    lines += _md_table(list(COUNT_LABELS.values()), [[str(counts[key]) for key in COUNT_LABELS]], range(9))
    lines += _md_problems("❌ Errors", plan.errors, fold=False)
    lines += _md_problems("⚠️ Warnings", plan.warnings, fold=True)
    lines += _md_assignments(plan)
    lines += _md_skips(plan, "Skipped", (SkipKind.RULE, SkipKind.GUARD))
    lines += _md_skips(plan, "Kept at initial value", (SkipKind.KEEP,))
    lines += _md_entries("Unused sources", plan.unused_sources)
    lines += _md_entries("Unfilled targets", plan.unfilled_targets)
    return "\n".join(lines)


def _md_problems(title: str, problems: Sequence[Problem], *, fold: bool) -> list[str]:
    if not problems:
        return []
    rows = problem_rows(problems, verbose=False)
    grouped = any(row.count > 1 for row in rows)
    cells = []
    for row in rows:
        message = _md_text(row.message)
        if row.names:
            message += "<br>names: " + ", ".join(_md_code(name) for name in row.names)
        rule = _md_code(rule_label(row.rule)) if row.rule else ""
        cells.append([*([_md_count(row.count)] if grouped else []), row.kind, message, rule])
    header = [*(["n"] if grouped else []), "kind", "message", "rule"]
    table = _md_table(header, cells, [0] if grouped else [])
    return _md_section(title, str(len(problems)), table, fold=fold and len(rows) > _MD_FOLD_ROWS)


def _md_assignments(plan: Plan) -> list[str]:
    if not plan.assignments:
        return []
    blocks = assignment_blocks(plan, verbose=False, arrow="→", times="\u00d7")
    grouped = any(row.count > 1 for _, rows in blocks for row in rows)
    cells = []
    for rule, rows in blocks:
        for index, row in enumerate(rows):
            cells.append(
                [
                    _md_code(rule_label(rule)) if index == 0 else "",
                    *([_md_count(row.count)] if grouped else []),
                    _md_code(row.target),
                    f"*{_md_text(row.source)}*" if row.same else _md_code(row.source),
                    ", ".join(_md_code(part) for part in row.operations),
                    row.shapes,
                ]
            )
    header = ["rule", *(["n"] if grouped else []), "target", "source", "operations", "shapes"]
    count = str(len(plan.assignments))
    if len(cells) != len(plan.assignments):
        count += f" in {plural(len(cells), 'row')}"
    if plan.source_bytes:
        count += f", {human_bytes(plan.source_bytes)} to read"
    table = _md_table(header, cells, [1] if grouped else [])
    return _md_section("Assignments", count, table, fold=len(cells) > _MD_FOLD_ROWS)


def _md_skips(plan: Plan, title: str, kinds: tuple[SkipKind, ...]) -> list[str]:
    blocks = skip_blocks(plan, kinds, verbose=False)
    if not blocks:
        return []
    with_kind = title == "Skipped"
    grouped = any(row.count > 1 for *_, rows in blocks for row in rows)
    cells = []
    for kind, rule, reason, rows in blocks:
        for index, row in enumerate(rows):
            first = index == 0
            cells.append(
                [
                    *([f"by {kind.value}" if first else ""] if with_kind else []),
                    _md_code(rule_label(rule)) if first else "",
                    _md_text(reason) if first else "",
                    *([_md_count(row.count)] if grouped else []),
                    _md_code(row.name),
                    _md_shapes(row),
                ]
            )
    header = [*(["skipped"] if with_kind else []), "rule", "reason", *(["n"] if grouped else []), "name", "shapes"]
    total = sum(row.count for *_, rows in blocks for row in rows)
    table = _md_table(header, cells, [header.index("n")] if grouped else [])
    return _md_section(title, str(total), table, fold=len(cells) > _MD_FOLD_ROWS)


def _md_entries(title: str, entries: Sequence[TensorEntry]) -> list[str]:
    if not entries:
        return []
    rows = entry_rows(entries, verbose=False)
    grouped = any(row.count > 1 for row in rows)
    cells = [
        [*([_md_count(row.count)] if grouped else []), _md_code(row.name), format_shape(row.source_shape), row.dtype]
        for row in rows
    ]
    header = [*(["n"] if grouped else []), "name", "shape", "dtype"]
    table = _md_table(header, cells, [0] if grouped else [])
    return _md_section(title, str(len(entries)), table, fold=len(cells) > _MD_FOLD_ROWS)


__all__ = ["render_markdown"]
