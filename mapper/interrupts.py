"""SIGTERM handled like SIGINT: an exception in the main thread, so the cleanup written for Ctrl-C runs for it too."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

# What a shell reports for a process that SIGTERM ended: 128 + the signal's number.
EXIT_TERMINATED = 128 + int(signal.SIGTERM)


class Terminated(SystemExit):
    """SIGTERM arrived: what was being written or assigned was cleaned up on the way out.

    Like KeyboardInterrupt for SIGINT, it is not an ``Exception``, so no ``except Exception`` swallows it, while
    every ``except BaseException`` / ``finally`` that cleans up runs. It is a ``SystemExit`` with code
    ``EXIT_TERMINATED`` (143): left uncaught, it ends the process with that code and no traceback.

    Example:
        >>> error = Terminated()
        >>> error.code, isinstance(error, Exception), str(error)
        (143, False, 'terminated (SIGTERM); temporary files were removed')
    """

    def __init__(self) -> None:
        super().__init__(EXIT_TERMINATED)

    def __str__(self) -> str:
        return "terminated (SIGTERM); temporary files were removed"


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While active, SIGTERM raises Terminated in the main thread instead of killing the process outright.

    Only SIGTERM's default action is replaced: a handler someone else installed (or SIG_IGN) stays in charge,
    and so does an outer ``sigterm_raises`` (the ``mapper`` command holds one for its whole run; the writers
    and ``save_target`` hold their own for library callers). Outside the main thread (where signals cannot be handled) it does
    nothing. The previous handler is back when the block ends. A second SIGTERM while the first one's cleanup
    runs is ignored, so that the cleanup is not cut short.

    Example:
        >>> import os
        >>> try:
        ...     with sigterm_raises():
        ...         os.kill(os.getpid(), signal.SIGTERM)
        ... except Terminated as stopped:
        ...     print(stopped.code, signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
        143 True
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    fired = False

    def _raise(_signum: int, _frame: FrameType | None) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise Terminated

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


__all__ = ["EXIT_TERMINATED", "Terminated", "sigterm_raises"]
