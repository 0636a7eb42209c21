"""The operations a rule file writes (``ops``, ``split``, ``concat``/``stack``): validated specs that resolve themselves."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

from pydantic import ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from typing_extensions import override

from mapper.dtypes import KNOWN_DTYPES
from mapper.errors import OperationError
from mapper.ops import (
    Cast,
    Operation,
    Rearrange,
    Slice,
    SplitPart,
    Transpose,
    parse_rearrange,
    resolve_reshape,
    split_parts,
)
from mapper.rules.common import (
    SIZE_SCHEMA,
    Frozen,
    PositiveSizeInput,
    SizeInput,
    clean_message,
    closest,
    exactly_one,
    params_of,
    resolve_size,
    resolve_sizes,
    unknown_dtype_message,
)
from mapper.specs import TensorSpec, format_shape


class NeedsTargetError(OperationError):
    """An operation takes what it needs from a target (``reshape = "target"``, a rearrange size ``"target"``), and there is none.

    A conversion without a model recognises it and says what to write instead; ``shape`` and ``dtype`` are what
    the operations before it made, which is as far as the result can be known.

    Example:
        >>> error = NeedsTargetError("reshape needs a target", operation="reshape", shape=(4, 3), dtype="float32")
        >>> isinstance(error, OperationError), error.shape
        (True, (4, 3))
    """

    def __init__(self, message: str, *, operation: str, shape: tuple[int, ...], dtype: str) -> None:
        super().__init__(message, operation=operation)
        self.shape = shape
        self.dtype = dtype


def _parsed(value: str, parse: Callable[[str], object]) -> str:
    """``value`` if ``parse`` accepts it; its OperationError becomes the ValueError pydantic reports."""
    try:
        parse(value)
    except OperationError as error:
        raise ValueError(str(error)) from None
    return value


class OperationSpecBase(Frozen):
    """One entry of a rule's ``ops``: a table whose one key names the operation; it resolves itself.

    Example:
        >>> OPERATION_SPECS["transpose"].__mro__[1].__name__
        'OperationSpecBase'
    """

    @abc.abstractmethod
    def resolve(self, shape: tuple[int, ...], dtype: str, target: TensorSpec | None) -> Operation:
        """The concrete operation for a tensor of ``shape`` and ``dtype`` going to ``target`` (None: no model).

        Raises:
            OperationError: the spec cannot be made concrete for this tensor (NeedsTargetError: it needs a target).

        Example:
            >>> OPERATION_SPECS["cast"](cast="float16").resolve((2,), "float32", None)
            Cast(dtype='float16', kind='cast')
        """


class TransposeSpec(OperationSpecBase):
    """``{ transpose = [1, 0] }``: output axis i is input axis perm[i]."""

    transpose: tuple[int, ...] = Field(strict=False)

    @field_validator("transpose")
    @classmethod
    def _is_permutation(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if sorted(value) != list(range(len(value))):
            raise ValueError(
                f"transpose {list(value)} is not a permutation; list each axis 0..{len(value) - 1} once, "
                f"e.g. {list(reversed(range(len(value))))}"
            )
        return value

    @override
    def resolve(self, shape: tuple[int, ...], dtype: str, target: TensorSpec | None) -> Operation:
        """The Transpose of this permutation.

        Example:
            >>> TransposeSpec(transpose=(1, 0)).resolve((2, 3), "float32", None)
            Transpose(perm=(1, 0), kind='transpose')
        """
        return Transpose(self.transpose)


class ReshapeSpec(OperationSpecBase):
    """``{ reshape = [768, "num_heads", -1] }`` (sizes, parameter names, at most one -1) or ``{ reshape = "target" }``."""

    reshape: tuple[int, ...] | Literal["target"]

    @field_validator("reshape", mode="before", json_schema_input_type=list[SizeInput] | Literal["target"])
    @classmethod
    def _resolve(cls, value: object, info: ValidationInfo) -> object:
        return resolve_sizes(value, params_of(info), "reshape")

    @field_validator("reshape")
    @classmethod
    def _one_unknown(cls, value: tuple[int, ...] | str) -> tuple[int, ...] | str:
        if isinstance(value, tuple):
            if sum(1 for dim in value if dim == -1) > 1:
                raise ValueError(f"reshape {list(value)} has more than one -1; at most one size can be inferred")
            if any(dim < -1 or dim == 0 for dim in value):
                raise ValueError(f"reshape {list(value)}: sizes must be positive (or a single -1)")
        return value

    @override
    def resolve(self, shape: tuple[int, ...], dtype: str, target: TensorSpec | None) -> Operation:
        """The concrete Reshape for ``shape``: ``-1`` worked out, ``"target"`` taken from the target.

        Raises:
            NeedsTargetError: ``reshape = "target"`` and there is no target.

        Example:
            >>> ReshapeSpec(reshape=(2, -1)).resolve((6,), "float32", None)
            Reshape(shape=(2, 3), kind='reshape')
        """
        if self.reshape != "target":
            return resolve_reshape(self.reshape, shape)
        if target is None:
            raise NeedsTargetError('reshape = "target" needs a target', operation="reshape", shape=shape, dtype=dtype)
        return resolve_reshape(target.shape, shape)


class CastSpec(OperationSpecBase):
    """``{ cast = "float32" }`` or ``{ cast = "target" }`` (the target's dtype): change the dtype, keeping its kind."""

    cast: str = Field(json_schema_extra={"enum": [*sorted(KNOWN_DTYPES), "target"]})

    @field_validator("cast")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value != "target" and value not in KNOWN_DTYPES:
            raise ValueError(unknown_dtype_message(value))
        return value

    @override
    def resolve(self, shape: tuple[int, ...], dtype: str, target: TensorSpec | None) -> Operation:
        """The Cast to this dtype, or to the target's for ``"target"``.

        Example:
            >>> CastSpec(cast="target").resolve((2,), "float32", TensorSpec("v", (2,), "bfloat16"))
            Cast(dtype='bfloat16', kind='cast')
        """
        if self.cast != "target":
            return Cast(self.cast)
        if target is None:
            # Not a NeedsTargetError: a conversion has always let the planner report this cast.
            raise OperationError(f"cannot cast {dtype} to the target's dtype: there is no target", operation="cast")
        return Cast(target.dtype)


class SliceSpec(OperationSpecBase):
    """``{ slice = "0" }``: NumPy-style indexing of the leading axes; an index drops its axis, ``a:b`` keeps it."""

    slice: str

    @field_validator("slice")
    @classmethod
    def _parses(cls, value: str) -> str:
        return _parsed(value, Slice.parse)

    @override
    def resolve(self, shape: tuple[int, ...], dtype: str, target: TensorSpec | None) -> Operation:
        """The Slice this index text stands for.

        Example:
            >>> SliceSpec(slice="0").resolve((1, 4), "float32", None).describe()
            'slice[0]'
        """
        return Slice.parse(self.slice)


class RearrangeSpec(OperationSpecBase):
    """``{ rearrange = "(heads dim) hidden -> hidden heads dim", heads = "num_heads" }``: einops-style axes.

    Keys besides ``rearrange`` bind axis sizes, to whole numbers, parameter names, or ``"target"``: the size of
    that axis of the target (the name must be an axis of its own on the right of ``->``), which keeps a rule
    free of sizes where ``reshape = "target"`` cannot reorder, as in ``(heads dim) hidden -> heads hidden dim``.
    """

    # The axis sizes are the extra keys; the schema says what each may be.
    model_config = ConfigDict(
        frozen=True, extra="allow", strict=True, json_schema_extra={"additionalProperties": SIZE_SCHEMA}
    )

    rearrange: str

    @field_validator("rearrange")
    @classmethod
    def _parses(cls, value: str) -> str:
        return _parsed(value, parse_rearrange)

    @model_validator(mode="after")
    def _sizes(self, info: ValidationInfo) -> RearrangeSpec:
        left, right = parse_rearrange(self.rearrange)
        names = {name for group in left + right for name in group}
        sizes: dict[str, int] = {}
        from_target: dict[str, int] = {}
        for name, value in (self.model_extra or {}).items():
            if name not in names:
                raise ValueError(
                    f"rearrange binds {name!r}, which {self.rearrange!r} does not name{closest(name, sorted(names))}"
                )
            if value == "target":
                from_target[name] = _target_axis(name, right, self.rearrange)
                continue
            sizes[name] = resolve_size(value, params_of(info), f"rearrange size {name}")
            if sizes[name] <= 0:
                raise ValueError(f"rearrange size {name} = {sizes[name]} must be a positive whole number")
        private = {"sizes": tuple(sorted(sizes.items())), "from_target": tuple(sorted(from_target.items()))}
        object.__setattr__(self, "__pydantic_private__", private)
        return self

    @property
    def sizes(self) -> tuple[tuple[str, int], ...]:
        """The bound sizes, resolved."""
        private = self.__pydantic_private__ or {}
        sizes: tuple[tuple[str, int], ...] = private.get("sizes", ())
        return sizes

    @property
    def from_target(self) -> tuple[tuple[str, int], ...]:
        """The names bound to ``"target"``, each with the target axis it is read off."""
        private = self.__pydantic_private__ or {}
        names: tuple[tuple[str, int], ...] = private.get("from_target", ())
        return names

    @override
    def resolve(self, shape: tuple[int, ...], dtype: str, target: TensorSpec | None) -> Operation:
        """The Rearrange of this pattern with the bound sizes, those bound to ``"target"`` read off the target.

        Raises:
            NeedsTargetError: a size is bound to ``"target"`` and there is no target.
            OperationError: a size is bound to ``"target"`` and the target's rank is not the result's.

        Example:
            >>> RearrangeSpec(rearrange="a b -> b a").resolve((2, 3), "float32", None).describe()
            'rearrange[a b -> b a]'
            >>> spec = RearrangeSpec.model_validate({"rearrange": "(h d) c -> h c d", "h": "target"})
            >>> spec.resolve((6, 5), "float32", TensorSpec("q", (2, 5, 3), "float32")).describe()
            'rearrange[(h d) c -> h c d; h=2]'
        """
        if not self.from_target:
            return Rearrange(self.rearrange, self.sizes)
        names = ", ".join(f'{name} = "target"' for name, _ in self.from_target)
        if target is None:
            raise NeedsTargetError(
                f"rearrange {self.rearrange!r} reads {names} off a target, and there is none",
                operation="rearrange",
                shape=shape,
                dtype=dtype,
            )
        rank = len(parse_rearrange(self.rearrange)[1])
        if len(target.shape) != rank:
            raise OperationError(
                f"rearrange {self.rearrange!r} gives {rank} axes, but target {target.name!r} has shape "
                f"{format_shape(target.shape)}, so {names} cannot be read off it",
                operation="rearrange",
            )
        read = tuple((name, target.shape[axis]) for name, axis in self.from_target)
        return Rearrange(self.rearrange, tuple(sorted((*self.sizes, *read))))


def _target_axis(name: str, right: list[list[str]], pattern: str) -> int:
    """The output axis ``name`` is alone on, to read its size off the target; raises ValueError if it shares one."""
    for axis, group in enumerate(right):
        if group == [name]:
            return axis
    raise ValueError(
        f'rearrange size {name} = "target": {name!r} shares an output axis of {pattern!r} with other names, so '
        "its size cannot be read off the target; bind a whole number or a [params] name"
    )


# Adding an operation: its class in mapper.ops, its spec above, and the spec here; the key is its one field.
OperationSpec = TransposeSpec | ReshapeSpec | CastSpec | SliceSpec | RearrangeSpec
OPERATION_SPECS: Mapping[str, type[OperationSpecBase]] = {
    next(iter(spec.model_fields)): spec for spec in get_args(OperationSpec)
}
"""The operation specs by their rule-file key, in the order messages list them."""
# Keys written inside ops that belong beside it, with how the rule writes them.
_RULE_KEYS: Mapping[str, str] = {
    "split": "split = { axis = -1, parts = 3 } with targets = [...]; the rule's ops then run on each part",
    "targets": "targets = [...] with split = { axis = -1, parts = 3 }; the rule's ops then run on each part",
    "concat": 'concat = { axis = 0, by = "part", members = [...] }; the rule\'s ops then run on the joined tensor',
    "stack": 'stack = { axis = 0, by = "part", members = [...] }; the rule\'s ops then run on the joined tensor',
}
# Specs whose table may hold more keys than the one naming the operation (rearrange's axis sizes).
_OPEN_SPECS = frozenset(key for key, spec in OPERATION_SPECS.items() if spec.model_config.get("extra") == "allow")


def parse_operations(value: object, context: Any) -> object:
    """Turn the ``ops`` tables of a rule into specs, one message for all that are wrong; raises ValueError.

    Anything but a list is returned as it is, for pydantic to report its type.

    Example:
        >>> parse_operations([{"transpose": [1, 0]}], None)
        (TransposeSpec(transpose=(1, 0)),)
    """
    if not isinstance(value, (list, tuple)):
        return value
    typed: list[object] = []
    failures: list[str] = []
    for position, operation in enumerate(value, start=1):
        try:
            typed.append(_parse_operation(position, operation, context))
        except ValueError as error:
            failures.append(str(error))
    if failures:
        raise ValueError("; ".join(failures))
    return tuple(typed)


def _parse_operation(position: int, operation: object, context: Any) -> OperationSpecBase:
    kinds = [key for key in operation if key in OPERATION_SPECS] if isinstance(operation, Mapping) else []
    if not isinstance(operation, Mapping) or len(kinds) != 1 or (len(operation) > 1 and kinds[0] not in _OPEN_SPECS):
        unknown = [key for key in operation if key not in OPERATION_SPECS] if isinstance(operation, Mapping) else []
        beside = [key for key in unknown if key in _RULE_KEYS]
        if beside:
            raise ValueError(
                f"operation {position}: {' and '.join(map(repr, beside))} {'is a key' if len(beside) == 1 else 'are keys'}"
                f" of the rule, not an operation: write {beside[0]} = ... beside ops (at rule level), as in "
                f"{_RULE_KEYS[beside[0]]}"
            )
        if isinstance(operation, Mapping) and len(operation) == 1 and unknown:
            raise ValueError(
                f"operation {position}: unknown operation {unknown[0]!r}{closest(unknown[0], OPERATION_SPECS)}"
            )
        raise ValueError(
            f"operation {position} must be a table with exactly one key of {', '.join(OPERATION_SPECS)} "
            f"(rearrange may add axis sizes), such as {{ transpose = [1, 0] }}; got {operation!r}"
        )
    (key,) = kinds
    try:
        return OPERATION_SPECS[key].model_validate(operation, context=context)
    except ValidationError as error:
        detail = "; ".join(clean_message(item["msg"]) for item in error.errors())
        raise ValueError(f"operation {position} ({key}): {detail}") from None


def resolve_operations(
    specs: Sequence[OperationSpecBase], shape: tuple[int, ...], dtype: str, target: TensorSpec | None
) -> tuple[tuple[Operation, ...], tuple[int, ...], str]:
    """A rule's operations made concrete in order for a tensor of ``shape``, with the shape and dtype they give.

    Raises:
        OperationError: an operation does not fit what the ones before it make (NeedsTargetError: it needs a
            target and ``target`` is None).

    Example:
        >>> specs = [TransposeSpec(transpose=(1, 0)), ReshapeSpec(reshape="target")]
        >>> operations, shape, dtype = resolve_operations(specs, (6, 2), "float32", TensorSpec("v", (3, 4), "float32"))
        >>> [operation.describe() for operation in operations], shape
        (['transpose[1, 0]', 'reshape[3, 4]'], (3, 4))
    """
    operations: list[Operation] = []
    for spec in specs:
        operation = spec.resolve(shape, dtype, target)
        shape, dtype = operation.infer(shape, dtype)
        operations.append(operation)
    return tuple(operations), shape, dtype


class SplitSpec(Frozen):
    """``split = { axis = -1, parts = 3 }`` or ``{ axis = 0, sizes = [4096, 1024, 1024] }``: one source, several targets.

    Part ``i`` goes to ``targets[i]``; the rule's ``ops`` then apply to each part.
    """

    model_config = ConfigDict(json_schema_extra=exactly_one("parts", "sizes"))

    axis: int
    parts: int | None = Field(None, ge=1)
    sizes: tuple[int, ...] | None = Field(None, strict=False)

    @field_validator("parts", mode="before", json_schema_input_type=PositiveSizeInput | None)
    @classmethod
    def _resolve_parts(cls, value: object, info: ValidationInfo) -> object:
        return resolve_size(value, params_of(info), "split parts") if isinstance(value, str) else value

    @field_validator("sizes", mode="before", json_schema_input_type=list[SizeInput] | None)
    @classmethod
    def _resolve_sizes(cls, value: object, info: ValidationInfo) -> object:
        return resolve_sizes(value, params_of(info), "split sizes")

    @model_validator(mode="after")
    def _parts_or_sizes(self) -> SplitSpec:
        if (self.parts is None) == (self.sizes is None):
            raise ValueError("split needs exactly one of 'parts' (equal parts) or 'sizes' (a size for each part)")
        if self.sizes is not None and any(size <= 0 for size in self.sizes):
            raise ValueError(f"split sizes {list(self.sizes)} must be positive")
        return self

    @property
    def count(self) -> int:
        """How many parts."""
        return self.parts if self.parts is not None else len(self.sizes or ())

    def resolve(self, shape: tuple[int, ...]) -> list[SplitPart]:
        """The parts of a tensor of ``shape``; raises OperationError if the axis or the sizes do not fit.

        Example:
            >>> [part.describe() for part in SplitSpec(axis=-1, parts=2).resolve((3, 4))]
            ['split[axis -1, part 1/2]', 'split[axis -1, part 2/2]']
        """
        if not -len(shape) <= self.axis < len(shape):
            raise OperationError(
                f"split along axis {self.axis}: the tensor of shape {format_shape(shape)} has {len(shape)} axes",
                operation="split",
            )
        return split_parts(shape[self.axis], self.axis, parts=self.parts, sizes=self.sizes)


TARGET_COUNT = "target"  # a stack's count = "target": the target's size along the stacked axis


class CombineSpec(Frozen):
    """``concat``/``stack = { axis = 0, by = "part", members = ["query", "key", "value"] }``: several sources, one target.

    Sources matching the rule are grouped by their target name; ``by`` names the pattern group that tells
    members apart, and ``members`` (values in order) or ``count`` (0 to count - 1) says which must be present,
    each exactly once. A stack's ``count = "target"`` is the target's size along ``axis`` (experts stacked per
    layer, with no size in the file).
    """

    model_config = ConfigDict(json_schema_extra=exactly_one("members", "count"))

    axis: int
    by: str
    members: tuple[str, ...] | None = Field(None, strict=False)
    count: int | Literal["target"] | None = None

    @field_validator("count", mode="before", json_schema_input_type=PositiveSizeInput | None)
    @classmethod
    def _resolve_count(cls, value: object, info: ValidationInfo) -> object:
        if value == TARGET_COUNT or not isinstance(value, str):
            return value
        return resolve_size(value, params_of(info), "count")

    @field_validator("count")
    @classmethod
    def _positive_count(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"Input should be greater than or equal to 1 (got {value})")
        return value

    @model_validator(mode="after")
    def _members_or_count(self) -> CombineSpec:
        if (self.members is None) == (self.count is None):
            raise ValueError("give exactly one of 'members' (the values of the 'by' group, in order) or 'count'")
        if self.members is not None and len(set(self.members)) != len(self.members):
            raise ValueError(f"members {list(self.members)} lists a value twice")
        return self

    @property
    def from_target(self) -> bool:
        """Whether the count is the target's size along ``axis`` (``count = "target"``)."""
        return self.count == TARGET_COUNT

    @property
    def expected(self) -> tuple[str, ...]:
        """The member values, in order (none for ``count = "target"``, whose number the target gives)."""
        return self.members if self.members is not None else tuple(str(i) for i in range(self._fixed_count))

    @property
    def _fixed_count(self) -> int:
        return self.count if isinstance(self.count, int) else 0

    def expected_for(self, target_shape: tuple[int, ...] | None) -> tuple[str, ...] | None:
        """The member values, in order, for a target of ``target_shape``; None when the count needs it and it is None.

        Example:
            >>> spec = CombineSpec(axis=0, by="e", count="target")
            >>> spec.expected_for((3, 2, 5)), spec.expected_for(None), CombineSpec(axis=0, by="e", count=2).expected_for(None)
            (('0', '1', '2'), None, ('0', '1'))
        """
        if not self.from_target:
            return self.expected
        if target_shape is None or not -len(target_shape) <= self.axis < len(target_shape):
            return None
        return tuple(str(i) for i in range(target_shape[self.axis]))


__all__ = [
    "OPERATION_SPECS",
    "CastSpec",
    "CombineSpec",
    "NeedsTargetError",
    "OperationSpec",
    "OperationSpecBase",
    "RearrangeSpec",
    "ReshapeSpec",
    "SliceSpec",
    "SplitSpec",
    "TransposeSpec",
    "parse_operations",
    "resolve_operations",
]
