"""``mapper inspect --target``: a model's variables in both namespaces a rule file can name them in."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mapper.cli import EXIT_OK
from mapper.cli.inputs import load_target
from mapper.cli.terminal import out
from mapper.naming import expand_pattern, group_names, group_pairs
from mapper.specs import CHECKPOINT_NAMESPACE, PATH_NAMESPACE, TargetMap, format_shape
from mapper.text import human_bytes, natural_key

DEFAULT_CHECKPOINT_ROOT = "model"
_COLUMNS = ("count", "shape", "dtype", "size", "namespace", "name")


@dataclass(frozen=True, slots=True)
class VariableGroup:
    """Variables of one shape and dtype whose names vary in parallel: ``path`` and ``checkpoint`` brace patterns.

    ``checkpoint`` is None when the variables have no checkpoint key (a dict of variables, or a variable that
    ``tf.train.Checkpoint`` would not reach); ``nbytes`` is the group's total size.
    """

    count: int
    path: str
    checkpoint: str | None
    shape: tuple[int, ...]
    dtype: str
    nbytes: int


def inspect_target(args: argparse.Namespace, pattern: re.Pattern[str] | None) -> int:
    """List the variables ``--target`` builds, grouped as the plan report groups names, as a table or JSON."""
    root = args.checkpoint_root or DEFAULT_CHECKPOINT_ROOT
    target = load_target(args.target, checkpoint_root=root)
    names = [name for name in target.map.variables if _shown(target.map, name, pattern)]
    groups = variable_groups(target.map, names, verbose=args.verbose)
    if args.format == "json":
        document = _document(args.target, target.description, root, target.map, names=names, groups=groups)
        out(json.dumps(document, indent=2))
    else:
        out(_text(args.target, target.description, root, target.map, shown=len(names), groups=groups))
    return EXIT_OK


def _shown(targets: TargetMap, name: str, pattern: re.Pattern[str] | None) -> bool:
    """Whether ``--match`` finds the variable under either of its names."""
    key = targets.key_of(name, CHECKPOINT_NAMESPACE)
    return pattern is None or bool(pattern.search(name)) or (key is not None and bool(pattern.search(key)))


def variable_groups(targets: TargetMap, names: Sequence[str], *, verbose: bool = False) -> list[VariableGroup]:
    """The variables ``names``, grouped by shape and dtype, then into parallel brace patterns (``group_pairs``).

    Args:
        targets: the target's map.
        names: the canonical (path) names to group.
        verbose: one group per variable.

    Returns:
        The groups, in natural order of their path patterns.

    Example:
        >>> from mapper.specs import TensorSpec, VariableMap
        >>> specs = VariableMap([TensorSpec(f"d{i}/bias", (2,), "float32") for i in (1, 2, 3)])
        >>> keys = {name: f"model/layers/{name[1]}/bias" for name in specs}
        >>> [(g.count, g.path, g.checkpoint) for g in variable_groups(TargetMap(specs, {"checkpoint": keys}), list(specs))]
        [(3, 'd{1..3}/bias', 'model/layers/{1..3}/bias')]
    """
    buckets: dict[tuple[tuple[int, ...], str, bool], list[tuple[str, str | None]]] = {}
    for name in names:
        spec = targets.variables[name]
        key = targets.key_of(name, CHECKPOINT_NAMESPACE)
        buckets.setdefault((spec.shape, spec.dtype, key is not None), []).append((name, key))
    groups: list[VariableGroup] = []
    for (shape, dtype, keyed), members in buckets.items():
        size = targets.variables[members[0][0]].nbytes
        patterns: list[tuple[int, str, str | None]]
        if verbose:
            patterns = [(1, name, key) for name, key in members]
        elif keyed:
            patterns = [(g.count, g.left, g.right) for g in group_pairs((name, str(key)) for name, key in members)]
        else:
            grouped = group_names(name for name, _ in members)
            patterns = [(len(expand_pattern(pattern)), pattern, None) for pattern in grouped]
        groups.extend(VariableGroup(count, path, key, shape, dtype, count * size) for count, path, key in patterns)
    return sorted(groups, key=lambda group: natural_key(group.path))


def _namespace_lines(root: str, targets: TargetMap) -> list[str]:
    """What each namespace is, and how a rule file chooses it, for the header."""
    lines = [f'  {PATH_NAMESPACE:<10}  the names rules match by default (namespace = "path"); for Keras, variable.path']
    if CHECKPOINT_NAMESPACE in targets.namespaces:
        lines.append(
            f"  {CHECKPOINT_NAMESPACE:<10}  the key in tf.train.Checkpoint({root}=...): "
            'the names for namespace = "checkpoint"'
        )
    else:
        lines.append(f"  {CHECKPOINT_NAMESPACE:<10}  none (only Keras models and tf.Modules have checkpoint keys)")
    return lines


def _text(
    spec: str, description: str, root: str, targets: TargetMap, *, shown: int, groups: list[VariableGroup]
) -> str:
    """A header, what the namespaces are, then one row per group: its path, and below it its checkpoint key."""
    total = sum(group.nbytes for group in groups)
    lines = [
        f"{spec}: {description}: {shown} of {len(targets.variables)} variables, {human_bytes(total)}",
        *_namespace_lines(root, targets),
    ]
    if not groups:
        return "\n".join(lines)
    cells = [[str(group.count), format_shape(group.shape), group.dtype, human_bytes(group.nbytes)] for group in groups]
    widths = [max(len(_COLUMNS[i]), *(len(row[i]) for row in cells)) for i in range(4)]
    widths.append(len(CHECKPOINT_NAMESPACE))
    lines += ["", "  ".join(header.ljust(width) for header, width in zip(_COLUMNS, [*widths, 0], strict=True)).rstrip()]
    indent = " " * (sum(widths[:4]) + 2 * 4)
    keyed = CHECKPOINT_NAMESPACE in targets.namespaces
    for (count, shape, dtype, size), group in zip(cells, groups, strict=True):
        row = [count.rjust(widths[0]), shape.ljust(widths[1]), dtype.ljust(widths[2]), size.rjust(widths[3])]
        lines.append("  ".join([*row, PATH_NAMESPACE.ljust(widths[4]), group.path]))
        if keyed:
            key = group.checkpoint or f"(none: tf.train.Checkpoint({root}=...) does not reach it)"
            lines.append(f"{indent}{CHECKPOINT_NAMESPACE.ljust(widths[4])}  {key}")
    return "\n".join(lines)


def _document(
    spec: str, description: str, root: str, targets: TargetMap, *, names: list[str], groups: list[VariableGroup]
) -> dict[str, Any]:
    """The JSON of ``inspect --target``: every variable in the target's order, and the groups the table shows."""
    variables = [
        {
            PATH_NAMESPACE: name,
            CHECKPOINT_NAMESPACE: targets.key_of(name, CHECKPOINT_NAMESPACE),
            "shape": list(targets.variables[name].shape),
            "dtype": targets.variables[name].dtype,
            "bytes": targets.variables[name].nbytes,
        }
        for name in names
    ]
    return {
        "target": description,
        "factory": spec,
        "checkpoint_root": root,
        "namespaces": list(targets.namespaces),
        "variables": variables,
        "groups": [
            {
                "count": group.count,
                PATH_NAMESPACE: group.path,
                CHECKPOINT_NAMESPACE: group.checkpoint,
                "shape": list(group.shape),
                "dtype": group.dtype,
                "bytes": group.nbytes,
            }
            for group in groups
        ],
        "total_bytes": sum(group.nbytes for group in groups),
    }
