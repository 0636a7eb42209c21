"""The ``convert`` verb: write a checkpoint's tensors, renamed and transformed by a rule file, to a new file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mapper.cli import EXIT_OK
from mapper.cli.inputs import load_rule_file, load_target, source_formats, sources
from mapper.cli.terminal import out, progress_bar, render_plan
from mapper.errors import PlanError
from mapper.text import human_bytes, plural


def convert(args: argparse.Namespace) -> int:
    """``mapper convert``: plan the conversion, print the report, and if it has no errors write OUTPUT."""
    from mapper.api import as_sources
    from mapper.outputs.files import check_output, output_format
    from mapper.plan.conversion import plan_conversion
    from mapper.run.convert import write_plan

    output = Path(args.output)
    chosen = output_format(output, args.to)
    check_output(output, chosen, overwrite=args.overwrite)
    rules = load_rule_file(args, args.rules)
    opened = as_sources(sources([args.source, *(args.more_sources or ())]), format=source_formats(args))
    target_map = None
    if args.target:
        target_map = load_target(args.target, checkpoint_root=rules.target.checkpoint_root).map
    planned = plan_conversion(rules, opened, target_map, target_description=f"{output} ({chosen})")
    if not args.quiet or not planned.ok:
        out(render_plan(planned, args, sys.stdout))
    if not planned.ok:
        raise PlanError.from_plan(planned)
    progress = progress_bar(args.quiet, "converting")
    try:
        result = write_plan(planned, opened, output, format=chosen, overwrite=args.overwrite, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    out(
        f"converted: {plural(result.written, 'tensor')} ({human_bytes(result.bytes_read)} read, "
        f"{human_bytes(result.bytes_written)} written) in {result.seconds:.2f}s; {chosen} written to {output}"
    )
    return EXIT_OK
