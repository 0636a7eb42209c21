"""The wording of plan problems: shape hints, guard failures, how sources are named, leftovers."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mapper.plan.model import Assignment
from mapper.rules import Guard
from mapper.specs import PATH_NAMESPACE, TensorSpec, format_shape
from mapper.text import quoted


def shape_hint(shape: tuple[int, ...], target: tuple[int, ...]) -> str:
    """What to add to a rule whose result has ``shape`` where the target has ``target``.

    A reshape is suggested as ``reshape = "target"``, which takes the shape from the model and so fits every
    size of it; the shape it gives here follows, for reference.

    Example:
        >>> shape_hint((3, 2), (2, 3))
        'add { transpose = [1, 0] } to the rule\\'s ops, or a guard with on_fail = "skip"'
        >>> shape_hint((12,), (3, 4))
        'add { reshape = "target" } to the rule\\'s ops (the target\\'s shape, here [3, 4]: no sizes in the file), or a guard with on_fail = "skip"'
    """
    if sorted(shape) == sorted(target) and len(shape) == len(target):
        perm = _permutation(shape, target)
        if perm is not None:
            return f'add {{ transpose = {list(perm)} }} to the rule\'s ops, or a guard with on_fail = "skip"'
    if math.prod(shape) == math.prod(target):
        return (
            f"add {{ reshape = \"target\" }} to the rule's ops (the target's shape, here {format_shape(target)}: "
            'no sizes in the file), or a guard with on_fail = "skip"'
        )
    return 'add a guard with same_shape = true and on_fail = "skip" to leave the target at its initial value'


def _permutation(shape: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...] | None:
    remaining = list(range(len(shape)))
    perm: list[int] = []
    for size in target:
        for axis in remaining:
            if shape[axis] == size:
                perm.append(axis)
                remaining.remove(axis)
                break
        else:
            return None
    return tuple(perm)


def source_guard_failure(guard: Guard | None, members: Sequence[TensorSpec]) -> str | None:
    """Why the first member that fails the guard's source checks (rank, shape, dtype) fails, or None.

    Example:
        >>> source_guard_failure(Guard(rank=2), [TensorSpec("w", (3,), "float32")])
        'rank 1 is not 2'
    """
    if guard is None:
        return None
    return next((found for member in members if (found := _failure(guard, member)) is not None), None)


def _failure(guard: Guard, spec: TensorSpec) -> str | None:
    if guard.rank is not None and len(spec.shape) != guard.rank:
        return f"rank {len(spec.shape)} is not {guard.rank}"
    if guard.shape is not None and (
        len(guard.shape) != len(spec.shape)
        or any(want not in (-1, have) for want, have in zip(guard.shape, spec.shape, strict=True))
    ):
        return f"shape {format_shape(spec.shape)} is not {format_shape(guard.shape)}"
    if guard.dtype is not None and spec.dtype != guard.dtype:
        return f"dtype {spec.dtype} is not {guard.dtype}"
    return None


def label(specs: Sequence[TensorSpec]) -> str:
    """How a problem names one source tensor or a group's members.

    Example:
        >>> label([TensorSpec("q", (2,), "float32"), TensorSpec("k", (2,), "float32")])
        "sources 'q', 'k'"
    """
    if len(specs) == 1:
        return f"source {specs[0].name!r}"
    return f"sources {', '.join(repr(member.name) for member in specs)}"


def described(specs: Sequence[TensorSpec]) -> str:
    """The label with shapes: a group's members may differ in shape (a GQA concat), so each one's is shown.

    Example:
        >>> described([TensorSpec("w", (2, 3), "float32")])
        "source 'w' [2, 3]"
    """
    if len(specs) == 1:
        return f"{label(specs)} {format_shape(specs[0].shape)}"
    return "sources " + ", ".join(f"{member.name!r} {format_shape(member.shape)}" for member in specs)


def qualified(assignment: Assignment) -> str:
    """How a double-fill message names what an assignment fills its target from.

    Example:
        >>> from mapper.rules.ref import RuleRef
        >>> ref = RuleRef("r.toml", 1, None, "rules")
        >>> qualified(Assignment("v", "v", "w", ref, (), (2,), "float32", (2,), "float32", source_id="hf"))
        'hf:w'
    """
    names = [
        f"{assignment.source_id}:{name}" if assignment.source_id else repr(name) for name in assignment.source_names
    ]
    if assignment.combine is None:
        return names[0]
    return f"{assignment.combine.kind}({', '.join(names)})"


def unfilled_fix(namespace: str) -> str:
    """How to deal with unfilled targets, named by their Keras paths, in a file of ``namespace``.

    A keep matches names in the file's namespace, so in a ``checkpoint`` file the keep needs ``namespace = "path"``
    to match the paths the message lists.

    Example:
        >>> unfilled_fix("path")
        'map a source to {them}, or list {them} in a [[keep]] entry with a reason'
    """
    fix = "map a source to {them}, or list {them} in a [[keep]] entry with a reason"
    if namespace == PATH_NAMESPACE:
        return fix
    return (
        fix + f' and namespace = "path" (these are Keras paths; a keep in this {namespace!r}-namespace file '
        "otherwise matches checkpoint keys)"
    )


def leftovers(names: Sequence[str], what: str, fix: str) -> str:
    """The message for names a policy is about; ``{s}``, ``{their}`` and ``{them}`` in the texts agree in number.

    Example:
        >>> leftovers(["a"], "source tensor{s} matched no rule", "add a rule for {them}")
        "1 source tensor matched no rule: 'a'; add a rule for it"
    """
    plural = len(names) != 1
    words = {"s": "s" if plural else "", "their": "their" if plural else "its", "them": "them" if plural else "it"}
    return f"{len(names)} {what.format(**words)}: {quoted(names)}; {fix.format(**words)}"


__all__ = ["described", "label", "leftovers", "qualified", "shape_hint", "source_guard_failure", "unfilled_fix"]
