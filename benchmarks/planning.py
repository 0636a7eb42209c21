"""Planning speed: build_plan over 25k, 50k and 100k synthetic names against 200 rules, all in memory."""

from __future__ import annotations

import gc
import statistics
import time
from itertools import count
from typing import Any

from mapper.plan.planner import build_plan
from mapper.rules import RuleSet, parse_rules
from mapper.specs import TargetMap, TensorSpec, VariableMap

SIZES = (25_000, 50_000, 100_000)
REPEATS = 5
BLOCKS = 200
# Blocks 0..SPECIFIC_BLOCKS-1 have three rules each (attention, feed-forward, norms) with a literal prefix;
# the other blocks fall through to a catch-all near the end, as a rule file written for part of a model would.
SPECIFIC_BLOCKS = 60
PARTS = ("query", "key", "value", "output", "ffn_in", "ffn_out", "norm")
KINDS = ("kernel", "bias")
# Two of every three names are optimizer slots, as in a TF1 checkpoint saved with Adam; a catch-all skips them.
FORMS = ("", "/adam_m", "/adam_v")
HEADS = 5
SHAPE = (4, 4)

SPECIAL_NAMES = (
    "embeddings/word",
    "embeddings/position",
    "embeddings/token_type",
    "embeddings/norm/gamma",
    "embeddings/norm/beta",
    "pooler/dense/kernel",
    "pooler/dense/bias",
    *(f"head_{head}/{kind}" for head in range(HEADS) for kind in KINDS),
    "cls/predictions/transform/kernel",
    "cls/predictions/output_bias",
    "cls/seq_relationship/kernel",
    "global_step",
    "optimizer/iterations",
    "aux_3/kernel",
    "aux_7/bias",
    "misc/ema_decay",
    "legacy/step_size",
    "extra/bn/moving_mean",
    "extra/bn/moving_variance",
    "extra/ema/dense/kernel",
    "unlisted_tensor",
)


def synthetic_names(total: int) -> list[str]:
    """``total`` source names: the special ones, then ``block_{k}/layer_{i}/{part}/{kind}[/adam_m|/adam_v]``."""
    names = list(SPECIAL_NAMES)
    for layer in count():
        for block in range(BLOCKS):
            for part in PARTS:
                for kind in KINDS:
                    for form in FORMS:
                        if len(names) >= total:
                            return names
                        names.append(f"block_{block}/layer_{layer}/{part}/{kind}{form}")
    return names  # pragma: no cover - count() never ends


def synthetic_rules() -> str:
    """A 200-rule file: 180 block rules and 15 special ones with distinct literal prefixes, then 5 catch-alls."""
    rules: list[str] = []

    def rule(match: str, target: str | None = None, skip: str | None = None) -> None:
        action = f'target = "{target}"' if target is not None else f'skip = "{skip}"'
        rules.append(f"[[rules]]\nmatch = '{match}'\n{action}\n")

    layer = r"layer_(?P<i>\d+)"
    for block in range(SPECIFIC_BLOCKS):
        rule(
            rf"block_{block}/{layer}/(?P<part>query|key|value|output)/(?P<kind>kernel|bias)",
            f"encoder/block_{block}/attention/layer_{{i + 1}}/{{part}}/{{kind}}",
        )
        rule(
            rf"block_{block}/{layer}/ffn_(?P<part>in|out)/(?P<kind>kernel|bias)",
            f"encoder/block_{block}/ffn/layer_{{i + 1}}/{{part}}/{{kind}}",
        )
        rule(
            rf"block_{block}/{layer}/norm/(?P<kind>kernel|bias)", f"encoder/block_{block}/norm/layer_{{i + 1}}/{{kind}}"
        )
    rule(r"embeddings/(?P<what>word|position|token_type)", "embeddings/{what}/table")
    rule(r"embeddings/norm/(?P<what>gamma|beta)", "embeddings/norm/{what}")
    rule(r"pooler/dense/(?P<kind>kernel|bias)", "pooler/{kind}")
    for head in range(HEADS):
        rule(rf"head_{head}/(?P<kind>kernel|bias)", f"heads/{head}/{{kind}}")
    rule(r"cls/predictions/.*", skip="masked-LM head, not used for fine-tuning")
    rule(r"cls/seq_relationship/.*", skip="next-sentence head")
    rule(r"global_step", skip="training counter")
    rule(r"optimizer/.*", skip="optimizer state")
    rule(r"misc/.*", skip="bookkeeping")
    rule(r"aux_(?P<n>\d+)/(?P<kind>kernel|bias)", "aux/{n}/{kind}")
    rule(r"legacy/(?P<rest>.*)", skip="kept for older checkpoints")
    # Catch-alls near the end: no literal prefix (or a short one), tried for every name that reaches them.
    rule(
        r"block_(?P<k>\d+)/layer_(?P<i>\d+)/(?P<part>[a-z_]+)/(?P<kind>kernel|bias)",
        "encoder/block_{k}/generic/layer_{i + 1}/{part}/{kind}",
    )
    rule(r"(?P<scope>.+)/adam_(?P<slot>[mv])", skip="Adam slot")
    rule(r"(?P<scope>.+)/(?P<kind>moving_mean|moving_variance)", skip="statistics")
    rule(r"(?P<scope>.+)/ema/.*", skip="moving averages")
    rule(r".*", skip="anything else")
    if len(rules) != 200:
        raise RuntimeError(f"the synthetic rule file has {len(rules)} rules, not 200")
    header = "format = 1\n"
    return header + "\n".join(rules)


def target_names(rule_set: RuleSet, names: list[str]) -> list[str]:
    """The target names the rules produce for ``names``: the target is made to fit exactly (untimed)."""
    from mapper.plan.matching import RuleMatcher

    matcher = RuleMatcher(rule_set.rules)
    targets = []
    for name in names:
        found = matcher.first(name)
        if found is None:
            continue
        rule = rule_set.rules[found[0]]
        if rule.target is not None:
            targets.append(rule.render(found[1]))
    return targets


def run(sizes: tuple[int, ...] = SIZES, repeats: int = REPEATS) -> dict[str, Any]:
    """Time parse_rules once per repeat and build_plan per size; returns figures for results.json."""
    text = synthetic_rules()
    parse_times = []
    for _ in range(repeats):
        started = time.perf_counter()
        rule_set = parse_rules(text, file="synthetic-200.toml")
        parse_times.append(time.perf_counter() - started)
    results: list[dict[str, Any]] = []
    for size in sizes:
        names = synthetic_names(size)
        source = VariableMap((TensorSpec(name, SHAPE, "float32") for name in names), description="synthetic")
        targets = target_names(rule_set, names)
        target = TargetMap(VariableMap(TensorSpec(name, SHAPE, "float32") for name in targets))
        times = []
        cpu_times = []
        plan = None
        for _ in range(repeats):
            plan = None
            gc.collect()
            started, cpu_started = time.perf_counter(), time.process_time()
            plan = build_plan(rule_set, source, target)
            times.append(time.perf_counter() - started)
            cpu_times.append(time.process_time() - cpu_started)
        assert plan is not None
        median = statistics.median(times)
        results.append(
            {
                "names": size,
                "targets": len(targets),
                "seconds_median": median,
                "seconds_all": times,
                "microseconds_per_name": median / size * 1e6,
                "cpu_seconds_median": statistics.median(cpu_times),
                "cpu_microseconds_per_name": statistics.median(cpu_times) / size * 1e6,
                "cpu_microseconds_per_name_best": min(cpu_times) / size * 1e6,
                "assignments": len(plan.assignments),
                "skips": len(plan.skips),
                "errors": len(plan.errors),
                "problems": [problem.message for problem in plan.problems[:3]],
            }
        )
    return {
        "rules": len(rule_set.rules),
        "repeats": repeats,
        "parse_rules_seconds_median": statistics.median(parse_times),
        "sizes": results,
    }


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=REPEATS, help="build_plan calls per size (default %(default)s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="numbers of names")
    arguments = parser.parse_args()
    print(json.dumps(run(tuple(arguments.sizes), arguments.repeats), indent=2))
