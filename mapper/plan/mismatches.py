"""Shape mismatches grouped: the same mismatch from many targets of one rule (its layers) is one problem."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from mapper.plan.messages import shape_hint
from mapper.plan.model import Problem
from mapper.specs import TensorSpec, format_shape


class MismatchKey(NamedTuple):
    """What makes two mismatches the same: the rule, the sources' shapes, the result's and the target's."""

    rule: int
    source_shapes: tuple[tuple[int, ...], ...]
    shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    shown: bool  # whether the message says what the operations make ("becomes [4, 8]")


@dataclass
class _Mismatch:
    position: int  # of its problem in the plan's problems
    members: list[tuple[tuple[TensorSpec, ...], str]]  # (sources, target) of each target that has it


@dataclass
class Mismatches:
    """The shape mismatches of one plan, by MismatchKey.

    Example:
        >>> mismatches = Mismatches()
        >>> key = MismatchKey(0, ((32,),), (32,), (4, 8), False)
        >>> spec = TensorSpec("l0/q", (32,), "float32")
        >>> mismatches.add(key, (spec,), "l0/q/kernel", position=0), mismatches.add(key, (spec,), "l1/q/kernel", position=1)
        (True, False)
    """

    found: dict[MismatchKey, _Mismatch] = field(default_factory=dict)

    def add(self, key: MismatchKey, specs: tuple[TensorSpec, ...], target: str, *, position: int) -> bool:
        """Record one target's mismatch; True when it is the first of its kind (its problem goes at ``position``)."""
        found = self.found.get(key)
        if found is not None:
            found.members.append((specs, target))
            return False
        self.found[key] = _Mismatch(position, [(specs, target)])
        return True

    def grouped(self, problems: list[Problem]) -> list[Problem]:
        """``problems`` with the problem of each mismatch that several targets share rewritten to name them all.

        Example:
            >>> Mismatches().grouped([])
            []
        """
        result = list(problems)
        for key, mismatch in self.found.items():
            if len(mismatch.members) > 1:
                earlier = result[mismatch.position]
                result[mismatch.position] = Problem(
                    earlier.kind, earlier.severity, _message(key, mismatch), earlier.rule, _names(mismatch)
                )
        return result


def _message(key: MismatchKey, mismatch: _Mismatch) -> str:
    first, target = mismatch.members[0]
    sources = (
        f"groups of sources ({', '.join(map(format_shape, key.source_shapes))})"
        if len(first) > 1
        else f"sources {format_shape(key.source_shapes[0])}"
    )
    becomes = f"become {format_shape(key.shape)} " if key.shown else ""
    label = f"source {first[0].name!r}" if len(first) == 1 else "sources " + ", ".join(repr(m.name) for m in first)
    return (
        f"{len(mismatch.members)} {sources} {becomes}but their targets are {format_shape(key.target_shape)}, "
        f"each alike (first: {label} -> target {target!r}); {shape_hint(key.shape, key.target_shape)}"
    )


def _names(mismatch: _Mismatch) -> tuple[str, ...]:
    names = [name for specs, target in mismatch.members for name in (*(member.name for member in specs), target)]
    return tuple(dict.fromkeys(names))


__all__ = ["MismatchKey", "Mismatches"]
