"""Concat and stack groups: collecting the tensors a rule joins into one target, and checking each group is whole."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mapper.ops import Combine, Concat, Stack
from mapper.rules import Rule
from mapper.specs import TensorSpec
from mapper.text import natural_key


@dataclass(frozen=True)
class Group:
    """The source tensors one join rule sends to one target, checked against the members the rule expects.

    Example:
        >>> from mapper.rules import parse_rules
        >>> rule = parse_rules('''
        ... format = 1
        ... [[rules]]
        ... match = "(?P<part>q|k)"
        ... target = "qk"
        ... concat = { axis = 0, by = "part", members = ["q", "k"] }
        ... ''').rules[0]
        >>> groups = Groups()
        >>> groups.add(0, None, "qk", "k", TensorSpec("k", (2,), "float32"))
        >>> (group,) = groups.checked([rule])
        >>> group.complete, group.complaints
        (False, ("missing part = 'q'",))
    """

    index: int
    source_id: str | None
    key: str
    combine: Combine
    expected: tuple[str, ...]
    """The member values the group needs, in order (for count = "target" with no target: the ones found)."""
    members: tuple[TensorSpec, ...]
    """In the rule's member order when the group is complete, else in the order they were found."""
    complaints: tuple[str, ...]
    """What is missing, given twice or unexpected; empty when the group is complete."""

    @property
    def complete(self) -> bool:
        """Every expected member is there exactly once, and nothing else."""
        return not self.complaints


class Groups:
    """The members of every concat/stack group found so far, by rule, source and target name.

    Example:
        >>> groups = Groups()
        >>> groups.add(0, None, "qkv", "q", TensorSpec("q", (2,), "float32"))
        >>> len(groups)
        1
    """

    def __init__(self) -> None:
        self._found: dict[tuple[int, str | None, str], list[tuple[str, TensorSpec]]] = {}

    def __len__(self) -> int:
        return len(self._found)

    def add(self, index: int, source_id: str | None, key: str, member: str, spec: TensorSpec) -> None:
        """Record that ``spec``, member ``member`` of rule ``index``'s group, renders target ``key``."""
        self._found.setdefault((index, source_id, key), []).append((member, spec))

    def checked(
        self, rules: tuple[Rule, ...] | list[Rule], shape_of: Callable[[str], tuple[int, ...] | None] | None = None
    ) -> Iterator[Group]:
        """Each group in the order it was first seen, with its members ordered and checked.

        ``shape_of`` gives a target's shape by its name, for ``count = "target"``; a group whose target shape is
        not known needs the members it has (in natural order), and its target is left to the planner to report.
        """
        for (index, source_id, key), found in self._found.items():
            rule = rules[index]
            spec = rule.combine
            if spec is None:  # pragma: no cover - only join rules add members
                continue
            by_member: dict[str, list[TensorSpec]] = {}
            for member, tensor in found:
                by_member.setdefault(member, []).append(tensor)
            expected = spec.expected_for(shape_of(key) if shape_of is not None and spec.from_target else None)
            if expected is None:
                expected = tuple(sorted(by_member, key=natural_key))
            complaints = _complaints(spec.by, expected, by_member)
            combine: Combine = Concat(spec.axis) if rule.concat is not None else Stack(spec.axis)
            members = (
                tuple(tensor for _, tensor in found)
                if complaints
                else tuple(by_member[member][0] for member in expected)
            )
            yield Group(index, source_id, key, combine, expected, members, complaints)


def _complaints(by: str, expected: tuple[str, ...], by_member: dict[str, list[TensorSpec]]) -> tuple[str, ...]:
    """What keeps a group from having each expected member exactly once."""
    missing = [member for member in expected if member not in by_member]
    complaints = []
    if missing:
        complaints.append(f"missing {by} = {', '.join(map(repr, missing))}")
    for member, tensors in by_member.items():
        if len(tensors) > 1:
            complaints.append(f"{by} = {member!r} given twice ({', '.join(t.name for t in tensors)})")
    unexpected = [member for member in by_member if member not in expected]
    if unexpected:
        complaints.append(f"unexpected {by} = {', '.join(map(repr, unexpected))}")
    return tuple(complaints)


__all__ = ["Group", "Groups"]
