"""suggest_rules(): draft a rule file from a source's and a target's variable maps, by aligning names and shapes.

The draft is a starting point for a person, not a finished port: every rule says how sure it is and why.

1. **Bookkeeping.** Source tensors that are never weights (optimizer slots ``.../adam_m``, ``.../Adam_1``,
   ``optimizer/...``; ``global_step``, ``save_counter``; ``num_batches_tracked``; buffers such as
   ``position_ids``) become skip rules with a real reason and take no further part.
1b. **The same architecture.** A TF2 object checkpoint of the target's own architecture (every target's
   ``checkpoint``-namespace key is a source name, under one root, and at most a few shapes differ) is drafted as
   ``rules/keras-same-architecture.toml`` is written, whatever ``namespace`` asks: ``[target] namespace =
   "checkpoint"``, one rule copying every key onto itself, and a ``same_shape`` guard that leaves a changed
   variable (a new head) at its initial value with a reason. The draft is planned first; the rest does not run.
2. **Describe each name.** A name is cut into atoms: words, separators (``/ . _ -``) and index numbers (a digit
   run alone, ``layer_0``, ``layer.0``, or ending a word, ``conv1``). Words are split at camelCase, lower-cased,
   merged in pairs and mapped through a small synonym table (``LayerNorm``, ``ln``, ``bn`` -> norm; ``attn``,
   ``mha`` -> attention; ``token_type`` -> segment; ``post_attention`` stays apart from attention). The last
   word gives the *role*: kernel (``kernel``, ``weight``), bias, scale (``gamma``, a rank-1 ``weight``), offset
   (``beta``, or the ``bias`` beside a scale), mean (``moving_mean``, ``running_mean``), var, embeddings. The
   side's layout comes from its own layers first: a bias as long as its kernel's first axis means ``[out, in]``
   (PyTorch), one as long as the last axis ``[in, out]`` (Keras, and GPT-2's Conv1D ``weight``); without such
   layers the kernels' leaf names vote (``weight`` PyTorch, ``kernel`` Keras).
2b. **Split fused tensors.** An attention tensor (``attention`` or ``qkv`` in its name) three times the size of one
   attention layer's ``query``, ``key`` and ``value`` targets, whose parts fit them exactly once the side's layout
   is applied, becomes a split rule (``split = { axis = -1, parts = 3 }``, ``targets = [q, k, v]``; the cut runs
   along the output axis), when one family of such sources meets one family of such targets layer for layer at
   a constant index offset; otherwise a DECIDE note. Split sources and targets take no further part.
3. **Score the plausible pairs** (equal element counts, compatible roles and dtypes) on: name similarity, the
   IDF-weighted overlap of the word sets (a word on most names of one side and none of the other, a ``bert/``
   prefix, counts for little); shape fit: equal, equal after a transpose (the one the layouts call for first,
   so a square PyTorch kernel is still transposed), or equal after a reshape that only splits or merges
   neighbouring axes (``[H, H] -> [H, heads, head_dim]``, transposed first when the layouts say so); role;
   dtype (a float cast costs a little); place in each list (an alphabetically sorted checkpoint is read in
   natural order); index agreement; layer agreement. Pairs are chosen greedily by score, each name used once,
   in three rounds: the second learns the index offsets between the sides from the first round's pairs
   (``layer.0`` -> ``transformer_block_1`` is +1, learned only when pairs from two or more layers agree), the
   third which source layer went to which target layer from the second round's clear pairs (so a bias follows
   its kernel when only the kernel's shape was unique).
4. **Confidence.** A pair's confidence blends its score with its margin: how much evidence the best single
   change would lose (another source for the target, another target for the source, or a swap with another
   pair). List order is not counted as evidence here, so a tie broken only by order gets a low confidence. A
   rule's confidence is its pairs' mean; below ``CONFIDENT`` the draft marks it CHECK and names the rival.
4b. **Consistency.** Pairs that contradict each other are withdrawn and named in a DECIDE note, not settled by a
   guess: the same parameter across layers sent to two target families (``ln_1`` to the attention norm in one
   layer, to the feed-forward norm in the next), a layer's kernel and bias (a norm's scale and offset) sent to two
   target layers, and a stray into a family of per-layer repeats (``ln_f`` into a block).
5. **Generalise.** Pairs whose names differ only in index numbers and that need the same operations become one
   rule: varying numbers become named groups (``(?P<i>\\d+)``) linked to the target's by a constant offset
   (``{i + 1}``; a group the template takes 1 from refuses 0). Rules that differ only in one word found
   verbatim on both sides, over the same index values, merge into an alternation (``(?P<part>query|key|value)``).
   Literal text is escaped.
6. **Check.** The draft is rendered, parsed with ``parse_rules`` and planned with ``build_plan`` against the same
   maps. A rule that matches a name it does not claim is narrowed (its groups list their values) or split into
   one rule per pair; a rule the planner refuses is split, and a one-pair rule that still fails is given up
   (``Suggestion.notes``, after the consistency notes). The returned TOML therefore plans to exactly ``Suggestion.mapping``.

Not attempted: joining tensors, splits into unequal parts (grouped-query attention), ``slice`` and
``rearrange`` operations, and pairing words that share no text (``layernorm_before`` against ``ln_1`` is decided
by place alone, and the confidence says so). Source tensors without a target are written as commented-out skip
rules ("DECIDE: no target found"), so planning the draft still reports them until someone decides; targets nothing
fills are listed with commented-out ``[[keep]]`` entries.

The stages, one module each: ``_bookkeeping`` (1), ``_same_architecture`` (1b), ``_names`` (2), ``_fused`` (2b), ``_fit`` and ``_scoring`` (3), ``_assignment``
(3's rounds and 4), ``_consistency`` (4b), ``_generalise`` (5), ``_patterns`` and ``_toml`` (rendering), ``_check`` (6); the results are in
``results``.
"""

from __future__ import annotations

from collections.abc import Mapping

from mapper.authoring.suggest._assignment import place
from mapper.authoring.suggest._bookkeeping import find_bookkeeping
from mapper.authoring.suggest._check import narrow, settle
from mapper.authoring.suggest._consistency import consistent
from mapper.authoring.suggest._fused import find_splits
from mapper.authoring.suggest._generalise import generalise, merge_alternations
from mapper.authoring.suggest._names import describe
from mapper.authoring.suggest._same_architecture import same_architecture
from mapper.authoring.suggest._toml import Sides, suggested, unfilled_targets, unplaced_sources
from mapper.authoring.suggest.results import CONFIDENT, SuggestedRule, SuggestedSkip, Suggestion
from mapper.errors import TargetError
from mapper.specs import NAMESPACES, TargetMap, TensorSpec

__all__ = ["CONFIDENT", "Suggestion", "SuggestedRule", "SuggestedSkip", "suggest_rules"]


def suggest_rules(source: Mapping[str, TensorSpec], target: TargetMap, *, namespace: str = "path") -> Suggestion:
    """Draft a rule file that maps ``source``'s tensors onto ``target``'s variables, with confidence notes.

    Pure: no TensorFlow, no tensor reads, inputs untouched. The module docstring explains the method.

    Args:
        source: the source's tensors by name (``Source.specs()``, or any mapping of TensorSpec).
        target: the target's variables with their names in each namespace.
        namespace: the namespace the drafted templates produce: ``path`` (Keras paths) or ``checkpoint``; a
            checkpoint of the target's own architecture is always drafted in ``checkpoint`` (``Suggestion.namespace``).

    Returns:
        The Suggestion: ``toml`` (a rule file ``parse_rules`` accepts, whose plan against the same maps makes
        exactly the pairs claimed), the mapping rules with their confidence and pairs, the skip rules for
        bookkeeping tensors, and the source and target names left unplaced.

    Raises:
        TargetError: ``namespace`` is not one the target has names in.

    Example:
        >>> from mapper.specs import VariableMap
        >>> layers = range(3)
        >>> source = {
        ...     f"encoder.layer.{i}.{p}.weight": TensorSpec(f"encoder.layer.{i}.{p}.weight", (8, 4), "float32")
        ...     for i in layers for p in ("query", "key")
        ... }
        >>> target = TargetMap(VariableMap(
        ...     TensorSpec(f"block_{i + 1}/{p}/kernel", (4, 8), "float32") for i in layers for p in ("query", "key")
        ... ))
        >>> suggestion = suggest_rules(source, target)
        >>> [(rule.match, rule.target, rule.ops) for rule in suggestion.rules]
        [('encoder\\\\.layer\\\\.(?P<i>\\\\d+)\\\\.(?P<part>query|key)\\\\.weight', 'block_{i + 1}/{part}/kernel', ('{ transpose = [1, 0] }',))]
        >>> suggestion.mapping["block_3/key/kernel"]
        'encoder.layer.2.key.weight'
    """
    if namespace not in NAMESPACES or namespace not in target.namespaces:
        raise TargetError(
            f"cannot draft rules in the {namespace!r} namespace: the target has names only in "
            f"{', '.join(target.namespaces)}; pass namespace= one of those"
        )
    target_keys = target.names(namespace)
    target_specs = [_lookup(target, namespace, key) for key in target_keys]
    skips, bookkeeping = find_bookkeeping(source)
    source_keys = [name for name in source if name not in bookkeeping]
    same = same_architecture(source, target, skips, source_keys)
    if same is not None:
        return same
    sources = describe(source_keys, [source[name] for name in source_keys])
    targets = describe(target_keys, target_specs)
    splits = find_splits(sources, targets)
    rest = [name for name in sources if name.key not in splits.sources]
    free = [name for name in targets if name.key not in splits.targets]
    placed, conflicts = consistent(place(rest, free))
    conflicts = [*splits.notes, *conflicts]
    drafts = merge_alternations(generalise(placed)) + splits.drafts
    drafts.sort(key=lambda draft: draft.first_target)
    drafts = narrow(drafts, list(source))
    sides = Sides(source, target, namespace, sources, targets, skips)
    toml, drafts, notes = settle(drafts, sides, rounds=2 * (len(placed) + len(splits.sources)) + 2, conflicts=conflicts)
    return Suggestion(
        toml=toml,
        namespace=namespace,
        rules=tuple(suggested(draft) for draft in drafts),
        skips=tuple(skips),
        unplaced_sources=tuple(unplaced_sources(drafts, sources)),
        unfilled_targets=tuple(unfilled_targets(drafts, targets)),
        notes=(*conflicts, *notes),
    )


def _lookup(target: TargetMap, namespace: str, key: str) -> TensorSpec:
    spec = target.lookup(namespace, key)
    if spec is None:  # pragma: no cover - names() lists only names lookup() knows
        raise TargetError(f"target variable {key!r} has no spec in the {namespace!r} namespace")
    return spec
