"""Banded reads (mapper/run/bands.py): a reordered tensor moved into place band by band gives what its operations give."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from mapper.errors import SourceError
from mapper.ops import NUMPY, Cast, Rearrange, Reshape, Transpose, apply_operations
from mapper.plan import Assignment, RuleRef
from mapper.run.bands import CHUNK_BYTES, band_bytes, in_c_order, reorder_into
from mapper.run.values import reordering
from mapper.sources.safetensors import SafetensorsSource


def _assignment(shape: tuple[int, ...], dtype: str, operations: tuple[Any, ...]) -> Assignment:
    value = apply_operations(operations, np.zeros(shape, dtype), NUMPY)
    return Assignment("t", "t", "w", RuleRef("r.toml", 1), operations, shape, dtype, value.shape, value.dtype.name)


CASES = [
    ((768, 3072), "float32", (Transpose((1, 0)),)),  # rows 12 KiB apart: bands of 8 rows (L1 sets)
    ((300, 70), "float32", (Transpose((1, 0)),)),  # the last band is short
    ((5, 3), "float32", (Transpose((1, 0)),)),  # one band holds the whole tensor
    ((512, 768), "float32", (Transpose((1, 0)), Cast("float16"))),  # cast while moving
    ((64, 48), "float64", (Reshape((48, 64)), Transpose((1, 0)))),
    ((40, 30), "float32", (Rearrange("(h d) c -> c h d", (("h", 4),)),)),
    ((4, 6, 8), "int32", (Transpose((2, 0, 1)),)),
]


@pytest.mark.parametrize(("shape", "dtype", "operations"), CASES)
def test_reorder_into_gives_what_the_operations_give(
    tmp_path: Path, shape: tuple[int, ...], dtype: str, operations: tuple[Any, ...]
) -> None:
    member = (np.random.default_rng(3).standard_normal(shape) * 100).astype(dtype)
    save_file({"w": member}, str(tmp_path / "w.safetensors"))
    assignment = _assignment(shape, dtype, operations)
    layout = reordering(assignment)
    assert layout is not None and not in_c_order(layout)
    out = np.full(layout[0], -1, layout[2])
    band = np.empty(band_bytes(layout), np.uint8)

    reorder_into(SafetensorsSource(tmp_path / "w.safetensors"), "w", dtype, layout, out=out, band=band)

    expected = apply_operations(operations, member, NUMPY)
    np.testing.assert_array_equal(out.reshape(expected.shape), expected)


def test_bands_are_whole_rows_near_one_chunk() -> None:
    for shape in [(768, 3072), (300, 70), (30522, 768)]:
        layout = reordering(_assignment(shape, "float32", (Transpose((1, 0)),)))
        assert layout is not None
        row = max(layout[1])
        assert band_bytes(layout) % row == 0 and row <= band_bytes(layout) <= max(CHUNK_BYTES, row)


class _Bytes:
    """A ChunkedSource over bytes in memory that may give fewer or more than the tensor's (a stand-in for a file
    that changed between planning and reading: real sources raise their own error first)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.description = "bytes in memory"

    def raw_order(self, name: str) -> str | None:
        return "<"

    def read_chunks(self, name: str, buffer: memoryview) -> Iterator[memoryview]:
        for start in range(0, len(self.data), len(buffer)):
            piece = self.data[start : start + len(buffer)]
            buffer[: len(piece)] = piece
            yield buffer[: len(piece)]


@pytest.mark.parametrize(("rows", "said"), [(99, "gave 99 of its 100 rows"), (101, "gave more bytes than its 100")])
def test_a_source_giving_other_rows_is_named(rows: int, said: str) -> None:
    layout = reordering(_assignment((100, 8), "float32", (Transpose((1, 0)),)))
    assert layout is not None
    data = np.arange(rows * 8, dtype="float32").tobytes()
    band = np.empty(band_bytes(layout), np.uint8)

    with pytest.raises(SourceError, match=f"reading 'w' from bytes in memory {said}"):
        reorder_into(_Bytes(data), "w", "float32", layout, out=np.empty(layout[0], "float32"), band=band)
