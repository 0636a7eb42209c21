"""The inverse of a plan: how a model's variables give back the source's tensors, under their names, shapes and dtypes.

A Plan says, for every target variable, which source tensor fills it and through which operations. Run
backwards, each assignment gives its source tensor back from the variable: the inverse of each operation, in
reverse order. Renames, transposes, reshapes, lossless casts, slices that drop only length-1 axes, a split's parts
(concatenated again), a concat's or stack's members (split or indexed out again) and rearranges all invert
exactly. What does not invert is said per rule with the reason: a cast back that would round (unless the rule
file's ``[export] lossy_casts = "allow"``), a slice that drops values, a split with a part missing, two variables
giving one source name. A slice that keeps one block of each leading axis (RoBERTa's position table) is undone
when ``[[export.restore]]`` declares the tensor: the model gives the block, the ``--like`` checkpoint the rest
(``ExportTensor.restore``). Source tensors the plan skips are not written (``dropped``), except the ones
``[[export.tied]]`` declares copies of an exported tensor and the ones ``[[export.restore]]`` declares, copied whole
from ``--like``. Pure: no tensor is read.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mapper.errors import OperationError, PlanError
from mapper.ops import Combine, Concat, Operation, Slice, SplitPart, infer_all
from mapper.plan.model import Assignment, Plan, Skip
from mapper.plan.restore import Restored, restore_operations
from mapper.plan.undo import exact_cast, inverse_operation, inverse_operations, rounds
from mapper.rules.export import ExportSection
from mapper.rules.ref import RuleRef
from mapper.specs import TensorSpec, format_shape
from mapper.text import plural, quoted


@dataclass(frozen=True, slots=True)
class Piece:
    """One model variable, and the operations that turn its value into (a part of) a source tensor.

    Example:
        >>> from mapper.ops import Transpose
        >>> Piece("dense/kernel", (Transpose((1, 0)),)).variable
        'dense/kernel'
    """

    variable: str
    operations: tuple[Operation, ...] = ()


@dataclass(frozen=True, slots=True)
class ExportTensor:
    """One source tensor an export writes: its pieces, joined by ``combine`` when there are several.

    ``copy_of`` names the exported tensor a tied one repeats (its pieces are then that tensor's). ``restore``, when
    set, says the pieces give only a block of the tensor, and the rest comes from the ``--like`` checkpoint; a
    tensor the import skips has no pieces, and comes whole from there (``restore.whole``).

    Example:
        >>> t = ExportTensor("w", (2,), "float32", (Piece("v"),), RuleRef("r.toml", 1))
        >>> t.spec
        TensorSpec(name='w', shape=(2,), dtype='float32')
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    pieces: tuple[Piece, ...]
    rule: RuleRef | None
    combine: Combine | None = None
    copy_of: str | None = None
    restore: Restored | None = None

    @property
    def spec(self) -> TensorSpec:
        """Name, shape and dtype, as a writer declares them."""
        return TensorSpec(self.name, self.shape, self.dtype)

    @property
    def variables(self) -> tuple[str, ...]:
        """The model variables this tensor is made from."""
        return tuple(piece.variable for piece in self.pieces)


@dataclass(frozen=True, slots=True)
class Left:
    """A source tensor an export does not write, or a model variable it does not export, with the reason.

    Example:
        >>> Left("cls.predictions.bias", "pretraining heads", RuleRef("r.toml", 18)).name
        'cls.predictions.bias'
    """

    name: str
    reason: str
    rule: RuleRef | None = None


@dataclass(frozen=True, slots=True)
class Blocker:
    """Why (part of) a plan cannot be run backwards: the rule, the names, and what to change.

    Example:
        >>> print(Blocker(RuleRef("r.toml", 2, "kernels"), ("w",), "a cast back rounds"))
        r.toml rule 2 ('kernels'): a cast back rounds (for 'w')
    """

    rule: RuleRef | None
    names: tuple[str, ...]
    reason: str

    def __str__(self) -> str:
        where = f"{self.rule}: " if self.rule is not None else ""
        return f"{where}{self.reason} (for {quoted(self.names)})"


@dataclass(frozen=True)
class Inverse:
    """The plan run backwards: every source tensor an export writes, what it leaves out, and what blocks it.

    Example:
        >>> inverse = Inverse(plan_source="ckpt", plan_target="model")
        >>> inverse.ok, inverse.specs
        (True, ())
    """

    plan_source: str
    plan_target: str
    tensors: tuple[ExportTensor, ...] = ()
    dropped: tuple[Left, ...] = ()  # source tensors the plan skips, so the export does not write them
    not_exported: tuple[Left, ...] = ()  # model variables no source tensor comes from (kept, or left unfilled)
    blockers: tuple[Blocker, ...] = ()
    rounded: tuple[str, ...] = ()  # variables whose cast back rounds (lossy casts allowed): exact only for values
    # that came from the source's dtype
    _by_name: dict[str, ExportTensor] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {tensor.name: tensor for tensor in self.tensors})

    @property
    def ok(self) -> bool:
        """True when nothing blocks the export."""
        return not self.blockers

    @property
    def specs(self) -> tuple[TensorSpec, ...]:
        """The spec of every tensor an export writes, in order."""
        return tuple(tensor.spec for tensor in self.tensors)

    @property
    def restored(self) -> tuple[str, ...]:
        """The tensors an export writes in part or whole from the ``--like`` checkpoint (``[[export.restore]]``)."""
        return tuple(tensor.name for tensor in self.tensors if tensor.restore is not None)

    def tensor(self, name: str) -> ExportTensor | None:
        """The export of source name ``name``, if the export writes it."""
        return self._by_name.get(name)

    def summary(self) -> str:
        """One line: how many tensors are written, dropped, left out, and what blocks.

        Example:
            >>> Inverse(plan_source="ckpt", plan_target="m").summary()
            'inverse of ckpt -> m: 0 tensors written, 0 dropped, 0 variables not exported, invertible'
        """
        verdict = "invertible" if self.ok else f"{plural(len(self.blockers), 'blocker')}"
        whole = sum(1 for tensor in self.tensors if tensor.restore is not None and tensor.restore.whole)
        counts = [
            f"{count} {how}" for count, how in ((len(self.restored) - whole, "in part"), (whole, "whole")) if count
        ]
        restored = f" ({', '.join(counts)} from --like)" if counts else ""
        return (
            f"inverse of {self.plan_source} -> {self.plan_target}: {plural(len(self.tensors), 'tensor')} written"
            f"{restored}, {len(self.dropped)} dropped, {plural(len(self.not_exported), 'variable')} not exported, "
            f"{verdict}"
        )


class NotInvertibleError(PlanError):
    """A plan that cannot be run backwards was asked to export; ``blockers`` names each rule in the way and why.

    Example:
        >>> error = NotInvertibleError.of(Inverse("ckpt", "model", blockers=(Blocker(None, ("w",), "lossy"),)))
        >>> str(error).splitlines()[0]
        'cannot export model to the names of ckpt: 1 blocker'
    """

    @classmethod
    def of(cls, inverse: Inverse, *, shown: int = 50) -> NotInvertibleError:
        """The error for ``inverse``'s blockers, the first ``shown`` of them listed."""
        blockers = inverse.blockers
        listed = "".join(f"\n  - {blocker}" for blocker in blockers[:shown])
        more = f"\n  ... and {len(blockers) - shown} more" if len(blockers) > shown else ""
        return cls(
            f"cannot export {inverse.plan_target} to the names of {inverse.plan_source}: "
            f"{plural(len(blockers), 'blocker')}{listed}{more}\nnothing was written",
            problems=blockers,
            plan=inverse,
        )


# --- inverting a plan -------------------------------------------------------------------------------------------


def _joined_shape(assignment: Assignment) -> tuple[int, ...]:
    if assignment.join is None:
        return assignment.source_shape
    return assignment.join.combine.infer(list(assignment.source_shapes), assignment.source_dtype)[0]


def _member_pick(combine: Combine, position: int, shapes: Sequence[tuple[int, ...]]) -> Operation:
    """The operation taking member ``position`` out of the joined tensor again."""
    if isinstance(combine, Concat):
        axis = combine.axis % len(shapes[0])
        start = sum(shape[axis] for shape in shapes[:position])
        return SplitPart(combine.axis, position, len(shapes), start, start + shapes[position][axis])
    axis = combine.axis % (len(shapes[0]) + 1)
    return Slice(((None, None, None),) * axis + (position,))


class _Builder:
    """Collects the tensors, what is left and the blockers while a plan is inverted."""

    def __init__(self, lossy: bool, section: ExportSection) -> None:
        self.lossy = lossy
        self.section = section
        self.rounded: list[str] = []
        self.tensors: list[ExportTensor] = []
        self.blockers: list[Blocker] = []

    def block(self, rule: RuleRef | None, names: Sequence[str], reason: str) -> None:
        self.blockers.append(Blocker(rule, tuple(names), reason))

    def undo(
        self, assignment: Assignment, operations: Sequence[Operation], shape: tuple[int, ...]
    ) -> tuple[Operation, ...] | None:
        try:
            undone = inverse_operations(operations, shape, assignment.source_dtype, lossy=self.lossy)
        except OperationError as error:
            self.block(assignment.rule, (assignment.target,), str(error))
            return None
        if rounds(operations, assignment.source_dtype):
            self.rounded.append(assignment.target)
        return undone

    def whole(self, assignment: Assignment) -> tuple[tuple[Operation, ...], Restored | None] | None:
        """A tensor one rule reads whole, undone; what its slice drops restored from --like if [[export.restore]] asks."""
        operations, shape, dtype = assignment.operations, assignment.source_shape, assignment.source_dtype
        entry = self.section.restore_for(assignment.source)
        restored = None
        try:
            undone = inverse_operations(operations, shape, dtype, lossy=self.lossy)
        except OperationError as error:
            if entry is None or error.operation != "slice":
                self.block(assignment.rule, (assignment.target,), str(error))
                return None
            try:
                undone, region = restore_operations(operations, shape, dtype, lossy=self.lossy)
            except OperationError as failed:
                self.block(assignment.rule, (assignment.target,), str(failed))
                return None
            restored = Restored(assignment.source, region, entry.reason)
        if rounds(operations, dtype):
            self.rounded.append(assignment.target)
        return undone, restored

    def single(self, assignment: Assignment) -> None:
        """A variable from one tensor, or from the members of a join."""
        if assignment.join is None:
            found = self.whole(assignment)
            if found is not None:
                self.tensors.append(
                    ExportTensor(
                        assignment.source,
                        assignment.source_shape,
                        assignment.source_dtype,
                        (Piece(assignment.target, found[0]),),
                        assignment.rule,
                        restore=found[1],
                    )
                )
            return
        undone = self.undo(assignment, assignment.operations, _joined_shape(assignment))
        if undone is None:
            return
        shapes = assignment.source_shapes
        for position, (name, shape) in enumerate(zip(assignment.source_names, shapes, strict=True)):
            pick = _member_pick(assignment.join.combine, position, shapes)
            self.tensors.append(
                ExportTensor(
                    name, shape, assignment.source_dtype, (Piece(assignment.target, (*undone, pick)),), assignment.rule
                )
            )

    def split(self, parts: list[Assignment]) -> None:
        """The variables a split filled from one tensor: each undone to its part, then concatenated in order."""
        first = parts[0]
        ordered = sorted(parts, key=lambda a: a.operations[0].part)  # type: ignore[union-attr]
        splits = [a.operations[0] for a in ordered]
        count = splits[0].parts  # type: ignore[union-attr]
        numbers = [split.part for split in splits]  # type: ignore[union-attr]
        if numbers != list(range(count)):
            missing = sorted(set(range(count)) - set(numbers))
            self.block(
                first.rule,
                [a.target for a in ordered],
                f"the import splits {first.source!r} into {count} parts, but the plan fills only "
                f"{len(set(numbers))} (part {', '.join(str(n + 1) for n in missing) or 'twice'} missing), so the "
                "tensor cannot be joined again",
            )
            return
        pieces: list[Piece] = []
        for assignment, split in zip(ordered, splits, strict=True):
            part_shape, _ = split.infer(assignment.source_shape, assignment.source_dtype)
            undone = self.undo(assignment, assignment.operations[1:], part_shape)
            if undone is None:
                return
            pieces.append(Piece(assignment.target, undone))
        axis = splits[0].axis  # type: ignore[union-attr]
        self.tensors.append(
            ExportTensor(
                first.source, first.source_shape, first.source_dtype, tuple(pieces), first.rule, combine=Concat(axis)
            )
        )


def _is_split(assignment: Assignment) -> bool:
    return bool(assignment.operations) and isinstance(assignment.operations[0], SplitPart)


def _tied_copy(
    skip: Skip, original: str, written: Mapping[str, ExportTensor], builder: _Builder
) -> ExportTensor | None:
    """The copy ``[[export.tied]]`` makes of exported ``original`` for skipped ``skip``; None (a blocker) if it cannot."""
    tensor = written.get(original)
    if tensor is None:
        builder.block(
            skip.rule,
            (skip.name,),
            f"[[export.tied]] makes {skip.name!r} a copy of {original!r}, which the export does not write; "
            f"correct same_as (it writes {quoted(sorted(written))})",
        )
        return None
    if skip.source_shape is not None and skip.source_shape != tensor.shape:
        builder.block(
            skip.rule,
            (skip.name,),
            f"[[export.tied]] makes {skip.name!r} {format_shape(skip.source_shape)} a copy of {original!r}, "
            f"which is {format_shape(tensor.shape)}",
        )
        return None
    return ExportTensor(
        skip.name,
        tensor.shape,
        tensor.dtype,
        tensor.pieces,
        skip.rule,
        tensor.combine,
        copy_of=original,
        restore=tensor.restore,
    )


def _restored_whole(
    skip: Skip, reason: str, sources: Mapping[str, TensorSpec] | None, builder: _Builder
) -> ExportTensor | None:
    """Skipped ``skip`` copied whole from ``--like`` (``[[export.restore]]``); None (a blocker) without its dtype."""
    spec = None if sources is None else sources.get(skip.name)
    if spec is None:
        builder.block(
            skip.rule,
            (skip.name,),
            f"[[export.restore]] copies the skipped {skip.name!r} whole from --like, but the inverse was not given "
            "the checkpoint's specs to take its shape and dtype from: pass sources= (mapper.invert does)",
        )
        return None
    return ExportTensor(spec.name, spec.shape, spec.dtype, (), skip.rule, restore=Restored(spec.name, None, reason))


def _skipped(
    plan: Plan, section: ExportSection, sources: Mapping[str, TensorSpec] | None, builder: _Builder
) -> tuple[list[ExportTensor], list[Left]]:
    """The skipped source tensors an export writes anyway, and the rest (dropped).

    ``[[export.tied]]`` makes a copy of an exported tensor; else ``[[export.restore]]`` copies it whole from ``--like``.
    """
    exported = {tensor.name: tensor for tensor in builder.tensors}
    written: list[ExportTensor] = []
    dropped: list[Left] = []
    for skip in plan.skips:
        if skip.side != "source":
            continue
        original = next((found for tied in section.tied if (found := tied.source_of(skip.name)) is not None), None)
        entry = section.restore_for(skip.name) if original is None else None
        if original is not None:
            tensor = _tied_copy(skip, original, exported, builder)
        elif entry is not None:
            tensor = _restored_whole(skip, entry.reason, sources, builder)
        else:
            dropped.append(Left(skip.name, skip.reason, skip.rule))
            continue
        if tensor is not None:
            written.append(tensor)
    return written, dropped


def invert(
    plan: Plan,
    export: ExportSection | None = None,
    *,
    lossy_casts: bool | None = None,
    sources: Mapping[str, TensorSpec] | None = None,
) -> Inverse:
    """The plan run backwards: how to write the plan's source tensors again from the target's variables.

    Args:
        plan: a plan (made against the checkpoint the model was imported from, or one with its names and shapes).
        export: the rule file's ``[export]`` table (``rules.export``): tied weights, tensors restored in part from
            ``--like``, whether lossy casts back are allowed.
        lossy_casts: allow (True) or refuse (False) casts back that round, overriding ``export``.
        sources: the specs of the checkpoint the plan reads: the shape and dtype of a skipped tensor that
            ``[[export.restore]]`` copies whole from ``--like`` (without them, such a tensor blocks).

    Returns:
        The Inverse; ``inverse.blockers`` says, per rule, what cannot be run backwards and why.

    Example:
        >>> from mapper.rules import parse_rules
        >>> from mapper.plan.planner import build_plan
        >>> from mapper.specs import TargetMap, VariableMap
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "w"\\ntarget = "d/kernel"\\nops = [{ transpose = [1, 0] }]')
        >>> plan = build_plan(rules, VariableMap([TensorSpec("w", (3, 2), "float32")]),
        ...                   TargetMap(VariableMap([TensorSpec("d/kernel", (2, 3), "float32")])))
        >>> [(t.name, t.shape, t.pieces[0].variable, t.pieces[0].operations) for t in invert(plan).tensors]
        [('w', (3, 2), 'd/kernel', (Transpose(perm=(1, 0), kind='transpose'),))]
    """
    section = export or ExportSection()
    lossy = section.lossy_casts == "allow" if lossy_casts is None else lossy_casts
    builder = _Builder(lossy, section)
    if plan.named_sources:
        builder.block(
            None,
            [source.id for source in plan.named_sources],
            "an export writes one source, and this plan reads several",
        )
    splits: dict[tuple[str | None, str], list[Assignment]] = defaultdict(list)
    for assignment in plan.assignments:
        if _is_split(assignment):
            splits[(assignment.source_id, assignment.source)].append(assignment)
        else:
            builder.single(assignment)
    for parts in splits.values():
        builder.split(parts)
    copies, dropped = _skipped(plan, section, sources, builder)
    tensors = [*builder.tensors, *copies]
    _check_one_to_one(tensors, builder)
    not_exported = [Left(skip.name, skip.reason, skip.rule) for skip in plan.skips if skip.side == "target"] + [
        Left(entry.name, "nothing fills it (unfilled in the plan)") for entry in plan.unfilled_targets
    ]
    return Inverse(
        plan_source=plan.source if isinstance(plan.source, str) else "several sources",
        plan_target=plan.target,
        tensors=tuple(tensors),
        dropped=tuple(dropped),
        not_exported=tuple(not_exported),
        blockers=_merged(builder.blockers),
        rounded=tuple(builder.rounded),
    )


def _merged(blockers: Sequence[Blocker]) -> tuple[Blocker, ...]:
    """One blocker per rule and reason, with the names of all (a rule that blocks 24 layers is one line)."""
    names: dict[tuple[RuleRef | None, str], list[str]] = {}
    for blocker in blockers:
        names.setdefault((blocker.rule, blocker.reason), []).extend(blocker.names)
    merged = [Blocker(rule, tuple(found), reason) for (rule, reason), found in names.items()]
    return tuple(
        sorted(merged, key=lambda b: (b.rule is not None, b.rule.file, b.rule.index) if b.rule else (False, "", 0))
    )


def _check_one_to_one(tensors: Sequence[ExportTensor], builder: _Builder) -> None:
    """A blocker for every source name two variables (or a variable and a tied copy) would both write."""
    by_name: dict[str, list[ExportTensor]] = defaultdict(list)
    for tensor in tensors:
        by_name[tensor.name].append(tensor)
    for name, found in by_name.items():
        if len(found) > 1:
            variables = sorted({variable for tensor in found for variable in tensor.variables})
            builder.block(
                found[0].rule,
                (name,),
                f"{len(found)} exports write source name {name!r} (from {quoted(variables)}): the rules are not "
                "one-to-one there, so the export would not know which to write",
            )


def check_elements(tensor: ExportTensor, specs: dict[str, TensorSpec]) -> None:
    """Raise OperationError unless the pieces, run on variables of ``specs``, give the tensor's shape and dtype.

    For a tensor restored in part from ``--like``, the pieces give the block the model holds; one restored whole
    has none.

    Example:
        >>> from mapper.ops import Transpose
        >>> t = ExportTensor("w", (3, 2), "float32", (Piece("v", (Transpose((1, 0)),)),), None)
        >>> check_elements(t, {"v": TensorSpec("v", (2, 3), "float32")})
    """
    if not tensor.pieces:
        if tensor.restore is None or not tensor.restore.whole:
            raise OperationError(
                f"{tensor.name!r}: no variable gives it, and it is not restored whole", operation="export"
            )
        return
    shapes = []
    dtype = tensor.dtype
    for piece in tensor.pieces:
        spec = specs[piece.variable]
        shape, dtype = infer_all(piece.operations, spec.shape, spec.dtype)
        shapes.append(shape)
    shape = tensor.combine.infer(shapes, dtype)[0] if tensor.combine is not None else shapes[0]
    expected = tensor.shape if tensor.restore is None else tensor.restore.part_shape(tensor.shape)
    if shape != expected or dtype != tensor.dtype or math.prod(shape) != math.prod(expected):
        raise OperationError(
            f"{tensor.name!r}: the inverse gives {format_shape(shape)} {dtype}, not {format_shape(expected)} "
            f"{tensor.dtype}",
            operation="export",
        )


__all__ = [
    "Blocker",
    "ExportTensor",
    "Inverse",
    "Left",
    "NotInvertibleError",
    "Piece",
    "Restored",
    "check_elements",
    "rounds",
    "exact_cast",
    "inverse_operation",
    "inverse_operations",
    "invert",
]
