"""The verbs that plan against a model and apply: ``plan``, ``apply`` and the built-in ``demo``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from mapper.cli import EXIT_OK, EXIT_PROBLEMS, main
from mapper.cli.backend import check_backend_installed, check_method, configured_backend
from mapper.cli.inputs import load_rule_file, plan_from_args
from mapper.cli.terminal import error, out, progress_bar, render_plan, warn, write_text_atomically
from mapper.errors import PlanError
from mapper.text import human_bytes, plural


def plan(args: argparse.Namespace) -> int:
    """``mapper plan``: print (or write to ``--output``) the plan report; exit 1 if the plan has errors."""
    planned, _, _ = plan_from_args(args)
    if args.quiet and not args.output:
        from mapper.report import render_text

        out(render_text(planned).splitlines()[0])
        for problem in planned.problems:
            (error if problem.is_error else warn)(problem.message)
        return EXIT_OK if planned.ok else EXIT_PROBLEMS
    report = render_plan(planned, args, sys.stdout)
    if args.output:
        write_text_atomically(Path(args.output), report)
        verdict = "no errors" if planned.ok else f"{len(planned.errors)} errors"
        out(f"plan report ({verdict}) written to {args.output}")
    else:
        out(report)
    return EXIT_OK if planned.ok else EXIT_PROBLEMS


def apply(args: argparse.Namespace) -> int:
    """``mapper apply``: plan, and if the plan has no errors, assign the weights and save them to ``--output``."""
    from mapper.api import apply as apply_plan
    from mapper.outputs.save import check_output, save_target

    # Refused before any work: an output or a method the backend (or a missing TensorFlow) cannot serve.
    backend = configured_backend()
    check_method(args.method, backend)
    output = Path(args.output)
    check_output(output, overwrite=args.overwrite, backend=backend)
    planned, source, target = plan_from_args(args)
    # Refused before the model changes: an output that is, or shares files with, a source (even with --overwrite).
    opened = tuple(source.values()) if isinstance(source, dict) else (source,)
    check_output(output, overwrite=args.overwrite, sources=opened, backend=backend)
    if not args.quiet or not planned.ok:
        out(render_plan(planned, args, sys.stdout))
    if not planned.ok:
        raise PlanError.from_plan(planned)
    started = time.perf_counter()
    progress = progress_bar(args.quiet)
    result = apply_plan(planned, source, target, method=args.method, rollback=args.rollback, progress=progress)
    if progress is not None:
        progress.close()
    root = load_rule_file(args, args.rules).target.checkpoint_root
    save_target(target, output, checkpoint_root=root, overwrite=args.overwrite, sources=opened)
    seconds = time.perf_counter() - started
    out(
        f"applied: {plural(result.assigned, 'variable')} ({human_bytes(result.bytes_read)} read) in {seconds:.2f}s; "
        f"weights saved to {output}"
    )
    return EXIT_OK


def demo(args: argparse.Namespace) -> int:
    """``mapper demo``: the built-in example on the Keras backend, in ``--workdir`` or a temporary directory."""
    backend = configured_backend()
    check_backend_installed(backend)
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="mapper-demo-") as scratch:
            return _run_demo(Path(scratch), backend)
    return _run_demo(args.workdir, backend)


def _run_demo(workdir: Path, backend: str) -> int:
    from mapper import demo as example

    pretrained, checkpoint = example.write_pretrained(workdir / "pretrained", backend)
    # Shown relative to the working directory when it is inside it, as a user would type it.
    chosen = example.rules_for(backend)
    relative = os.path.relpath(chosen)
    rules = Path(relative) if not relative.startswith("..") else chosen
    if backend == "tensorflow":
        out(f"Saved a 'pretrained' 10-class model to {checkpoint} with tf.train.Checkpoint(model=...).write().")
        output = workdir / "finetune" / "ckpt"
    else:
        out(
            f"Saved a 'pretrained' 10-class model to {checkpoint}: safetensors, each weight under its Keras path "
            f"(the Keras backend is {backend}; no TensorFlow is needed)."
        )
        output = workdir / "finetune" / "model.weights.h5"
    out(f"The new model has a 5-class head. The rule file {rules.name} restores every variable whose shape fits:\n")
    out("\n".join(f"    | {line}".rstrip() for line in rules.read_text(encoding="utf-8").strip().splitlines()))
    code = _demo_commands(rules, checkpoint, output)
    if code != EXIT_OK:
        return code
    return _demo_check(rules, checkpoint, pretrained)


def _demo_commands(rules: Path, checkpoint: Path, output: Path) -> int:
    """Run inspect, plan and apply as a user would type them, showing each command line first."""
    output.parent.mkdir(parents=True, exist_ok=True)
    common = ["--source", str(checkpoint), "--target", "mapper.demo:new_model"]
    steps = [
        ["inspect", str(checkpoint)],
        ["plan", str(rules), *common],
        ["apply", str(rules), *common, "--output", str(output), "--overwrite", "--quiet"],
    ]
    for argv in steps:
        out(f"\n$ mapper {shlex.join(argv)}")
        code = main(argv)
        if code != EXIT_OK:
            return code
    return EXIT_OK


def _demo_check(rules: Path, checkpoint: Path, pretrained: object) -> int:
    """Restore a fresh model through the Python API and check every weight against the pretrained model."""
    import numpy as np

    from mapper import api
    from mapper import demo as example

    out("\nChecking the result through the Python API (mapper.transfer on a fresh 5-class model):")
    model = example.new_model()
    initial = {variable.path: np.array(variable.numpy()) for variable in model.weights}
    transferred = api.transfer(rules, checkpoint, model)
    results = example.compare_with_pretrained(model, pretrained, initial)
    width = max(len(path) for path, _, _ in results)
    for path, as_expected, found in results:
        out(f"  {'ok ' if as_expected else 'BAD'}  {path:<{width}}  {found}")
    counts = transferred.counts()
    out(
        f"\n{counts['mapped']} variables restored; {counts['skipped_by_guard']} skipped by the shape guard (the new head)."
    )
    if not all(as_expected for _, as_expected, _ in results):
        error("the demo's checks failed")
        return EXIT_PROBLEMS
    out("Demo passed.")
    return EXIT_OK
