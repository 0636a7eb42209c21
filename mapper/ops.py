"""Tensor operations of a plan: each infers its result from shapes alone, applies itself on a backend and describes itself."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mapper.dtypes import castable, numpy_dtype
from mapper.errors import OperationError
from mapper.specs import format_shape


@dataclass(frozen=True, slots=True)
class Transpose:
    """Permute axes: output axis ``i`` is input axis ``perm[i]``.

    Example:
        >>> Transpose((1, 0)).infer((768, 3072), "float32")
        ((3072, 768), 'float32')
    """

    perm: tuple[int, ...]
    kind: Literal["transpose"] = "transpose"

    def infer(self, shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], str]:
        """Shape and dtype after the operation; raises OperationError if it does not fit."""
        if sorted(self.perm) != list(range(len(shape))):
            raise OperationError(
                f"transpose {list(self.perm)} is not a permutation of the {len(shape)} axes of a "
                f"tensor of shape {format_shape(shape)}; use a permutation of {list(range(len(shape)))}",
                operation="transpose",
            )
        return tuple(shape[axis] for axis in self.perm), dtype

    def apply(self, value: Any, backend: ArrayBackend) -> Any:
        """The operation applied to ``value`` with the backend's array functions."""
        return backend.transpose(value, self.perm)

    def describe(self) -> str:
        """Short human form, as reports show it."""
        return f"transpose{list(self.perm)}"


@dataclass(frozen=True, slots=True)
class Reshape:
    """Reshape to a concrete shape with the same number of elements.

    Example:
        >>> Reshape((768, 12, 64)).infer((768, 768), "float32")
        ((768, 12, 64), 'float32')
    """

    shape: tuple[int, ...]
    kind: Literal["reshape"] = "reshape"

    def infer(self, shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], str]:
        """Shape and dtype after the operation; raises OperationError if it does not fit."""
        if math.prod(shape) != math.prod(self.shape):
            raise OperationError(
                f"cannot reshape {format_shape(shape)} ({math.prod(shape)} elements) into "
                f"{format_shape(self.shape)} ({math.prod(self.shape)} elements)",
                operation="reshape",
            )
        return self.shape, dtype

    def apply(self, value: Any, backend: ArrayBackend) -> Any:
        """The operation applied to ``value`` with the backend's array functions."""
        return backend.reshape(value, self.shape)

    def describe(self) -> str:
        """Short human form, as reports show it."""
        return f"reshape{format_shape(self.shape)}"


@dataclass(frozen=True, slots=True)
class Cast:
    """Change the dtype; only casts that keep the value's kind are allowed (see ``castable``).

    Example:
        >>> Cast("bfloat16").infer((4,), "float32")
        ((4,), 'bfloat16')
    """

    dtype: str
    kind: Literal["cast"] = "cast"

    def infer(self, shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], str]:
        """Shape and dtype after the operation; raises OperationError if it does not fit."""
        if not castable(dtype, self.dtype):
            raise OperationError(
                f"cannot cast {dtype} to {self.dtype}: the value would change kind, not just precision",
                operation="cast",
            )
        return shape, self.dtype

    def apply(self, value: Any, backend: ArrayBackend) -> Any:
        """The operation applied to ``value`` with the backend's array functions."""
        return backend.cast(value, self.dtype)

    def describe(self) -> str:
        """Short human form, as reports show it."""
        return f"cast[{self.dtype}]"


SliceItem = int | tuple[int | None, int | None, int | None]


@dataclass(frozen=True, slots=True)
class Slice:
    """Index the leading axes like NumPy basic indexing: an int drops its axis, a slice keeps it.

    ``items`` holds one entry per leading axis: an int, or ``(start, stop, step)`` with None for
    "from the start", "to the end" and step 1.

    Example:
        >>> Slice((0,)).infer((1, 17, 768), "float32")
        ((17, 768), 'float32')
        >>> Slice.parse("0, 1:3").describe()
        'slice[0, 1:3]'
    """

    items: tuple[SliceItem, ...]
    kind: Literal["slice"] = "slice"

    @classmethod
    def parse(cls, text: str) -> Slice:
        """Parse NumPy-style index text such as ``"0"``, ``":, 1:5"`` or ``"::2"``; raises OperationError."""
        items: list[SliceItem] = []
        for raw in text.split(","):
            part = raw.strip()
            try:
                if ":" in part:
                    pieces = [piece.strip() for piece in part.split(":")]
                    if len(pieces) > 3:
                        raise ValueError(part)
                    numbers = [int(piece) if piece else None for piece in pieces] + [None] * (3 - len(pieces))
                    if numbers[2] == 0:
                        raise ValueError(part)
                    items.append((numbers[0], numbers[1], numbers[2]))
                else:
                    items.append(int(part))
            except ValueError:
                raise OperationError(
                    f'slice {text!r}: {part!r} is not an index or a start:stop:step slice; write e.g. "0" or ":, 1:5"',
                    operation="slice",
                ) from None
        return cls(tuple(items))

    def index(self) -> tuple[int | slice, ...]:
        """The index tuple for ``array[...]``."""
        return tuple(item if isinstance(item, int) else slice(*item) for item in self.items)

    def infer(self, shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], str]:
        """Shape and dtype after the operation; raises OperationError if it does not fit."""
        if len(self.items) > len(shape):
            raise OperationError(
                f"{self.describe()} indexes {len(self.items)} axes, but the tensor of shape {format_shape(shape)} "
                f"has {len(shape)}",
                operation="slice",
            )
        result: list[int] = []
        for item, size in zip(self.items, shape, strict=False):
            if isinstance(item, int):
                if not -size <= item < size:
                    raise OperationError(
                        f"{self.describe()}: index {item} is out of range for an axis of size {size} "
                        f"(shape {format_shape(shape)})",
                        operation="slice",
                    )
                continue
            result.append(len(range(*slice(*item).indices(size))))
        return (*result, *shape[len(self.items) :]), dtype

    def apply(self, value: Any, backend: ArrayBackend) -> Any:  # noqa: ARG002 - indexing needs no backend function
        """The operation applied to ``value``: basic indexing, which every backend's arrays support."""
        return value[self.index()]

    def describe(self) -> str:
        """Short human form, as reports show it."""
        return f"slice[{', '.join(_item_text(item) for item in self.items)}]"


def _item_text(item: SliceItem) -> str:
    if isinstance(item, int):
        return str(item)
    start, stop, step = item
    text = f"{'' if start is None else start}:{'' if stop is None else stop}"
    return text + (f":{step}" if step not in (None, 1) else "")


@dataclass(frozen=True, slots=True)
class SplitPart:
    """Part ``part`` (0-based) of a tensor split along ``axis``: the elements ``start:stop`` of that axis.

    Example:
        >>> SplitPart(axis=-1, part=1, parts=3, start=4, stop=8).infer((4, 12), "float32")
        ((4, 4), 'float32')
    """

    axis: int
    part: int
    parts: int
    start: int
    stop: int
    kind: Literal["split"] = "split"

    def index(self, rank: int) -> tuple[slice, ...]:
        """The index tuple that selects this part of a tensor of rank ``rank``."""
        axis = self.axis % rank
        return (*([slice(None)] * axis), slice(self.start, self.stop))

    def infer(self, shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], str]:
        """Shape and dtype after the operation; raises OperationError if it does not fit."""
        if not -len(shape) <= self.axis < len(shape):
            raise OperationError(
                f"split along axis {self.axis}: the tensor of shape {format_shape(shape)} has {len(shape)} axes",
                operation="split",
            )
        axis = self.axis % len(shape)
        if self.stop > shape[axis]:
            raise OperationError(
                f"split part {self.part + 1} of {self.parts} ends at {self.stop}, past axis {self.axis} of size "
                f"{shape[axis]} (shape {format_shape(shape)})",
                operation="split",
            )
        return (*shape[:axis], self.stop - self.start, *shape[axis + 1 :]), dtype

    def apply(self, value: Any, backend: ArrayBackend) -> Any:  # noqa: ARG002 - indexing needs no backend function
        """The operation applied to ``value``: basic indexing, which every backend's arrays support."""
        return value[self.index(len(value.shape))]

    def describe(self) -> str:
        """Short human form, as reports show it."""
        return f"split[axis {self.axis}, part {self.part + 1}/{self.parts}]"


def split_parts(
    size: int, axis: int, *, parts: int | None = None, sizes: Sequence[int] | None = None
) -> list[SplitPart]:
    """The parts of splitting an axis of ``size`` into ``parts`` equal parts or parts of the given ``sizes``.

    Example:
        >>> [(part.start, part.stop) for part in split_parts(12, -1, parts=3)]
        [(0, 4), (4, 8), (8, 12)]
        >>> [(part.start, part.stop) for part in split_parts(12, 0, sizes=[8, 2, 2])]
        [(0, 8), (8, 10), (10, 12)]
    """
    if sizes is None:
        count = parts or 1
        if size % count:
            raise OperationError(
                f"cannot split an axis of size {size} into {count} equal parts: {size} is not a multiple of {count}; "
                "give the part sizes with sizes = [...]",
                operation="split",
            )
        sizes = [size // count] * count
    elif sum(sizes) != size:
        raise OperationError(
            f"split sizes {list(sizes)} add up to {sum(sizes)}, but the axis has size {size}", operation="split"
        )
    result: list[SplitPart] = []
    start = 0
    for part, length in enumerate(sizes):
        result.append(SplitPart(axis, part, len(sizes), start, start + length))
        start += length
    return result


@dataclass(frozen=True, slots=True)
class Rearrange:
    """An einops-style axis rearrangement: ``"(heads dim) hidden -> hidden heads dim"`` with bound ``sizes``.

    Axes in parentheses are split (on the left) or merged (on the right); every name appears once on each
    side. Sizes that cannot be read off the input shape come from ``sizes``.

    Example:
        >>> op = Rearrange("(heads dim) hidden -> hidden heads dim", (("heads", 2),))
        >>> op.infer((8, 6), "float32")
        ((6, 2, 4), 'float32')
    """

    pattern: str
    sizes: tuple[tuple[str, int], ...] = ()
    kind: Literal["rearrange"] = "rearrange"

    def plan(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """The lowering: ``(reshape to, transpose perm, reshape to)``; raises OperationError if it does not fit."""
        left, right = parse_rearrange(self.pattern)
        if len(left) != len(shape):
            raise OperationError(
                f"rearrange {self.pattern!r} expects {len(left)} input axes, but the tensor has shape {format_shape(shape)}",
                operation="rearrange",
            )
        known = dict(self.sizes)
        for name, size in self.sizes:
            if size <= 0:
                raise OperationError(
                    f"rearrange {self.pattern!r}: size {name} = {size} must be a positive whole number",
                    operation="rearrange",
                )
        for group, size in zip(left, shape, strict=True):
            unknown = [name for name in group if name not in known]
            bound = math.prod(known[name] for name in group if name in known)
            if len(unknown) > 1:
                raise OperationError(
                    f"rearrange {self.pattern!r}: cannot tell the sizes of {' and '.join(unknown)} from an axis of "
                    f"size {size}; bind all but one, e.g. {unknown[0]} = N",
                    operation="rearrange",
                )
            if unknown:
                if bound == 0 or size % bound:
                    raise OperationError(
                        f"rearrange {self.pattern!r}: axis of size {size} cannot hold ({' '.join(group)}) with the "
                        f"bound sizes {[known[name] for name in group if name in known]}",
                        operation="rearrange",
                    )
                known[unknown[0]] = size // bound
            elif bound != size:
                raise OperationError(
                    f"rearrange {self.pattern!r}: ({' '.join(group)}) has size {bound}, but the axis has size {size}",
                    operation="rearrange",
                )
        flat_left = [name for group in left for name in group]
        flat_right = [name for group in right for name in group]
        split_shape = tuple(known[name] for name in flat_left)
        perm = tuple(flat_left.index(name) for name in flat_right)
        merged = tuple(math.prod(known[name] for name in group) for group in right)
        return split_shape, perm, merged

    def infer(self, shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], str]:
        """Shape and dtype after the operation; raises OperationError if it does not fit."""
        return self.plan(shape)[2], dtype

    def apply(self, value: Any, backend: ArrayBackend) -> Any:
        """The operation applied to ``value`` with the backend's array functions: reshape, transpose, reshape."""
        split_shape, perm, merged = self.plan(tuple(int(dim) for dim in value.shape))
        return backend.reshape(backend.transpose(backend.reshape(value, split_shape), perm), merged)

    def describe(self) -> str:
        """Short human form, as reports show it."""
        bound = ", ".join(f"{name}={size}" for name, size in self.sizes)
        return f"rearrange[{self.pattern}{'; ' + bound if bound else ''}]"


def parse_rearrange(pattern: str) -> tuple[list[list[str]], list[list[str]]]:
    """Parse ``"(a b) c -> c a b"`` into the axis groups of each side; raises OperationError.

    Example:
        >>> parse_rearrange("(heads dim) hidden -> hidden heads dim")
        ([['heads', 'dim'], ['hidden']], [['hidden'], ['heads'], ['dim']])
    """
    if pattern.count("->") != 1:
        raise OperationError(f"rearrange {pattern!r} needs exactly one '->'", operation="rearrange")
    sides = [_parse_side(side, pattern) for side in pattern.split("->")]
    left, right = sides
    flat_left = [name for group in left for name in group]
    flat_right = [name for group in right for name in group]
    for flat, label in ((flat_left, "left"), (flat_right, "right")):
        repeated = sorted({name for name in flat if flat.count(name) > 1})
        if repeated:
            raise OperationError(
                f"rearrange {pattern!r}: {', '.join(repeated)} appears twice on the {label}", operation="rearrange"
            )
    if set(flat_left) != set(flat_right):
        missing = sorted(set(flat_left) ^ set(flat_right))
        raise OperationError(
            f"rearrange {pattern!r}: {', '.join(missing)} must appear on both sides", operation="rearrange"
        )
    return left, right


def _parse_side(side: str, pattern: str) -> list[list[str]]:
    groups: list[list[str]] = []
    current: list[str] | None = None
    for token in side.replace("(", " ( ").replace(")", " ) ").split():
        if token == "(":
            if current is not None:
                raise OperationError(f"rearrange {pattern!r}: nested parentheses", operation="rearrange")
            current = []
        elif token == ")":
            if current is None or not current:
                raise OperationError(f"rearrange {pattern!r}: unbalanced or empty parentheses", operation="rearrange")
            groups.append(current)
            current = None
        elif token.isidentifier():
            if current is None:
                groups.append([token])
            else:
                current.append(token)
        else:
            raise OperationError(
                f"rearrange {pattern!r}: {token!r} is not an axis name (letters, digits, '_')", operation="rearrange"
            )
    if current is not None:
        raise OperationError(f"rearrange {pattern!r}: unclosed parenthesis", operation="rearrange")
    return groups


Operation = Transpose | Reshape | Cast | Slice | SplitPart | Rearrange


@dataclass(frozen=True, slots=True)
class Concat:
    """Join several source tensors along an existing axis (applied before a rule's operations).

    Example:
        >>> Concat(0).infer([(2, 4), (1, 4)], "float32")
        ((3, 4), 'float32')
    """

    axis: int
    kind: Literal["concat"] = "concat"

    def infer(self, shapes: Sequence[tuple[int, ...]], dtype: str) -> tuple[tuple[int, ...], str]:
        """Shape of the joined tensor; raises OperationError if the members do not fit together."""
        first = shapes[0]
        if not -len(first) <= self.axis < len(first):
            raise OperationError(
                f"concat along axis {self.axis}: the members have {len(first)} axes", operation="concat"
            )
        axis = self.axis % len(first)
        for shape in shapes[1:]:
            if len(shape) != len(first) or any(
                a != b for i, (a, b) in enumerate(zip(shape, first, strict=True)) if i != axis
            ):
                raise OperationError(
                    f"cannot concat {' and '.join(format_shape(s) for s in (first, shape))} along axis {self.axis}: "
                    "every other axis must agree",
                    operation="concat",
                )
        return (*first[:axis], sum(shape[axis] for shape in shapes), *first[axis + 1 :]), dtype

    def apply(self, values: Sequence[Any], backend: ArrayBackend) -> Any:
        """The members joined with the backend's array functions."""
        return backend.concat(list(values), self.axis)

    def describe(self) -> str:
        """Short human form, as reports show it."""
        return f"concat[axis {self.axis}]"


@dataclass(frozen=True, slots=True)
class Stack:
    """Stack several equally shaped source tensors along a new axis (applied before a rule's operations).

    Example:
        >>> Stack(0).infer([(2, 4), (2, 4), (2, 4)], "float32")
        ((3, 2, 4), 'float32')
    """

    axis: int
    kind: Literal["stack"] = "stack"

    def infer(self, shapes: Sequence[tuple[int, ...]], dtype: str) -> tuple[tuple[int, ...], str]:
        """Shape of the stacked tensor; raises OperationError if the members differ in shape."""
        first = shapes[0]
        different = [shape for shape in shapes if shape != first]
        if different:
            raise OperationError(
                f"cannot stack {format_shape(first)} with {format_shape(different[0])}: members must have one shape",
                operation="stack",
            )
        if not -len(first) - 1 <= self.axis <= len(first):
            raise OperationError(
                f"stack along axis {self.axis}: the result has {len(first) + 1} axes", operation="stack"
            )
        axis = self.axis % (len(first) + 1)
        return (*first[:axis], len(shapes), *first[axis:]), dtype

    def apply(self, values: Sequence[Any], backend: ArrayBackend) -> Any:
        """The members joined with the backend's array functions."""
        return backend.stack(list(values), self.axis)

    def describe(self) -> str:
        """Short human form, as reports show it."""
        return f"stack[axis {self.axis}]"


Combine = Concat | Stack


def resolve_reshape(requested: Sequence[int], shape: tuple[int, ...]) -> Reshape:
    """Turn a requested shape with at most one ``-1`` into a concrete Reshape for ``shape``.

    Example:
        >>> resolve_reshape([768, -1, 64], (768, 768))
        Reshape(shape=(768, 12, 64), kind='reshape')
    """
    unknown = [index for index, dim in enumerate(requested) if dim == -1]
    if len(unknown) > 1 or any(dim < -1 or (dim == 0 and math.prod(shape) != 0) for dim in requested):
        raise OperationError(
            f"reshape {list(requested)}: dimensions must be positive, with at most one -1",
            operation="reshape",
        )
    if not unknown:
        return Reshape(tuple(requested))
    known = math.prod(dim for dim in requested if dim != -1)
    total = math.prod(shape)
    if known == 0 or total % known:
        raise OperationError(
            f"cannot reshape {format_shape(shape)} ({total} elements) into {list(requested)}: "
            f"{total} is not a multiple of {known}",
            operation="reshape",
        )
    return Reshape(tuple(total // known if dim == -1 else dim for dim in requested))


def infer_all(operations: Sequence[Operation], shape: tuple[int, ...], dtype: str) -> tuple[tuple[int, ...], str]:
    """Shape and dtype after applying ``operations`` in order.

    Example:
        >>> infer_all([Transpose((1, 0)), Reshape((2, 3, 2))], (6, 2), "float32")
        ((2, 3, 2), 'float32')
    """
    for operation in operations:
        shape, dtype = operation.infer(shape, dtype)
    return shape, dtype


class ArrayBackend:
    """The four array functions operations need; ``NUMPY`` here, a TensorFlow one in the executor.

    Example:
        >>> import numpy as np
        >>> NUMPY.transpose(np.zeros((2, 3)), (1, 0)).shape
        (3, 2)
    """

    def __init__(
        self,
        *,
        transpose: Any,
        reshape: Any,
        cast: Any,
        concat: Any,
        stack: Any,
    ) -> None:
        self.transpose = transpose
        self.reshape = reshape
        self.cast = cast
        self.concat = concat
        self.stack = stack


def _numpy_backend() -> ArrayBackend:
    return ArrayBackend(
        transpose=np.transpose,
        reshape=np.reshape,
        cast=lambda array, dtype: array.astype(numpy_dtype(dtype)),
        concat=lambda arrays, axis: np.concatenate(arrays, axis=axis),
        stack=lambda arrays, axis: np.stack(arrays, axis=axis),
    )


def apply_operations(operations: Sequence[Operation], value: Any, backend: ArrayBackend) -> Any:
    """Apply ``operations`` in order to ``value`` with the backend's functions (slicing uses ``value[...]``).

    Example:
        >>> import numpy as np
        >>> apply_operations([Rearrange("(h d) c -> c h d", (("h", 2),))], np.arange(12).reshape(4, 3), NUMPY).shape
        (3, 2, 2)
    """
    for operation in operations:
        value = operation.apply(value, backend)
    return value


def combine_values(combine: Combine, values: Sequence[Any], backend: ArrayBackend) -> Any:
    """Join member tensors with a Concat or Stack.

    Example:
        >>> import numpy as np
        >>> combine_values(Stack(0), [np.zeros(2), np.ones(2)], NUMPY).shape
        (2, 2)
    """
    return combine.apply(values, backend)


def apply_numpy(operations: Sequence[Operation], array: np.ndarray) -> np.ndarray:
    """Apply ``operations`` to a NumPy array (bfloat16 and float8 through ml_dtypes).

    Example:
        >>> import numpy as np
        >>> apply_numpy([Transpose((1, 0))], np.arange(6).reshape(2, 3)).shape
        (3, 2)
    """
    result: np.ndarray = apply_operations(operations, array, NUMPY)
    return result


NUMPY: ArrayBackend = _numpy_backend()
