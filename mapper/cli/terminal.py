"""What the ``mapper`` command shows and where: messages, colour, the progress bar, report files, quiet imports."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from mapper.errors import TargetError
from mapper.text import first_line

# The library's messages name its Python arguments; on the command line the same fix is spelled as an option.
_CLI_SPELLINGS = (
    (re.compile(r"--overwrite \(overwrite=True\)"), "--overwrite"),  # worded for both: keep the option only
    (re.compile(r"\boverwrite=True\b"), "--overwrite"),
    (re.compile(r"\bmethod='(assign|init_from_checkpoint)'"), r"--method \1"),
)


def cli_spelling(text: str) -> str:
    """A library message with its Python spellings (``overwrite=True``, ``method='assign'``) as command-line options.

    Example:
        >>> cli_spelling("out/ckpt already exists; pass --overwrite (overwrite=True) to replace it")
        'out/ckpt already exists; pass --overwrite to replace it'
        >>> cli_spelling("method='init_from_checkpoint' cannot transform tensors; use method='assign'")
        '--method init_from_checkpoint cannot transform tensors; use --method assign'
    """
    for spelling, option in _CLI_SPELLINGS:
        text = spelling.sub(option, text)
    return text


def out(text: str) -> None:
    """Print ``text`` on standard output: reports, drafts, verdicts."""
    print(text)


def warn(text: str) -> None:
    """Print a warning on standard error, prefixed so that it stands out in a CI log, in command-line spelling."""
    print(f"mapper: warning: {cli_spelling(text)}", file=sys.stderr)


def error(text: str) -> None:
    """Print an error on standard error, prefixed so that it stands out in a CI log, in command-line spelling."""
    print(f"mapper: error: {cli_spelling(text)}", file=sys.stderr)


def internal_error(problem: BaseException, *, debug: bool) -> None:
    """Report an exception no MapperError describes, a bug: one line and how to see more, or the traceback.

    Example:
        >>> import contextlib, io
        >>> shown = io.StringIO()
        >>> with contextlib.redirect_stderr(shown):
        ...     internal_error(ValueError("bad state\\ndetail"), debug=False)
        >>> print(shown.getvalue().rstrip())  # doctest: +ELLIPSIS
        mapper: internal error: ValueError: bad state
        mapper: this is a bug in weight-mapper: run the command again with --debug ... to see the traceback, ...
    """
    if debug:
        show_traceback(problem)
    print(f"mapper: internal error: {type(problem).__name__}: {first_line(problem)}", file=sys.stderr)
    if not debug:
        print(
            "mapper: this is a bug in weight-mapper: run the command again with --debug (mapper --debug COMMAND ...) "
            "or MAPPER_DEBUG=1 to see the traceback, and report it, with that traceback and the command, to the "
            "weight-mapper issue tracker",
            file=sys.stderr,
        )


def show_traceback(problem: BaseException) -> None:
    """Print ``problem``'s traceback, with its chained causes (``--debug``: where a reported error came from)."""
    traceback.print_exception(type(problem), problem, problem.__traceback__, file=sys.stderr)


def discard_stdout() -> None:
    """Drop what is still buffered for standard output once its reader has gone (``mapper inspect ... | head``).

    The buffer is flushed to the null device, so that neither a later flush nor the one at exit raises
    BrokenPipeError again; the stream's file descriptor is then put back as it was.

    Example:
        >>> discard_stdout()  # harmless when nothing is buffered, or when standard output has no descriptor
    """
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a StringIO (io.UnsupportedOperation), or a closed stream
        return
    saved = os.dup(descriptor)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
    finally:
        os.dup2(saved, descriptor)
        os.close(saved)
        os.close(devnull)


def wants_color(choice: str, stream: TextIO, *, to_file: bool = False) -> bool:
    """Whether to colour a text report for ``--color choice`` shown on ``stream``.

    ``auto`` colours only a terminal and honours NO_COLOR; a report written to a file (``to_file``) is coloured
    only when asked for with ``always``.

    Example:
        >>> import io
        >>> class Terminal(io.StringIO):
        ...     def isatty(self) -> bool:
        ...         return True
        >>> wants_color("auto", io.StringIO()), wants_color("always", io.StringIO()), wants_color("never", Terminal())
        (False, True, False)
        >>> wants_color("auto", Terminal()) == (not os.environ.get("NO_COLOR"))
        True
        >>> wants_color("auto", Terminal(), to_file=True)
        False
    """
    if choice == "always":
        return True
    return choice == "auto" and not to_file and stream.isatty() and not os.environ.get("NO_COLOR")


def render_plan(plan: Any, args: argparse.Namespace, stream: TextIO) -> str:
    """The plan report in ``--format``, coloured as ``--color`` and ``stream`` decide (text only)."""
    from mapper.report import render

    if args.format == "text":
        to_file = args.command == "plan" and bool(args.output)
        return render(plan, "text", color=wants_color(args.color, stream, to_file=to_file), verbose=args.verbose)
    return render(plan, args.format)


def interactive(stdout: TextIO | None = None, stderr: TextIO | None = None) -> bool:
    """A person is watching: standard output is a terminal (so not piped) and so is the error stream we draw on.

    Example:
        >>> import io
        >>> interactive(io.StringIO(), io.StringIO())
        False
    """
    return (stdout or sys.stdout).isatty() and (stderr or sys.stderr).isatty()


class ProgressBar:
    """A one-line progress bar on a terminal; the CLI draws it only when ``interactive()``.

    Example:
        >>> import io
        >>> stream = io.StringIO()
        >>> bar = ProgressBar(stream, "converting", width=4)
        >>> bar(1, 2); bar.close()
        >>> stream.getvalue().startswith("\\r  converting [##..] 1/2 "), stream.getvalue().endswith("s\\n")
        (True, True)
    """

    def __init__(self, stream: TextIO, verb: str = "applying", *, width: int = 30) -> None:
        self._stream = stream
        self._verb = verb
        self._width = width
        self._started = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        """Redraw the bar: ``done`` of ``total`` steps, and the seconds since it started."""
        filled = self._width * done // max(total, 1)
        elapsed = time.perf_counter() - self._started
        bar = "#" * filled + "." * (self._width - filled)
        self._stream.write(f"\r  {self._verb} [{bar}] {done}/{total} {elapsed:5.1f}s")
        self._stream.flush()

    def close(self) -> None:
        """End the bar's line, so that what follows starts on a line of its own."""
        self._stream.write("\n")
        self._stream.flush()


def progress_bar(quiet: bool, verb: str = "applying") -> ProgressBar | None:
    """A progress bar on standard error when a person is watching and did not ask for quiet, else None."""
    return ProgressBar(sys.stderr, verb) if interactive() and not quiet else None


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` (ending in a newline) to ``path`` under a temporary name, then move it into place.

    Raises:
        TargetError: the directory of ``path`` does not exist.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as scratch:
        ...     write_text_atomically(Path(scratch) / "plan.md", "# Plan")
        ...     (Path(scratch) / "plan.md").read_text(), sorted(p.name for p in Path(scratch).iterdir())
        ('# Plan\\n', ['plan.md'])
    """
    if not path.parent.is_dir():
        raise TargetError(f"cannot write {path}: directory {path.parent} does not exist")
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    partial.replace(path)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with the process's standard error closed for the moment.

    The full ``tensorflow`` wheel probes for CUDA as it loads and reports, before any logging is set up
    (so TF_CPP_MIN_LOG_LEVEL cannot silence it), that it found no GPU driver: noise in front of every report.
    Errors still surface: a failed import raises, and is reported, after standard error is back.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with Path(os.devnull).open("w", encoding="utf-8") as devnull:
            os.dup2(devnull.fileno(), 2)
            # A missing TensorFlow is reported, with an install hint, where it is needed.
            with contextlib.suppress(ImportError):
                import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
