"""The inputs a command line names: rule files with ``--param``, sources as PATH or NAME=PATH, target factories."""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mapper.errors import PlanError, TargetError
from mapper.text import first_line


class UsageError(Exception):
    """A command line that parses but does not make sense (two unnamed sources, a bad NAME=PATH)."""


_NAMED = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*)=(.+)", re.DOTALL)

# A plan or report nests about six levels deep; far deeper is not a plan, and would exhaust the parser's stack.
MAX_PLAN_DEPTH = 64
# A JSON string (skipped whole, so that brackets inside names do not count) or a bracket.
_JSON_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


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


def reads_a_tf_checkpoint(args: argparse.Namespace) -> bool:
    """Whether one of the command's ``--source`` values is a TF checkpoint, or is opened as one (``--source-format``).

    Example:
        >>> reads_a_tf_checkpoint(argparse.Namespace(command="validate", source=None))
        False
        >>> reads_a_tf_checkpoint(argparse.Namespace(command="explain", source=["w.npz"]))
        False
        >>> reads_a_tf_checkpoint(argparse.Namespace(command="validate", source=["head=x"], source_format=["tf-checkpoint"]))
        True
    """
    from mapper.sources.tf_checkpoint import is_tf_checkpoint

    given = getattr(args, "source", None)
    values: list[str] = [] if given is None else [given] if isinstance(given, str) else list(given)
    if any(value.rpartition("=")[2] == "tf-checkpoint" for value in getattr(args, "source_format", None) or ()):
        return bool(values)
    for value in values:
        matched = _NAMED.fullmatch(value)
        path = matched.group(2) if matched is not None and not Path(value).exists() else value
        if is_tf_checkpoint(path):
            return True
    return False


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


def check_json_depth(text: str, label: str, *, limit: int = MAX_PLAN_DEPTH) -> None:
    """Refuse plan JSON nested deeper than ``limit`` before it is parsed, as a PlanError naming the file.

    Parsing such a file would fail deep inside the JSON decoder (a RecursionError), or take the stack with it.

    Raises:
        PlanError: an array or object lies more than ``limit`` levels deep.

    Example:
        >>> check_json_depth('{"names": ["[[[", {"a": []}]}', "plan.json", limit=4)
        >>> check_json_depth("[" * 100_000 + "]" * 100_000, "deep.json")
        Traceback (most recent call last):
        mapper.errors.PlanError: deep.json: not a plan: its JSON nests more than 64 levels deep (a plan nests about 6); ...
    """
    depth = 0
    for token in _JSON_NESTING.finditer(text):
        bracket = text[token.start()]
        if bracket in "[{":
            depth += 1
            if depth > limit:
                raise PlanError(
                    f"{label}: not a plan: its JSON nests more than {limit} levels deep (a plan nests about 6); "
                    "give a file written by 'mapper plan --format json'",
                    problems=(),
                    plan=None,
                )
        elif bracket in "]}":
            depth -= 1


def plan_from_args(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Plan ``args.rules`` from ``--source`` into ``--target``: the plan, the opened sources and the target."""
    from mapper.api import as_sources, make_plan

    rules = load_rule_file(args, args.rules)
    source = as_sources(sources(args.source), format=source_formats(args))
    target = load_target(args.target, checkpoint_root=rules.target.checkpoint_root)
    return make_plan(rules, source, target), source, target


def load_target(spec: str, *, checkpoint_root: str = "model") -> Any:
    """The VariableTarget of what ``--target MODULE:FACTORY`` builds; every way it can fail is a TargetError.

    Raises:
        TargetError: the factory cannot be loaded or run (see ``load_target_factory``), or what it built is not a
            target (an unbuilt model, an int, a model without variables); the message starts with the spec.

    Example:
        >>> load_target("collections:OrderedDict")
        Traceback (most recent call last):
        mapper.errors.TargetError: --target 'collections:OrderedDict': the dict given as target is empty; ...
    """
    from mapper.api import as_target

    built = load_target_factory(spec)
    try:
        return as_target(built, checkpoint_root=checkpoint_root)
    except TargetError as problem:
        raise TargetError(f"--target {spec!r}: {problem}") from problem


def load_target_factory(spec: str) -> object:
    """Import ``MODULE:FACTORY`` and return what the factory builds (or the attribute itself if not callable).

    The module and the factory are the user's code: whatever they raise (a syntax error, an exception at import
    or while building, ``sys.exit``) is reported as a TargetError that says which, with the exception's type and
    first line, and where in the user's file it was raised.

    Raises:
        TargetError: the spec is malformed, the module cannot be imported, it lacks the attribute, or importing it
            or calling the factory raised.

    Example:
        >>> load_target_factory("collections:OrderedDict")
        OrderedDict()
        >>> load_target_factory("collections:OrderdDict")
        Traceback (most recent call last):
        mapper.errors.TargetError: --target 'collections:OrderdDict': module 'collections' has no 'OrderdDict'; did you mean OrderedDict...?
        >>> load_target_factory("json:loads")
        Traceback (most recent call last):
        mapper.errors.TargetError: --target 'json:loads': the target factory loads() raised TypeError: ...
    """
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise TargetError(f"--target {spec!r} is not MODULE:FACTORY (e.g. mapper.demo:new_model or models.py:build)")
    module = _import_module(spec, module_name)
    factory = getattr(module, attribute, None)
    if factory is None:
        public = [name for name in dir(module) if not name.startswith("_") and callable(getattr(module, name))]
        close = difflib.get_close_matches(attribute, public, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise TargetError(f"--target {spec!r}: module {module_name!r} has no {attribute!r}{hint}")
    if not callable(factory):
        return factory
    try:
        return factory()
    except (Exception, SystemExit) as problem:
        raise TargetError(
            f"--target {spec!r}: the target factory {attribute}() {_raised(problem)}{_install_hint(problem)}"
        ) from problem


def _install_hint(problem: BaseException) -> str:
    """What to install when ``problem`` is a missing Keras backend (``tensorflow`` on the default backend)."""
    from mapper.cli.backend import missing_package_hint

    return missing_package_hint(problem)


def _raised(problem: BaseException) -> str:
    """``raised Type: first line``, with the innermost place in the user's code it came from, for a message.

    Example:
        >>> _raised(ValueError("no weights\\nmore"))
        'raised ValueError: no weights'
        >>> _raised(SystemExit(2))
        'called sys.exit(2)'
    """
    if isinstance(problem, SystemExit):
        return f"called sys.exit({problem.code!r})"
    frames = [frame for frame in traceback.extract_tb(problem.__traceback__) if _is_users(frame.filename)]
    where = f" (at {frames[-1].filename}:{frames[-1].lineno}, in {frames[-1].name})" if frames else ""
    return f"raised {type(problem).__name__}: {first_line(problem)}{where}"


def _is_users(filename: str) -> bool:
    """Whether a traceback frame is in the user's code: not this module, an installed package or importlib."""
    return filename != __file__ and "site-packages" not in filename and not filename.startswith("<frozen")


def _import_module(spec: str, module_name: str) -> Any:
    """The module a ``--target`` names, a dotted module name or a path to a .py file; failures are TargetErrors."""
    try:
        if not (module_name.endswith(".py") or os.sep in module_name):
            return importlib.import_module(module_name)
        return _import_file(spec, module_name)
    except TargetError:
        raise
    except SyntaxError as problem:
        where = f" at {problem.filename}:{problem.lineno}" if problem.filename else ""
        raise TargetError(f"--target {spec!r}: {module_name!r} has a syntax error{where}: {problem.msg}") from problem
    except ImportError as problem:
        raise TargetError(
            f"--target {spec!r}: cannot import {module_name!r}: {problem}{_install_hint(problem)}"
        ) from problem
    except (Exception, SystemExit) as problem:
        raise TargetError(f"--target {spec!r}: importing {module_name!r} {_raised(problem)}") from problem


def _import_file(spec: str, module_name: str) -> Any:
    """Run a .py file as a module, registered in ``sys.modules`` (under its stem) only if it imports cleanly."""
    path = Path(module_name)
    if not path.is_file():
        raise TargetError(f"--target {spec!r}: no file {module_name!r}")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    if module_spec is None or module_spec.loader is None:
        raise TargetError(f"--target {spec!r}: cannot load {module_name!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    previous = sys.modules.get(path.stem)
    sys.modules[path.stem] = module  # dataclasses and pickling look the module up while it runs
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        # A half-run module must not stay importable, nor hide the module of that name it replaced.
        if previous is None:
            sys.modules.pop(path.stem, None)
        else:
            sys.modules[path.stem] = previous
        raise
    return module
