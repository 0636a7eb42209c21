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

from mapper.errors import ApplyError, MapperError, PlanError, RuleFileError

EXIT_OK = 0
EXIT_PROBLEMS = 1  # the input was read, and is wrong: an invalid rule file, a plan with errors
EXIT_USAGE = 2  # the command line itself is wrong (argparse's own code)
EXIT_INPUT = 3  # an input cannot be read: missing or corrupt source, unusable target
EXIT_APPLY = 4  # applying failed; the target was left unchanged
EXIT_INTERRUPTED = 130  # the shell's code for a process ended by SIGINT

# Commands that always build a Keras model, so import TensorFlow anyway.
_KERAS_COMMANDS = frozenset({"plan", "apply", "demo"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mapper`` command and return its exit code.

    Example:
        >>> main(["validate", "/no/such/rules.toml"])  # the error goes to standard error
        1
    """
    # The verb modules import their exit codes from this package, so they are imported once it is complete.
    from mapper.cli.inputs import UsageError
    from mapper.cli.parser import build_parser
    from mapper.cli.terminal import error, import_tensorflow_quietly

    # TensorFlow's C++ start-up chatter (CUDA probing, CPU features) is not for our users; an explicit setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    if args.command in _KERAS_COMMANDS:
        import_tensorflow_quietly()
    try:
        return _handlers()[args.command](args)
    except UsageError as problem:
        error(str(problem))
        return EXIT_USAGE
    except (RuleFileError, PlanError) as problem:
        error(str(problem))
        return EXIT_PROBLEMS
    except ApplyError as problem:
        error(f"{args.command} failed: {problem}")
        return EXIT_APPLY
    except MapperError as problem:
        error(str(problem))
        return EXIT_INPUT
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED


def _handlers() -> dict[str, Callable[[argparse.Namespace], int]]:
    from mapper.cli import authoring, convert, inspect, run

    return {
        "inspect": inspect.inspect,
        "validate": inspect.validate,
        "plan": run.plan,
        "apply": run.apply,
        "convert": convert.convert,
        "demo": run.demo,
        "explain": authoring.explain,
        "suggest": authoring.suggest,
        "schema": authoring.schema,
        "diff": authoring.diff,
    }


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
