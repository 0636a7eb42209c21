"""The inputs a command line names: rule files with ``--param``, sources as PATH or NAME=PATH, target factories."""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mapper.errors import TargetError


class UsageError(Exception):
    """A command line that parses but does not make sense (two unnamed sources, a bad NAME=PATH)."""


_NAMED = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*)=(.+)", re.DOTALL)


def load_rule_file(args: argparse.Namespace, path: str) -> Any:
    """The rule file at ``path``, with the command line's ``--param NAME=VALUE`` overrides."""
    from mapper.rules import load_rules, parse_param

    overrides = dict(parse_param(value) for value in getattr(args, "param", None) or ())
    return load_rules(path, params=overrides)


def sources(values: Sequence[str]) -> str | dict[str, str]:
    """The source paths of ``--source`` values: one PATH, or ``{NAME: PATH}`` for NAME=PATH values.

    A value that is an existing path is a path even if it holds '='.

    Raises:
        UsageError: a name is given twice, or plain paths are mixed with named ones or given more than once.

    Example:
        >>> sources(["ckpt-1"]), sources(["body=a.npz", "head=b.npz"])
        ('ckpt-1', {'body': 'a.npz', 'head': 'b.npz'})
        >>> sources(["a.npz", "head=b.npz"])
        Traceback (most recent call last):
        mapper.cli.inputs.UsageError: give one source as PATH, or every source as NAME=PATH (got 'a.npz', ...
    """
    named: dict[str, str] = {}
    plain: list[str] = []
    for value in values:
        matched = _NAMED.fullmatch(value)
        if matched is None or Path(value).exists():
            plain.append(value)
            continue
        name, path = matched.groups()
        if name in named:
            raise UsageError(f"source {name!r} is given twice ({named[name]!r} and {path!r}); give each name once")
        named[name] = path
    if plain and (named or len(plain) > 1):
        raise UsageError(
            f"give one source as PATH, or every source as NAME=PATH (got {', '.join(map(repr, values))}); names are "
            'the ones the rule file\'s rules read with source = "NAME"'
        )
    return named or plain[0]


def source_formats(args: argparse.Namespace) -> str | dict[str, str] | None:
    """``--source-format`` values: one FORMAT for every source, or ``{NAME: FORMAT}``.

    Raises:
        UsageError: an unknown format, or FORMAT given twice, or mixed with NAME=FORMAT.

    Example:
        >>> source_formats(argparse.Namespace(source_format=["head=npz"]))
        {'head': 'npz'}
    """
    from mapper.sources import FORMATS

    values: list[str] = args.source_format or []
    formats: dict[str, str] = {}
    single: str | None = None
    for value in values:
        name, _, format_name = value.rpartition("=")
        if format_name not in FORMATS:
            raise UsageError(
                f"--source-format {value!r}: unknown format {format_name!r}; use one of {', '.join(FORMATS)}"
            )
        if name:
            formats[name] = format_name
        elif single is None:
            single = format_name
        else:
            raise UsageError("--source-format without NAME= may be given once; use NAME=FORMAT for named sources")
    if single is not None and formats:
        raise UsageError("give --source-format either as FORMAT for the one source, or as NAME=FORMAT for each")
    return formats or single


def plan_from_args(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Plan ``args.rules`` from ``--source`` into ``--target``: the plan, the opened sources and the target."""
    from mapper.api import as_sources, as_target, make_plan

    rules = load_rule_file(args, args.rules)
    source = as_sources(sources(args.source), format=source_formats(args))
    target_object = load_target_factory(args.target)
    target = as_target(target_object, checkpoint_root=rules.target.checkpoint_root)
    return make_plan(rules, source, target), source, target


def load_target_factory(spec: str) -> object:
    """Import ``MODULE:FACTORY`` and return what the factory builds (or the attribute itself if not callable).

    Raises:
        TargetError: the spec is malformed, the module cannot be imported, or it lacks the attribute.

    Example:
        >>> load_target_factory("collections:OrderedDict")
        OrderedDict()
        >>> load_target_factory("collections:OrderdDict")
        Traceback (most recent call last):
        mapper.errors.TargetError: --target 'collections:OrderdDict': module 'collections' has no 'OrderdDict'; did you mean OrderedDict...?
    """
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise TargetError(f"--target {spec!r} is not MODULE:FACTORY (e.g. mapper.demo:new_model or models.py:build)")
    try:
        module = _import_module(spec, module_name)
    except TargetError:
        raise
    except ImportError as error:
        raise TargetError(f"--target {spec!r}: cannot import {module_name!r}: {error}") from error
    factory = getattr(module, attribute, None)
    if factory is None:
        public = [name for name in dir(module) if not name.startswith("_") and callable(getattr(module, name))]
        close = difflib.get_close_matches(attribute, public, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise TargetError(f"--target {spec!r}: module {module_name!r} has no {attribute!r}{hint}")
    return factory() if callable(factory) else factory


def _import_module(spec: str, module_name: str) -> Any:
    """The module a ``--target`` names: a dotted module name, or a path to a .py file."""
    if not (module_name.endswith(".py") or os.sep in module_name):
        return importlib.import_module(module_name)
    path = Path(module_name)
    if not path.is_file():
        raise TargetError(f"--target {spec!r}: no file {module_name!r}")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    if module_spec is None or module_spec.loader is None:
        raise TargetError(f"--target {spec!r}: cannot load {module_name!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[path.stem] = module
    module_spec.loader.exec_module(module)
    return module
