"""The ``mapper`` command: inspect, validate, plan, apply and convert; the only module that prints."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from mapper.errors import ApplyError, MapperError, PlanError, RuleFileError, TargetError

EXIT_OK = 0
EXIT_PROBLEMS = 1  # the input was read, and is wrong: an invalid rule file, a plan with errors
EXIT_USAGE = 2  # the command line itself is wrong (argparse's own code)
EXIT_INPUT = 3  # an input cannot be read: missing or corrupt source, unusable target
EXIT_APPLY = 4  # applying failed; the target was left unchanged

_EXIT_CODES = f"""exit codes:
  {EXIT_OK}  success (for plan: the plan has no errors)
  {EXIT_PROBLEMS}  problems found: an invalid rule file, or a plan with errors (nothing was changed)
  {EXIT_USAGE}  bad command line
  {EXIT_INPUT}  an input cannot be read: missing or corrupt checkpoint, unusable target factory
  {EXIT_APPLY}  applying failed; the model was left unchanged"""

_CONVERT_EXIT_CODES = f"""exit codes:
  {EXIT_OK}  success: the output was written
  {EXIT_PROBLEMS}  problems found: an invalid rule file, or a plan with errors (nothing was written)
  {EXIT_USAGE}  bad command line
  {EXIT_INPUT}  an input cannot be read, or the output is refused (it exists, its directory is missing, or its
     format cannot hold a tensor)
  {EXIT_APPLY}  converting failed part-way; no output and no temporary file was left behind"""

_SOURCE_HELP = (
    "the checkpoint: a TF checkpoint prefix or directory, a .safetensors file or index, a Keras .h5, a .npz or a "
    'PyTorch file. For rule files that read several sources (source = "name" in a rule), give each as NAME=PATH '
    "and repeat --source"
)
_SOURCE_FORMAT_HELP = (
    "open the sources as FORMAT instead of detecting it (tf-checkpoint, safetensors, keras-h5, npz, pytorch); "
    "NAME=FORMAT for one named source; may be repeated"
)

_PARAM_HELP = "set a parameter the rule file declares in [params] (e.g. num_layers=24); may be repeated"

_TARGET_HELP = (
    "the target model as MODULE:FACTORY, where MODULE is a dotted module name or a path to a .py file and "
    "FACTORY a function returning a built Keras model, a tf.Module, or a dict of variables "
    "(e.g. mapper.demo:new_model or models/my_model.py:build)"
)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps our hand-wrapped examples as written."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mapper`` command, with a teaching ``--help`` on every verb.

    Example:
        >>> build_parser().parse_args(["validate", "rules/a.toml"]).command
        'validate'
    """
    parser = argparse.ArgumentParser(
        prog="mapper",
        formatter_class=_Formatter,
        description="Move weights from checkpoints into Keras/TensorFlow models with declarative TOML rule files.\n"
        "Plan first (a dry run that reads no tensor), review the report, then apply.",
        epilog="examples:\n"
        "  mapper inspect pretrained/ckpt-1\n"
        "  mapper validate rules/*.toml\n"
        "  mapper plan rules/keras-same-architecture.toml --source pretrained/ckpt-1 --target mapper.demo:new_model\n"
        "  mapper apply rules/keras-same-architecture.toml --source pretrained/ckpt-1 --target mapper.demo:new_model "
        "--output finetune/ckpt\n"
        "  mapper convert rules/hf-bert-to-keras-hub.toml bert/model.safetensors converted/ckpt\n\n" + _EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    inspect = verbs.add_parser(
        "inspect",
        formatter_class=_Formatter,
        help="list a checkpoint's tensors: names, shapes, dtypes, sizes (reads no tensor data)",
        description="List every tensor of a checkpoint with its shape, dtype and size, without reading tensor data.",
        epilog="examples:\n"
        "  mapper inspect pretrained/ckpt-1\n"
        "  mapper inspect pretrained/ --match '.*attention.*'\n"
        "  mapper inspect pretrained/ckpt-1 --format json | jq '.tensors | length'",
    )
    inspect.add_argument("source", help="checkpoint prefix, or a directory holding a 'checkpoint' file")
    inspect.add_argument(
        "--match", metavar="REGEX", help="only names this regular expression matches (search, not full match)"
    )
    inspect.add_argument("--format", choices=("text", "json"), default="text")

    validate = verbs.add_parser(
        "validate",
        formatter_class=_Formatter,
        help="check rule files against the schema, reporting every problem at once",
        description="Check rule files: TOML syntax, keys, regular expressions, templates and operations.\n"
        "Also runs the file's [[examples]] (source names and the target each must get) and its lints\n"
        "(M104 odd templates; with --source, M102 shadowed and M103 overlapping rules). Needs no model.",
        epilog="examples:\n  mapper validate rules/bert.toml\n  mapper validate rules/*.toml\n"
        "  mapper validate rules/bert.toml --source bert/model.ckpt --strict\n"
        "  mapper validate rules/llama.toml --param num_layers=32\n\n" + _EXIT_CODES,
    )
    validate.add_argument("rules", nargs="+", help="rule files")
    validate.add_argument(
        "--source",
        action="append",
        metavar="PATH | NAME=PATH",
        help="also lint the rules on this checkpoint's names: shadowed (M102) and overlapping (M103) rules",
    )
    validate.add_argument("--param", action="append", metavar="NAME=VALUE", help=_PARAM_HELP)
    validate.add_argument("--strict", action="store_true", help="fail (exit 1) on lint warnings too")
    validate.add_argument("-q", "--quiet", action="store_true", help="print only problems")

    _add_authoring(verbs)

    demo = verbs.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="run the built-in example: a 10-class checkpoint into a 5-class model, keeping the new head",
        description="Save a small 'pretrained' 10-class Keras model as a TensorFlow checkpoint, then inspect, plan and\n"
        "apply rules/keras-same-architecture.toml into a new 5-class model, and check that the backbone was\n"
        "restored and the new head kept its initial values.",
        epilog="examples:\n  mapper demo\n  mapper demo --workdir demo-output   # keep the checkpoints to look at",
    )
    demo.add_argument("--workdir", type=Path, help="where to write checkpoints (default: a temporary directory)")

    for verb in ("plan", "apply"):
        is_apply = verb == "apply"
        sub = verbs.add_parser(
            verb,
            formatter_class=_Formatter,
            help="apply a rule file to a model and save its weights"
            if is_apply
            else "dry run: show where every target variable's value would come from",
            description=(
                "Plan, then (if the plan has no errors) read the planned tensors, transform and assign them, and save the\n"
                "model's weights to --output. All or nothing: on any failure the model is left as it was."
                if is_apply
                else "Resolve a rule file against a checkpoint and a model and print the plan: every assignment, every skip\n"
                "with its reason and shapes, every unused tensor and unfilled variable. Reads no tensor data.\n"
                "The exit code says whether the plan has errors, so CI can gate on it."
            ),
            epilog="examples:\n"
            + (
                "  mapper apply rules/keras-same-architecture.toml --source pretrained/ckpt-1 \\\n"
                "      --target mapper.demo:new_model --output finetune/ckpt\n"
                "  mapper apply rules/bert.toml --source bert/model.ckpt --target models.py:build \\\n"
                "      --output out/model.weights.h5 --method assign\n"
                if is_apply
                else "  mapper plan rules/keras-same-architecture.toml --source pretrained/ckpt-1 --target mapper.demo:new_model\n"
                "  mapper plan rules/bert.toml --source bert/ --target models.py:build --format markdown > plan.md\n"
                "  mapper plan rules/bert.toml --source bert/ --target models.py:build --format json --output plan.json\n"
            )
            + "\n"
            + _EXIT_CODES,
        )
        sub.add_argument("rules", help="the rule file")
        sub.add_argument("--param", action="append", metavar="NAME=VALUE", help=_PARAM_HELP)
        sub.add_argument("--source", required=True, action="append", metavar="PATH | NAME=PATH", help=_SOURCE_HELP)
        sub.add_argument("--source-format", action="append", metavar="FORMAT | NAME=FORMAT", help=_SOURCE_FORMAT_HELP)
        sub.add_argument("--target", required=True, metavar="MODULE:FACTORY", help=_TARGET_HELP)
        sub.add_argument(
            "--format", choices=("text", "markdown", "json"), default="text", help="report format (default: text)"
        )
        sub.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="colour the text report")
        sub.add_argument("-v", "--verbose", action="store_true", help="list every assignment instead of grouping them")
        if is_apply:
            sub.add_argument(
                "--output",
                required=True,
                help="where to save the model's weights: a path ending in .weights.h5 (Keras), else a TF checkpoint prefix",
            )
            sub.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
            sub.add_argument(
                "--method",
                choices=("assign", "init_from_checkpoint"),
                default="assign",
                help="assign (default; batched reads, any operations) or init_from_checkpoint (no operations)",
            )
            sub.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final line")
        else:
            sub.add_argument("--output", metavar="FILE", help="write the report to FILE instead of standard output")
            sub.add_argument("-q", "--quiet", action="store_true", help="print only the verdict line and problems")
    _add_convert(verbs)
    return parser


def _add_convert(verbs: Any) -> None:
    from mapper.outputs.writers import OUTPUT_FORMATS

    convert = verbs.add_parser(
        "convert",
        formatter_class=_Formatter,
        help="write a checkpoint's tensors, renamed and transformed by a rule file, to a new file (no model needed)",
        description="Apply a rule file to a checkpoint and write the result to a new file: a TensorFlow checkpoint, a\n"
        "safetensors file or a Keras HDF5 file. Without --target, every name the rules produce is written with the\n"
        "shape and dtype its operations give ([[keep]] rules do not apply). With --target, the plan is checked\n"
        "against that model as for 'mapper plan': shapes must match and unfilled variables are reported.\n"
        "The plan report is printed first; nothing is written if it has errors. Tensors are streamed in bounded\n"
        "memory, the output is written under a temporary name beside it and moved into place only when complete,\n"
        "and the source is never changed.\n\n"
        "Output format, from OUTPUT unless --to says: .safetensors -> safetensors; .h5 / .weights.h5 -> HDF5 with\n"
        "one dataset per name (it loads with Keras model.load_weights only when the names are Keras 3 .weights.h5\n"
        "names such as layers/dense/vars/0); anything else -> a name-based TensorFlow checkpoint prefix\n"
        "(OUTPUT.index + OUTPUT.data-*), read by name with tf.train.load_checkpoint or init_from_checkpoint.",
        epilog="examples:\n"
        "  mapper convert rules/hf-bert-to-keras-hub.toml bert/model.safetensors converted/ckpt\n"
        "  mapper convert rules/rename.toml pretrained/ckpt-1 out/model.safetensors --overwrite --quiet\n"
        "  mapper convert rules/fuse.toml backbone=bert/ckpt out.weights.h5 --source head=head.npz \\\n"
        "      --target models.py:build\n"
        "  mapper convert rules/rename.toml weights.bin out/ckpt --source-format pytorch --to tf-checkpoint\n\n"
        + _CONVERT_EXIT_CODES,
    )
    convert.add_argument("rules", help="the rule file")
    convert.add_argument("--param", action="append", metavar="NAME=VALUE", help=_PARAM_HELP)
    convert.add_argument("source", metavar="SOURCE", help="the checkpoint (PATH, or NAME=PATH for a named source)")
    convert.add_argument(
        "output", metavar="OUTPUT", help="the file to write (.safetensors, .h5), or a TF checkpoint prefix"
    )
    convert.add_argument(
        "--source",
        dest="more_sources",
        action="append",
        metavar="NAME=PATH",
        help="a further named source, for rule files that read several; may be repeated",
    )
    convert.add_argument("--source-format", action="append", metavar="FORMAT | NAME=FORMAT", help=_SOURCE_FORMAT_HELP)
    convert.add_argument("--to", choices=OUTPUT_FORMATS, help="the output format, overriding OUTPUT's suffix")
    convert.add_argument(
        "--target", metavar="MODULE:FACTORY", help=_TARGET_HELP + "; optional: check the output covers this model"
    )
    convert.add_argument(
        "--format", choices=("text", "markdown", "json"), default="text", help="plan report format (default: text)"
    )
    convert.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="colour the text report")
    convert.add_argument("-v", "--verbose", action="store_true", help="list every assignment instead of grouping them")
    convert.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    convert.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final line")


def _add_authoring(verbs: Any) -> None:
    """The verbs that help write and review rule files: explain, suggest, schema, diff."""
    explain = verbs.add_parser(
        "explain",
        formatter_class=_Formatter,
        help="show why one name ends up where it does: every rule tried, and the plan's verdict",
        description="For one source name: every rule in order, whether its pattern matches (and where it stops\n"
        "fitting the name when it does not), the groups it binds, the target its template gives, and what the\n"
        "plan finally does with the name (with --target). With --target-name, NAME is a target variable and the\n"
        "question is where its value comes from.",
        epilog="examples:\n"
        "  mapper explain rules/bert.toml bert/encoder/layer_0/attention/self/query/kernel --source bert/model.ckpt\n"
        "  mapper explain rules/bert.toml layer_0_attention/query/kernel --target-name \\\n"
        "      --source bert/model.ckpt --target models.py:build\n\n" + _EXIT_CODES,
    )
    explain.add_argument("rules", help="the rule file")
    explain.add_argument("name", help="a source tensor name (or, with --target-name, a target variable name)")
    explain.add_argument("--source", action="append", metavar="PATH | NAME=PATH", help=_SOURCE_HELP)
    explain.add_argument("--target", metavar="MODULE:FACTORY", help=_TARGET_HELP + "; needed for the plan's verdict")
    explain.add_argument(
        "--target-name", action="store_true", help="NAME is a target variable: where does it come from?"
    )
    explain.add_argument("--param", action="append", metavar="NAME=VALUE", help=_PARAM_HELP)

    suggest = verbs.add_parser(
        "suggest",
        formatter_class=_Formatter,
        help="draft a rule file from a checkpoint and a model (review it before use)",
        description="Align the checkpoint's names with the model's by shared path segments, suffixes, shapes (also\n"
        "after a transpose or reshape) and order; group per-layer repeats into one rule with a layer-index group;\n"
        "and print a draft rule file whose comments say how confident each rule is and what could not be placed.",
        epilog="examples:\n"
        "  mapper suggest --source bert/model.ckpt --target models.py:build > draft.toml\n"
        "  mapper validate draft.toml && mapper plan draft.toml --source bert/model.ckpt --target models.py:build",
    )
    suggest.add_argument("--source", required=True, metavar="PATH", help="the checkpoint")
    suggest.add_argument("--source-format", action="append", metavar="FORMAT", help=_SOURCE_FORMAT_HELP)
    suggest.add_argument("--target", required=True, metavar="MODULE:FACTORY", help=_TARGET_HELP)
    suggest.add_argument(
        "--namespace", choices=("path", "checkpoint"), default="path", help="the target names the draft produces"
    )

    schema = verbs.add_parser(
        "schema",
        formatter_class=_Formatter,
        help="print the JSON Schema of rule files, for editors with TOML schema support",
        description="Print the JSON Schema of rule files (format 1). Taplo / Even Better TOML use it when a rule file\n"
        "starts with a directive such as '#:schema ../schema/rules-v1.json' (the shipped files do).",
        epilog="examples:\n  mapper schema > schema/rules-v1.json",
    )
    del schema  # no options

    diff = verbs.add_parser(
        "diff",
        formatter_class=_Formatter,
        help="compare two plans: added, removed and changed assignments",
        description="Compare two plans (JSON files from 'mapper plan --format json', plan or report), or two rule\n"
        "files planned against the same --source and --target: what a model or rule change did to the mapping.",
        epilog="examples:\n"
        "  mapper diff before.json after.json\n"
        "  mapper diff rules/old.toml rules/new.toml --source ckpt --target models.py:build --format markdown\n\n"
        "exit codes:\n  0  the plans fill every target the same way\n  1  they differ\n  2  bad command line\n"
        "  3  an input cannot be read",
    )
    diff.add_argument("old", help="a plan JSON file, or a rule file")
    diff.add_argument("new", help="a plan JSON file, or a rule file")
    diff.add_argument("--source", action="append", metavar="PATH | NAME=PATH", help="for rule files: " + _SOURCE_HELP)
    diff.add_argument("--target", metavar="MODULE:FACTORY", help="for rule files: " + _TARGET_HELP)
    diff.add_argument("--param", action="append", metavar="NAME=VALUE", help=_PARAM_HELP)
    diff.add_argument("--format", choices=("text", "markdown"), default="text")


def _explain(args: argparse.Namespace) -> int:
    from mapper.api import as_sources, as_target, make_plan, source_specs
    from mapper.authoring.explain import explain_source, explain_target

    rules = _load_rules(args, args.rules)
    if args.target_name and not (args.source and args.target):
        raise _UsageError("--target-name needs --source and --target: the answer comes from the plan")
    source_map = None
    plan = None
    if args.source:
        sources = as_sources(_sources(args.source))
        source_map, _ = source_specs(sources)
        if args.target:
            target = as_target(load_target_factory(args.target), checkpoint_root=rules.target.checkpoint_root)
            plan = make_plan(rules, sources, target)
    if args.target_name:
        _out(explain_target(plan, args.name))  # type: ignore[arg-type]  # checked: --target-name needs both
    else:
        _out(explain_source(rules, args.name, source=_map_holding(source_map, args.name), plan=plan))
    return EXIT_OK


def _map_holding(source_map: Any, name: str) -> Any:
    """The one source's specs, or, of several named sources, the first that has ``name``."""
    from mapper.specs import SourceSet

    if isinstance(source_map, SourceSet):
        return next((specs for specs in source_map.values() if name in specs), next(iter(source_map.values())))
    return source_map


def _suggest(args: argparse.Namespace) -> int:
    from mapper.api import as_source, as_target
    from mapper.authoring.suggest import suggest_rules

    formats = _source_formats(args)
    source = as_source(args.source, format=formats if isinstance(formats, str) else None)
    target = as_target(load_target_factory(args.target))
    suggestion = suggest_rules(source.specs(), target.map, namespace=args.namespace)
    _out(suggestion.toml.rstrip("\n"))
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from mapper.authoring.schema import rules_schema_json

    del args
    _out(rules_schema_json().rstrip("\n"))
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    from mapper.authoring.diff import diff_plans, load_plan_for_diff, render_diff

    plans = []
    for path in (args.old, args.new):
        if path.endswith(".toml"):
            if not (args.source and args.target):
                raise _UsageError(f"{path} is a rule file: give --source and --target to plan it")
            from mapper.api import as_sources, as_target, make_plan

            rules = _load_rules(args, path)
            target = as_target(load_target_factory(args.target), checkpoint_root=rules.target.checkpoint_root)
            plans.append(make_plan(rules, as_sources(_sources(args.source)), target, lints=False))
        else:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as error:
                raise TargetError(f"cannot read {path}: {error.strerror or error}") from None
            plans.append(load_plan_for_diff(text, path))
    difference = diff_plans(plans[0], plans[1])
    _out(render_diff(difference, old_label=args.old, new_label=args.new, markdown=args.format == "markdown"))
    return EXIT_OK if difference.empty else EXIT_PROBLEMS


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mapper`` command and return its exit code.

    Example:
        >>> main(["validate", "/no/such/rules.toml"])  # doctest: +SKIP
        1
    """
    # TensorFlow's C++ start-up chatter (CUDA probing, CPU features) is not for our users; an explicit setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in _KERAS_COMMANDS:
        _import_tensorflow_quietly()
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "inspect": _inspect,
        "validate": _validate,
        "plan": _plan,
        "apply": _apply,
        "convert": _convert,
        "demo": _demo,
        "explain": _explain,
        "suggest": _suggest,
        "schema": _schema,
        "diff": _diff,
    }
    try:
        return handlers[args.command](args)
    except _UsageError as error:
        _error(str(error))
        return EXIT_USAGE
    except RuleFileError as error:
        _error(str(error))
        return EXIT_PROBLEMS
    except PlanError as error:
        _error(str(error))
        return EXIT_PROBLEMS
    except ApplyError as error:
        _error(f"{args.command} failed: {error}")
        return EXIT_APPLY
    except MapperError as error:
        _error(str(error))
        return EXIT_INPUT
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def _inspect(args: argparse.Namespace) -> int:
    from mapper.sources import open_source
    from mapper.specs import format_shape

    source = open_source(args.source)
    specs = source.specs()
    try:
        pattern = re.compile(args.match) if args.match else None
    except re.error as error:
        _error(f"--match {args.match!r} is not a valid regular expression: {error}")
        return EXIT_USAGE
    shown = [spec for spec in specs.values() if pattern is None or pattern.search(spec.name)]
    total = sum(spec.nbytes for spec in shown)
    if args.format == "json":
        document = {
            "source": source.description,
            "tensors": [
                {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype, "bytes": spec.nbytes}
                for spec in shown
            ],
            "total_bytes": total,
        }
        _out(json.dumps(document, indent=2))
        return EXIT_OK
    rows = [(spec.name, format_shape(spec.shape), spec.dtype, _human_bytes(spec.nbytes)) for spec in shown]
    widths = [
        max([len(header), *(len(row[i]) for row in rows)])
        for i, header in enumerate(("name", "shape", "dtype", "size"))
    ]
    lines = [f"{source.description}: {len(shown)} of {len(specs)} tensors, {_human_bytes(total)}"]
    if rows:
        header = ("name", "shape", "dtype", "size")
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip())
        lines.extend(
            "  ".join(
                [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2]), row[3].rjust(widths[3])]
            ).rstrip()
            for row in rows
        )
    _out("\n".join(lines))
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from mapper.authoring.examples import check_examples
    from mapper.authoring.lint import lint

    source_map = None
    if args.source:
        from mapper.api import as_sources, source_specs

        source_map, _ = source_specs(as_sources(_sources(args.source)))
    failed = 0
    warned = 0
    for path in args.rules:
        try:
            rules = _load_rules(args, path)
        except RuleFileError as error:
            failed += 1
            _error(str(error))
            continue
        results = check_examples(rules)
        failures = [result for result in results if not result.ok]
        findings = lint(rules, source_map)
        warned += len(findings)
        for finding in findings:
            _warn(finding.message)
        for result in failures:
            _error(f"{path}: {result}")
        if failures:
            failed += 1
            continue
        if not args.quiet:
            counts = [f"{len(rules.rules)} rule{_s(len(rules.rules))}"]
            if rules.keep:
                counts.append(f"{len(rules.keep)} keep rule{_s(len(rules.keep))}")
            if results:
                counts.append(f"{len(results)} example{_s(len(results))} passed")
            if findings:
                counts.append(f"{len(findings)} lint warning{_s(len(findings))}")
            _out(f"ok: {path} ({', '.join(counts)})")
    if failed:
        _error(f"{failed} of {len(args.rules)} rule file{_s(len(args.rules))} invalid")
        return EXIT_PROBLEMS
    if warned and args.strict:
        _error(f"{warned} lint warning{_s(warned)} (--strict)")
        return EXIT_PROBLEMS
    return EXIT_OK


def _load_rules(args: argparse.Namespace, path: str) -> Any:
    from mapper.rules import load_rules, parse_param

    overrides = dict(parse_param(value) for value in getattr(args, "param", None) or ())
    return load_rules(path, params=overrides)


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def _plan(args: argparse.Namespace) -> int:
    plan, _, _ = _make_plan(args)
    if args.quiet and not args.output:
        from mapper.report import render_text

        lines = render_text(plan).splitlines()
        _out(lines[0])
        for problem in plan.problems:
            (_error if problem.is_error else _warn)(problem.message)
        return EXIT_OK if plan.ok else EXIT_PROBLEMS
    report = _render(plan, args, sys.stdout)
    if args.output:
        _write_text_atomically(Path(args.output), report)
        verdict = "no errors" if plan.ok else f"{len(plan.errors)} errors"
        _out(f"plan report ({verdict}) written to {args.output}")
    else:
        _out(report)
    return EXIT_OK if plan.ok else EXIT_PROBLEMS


def _apply(args: argparse.Namespace) -> int:
    from mapper.api import apply
    from mapper.outputs.save import check_output, save_target

    output = Path(args.output)
    check_output(output, overwrite=args.overwrite)
    plan, source, target = _make_plan(args)
    if not args.quiet or not plan.ok:
        _out(_render(plan, args, sys.stdout))
    if not plan.ok:
        raise PlanError.from_plan(plan)
    started = time.perf_counter()
    progress = _ProgressBar(sys.stderr) if _interactive() and not args.quiet else None
    result = apply(plan, source, target, method=args.method, progress=progress)
    if progress is not None:
        progress.close()
    root = _load_rules(args, args.rules).target.checkpoint_root
    save_target(target, output, checkpoint_root=root, overwrite=args.overwrite)
    seconds = time.perf_counter() - started
    _out(
        f"applied: {result.assigned} variable{'s' if result.assigned != 1 else ''} "
        f"({_human_bytes(result.bytes_read)} read) in {seconds:.2f}s; weights saved to {output}"
    )
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    import tempfile

    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="mapper-demo-") as scratch:
            return _run_demo(Path(scratch))
    return _run_demo(args.workdir)


def _run_demo(workdir: Path) -> int:
    import shlex

    from mapper import api, demo

    pretrained, checkpoint = demo.write_pretrained_checkpoint(workdir / "pretrained")
    # Shown relative to the working directory when it is inside it, as a user would type it.
    relative = os.path.relpath(demo.RULES)
    rules = Path(relative) if not relative.startswith("..") else demo.RULES
    _out(f"Saved a 'pretrained' 10-class model to {checkpoint} with tf.train.Checkpoint(model=...).write().")
    _out(f"The new model has a 5-class head. The rule file {rules.name} restores every variable whose shape fits:\n")
    _out("\n".join(f"    | {line}".rstrip() for line in rules.read_text(encoding="utf-8").strip().splitlines()))
    output = workdir / "finetune" / "ckpt"
    output.parent.mkdir(parents=True, exist_ok=True)
    common = ["--source", str(checkpoint), "--target", "mapper.demo:new_model"]
    steps = [
        ["inspect", str(checkpoint)],
        ["plan", str(rules), *common],
        ["apply", str(rules), *common, "--output", str(output), "--overwrite", "--quiet"],
    ]
    for argv in steps:
        _out(f"\n$ mapper {shlex.join(argv)}")
        code = main(argv)
        if code != EXIT_OK:
            return code
    _out("\nChecking the result through the Python API (mapper.transfer on a fresh 5-class model):")
    model = demo.new_model()
    initial = {variable.path: variable.numpy() for variable in model.weights}
    plan = api.transfer(rules, checkpoint, model)
    results = demo.compare_with_pretrained(model, pretrained, initial)
    width = max(len(path) for path, _, _ in results)
    for path, as_expected, found in results:
        _out(f"  {'ok ' if as_expected else 'BAD'}  {path:<{width}}  {found}")
    counts = plan.counts()
    _out(
        f"\n{counts['mapped']} variables restored; {counts['skipped_by_guard']} skipped by the shape guard (the new head)."
    )
    if not all(as_expected for _, as_expected, _ in results):
        _error("the demo's checks failed")
        return EXIT_PROBLEMS
    _out("Demo passed.")
    return EXIT_OK


def _convert(args: argparse.Namespace) -> int:
    from mapper.api import as_sources, as_target
    from mapper.outputs.writers import check_output, output_format
    from mapper.plan.conversion import plan_conversion
    from mapper.run.convert import write_plan

    output = Path(args.output)
    chosen = output_format(output, args.to)
    check_output(output, chosen, overwrite=args.overwrite)
    rules = _load_rules(args, args.rules)
    sources = as_sources(_sources([args.source, *(args.more_sources or ())]), format=_source_formats(args))
    target_map = None
    if args.target:
        target_map = as_target(load_target_factory(args.target), checkpoint_root=rules.target.checkpoint_root).map
    plan = plan_conversion(rules, sources, target_map, target_description=f"{output} ({chosen})")
    if not args.quiet or not plan.ok:
        _out(_render(plan, args, sys.stdout))
    if not plan.ok:
        raise PlanError.from_plan(plan)
    progress = _ProgressBar(sys.stderr, "converting") if _interactive() and not args.quiet else None
    try:
        result = write_plan(plan, sources, output, format=chosen, overwrite=args.overwrite, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    _out(
        f"converted: {result.written} tensor{'s' if result.written != 1 else ''} "
        f"({_human_bytes(result.bytes_read)} read, {_human_bytes(result.bytes_written)} written) in "
        f"{result.seconds:.2f}s; {chosen} written to {output}"
    )
    return EXIT_OK


class _UsageError(Exception):
    """A command line that parses but does not make sense (two unnamed sources, a bad NAME=PATH)."""


_NAMED = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*)=(.+)", re.DOTALL)


def _sources(values: Sequence[str]) -> str | dict[str, str]:
    """The source paths of ``--source`` values: one PATH, or ``{NAME: PATH}`` for NAME=PATH values.

    A value that is an existing path is a path even if it holds '='.
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
            raise _UsageError(f"source {name!r} is given twice ({named[name]!r} and {path!r}); give each name once")
        named[name] = path
    if plain and (named or len(plain) > 1):
        raise _UsageError(
            f"give one source as PATH, or every source as NAME=PATH (got {', '.join(map(repr, values))}); names are "
            'the ones the rule file\'s rules read with source = "NAME"'
        )
    return named or plain[0]


def _source_formats(args: argparse.Namespace) -> str | dict[str, str] | None:
    """``--source-format`` values: one FORMAT for every source, or ``{NAME: FORMAT}``."""
    from mapper.sources import FORMATS

    values: list[str] = args.source_format or []
    formats: dict[str, str] = {}
    single: str | None = None
    for value in values:
        name, _, format_name = value.rpartition("=")
        if format_name not in FORMATS:
            raise _UsageError(
                f"--source-format {value!r}: unknown format {format_name!r}; use one of {', '.join(FORMATS)}"
            )
        if name:
            formats[name] = format_name
        elif single is None:
            single = format_name
        else:
            raise _UsageError("--source-format without NAME= may be given once; use NAME=FORMAT for named sources")
    if single is not None and formats:
        raise _UsageError("give --source-format either as FORMAT for the one source, or as NAME=FORMAT for each")
    return formats or single


def _make_plan(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from mapper.api import as_sources, as_target, make_plan

    rules = _load_rules(args, args.rules)
    source = as_sources(_sources(args.source), format=_source_formats(args))
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
    """
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise TargetError(f"--target {spec!r} is not MODULE:FACTORY (e.g. mapper.demo:new_model or models.py:build)")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise TargetError(f"--target {spec!r}: no file {module_name!r}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            if module_spec is None or module_spec.loader is None:
                raise TargetError(f"--target {spec!r}: cannot load {module_name!r} as a Python module")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except TargetError:
        raise
    except ImportError as error:
        raise TargetError(f"--target {spec!r}: cannot import {module_name!r}: {error}") from error
    factory = getattr(module, attribute, None)
    if factory is None:
        public = [name for name in dir(module) if not name.startswith("_") and callable(getattr(module, name))]
        import difflib

        close = difflib.get_close_matches(attribute, public, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise TargetError(f"--target {spec!r}: module {module_name!r} has no {attribute!r}{hint}")
    return factory() if callable(factory) else factory


def _render(plan: Any, args: argparse.Namespace, stream: TextIO) -> str:
    from mapper.report import render

    if args.format == "text":
        to_file = args.command == "plan" and bool(args.output)
        wants_color = args.color == "always" or (
            args.color == "auto" and stream.isatty() and not os.environ.get("NO_COLOR")
        )
        color = wants_color and not (to_file and args.color != "always")
        return render(plan, "text", color=color, verbose=args.verbose)
    return render(plan, args.format)


# Commands that always build a Keras model, so import TensorFlow anyway.
_KERAS_COMMANDS = frozenset({"plan", "apply", "demo"})


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with the process's standard error closed for the moment.

    The full ``tensorflow`` wheel probes for CUDA as it loads and reports, before any logging is set up
    (so TF_CPP_MIN_LOG_LEVEL cannot silence it), that it found no GPU driver: noise in front of every report.
    Errors still surface: a failed import raises, and is reported, after standard error is back.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with Path(os.devnull).open("w", encoding="utf-8") as devnull:
            os.dup2(devnull.fileno(), 2)
            # A missing TensorFlow is reported, with an install hint, where it is needed.
            with contextlib.suppress(ImportError):
                import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _interactive() -> bool:
    """A person is watching: standard output is a terminal (so not piped) and so is the error stream we draw on."""
    return sys.stdout.isatty() and sys.stderr.isatty()


class _ProgressBar:
    """A one-line progress bar on a terminal; the CLI draws it only when stderr is one."""

    def __init__(self, stream: TextIO, verb: str = "applying") -> None:
        self._stream = stream
        self._verb = verb
        self._started = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        elapsed = time.perf_counter() - self._started
        self._stream.write(f"\r  {self._verb} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:5.1f}s")
        self._stream.flush()

    def close(self) -> None:
        self._stream.write("\n")
        self._stream.flush()


def _write_text_atomically(path: Path, text: str) -> None:
    if not path.parent.is_dir():
        raise TargetError(f"cannot write {path}: directory {path.parent} does not exist")
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    partial.replace(path)


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


def _version() -> str:
    from mapper import __version__

    return __version__


def _out(text: str) -> None:
    print(text)


def _warn(text: str) -> None:
    print(f"mapper: warning: {text}", file=sys.stderr)


def _error(text: str) -> None:
    print(f"mapper: error: {text}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
