"""Ctrl-C and SIGTERM held back while variables are assigned, then delivered: an assignment pass is never cut short."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

DEFERRED = (signal.SIGINT, signal.SIGTERM)


def can_defer() -> bool:
    """Whether signals can be held back here: only the main thread may install signal handlers.

    Example:
        >>> can_defer() == (threading.current_thread() is threading.main_thread())
        True
    """
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """While active, SIGINT and SIGTERM are recorded instead of handled; when it ends they are delivered.

    Delivery is what the handler in place before the block would have done: Python's SIGINT handler raises
    KeyboardInterrupt, ``mapper.interrupts.sigterm_raises`` raises Terminated, a default action ends the process
    (the signal is sent again), an ignored signal stays ignored. Each signal is delivered once, however many
    times it arrived; the handlers are back in place before any is delivered. The block's own exception, if it
    raises one, wins: the deferred signals are then delivered after it only if it was not already an interrupt.
    Outside the main thread nothing is deferred (Python handles signals in the main thread only, so they do not
    interrupt this thread anyway): the yielded list stays empty.

    Yields:
        The numbers of the signals that arrived so far, in order.

    Example:
        >>> try:
        ...     with signals_deferred() as arrived:
        ...         os.kill(os.getpid(), signal.SIGINT)
        ...         print("still running", arrived == [signal.SIGINT])
        ... except KeyboardInterrupt:
        ...     print("interrupted afterwards")
        still running True
        interrupted afterwards
    """
    arrived: list[int] = []
    if not can_defer():
        yield arrived
        return
    previous: dict[int, Any] = {}

    def record(signum: int, _frame: FrameType | None) -> None:
        if signum not in arrived:
            arrived.append(signum)

    try:
        for number in DEFERRED:
            previous[number] = signal.signal(number, record)
        yield arrived
    except BaseException as error:
        _put_back(previous)
        if not isinstance(error, (KeyboardInterrupt, SystemExit)):
            _deliver(arrived, previous, after=error)
        raise
    _put_back(previous)
    _deliver(arrived, previous)


def _put_back(previous: dict[int, Any]) -> None:
    for number, handler in previous.items():
        signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def _deliver(arrived: list[int], previous: dict[int, Any], *, after: BaseException | None = None) -> None:
    """Do for each arrived signal what its previous handler does; chained to ``after`` when that is raised."""
    for number in arrived:
        handler = previous.get(number)
        if callable(handler):
            if after is None:
                handler(number, None)
                continue
            try:
                handler(number, None)
            except BaseException as interrupt:
                raise interrupt from after
        elif handler in (signal.SIG_DFL, None):
            os.kill(os.getpid(), number)  # the default action (ends the process) now that the default is back


__all__ = ["DEFERRED", "can_defer", "signals_deferred"]
