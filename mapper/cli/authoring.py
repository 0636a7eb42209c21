"""The verbs that help write and review rule files: ``explain``, ``suggest``, ``schema`` and ``diff``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mapper.cli import EXIT_OK, EXIT_PROBLEMS
from mapper.cli.inputs import UsageError, check_json_depth, load_rule_file, load_target, source_formats, sources
from mapper.cli.terminal import out
from mapper.errors import PlanError, TargetError


def explain(args: argparse.Namespace) -> int:
    """``mapper explain``: every rule tried on one source name, or where one target variable's value comes from."""
    from mapper.api import as_sources, make_plan, source_specs
    from mapper.authoring.explain import explain_source, explain_target

    rules = load_rule_file(args, args.rules)
    if args.target_name and not (args.source and args.target):
        raise UsageError("--target-name needs --source and --target: the answer comes from the plan")
    source_map = None
    plan = None
    if args.source:
        opened = as_sources(sources(args.source))
        source_map, _ = source_specs(opened)
        if args.target:
            target = load_target(args.target, checkpoint_root=rules.target.checkpoint_root)
            plan = make_plan(rules, opened, target)
    if args.target_name:
        out(explain_target(plan, args.name))  # type: ignore[arg-type]  # checked: --target-name needs both
    else:
        out(explain_source(rules, args.name, source=_map_holding(source_map, args.name), plan=plan))
    return EXIT_OK


def _map_holding(source_map: Any, name: str) -> Any:
    """The one source's specs, or, of several named sources, the first that has ``name``."""
    from mapper.specs import SourceSet

    if isinstance(source_map, SourceSet):
        return next((specs for specs in source_map.values() if name in specs), next(iter(source_map.values())))
    return source_map


def suggest(args: argparse.Namespace) -> int:
    """``mapper suggest``: print a draft rule file that aligns the checkpoint's names with the model's."""
    from mapper.api import as_source
    from mapper.authoring.suggest import suggest_rules

    formats = source_formats(args)
    source = as_source(args.source, format=formats if isinstance(formats, str) else None)
    target = load_target(args.target)
    suggestion = suggest_rules(source.specs(), target.map, namespace=args.namespace)
    out(suggestion.toml.rstrip("\n"))
    return EXIT_OK


def schema(args: argparse.Namespace) -> int:
    """``mapper schema``: print the JSON Schema of rule files."""
    from mapper.authoring.schema import rules_schema_json

    del args  # no options
    out(rules_schema_json().rstrip("\n"))
    return EXIT_OK


def diff(args: argparse.Namespace) -> int:
    """``mapper diff``: compare two plans (JSON files, or rule files planned on the spot); exit 1 if they differ."""
    from mapper.authoring.diff import diff_plans, render_diff

    plans = [_plan_for_diff(args, path) for path in (args.old, args.new)]
    difference = diff_plans(plans[0], plans[1])
    out(render_diff(difference, old_label=args.old, new_label=args.new, markdown=args.format == "markdown"))
    return EXIT_OK if difference.empty else EXIT_PROBLEMS


def _plan_for_diff(args: argparse.Namespace, path: str) -> Any:
    """The plan ``path`` stands for: a rule file planned against ``--source`` and ``--target``, or a JSON file."""
    if path.endswith(".toml"):
        if not (args.source and args.target):
            raise UsageError(f"{path} is a rule file: give --source and --target to plan it")
        from mapper.api import as_sources, make_plan

        rules = load_rule_file(args, path)
        target = load_target(args.target, checkpoint_root=rules.target.checkpoint_root)
        return make_plan(rules, as_sources(sources(args.source)), target, lints=False)
    from mapper.authoring.diff import load_plan_for_diff

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as problem:
        raise TargetError(f"cannot read {path}: {problem.strerror or problem}") from None
    except UnicodeDecodeError as problem:
        raise PlanError(
            f"{path}: not a plan: not UTF-8 text (byte {problem.start} is {problem.object[problem.start]:#04x})",
            problems=(),
            plan=None,
        ) from None
    check_json_depth(text, path)
    return load_plan_for_diff(text, path)
