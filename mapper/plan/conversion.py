"""Planning a conversion without a model: the names the rules produce become the target, with the specs they get.

Without a model there is no target to plan against, so ``open_target`` makes one from the rules themselves: every
name a rule produces from a source tensor becomes a target variable whose shape and dtype are what the rule's
join and operations make of that tensor. The ordinary planner then checks the plan against it (dead rules,
unused sources, double fills, bad operations and groups), so a conversion is planned and reported exactly like a
transfer into a model. With a model's TargetMap instead, the model's shapes are checked and unfilled variables
reported, as for ``mapper apply``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from mapper.errors import OperationError
from mapper.ops import Combine, Operation, SplitPart
from mapper.plan.groups import Groups
from mapper.plan.matching import matchers
from mapper.plan.model import Plan, Problem, ProblemKind, Severity
from mapper.plan.planner import build_plan
from mapper.plan.resolution import transformed
from mapper.rules import NeedsTargetError, RearrangeSpec, ReshapeSpec, Rule, RuleSet, TemplateError
from mapper.sources import SourcesLike, source_specs
from mapper.specs import CHECKPOINT_NAMESPACE, SourceSet, TargetMap, TensorSpec, VariableMap
from mapper.text import quoted

OPEN_TARGET = "the names the rules produce"


def open_target(rules: RuleSet, source: Mapping[str, TensorSpec] | SourceSet) -> tuple[TargetMap, tuple[Problem, ...]]:
    """The target of a conversion without a model: one variable per name the rules produce from ``source``.

    Each variable's shape and dtype are what the rule's split part, join (concat/stack) and operations make of
    its source tensors. The first rule to produce a name decides its spec; whatever else is wrong (two rules
    producing one name, a group with a member missing, an operation that does not fit) is left to
    ``build_plan`` to report. The only problems returned here are the ones a model would have solved:
    ``reshape = "target"`` takes its shape from the target, which an open target does not have.

    Args:
        rules: the rule file.
        source: the source's specs, or a SourceSet of named sources.

    Returns:
        The TargetMap (names in the rule file's namespace, which is also each variable's canonical name), and
        the problems to add to the plan.

    Example:
        >>> from mapper.rules import parse_rules
        >>> rules = parse_rules('''
        ... format = 1
        ... [[rules]]
        ... match = "h.0.c_attn.weight"
        ... split = { axis = -1, parts = 3 }
        ... targets = ["q/kernel", "k/kernel", "v/kernel"]
        ... ops = [{ transpose = [1, 0] }]
        ... ''')
        >>> target, problems = open_target(rules, VariableMap([TensorSpec("h.0.c_attn.weight", (4, 12), "float32")]))
        >>> [(spec.name, spec.shape) for spec in target.variables.values()], problems
        ([('q/kernel', (4, 4)), ('k/kernel', (4, 4)), ('v/kernel', (4, 4))], ())
    """
    needs_target: dict[int, list[str]] = {}
    counts: dict[int, list[str]] = {}  # stacks with count = "target": their number of members needs a model
    found, groups = _produced(rules, source, needs_target)
    for group in groups.checked(rules.rules):
        combine = rules.rules[group.index].combine
        if combine is not None and combine.from_target:
            counts.setdefault(group.index, []).extend(member.name for member in group.members)
        if group.complete and group.key not in found:  # build_plan reports an incomplete group
            found[group.key] = _result(
                rules, group.index, group.key, group.members, combine=group.combine, needs_target=needs_target
            )
    keys = {CHECKPOINT_NAMESPACE: {name: name for name in found}} if rules.namespace == CHECKPOINT_NAMESPACE else {}
    target = TargetMap(VariableMap(found.values(), description=OPEN_TARGET), keys)
    problems = [_needs_target_problem(rules, index, names) for index, names in needs_target.items()]
    problems += [_count_needs_target_problem(rules, index, names) for index, names in counts.items()]
    return target, tuple(problems)


def _produced(
    rules: RuleSet, source: Mapping[str, TensorSpec] | SourceSet, needs_target: dict[int, list[str]]
) -> tuple[dict[str, TensorSpec], Groups]:
    """The spec of every name a rule produces from one source tensor, and the members of every join group."""
    found: dict[str, TensorSpec] = {}
    groups = Groups()
    for source_id, specs, matcher in matchers(rules.rules, source):
        for name, spec in specs.items():
            matched_rule = matcher.first(name)
            if matched_rule is None or rules.rules[matched_rule[0]].skip is not None:
                continue
            index, matched = matched_rule
            rule = rules.rules[index]
            for key, part in _targets(rule, matched, spec):
                if rule.combine is not None:
                    groups.add(index, source_id, key, matched.group(rule.combine.by) or "", spec)
                elif key not in found:
                    found[key] = _result(
                        rules, index, key, (spec,), prefix=(part,) if part else (), needs_target=needs_target
                    )
    return found, groups


def _targets(rule: Rule, matched: Any, spec: TensorSpec) -> list[tuple[str, SplitPart | None]]:
    """The names (with the split part each gets) a rule gives one source tensor, up to the first it cannot render.

    A split that does not fit and a template that cannot render are left to ``build_plan`` to report.
    """
    try:
        parts: list[SplitPart | None] = list(rule.split.resolve(spec.shape)) if rule.split is not None else [None]
    except OperationError:
        return []
    named: list[tuple[str, SplitPart | None]] = []
    for number, part in enumerate(parts):
        try:
            named.append((rule.render(matched, number), part))
        except TemplateError:
            break
    return named


def _needs_target_problem(rules: RuleSet, index: int, names: list[str]) -> Problem:
    distinct = list(dict.fromkeys(names))  # a split's parts all name their one source
    ops = rules.rules[index].ops
    reshapes = (
        ['reshape = "target"'] if any(isinstance(op, ReshapeSpec) and op.reshape == "target" for op in ops) else []
    )
    sizes = [f'{name} = "target"' for op in ops if isinstance(op, RearrangeSpec) for name, _ in op.from_target]
    uses = [*reshapes, *sizes]
    example = "the shape, e.g. reshape = [768, 12, -1]" if reshapes else "the rearrange sizes, e.g. heads = 12"
    return Problem(
        ProblemKind.BAD_OPERATION,
        Severity.ERROR,
        f"{rules.rule_ref(index)} uses {' and '.join(uses)}, which {'takes' if len(uses) == 1 else 'take'} the "
        f"shape from a target model, and this conversion has none (for {quoted(distinct)}); write {example}, "
        "or convert with a model (--target MODULE:FACTORY)",
        rules.rule_ref(index),
        tuple(distinct),
    )


def _count_needs_target_problem(rules: RuleSet, index: int, names: list[str]) -> Problem:
    return Problem(
        ProblemKind.BAD_GROUP,
        Severity.ERROR,
        f'{rules.rule_ref(index)} stacks count = "target" members, a number it takes from a target model, and '
        f"this conversion has none (for {quoted(names)}); write the number, e.g. count = 8 or a [params] name, "
        "or convert with a model (--target MODULE:FACTORY)",
        rules.rule_ref(index),
        tuple(names),
    )


def plan_conversion(
    rules: RuleSet,
    source: SourcesLike | Mapping[str, TensorSpec] | SourceSet,
    target: TargetMap | None = None,
    *,
    source_description: str | None = None,
    target_description: str | None = None,
) -> Plan:
    """Plan a conversion: against a model's TargetMap if given, else against the names the rules produce.

    Without a target, ``[[keep]]`` rules are left out (there is no model whose variables they would keep) and so
    is the unfilled-target check (every target is a name a rule produced); everything else is checked as for a
    model. Pure: reads no tensor.

    Args:
        rules: the rule file.
        source: a Source, ``{name: Source}`` for named sources, specs, or a SourceSet.
        target: a model's TargetMap (as ``mapper.api.as_target(model).map`` gives it), or None for an open target.
        source_description: how reports name the source.
        target_description: how reports name the target (for an open target, the output is a good choice).

    Returns:
        The Plan; an assignment's ``target_key`` is the name its tensor gets in the output.

    Example:
        >>> from mapper.rules import parse_rules
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "bert/(?P<rest>.*)"\\ntarget = "{rest}"\\n'
        ...                     'ops = [{ transpose = [1, 0] }]\\n[[keep]]\\nmatch = "head/.*"\\nreason = "new"\\n')
        >>> plan = plan_conversion(rules, VariableMap([TensorSpec("bert/w", (2, 3), "float32")]))
        >>> plan.ok, [(a.target_key, a.target_shape) for a in plan.assignments]
        (True, [('w', (3, 2))])
    """
    specs, described = source_specs(source)
    source_description = source_description or described
    if target is not None:
        return build_plan(
            rules, specs, target, source_description=source_description, target_description=target_description
        )
    without_keeps = rules.model_copy(update={"keep": ()})
    open_map, problems = open_target(without_keeps, specs)
    plan = build_plan(
        without_keeps,
        specs,
        open_map,
        source_description=source_description,
        target_description=target_description or OPEN_TARGET,
    )
    # A rule that needs a target has been reported for it; what the planner makes of its stand-in spec is noise.
    needing = {problem.rule for problem in problems}
    kept = tuple(
        problem
        for problem in plan.problems
        if problem.kind is not ProblemKind.UNFILLED_TARGET
        and not (problem.kind is ProblemKind.BAD_OPERATION and problem.rule in needing)
    )
    return dataclasses.replace(plan, unfilled_targets=(), problems=problems + kept)


def _result(
    rules: RuleSet,
    index: int,
    key: str,
    members: tuple[TensorSpec, ...],
    *,
    combine: Combine | None = None,
    prefix: tuple[Operation, ...] = (),
    needs_target: dict[int, list[str]],
) -> TensorSpec:
    """The spec of target ``key``: what the rule's join and operations make of ``members``.

    When they do not fit, the first member's spec stands in: ``build_plan`` then reports the operation with
    its own message, as it would for a model. An operation that needs a target is recorded in ``needs_target``.
    """
    first = members[0]
    try:
        _, shape, dtype = transformed(rules.rules[index].ops, members, prefix, combine, None)
    except NeedsTargetError as error:
        needs_target.setdefault(index, []).extend(member.name for member in members)
        return TensorSpec(key, error.shape, error.dtype)
    except OperationError:
        return TensorSpec(key, first.shape, first.dtype)
    return TensorSpec(key, shape, dtype)


__all__ = ["OPEN_TARGET", "open_target", "plan_conversion"]
