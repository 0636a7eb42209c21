"""The Python API in three calls: make_plan(), apply(), and transfer() which does both."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from mapper.errors import PlanError
from mapper.plan import Plan
from mapper.planner import build_plan
from mapper.rules import RuleSet, load_rules
from mapper.sources.base import Source
from mapper.specs import TargetMap, TensorSpec
from mapper.targets.base import VariableTarget

if TYPE_CHECKING:
    from mapper.executor import ApplyResult

RulesLike = RuleSet | str | os.PathLike[str]
SourceLike = Source | str | os.PathLike[str]
Method = Literal["assign", "init_from_checkpoint"]


def as_rules(rules: RulesLike) -> RuleSet:
    """A RuleSet as given, or loaded from a path.

    Example:
        >>> from mapper.rules import parse_rules
        >>> as_rules(parse_rules("format = 1")).rules
        ()
    """
    return rules if isinstance(rules, RuleSet) else load_rules(rules)


def as_source(source: SourceLike) -> Source:
    """A Source as given, or opened from a path (format detected from the files).

    Example:
        >>> from mapper.sources.memory import MemorySource
        >>> import numpy as np
        >>> as_source(MemorySource({"w": np.zeros(1)})).description
        'memory'
    """
    if isinstance(source, (str, os.PathLike)):
        from mapper.sources import open_source

        return open_source(source)
    return source


def as_target(target: object, *, checkpoint_root: str = "model") -> VariableTarget:
    """A VariableTarget as given, or built from a Keras model, ``tf.Module``, or dict/list of variables.

    Example:
        >>> from mapper.specs import VariableMap
        >>> as_target(VariableTarget("t", TargetMap(VariableMap([])), {})).description
        't'
    """
    if isinstance(target, VariableTarget):
        return target
    from mapper.targets.variables import target_from

    return target_from(target, checkpoint_root=checkpoint_root)


def make_plan(
    rules: RulesLike,
    source: SourceLike | Mapping[str, TensorSpec],
    target: object,
) -> Plan:
    """Plan how ``rules`` move ``source`` into ``target``, without reading a tensor or changing anything.

    Args:
        rules: a RuleSet or the path of a rule file.
        source: a Source, a checkpoint path, or a plain ``{name: TensorSpec}`` map.
        target: a VariableTarget, a TargetMap, a Keras model, a ``tf.Module``, or a dict/list of variables.

    Returns:
        The Plan; check ``plan.ok`` and render it with ``mapper.report``.

    Example:
        >>> from mapper.rules import parse_rules
        >>> from mapper.specs import VariableMap
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "a"\\ntarget = "b"\\n')
        >>> plan = make_plan(rules, VariableMap([TensorSpec("a", (2,), "float32")]),
        ...                  TargetMap(VariableMap([TensorSpec("b", (2,), "float32")])))
        >>> plan.ok, plan.assignments[0].target
        (True, 'b')
    """
    rule_set = as_rules(rules)
    if isinstance(source, Mapping):
        source_map: Mapping[str, TensorSpec] = source
        source_description = getattr(source, "description", None) or "source"
    else:
        opened = as_source(source)
        source_map = opened.specs()
        source_description = opened.description
    if isinstance(target, TargetMap):
        target_map, target_description = target, "target"
    else:
        variable_target = as_target(target, checkpoint_root=rule_set.target.checkpoint_root)
        target_map, target_description = variable_target.map, variable_target.description
    return build_plan(
        rule_set,
        source_map,
        target_map,
        source_description=source_description,
        target_description=target_description,
    )


def apply(
    plan: Plan,
    source: SourceLike,
    target: object,
    *,
    method: Method = "assign",
    checkpoint_root: str = "model",
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> ApplyResult:
    """Apply a plan: read the planned tensors, transform them, assign them; all or nothing.

    Args:
        plan: a Plan without errors.
        source: the Source (or its path) the plan was made from.
        target: the target (model, module, variables) the plan was made for.
        method: ``"assign"`` (batched reads, any operations) or ``"init_from_checkpoint"``
            (TensorFlow checkpoints, plans without operations).
        checkpoint_root: for targets given as objects, the root keyword of the checkpoint namespace.
        progress: called as ``progress(done, total)`` after each batch.
        **options: passed to ``mapper.executor.apply_plan`` (``batch_bytes``, ``rollback``).

    Returns:
        What was done: counts, bytes read, time taken.

    Raises:
        PlanError: the plan has errors. ApplyError, SourceError, TargetError: see ``apply_plan``.

    Example:
        >>> import mapper  # doctest: +SKIP
        >>> mapper.apply(plan, "pretrained/ckpt-1", model)  # doctest: +SKIP
    """
    from mapper.executor import apply_plan

    return apply_plan(
        plan,
        as_source(source),
        as_target(target, checkpoint_root=checkpoint_root),
        method=method,
        progress=progress,
        **options,
    )


def transfer(
    rules: RulesLike,
    source: SourceLike,
    target: object,
    *,
    method: Method = "assign",
    **options: Any,
) -> Plan:
    """Plan and apply in one call; raises PlanError (changing nothing) when the plan has errors.

    Example:
        >>> import mapper  # doctest: +SKIP
        >>> plan = mapper.transfer("rules/keras-same-architecture.toml", "pretrained/ckpt-1", model)  # doctest: +SKIP
        >>> print(mapper.render_text(plan))  # doctest: +SKIP
    """
    rule_set = as_rules(rules)
    opened = as_source(source)
    variable_target = as_target(target, checkpoint_root=rule_set.target.checkpoint_root)
    plan = make_plan(rule_set, opened, variable_target)
    if not plan.ok:
        raise plan_error(plan)
    apply(plan, opened, variable_target, method=method, **options)
    return plan


def plan_error(plan: Plan) -> PlanError:
    """A PlanError listing a plan's first errors, for callers that refuse to go on.

    Example:
        >>> str(plan_error(Plan(rule_files=("r.toml",), source="s", target="t", namespace="path")))
        'the plan from r.toml has 0 errors; nothing was changed'
    """
    errors = plan.errors
    shown = "".join(f"\n  - {problem.message}" for problem in errors[:5])
    more = f"\n  ... and {len(errors) - 5} more" if len(errors) > 5 else ""
    return PlanError(
        f"the plan from {', '.join(plan.rule_files)} has {len(errors)} error{'s' if len(errors) != 1 else ''}; "
        f"nothing was changed{shown}{more}",
        problems=errors,
        plan=plan,
    )


__all__ = ["apply", "as_rules", "as_source", "as_target", "make_plan", "plan_error", "transfer"]
