"""Step 0: a TF2 object checkpoint of the target's own architecture, drafted as one ``checkpoint``-namespace rule.

When every target variable's checkpoint key is a source name, under one root (``model/``), and only a few
shapes differ (a new head), the port is the shipped ``rules/keras-same-architecture.toml``: one rule that copies
each key onto itself, with a ``same_shape`` guard that leaves the changed variables at their initial values and
says why. Pairing names one by one would only add ways to be wrong (``conv1/bias`` dropped while its kernel is
paired). The draft is planned before it is offered; one that the planner does not accept is not offered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from mapper.authoring.suggest._names import describe
from mapper.authoring.suggest._toml import Sides, render_toml
from mapper.authoring.suggest.results import SuggestedRule, SuggestedSkip, Suggestion
from mapper.plan.planner import build_plan
from mapper.rules import parse_rules
from mapper.specs import TargetMap, TensorSpec

NAMESPACE = "checkpoint"
GUARD = (
    '{ same_shape = true, on_fail = "skip", reason = "shape changed (a new class count?): keeps its initial value" }'
)
# A same-architecture checkpoint may differ in a few variables (a new head's kernel and bias), not in many.
_CHANGED_AT_MOST = 0.1


def same_architecture(
    source: Mapping[str, TensorSpec], target: TargetMap, skips: Sequence[SuggestedSkip], weights: Sequence[str]
) -> Suggestion | None:
    """The one-rule draft when the source is a checkpoint of the target's own architecture, or None.

    ``weights`` are the source names that are not bookkeeping; they must be the target's checkpoint keys.

    Example:
        >>> from mapper.specs import VariableMap
        >>> keys = {"d/kernel": "model/_operations/1/_kernel", "d/bias": "model/_operations/1/bias"}
        >>> target = TargetMap(VariableMap([TensorSpec("d/kernel", (4, 3), "float32"),
        ...     TensorSpec("d/bias", (3,), "float32")]), {"checkpoint": keys})
        >>> source = {key: TensorSpec(key, target.lookup("checkpoint", key).shape, "float32") for key in keys.values()}
        >>> found = same_architecture(source, target, [], list(source))
        >>> found.rules[0].match, found.rules[0].target, found.namespace
        ('(?P<key>model/.+)', '{key}', 'checkpoint')
    """
    if NAMESPACE not in target.namespaces:
        return None
    keys = target.names(NAMESPACE)
    root = _root(keys)
    if root is None or any(name.startswith(root) and name not in keys for name in weights):
        return None
    if any(key not in source for key in keys):
        return None
    specs = {key: _spec(target, key) for key in keys}
    kept = [key for key in keys if specs[key].shape == source[key].shape]
    changed = [key for key in keys if key not in kept]
    if not kept or len(changed) > max(2, _CHANGED_AT_MOST * len(keys)):
        return None
    rule = _rule(root, kept, changed, specs, source)
    described = (describe(weights, [source[name] for name in weights]), describe(keys, list(specs.values())))
    sides = Sides(source, target, NAMESPACE, *described, skips)
    toml = render_toml([rule], sides, (), settled=frozenset(changed))
    plan = build_plan(parse_rules(toml, file="<draft>"), source, target)
    if not plan.ok or {assignment.target_key for assignment in plan.assignments} != set(kept):
        return None
    return Suggestion(
        toml=toml,
        namespace=NAMESPACE,
        rules=(rule,),
        skips=tuple(skips),
        unplaced_sources=tuple(name for name in weights if not name.startswith(root)),
        unfilled_targets=(),
    )


def _root(keys: Sequence[str]) -> str | None:
    """The first segment every key starts with (``model/``), or None."""
    roots = {key.split("/", 1)[0] + "/" for key in keys if "/" in key}
    if len(roots) != 1 or not all("/" in key for key in keys):
        return None
    return roots.pop()


def _spec(target: TargetMap, key: str) -> TensorSpec:
    spec = target.lookup(NAMESPACE, key)
    if spec is None:  # pragma: no cover - names() lists only names lookup() knows
        raise KeyError(key)
    return spec


def _rule(
    root: str,
    kept: Sequence[str],
    changed: Sequence[str],
    specs: Mapping[str, TensorSpec],
    source: Mapping[str, TensorSpec],
) -> SuggestedRule:
    """The copy-every-key rule, its evidence, and the variables its guard leaves alone."""
    reasons = [f"every one of the target's {len(specs)} checkpoint keys is in the source: the same architecture"]
    if changed:
        listed = ", ".join(
            f"{specs[key].name} {list(source[key].shape)} -> {list(specs[key].shape)}" for key in changed
        )
        reasons.append(f"the guard leaves {len(changed)} whose shape changed at their initial values ({listed})")
    else:
        reasons.append("every shape equal")
    return SuggestedRule(
        match=f"(?P<key>{re.escape(root)}.+)",
        target="{key}",
        ops=(),
        confidence=1.0,
        pairs=tuple((key, key) for key in kept),
        pair_confidence=(1.0,) * len(kept),
        reasons=tuple(reasons),
        guard=GUARD,
    )
