"""The verbs that read and check: ``inspect`` lists a checkpoint (or, with ``--target``, a model), ``validate`` checks rule files."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from mapper.cli import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from mapper.cli.inputs import UsageError, load_rule_file, sources
from mapper.cli.terminal import error, out, warn
from mapper.errors import RuleFileError
from mapper.text import human_bytes, plural, s

_COLUMNS = ("name", "shape", "dtype", "size")


def inspect(args: argparse.Namespace) -> int:
    """``mapper inspect``: every tensor of a checkpoint, or every variable of ``--target``, as a table or JSON."""
    from mapper.sources import open_source

    _check_inspect_args(args)
    try:
        pattern = re.compile(args.match) if args.match else None
    except re.error as problem:
        error(f"--match {args.match!r} is not a valid regular expression: {problem}")
        return EXIT_USAGE
    if args.target:
        from mapper.cli.inspect_target import inspect_target

        return inspect_target(args, pattern)
    source = open_source(args.source)
    specs = source.specs()
    shown = [spec for spec in specs.values() if pattern is None or pattern.search(spec.name)]
    if args.format == "json":
        out(json.dumps(_document(source.description, shown), indent=2))
    else:
        out(_table(source.description, shown, len(specs)))
    return EXIT_OK


def _check_inspect_args(args: argparse.Namespace) -> None:
    """UsageError unless exactly one of SOURCE and ``--target`` is given, and the target options come with a target."""
    if args.source and args.target:
        raise UsageError(
            f"give a checkpoint or --target, not both (got {args.source!r} and --target {args.target!r}): "
            "inspect lists one side at a time"
        )
    if not args.source and not args.target:
        raise UsageError(
            "give a checkpoint to list its tensors (mapper inspect CHECKPOINT), or --target MODULE:FACTORY to list "
            "a model's variables (mapper inspect --target mapper.demo:new_model)"
        )
    for option, given in (("--checkpoint-root", args.checkpoint_root), ("--verbose", args.verbose)):
        if given and not args.target:
            raise UsageError(f"{option} is for --target: a checkpoint's tensors have one name each")


def _document(description: str, shown: list[Any]) -> dict[str, Any]:
    return {
        "source": description,
        "tensors": [
            {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype, "bytes": spec.nbytes} for spec in shown
        ],
        "total_bytes": sum(spec.nbytes for spec in shown),
    }


def _table(description: str, shown: list[Any], count: int) -> str:
    """A header line, then name, shape and dtype left-aligned and the size right-aligned, one tensor a line."""
    from mapper.specs import format_shape

    total = sum(spec.nbytes for spec in shown)
    lines = [f"{description}: {len(shown)} of {count} tensors, {human_bytes(total)}"]
    rows = [(spec.name, format_shape(spec.shape), spec.dtype, human_bytes(spec.nbytes)) for spec in shown]
    if not rows:
        return lines[0]
    widths = [max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(_COLUMNS)]
    lines.append("  ".join(cell.ljust(width) for cell, width in zip(_COLUMNS, widths, strict=True)).rstrip())
    lines.extend(
        "  ".join(
            [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2]), row[3].rjust(widths[3])]
        ).rstrip()
        for row in rows
    )
    return "\n".join(lines)


def validate(args: argparse.Namespace) -> int:
    """``mapper validate``: load each rule file, run its examples and lints, and say which files are invalid."""
    source_map = None
    if args.source:
        from mapper.api import as_sources, source_specs

        source_map, _ = source_specs(as_sources(sources(args.source)))
    failed = 0
    warned = 0
    for path in args.rules:
        checked = _validate_file(args, path, source_map)
        if checked is None:
            failed += 1
        else:
            warned += checked
    if failed:
        error(f"{failed} of {len(args.rules)} rule file{s(len(args.rules))} invalid")
        return EXIT_PROBLEMS
    if warned and args.strict:
        error(f"{plural(warned, 'lint warning')} (--strict)")
        return EXIT_PROBLEMS
    return EXIT_OK


def _validate_file(args: argparse.Namespace, path: str, source_map: Any) -> int | None:
    """Check one rule file and print what was found: None if it is invalid, else how many lint warnings it has."""
    from mapper.authoring.examples import check_examples
    from mapper.authoring.lint import lint

    try:
        rules = load_rule_file(args, path)
    except RuleFileError as problem:
        error(str(problem))
        return None
    results = check_examples(rules)
    failures = [result for result in results if not result.ok]
    findings = lint(rules, source_map)
    for finding in findings:
        warn(finding.message)
    for result in failures:
        error(f"{path}: {result}")
    if failures:
        return None
    if not args.quiet:
        counts = [plural(len(rules.rules), "rule")]
        if rules.keep:
            counts.append(plural(len(rules.keep), "keep rule"))
        if results:
            counts.append(f"{plural(len(results), 'example')} passed")
        if findings:
            counts.append(plural(len(findings), "lint warning"))
        out(f"ok: {path} ({', '.join(counts)})")
    return len(findings)
