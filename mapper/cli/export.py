"""The ``export`` verb and ``validate --roundtrip``: a model written back under the source names its rule file reads."""

from __future__ import annotations

import argparse
import re

from mapper.cli import EXIT_OK, EXIT_PROBLEMS
from mapper.cli.inputs import UsageError, load_rule_file, load_target, source_formats, sources
from mapper.cli.terminal import error, out, progress_bar
from mapper.text import human_bytes, plural, quoted

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A byte count from ``5GB``, ``500MB``, ``2GiB`` or a plain number of bytes, as the Hugging Face hub writes them.

    Raises:
        UsageError: not a size.

    Example:
        >>> parse_size("5GB"), parse_size("1.5kb"), parse_size("2MiB"), parse_size("64")
        (5000000000, 1500, 2097152, 64)
    """
    matched = _SIZE.fullmatch(text)
    unit = matched.group(2).lower() if matched else None
    if matched is None or unit not in _UNITS or float(matched.group(1)) <= 0:
        raise UsageError(f"--max-shard-size {text!r} is not a size; write e.g. 5GB, 500MB, 2GiB or a number of bytes")
    return int(float(matched.group(1)) * _UNITS[unit])


def export(args: argparse.Namespace) -> int:
    """``mapper export``: plan from ``--like`` into the model, run the plan backwards, write the safetensors."""
    from mapper.api import as_source
    from mapper.api import export as export_model
    from mapper.run.export import DEFAULT_MAX_SHARD_BYTES, check_export_output

    check_export_output(args.output, overwrite=args.overwrite)
    shard_bytes = DEFAULT_MAX_SHARD_BYTES if args.max_shard_size is None else parse_size(args.max_shard_size)
    rules = load_rule_file(args, args.rules)
    like = as_source(args.like, format=args.like_format)
    target = load_target(args.model, checkpoint_root=rules.target.checkpoint_root)
    progress = progress_bar(args.quiet, "exporting")
    try:
        result = export_model(
            rules,
            target,
            args.output,
            like=like,
            weights=args.weights,
            max_shard_bytes=shard_bytes,
            overwrite=args.overwrite,
            lossy_casts=True if args.allow_lossy_casts else None,
            progress=progress,
        )
    finally:
        if progress is not None:
            progress.close()
    inverse = result.inverse
    if not args.quiet:
        out(inverse.summary())
        for left in inverse.dropped:
            out(f"  not written: {left.name} ({left.reason})")
        for left in inverse.not_exported:
            out(f"  not exported: {left.name} ({left.reason})")
    out(
        f"exported: {plural(result.written, 'tensor')} ({human_bytes(result.bytes_written)}) in {result.seconds:.2f}s "
        f"to {args.output}: {quoted(list(result.files))}; copy config.json from the checkpoint the model came from"
    )
    return EXIT_OK


def validate(args: argparse.Namespace) -> int:
    """``mapper validate``: the rule-file checks, or with ``--roundtrip`` the round-trip proof on a checkpoint."""
    if not args.roundtrip:
        from mapper.cli.inspect import validate as validate_files

        return validate_files(args)
    if len(args.rules) != 1 or not args.source or not args.target:
        raise UsageError("validate --roundtrip needs one rule file, --source CHECKPOINT and --target MODULE:FACTORY")
    from mapper.api import as_sources
    from mapper.run.roundtrip import roundtrip

    rules = load_rule_file(args, args.rules[0])
    source = as_sources(sources(args.source), format=source_formats(args))
    if isinstance(source, dict):
        raise UsageError("validate --roundtrip reads one source; an export writes one checkpoint")
    target = load_target(args.target, checkpoint_root=rules.target.checkpoint_root)
    trip = roundtrip(rules, source, target, lossy_casts=True if args.allow_lossy_casts else None)
    if not trip.ok:
        error(trip.summary())
        return EXIT_PROBLEMS
    out(trip.summary())
    if not args.quiet:
        for left in trip.dropped:
            out(f"  not written by an export: {left.name} ({left.reason})")
    return EXIT_OK
