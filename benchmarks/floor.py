"""The physical floor of this machine for loading a checkpoint: its bytes read from the page cache, and one memcpy.

Run by hand: ``python benchmarks/floor.py PATH`` (a checkpoint's data file, e.g. model B's, which run.py caches).
Three figures, medians of 7 after one warm-up: reading the file through one reused 8 MiB buffer (what any
reader must pay), one memcpy of as many bytes between two buffers already touched, and one memcpy into fresh
memory (what a fresh process pays for a new buffer of the model's size: the page faults).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

CHUNK = 8 * 2**20
MIB = 2**20


def main(path: str) -> None:
    """Print the three floors for the file at ``path``."""
    size = Path(path).stat().st_size
    chunk = memoryview(np.empty(CHUNK, np.uint8))

    def read_from_page_cache() -> None:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            offset = 0
            while offset < size:
                count = os.preadv(descriptor, [chunk], offset)
                if count == 0:
                    break
                offset += count
        finally:
            os.close(descriptor)

    source = np.ones(size, np.uint8)
    destination = np.zeros(size, np.uint8)

    def memcpy_warm() -> None:
        np.copyto(destination, source)

    def memcpy_fresh() -> None:
        fresh = np.empty(size, np.uint8)
        np.copyto(fresh, source)

    floors: list[tuple[str, Callable[[], None]]] = [
        ("read the file from the page cache (8 MiB buffer reused)", read_from_page_cache),
        ("one memcpy of the model, memory already touched", memcpy_warm),
        ("one memcpy of the model into fresh memory", memcpy_fresh),
    ]
    for label, measure in floors:
        measure()
        times = []
        for _ in range(7):
            started = time.perf_counter()
            measure()
            times.append(time.perf_counter() - started)
        print(f"{label}: median {statistics.median(times):.3f} s, best {min(times):.3f} s ({size / MIB:.0f} MiB)")


if __name__ == "__main__":
    main(sys.argv[1])
