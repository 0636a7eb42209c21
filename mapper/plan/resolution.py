"""What a rule makes of its source tensors for one target: the join, the split part, then its operations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mapper.errors import OperationError
from mapper.ops import Combine, Operation, infer_all
from mapper.plan.messages import source_guard_failure
from mapper.rules import OperationSpec, Rule, resolve_operations
from mapper.specs import TensorSpec, format_shape

Outcome = tuple[tuple[Operation, ...], str | None]
"""The operations that fill a target, and why the rule's guard fails on them (None: it passes)."""


@dataclass(frozen=True, slots=True)
class Misfit:
    """Why what a rule makes of its sources cannot fill a target, for the planner to report with the names.

    Example:
        >>> Misfit("dtype", (2,), "int8").kind
        'dtype'
    """

    kind: Literal["operation", "shape", "dtype"]
    shape: tuple[int, ...] = ()
    """The shape the sources become (kind "shape")."""
    dtype: str = ""
    """The dtype they become (kind "dtype")."""
    error: str = ""
    """What the operation error says (kind "operation")."""
    shown: bool = False
    """Whether operations or a join changed the shape, so a report shows what it became."""


def outcome(
    rule: Rule,
    specs: Sequence[TensorSpec],
    prefix: tuple[Operation, ...],
    combine: Combine | None,
    target: TensorSpec,
) -> Outcome | Misfit:
    """What ``rule`` makes of ``specs`` (one tensor or a group's members) for ``target``, or why it cannot fill it.

    The source side of the guard decides first; a guard with ``same_shape`` turns a misfit into a failure.

    Example:
        >>> from mapper.rules import Rule
        >>> rule = Rule(match="w", target="v", ops=[{"transpose": [1, 0]}])
        >>> outcome(rule, [TensorSpec("w", (2, 3), "float32")], (), None, TensorSpec("v", (3, 2), "float32"))
        ((Transpose(perm=(1, 0), kind='transpose'),), None)
        >>> outcome(rule, [TensorSpec("w", (2, 3), "float32")], (), None, TensorSpec("v", (2, 3), "float32")).kind
        'shape'
    """
    guard = rule.guard
    same_shape = guard is not None and guard.same_shape
    failure = source_guard_failure(guard, specs)
    if failure is not None:
        return (), failure
    try:
        if combine is not None:
            check_member_dtypes(combine, specs)
        operations, shape, dtype = transformed(rule.ops, specs, prefix, combine, target)
    except OperationError as error:
        if same_shape:
            return (), f"operations do not fit: {error}"
        return Misfit("operation", error=str(error))
    if shape != target.shape:
        if same_shape:
            return operations, f"shape {format_shape(shape)} does not equal the target's {format_shape(target.shape)}"
        return Misfit("shape", shape, shown=bool(operations or combine))
    if dtype != target.dtype:
        return Misfit("dtype", dtype=dtype)
    return operations, None


class Outcomes:
    """:func:`outcome` for the rules of one plan, remembered for single tensors.

    What one tensor becomes depends only on the rule, its shape and dtype, the split part and the target's shape
    and dtype, and the layers of a model repeat those: planning a name then costs one look-up.

    Example:
        >>> from mapper.rules import Rule
        >>> outcomes = Outcomes([Rule(match="w", target="v")])
        >>> outcomes.of(0, (TensorSpec("w", (2,), "float32"),), (), None, TensorSpec("v", (2,), "float32"))
        ((), None)
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = rules
        self._known: dict[tuple[Any, ...], Outcome | Misfit] = {}
        self._passing: list[dict[tuple[Any, ...], tuple[Operation, ...]]] = [{} for _ in rules]

    def passing(self, index: int) -> Mapping[tuple[Any, ...], tuple[Operation, ...]]:
        """The operations of every outcome of rule ``index`` found so far that fills its target from one whole tensor.

        Keyed by ``(shape, dtype, target shape, target dtype)``, they are what :meth:`of` gives for a single tensor
        without a split part when the rule's guard passes (a failure, a misfit and a join are not in it). The
        mapping is live: it grows as :meth:`of` works outcomes out, so a caller may look there first.

        Example:
            >>> from mapper.rules import Rule
            >>> outcomes = Outcomes([Rule(match="w", target="v")])
            >>> _ = outcomes.of(0, (TensorSpec("w", (2,), "float32"),), (), None, TensorSpec("v", (2,), "float32"))
            >>> dict(outcomes.passing(0))
            {((2,), 'float32', (2,), 'float32'): ()}
        """
        return self._passing[index]

    def of(
        self,
        index: int,
        specs: tuple[TensorSpec, ...],
        prefix: tuple[Operation, ...],
        combine: Combine | None,
        target: TensorSpec,
    ) -> Outcome | Misfit:
        """:func:`outcome` of rule ``index``; a join's is worked out each time (it fills one target)."""
        if combine is not None:
            return outcome(self._rules[index], specs, prefix, combine, target)
        (spec,) = specs
        key = (index, spec.shape, spec.dtype, prefix, target.shape, target.dtype)
        found = self._known.get(key)
        if found is None:
            found = self._known[key] = outcome(self._rules[index], specs, prefix, None, target)
            if not prefix and not isinstance(found, Misfit) and found[1] is None:
                self._passing[index][spec.shape, spec.dtype, target.shape, target.dtype] = found[0]
        return found


def transformed(
    ops: Sequence[OperationSpec],
    members: Sequence[TensorSpec],
    prefix: tuple[Operation, ...],
    combine: Combine | None,
    target: TensorSpec | None,
) -> tuple[tuple[Operation, ...], tuple[int, ...], str]:
    """The operations (``prefix``, a split part, first) and the shape and dtype they give ``members``.

    ``members`` is one tensor, or the members of a concat/stack group in order; ``target`` is None for a
    conversion without a model.

    Raises:
        OperationError: the join or an operation does not fit (NeedsTargetError: an operation needs a target).

    Example:
        >>> from mapper.ops import Concat
        >>> from mapper.rules import TransposeSpec
        >>> members = [TensorSpec("q", (2, 4), "float32"), TensorSpec("k", (1, 4), "float32")]
        >>> transformed([TransposeSpec(transpose=(1, 0))], members, (), Concat(0), None)
        ((Transpose(perm=(1, 0), kind='transpose'),), (4, 3), 'float32')
    """
    first = members[0]
    shape, dtype = first.shape, first.dtype
    if combine is not None:
        shape, dtype = combine.infer([member.shape for member in members], dtype)
    shape, dtype = infer_all(prefix, shape, dtype)
    resolved, shape, dtype = resolve_operations(ops, shape, dtype, target)
    return (*prefix, *resolved), shape, dtype


def check_member_dtypes(combine: Combine, members: Sequence[TensorSpec]) -> None:
    """Raise OperationError unless the members of a group share one dtype.

    Example:
        >>> from mapper.ops import Stack
        >>> check_member_dtypes(Stack(0), [TensorSpec("a", (2,), "int8"), TensorSpec("b", (2,), "float32")])
        Traceback (most recent call last):
        ...
        mapper.errors.OperationError: cannot stack members of different dtypes ('a' int8, 'b' float32): the members of a group must share one dtype
    """
    if len({member.dtype for member in members}) > 1:
        raise OperationError(
            f"cannot {combine.kind} members of different dtypes "
            f"({', '.join(f'{member.name!r} {member.dtype}' for member in members)}): the members "
            "of a group must share one dtype",
            operation=combine.kind,
        )


__all__ = ["Misfit", "Outcome", "Outcomes", "check_member_dtypes", "outcome", "transformed"]
