"""Rendering, TOML: the drafts written as a commented TOML rule file, with what is left over at the end."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from mapper.authoring.suggest._assignment import Placed
from mapper.authoring.suggest._generalise import Draft, Split, index_values, skeleton, slot_values
from mapper.authoring.suggest._names import ROLES, Atom, Name, canonical, name_atoms
from mapper.authoring.suggest._patterns import group_labels, render_pattern, render_template
from mapper.authoring.suggest.results import CONFIDENT, SuggestedRule, SuggestedSkip
from mapper.naming import group_names
from mapper.specs import TargetMap, TensorSpec, format_shape
from mapper.text import plural


def suggested(draft: Draft) -> SuggestedRule:
    names = group_labels(draft)
    pairs = sorted(draft.pairs, key=lambda pair: pair.target.position)
    confidence = round(sum(pair.confidence for pair in pairs) / len(pairs), 2)
    split = draft.split
    return SuggestedRule(
        match=render_pattern(draft, names),
        target="" if split else render_template(draft, names),
        ops=draft.ops,
        confidence=confidence,
        pairs=tuple((pair.source.key, pair.target.key) for pair in pairs),
        pair_confidence=tuple(pair.confidence for pair in pairs),
        reasons=tuple(_reasons(draft, names)),
        split=f"{{ axis = {split.axis}, parts = {len(split.parts)} }}" if split else None,
        targets=tuple(render_template(replace(draft, target_atoms=part), names) for part in split.parts)
        if split
        else (),
    )


def unplaced_sources(drafts: Sequence[Draft], sources: Sequence[Name]) -> list[str]:
    placed = {pair.source.key for draft in drafts for pair in draft.pairs}
    return [name.key for name in sources if name.key not in placed]


def unfilled_targets(drafts: Sequence[Draft], targets: Sequence[Name]) -> list[str]:
    placed = {pair.target.key for draft in drafts for pair in draft.pairs}
    return [name.key for name in targets if name.key not in placed]


@dataclass(frozen=True)
class Sides:
    """Both sides as the caller gave them and as described, and the bookkeeping skips: what the writer needs."""

    source: Mapping[str, TensorSpec]
    target: TargetMap
    namespace: str
    sources: Sequence[Name]
    targets: Sequence[Name]
    skips: Sequence[SuggestedSkip]


def _reasons(draft: Draft, names: Mapping[str, str]) -> list[str]:
    """Why the draft believes a rule: shared words, the shape change, how many pairs, the weakest doubt."""
    pairs = draft.pairs
    shared: list[str] = []
    for position, (kind, text) in enumerate(draft.target_atoms):
        if kind not in ("w", "ra"):
            continue
        word = f"{{{names[text]}}}" if kind == "ra" else text
        if word not in shared and all(_shares(pair, position) for pair in pairs):
            shared.append(word)
    reasons = [f"names share '{'/'.join(shared)}'" if shared else "names share nothing: placed by shape and position"]
    reasons.append(pairs[0].fit.note)
    if draft.split is not None:
        reasons.append(f"split in {len(draft.split.parts)} along axis {draft.split.axis}: {_part_words(draft.split)}")
    spans = [f"{names[slot]} = {_span(values)}" for slot, values in slot_values(draft).items()]
    spans += [
        f"{names[str(position)]} x{text.count('|') + 1}"
        for position, (kind, text) in enumerate(draft.source_atoms)
        if kind == "a"
    ]
    if len(pairs) > 1:
        reasons.append(f"{len(pairs)} pairs" + (f" ({'; '.join(spans)})" if spans else ""))
    weakest = min(pairs, key=lambda pair: pair.confidence)
    if weakest.confidence < CONFIDENT:
        rival = f"; {weakest.runner_up!r} fits almost as well" if weakest.runner_up else ""
        reasons.append(f"weakest: {weakest.source.key!r} -> {weakest.target.key!r} at {weakest.confidence:.2f}{rival}")
    return reasons


def _part_words(split: Split) -> str:
    """What tells a split's parts apart: the words where their templates differ (``query, key, value``)."""
    differ = [
        position
        for position in range(min(len(part) for part in split.parts))
        if len({part[position] for part in split.parts}) > 1
    ]
    return ", ".join("".join(part[position][1] for position in differ) for part in split.parts)


def _shares(pair: Placed, position: int) -> bool:
    """Whether the word at ``position`` of the pair's target name is in its source name (or is their shared role)."""
    if position >= len(pair.target.atoms):  # another part of a split, named differently
        return False
    kind, text = pair.target.atoms[position]
    if kind != "w":
        return False
    words = canonical(text)
    role = pair.source.role if pair.source.role == pair.target.role else None
    return bool(words) and all(word in pair.source.words or (role and ROLES.get(word) == role) for word in words)


def _span(values: Sequence[str]) -> str:
    numbers = sorted(int(value) for value in values)
    if numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 2:
        return f"{numbers[0]}..{numbers[-1]}"
    return ", ".join(map(str, numbers))


def _string(text: str) -> str:
    """A TOML basic string."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(char if char >= " " and char != "\x7f" else f"\\u{ord(char):04x}" for char in escaped)
    return f'"{escaped}"'


def _pattern_string(pattern: str) -> str:
    """A regular expression as a TOML literal string when it can be one (no backslash doubling), else basic."""
    if "'" not in pattern and all(char >= " " and char != "\x7f" for char in pattern):
        return f"'{pattern}'"
    return _string(pattern)


def render_toml(
    rules: Sequence[SuggestedRule], sides: Sides, notes: Sequence[str], *, settled: frozenset[str] = frozenset()
) -> str:
    """The draft as TOML: header, target section, mapping rules, bookkeeping skips, then what is left over.

    ``settled`` are names the rules deal with beyond their pairs (the targets a guard leaves alone, and their
    sources): they are not listed as left over.
    """
    sources, targets, skips = sides.sources, sides.targets, sides.skips
    placed_sources = {source for rule in rules for source, _ in rule.pairs} | settled
    filled = {target for rule in rules for _, target in rule.pairs} | settled
    unplaced = [name.key for name in sources if name.key not in placed_sources]
    unfilled = [name.key for name in targets if name.key not in filled]
    lines = _header(rules, sides, len(unplaced), len(unfilled))
    for rule in rules:
        lines += _rule_lines(rule)
    if skips:
        lines += ["", "# --- never weights ---"]
    for skip in skips:
        lines += ["", f"# {plural(len(skip.sources), 'tensor')}, such as {skip.sources[0]!r}", "[[rules]]"]
        lines.append(f"name = {_string(skip.name)}")
        lines.append(f"match = {_pattern_string(skip.match)}")
        lines.append(f"skip = {_string(skip.reason)}")
    if unplaced:
        lines += _left_over(
            f"no target found: {plural(len(unplaced), 'source tensor')}",
            "Nothing in the target fits these. Map them, or uncomment a skip and say why the target needs none.",
            unplaced,
            sources,
            ("[[rules]]", 'skip = "DECIDE: no target found"'),
        )
    if notes:
        lines += ["", "# --- left undecided: conflicting layers and pairs the planner refused ---"]
        lines += [f"# {note}" for note in notes]
    if unfilled:
        lines += _left_over(
            f"nothing fills: {plural(len(unfilled), 'target variable')}",
            "No source tensor fits these. Map one, or uncomment a keep and say why they keep their initial values.",
            unfilled,
            targets,
            ("[[keep]]", 'reason = "DECIDE: nothing in the source fits"'),
        )
    return "\n".join(lines) + "\n"


def _header(rules: Sequence[SuggestedRule], sides: Sides, unplaced: int, unfilled: int) -> list[str]:
    """The opening comment (what was placed, how surely), the format, the description and the target section."""
    placed = sum(len(rule.pairs) for rule in rules)
    confident = sum(1 for rule in rules if rule.confident)
    skipped = sum(len(skip.sources) for skip in sides.skips)
    source_text = getattr(sides.source, "description", "") or "the source"
    target_text = getattr(sides.target.variables, "description", "") or "the target"
    return [
        "# Draft rule file from `mapper suggest`: guesses to check, not a finished port.",
        f"# {placed} of {plural(len(sides.targets), 'target variable')} placed by {plural(len(rules), 'rule')} "
        f"({confident} confident: confidence >= {CONFIDENT}); {plural(skipped, 'source tensor')} skipped as bookkeeping;",
        f"# {plural(unplaced, 'source tensor')} and {plural(unfilled, 'target variable')} left for you at the end.",
        "# Each rule's comment gives its confidence (0 to 1) and the evidence; CHECK marks the least certain.",
        "# Plan it with `mapper plan` and read the report before applying it.",
        "",
        "format = 1",
        f"description = {_string(f'Draft mapping from {source_text} to {target_text}, suggested from names and shapes.')}",
        "",
        "[target]",
        f"namespace = {_string(sides.namespace)}",
    ]


def _rule_lines(rule: SuggestedRule) -> list[str]:
    """One mapping rule with its confidence comment."""
    mark = "" if rule.confident else "CHECK "
    lines = ["", f"# {mark}confidence {rule.confidence:.2f}: {'; '.join(rule.reasons)}", "[[rules]]"]
    lines.append(f"match = {_pattern_string(rule.match)}")
    if rule.split:
        lines.append(f"split = {rule.split}")
        lines.append(f"targets = [{', '.join(map(_string, rule.targets))}]")
    else:
        lines.append(f"target = {_string(rule.target)}")
    if rule.guard:
        lines.append(f"guard = {rule.guard}")
    if rule.ops:
        lines.append(f"ops = [{', '.join(rule.ops)}]")
    return lines


def _left_over(
    heading: str, advice: str, left: Sequence[str], side: Sequence[Name], entry: tuple[str, str]
) -> list[str]:
    """A commented-out section for names of one side nothing was found for: each family listed, with an entry.

    ``entry`` is the table header and the line that asks for a decision, as the commented-out entry spells them.
    """
    lines = ["", f"# --- {heading} ---", f"# {advice}"]
    by_name = {name.key: name.spec for name in side}
    table, decide = entry
    for pattern, members in _cover(left, [name.key for name in side]):
        lines += ["#", *_listing(members, by_name), f"# {table}", f"# match = {_pattern_string(pattern)}"]
        lines.append(f"# {decide}")
    return lines


def _listing(members: Sequence[str], specs: Mapping[str, TensorSpec]) -> list[str]:
    """Comment lines naming ``members`` with shapes: grouped (``a/{b,c}``) when they share shape and dtype."""
    kinds = {(specs[name].shape, specs[name].dtype) for name in members}
    if len(kinds) == 1:
        shape, dtype = kinds.pop()
        return [f"#   {pattern} {format_shape(shape)} {dtype}" for pattern in group_names(members)]
    return [f"#   {name} {format_shape(specs[name].shape)} {specs[name].dtype}" for name in members]


def _cover(names: Sequence[str], universe: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Regular expressions matching exactly ``names`` among ``universe``, as few and as short as possible.

    A prefix that only ``names`` start with (``cls/``, ``bert/pooler/``) becomes ``prefix.+``; the rest are
    grouped into families that differ only in index numbers or in their last word.
    """
    chosen = set(names)
    counts: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    for name in universe:
        for prefix in _prefixes(name):
            counts[prefix] += 1
            inside[prefix] += name in chosen
    by_prefix: dict[str, list[str]] = defaultdict(list)
    rest: list[str] = []
    for name in names:
        found = next((prefix for prefix in _prefixes(name) if counts[prefix] == inside[prefix] >= 2), None)
        if found is None:
            rest.append(name)
        else:
            by_prefix[found].append(name)
    covered = [(re.escape(prefix) + ".+", members) for prefix, members in by_prefix.items()]
    return covered + _name_groups(rest)


def _prefixes(name: str) -> list[str]:
    """Every leading part of ``name`` that ends at a separator, shortest first (``a/``, ``a/b/`` for ``a/b/c``)."""
    return [name[: match.end()] for match in re.finditer(r"[/.]", name) if match.end() < len(name)]


def _name_groups(names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Regular expressions covering exactly ``names``: one per family differing only in index numbers or last word."""
    families: dict[tuple[Atom, ...], list[str]] = defaultdict(list)
    for name in names:
        families[skeleton(name_atoms(name))].append(name)
    by_parent: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for members in families.values():
        values = [index_values(name_atoms(name)) for name in members]
        parts: list[str] = []
        position = 0
        for kind, text in name_atoms(members[0]):
            if kind == "d":
                found = sorted({row[position] for row in values})
                parts.append(text if len(found) == 1 else "(?:" + "|".join(map(str, found)) + ")")
                position += 1
            else:
                parts.append(re.escape(text))
        atoms = name_atoms(members[0])
        cut = max((number for number, (kind, _) in enumerate(atoms) if kind == "s"), default=-1) + 1
        by_parent["".join(parts[:cut])].append(("".join(parts[cut:]), members))
    result: list[tuple[str, list[str]]] = []
    for parent, family in by_parent.items():
        if len(family) == 1 or not parent:
            result.extend((parent + leaf, members) for leaf, members in family)
        else:
            leaves = "|".join(leaf for leaf, _ in family)
            result.append((f"{parent}(?:{leaves})", [name for _, members in family for name in members]))
    return result
