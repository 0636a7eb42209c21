"""The ``mapper`` command: inspect, validate, plan, apply and convert; the only package that prints.

``main`` parses the command line (``mapper.cli.parser``), runs the verb's module (``inspect``, ``run``,
``convert``, ``authoring``) and turns the ``MapperError`` it may raise into a message and an exit code;
``mapper.cli.terminal`` decides what reaches the terminal, and how.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from mapper.errors import ApplyError, MapperError, OutputError, PlanError, RuleFileError
from mapper.interrupts import EXIT_TERMINATED as TERMINATED_CODE
from mapper.interrupts import Terminated, sigterm_raises

EXIT_OK = 0
EXIT_PROBLEMS = 1  # the input was read, and is wrong: an invalid rule file, a plan with errors
EXIT_USAGE = 2  # the command line itself is wrong (argparse's own code)
EXIT_INPUT = 3  # an input cannot be read: missing or corrupt source, unusable target
EXIT_APPLY = 4  # applying failed; the target was left unchanged
EXIT_OUTPUT = 5  # the output cannot be written (exists, no directory, read-only, disk full); nothing was written
EXIT_INTERNAL = 70  # an exception no MapperError describes: a bug (EX_SOFTWARE in BSD's sysexits.h)
EXIT_INTERRUPTED = 130  # the shell's code for a process ended by SIGINT
EXIT_BROKEN_PIPE = 141  # the shell's code for a process ended by SIGPIPE: standard output was closed early
EXIT_TERMINATED = TERMINATED_CODE  # the shell's code for a process ended by SIGTERM (128 + 15)

_DEBUG_VARIABLE = "MAPPER_DEBUG"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mapper`` command and return its exit code; no failure ends in a traceback unless ``--debug``.

    A MapperError becomes its message and exit code; any other exception is a bug, reported in two lines
    (EXIT_INTERNAL). SIGTERM is handled like Ctrl-C (the same cleanup runs) for as long as this runs.

    Example:
        >>> main(["validate", "/no/such/rules.toml"])  # the error goes to standard error
        1
    """
    # The verb modules import their exit codes from this package, so they are imported once it is complete.
    from mapper.cli.parser import build_parser
    from mapper.cli.terminal import discard_stdout, error, internal_error

    # TensorFlow's C++ start-up chatter (CUDA probing, CPU features) is not for our users; an explicit setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get(_DEBUG_VARIABLE, "").lower() not in ("", "0", "false", "no")
    with sigterm_raises():
        try:
            code = _run(args, debug=debug)
            sys.stdout.flush()  # a reader that went away shows here, not as a traceback at exit
        except Terminated:
            error("interrupted (SIGTERM)")
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            error("interrupted")
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # `mapper inspect ... | head`: the reader has all it wanted
            discard_stdout()
            return EXIT_BROKEN_PIPE
        except Exception as problem:  # the last resort: a bug, so say so briefly and how to see more
            internal_error(problem, debug=debug)
            return EXIT_INTERNAL
        return code


def _run(args: argparse.Namespace, *, debug: bool) -> int:
    """Run the verb; a MapperError (or a UsageError) becomes its message on standard error and its exit code."""
    from mapper.cli.backend import needs_tensorflow, selected_backend
    from mapper.cli.inputs import UsageError
    from mapper.cli.terminal import error, import_tensorflow_quietly, show_traceback

    try:
        # On the TensorFlow backend, TensorFlow is imported first, quietly; on JAX and PyTorch only if it is needed.
        if needs_tensorflow(args, selected_backend(args)):
            import_tensorflow_quietly()
        return _handlers()[args.command](args)
    except UsageError as problem:
        error(str(problem))
        return EXIT_USAGE
    except MapperError as problem:
        if debug:
            show_traceback(problem)
        code = _exit_code(problem)
        error(f"{args.command} failed: {problem}" if code == EXIT_APPLY else str(problem))
        return code


def _exit_code(problem: MapperError) -> int:
    """The exit code of a MapperError: wrong input 1, unreadable input 3, failed apply 4, unwritable output 5.

    Example:
        >>> from mapper.errors import OutputError, SourceNotFoundError
        >>> _exit_code(RuleFileError([])), _exit_code(SourceNotFoundError("no ckpt", path="x")), _exit_code(ApplyError())
        (1, 3, 4)
        >>> _exit_code(OutputError("out/ckpt already exists; pass --overwrite to replace it", path="out/ckpt"))
        5
    """
    if isinstance(problem, (RuleFileError, PlanError)):
        return EXIT_PROBLEMS
    if isinstance(problem, OutputError):
        return EXIT_OUTPUT
    if isinstance(problem, ApplyError):
        return EXIT_APPLY
    return EXIT_INPUT


def _handlers() -> dict[str, Callable[[argparse.Namespace], int]]:
    from mapper.cli import authoring, convert, export, inspect, run

    return {
        "inspect": inspect.inspect,
        "validate": export.validate,
        "plan": run.plan,
        "apply": run.apply,
        "convert": convert.convert,
        "export": export.export,
        "demo": run.demo,
        "explain": authoring.explain,
        "suggest": authoring.suggest,
        "schema": authoring.schema,
        "diff": authoring.diff,
    }


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
