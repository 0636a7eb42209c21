"""Tests for mapper.report: the text / Markdown / JSON reports, their rows, and their golden files."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapper.errors import MapperError
from mapper.naming import expand_pattern
from mapper.ops import Cast, Combine, Concat, Rearrange, Reshape, Slice, SplitPart, Stack, Transpose
from mapper.plan import (
    Assignment,
    Join,
    JoinMember,
    NamedSource,
    Plan,
    Problem,
    ProblemKind,
    RuleRef,
    Severity,
    Skip,
    SkipKind,
    TensorEntry,
)
from mapper.report import render, render_json, render_markdown, render_text
from mapper.report.assignments import assignment_blocks
from mapper.specs import format_shape

GOLDEN = Path(__file__).parent / "golden"
ANSI = re.compile(r"\x1b\[")
LAYERS = range(12)

# ---------------------------------------------------------------------------------------------------------------------
# Plans, built by hand from the plan dataclasses
# ---------------------------------------------------------------------------------------------------------------------


def joined(combine: Combine, members: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> Join:
    """The join of ``members`` (the first is the assignment's source) with their ``shapes``."""
    return Join(combine, tuple(JoinMember(name, shape) for name, shape in zip(members[1:], shapes[1:], strict=True)))


def copy(target: str, source: str, rule: RuleRef, shape: tuple[int, ...], dtype: str = "float32") -> Assignment:
    return Assignment(target, target, source, rule, (), shape, dtype, shape, dtype)


def bert_plan() -> Plan:
    """A 12-layer BERT-base from a PyTorch-layout TF checkpoint: transposes, reshapes, skips and a dead rule."""
    file = "rules/bert.toml"

    def rule(index: int, name: str, section: str = "rules") -> RuleRef:
        return RuleRef(file, index, name, section)  # type: ignore[arg-type]

    assignments: list[Assignment] = []
    skips: list[Skip] = []
    embeddings = rule(1, "embeddings")
    for target, source, rows in (("token", "word", 30522), ("position", "position", 512), ("segment", "token_type", 2)):
        assignments.append(
            copy(
                f"embeddings/{target}_embedding/embeddings",
                f"bert/embeddings/{source}_embeddings",
                embeddings,
                (rows, 768),
            )
        )
    for part in ("gamma", "beta"):
        assignments.append(
            copy(f"embeddings/layer_norm/{part}", f"bert/embeddings/LayerNorm/{part}", embeddings, (768,))
        )
    qkv_kernels, qkv_biases, output, ffn, plain = (
        rule(2, "attention kernels"),
        rule(3, "attention biases"),
        rule(4, "attention output"),
        rule(5, "feed-forward kernels"),
        rule(6, "biases and norms"),
    )
    for i in LAYERS:
        old, new = f"bert/encoder/layer_{i}", f"encoder/layer_{i}"
        for part in ("query", "key", "value"):
            assignments.append(
                Assignment(
                    f"{new}/attention/{part}/kernel",
                    f"{new}/attention/{part}/kernel",
                    f"{old}/attention/self/{part}/kernel",
                    qkv_kernels,
                    (Transpose((1, 0)), Reshape((768, 12, 64))),
                    (768, 768),
                    "float32",
                    (768, 12, 64),
                    "float32",
                )
            )
            assignments.append(
                Assignment(
                    f"{new}/attention/{part}/bias",
                    f"{new}/attention/{part}/bias",
                    f"{old}/attention/self/{part}/bias",
                    qkv_biases,
                    (Reshape((12, 64)),),
                    (768,),
                    "float32",
                    (12, 64),
                    "float32",
                )
            )
        assignments.append(
            Assignment(
                f"{new}/attention/output/kernel",
                f"{new}/attention/output/kernel",
                f"{old}/attention/output/dense/kernel",
                output,
                (Transpose((1, 0)), Reshape((12, 64, 768))),
                (768, 768),
                "float32",
                (12, 64, 768),
                "float32",
            )
        )
        for target, source, shape in (("intermediate", "intermediate", (3072, 768)), ("output", "output", (768, 3072))):
            assignments.append(
                Assignment(
                    f"{new}/{target}/kernel",
                    f"{new}/{target}/kernel",
                    f"{old}/{source}/dense/kernel",
                    ffn,
                    (Transpose((1, 0)),),
                    shape,
                    "float32",
                    shape[::-1],
                    "float32",
                )
            )
        assignments += [
            copy(f"{new}/attention/output/bias", f"{old}/attention/output/dense/bias", plain, (768,)),
            copy(f"{new}/intermediate/bias", f"{old}/intermediate/dense/bias", plain, (3072,)),
            copy(f"{new}/output/bias", f"{old}/output/dense/bias", plain, (768,)),
        ]
        for part in ("gamma", "beta"):
            assignments += [
                copy(f"{new}/attention_layer_norm/{part}", f"{old}/attention/output/LayerNorm/{part}", plain, (768,)),
                copy(f"{new}/output_layer_norm/{part}", f"{old}/output/LayerNorm/{part}", plain, (768,)),
            ]
    pooler = rule(7, "pooler")
    assignments += [
        copy("pooler/dense/kernel", "bert/pooler/dense/kernel", pooler, (768, 768)),
        copy("pooler/dense/bias", "bert/pooler/dense/bias", pooler, (768,)),
    ]
    heads = rule(8, "pretraining heads")
    for name, shape in (
        ("cls/predictions/output_bias", (30522,)),
        ("cls/predictions/transform/dense/kernel", (768, 768)),
        ("cls/predictions/transform/dense/bias", (768,)),
        ("cls/predictions/transform/LayerNorm/gamma", (768,)),
        ("cls/predictions/transform/LayerNorm/beta", (768,)),
        ("cls/seq_relationship/output_weights", (2, 768)),
        ("cls/seq_relationship/output_bias", (2,)),
    ):
        skips.append(Skip(name, SkipKind.RULE, "pretraining heads are not part of the encoder", heads, shape))
    optimizer = rule(9, "optimizer state")
    skips.append(Skip("global_step", SkipKind.RULE, "optimizer state", optimizer, ()))
    for assignment in assignments:
        for slot in ("adam_m", "adam_v"):
            name = f"{assignment.source}/{slot}"
            skips.append(Skip(name, SkipKind.RULE, "optimizer state", optimizer, assignment.source_shape))
    problems = (
        Problem(
            ProblemKind.DEAD_RULE,
            Severity.WARNING,
            f"{rule(10, 'legacy names')} matched no source name (pattern 'bert/encoder/layer_(?P<i>\\d+)/ffn/.+'); "
            "fix the pattern or remove the rule",
            rule(10, "legacy names"),
        ),
    )
    return Plan(
        rule_files=(file,),
        source="TensorFlow checkpoint checkpoints/bert_base/model.ckpt-1000000 (1,225 tensors, 1.3 GiB)",
        target="Keras model 'bert_encoder' (199 weights)",
        namespace="path",
        assignments=tuple(assignments),
        skips=tuple(skips),
        problems=problems,
    )


def head_plan() -> Plan:
    """Fine-tuning seed: same architecture, a new class count; the head is skipped by a shape guard."""
    file = "rules/finetune.toml"
    backbone = RuleRef(file, 1, "backbone")
    head = RuleRef(file, 3, "head")
    assignments = []
    for index, (channels_in, channels_out) in enumerate(((3, 32), (32, 64), (64, 64)), start=1):
        layer = f"backbone/conv_{index}"
        assignments.append(copy(f"{layer}/kernel", f"{layer}/kernel", backbone, (3, 3, channels_in, channels_out)))
        assignments.append(copy(f"{layer}/bias", f"{layer}/bias", backbone, (channels_out,)))
        for part in ("gamma", "beta", "moving_mean", "moving_variance"):
            assignments.append(
                copy(f"backbone/bn_{index}/{part}", f"backbone/bn_{index}/{part}", backbone, (channels_out,))
            )
    assignments.append(
        Assignment(
            "embedding/kernel",
            "embedding/kernel",
            "embedding/kernel",
            RuleRef(file, 2, "embedding"),
            (Cast("bfloat16"),),
            (64, 64),
            "float32",
            (64, 64),
            "bfloat16",
        )
    )
    skips = (
        Skip(
            "head/kernel",
            SkipKind.GUARD,
            "new class count",
            head,
            (64, 10),
            (64, 5),
            "head/kernel",
            "shape [64, 10] does not equal the target's [64, 5]",
        ),
        Skip(
            "head/bias",
            SkipKind.GUARD,
            "new class count",
            head,
            (10,),
            (5,),
            "head/bias",
            "shape [10] does not equal the target's [5]",
        ),
        Skip(
            "adapter/kernel",
            SkipKind.GUARD,
            "new class count",
            head,
            (64, 10),
            (64, 10),
            "adapter/kernel",
            "dtype float16 is not float32",
        ),
        Skip(
            "optimizer/iterations",
            SkipKind.RULE,
            "optimizer state: fine-tuning starts its own",
            RuleRef(file, 4, "optimizer"),
            (),
        ),
        Skip(
            "normalization/mean",
            SkipKind.KEEP,
            "adapted to the new data set before training",
            RuleRef(file, 1, "normalization", "keep"),
            target_shape=(3,),
        ),
        Skip(
            "normalization/variance",
            SkipKind.KEEP,
            "adapted to the new data set before training",
            RuleRef(file, 1, "normalization", "keep"),
            target_shape=(3,),
        ),
    )
    return Plan(
        rule_files=(file,),
        source="TensorFlow checkpoint runs/pretrain/ckpt-20",
        target="Keras model 'classifier' (24 weights)",
        namespace="path",
        assignments=tuple(assignments),
        skips=skips,
    )


def problems_plan() -> Plan:
    """Every problem kind, both severities, unused sources and unfilled targets."""
    file = "rules/broken.toml"
    problems = [
        Problem(
            ProblemKind.SHAPE_MISMATCH,
            Severity.ERROR,
            "source 'dense/kernel' [784, 128] but target 'dense/kernel' is [128, 784]; add { transpose = [1, 0] } "
            "to the rule's ops",
            RuleRef(file, 1, "dense"),
            ("dense/kernel", "dense/kernel"),
        ),
        Problem(
            ProblemKind.DTYPE_MISMATCH,
            Severity.ERROR,
            "source 'embedding/table' is float64 but target 'embedding/embeddings' is float32; "
            'add { cast = "float32" } to the rule\'s ops',
            RuleRef(file, 2, "embedding"),
            ("embedding/table", "embedding/embeddings"),
        ),
        Problem(
            ProblemKind.DOUBLE_FILL,
            Severity.ERROR,
            "target 'out/bias' is filled twice: from 'out/b' by rules/broken.toml rule 3 and from 'out/bias' by "
            "rules/broken.toml rule 4 ('catch-all'); the first is kept",
            RuleRef(file, 4, "catch-all"),
            ("out/bias", "out/bias"),
        ),
        Problem(
            ProblemKind.GUARD_FAILED,
            Severity.ERROR,
            "source 'head/kernel' [64, 10] float32 -> target 'head/kernel' [64, 5]: guard failed: shape [64, 10] "
            'does not equal the target\'s [64, 5]; set on_fail = "skip" in the guard to leave the target at its '
            "initial value",
            RuleRef(file, 5, "head"),
            ("head/kernel", "head/kernel"),
        ),
        Problem(
            ProblemKind.BAD_OPERATION,
            Severity.ERROR,
            "source 'attn/qkv' [64, 192] float32 -> target 'attn/query': cannot reshape [64, 192] (12288 elements) "
            "into [64, 4, 8] (2048 elements)",
            RuleRef(file, 6, "fused qkv"),
            ("attn/qkv", "attn/query"),
        ),
        Problem(
            ProblemKind.UNUSED_SOURCE,
            Severity.ERROR,
            "3 source tensors matched no rule: 'global_step', 'weird|name', 'extra/w'; add a rule for them, "
            'a skip rule with a reason, or set [policies] unused_source = "warn"',
            None,
            ("global_step", "weird|name", "extra/w"),
        ),
        Problem(
            ProblemKind.UNFILLED_TARGET,
            Severity.ERROR,
            "2 target variables would keep their initial values without a rule saying so: 'attn/query', "
            "'head/kernel'; map a source to them, or list them in a [[keep]] entry with a reason",
            None,
            ("attn/query", "head/kernel"),
        ),
        Problem(
            ProblemKind.DEAD_RULE,
            Severity.WARNING,
            "rules/broken.toml rule 7 ('legacy') matched no source name (pattern 'old/.+'); fix the pattern or "
            "remove the rule",
            RuleRef(file, 7, "legacy"),
        ),
        Problem(
            ProblemKind.DOUBLE_FILL,
            Severity.WARNING,
            "target 'out/kernel' is filled twice: from 'out/w' by rules/broken.toml rule 3 and from 'out/kernel' by "
            "rules/broken.toml rule 4 ('catch-all'); the first is kept",
            RuleRef(file, 4, "catch-all"),
            ("out/kernel", "out/kernel"),
        ),
        Problem(
            ProblemKind.BAD_TEMPLATE,
            Severity.ERROR,
            "source 'blocks/0/w': template 'block_{i - 1}/w' gives a negative index -1",
            RuleRef(file, 8, "blocks"),
            ("blocks/0/w",),
        ),
        Problem(
            ProblemKind.BAD_GROUP,
            Severity.ERROR,
            "the stack group for target 'experts/kernel' needs each of e = '0', '1', '2' exactly once: missing e = '2'",
            RuleRef(file, 10, "experts"),
            ("experts.0.w", "experts.1.w"),
        ),
        Problem(
            ProblemKind.UNKNOWN_SOURCE,
            Severity.ERROR,
            "rules/broken.toml rule 11 reads source 'head', but the plan's sources are: backbone",
            RuleRef(file, 11),
            ("head",),
        ),
        Problem(
            ProblemKind.LINT,
            Severity.WARNING,
            "rules/broken.toml rule 12 ('catch-all') is shadowed: earlier rules take every name it matches; "
            "remove it, or silence M102 with a reason",
            RuleRef(file, 12, "catch-all"),
            code="M102",
        ),
    ]
    # The same message for many names shares one row, with the names as a pattern.
    for i in range(12):
        problems.append(
            Problem(
                ProblemKind.MISSING_TARGET,
                Severity.ERROR,
                f"source 'enc/layer_{i}/ln/scale' maps to 'encoder/layer_{i}/norm/gamma', but the target has no "
                "variable of that name in the 'path' namespace",
                RuleRef(file, 9, "norms"),
                (f"enc/layer_{i}/ln/scale", f"encoder/layer_{i}/norm/gamma"),
            )
        )
    assert {problem.kind for problem in problems} == set(ProblemKind), "every problem kind is shown"
    return Plan(
        rule_files=(file, "rules/common.toml"),
        source="TensorFlow checkpoint ckpt/model-7",
        target="Keras model 'tiny'",
        namespace="path",
        assignments=(
            copy("out/bias", "out/b", RuleRef(file, 3), (10,)),
            copy("out/kernel", "out/w", RuleRef(file, 3), (64, 10)),
        ),
        skips=(Skip("step", SkipKind.RULE, "bookkeeping", RuleRef("rules/common.toml", 1, "bookkeeping"), ()),),
        unused_sources=(
            TensorEntry("global_step", (), "int64"),
            TensorEntry("weird|name", (3,), "float32"),
            TensorEntry("extra/w", (8, 8), "float32"),
        ),
        unfilled_targets=(
            TensorEntry("attn/query", (64, 4, 8), "float32"),
            TensorEntry("head/kernel", (64, 5), "float32"),
        ),
        problems=tuple(problems),
    )


def checkpoint_plan() -> Plan:
    """The demo: a Keras model restored from a checkpoint of the same architecture, in the checkpoint namespace.

    Skip reasons are worded the way the planner words them (the guard's reason, then what failed).
    """
    file = "rules/keras-same-architecture.toml"
    same = RuleRef(file, 1, "same architecture")
    layers = {
        "d1": (1, {"_kernel": ("kernel", (8, 16)), "bias": ("bias", (16,))}),
        "bn": (
            2,
            {part: (part, (16,)) for part in ("gamma", "beta", "moving_mean", "moving_variance")},
        ),
        "d2": (3, {"_kernel": ("kernel", (16, 16)), "bias": ("bias", (16,))}),
    }
    assignments = []
    slot = 0
    skips = []
    for layer, (operation, variables) in layers.items():
        for attribute, (name, shape) in variables.items():
            key = f"model/_operations/{operation}/{attribute}/.ATTRIBUTES/VARIABLE_VALUE"
            assignments.append(Assignment(f"{layer}/{name}", key, key, same, (), shape, "float32", shape, "float32"))
    reason = "shape changed (a new class count?): keeps its initial value"
    for attribute, name, old, new in (("_kernel", "kernel", (16, 10), (16, 5)), ("bias", "bias", (10,), (5,))):
        key = f"model/_operations/4/{attribute}/.ATTRIBUTES/VARIABLE_VALUE"
        failure = f"shape {format_shape(old)} does not equal the target's {format_shape(new)}"
        skips.append(Skip(key, SkipKind.GUARD, reason, same, old, new, f"head/{name}", failure))
    optimizer = RuleRef(file, 2, "optimizer")
    for slot in range(1, 21):
        key = f"optimizer/_variables/{slot}/.ATTRIBUTES/VARIABLE_VALUE"
        skips.append(Skip(key, SkipKind.RULE, "optimizer state: a fine-tuning run starts its own", optimizer, (16,)))
    skips.append(
        Skip(
            "save_counter/.ATTRIBUTES/VARIABLE_VALUE",
            SkipKind.RULE,
            "checkpoint bookkeeping, not a weight",
            RuleRef(file, 3, "bookkeeping"),
            (),
        )
    )
    return Plan(
        rule_files=(file,),
        source="TensorFlow checkpoint /tmp/demo/pretrained/ckpt-1",
        target="Keras model 'classifier'",
        namespace="checkpoint",
        assignments=tuple(assignments),
        skips=tuple(skips),
    )


def porting_plan() -> Plan:
    """GPT-2 small with a new classifier head, from two named sources: split, concat, stack, slice, rearrange."""
    file = "rules/gpt2-classifier.toml"
    hidden, heads, dim, kv = 768, 12, 64, 256

    def rule(index: int, name: str | None = None, section: str = "rules") -> RuleRef:
        return RuleRef(file, index, name, section)  # type: ignore[arg-type]

    def from_backbone(target: str, source: str, index: int, name: str, shape: tuple[int, ...]) -> Assignment:
        return Assignment(
            target, target, source, rule(index, name), (), shape, "float32", shape, "float32", source_id="backbone"
        )

    assignments = [
        from_backbone("embeddings/token_embedding/embeddings", "wte.weight", 1, "embeddings", (50257, hidden)),
        Assignment(
            "embeddings/position_embedding/embeddings",
            "embeddings/position_embedding/embeddings",
            "wpe.weight",
            rule(2, "positions"),
            (Slice((0,)),),
            (1, 1024, hidden),
            "float32",
            (1024, hidden),
            "float32",
            source_id="backbone",
        ),
    ]
    for i in LAYERS:
        for part, name in enumerate(("query", "key", "value")):
            span = (part * hidden, (part + 1) * hidden)
            assignments += [
                Assignment(
                    f"layer_{i}/attention/{name}/kernel",
                    f"layer_{i}/attention/{name}/kernel",
                    f"h.{i}.attn.c_attn.weight",
                    rule(3, "fused attention kernel"),
                    (SplitPart(-1, part, 3, *span), Reshape((hidden, heads, dim))),
                    (hidden, 3 * hidden),
                    "float32",
                    (hidden, heads, dim),
                    "float32",
                    source_id="backbone",
                ),
                Assignment(
                    f"layer_{i}/attention/{name}/bias",
                    f"layer_{i}/attention/{name}/bias",
                    f"h.{i}.attn.c_attn.bias",
                    rule(4, "fused attention bias"),
                    (SplitPart(-1, part, 3, *span), Reshape((heads, dim))),
                    (3 * hidden,),
                    "float32",
                    (heads, dim),
                    "float32",
                    source_id="backbone",
                ),
            ]
        members = tuple(f"h.{i}.crossattention.{part}_proj.weight" for part in "qkv")
        assignments += [
            Assignment(
                f"layer_{i}/attention/output/kernel",
                f"layer_{i}/attention/output/kernel",
                f"h.{i}.attn.c_proj.weight",
                rule(5, "attention output"),
                (Rearrange("(heads dim) hidden -> heads dim hidden", (("heads", heads),)),),
                (hidden, hidden),
                "float32",
                (heads, dim, hidden),
                "float32",
                source_id="backbone",
            ),
            Assignment(
                f"layer_{i}/cross_attention/qkv/kernel",
                f"layer_{i}/cross_attention/qkv/kernel",
                members[0],
                rule(6, "cross-attention qkv"),
                (Transpose((1, 0)),),
                (hidden, hidden),
                "float32",
                (hidden, hidden + 2 * kv),
                "float32",
                join=joined(Concat(0), members, ((hidden, hidden), (kv, hidden), (kv, hidden))),
                source_id="backbone",
            ),
            from_backbone(f"layer_{i}/attention_norm/gamma", f"h.{i}.ln_1.weight", 7, "norms", (hidden,)),
            from_backbone(f"layer_{i}/attention_norm/beta", f"h.{i}.ln_1.bias", 7, "norms", (hidden,)),
        ]
    gates = tuple(f"h.{i}.gate" for i in LAYERS)
    assignments += [
        Assignment(
            "gates",
            "gates",
            gates[0],
            rule(8, "layer gates"),
            (),
            (hidden,),
            "float32",
            (len(gates), hidden),
            "float32",
            join=joined(Stack(0), gates, ((hidden,),) * len(gates)),
            source_id="backbone",
        ),
        Assignment(
            "pooler/qkv",
            "pooler/qkv",
            "q",
            rule(9, "pooler"),
            (),
            (hidden, 64),
            "float32",
            (hidden, 192),
            "float32",
            join=joined(Concat(-1), ("q", "k", "v"), ((hidden, 64),) * 3),
            source_id="classifier",
        ),
        Assignment(
            "head/kernel",
            "head/kernel",
            "score.weight",
            rule(10, "head"),
            (Transpose((1, 0)),),
            (5, hidden),
            "float32",
            (hidden, 5),
            "float32",
            source_id="classifier",
        ),
    ]
    skips = [
        Skip(
            f"h.{i}.attn.bias",
            SkipKind.RULE,
            "causal-mask buffers, not weights",
            rule(11, "masks"),
            (1, 1, 1024, 1024),
            source_id="backbone",
        )
        for i in LAYERS
    ]
    skips += [
        Skip(
            "score.bias",
            SkipKind.GUARD,
            "new class count",
            rule(10, "head"),
            (2,),
            (5,),
            "head/bias",
            "shape [2] does not equal the target's [5]",
            source_id="classifier",
        ),
        Skip(
            "head/bias",
            SkipKind.KEEP,
            "trained from scratch for the new classes",
            rule(1, "new head", "keep"),
            target_shape=(5,),
        ),
    ]
    problems = (
        Problem(
            ProblemKind.DOUBLE_FILL,
            Severity.ERROR,
            f"target 'head/kernel' is filled twice: from classifier:score.weight by {file} rule 10 ('head') and from "
            f"backbone:score.weight by {file} rule 10 ('head'); the first is kept",
            rule(10, "head"),
            ("score.weight", "head/kernel"),
        ),
        Problem(
            ProblemKind.BAD_GROUP,
            Severity.ERROR,
            "the stack group for target 'experts/kernel' needs each of e = '0', '1', '2', '3' exactly once: "
            "missing e = '3'",
            rule(12, "experts"),
            ("h.0.moe.experts.0.w", "h.0.moe.experts.1.w", "h.0.moe.experts.2.w"),
        ),
        Problem(
            ProblemKind.UNKNOWN_SOURCE,
            Severity.ERROR,
            f"{file} rule 13 ('adapter') reads source 'adapter', but the plan's sources are: backbone, classifier",
            rule(13, "adapter"),
            ("adapter",),
        ),
        Problem(
            ProblemKind.UNUSED_SOURCE,
            Severity.WARNING,
            "2 source tensors matched no rule: 'lm_head.weight', 'score.extra'; add a rule for them, a skip rule "
            'with a reason, or set [policies] unused_source = "warn"',
            None,
            ("lm_head.weight", "score.extra"),
        ),
        Problem(
            ProblemKind.LINT,
            Severity.WARNING,
            f"{file} rule 7 ('norms') overlaps {file} rule 3 ('fused attention kernel'): both match "
            "'h.0.attn.c_attn.weight'; narrow one pattern, or silence M103 with a reason",
            rule(7, "norms"),
            ("h.0.attn.c_attn.weight",),
            code="M103",
        ),
    )
    return Plan(
        rule_files=(file,),
        source=(
            NamedSource("backbone", "PyTorch file gpt2/pytorch_model.bin (174 tensors, 523.8 MiB)"),
            NamedSource("classifier", "safetensors file classifier/model.safetensors (6 tensors)"),
        ),
        target="Keras model 'gpt2_classifier' (139 weights)",
        namespace="path",
        assignments=tuple(assignments),
        skips=tuple(skips),
        unused_sources=(
            TensorEntry("lm_head.weight", (50257, hidden), "float32", "backbone"),
            TensorEntry("score.extra", (5,), "float32", "classifier"),
        ),
        problems=problems,
    )


def empty_plan() -> Plan:
    return Plan(
        rule_files=("rules/empty.toml",),
        source="memory source (0 tensors)",
        target="Keras model 'empty'",
        namespace="path",
    )


PLANS = {
    "bert": bert_plan,
    "head": head_plan,
    "checkpoint": checkpoint_plan,
    "problems": problems_plan,
    "porting": porting_plan,
    "empty": empty_plan,
}


# ---------------------------------------------------------------------------------------------------------------------
# Golden files
# ---------------------------------------------------------------------------------------------------------------------


def check_golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; UPDATE_GOLDEN=1 rewrites the file instead."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
        return
    assert path.exists(), f"golden file {path} is missing; run the tests with UPDATE_GOLDEN=1 to write it"
    expected = path.read_text(encoding="utf-8")
    assert text + "\n" == expected, f"{name} differs from the golden file; review, then rerun with UPDATE_GOLDEN=1"


GOLDEN_CASES = (
    [pytest.param(plan, "text", {}, f"report_{plan}.txt", id=f"{plan}-text") for plan in PLANS]
    + [pytest.param(plan, "markdown", {}, f"report_{plan}.md", id=f"{plan}-markdown") for plan in PLANS]
    + [
        pytest.param("bert", "text", {"width": 80}, "report_bert_width80.txt", id="bert-text-width80"),
        pytest.param("head", "text", {"verbose": True}, "report_head_verbose.txt", id="head-text-verbose"),
        pytest.param("problems", "text", {"color": True}, "report_problems_color.txt", id="problems-text-color"),
        pytest.param("head", "json", {}, "report_head.json", id="head-json"),
    ]
)


@pytest.mark.parametrize(("plan", "format", "options", "golden"), GOLDEN_CASES)
def test_golden(plan: str, format: str, options: dict[str, object], golden: str) -> None:
    check_golden(golden, render(PLANS[plan](), format, **options))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------------
# Properties of the reports
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PLANS))
def test_json_report_round_trips_the_plan(name: str) -> None:
    plan = PLANS[name]()
    document = json.loads(render_json(plan))
    assert document["format"] == "weight-mapper report"
    assert document["version"] == 1
    assert document["ok"] is plan.ok
    assert document["summary"] == plan.counts()
    assert Plan.from_json(json.dumps(document["plan"])) == plan


@pytest.mark.parametrize("name", list(PLANS))
@pytest.mark.parametrize("verbose", [False, True], ids=["grouped", "verbose"])
def test_no_escape_codes_without_color(name: str, verbose: bool) -> None:
    assert not ANSI.search(render_text(PLANS[name](), verbose=verbose))


def test_control_characters_in_names_are_shown_not_sent() -> None:
    sneaky = "evil\x1b[31m/w\nx"
    plan = Plan(("r.toml",), "src", "tgt", "path", unused_sources=(TensorEntry(sneaky, (1,), "float32"),))
    text = render_text(plan)
    assert "\x1b" not in text
    assert "evil\\x1b[31m/w\\x0ax" in text
    assert "\x1b" not in render_markdown(plan)


def test_color_marks_the_verdict_and_problems() -> None:
    failed = render_text(problems_plan(), color=True)
    assert failed.splitlines()[0].startswith("\x1b[1mPlan \x1b[0m\x1b[1;31mFAILED with 22 errors\x1b[0m")
    assert "\x1b[1;31mErrors\x1b[0m" in failed
    assert "\x1b[1;33mWarnings\x1b[0m" in failed
    ok = render_text(head_plan(), color=True)
    assert "\x1b[1;32mOK\x1b[0m" in ok.splitlines()[0]
    assert ANSI.sub("", ok).replace("[0m", "") != ok
    # Without the codes, the coloured report is the plain one.
    assert re.sub(r"\x1b\[[0-9;]*m", "", ok) == render_text(head_plan())


@pytest.mark.parametrize("name", list(PLANS))
@pytest.mark.parametrize("width", [60, 80, 100, 120])
@pytest.mark.parametrize("verbose", [False, True], ids=["grouped", "verbose"])
def test_text_fits_the_width(name: str, width: int, verbose: bool) -> None:
    for line in render_text(PLANS[name](), width=width, verbose=verbose).splitlines():
        # Only a line holding one name (or rule reference) too long to fit may overflow: names are never broken.
        longest = max((len(token) for token in line.split()), default=0)
        assert len(line) <= width or longest > width - 16, f"{len(line)} > {width}: {line!r}"


def test_narrow_widths_are_widened() -> None:
    assert render_text(bert_plan(), width=10) == render_text(bert_plan(), width=60)


def test_verdict_is_the_first_line() -> None:
    assert render_text(head_plan()).splitlines()[0] == "Plan OK: 19 mapped (1 transformed), 4 skipped, 2 kept"
    assert render_text(problems_plan()).splitlines()[0].startswith("Plan FAILED with 22 errors: 2 mapped")
    assert render_markdown(problems_plan()).startswith("### ❌ Plan FAILED with 22 errors")


def test_head_skip_reads_clearly() -> None:
    text = render_text(head_plan())
    assert "\n  by guard (rules/finetune.toml#3 'head'): new class count\n" in text
    assert re.search(r"^    head/kernel +\[64, 10\] -> target \[64, 5\]$", text, re.MULTILINE)
    assert re.search(r"^    head/bias +\[10\] -> target \[5\]$", text, re.MULTILINE)
    # What the guard found shows when the shapes do not already say it.
    assert re.search(
        r"^    adapter/kernel +\[64, 10\] -> target \[64, 10\]: dtype float16 is not float32$", text, re.MULTILINE
    )
    verbose = render_text(head_plan(), verbose=True)
    assert re.search(r"head/kernel +\[64, 10\] -> target \[64, 5\]: shape \[64, 10\] does not equal", verbose)


def test_empty_sections_are_left_out() -> None:
    text = render_text(empty_plan())
    markdown = render_markdown(empty_plan())
    for title in ("Errors", "Warnings", "Assignments", "Skipped", "Kept at", "Unused sources (", "Unfilled targets ("):
        assert title not in text
        assert title not in markdown


def test_verbose_lists_every_assignment() -> None:
    plan = bert_plan()
    grouped = render_text(plan)
    verbose = render_text(plan, verbose=True)
    assert sum(" <- " in line or line.lstrip().startswith("<- ") for line in verbose.splitlines()) == 199
    assert sum(" <- " in line or line.lstrip().startswith("<- ") for line in grouped.splitlines()) == 14
    assert "bert/encoder/layer_11/attention/self/value/kernel/adam_v" in verbose


def test_grouped_assignment_reads_in_parallel() -> None:
    lines = render_text(bert_plan(), width=220).splitlines()
    expected = (
        "    36  encoder/layer_{0..11}/attention/{key,query,value}/kernel  <-  "
        "bert/encoder/layer_{0..11}/attention/self/{key,query,value}/kernel  "
        "transpose[1, 0] reshape[768, 12, 64]  [768, 768] -> [768, 12, 64]"
    )
    assert expected in lines


def test_alike_problems_share_a_row() -> None:
    text = render_text(problems_plan(), width=260)
    assert (
        "  12  missing target   source 'enc/layer_{0..11}/ln/scale' maps to 'encoder/layer_{0..11}/norm/gamma', "
        "but the target has no variable of that name in the 'path' namespace  (rules/broken.toml#9 'norms')"
    ) in text.splitlines()
    assert render_text(problems_plan(), verbose=True).count("missing target") == 12


def _cells(row: str) -> int:
    return len(re.findall(r"(?<!\\)\|", row)) - 1


@pytest.mark.parametrize("name", list(PLANS))
def test_markdown_tables_are_well_formed(name: str) -> None:
    markdown = render_markdown(PLANS[name]())
    table: list[str] = []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            assert len({_cells(row) for row in table}) == 1, table
            assert re.fullmatch(r"\|(-{3}:?\|)+|\|(-{3}\|)+|\|(-{3}:?\|)+", table[1].replace("---:", "---")), table[1]
            table = []
    assert markdown.count("<details>") == markdown.count("</details>")


def test_markdown_escapes_and_folds() -> None:
    markdown = render_markdown(problems_plan())
    assert "| `weird\\|name` | [3] | float32 |" in markdown
    assert "<details>" not in markdown.split("Warnings")[0], "errors never fold"
    bert = render_markdown(bert_plan())
    assert "<summary><b>Assignments</b> (199 in 14 rows, 417.6 MiB to read)</summary>" in bert
    assert "`encoder/layer_{0..11}/attention/{key,query,value}/kernel`" in bert


def test_markdown_code_spans_survive_backticks() -> None:
    plan = Plan(("r.toml",), "src", "tgt", "path", unused_sources=(TensorEntry("a`b|c", (), "int64"),))
    assert "| ``a`b\\|c`` | [] | int64 |" in render_markdown(plan)


@pytest.mark.parametrize("format", ["text", "markdown", "json"])
def test_render_dispatches(format: str) -> None:
    plan = head_plan()
    direct = {"text": render_text, "markdown": render_markdown, "json": render_json}[format](plan)
    assert render(plan, format) == direct  # type: ignore[arg-type]


def test_render_passes_text_options() -> None:
    plan = bert_plan()
    assert render(plan, "text", width=80, verbose=True) == render_text(plan, width=80, verbose=True)


def test_render_rejects_an_unknown_format() -> None:
    plan = head_plan()
    with pytest.raises(MapperError, match="unknown report format 'html'; choose one of 'text', 'markdown' or 'json'"):
        render(plan, "html")  # type: ignore[arg-type]
    assert plan == head_plan()


def test_rendering_leaves_the_plan_alone() -> None:
    plan = bert_plan()
    before = plan.to_json()
    for format in ("text", "markdown", "json"):
        render(plan, format)  # type: ignore[arg-type]
    assert plan.to_json() == before


def test_names_a_message_does_not_show_are_listed_grouped() -> None:
    problem = Problem(
        ProblemKind.DOUBLE_FILL,
        Severity.ERROR,
        "two rules fill the same three targets; make the first rule's pattern narrower",
        RuleRef("r.toml", 2, "wide"),
        tuple(f"t/layer_{i}/w" for i in range(3)),
    )
    plan = Plan(("r.toml",), "src", "tgt", "path", problems=(problem,))
    assert "names: t/layer_{0..2}/w" in render_text(plan)
    assert "(r.toml#2 'wide')" in render_text(plan)
    assert "<br>names: `t/layer_{0..2}/w` | `r.toml#2 'wide'` |" in render_markdown(plan)


# ---------------------------------------------------------------------------------------------------------------------
# Porting plans: split parts, concat/stack groups, named sources
# ---------------------------------------------------------------------------------------------------------------------

SPLIT_RULE = RuleRef("r.toml", 1, "c_attn")


def split_assignment(
    layer: int, part: int, name: str, *, parts: int = 3, size: int = 4, source_id: str | None = None
) -> Assignment:
    return Assignment(
        f"layer_{layer}/{name}/kernel",
        f"layer_{layer}/{name}/kernel",
        f"h.{layer}.attn.c_attn.weight",
        SPLIT_RULE,
        (SplitPart(-1, part, parts, part * size, (part + 1) * size), Reshape((size, 2, size // 2))),
        (size, parts * size),
        "float32",
        (size, 2, size // 2),
        "float32",
        source_id=source_id,
    )


def combined(target: str, members: tuple[str, ...], *, shapes: tuple[tuple[int, ...], ...] | None = None) -> Assignment:
    shapes = shapes or ((4, 4),) * len(members)
    total = sum(shape[-1] for shape in shapes)
    return Assignment(
        target,
        target,
        members[0],
        RuleRef("r.toml", 2, "qkv"),
        (),
        shapes[0],
        "float32",
        (*shapes[0][:-1], total),
        "float32",
        join=joined(Concat(-1), members, shapes),
    )


def assignment_lines(plan: Plan, **options: object) -> list[str]:
    text = render_text(plan, width=200, **options)  # type: ignore[arg-type]
    section = text.split("Assignments (", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in section.splitlines()[1:] if "<-" in line]


def test_split_parts_share_one_line_with_their_part_numbers() -> None:
    rows = tuple(split_assignment(i, p, name) for i in LAYERS for p, name in enumerate(("query", "key", "value")))
    plan = Plan(("r.toml",), "gpt2", "model", "path", assignments=rows)
    assert assignment_lines(plan) == [
        "36  layer_{0..11}/{query,key,value}/kernel  <-  h.{0..11}.attn.c_attn.weight  "
        "split[axis -1, part {1..3}/3] reshape[4, 2, 2]  [4, 12] -> [4, 2, 2]"
    ]
    markdown = render_markdown(plan)
    assert "`split[axis -1, part {1..3}/3]`, `reshape[4, 2, 2]`" in markdown
    # Each fused tensor is read once, though three targets take a part of it: 12 x [4, 12] float32 = 2304 B.
    assert "Assignments (36 in 1 line, 2.2 KiB to read)" in render_text(plan)
    assert "(36 in 1 row, 2.2 KiB to read)" in markdown
    # Verbose lists every part on its own.
    assert len(assignment_lines(plan, verbose=True)) == 36
    assert any(
        re.fullmatch(r"layer_7/key/kernel +<-  h\.7\.attn\.c_attn\.weight +split\[axis -1, part 2/3\] .*", line)
        for line in assignment_lines(plan, verbose=True)
    )


def test_split_parts_missing_for_some_layers_still_group_what_is_whole() -> None:
    rows = [split_assignment(i, p, name) for i in range(3) for p, name in enumerate(("query", "key", "value"))]
    rows.remove(split_assignment(1, 1, "key"))  # e.g. kept, or failed: no longer a whole set of parts
    plan = Plan(("r.toml",), "gpt2", "model", "path", assignments=tuple(rows))
    lines = assignment_lines(plan)
    expanded = sorted(
        name for line in lines for name in expand_pattern(line.split()[1] if line[0].isdigit() else line.split()[0])
    )
    assert expanded == sorted(row.target for row in rows), lines
    assert all("part " in line for line in lines)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param(
            # Parts of different shapes (a grouped-query fused tensor) cannot share a line.
            (
                split_assignment(0, 0, "query", size=4),
                Assignment(
                    "layer_0/key/kernel",
                    "layer_0/key/kernel",
                    "h.0.attn.c_attn.weight",
                    SPLIT_RULE,
                    (SplitPart(-1, 1, 3, 4, 6),),
                    (4, 12),
                    "float32",
                    (4, 2),
                    "float32",
                ),
            ),
            [
                "layer_0/key/kernel    <-  h.0.attn.c_attn.weight  split[axis -1, part 2/3]  [4, 12] -> [4, 2]",
                "layer_0/query/kernel  <-  h.0.attn.c_attn.weight  split[axis -1, part 1/3] reshape[4, 2, 2]  "
                "[4, 12] -> [4, 2, 2]",
            ],
            id="different-shapes",
        ),
        pytest.param(
            # The parts' targets differ in two segments: one line per part, each still grouped over layers.
            tuple(
                replace(
                    split_assignment(i, p, name),
                    target=f"layer_{i}/{name}/{name}_kernel",
                    target_key=f"layer_{i}/{name}/{name}_kernel",
                )
                for i in range(2)
                for p, name in enumerate(("q", "k"))
            ),
            [
                "2  layer_{0,1}/k/k_kernel  <-  h.{0,1}.attn.c_attn.weight  split[axis -1, part 2/3] reshape[4, 2, 2]  "
                "[4, 12] -> [4, 2, 2]",
                "2  layer_{0,1}/q/q_kernel  <-  h.{0,1}.attn.c_attn.weight  split[axis -1, part 1/3] reshape[4, 2, 2]  "
                "[4, 12] -> [4, 2, 2]",
            ],
            id="two-segments-differ",
        ),
    ],
)
def test_split_parts_that_cannot_share_a_line_get_one_each(rows: tuple[Assignment, ...], expected: list[str]) -> None:
    plan = Plan(("r.toml",), "gpt2", "model", "path", assignments=rows)
    assert assignment_lines(plan) == expected


def test_concat_groups_across_layers_read_as_one_line() -> None:
    rows = tuple(
        combined(f"layer_{i}/attention/qkv", tuple(f"layer.{i}.attn.{p}_proj.weight" for p in "qkv")) for i in LAYERS
    )
    plan = Plan(("r.toml",), "llama", "model", "path", assignments=rows)
    assert assignment_lines(plan) == [
        "12  layer_{0..11}/attention/qkv  <-  concat[axis -1] layer.{0..11}.attn.{q,k,v}_proj.weight  "
        "3 x [4, 4] -> [4, 12]"
    ]


@pytest.mark.parametrize(
    ("members", "shapes", "expected"),
    [
        pytest.param(
            ("q", "k", "v"), None, "fused/qkv  <-  concat[axis -1](q, k, v)  3 x [4, 4] -> [4, 12]", id="nothing-shared"
        ),
        pytest.param(
            ("attn/v", "attn/q", "attn/k"),
            None,
            "fused/qkv  <-  concat[axis -1] attn/{v,q,k}  3 x [4, 4] -> [4, 12]",
            id="member-order-kept",
        ),
        pytest.param(
            ("m.q_proj", "m.k_proj", "m.v_proj"),
            ((8, 8), (8, 2), (8, 2)),
            "fused/qkv  <-  concat[axis -1] m.{q,k,v}_proj  [8, 8] + [8, 2] + [8, 2] -> [8, 12]",
            id="grouped-query-shapes",
        ),
        pytest.param(
            tuple(f"blocks.{i}.w" for i in (0, 1, 2, 3)),
            None,
            "fused/qkv  <-  concat[axis -1] blocks.{0..3}.w  4 x [4, 4] -> [4, 16]",
            id="numbered-members",
        ),
        pytest.param(
            ("layer_8/w", "layer_10/w"),
            None,
            "fused/qkv  <-  concat[axis -1] layer_{8,10}/w  2 x [4, 4] -> [4, 8]",
            id="digit-runs-kept-whole",
        ),
        pytest.param(
            ("a/x/1", "b/y/1"),
            None,
            "fused/qkv  <-  concat[axis -1](a/x/1, b/y/1)  2 x [4, 4] -> [4, 8]",
            id="two-segments-vary-listed",
        ),
        pytest.param(
            ("a{1}/w", "a{2}/w"),
            None,
            "fused/qkv  <-  concat[axis -1] a\\{{1,2}\\}/w  2 x [4, 4] -> [4, 8]",
            id="braces-escaped",
        ),
    ],
)
def test_one_group_shows_its_members_in_order(
    members: tuple[str, ...], shapes: tuple[tuple[int, ...], ...] | None, expected: str
) -> None:
    plan = Plan(("r.toml",), "src", "model", "path", assignments=(combined("fused/qkv", members, shapes=shapes),))
    (line,) = assignment_lines(plan)
    assert line == expected
    pattern = line.split("  <-  ")[1].split("  ")[0]
    if "(" not in pattern:  # a pattern: it expands to exactly the members, in order
        assert expand_pattern(pattern.split("] ", 1)[1]) == list(members)


def test_a_stack_shows_its_member_count() -> None:
    members = tuple(f"h.{i}.gate" for i in LAYERS)
    row = Assignment(
        "gates", "gates", members[0], RuleRef("r.toml", 1), (), (8,), "float32", (12, 8), "float32",
        join=joined(Stack(0), members, ((8,),) * 12),
    )  # fmt: skip
    plan = Plan(("r.toml",), "src", "model", "path", assignments=(row,))
    assert assignment_lines(plan) == ["gates  <-  stack[axis 0] h.{0..11}.gate  12 x [8] -> [12, 8]"]
    assert "12 \u00d7 [8] \u2192 [12, 8]" in render_markdown(plan)
    verbose = assignment_lines(plan, verbose=True)
    assert verbose == [f"gates  <-  stack[axis 0]({', '.join(members)})  12 x [8] -> [12, 8] float32"]


def named_plan() -> Plan:
    rule = RuleRef("r.toml", 1, "copy")
    return Plan(
        ("r.toml",),
        (
            NamedSource("backbone", "TensorFlow checkpoint a/ckpt-1"),
            NamedSource("head", "NumPy file b.npz (2 tensors)"),
        ),
        "model",
        "path",
        assignments=(
            Assignment("enc/w", "enc/w", "enc/w", rule, (), (2,), "float32", (2,), "float32", source_id="backbone"),
            Assignment("enc/b", "enc/b", "enc/b", rule, (), (2,), "float32", (2,), "float32", source_id="backbone"),
            Assignment("head/w", "head/w", "w", rule, (), (3,), "float32", (3,), "float32", source_id="head"),
        ),
        skips=(
            Skip("global_step", SkipKind.RULE, "counter", RuleRef("r.toml", 2), (), source_id="backbone"),
            Skip("global_step", SkipKind.RULE, "counter", RuleRef("r.toml", 2), (), source_id="head"),
        ),
        unused_sources=(TensorEntry("extra", (1,), "int8", "head"),),
    )


def test_named_sources_are_listed_in_the_header_and_prefix_every_name() -> None:
    text = render_text(named_plan())
    assert (
        "\n  sources     backbone  TensorFlow checkpoint a/ckpt-1\n              head      NumPy file b.npz (2 tensors)\n"
        in text
    )
    assert "  source  " not in text
    assert "enc/{b,w}  <-  same names in backbone" in text
    assert "head/w     <-  head:w" in text
    assert re.search(r"^    backbone:global_step  \[\]$", text, re.MULTILINE)
    assert re.search(r"^    head:global_step      \[\]$", text, re.MULTILINE)
    assert "  head:extra  [1] int8" in text
    verbose = render_text(named_plan(), verbose=True)
    assert "enc/b   <-  same name in backbone" in verbose
    assert re.search(r"^    head:global_step +\[\]$", verbose, re.MULTILINE)
    markdown = render_markdown(named_plan())
    assert (
        "- **sources:**\n  - `backbone`: `TensorFlow checkpoint a/ckpt-1`\n  - `head`: `NumPy file b.npz (2 tensors)`"
        in markdown
    )
    assert "| `head:extra` | [1] | int8 |" in markdown
    assert "*same names in backbone*" in markdown


def test_named_sources_without_descriptions_still_list_the_ids() -> None:
    plan = replace(named_plan(), source=(NamedSource("backbone", ""), NamedSource("head", "")))
    text = render_text(plan)
    assert "  sources     backbone\n              head\n" in text
    assert "- **sources:**\n  - `backbone`: ?\n  - `head`: ?" in render_markdown(plan)


def test_lint_problems_show_their_code() -> None:
    problem = Problem(ProblemKind.LINT, Severity.WARNING, "rule 2 is shadowed", RuleRef("r.toml", 2), code="M102")
    plan = Plan(("r.toml",), "src", "tgt", "path", problems=(problem,))
    assert "  lint M102  rule 2 is shadowed  (r.toml#2)" in render_text(plan)
    assert "| lint M102 | rule 2 is shadowed | `r.toml#2` |" in render_markdown(plan)


# Random plans of split parts and concat groups over model-like names: the grouped rows must cover every
# assignment exactly once, and say which sources, members and part numbers they stand for.
@st.composite
def porting_assignments(draw: st.DrawFn) -> list[Assignment]:
    rows: list[Assignment] = []
    layers = draw(st.lists(st.integers(0, 14), unique=True, min_size=1, max_size=8))
    names = draw(st.sampled_from([("query", "key", "value"), ("q", "k"), ("wq", "wk", "wv")]))
    source_id = draw(st.sampled_from([None, "backbone"]))
    for layer in layers:
        for part, name in enumerate(names):
            if draw(st.integers(0, 5)):
                rows.append(split_assignment(layer, part, name, parts=len(names), source_id=source_id))
        if draw(st.booleans()):
            members = tuple(f"layers.{layer}.{p}_proj" for p in draw(st.permutations(["q", "k", "v"])))
            rows.append(replace(combined(f"layer_{layer}/qkv", members), source_id=source_id))
    return rows


def _row_names(source: str) -> tuple[str, list[str]]:
    """The combine of a row's source cell and the source names it stands for (source ids stripped)."""
    combine = ""
    if source.startswith("concat["):
        combine, source = source.split("]", 1)
        combine += "]"
        if source.startswith("("):
            return combine, [name.split(":", 1)[-1] for name in source[1:-1].split(", ")]
        source = source.strip()
    return combine, [name.split(":", 1)[-1] for name in expand_pattern(source)]


@given(porting_assignments())
@settings(max_examples=150, deadline=None)
def test_grouped_porting_rows_stand_for_exactly_their_assignments(rows: list[Assignment]) -> None:
    plan = Plan(("r.toml",), "src", "model", "path", assignments=tuple(rows))
    by_target = {row.target: row for row in rows}
    covered: list[str] = []
    for _, block in assignment_blocks(plan, verbose=False, arrow="->"):
        for row in block:
            targets = expand_pattern(row.target)
            assert len(targets) == row.count
            covered += targets
            members = [by_target[target] for target in targets]
            combine, names = _row_names(row.source)
            if combine:
                assert all(member.combine is not None for member in members)
                assert sorted(names) == sorted(name for member in members for name in member.members)
                continue
            assert sorted(set(names)) == sorted({member.source for member in members})
            found = re.search(r"part (\S+)/(\d+)", row.operations[0])
            assert found is not None
            parts = sorted(int(number) - 1 for number in expand_pattern(found.group(1)))
            assert parts == sorted({member.operations[0].part for member in members})  # type: ignore[union-attr]
    assert sorted(covered) == sorted(by_target)
    render_text(plan)
    render_markdown(plan)
    assert Plan.from_json(json.dumps(json.loads(render_json(plan))["plan"])) == plan
