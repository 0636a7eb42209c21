"""What suggest_rules() returns: the drafted rule file as TOML and as data, with each rule's confidence."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CONFIDENT", "SuggestedRule", "SuggestedSkip", "Suggestion"]

# A rule whose confidence is at least this is called confident; the draft marks the others "CHECK".
CONFIDENT = 0.6


@dataclass(frozen=True)
class SuggestedRule:
    """One drafted mapping rule: its pattern, template and operations, how sure the draft is, and what it covers.

    ``pairs`` are ``(source name, target name)`` with the target named in the draft's namespace, in target order;
    ``pair_confidence`` gives each pair's confidence in the same order. A split rule (``split``, as the rule file
    writes it, such as ``{ axis = -1, parts = 3 }``) has a template per part in ``targets`` and ``target`` empty;
    a rule may carry a ``guard``, also as the rule file writes it.

    Example:
        >>> rule = SuggestedRule("a/w", "b/kernel", (), 0.9, (("a/w", "b/kernel"),), (0.9,), ("shapes equal",))
        >>> rule.confident, rule.sources
        (True, ('a/w',))
    """

    match: str
    target: str
    ops: tuple[str, ...]
    confidence: float
    pairs: tuple[tuple[str, str], ...]
    pair_confidence: tuple[float, ...]
    reasons: tuple[str, ...]
    split: str | None = None
    targets: tuple[str, ...] = ()
    guard: str | None = None

    @property
    def confident(self) -> bool:
        """Whether the confidence reaches ``CONFIDENT``."""
        return self.confidence >= CONFIDENT

    @property
    def sources(self) -> tuple[str, ...]:
        """The source names this rule maps."""
        return tuple(source for source, _ in self.pairs)


@dataclass(frozen=True)
class SuggestedSkip:
    """One drafted skip rule for source tensors that are never weights (optimizer state, counters, buffers).

    Example:
        >>> SuggestedSkip("step counters", "global_step", "training step counter", ("global_step",)).sources
        ('global_step',)
    """

    name: str
    match: str
    reason: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Suggestion:
    """A drafted rule file: the TOML text, and the same draft as data.

    Example:
        >>> from mapper.authoring.suggest import suggest_rules
        >>> from mapper.specs import TargetMap, TensorSpec, VariableMap
        >>> source = {"dense/kernel": TensorSpec("dense/kernel", (4, 3), "float32")}
        >>> target = TargetMap(VariableMap([TensorSpec("head/kernel", (4, 3), "float32")]))
        >>> suggestion = suggest_rules(source, target)
        >>> suggestion.mapping, suggestion.unplaced_sources, suggestion.unfilled_targets
        ({'head/kernel': 'dense/kernel'}, (), ())
    """

    toml: str
    namespace: str
    rules: tuple[SuggestedRule, ...]
    skips: tuple[SuggestedSkip, ...]
    unplaced_sources: tuple[str, ...]
    unfilled_targets: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def mapping(self) -> dict[str, str]:
        """``{target name: source name}`` for every pair the drafted rules claim."""
        return {target: source for rule in self.rules for source, target in rule.pairs}

    @property
    def confident_rules(self) -> tuple[SuggestedRule, ...]:
        """The rules whose confidence reaches ``CONFIDENT``."""
        return tuple(rule for rule in self.rules if rule.confident)
