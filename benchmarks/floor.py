"""The physical floor of this machine for loading a checkpoint: its bytes read from the page cache, and one memcpy.

Run by hand: ``python benchmarks/floor.py PATH`` (a checkpoint's data file, e.g. model B's, which run.py caches).
Figures, medians of 7 after one warm-up: reading the file through one reused 128 KiB buffer (it stays in the L2
cache: what any reader must pay) and through one of 8 MiB (the kernel's copy is slower into lines not in cache),
the 128 KiB read copied on into a tensor-sized buffer already touched (what a read into a variable's own memory
pays), one memcpy of as many bytes between two buffers already touched, and one memcpy into fresh memory (what a
fresh process pays for a new buffer of the model's size: the page faults; after the warm-up the pages are recycled,
so this is the good case on a VM whose free memory goes back to the host).
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
SMALL_CHUNK = 128 * 2**10
MIB = 2**20


def main(path: str) -> None:
    """Print the floors for the file at ``path``."""
    size = Path(path).stat().st_size
    source = np.ones(size, np.uint8)
    destination = np.zeros(size, np.uint8)

    def reader(nbytes: int, *, copy: bool = False) -> Callable[[], None]:
        chunk = np.empty(nbytes, np.uint8)
        view = memoryview(chunk)

        def read_from_page_cache() -> None:
            descriptor = os.open(path, os.O_RDONLY)
            try:
                offset = 0
                while offset < size:
                    count = os.preadv(descriptor, [view], offset)
                    if count == 0:
                        break
                    if copy:
                        destination[offset : offset + count] = chunk[:count]
                    offset += count
            finally:
                os.close(descriptor)

        return read_from_page_cache

    def memcpy_warm() -> None:
        np.copyto(destination, source)

    def memcpy_fresh() -> None:
        fresh = np.empty(size, np.uint8)
        np.copyto(fresh, source)

    floors: list[tuple[str, Callable[[], None]]] = [
        ("read the file from the page cache (128 KiB buffer reused)", reader(SMALL_CHUNK)),
        ("read the file from the page cache (8 MiB buffer reused)", reader(CHUNK)),
        ("read through 128 KiB into a buffer of the file's size, already touched", reader(SMALL_CHUNK, copy=True)),
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
