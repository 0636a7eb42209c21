"""Loading rule files: reading TOML, following ``extends`` chains, and applying ``--param`` overrides."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mapper.errors import RuleFileError, RuleIssue
from mapper.rules.common import closest
from mapper.rules.issues import nesting_issue, toml_issue
from mapper.rules.model import RuleSet, validate_rules

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


def load_rules(
    path: str | os.PathLike[str], *, params: Mapping[str, Any] | None = None, match_timeout: float | None = None
) -> RuleSet:
    """Read and validate a rule file and the files it ``extends``, reporting every problem at once.

    ``extends = ["base.toml"]`` paths are relative to the file that names them. The composed rule set lists
    the extending file's rules (and keeps, and examples) first, then each base's, depth first; a file reached
    twice is used once. ``[params]``, ``[policies]`` and ``[target]`` are merged key by key, the extending file
    winning. ``params`` overrides declared parameters (as ``--param`` does); each must be declared somewhere
    in the chain and keep its declared type.

    Args:
        path: the TOML file.
        params: parameter overrides.
        match_timeout: the time bound, in seconds, on every match of the rules' patterns (default:
            ``$MAPPER_MATCH_TIMEOUT``, else one second); a match that runs past it raises ``MatchTimeoutError``.

    Returns:
        The validated, frozen RuleSet; each rule remembers the file and position it came from.

    Raises:
        RuleFileError: a file is missing, is not valid TOML (with line and column), breaks the schema, extends
            a missing file or itself (a cycle), or an override is undeclared or of the wrong type; each issue names
            the file, the rule, the field, what is wrong and how to fix it.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "base.toml").write_text('format = 1\\n[params]\\nn = 2\\n[[rules]]\\nmatch = "step"\\nskip = "counter"\\n')
        >>> _ = (folder / "r.toml").write_text('format = 1\\nextends = ["base.toml"]\\n[[rules]]\\nmatch = "w"\\ntarget = "v{n}"\\n')
        >>> rules = load_rules(folder / "r.toml", params={"n": 3})
        >>> [rule.match for rule in rules.rules], rules.rules[0].render(rules.rules[0].fullmatch("w")), rules.params
        (['w', 'step'], 'v3', {'n': 3})
    """
    file = os.fspath(path)
    chain = _collect_chain(file, ())
    merged = {key: _merged(chain, key) for key in ("params", "policies", "target", "export")}
    merged["params"].update(_checked_overrides(file, merged["params"], params or {}))
    parts = _validated(chain, merged["params"], match_timeout)
    if len(parts) == 1:
        return parts[0]
    return _composed(file, parts, merged)


def _merged(chain: list[tuple[str, dict[str, Any]]], key: str) -> dict[str, Any]:
    """Table ``key`` merged over the chain key by key, earlier files (the extending ones) winning."""
    merged: dict[str, Any] = {}
    for _, data in reversed(chain):
        table = data.get(key, {})
        if isinstance(table, Mapping):
            merged.update(table)
    return merged


def _validated(
    chain: list[tuple[str, dict[str, Any]]], params: dict[str, Any], match_timeout: float | None
) -> list[RuleSet]:
    """Each file of the chain validated with the merged parameters; every issue of every file raised at once."""
    issues: list[RuleIssue] = []
    parts: list[RuleSet] = []
    for member_file, data in chain:
        try:
            parts.append(validate_rules({**data, "params": params}, file=member_file, match_timeout=match_timeout))
        except RuleFileError as error:
            issues.extend(error.issues)
    if issues:
        raise RuleFileError(issues)
    return parts


def _composed(file: str, parts: list[RuleSet], merged: Mapping[str, dict[str, Any]]) -> RuleSet:
    """One RuleSet of the chain's parts (just validated here), each rule and keep remembering its file."""
    for part in parts:
        for index, entry in enumerate(part.rules):
            entry._origin = (part.file, index + 1)
        for index, keep in enumerate(part.keep):
            keep._origin = (part.file, index + 1)
    head = parts[0]
    composed = RuleSet.model_validate(
        {
            "format": head.format,
            "description": head.description,
            "params": merged["params"],
            "target": merged["target"],
            "policies": merged["policies"],
            "export": merged["export"],
            "extends": head.extends,
            "rules": [entry for part in parts for entry in part.rules],
            "keep": [keep for part in parts for keep in part.keep],
            "examples": [example for part in parts for example in part.examples],
        },
        context={"params": merged["params"]},
    )
    composed._file = file
    return composed


def _collect_chain(file: str, seen: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """This file's table, then every file it extends, depth first, each file once."""
    resolved = os.path.realpath(file)
    if resolved in seen:
        cycle = " -> ".join([*(Path(step).name for step in seen), Path(resolved).name])
        raise RuleFileError(
            [RuleIssue(file, f"extends forms a cycle: {cycle}", field="extends", hint="remove one link")]
        )
    data = _read_table(file)
    chain = [(file, data)]
    entries = data.get("extends", [])
    if not isinstance(entries, list):
        return chain  # the schema reports the wrong type
    for entry in entries:
        if not isinstance(entry, str):
            continue
        base = os.fspath(Path(file).parent / entry)
        if not Path(base).is_file():
            raise RuleFileError(
                [
                    RuleIssue(
                        file,
                        f"extends {entry!r}, but there is no file {base}",
                        field="extends",
                        hint="paths are relative to the file that names them",
                    )
                ]
            )
        for member in _collect_chain(base, (*seen, resolved)):
            if all(os.path.realpath(member[0]) != os.path.realpath(known) for known, _ in chain):
                chain.append(member)
    return chain


def _read_table(file: str) -> dict[str, Any]:
    try:
        text = Path(file).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuleFileError([RuleIssue(file, "no such rule file; check the path")]) from None
    except (OSError, UnicodeDecodeError) as error:
        raise RuleFileError([RuleIssue(file, f"cannot read the rule file: {error}")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RuleFileError([toml_issue(file, error)]) from None
    except RecursionError:
        raise RuleFileError([nesting_issue(file)]) from None


def _checked_overrides(file: str, declared: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides that name declared parameters and keep their types (an int may stand for a float)."""
    issues: list[RuleIssue] = []
    checked: dict[str, Any] = {}
    for name, value in overrides.items():
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            hint = closest(name, sorted(declared)).removeprefix("; ") if declared else None
            issues.append(
                RuleIssue(
                    file, f"--param {name}: the rule file declares no such parameter (declared: {known})", hint=hint
                )
            )
            continue
        current = declared[name]
        fits = type(value) is type(current) or (isinstance(current, float) and type(value) is int)
        if not fits:
            issues.append(
                RuleIssue(
                    file,
                    f"--param {name}={value!r}: {name} is declared as {type(current).__name__} ({current!r}), "
                    f"not {type(value).__name__}",
                )
            )
            continue
        checked[name] = float(value) if isinstance(current, float) else value
    if issues:
        raise RuleFileError(issues)
    return checked


def parse_param(text: str) -> tuple[str, Any]:
    """Parse a ``NAME=VALUE`` command-line override; the value is read as TOML (``24``, ``0.1``, ``true``) or a string.

    Example:
        >>> parse_param("num_layers=24"), parse_param("act=gelu"), parse_param("scale=0.5")
        (('num_layers', 24), ('act', 'gelu'), ('scale', 0.5))
    """
    name, separator, raw = text.partition("=")
    if not separator or not name.strip().isidentifier():
        raise RuleFileError([RuleIssue("--param", f"{text!r} is not NAME=VALUE", hint="e.g. --param num_layers=24")])
    try:
        value = tomllib.loads(f"value = {raw.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return name.strip(), value


__all__ = ["load_rules", "parse_param"]
