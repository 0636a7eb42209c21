"""SIGTERM handled like Ctrl-C: raised where the program is, so that the same cleanup runs and it exits cleanly."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM; a KeyboardInterrupt, so every cleanup written for Ctrl-C runs for it too.

    Example:
        >>> isinstance(Terminated(signal.SIGTERM), KeyboardInterrupt), Terminated(signal.SIGTERM).name
        (True, 'SIGTERM')
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises ``Terminated`` in the main thread; the previous handler is restored after.

    Only the first SIGTERM raises: one that arrives while that first one's cleanup runs (removing temporary
    files, rolling back variables) is ignored, so the cleanup is not cut short. Outside the main thread, where
    Python cannot install signal handlers, nothing changes.

    Example:
        >>> import os
        >>> before = signal.getsignal(signal.SIGTERM)
        >>> try:
        ...     with sigterm_as_interrupt():
        ...         os.kill(os.getpid(), signal.SIGTERM)
        ...         print("not reached: the handler raises as soon as os.kill returns")
        ... except Terminated as stop:
        ...     print(stop.name)
        SIGTERM
        >>> signal.getsignal(signal.SIGTERM) is before
        True
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = False

    def raise_terminated(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        del frame  # where it arrived does not matter: the exception unwinds from there
        if not received:
            received = True
            raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        # None means a handler installed outside Python; the default is the closest we can put back.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


__all__ = ["Terminated", "sigterm_as_interrupt"]
