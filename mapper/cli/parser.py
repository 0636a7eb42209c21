"""The ``mapper`` command line: the argument parser, with a teaching ``--help`` on every verb."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mapper.cli import (
    EXIT_APPLY,
    EXIT_BROKEN_PIPE,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_PROBLEMS,
    EXIT_TERMINATED,
    EXIT_USAGE,
)

# The codes every verb shares, after its own: the ways a run can end that are not about its inputs.
_ENDINGS = f"""
  {EXIT_INTERNAL}  internal error: a bug in weight-mapper, reported in two lines (mapper --debug COMMAND ..., or
      MAPPER_DEBUG=1, shows the traceback)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C, SIGINT): temporary files were removed, the model and output left as they were
  {EXIT_BROKEN_PIPE}  standard output was closed early (piped into head, say): the rest of the output was dropped
  {EXIT_TERMINATED}  terminated (SIGTERM): cleaned up as for {EXIT_INTERRUPTED}"""

_EXIT_CODES = f"""exit codes:
  {EXIT_OK}  success (for plan: the plan has no errors)
  {EXIT_PROBLEMS}  problems found: an invalid rule file, or a plan with errors (nothing was changed)
  {EXIT_USAGE}  bad command line
  {EXIT_INPUT}  an input cannot be read: missing or corrupt checkpoint, unusable target factory (also one that
     raises, cannot be imported or builds no model)
  {EXIT_APPLY}  applying failed; the model was left unchanged
  {EXIT_OUTPUT}  the output cannot be written: it exists (pass --overwrite), its directory is missing, it is a
     directory or a file a source reads, or the disk is full or read-only; or apply's --output is named like a
     file format it would not be written in (model.h5: write model.weights.h5, or the prefix model); nothing
     was written{_ENDINGS}"""

_CONVERT_EXIT_CODES = f"""exit codes:
  {EXIT_OK}  success: the output was written
  {EXIT_PROBLEMS}  problems found: an invalid rule file, or a plan with errors (nothing was written)
  {EXIT_USAGE}  bad command line
  {EXIT_INPUT}  an input cannot be read, or the output's format cannot hold a tensor
  {EXIT_APPLY}  converting failed part-way; no output and no temporary file was left behind
  {EXIT_OUTPUT}  the output cannot be written: it exists (pass --overwrite), its directory is missing, it is a
     directory or a file a source reads, or the disk is full or read-only; nothing was written{_ENDINGS}"""

_EXPORT_EXIT_CODES = f"""exit codes:
  {EXIT_OK}  success: the checkpoint was written
  {EXIT_PROBLEMS}  problems found: an invalid rule file, a model that does not fit it (a plan with errors), or rules that
     cannot be run backwards (each named, with the reason); nothing was written
  {EXIT_USAGE}  bad command line
  {EXIT_INPUT}  an input cannot be read: the --like checkpoint, the model factory, the --weights file
  {EXIT_APPLY}  exporting failed part-way; no output and no temporary file was left behind
  {EXIT_OUTPUT}  the output cannot be written: it holds a checkpoint (pass --overwrite), its parent directory is
     missing, it is a file, or the disk is full or read-only; nothing was written{_ENDINGS}"""

_SOURCE_HELP = (
    "the checkpoint, in one of the source formats below. For rule files that read several sources "
    '(source = "name" in a rule), give each as NAME=PATH and repeat --source'
)
_SOURCE_FORMAT_HELP = (
    "open the sources as FORMAT (one of the source formats below) instead of detecting it; NAME=FORMAT for one "
    "named source; may be repeated"
)

_EPILOG_WIDTH = 110  # as wide as the hand-wrapped descriptions

_PARAM_HELP = "set a parameter the rule file declares in [params] (e.g. num_layers=24); may be repeated"

_TARGET_HELP = (
    "the target model as MODULE:FACTORY, where MODULE is a dotted module name or a path to a .py file and "
    "FACTORY a function returning a built Keras model, a tf.Module, or a dict of variables "
    "(e.g. mapper.demo:new_model or models/my_model.py:build)"
)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps our hand-wrapped examples as written, and never breaks a line inside a name such as tf-checkpoint."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _source_formats_section() -> str:
    """The epilog section that lists every source format ``open_source`` knows, from the ``FORMATS`` registry.

    Example:
        >>> print(_source_formats_section())  # doctest: +ELLIPSIS
        source formats (detected from the files themselves):
          tf-checkpoint  TensorFlow checkpoint: a prefix such as ckpt-1, its .index file, or a directory with a
                         checkpoint file
        ...
          npz            a NumPy .npz archive of arrays (np.savez)
        ...
    """
    from mapper.sources import FORMATS

    summaries = {name: known.summary for name, known in FORMATS.items()}
    return _formats_section("source formats (detected from the files themselves):", summaries.items())


def _output_formats_section() -> str:
    """The epilog section that lists every output format ``convert`` writes, from ``OUTPUT_SUMMARIES``.

    Example:
        >>> print(_output_formats_section())  # doctest: +ELLIPSIS
        output formats (from OUTPUT's suffix, or --to):
          tf-checkpoint  a TensorFlow checkpoint prefix (name-based: tf.train.load_checkpoint reads the names as
        ...
    """
    from mapper.outputs.files import OUTPUT_SUMMARIES

    return _formats_section("output formats (from OUTPUT's suffix, or --to):", OUTPUT_SUMMARIES.items())


def _formats_section(title: str, summaries: Iterable[tuple[str, str]]) -> str:
    listed = list(summaries)
    width = max(len(name) for name, _ in listed)
    entries = [
        textwrap.fill(
            summary,
            width=_EPILOG_WIDTH,
            initial_indent=f"  {name:<{width}}  ",
            subsequent_indent=" " * (width + 4),
            break_on_hyphens=False,
        )
        for name, summary in listed
    ]
    return "\n".join([title, *entries])


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
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of a failure (before COMMAND; MAPPER_DEBUG=1 does the same)",
    )
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_inspect(verbs)
    _add_validate(verbs)
    _add_authoring(verbs)
    _add_demo(verbs)
    for verb in ("plan", "apply"):
        _add_plan_or_apply(verbs, verb)
    _add_convert(verbs)
    _add_export(verbs)
    return parser


def _add_inspect(verbs: Any) -> None:
    inspect = verbs.add_parser(
        "inspect",
        formatter_class=_Formatter,
        usage="%(prog)s CHECKPOINT [--match REGEX] [--format {text,json}]\n"
        "       %(prog)s --target MODULE:FACTORY [--checkpoint-root NAME] [--match REGEX] [--format {text,json}] [-v]",
        help="list a checkpoint's tensors, or (--target) a model's variables: names, shapes, dtypes, sizes",
        description="List every tensor of a checkpoint with its shape, dtype and size, without reading tensor data.\n"
        "With --target instead of a checkpoint, list the variables of the model a factory builds, the names a rule\n"
        "file's targets must produce, in both namespaces: 'path' (variable.path, the default) and 'checkpoint'\n"
        '(the key in tf.train.Checkpoint(model=...), for rule files with namespace = "checkpoint"). Variables of\n'
        "one shape and dtype whose names vary together share a line, as in the plan report.",
        epilog="examples:\n"
        "  mapper inspect pretrained/ckpt-1\n"
        "  mapper inspect pretrained/ --match '.*attention.*'\n"
        "  mapper inspect pretrained/ckpt-1 --format json | jq '.tensors | length'\n"
        "  mapper inspect --target mapper.demo:new_model\n"
        "  mapper inspect --target models.py:build --match 'layer_0/' --verbose\n"
        "  mapper inspect --target models.py:build --checkpoint-root net --format json | jq '.variables[0]'\n\n"
        + _source_formats_section(),
    )
    inspect.add_argument(
        "source", nargs="?", metavar="CHECKPOINT", help="the checkpoint, in one of the source formats below"
    )
    inspect.add_argument(
        "--target",
        metavar="MODULE:FACTORY",
        help="list this model's variables instead of a checkpoint's tensors: " + _TARGET_HELP,
    )
    inspect.add_argument(
        "--checkpoint-root",
        metavar="NAME",
        help="with --target: the keyword the model is saved under, tf.train.Checkpoint(NAME=model), for the "
        "checkpoint names (a rule file's [target] checkpoint_root; default: model)",
    )
    inspect.add_argument(
        "--match",
        metavar="REGEX",
        help="only names this regular expression matches (search, not full match; with --target, in either namespace)",
    )
    inspect.add_argument("--format", choices=("text", "json"), default="text")
    inspect.add_argument(
        "-v", "--verbose", action="store_true", help="with --target: list every variable instead of grouping them"
    )


def _add_validate(verbs: Any) -> None:
    validate = verbs.add_parser(
        "validate",
        formatter_class=_Formatter,
        help="check rule files against the schema, reporting every problem at once",
        description="Check rule files: TOML syntax, keys, regular expressions, templates and operations.\n"
        "Also runs the file's [[examples]] (source names and the target each must get) and its lints\n"
        "(M104 odd templates; with --source, M102 shadowed and M103 overlapping rules). Needs no model.",
        epilog="examples:\n  mapper validate rules/bert.toml\n  mapper validate rules/*.toml\n"
        "  mapper validate rules/bert.toml --source bert/model.ckpt --strict\n"
        "  mapper validate rules/llama.toml --param num_layers=32\n"
        "  mapper validate rules/hf-bert-to-keras-hub.toml --roundtrip --source bert/ --target models.py:build\n\n"
        + _EXIT_CODES,
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
    validate.add_argument(
        "--roundtrip",
        action="store_true",
        help="prove the rule file runs both ways on --source and --target: export(import(checkpoint)) is the "
        "checkpoint and import(export(model)) the model, bit for bit (one rule file)",
    )
    validate.add_argument("--target", metavar="MODULE:FACTORY", help="with --roundtrip: " + _TARGET_HELP)
    validate.add_argument("--source-format", action="append", metavar="FORMAT", help=_SOURCE_FORMAT_HELP)
    validate.add_argument("--allow-lossy-casts", action="store_true", help="with --roundtrip: as for export")
    validate.add_argument("-q", "--quiet", action="store_true", help="print only problems")


def _add_demo(verbs: Any) -> None:
    demo = verbs.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="run the built-in example: a 10-class checkpoint into a 5-class model, keeping the new head",
        description="Save a small 'pretrained' 10-class Keras model as a TensorFlow checkpoint, then inspect, plan and\n"
        "apply rules/keras-same-architecture.toml into a new 5-class model, and check that the backbone was\n"
        "restored and the new head kept its initial values. On the Keras backends jax and torch (KERAS_BACKEND),\n"
        "which need no TensorFlow, the weights are saved as safetensors under their Keras paths and restored with\n"
        "rules/keras-same-architecture-paths.toml into model.weights.h5.",
        epilog="examples:\n  mapper demo\n  mapper demo --workdir demo-output   # keep the checkpoints to look at\n"
        "  KERAS_BACKEND=jax mapper demo",
    )
    demo.add_argument("--workdir", type=Path, help="where to write checkpoints (default: a temporary directory)")


def _add_plan_or_apply(verbs: Any, verb: str) -> None:
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
        + _EXIT_CODES
        + "\n\n"
        + _source_formats_section(),
    )
    sub.add_argument("rules", help="the rule file")
    sub.add_argument("--param", action="append", metavar="NAME=VALUE", help=_PARAM_HELP)
    sub.add_argument("--source", required=True, action="append", metavar="PATH | NAME=PATH", help=_SOURCE_HELP)
    sub.add_argument("--source-format", action="append", metavar="FORMAT | NAME=FORMAT", help=_SOURCE_FORMAT_HELP)
    sub.add_argument("--target", required=True, metavar="MODULE:FACTORY", help=_TARGET_HELP)
    _add_report_options(sub, "report")
    if is_apply:
        sub.add_argument(
            "--output",
            required=True,
            help="where to save the model's weights: a path ending in .weights.h5 (Keras), else a TF checkpoint prefix "
            "without a file suffix (a name such as model.h5 or model.safetensors is refused)",
        )
        sub.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
        sub.add_argument(
            "--method",
            choices=("assign", "init_from_checkpoint"),
            default="assign",
            help="assign (default; batched reads, any operations) or init_from_checkpoint (no operations; needs "
            "TensorFlow and KERAS_BACKEND=tensorflow)",
        )
        sub.add_argument(
            "--rollback",
            choices=("verify", "memory", "off"),
            default="verify",
            help="how a failure part-way is kept from leaving a half-assigned model: verify (default; read and check "
            "the source once before assigning), memory (keep the old values to put back) or off (fastest). The "
            "model lives only in this process and --output is written only after success, so on the command line "
            "every mode leaves the output as it was",
        )
        sub.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final line")
    else:
        sub.add_argument("--output", metavar="FILE", help="write the report to FILE instead of standard output")
        sub.add_argument("-q", "--quiet", action="store_true", help="print only the verdict line and problems")


def _add_report_options(sub: Any, report: str) -> None:
    """--format, --color and --verbose: how the plan report of plan, apply and convert is shown."""
    sub.add_argument(
        "--format", choices=("text", "markdown", "json"), default="text", help=f"{report} format (default: text)"
    )
    sub.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="colour the text report")
    sub.add_argument("-v", "--verbose", action="store_true", help="list every assignment instead of grouping them")


def _add_convert(verbs: Any) -> None:
    from mapper.outputs.files import OUTPUT_FORMATS

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
        + _CONVERT_EXIT_CODES
        + "\n\n"
        + _output_formats_section()
        + "\n\n"
        + _source_formats_section(),
    )
    convert.add_argument("rules", help="the rule file")
    convert.add_argument("--param", action="append", metavar="NAME=VALUE", help=_PARAM_HELP)
    convert.add_argument(
        "source",
        metavar="SOURCE",
        help="the checkpoint (PATH, or NAME=PATH for a named source), in one of the source formats below",
    )
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
    convert.add_argument(
        "--to",
        choices=OUTPUT_FORMATS,
        metavar="FORMAT",
        help=f"the output format, overriding OUTPUT's suffix: one of {', '.join(OUTPUT_FORMATS)}",
    )
    convert.add_argument(
        "--target", metavar="MODULE:FACTORY", help=_TARGET_HELP + "; optional: check the output covers this model"
    )
    _add_report_options(convert, "plan report")
    convert.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    convert.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final line")


def _add_export(verbs: Any) -> None:
    export = verbs.add_parser(
        "export",
        formatter_class=_Formatter,
        help="write a model back under the source names its rule file reads: a Hugging Face safetensors checkpoint",
        description="Run a rule file backwards: plan from --like (the checkpoint the model was imported from; only its\n"
        "names, shapes and dtypes are used) into the model, invert every assignment (transposes, reshapes,\n"
        "lossless casts, splits and joins), and write the model's variables under the source names to\n"
        "OUTPUT/model.safetensors, or to shards and model.safetensors.index.json above --max-shard-size. Tensors\n"
        "the rules skip are not written, except the tied copies [[export.tied]] declares. No config.json is\n"
        "written: copy the one the model was imported with. Nothing is written if a rule cannot be run\n"
        "backwards (each is named, with the reason), if the model does not fit the rule file, or if OUTPUT\n"
        "holds a checkpoint and --overwrite is not given.",
        epilog="examples:\n"
        "  mapper export rules/hf-bert-to-keras-hub.toml --model models.py:build --like bert/ --output hf-out/\n"
        "  mapper export rules/hf-llama-to-keras-hub.toml --model models.py:llama --weights finetuned.weights.h5 \\\n"
        "      --like llama/ --output hf-out/ --max-shard-size 2GB --overwrite\n\n" + _EXPORT_EXIT_CODES,
    )
    export.add_argument("rules", help="the rule file the model was imported with")
    export.add_argument("--param", action="append", metavar="NAME=VALUE", help=_PARAM_HELP)
    export.add_argument("--model", "--target", dest="model", required=True, metavar="MODULE:FACTORY", help=_TARGET_HELP)
    export.add_argument(
        "--like",
        required=True,
        metavar="CHECKPOINT",
        help="the checkpoint the model was imported from (or one of the same architecture): its names, shapes and "
        "dtypes, not its values, say what to write",
    )
    export.add_argument("--like-format", metavar="FORMAT", help="open --like as FORMAT instead of detecting it")
    export.add_argument("--weights", metavar="FILE", help="a .weights.h5 file to load into the model first")
    export.add_argument("--output", required=True, metavar="DIR", help="the directory to write (created if missing)")
    export.add_argument(
        "--max-shard-size", metavar="SIZE", help="the most bytes per shard, e.g. 2GB or 500MB (default: 5GB)"
    )
    export.add_argument(
        "--allow-lossy-casts",
        action="store_true",
        help="allow casts back to a narrower dtype than the model's (float32 -> bfloat16), which round",
    )
    export.add_argument("--overwrite", action="store_true", help="replace a checkpoint in OUTPUT")
    export.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final line")


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
        "      --source bert/model.ckpt --target models.py:build\n\n"
        + _EXIT_CODES
        + "\n\n"
        + _source_formats_section(),
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
        "  mapper validate draft.toml && mapper plan draft.toml --source bert/model.ckpt --target models.py:build\n\n"
        + _source_formats_section(),
    )
    suggest.add_argument(
        "--source", required=True, metavar="PATH", help="the checkpoint, in one of the source formats below"
    )
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
        f"exit codes:\n  {EXIT_OK}  the plans fill every target the same way\n"
        f"  {EXIT_PROBLEMS}  they differ, or a plan file is not a plan (invalid or too deeply nested JSON, another "
        f"format)\n  {EXIT_USAGE}  bad command line\n  {EXIT_INPUT}  an input cannot be read{_ENDINGS}\n\n"
        + _source_formats_section(),
    )
    diff.add_argument("old", help="a plan JSON file, or a rule file")
    diff.add_argument("new", help="a plan JSON file, or a rule file")
    diff.add_argument("--source", action="append", metavar="PATH | NAME=PATH", help="for rule files: " + _SOURCE_HELP)
    diff.add_argument("--target", metavar="MODULE:FACTORY", help="for rule files: " + _TARGET_HELP)
    diff.add_argument("--param", action="append", metavar="NAME=VALUE", help=_PARAM_HELP)
    diff.add_argument("--format", choices=("text", "markdown"), default="text")


def _version() -> str:
    from mapper import __version__

    return __version__
