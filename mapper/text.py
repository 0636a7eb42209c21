"""Text helpers every message and report shares: quoted name lists, plurals, byte sizes, natural order, first lines."""

from __future__ import annotations

import re
from collections.abc import Sequence

SHOWN = 5
"""How many names a message lists before it says how many more there are."""

_NUMBER = re.compile(r"([0-9]{1,18})")


def quoted(names: Sequence[str], shown: int = SHOWN) -> str:
    """Up to ``shown`` quoted names, then how many more.

    Example:
        >>> quoted(["a", "b"]), quoted([str(i) for i in range(7)], shown=2)
        ("'a', 'b'", "'0', '1' and 5 more")
    """
    text = ", ".join(repr(name) for name in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def s(count: int) -> str:
    """The plural ending for ``count`` things: ``""`` for one, ``"s"`` otherwise.

    Example:
        >>> f"1 file{s(1)}, 2 file{s(2)}"
        '1 file, 2 files'
    """
    return "" if count == 1 else "s"


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, with an ``s`` unless there is exactly one.

    Example:
        >>> plural(1, "error"), plural(3, "warning")
        ('1 error', '3 warnings')
    """
    return f"{count} {noun}{s(count)}"


def human_bytes(count: int) -> str:
    """A byte count in binary units, one decimal from KiB on.

    Example:
        >>> human_bytes(512), human_bytes(3 * 2**20), human_bytes(5 * 2**40)
        ('512 B', '3.0 MiB', '5120.0 GiB')
    """
    size = float(count)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def natural_key(text: str) -> tuple[tuple[int, str], ...]:
    """A sort key that orders ``layer_2`` before ``layer_10``.

    Example:
        >>> sorted(["layer_10", "layer_2", "head"], key=natural_key)
        ['head', 'layer_2', 'layer_10']
    """
    return tuple((int(part), part) if index % 2 else (-1, part) for index, part in enumerate(_NUMBER.split(text)))


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, for one-line summaries of a chained cause.

    Example:
        >>> first_line(ValueError("bad shape\\nmore detail"))
        'bad shape'
    """
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


__all__ = ["SHOWN", "first_line", "human_bytes", "natural_key", "plural", "quoted", "s"]
