"""The text report: compact, aligned, optionally coloured, for terminals."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence

from mapper.plan import Plan, Problem, RuleRef, SkipKind, TensorEntry
from mapper.report.assignments import AssignmentRow, assignment_blocks
from mapper.report.rows import (
    COUNT_COLUMNS,
    COUNT_LABELS,
    NameRow,
    clean,
    entry_rows,
    name_shapes,
    problem_rows,
    prose,
    rule_label,
    skip_blocks,
    summary_parts,
    verdict,
)
from mapper.text import human_bytes, plural

# Narrowest text report we lay out; narrower requests are widened to this.
MIN_WIDTH = 60

_STYLES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "error": "1;31",
    "warning": "1;33",
    "ok": "1;32",
}
_Piece = tuple[str, str]  # (plain text, style name or "")


class _TextReport:
    """Builds the text report's lines; styles are applied after layout, so widths count plain text."""

    def __init__(self, plan: Plan, *, color: bool, width: int, verbose: bool) -> None:
        self.plan = plan
        self.color = color
        self.width = max(width, MIN_WIDTH)
        self.verbose = verbose
        self.lines: list[str] = []

    def emit(self, *pieces: _Piece) -> None:
        text = "".join(
            f"\x1b[{_STYLES[style]}m{plain}\x1b[0m" if self.color and style and plain.strip() else plain
            for plain, style in pieces
        )
        self.lines.append(text.rstrip())

    def wrap(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(text, max(width, 10), break_long_words=False, break_on_hyphens=False) or [""]

    def render(self) -> str:
        self.header()
        self.counts()
        plan = self.plan
        self.problems("Errors", plan.errors, "error")
        self.problems("Warnings", plan.warnings, "warning")
        self.assignments()
        skipped = skip_blocks(plan, (SkipKind.RULE, SkipKind.GUARD), verbose=self.verbose)
        self.skips("Skipped", skipped, with_kind=True)
        kept = skip_blocks(plan, (SkipKind.KEEP,), verbose=self.verbose)
        self.skips("Kept at initial value", kept, with_kind=False)
        self.entries("Unused sources", plan.unused_sources)
        self.entries("Unfilled targets", plan.unfilled_targets)
        return "\n".join(self.lines)

    def header(self) -> None:
        plan = self.plan
        style = "ok" if plan.ok else "error"
        shown = verdict(plan)
        # Wrapped only between counts, so "1 warning" stays whole.
        lines = [f"Plan {shown}:"]
        for part in summary_parts(plan):
            if len(lines[-1]) + 2 + len(part) > self.width and not lines[-1].endswith(":"):
                lines[-1] += ","
                lines.append("   ")
            lines[-1] += (" " if lines[-1].endswith((":", "   ")) else ", ") + part
        self.emit(("Plan ", "bold"), (shown, style), (lines[0][len(shown) + 5 :], ""))
        for line in lines[1:]:
            self.emit((line, ""))
        label_width = len("rule files")
        room = self.width - label_width - 4
        fields = [
            ("rule files", [line for file in plan.rule_files or ["(none)"] for line in self.wrap(clean(file), room)]),
            self.sources(room),
            ("target", self.wrap(prose(plan.target), room)),
            ("namespace", self.wrap(clean(plan.namespace), room)),
        ]
        for label, lines in fields:
            for index, line in enumerate(lines):
                self.emit(("  " + (label if index == 0 else "").ljust(label_width) + "  ", "dim"), (line, ""))

    def sources(self, room: int) -> tuple[str, list[str]]:
        """The header's source field: the source, or one line per named source (its id, then its description)."""
        source = self.plan.source
        if isinstance(source, str):
            return "source", self.wrap(prose(source), room)
        id_width = max((len(clean(named.id)) for named in source), default=0)
        lines = []
        for named in source:
            wrapped = self.wrap(prose(named.description), room - id_width - 2)
            lines.append(f"{clean(named.id).ljust(id_width)}  {wrapped[0]}".rstrip())
            lines += [" " * (id_width + 2) + line for line in wrapped[1:]]
        return "sources", lines

    def counts(self) -> None:
        counts = self.plan.counts()
        columns = []
        for keys in COUNT_COLUMNS:
            label_width = max(len(COUNT_LABELS[key]) for key in keys)
            number_width = max(len(str(counts[key])) for key in keys)
            columns.append([(key, label_width, number_width) for key in keys])
        grid_width = 2 + sum(column[0][1] + 2 + column[0][2] for column in columns) + 4 * (len(columns) - 1)
        if grid_width > self.width:
            cells = [cell for column in columns for cell in column]
            label_width, number_width = max(cell[1] for cell in cells), max(cell[2] for cell in cells)
            columns = [[(key, label_width, number_width) for key, _, _ in cells]]
        self.emit()
        for line in range(max(len(column) for column in columns)):
            pieces: list[_Piece] = [("  ", "")]
            for position, column in enumerate(columns):
                gap = ("    ", "") if position else ("", "")
                if line >= len(column):
                    label_width, number_width = column[0][1], column[0][2]
                    pieces += [gap, (" " * (label_width + 2 + number_width), "")]
                    continue
                key, label_width, number_width = column[line]
                value = counts[key]
                pieces += [gap, (COUNT_LABELS[key].ljust(label_width) + "  ", "dim" if not value else "")]
                pieces.append((str(value).rjust(number_width), self.count_style(key, value)))
            self.emit(*pieces)

    @staticmethod
    def count_style(key: str, value: int) -> str:
        if not value:
            return "dim"
        if key == "errors":
            return "error"
        if key in ("warnings", "skipped_by_rule", "skipped_by_guard", "kept_by_rule", "unused", "unfilled"):
            return "yellow"
        return "bold"

    def title(self, text: str, count: str, style: str) -> None:
        self.emit()
        self.emit((text, style), (f" ({count})", ""))

    def count_width(self, counts: Iterable[int]) -> int:
        """Width of the count column: 0 (no column) when nothing was grouped."""
        widest = max(counts, default=1)
        return len(str(widest)) + 2 if widest > 1 else 0

    @staticmethod
    def count_cell(count: int, width: int) -> str:
        return (str(count) if count > 1 else "").rjust(width - 2) + "  " if width else ""

    def problems(self, title: str, problems: Sequence[Problem], style: str) -> None:
        if not problems:
            return
        rows = problem_rows(problems, verbose=self.verbose)
        self.title(title, str(len(problems)), style)
        count_width = self.count_width(row.count for row in rows)
        kind_width = max(len(row.kind) for row in rows)
        indent = 2 + count_width + kind_width + 2
        for row in rows:
            lines = self.wrap(prose(row.message), self.width - indent)
            # The rule, unless the message already names it.
            label = f"({clean(rule_label(row.rule))})" if row.rule and str(row.rule) not in row.message else ""
            head = "  " + self.count_cell(row.count, count_width)
            for index, line in enumerate(lines):
                first = (head + row.kind.ljust(kind_width) + "  ", style) if index == 0 else (" " * indent, "")
                tail: list[_Piece] = []
                if label and index == len(lines) - 1 and indent + len(line) + 2 + len(label) <= self.width:
                    tail = [("  ", ""), (label, "dim")]
                    label = ""
                self.emit(first, (line, ""), *tail)
            if label:
                self.emit((" " * indent, ""), (label, "dim"))
            if row.names:
                names = self.fit_names(row.names, self.width - indent - len("names: "))
                self.emit((" " * indent, ""), ("names: " + names, "dim"))

    @staticmethod
    def fit_names(patterns: Sequence[str], width: int) -> str:
        shown: list[str] = []
        for index, pattern in enumerate(patterns):
            rest = len(patterns) - index - 1
            more = f", +{rest} more" if rest else ""
            if shown and len(", ".join([*shown, clean(pattern)]) + more) > width:
                return ", ".join(shown) + f", +{len(patterns) - index} more"
            shown.append(clean(pattern))
        return ", ".join(shown)

    def assignments(self) -> None:
        plan = self.plan
        if not plan.assignments:
            return
        blocks = assignment_blocks(plan, verbose=self.verbose, arrow="->")
        lines = sum(len(rows) for _, rows in blocks)
        count = f"{len(plan.assignments)}"
        if not self.verbose and lines != len(plan.assignments):
            count += f" in {plural(lines, 'line')}"
        if plan.source_bytes:
            count += f", {human_bytes(plan.source_bytes)} to read"
        self.title("Assignments", count, "bold")
        count_width = self.count_width(row.count for _, rows in blocks for row in rows)
        for rule, rows in blocks:
            self.emit(("  " + clean(rule_label(rule)), "bold"))
            self.assignment_rows(rows, count_width)

    def assignment_rows(self, rows: Sequence[AssignmentRow], count_width: int) -> None:
        """One rule's rows: aligned in columns where the widest fits, otherwise each stacked under its target."""
        indent = 4 + count_width
        targets = [clean(row.target) for row in rows]
        sources = [clean(row.source) for row in rows]
        details = ["  ".join(part for part in (" ".join(row.operations), row.shapes) if part) for row in rows]
        target_width = max(len(target) for target in targets)
        source_width = max(len(source) for source in sources)
        detail_width = max(len(detail) for detail in details)
        flat = indent + target_width + 6 + source_width + (2 + detail_width if detail_width else 0)
        for row, target, source, detail in zip(rows, targets, sources, details, strict=True):
            head = ("    " + self.count_cell(row.count, count_width), "")
            source_style = "dim" if row.same else ""
            if flat > self.width:
                self.stacked_row(row, (head, target, source, detail), indent)
                continue
            pad = " " * (source_width - len(source) + 2) if detail else ""
            self.emit(
                head,
                (target.ljust(target_width), ""),
                ("  <-  ", "dim"),
                (source, source_style),
                (pad, ""),
                (detail, "dim"),
            )

    def stacked_row(self, row: AssignmentRow, cells: tuple[_Piece, str, str, str], indent: int) -> None:
        """A row whose source and details hang under its target, indented past it."""
        head, target, source, detail = cells
        source_style = "dim" if row.same else ""
        room = self.width - indent - 6
        if source_style and indent + len(target) + 6 + len(source) <= self.width:
            self.emit(head, (target, ""), ("  <-  ", "dim"), (source, source_style))
        else:
            # A long source (a group's members, a combine) wraps at its spaces, under itself.
            self.emit(head, (target, ""))
            first, *rest = self.wrap(source, room)
            self.emit((" " * (indent + 2), ""), ("<-  ", "dim"), (first, source_style))
            for line in rest:
                self.emit((" " * (indent + 6), ""), (line, source_style))
        parts = [detail] if len(detail) <= room else [*self.pack(row.operations, room), *self.wrap(row.shapes, room)]
        for part in parts:
            if part:
                self.emit((" " * (indent + 6), ""), (part, "dim"))

    def pack(self, operations: Sequence[str], width: int) -> list[str]:
        """Operations on as few lines as fit, broken between operations (and inside one only when it alone is too long)."""
        lines: list[str] = []
        for operation in operations:
            if lines and len(lines[-1]) + 1 + len(operation) <= width:
                lines[-1] += " " + operation
            else:
                lines += self.wrap(operation, width)
        return lines

    def skips(
        self, title: str, blocks: Sequence[tuple[SkipKind, RuleRef, str, list[NameRow]]], *, with_kind: bool
    ) -> None:
        if not blocks:
            return
        total = sum(row.count for *_, rows in blocks for row in rows)
        self.title(title, str(total), "warning" if with_kind else "bold")
        count_width = self.count_width(row.count for *_, rows in blocks for row in rows)
        for kind, rule, reason, rows in blocks:
            label = clean(rule_label(rule))
            heading = f"by {kind.value} ({label})" if with_kind else label
            lines = textwrap.wrap(
                f"{heading}: {prose(reason)}",
                self.width,
                initial_indent="  ",
                subsequent_indent="      ",
                break_long_words=False,
                break_on_hyphens=False,
            )
            cut = min(len(heading) + 2, len(lines[0]))
            self.emit((lines[0][:cut], "yellow" if with_kind else "bold"), (lines[0][cut:], ""))
            for line in lines[1:]:
                self.emit((line, ""))
            self.name_table(rows, 4, count_width)

    def entries(self, title: str, entries: Sequence[TensorEntry]) -> None:
        if not entries:
            return
        rows = entry_rows(entries, verbose=self.verbose)
        self.title(title, str(len(entries)), "warning")
        self.name_table(rows, 2, self.count_width(row.count for row in rows))

    def name_table(self, rows: Sequence[NameRow], indent: int, count_width: int) -> None:
        """Names with their shapes; the shape column aligns wherever it fits, else it moves below."""
        names = [clean(row.name) for row in rows]
        details = [self.shapes(row) for row in rows]
        start = indent + count_width
        fitting = [
            len(name)
            for name, detail in zip(names, details, strict=True)
            if start + len(name) + 2 + len(detail) <= self.width
        ]
        column = 0
        for candidate in sorted(set(fitting)):
            if all(
                start + candidate + 2 + len(detail) <= self.width
                for name, detail in zip(names, details, strict=True)
                if len(name) <= candidate
            ):
                column = candidate
        for row, name, detail in zip(rows, names, details, strict=True):
            head = (" " * indent + self.count_cell(row.count, count_width), "")
            if not detail:
                self.emit(head, (name, ""))
            elif len(name) <= column:
                self.emit(head, (name.ljust(column) + "  ", ""), (detail, "dim"))
            elif start + len(name) + 2 + len(detail) <= self.width:
                self.emit(head, (name + "  ", ""), (detail, "dim"))
            else:
                self.emit(head, (name, ""))
                for line in self.wrap(detail, self.width - start - 4):
                    self.emit((" " * (start + 4), ""), (line, "dim"))

    @staticmethod
    def shapes(row: NameRow) -> str:
        return name_shapes(row, arrow="->", code=clean, text=prose)


def render_text(plan: Plan, *, color: bool = False, width: int = 100, verbose: bool = False) -> str:
    """Render a plan for a terminal: a verdict line, the header and counts, then each non-empty section.

    Sections, in order: Errors, Warnings, Assignments (by rule), Skipped (by kind, rule and reason, with
    both shapes), Kept at initial value, Unused sources, Unfilled targets. Names are grouped into
    brace patterns (see ``group_names`` and ``group_pairs``) with a count column; ``verbose`` lists every
    name on its own line with its shape and dtype.

    Porting plans read the same way. A concat or stack shows its members after the combine, in member order
    (``concat[axis -1] layer.{0..11}.attn.{q,k,v}_proj.weight``: each target takes the members with its
    layer number), or listed when they share nothing (``concat[axis -1](q, k, v)``). The parts of split
    tensors share a line when their targets differ in one segment only (``layer_{0..11}/{query,key,value}/kernel``
    with ``split[axis -1, part {1..3}/3]``: the i-th name takes the i-th part); otherwise each part has its own.
    In plans over several named sources the header lists the sources and every source name reads
    ``source_id:name``.

    Args:
        plan: The plan to describe.
        color: Add ANSI colours (red errors, yellow warnings and skips, green OK, dim details). Without it the
            report holds no escape codes; control characters in names are shown as ``\\xNN``.
        width: Columns to fit in (at least 60); a name longer than that is never broken.
        verbose: List every assignment, skip and name individually.

    Returns:
        The report, lines joined by newlines, without a trailing newline.

    Example:
        >>> from mapper.plan import Assignment, Plan, RuleRef
        >>> rule = RuleRef("rules/copy.toml", 1, "dense")
        >>> rows = tuple(Assignment(f"d/{n}", f"d/{n}", f"old/{n}", rule, (), (2,), "float32", (2,), "float32")
        ...              for n in ("bias", "kernel"))
        >>> plan = Plan(("rules/copy.toml",), "old.ckpt", "model", "path", assignments=rows)
        >>> print(render_text(plan, width=80))  # doctest: +NORMALIZE_WHITESPACE
        Plan OK: 2 mapped
          rule files  rules/copy.toml
          source      old.ckpt
          target      model
          namespace   path
        <BLANKLINE>
          mapped       2    skipped by rule   0    unused sources    0
          transformed  0    skipped by guard  0    unfilled targets  0
                            kept by rule      0    errors            0
                                                   warnings          0
        <BLANKLINE>
        Assignments (2 in 1 line, 16 B to read)
          rules/copy.toml#1 'dense'
               2  d/{bias,kernel}  <-  old/{bias,kernel}

        The three parts of GPT-2's fused attention kernels, two layers of them, on one line:

        >>> from mapper.ops import SplitPart
        >>> rule = RuleRef("rules/gpt2.toml", 3, "c_attn")
        >>> parts = tuple(
        ...     Assignment(f"layer_{i}/{name}/kernel", f"layer_{i}/{name}/kernel", f"h.{i}.attn.c_attn.weight", rule,
        ...                (SplitPart(-1, part, 3, 4 * part, 4 * part + 4),), (4, 12), "float32", (4, 4), "float32")
        ...     for i in range(2) for part, name in enumerate(("query", "key", "value")))
        >>> plan = Plan(("rules/gpt2.toml",), "gpt2.safetensors", "model", "path", assignments=parts)
        >>> print(render_text(plan, width=100).split("\\n\\n")[-1])  # doctest: +NORMALIZE_WHITESPACE
        Assignments (6 in 1 line, 384 B to read)
          rules/gpt2.toml#3 'c_attn'
            6  layer_{0,1}/{query,key,value}/kernel
                 <-  h.{0,1}.attn.c_attn.weight
                     split[axis -1, part {1..3}/3]  [4, 12] -> [4, 4]
    """
    return _TextReport(plan, color=color, width=width, verbose=verbose).render()


__all__ = ["MIN_WIDTH", "render_text"]
