"""build_plan(): resolve a RuleSet against source and target maps into a Plan, purely, without reading tensors."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from mapper.errors import OperationError, TargetError
from mapper.ops import Combine, Operation, SplitPart
from mapper.plan import (
    Assignment,
    Join,
    JoinMember,
    NamedSource,
    Plan,
    Problem,
    ProblemKind,
    RuleRef,
    Severity,
    Skip,
    SkipKind,
    TensorEntry,
)
from mapper.plan.groups import Groups
from mapper.plan.matching import RuleMatcher, matchers
from mapper.plan.messages import described, label, leftovers, qualified, shape_hint, unfilled_fix
from mapper.plan.mismatches import Mismatches, MismatchKey
from mapper.plan.records import collector_paused, positional
from mapper.plan.resolution import Misfit, Outcomes
from mapper.rules import Guard, Rule, RuleSet, TemplateError
from mapper.specs import PATH_NAMESPACE, SourceSet, TargetMap, TensorSpec, format_shape

# Missing-target problems that get a "closest names" hint: a search over every target name each time.
_HINTED = 20


def build_plan(
    rules: RuleSet,
    source: Mapping[str, TensorSpec] | SourceSet,
    target: TargetMap,
    *,
    source_description: str | None = None,
    target_description: str | None = None,
) -> Plan:
    """Decide, for every source tensor and every target variable, what applying ``rules`` will do.

    Pure: no TensorFlow, no tensor reads, no changes to the inputs. Every problem is collected into
    ``Plan.problems`` (check ``plan.ok``); nothing is raised for them.

    Args:
        rules: a validated rule file (``load_rules``).
        source: the source's tensors by name (``Source.specs()`` or any mapping of TensorSpec), or a
            SourceSet of several named sources, which rules choose with ``source = "name"``.
        target: the target's variables with their names in each namespace.
        source_description: how reports name the source; defaults to the map's ``description``.
        target_description: how reports name the target.

    Returns:
        The frozen Plan.

    Raises:
        TargetError: the rule file's namespace is one the target has no names in.

    Example:
        >>> from mapper.rules import parse_rules
        >>> from mapper.specs import TensorSpec, VariableMap, TargetMap
        >>> rules = parse_rules('''
        ... format = 1
        ... [[rules]]
        ... match = "old/(?P<rest>.*)"
        ... target = "new/{rest}"
        ... [[rules]]
        ... match = "global_step"
        ... skip = "training counter"
        ... ''')
        >>> source = VariableMap([TensorSpec("old/w", (2, 3), "float32"), TensorSpec("global_step", (), "int64")])
        >>> target = TargetMap(VariableMap([TensorSpec("new/w", (2, 3), "float32")]))
        >>> plan = build_plan(rules, source, target)
        >>> plan.ok, [(a.source, a.target) for a in plan.assignments], plan.skips[0].reason
        (True, [('old/w', 'new/w')], 'training counter')
    """
    namespace = rules.namespace
    if namespace not in target.namespaces:
        raise TargetError(
            f"the rule file {rules.file} produces names in the {namespace!r} namespace, but the target has "
            f"names only in: {', '.join(target.namespaces)}; set [target] namespace to one of those"
        )
    state = _Planner(rules, source, target, namespace)
    with collector_paused():
        state.run()
    return Plan(
        rule_files=(rules.file,),
        source=tuple(NamedSource(source_id, specs.description) for source_id, specs in source.items())
        if isinstance(source, SourceSet)
        else source_description or str(getattr(source, "description", "") or "source"),
        target=target_description or str(getattr(target.variables, "description", "") or "target"),
        namespace=namespace,
        assignments=tuple(state.assignments.values()),
        skips=tuple(state.skips),
        unused_sources=tuple(state.unused),
        unfilled_targets=tuple(state.unfilled),
        problems=tuple(state.problems),
    )


# The records made per source name, made without the dataclasses' __init__ (half the time; see records.py).
_skip = positional(Skip)
_assignment = positional(Assignment)

# What the planner does with one source tensor a rule matched: (match, spec, source id).
_Taker = Callable[[Any, TensorSpec, str | None], None]


@dataclass
class _Planner:
    """The mutable working state of one build_plan call; never escapes it."""

    rules: RuleSet
    source: Mapping[str, TensorSpec] | SourceSet
    target: TargetMap
    namespace: str
    assignments: dict[str, Assignment] = field(default_factory=dict)
    skips: list[Skip] = field(default_factory=list)
    unused: list[TensorEntry] = field(default_factory=list)
    unfilled: list[TensorEntry] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    rule_hits: list[int] = field(default_factory=list)
    keep_hits: list[int] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)
    left_by_guard: set[str] = field(default_factory=set)
    groups: Groups = field(default_factory=Groups)  # concat/stack members waiting for the rest of their group
    hinted: int = 0
    refs: list[RuleRef] = field(default_factory=list)
    renderers: list[tuple[Callable[[Any], str], ...]] = field(default_factory=list)
    unreadable: set[int] = field(default_factory=set)  # rules that name a source the plan was not given
    failed: set[str] = field(default_factory=set)  # targets a rule's error is about: not reported again as unfilled
    mismatches: Mismatches = field(default_factory=Mismatches)  # one problem per rule and shapes
    # What each rule does with a name it matched: chosen once per rule, so the loop over names does not ask.
    takers: list[_Taker] = field(default_factory=list)
    outcomes: Outcomes = field(init=False)  # what the rules make of sources, remembered by shapes
    find: Callable[[str], TensorSpec | None] = field(init=False)  # the target variable a rule's name names

    def run(self) -> None:
        self.refs = [self.rules.rule_ref(index) for index in range(len(self.rules.rules))]
        self.renderers = [rule.renderers() for rule in self.rules.rules]
        self.outcomes = Outcomes(self.rules.rules)
        # TargetMap.lookup, without asking which namespace for every name; for paths, a dict's own get (one copy
        # of the map: VariableMap.get is a Python method, and it would run once per name).
        self.find = (
            dict(self.target.variables.items()).get
            if self.namespace == PATH_NAMESPACE
            else partial(self.target.lookup, self.namespace)
        )
        self.takers = [self._taker(index, rule) for index, rule in enumerate(self.rules.rules)]
        self.rule_hits = [0] * len(self.rules.rules)
        self.keep_hits = [0] * len(self.rules.keep)
        self._find_kept_targets()
        self._check_source_names(set(self.source) if isinstance(self.source, SourceSet) else set())
        skips = [index for index, rule in enumerate(self.rules.rules) if rule.skip is not None]
        for source_id, specs, matcher in matchers(self.rules.rules, self.source, matchless=skips):
            self._match_all(specs, matcher, source_id)
        self._finish_groups()
        self._finish()

    def _match_all(self, specs: Mapping[str, TensorSpec], matcher: RuleMatcher, source_id: str | None) -> None:
        hits, takers = self.rule_hits, self.takers
        for (name, spec), found in zip(specs.items(), matcher.firsts(specs.keys()), strict=True):
            if found is None:
                self.unused.append(TensorEntry(name, spec.shape, spec.dtype, source_id))
                continue
            index, matched = found
            hits[index] += 1
            takers[index](matched, spec, source_id)

    def _taker(self, index: int, rule: Rule) -> _Taker:
        """What to do with a name rule ``index`` matched, decided once per rule: the loop over names runs it."""
        if rule.skip is not None:
            return self._skipper(index, rule.skip)
        if rule.split is None and rule.combine is None:
            return self._filler(index)
        return partial(self._split_or_join, index)

    def _skipper(self, index: int, reason: str) -> _Taker:
        """A skip rule's: record the skip."""
        skips, ref, kind = self.skips, self.refs[index], SkipKind.RULE

        def skip(_matched: Any, spec: TensorSpec, source_id: str | None) -> None:
            # Skip(name, kind, reason, rule, source_shape, target_shape, target, detail, source_id)
            skips.append(_skip(spec.name, kind, reason, ref, spec.shape, None, None, None, source_id))

        return skip

    def _filler(self, index: int) -> _Taker:
        """A rule's with one target and no join: render the target's name and resolve it.

        A target found, not kept and not filled yet, with an outcome for these shapes and dtypes that fills it, is
        assigned here, as :meth:`_resolve` would; it decides everything else.
        """
        render, resolve, find, ref = self.renderers[index][0], self._resolve, self.find, self.refs[index]
        passing, assignments, kept = self.outcomes.passing(index), self.assignments, self.kept

        def fill(matched: Any, spec: TensorSpec, source_id: str | None) -> None:
            try:
                key = render(matched)
            except TemplateError as error:
                self._problem(ProblemKind.BAD_TEMPLATE, f"source {spec.name!r}: {error}", ref, (spec.name,))
                return
            target_spec = find(key)
            if target_spec is not None:
                name, shape, dtype = target_spec.name, target_spec.shape, target_spec.dtype
                operations = passing.get((spec.shape, spec.dtype, shape, dtype))
                if operations is not None and name not in assignments and name not in kept:
                    assignments[name] = _assignment(
                        name, key, spec.name, ref, operations, spec.shape, spec.dtype, shape, dtype, None, source_id
                    )
                    return
            resolve(index, key, (spec,), (), None, source_id=source_id)

        return fill

    def _check_source_names(self, known: set[str]) -> None:
        for index, rule in enumerate(self.rules.rules):
            if rule.source is not None and rule.source not in known:
                given = (
                    f"the plan's sources are: {', '.join(sorted(known))}"
                    if known
                    else "the plan has one unnamed source; give sources by name (--source NAME=PATH)"
                )
                self.unreadable.add(index)
                self._problem(
                    ProblemKind.UNKNOWN_SOURCE,
                    f"{self.rules.rule_ref(index)} reads source {rule.source!r}, but {given}",
                    self.rules.rule_ref(index),
                    (rule.source,),
                )

    def _find_kept_targets(self) -> None:
        keeps = self.rules.keep
        if not keeps:
            return
        for canonical in self.target.variables:
            for index, keep in enumerate(keeps):
                namespace = keep.namespace or self.namespace
                key = self.target.key_of(canonical, namespace)
                if key is not None and keep.fullmatch(key) is not None:
                    self.kept[canonical] = index
                    self.keep_hits[index] += 1
                    break

    def _split_or_join(self, index: int, matched: Any, spec: TensorSpec, source_id: str | None) -> None:
        """A split or join rule's: each part's target resolved, or each member added to its group."""
        rule = self.rules.rules[index]
        ref = self.refs[index]
        parts: list[SplitPart | None] = [None]
        if rule.split is not None:
            try:
                parts = list(rule.split.resolve(spec.shape))
            except OperationError as error:
                self._problem(
                    ProblemKind.BAD_OPERATION,
                    f"source {spec.name!r} {format_shape(spec.shape)}: {error}",
                    ref,
                    (spec.name,),
                )
                return
        for number, part in enumerate(parts):
            try:
                key = self.renderers[index][number](matched)
            except TemplateError as error:
                self._problem(ProblemKind.BAD_TEMPLATE, f"source {spec.name!r}: {error}", ref, (spec.name,))
                return
            combine = rule.combine
            if combine is not None:
                member = matched.group(combine.by) or ""
                self.groups.add(index, source_id, key, member, spec)
                continue
            self._resolve(index, key, (spec,), (part,) if part else (), None, source_id=source_id)

    def _resolve(
        self,
        index: int,
        key: str,
        specs: tuple[TensorSpec, ...],
        prefix: tuple[Operation, ...],
        combine: Combine | None,
        *,
        source_id: str | None,
    ) -> None:
        """Decide what one target gets from one source tensor (or one group of them)."""
        ref = self.refs[index]
        spec = specs[0]
        target_spec = self.find(key)
        if target_spec is None:
            self._missing_target(label(specs), tuple(member.name for member in specs), key, ref)
            return
        if target_spec.name in self.kept:
            self._kept_skips(index, specs, target_spec, source_id)
            return
        outcome = self.outcomes.of(index, specs, prefix, combine, target_spec)
        if isinstance(outcome, Misfit):
            self._report(outcome, index, specs, combine, target_spec)
            return
        operations, failure = outcome
        guard = self.rules.rules[index].guard if failure is not None else None  # only a guard fails
        if guard is not None and failure is not None:
            for member in specs:
                self._guard_failed(guard, failure, member, target_spec, ref, source_id=source_id)
            return
        join = None if combine is None else Join(combine, tuple(JoinMember(m.name, m.shape) for m in specs[1:]))
        # Assignment(target, target_key, source, rule, operations, source_shape, source_dtype, target_shape,
        # target_dtype, join, source_id)
        self._assign(
            _assignment(
                target_spec.name,
                key,
                spec.name,
                ref,
                operations,
                spec.shape,
                spec.dtype,
                target_spec.shape,
                target_spec.dtype,
                join,
                source_id,
            )
        )

    def _kept_skips(
        self, index: int, specs: tuple[TensorSpec, ...], target_spec: TensorSpec, source_id: str | None
    ) -> None:
        """Skip the sources of a target a [[keep]] rule keeps."""
        ref = self.refs[index]
        keep_index = self.kept[target_spec.name]
        keep_ref = self.rules.keep_ref(keep_index)
        reason = f"target {target_spec.name!r} is kept at its initial value by {keep_ref}: {self.rules.keep[keep_index].reason}"
        for member in specs:
            self.skips.append(
                Skip(
                    member.name,
                    SkipKind.RULE,
                    reason,
                    ref,
                    member.shape,
                    target_spec.shape,
                    target_spec.name,
                    source_id=source_id,
                )
            )

    def _report(
        self,
        misfit: Misfit,
        index: int,
        specs: tuple[TensorSpec, ...],
        combine: Combine | None,
        target_spec: TensorSpec,
    ) -> None:
        """The problem for what rule ``index`` makes of ``specs`` not fitting ``target_spec``."""
        if misfit.kind == "shape":
            self._mismatch(index, specs, misfit.shape, target_spec, shown=misfit.shown)
        elif misfit.kind == "operation":
            what = f"{specs[0].dtype} -> target {target_spec.name!r}: {misfit.error}"
            self._misfit(ProblemKind.BAD_OPERATION, what, index, specs, target_spec)
        else:
            self.failed.add(target_spec.name)
            self._problem(
                ProblemKind.DTYPE_MISMATCH,
                f"{label(specs)} {'are' if combine else 'is'} {misfit.dtype} but target {target_spec.name!r} is "
                f'{target_spec.dtype}; add {{ cast = "{target_spec.dtype}" }} to the rule\'s ops',
                self.refs[index],
                (*(member.name for member in specs), target_spec.name),
            )

    def _misfit(
        self, kind: ProblemKind, what: str, index: int, specs: tuple[TensorSpec, ...], target_spec: TensorSpec
    ) -> None:
        """A problem about what a rule makes of its sources, named with their shapes."""
        self.failed.add(target_spec.name)
        self._problem(
            kind,
            f"{described(specs)} {what}",
            self.refs[index],
            (*(member.name for member in specs), target_spec.name),
        )

    def _finish_groups(self) -> None:
        """Check each concat/stack group has every expected member exactly once, then resolve it."""
        for group in self.groups.checked(self.rules.rules, self._target_shape):
            if group.complete:
                self._resolve(group.index, group.key, group.members, (), group.combine, source_id=group.source_id)
                continue
            spec = self.rules.rules[group.index].combine
            by = spec.by if spec is not None else ""
            self._problem(
                ProblemKind.BAD_GROUP,
                f"the {group.combine.kind} group for target {group.key!r} needs each of "
                f"{by} = {', '.join(map(repr, group.expected))} exactly once: {'; '.join(group.complaints)}",
                self.refs[group.index],
                tuple(member.name for member in group.members),
            )

    def _target_shape(self, key: str) -> tuple[int, ...] | None:
        spec = self.target.lookup(self.namespace, key)
        return None if spec is None else spec.shape

    def _assign(self, assignment: Assignment) -> None:
        earlier = self.assignments.get(assignment.target)
        if earlier is None:
            self.assignments[assignment.target] = assignment
            return
        policy = self.rules.policies.double_fill
        if earlier.source_id != assignment.source_id:
            policy = "error"  # two sources claiming one target is never a matter of taste
        message = (
            f"target {assignment.target!r} is filled twice: from {qualified(earlier)} by {earlier.rule} and from "
            f"{qualified(assignment)} by {assignment.rule}; the first is kept"
        )
        names = (*assignment.source_names, assignment.target)
        if policy == "error":
            self._problem(ProblemKind.DOUBLE_FILL, message, assignment.rule, names)
            return
        if policy == "warn":
            self._problem(ProblemKind.DOUBLE_FILL, message, assignment.rule, names, Severity.WARNING)
        for name, shape in zip(assignment.source_names, assignment.source_shapes, strict=True):
            self.skips.append(
                Skip(
                    name,
                    SkipKind.RULE,
                    "its target is already filled by an earlier rule",
                    assignment.rule,
                    shape,
                    assignment.target_shape,
                    assignment.target,
                    detail=f"{assignment.target!r} already filled from {qualified(earlier)} by {earlier.rule}",
                    source_id=assignment.source_id,
                )
            )

    def _guard_failed(
        self,
        guard: Guard,
        failure: str,
        spec: TensorSpec,
        target_spec: TensorSpec,
        ref: RuleRef,
        *,
        source_id: str | None = None,
    ) -> None:
        if guard.on_fail == "skip":
            self.skips.append(
                Skip(
                    spec.name,
                    SkipKind.GUARD,
                    guard.reason or failure,
                    ref,
                    spec.shape,
                    target_spec.shape,
                    target_spec.name,
                    detail=failure,
                    source_id=source_id,
                )
            )
            self.left_by_guard.add(target_spec.name)
            return
        self.failed.add(target_spec.name)
        self._problem(
            ProblemKind.GUARD_FAILED,
            f"source {spec.name!r} {format_shape(spec.shape)} {spec.dtype} -> target {target_spec.name!r} "
            f"{format_shape(target_spec.shape)}: guard failed: {failure}"
            + (f" ({guard.reason})" if guard.reason else "")
            + '; set on_fail = "skip" in the guard to leave the target at its initial value',
            ref,
            (spec.name, target_spec.name),
        )

    def _missing_target(self, label: str, names: tuple[str, ...], key: str, ref: RuleRef) -> None:
        hint = ""
        if self.hinted < _HINTED:
            self.hinted += 1
            close = difflib.get_close_matches(key, self.target.names(self.namespace), n=3, cutoff=0.6)
            if close:
                hint = "; closest: " + ", ".join(repr(name) for name in close)
        self._problem(
            ProblemKind.MISSING_TARGET,
            f"{label} maps to {key!r}, but the target has no variable of that name in the "
            f"{self.namespace!r} namespace{hint}",
            ref,
            (*names, key),
        )

    def _mismatch(
        self, index: int, specs: tuple[TensorSpec, ...], shape: tuple[int, ...], target_spec: TensorSpec, *, shown: bool
    ) -> None:
        """A result whose shape is not the target's; the same mismatch from other targets of the rule joins it."""
        joined = len(specs) > 1
        becomes = f"{'become' if joined else 'becomes'} {format_shape(shape)} " if shown else ""
        key = MismatchKey(index, tuple(member.shape for member in specs), shape, target_spec.shape, shown)
        if not self.mismatches.add(key, specs, target_spec.name, position=len(self.problems)):
            self.failed.add(target_spec.name)
            return
        self._misfit(
            ProblemKind.SHAPE_MISMATCH,
            f"{becomes}but target {target_spec.name!r} is {format_shape(target_spec.shape)}; "
            + shape_hint(shape, target_spec.shape),
            index,
            specs,
            target_spec,
        )

    def _finish(self) -> None:
        policies = self.rules.policies
        self.problems = self.mismatches.grouped(self.problems)
        for canonical, index in self.kept.items():
            spec = self.target.variables[canonical]
            self.skips.append(
                Skip(
                    canonical,
                    SkipKind.KEEP,
                    self.rules.keep[index].reason,
                    self.rules.keep_ref(index),
                    target_shape=spec.shape,
                )
            )
        for canonical, spec in self.target.variables.items():
            if canonical not in self.assignments and canonical not in self.kept and canonical not in self.left_by_guard:
                self.unfilled.append(TensorEntry(canonical, spec.shape, spec.dtype))
        self._policy_problem(
            policies.unused_source,
            ProblemKind.UNUSED_SOURCE,
            [entry.name for entry in self.unused],
            "source tensor{s} matched no rule",
            "add a rule for {them} or a skip rule with a reason"
            + ("" if policies.unused_source != "error" else ', or set [policies] unused_source = "warn"'),
        )
        self._policy_problem(
            policies.unfilled_target,
            ProblemKind.UNFILLED_TARGET,
            [entry.name for entry in self.unfilled if entry.name not in self.failed],
            "target variable{s} would keep {their} initial value{s} without a rule saying so",
            unfilled_fix(self.namespace),
        )
        for index, hits in enumerate(self.rule_hits):
            rule = self.rules.rules[index]
            if not hits and not rule.optional and "M101" not in rule.silence and index not in self.unreadable:
                where = f"name in source {rule.source!r}" if rule.source is not None else "source name"
                self._dead(self.rules.rule_ref(index), self.rules.rules[index].match, where)
        for index, hits in enumerate(self.keep_hits):
            keep = self.rules.keep[index]
            if not hits and not keep.optional and "M101" not in keep.silence:
                self._dead(self.rules.keep_ref(index), self.rules.keep[index].match, "target name")

    def _dead(self, ref: RuleRef, pattern: str, what: str) -> None:
        policy = self.rules.policies.dead_rule
        if policy == "ignore":
            return
        self.problems.append(
            Problem(
                ProblemKind.DEAD_RULE,
                Severity.ERROR if policy == "error" else Severity.WARNING,
                f"{ref} matched no {what} (pattern {pattern!r}); fix the pattern or remove the rule",
                ref,
                (),
                code="M101",
            )
        )

    def _policy_problem(self, policy: str, kind: ProblemKind, names: list[str], what: str, fix: str) -> None:
        if policy == "ignore" or not names:
            return
        self._problem(
            kind,
            leftovers(names, what, fix),
            None,
            tuple(names),
            Severity.ERROR if policy == "error" else Severity.WARNING,
        )

    def _problem(
        self,
        kind: ProblemKind,
        message: str,
        rule: RuleRef | None,
        names: tuple[str, ...],
        severity: Severity = Severity.ERROR,
    ) -> None:
        self.problems.append(Problem(kind, severity, message, rule, names))


__all__ = ["build_plan"]
