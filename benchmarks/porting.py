"""Porting benchmark: a BERT-base Hugging Face checkpoint into keras-hub's BertBackbone, and `mapper convert` of it.

Run by hand, never by the test suite: ``python benchmarks/porting.py`` (see benchmarks/README.md, "Porting
benchmark"). Each measurement runs in a fresh process (``porting.py measure PATH``), one at a time, in
interleaved rounds; prints a table and writes ``benchmarks/porting-results-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# This checkout's mapper, whatever the environment's editable install points at; then benchmarks/ and tests/.
sys.path[:0] = [str(ROOT), str(HERE), str(ROOT / "tests")]

import models  # noqa: E402  (benchmarks/ is not a package)
from worker import measure  # noqa: E402  (fresh-process figures: wall, CPU, faults, VmHWM peak)

MIB = 2**20
DATA_VERSION = "1"
PORT_RULES = ROOT / "rules" / "hf-bert-to-keras-hub.toml"
CONVERT_RULES = HERE / "rename-bert.toml"
# Sizes of the Hugging Face BERT checkpoint; "base" is measured, "dev" is for trying the script out.
SIZES: dict[str, dict[str, int]] = {
    "base": {"VOCAB": 30522, "HIDDEN": 768, "LAYERS": 12, "HEADS": 12, "INTERMEDIATE": 3072, "MAX_POSITIONS": 512},
    "dev": {"VOCAB": 1000, "HIDDEN": 96, "LAYERS": 2, "HEADS": 12, "INTERMEDIATE": 384, "MAX_POSITIONS": 64},
}
PATHS = (
    "keras_hub",
    "mapper_verify",
    "mapper_rollback",
    "mapper_norollback",
    "convert",
    "copy",
    "copy_fsync",
    "convert_rename",
    "convert_safetensors",
    "convert_rename_safetensors",
    "convert_h5",
)
# convert_rename tells the writer's cost from the operations'; convert_h5 has no goal (see the README).
CONVERT_PATHS = ("convert", "convert_rename", "convert_safetensors", "convert_rename_safetensors", "convert_h5")
CONVERT_OUTPUTS = {
    "convert_safetensors": "model.safetensors",
    "convert_rename_safetensors": "model.safetensors",
    "convert_h5": "model.weights.h5",
}
PATH_LABELS = {
    "keras_hub": "keras-hub: convert_bert.convert_weights(backbone, SafetensorLoader(dir), config)",
    "mapper_verify": "mapper.apply(plan, dir, backbone) (rollback='verify', the default)",
    "mapper_rollback": "mapper.apply(plan, dir, backbone, rollback=True) (= 'memory': keeps the old values)",
    "mapper_norollback": "mapper.apply(plan, dir, backbone, rollback=False)",
    "convert": "mapper.convert(benchmarks/rename-bert.toml, model.safetensors, out/ckpt) (TF checkpoint)",
    "copy": "shutil.copyfile(model.safetensors, out/copy.safetensors)",
    "copy_fsync": "shutil.copyfile(model.safetensors, out/copy.safetensors), then os.fsync of the copy",
    "convert_rename": "not a goal: as convert, with rename-bert.toml's ops removed (renames only, no transposes)",
    "convert_safetensors": "as convert, into out/model.safetensors instead of a TF checkpoint",
    "convert_rename_safetensors": "not a goal: as convert_rename, into out/model.safetensors",
    "convert_h5": "not a goal: as convert, into out/model.weights.h5 (HDF5, h5py)",
}
REFERENCE_LABELS = {"keras_hub": "kh", "copy": "copy", "copy_fsync": "c+fs"}
APPLY_GOAL = 0.6  # our apply's wall time as a fraction of keras-hub's converter's
# mapper convert's wall time as a multiple of copying the file and syncing the copy (what a durable output costs).
CONVERT_GOALS = {"convert": 2.0, "convert_safetensors": 1.5}
MEMORY_SLACK = 64 * MIB  # extra peak memory of our apply: at most 1.5 x the largest tensor + 64 MiB
# The other benchmark (nothing of it may run during a measurement); it may be started as `worker.py` from benchmarks/.
BUSY_PATTERN = r"(^|[ /])(run|worker)\.py( |$)"
POLL_SECONDS = 60
ATTEMPTS = 3  # measurements disturbed by the other benchmark are made again, this many times at most
STDERR_TAIL = 3000


# --- the checkpoint -------------------------------------------------------------------------------------


def data_dir(size: str) -> Path:
    """Where the Hugging Face directory (config.json + model.safetensors) of ``size`` is cached."""
    return models.cache_root() / f"porting-v{DATA_VERSION}" / f"hf-bert-{size}"


def out_dir(size: str) -> Path:
    """Where conversions and copies are written: beside the checkpoint, on the same disk."""
    return models.cache_root() / f"porting-v{DATA_VERSION}" / f"out-{size}"


def load_meta(size: str) -> dict[str, Any] | None:
    """The cached checkpoint's metadata, or None when it has not been written yet."""
    path = data_dir(size) / "meta.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@contextmanager
def _sized(size: str) -> Iterator[Any]:
    """tests/hf_fixtures.py with its module sizes set to ``size`` for the duration (its names, our sizes)."""
    import hf_fixtures

    saved = {name: getattr(hf_fixtures, name) for name in SIZES[size]}
    try:
        for name, value in SIZES[size].items():
            setattr(hf_fixtures, name, value)
        yield hf_fixtures
    finally:
        for name, value in saved.items():
            setattr(hf_fixtures, name, value)


def create(size: str) -> dict[str, Any]:
    """Write the random float32 BertModel directory of ``size`` once (tests/hf_fixtures.py's names); its metadata."""
    existing = load_meta(size)
    if existing is not None:
        return existing
    with _sized(size) as hf_fixtures:
        variant = hf_fixtures.BertVariant()
        config = hf_fixtures.bert_config(variant)
        tensors, _ = hf_fixtures.bert_tensors(variant, seed=20240601)
    directory = data_dir(size)
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with _sized(size) as hf_fixtures:
        hf_fixtures.write_hf_model(partial, config, tensors, {})
    largest = max(tensors, key=lambda name: tensors[name].nbytes)
    meta = {
        "size": size,
        "sizes": SIZES[size],
        "tensors": len(tensors),
        "total_bytes": sum(array.nbytes for array in tensors.values()),
        "file_bytes": (partial / "model.safetensors").stat().st_size,
        "largest_name": largest,
        "largest_bytes": tensors[largest].nbytes,
        "largest_shape": list(tensors[largest].shape),
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
    return meta


# --- what is checked after each port ---------------------------------------------------------------------


def checks(meta: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(keras-hub variable path, Hugging Face tensor, layout change) for a few variables of every kind."""
    last, middle = meta["sizes"]["LAYERS"] - 1, meta["sizes"]["LAYERS"] // 2
    layer = "transformer_layer_{}/"
    return [
        ("token_embedding/embeddings", "embeddings.word_embeddings.weight", "same"),
        ("embeddings_layer_norm/gamma", "embeddings.LayerNorm.weight", "same"),
        (layer.format(0) + "self_attention_layer/query/kernel", "encoder.layer.0.attention.self.query.weight", "qkv"),
        (
            layer.format(middle) + "self_attention_layer/value/bias",
            f"encoder.layer.{middle}.attention.self.value.bias",
            "heads",
        ),
        (
            layer.format(last) + "self_attention_layer/attention_output/kernel",
            f"encoder.layer.{last}.attention.output.dense.weight",
            "output",
        ),
        (
            layer.format(last) + "feedforward_output_dense/kernel",
            f"encoder.layer.{last}.output.dense.weight",
            "transpose",
        ),
        ("pooled_dense/bias", "pooler.dense.bias", "same"),
    ]


def wrong_values(meta: dict[str, Any], read: Callable[[str], Any], *, transformed: bool = True) -> list[str]:
    """The checked variables whose values (``read(path)``) differ from the checkpoint's.

    Laid out as keras-hub does, unless ``transformed`` is false (renamed only: the checkpoint's own layout).
    """
    import numpy as np
    from safetensors import safe_open

    heads, hidden = meta["sizes"]["HEADS"], meta["sizes"]["HIDDEN"]
    layouts: dict[str, Callable[[Any], Any]] = {
        "same": lambda x: x,
        "transpose": lambda x: x.T,
        "qkv": lambda x: x.T.reshape(hidden, heads, -1),
        "heads": lambda x: x.reshape(heads, -1),
        "output": lambda x: x.T.reshape(heads, -1, hidden),
    }
    wrong = []
    with safe_open(str(data_dir(meta["size"]) / "model.safetensors"), framework="np") as file:
        for path, name, layout in checks(meta):
            expected = layouts[layout if transformed else "same"](file.get_tensor(name))
            if not np.array_equal(np.asarray(read(path)), expected):
                wrong.append(path)
    return wrong


# --- one measurement, in a fresh process -----------------------------------------------------------------


def run_measurement(path: str, size: str, profile: str | None) -> dict[str, Any]:
    """Prepare ``path`` (build the backbone, plan), then time the port, conversion or copy alone."""
    meta = load_meta(size)
    if meta is None:
        raise SystemExit(f"no cached checkpoint of size {size!r}; run `porting.py create --size {size}` first")
    directory = data_dir(size)
    weights = directory / "model.safetensors"
    output = out_dir(size)
    output.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    started = time.perf_counter()
    if path in ("copy", "copy_fsync"):
        target = output / "copy.safetensors"
        figures, _ = measure(lambda: _copy(weights, target, sync=path == "copy_fsync"), profile=profile)
        wrong = [] if _same_file_ends(weights, target) else [str(target)]
        return {"path": path, **figures, **extra, "wrong": wrong, "pid": os.getpid()}

    import tensorflow as tf

    import mapper
    import mapper.outputs.writers
    import mapper.plan.planner
    import mapper.run.convert
    import mapper.run.executor
    import mapper.sources.safetensors
    import mapper.targets.variables

    extra["import_seconds"] = time.perf_counter() - started
    if path in CONVERT_PATHS:
        float(tf.reduce_sum(tf.constant([1.0, 2.0])))  # TensorFlow's eager context starts outside the timing
        rules = CONVERT_RULES
        renames_only = path.startswith("convert_rename")
        if renames_only:
            rules = output / "rename-only.toml"
            text = CONVERT_RULES.read_text(encoding="utf-8")
            rules.write_text("".join(line for line in text.splitlines(True) if not line.startswith("ops = ")))
        written = output / CONVERT_OUTPUTS.get(path, "ckpt")
        figures, result = measure(lambda: mapper.convert(rules, weights, written), profile=profile)
        extra["convert_result"] = {
            "written": result.written,
            "bytes_read": result.bytes_read,
            "bytes_written": result.bytes_written,
            "batches": result.batches,
            "seconds": result.seconds,
        }
        if written.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(written), framework="np") as file:
                extra["output_tensors"] = len(list(file.keys()))
                wrong = wrong_values(meta, file.get_tensor, transformed=not renames_only)
            extra["output_bytes"] = written.stat().st_size
        elif path == "convert_h5":
            import h5py

            with h5py.File(written, "r") as file:
                extra["output_tensors"] = sum(1 for _ in _h5_datasets(file))
                wrong = wrong_values(meta, lambda name: file[name][()])
            extra["output_bytes"] = written.stat().st_size
        else:
            reader = tf.train.load_checkpoint(str(written))
            extra["output_tensors"] = len(reader.get_variable_to_shape_map())
            extra["output_bytes"] = sum(file.stat().st_size for file in output.glob("ckpt.*"))
            wrong = wrong_values(meta, reader.get_tensor, transformed=not renames_only)
        return {"path": path, **figures, **extra, "wrong": wrong, "pid": os.getpid(), "mapper": mapper.__file__}

    import keras_hub
    from keras_hub.src.utils.transformers import convert_bert
    from keras_hub.src.utils.transformers.safetensor_utils import SafetensorLoader

    extra["import_seconds"] = time.perf_counter() - started
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    started = time.perf_counter()
    backbone = keras_hub.models.BertBackbone(**convert_bert.convert_backbone_config(config))
    extra["build_seconds"] = time.perf_counter() - started
    extra["weights"] = len(backbone.weights)

    if path == "keras_hub":

        def port() -> Any:
            with SafetensorLoader(str(directory)) as loader:
                convert_bert.convert_weights(backbone, loader, config)

    elif path in ("mapper_verify", "mapper_rollback", "mapper_norollback"):
        started = time.perf_counter()
        plan = mapper.make_plan(PORT_RULES, directory, backbone)
        extra["plan_seconds"] = time.perf_counter() - started
        if not plan.ok:
            shown = "; ".join(problem.message for problem in plan.errors[:5])
            raise SystemExit(f"the port plan has {len(plan.errors)} errors: {shown}")
        extra["assignments"] = len(plan.assignments)
        rollback: bool | str = {"mapper_verify": "verify", "mapper_rollback": True}.get(path, False)

        def port() -> Any:
            return mapper.apply(plan, directory, backbone, rollback=rollback)

    else:
        raise SystemExit(f"unknown path {path!r}; choose one of {', '.join(PATHS)}")
    figures, result = measure(port, profile=profile)
    if result is not None:
        extra["apply_result"] = {
            "assigned": result.assigned,
            "bytes_read": result.bytes_read,
            "batches": result.batches,
            "seconds": result.seconds,
        }
    by_path = {weight.path: weight for weight in backbone.weights}
    wrong = wrong_values(meta, lambda name: by_path[name].numpy())
    return {
        "path": path,
        **figures,
        **extra,
        "wrong": wrong,
        "pid": os.getpid(),
        "mapper": mapper.__file__,
    }


def _copy(source: Path, target: Path, *, sync: bool) -> None:
    """``shutil.copyfile`` (an in-kernel copy on Linux), then with ``sync`` an ``os.fsync`` of the copy."""
    shutil.copyfile(source, target)
    if sync:
        with target.open("rb") as handle:
            os.fsync(handle.fileno())


def _h5_datasets(group: Any) -> Iterator[str]:
    """The dataset paths under an h5py group."""
    for name, item in group.items():
        if hasattr(item, "items"):
            yield from (f"{name}/{inner}" for inner in _h5_datasets(item))
        else:
            yield name


def _same_file_ends(first: Path, second: Path) -> bool:
    """Same size and the same first and last MiB: the cheap check that a copy is whole."""
    if first.stat().st_size != second.stat().st_size:
        return False
    with first.open("rb") as a, second.open("rb") as b:
        if a.read(MIB) != b.read(MIB):
            return False
        a.seek(-MIB, os.SEEK_END)
        b.seek(-MIB, os.SEEK_END)
        return a.read() == b.read()


# --- the rounds ------------------------------------------------------------------------------------------


def busy() -> list[str]:
    """The other benchmark's processes that are running (``pgrep -af``)."""
    found = subprocess.run(["pgrep", "-af", BUSY_PATTERN], capture_output=True, text=True, check=False)
    return [line for line in found.stdout.splitlines() if line.strip()]


def wait_until_quiet(waited: list[float]) -> None:
    """Block until the other benchmark has not run for one POLL_SECONDS interval (two polls); waits are recorded.

    The other benchmark starts one worker after another with short gaps between them, so one empty poll
    is not enough: nothing may run at two polls POLL_SECONDS apart.
    """
    started = time.perf_counter()
    announced = False
    while True:
        running = busy()
        if not running:
            time.sleep(POLL_SECONDS)
            running = busy()
            if not running:
                break
        if not announced:
            print(f"  waiting for the other benchmark to finish: {running[0][:100]}", flush=True)
            announced = True
        time.sleep(POLL_SECONDS)
    waited.append(time.perf_counter() - started)


def warm_page_cache(path: Path) -> None:
    """Read the checkpoint once, so that no measurement pays for the disk."""
    with path.open("rb") as handle:
        while handle.read(16 * MIB):
            pass


def clean_outputs(size: str) -> None:
    """Remove what the last measurement wrote, and flush the disk, so the next starts alike."""
    shutil.rmtree(out_dir(size), ignore_errors=True)
    os.sync()


def run_worker(path: str, size: str, profile: str | None) -> dict[str, Any]:
    """One measurement in a fresh process; its RESULT, or {"error": ...}."""
    command = [sys.executable, str(Path(__file__).resolve()), "measure", path, "--size", size]
    if profile:
        command += ["--profile", profile]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in finished.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return result
    tail = "\n".join(line for line in finished.stderr.splitlines() if "cuda" not in line.lower())[-STDERR_TAIL:]
    return {"path": path, "error": f"exit code {finished.returncode}: {tail}"}


def run_rounds(
    paths: list[str], rounds: int, size: str, profile_dir: str | None, waited: list[float] | None
) -> list[dict[str, Any]]:
    """Every path once per round, in an order that rotates from round to round; one process at a time."""
    results: list[dict[str, Any]] = []
    weights = data_dir(size) / "model.safetensors"
    total, done = rounds * len(paths), 0
    if waited is not None:
        wait_until_quiet(waited)
    for round_number in range(1, rounds + 1):
        shift = (round_number - 1) % len(paths)
        for path in paths[shift:] + paths[:shift]:
            for attempt in range(1, ATTEMPTS + 1):
                if waited is not None and busy():
                    wait_until_quiet(waited)
                clean_outputs(size)
                warm_page_cache(weights)
                profile = str(Path(profile_dir) / f"{path}-{round_number}.prof") if profile_dir else None
                result = run_worker(path, size, profile)
                clean_outputs(size)
                # A worker of the other benchmark takes over 10 s to start: one that began during this
                # measurement is still running now. Such a measurement is thrown away and made again.
                disturbed = busy() if waited is not None else []
                if not disturbed:
                    break
                print(f"  {path}: the other benchmark ran meanwhile ({disturbed[0][:80]}); measuring again", flush=True)
                result = {"path": path, "error": f"disturbed {attempt} times by the other benchmark"}
            result["round"] = round_number
            results.append(result)
            done += 1
            shown = (
                f"{result['seconds']:.3f} s, {result['extra_peak'] / MIB:.0f} MiB extra"
                + (f", plan {result['plan_seconds']:.3f} s" if "plan_seconds" in result else "")
                + ("" if not result.get("wrong") else f", WRONG {result['wrong']}")
                if "seconds" in result
                else "FAILED " + result["error"][-500:]
            )
            print(f"  [{done}/{total}] round {round_number}: {path}: {shown}", flush=True)
    return results


# --- summarising -----------------------------------------------------------------------------------------

FIGURES = ("seconds", "cpu_seconds", "system_seconds", "minor_faults", "extra_peak", "load_before")


def _paired(results: list[dict[str, Any]], path: str, reference: str, figure: str = "seconds") -> list[float]:
    """Per round: this path's figure over the reference's in the same round."""
    by_round: dict[int, dict[str, float]] = {}
    for r in results:
        if figure in r:
            by_round.setdefault(r["round"], {})[r["path"]] = r[figure]
    return [times[path] / times[reference] for times in by_round.values() if path in times and reference in times]


def summarise(results: list[dict[str, Any]], paths: list[str]) -> dict[str, dict[str, Any]]:
    """Medians (and min/max) per path."""
    summary: dict[str, dict[str, Any]] = {}
    for path in paths:
        runs = [r for r in results if r["path"] == path and "seconds" in r]
        failures = [r for r in results if r["path"] == path and "seconds" not in r]
        entry: dict[str, Any] = {"label": PATH_LABELS[path], "runs": len(runs), "failures": len(failures)}
        if failures:
            entry["first_failure"] = failures[0].get("error", "")
        for figure in FIGURES if runs else ():
            values = [r[figure] for r in runs]
            entry[figure] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        for figure in ("plan_seconds", "build_seconds", "import_seconds"):
            values = [r[figure] for r in runs if figure in r]
            if values:
                entry[figure] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        executor = [r["apply_result"]["seconds"] for r in runs if r.get("apply_result")]
        executor += [r["convert_result"]["seconds"] for r in runs if r.get("convert_result")]
        if executor:
            entry["inner_seconds"] = {"median": statistics.median(executor), "min": min(executor), "max": max(executor)}
        entry["wrong"] = sorted({name for r in runs for name in r["wrong"]})
        summary[path] = entry
    references = dict.fromkeys(("mapper_verify", "mapper_rollback", "mapper_norollback"), "keras_hub")
    references |= dict.fromkeys(CONVERT_PATHS, "copy_fsync" if "copy_fsync" in paths else "copy")
    for path, reference in references.items():
        if path in summary and "seconds" in summary[path] and "seconds" in summary.get(reference, {}):
            entry = summary[path]
            entry["reference"] = reference
            entry["ratio"] = entry["seconds"]["median"] / summary[reference]["seconds"]["median"]
            paired = _paired(results, path, reference)
            entry["paired_ratio"] = statistics.median(paired) if paired else None
            cpu = _paired(results, path, reference, "cpu_seconds")
            entry["paired_cpu_ratio"] = statistics.median(cpu) if cpu else None
    return summary


def check_goals(summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the issue: its limit, what was measured, and whether it was met."""
    goals: list[dict[str, Any]] = []
    budget = 1.5 * meta["largest_bytes"] + MEMORY_SLACK
    for path in ("mapper_verify", "mapper_rollback", "mapper_norollback"):
        entry = summary.get(path, {})
        if "ratio" in entry:
            goals.append(
                {
                    "goal": f"{path}: apply wall time <= {APPLY_GOAL} x keras-hub's converter",
                    "limit": APPLY_GOAL,
                    "measured": round(entry["ratio"], 3),
                    "paired": None if entry["paired_ratio"] is None else round(entry["paired_ratio"], 3),
                    "met": entry["ratio"] <= APPLY_GOAL,
                }
            )
        if "extra_peak" in entry:
            measured = entry["extra_peak"]["max"]
            goals.append(
                {
                    "goal": f"{path}: extra peak memory of the apply <= 1.5 x largest tensor + 64 MiB "
                    f"({budget / MIB:.1f} MiB), worst run",
                    "limit": budget,
                    "measured": measured,
                    "met": measured <= budget,
                }
            )
    for path, limit in CONVERT_GOALS.items():
        entry = summary.get(path, {})
        if "ratio" in entry:
            goals.append(
                {
                    "goal": f"{path}: wall time <= {limit} x {entry['reference']} (copying the file"
                    + (", then fsync)" if entry["reference"] == "copy_fsync" else ", no fsync)"),
                    "limit": limit,
                    "measured": round(entry["ratio"], 3),
                    "paired": None if entry["paired_ratio"] is None else round(entry["paired_ratio"], 3),
                    "met": entry["ratio"] <= limit,
                }
            )
    return goals


def render(summary: dict[str, dict[str, Any]], meta: dict[str, Any], goals: list[dict[str, Any]], rounds: int) -> str:
    """The human-readable report."""
    sizes = meta["sizes"]
    lines = [
        f"\nHugging Face BertModel, hidden {sizes['HIDDEN']}, {sizes['LAYERS']} layers, {sizes['HEADS']} heads, "
        f"intermediate {sizes['INTERMEDIATE']}, vocabulary {sizes['VOCAB']}, {sizes['MAX_POSITIONS']} positions: "
        f"{meta['tensors']} float32 tensors, {meta['file_bytes'] / MIB:.1f} MiB, largest {meta['largest_bytes'] / MIB:.1f} "
        f"MiB ({meta['largest_name']}); median of {rounds} rounds, each measurement in a fresh process",
    ]
    header = (
        f"{'path':<20} {'wall s':>7} {'ratio':>12} {'paired':>7} {'cpu s':>6} {'inner s':>7} {'faults k':>8} "
        f"{'extra peak MiB':>14} {'plan s':>6} {'build s':>7} {'ok':>3}"
    )
    lines += [header, "-" * len(header)]
    for path, entry in summary.items():
        if "seconds" not in entry:
            lines.append(f"{path:<20} FAILED ({entry['failures']} runs): {entry.get('first_failure', '')[-300:]}")
            continue
        ratio = f"{entry['ratio']:.2f} x {REFERENCE_LABELS[entry['reference']]}" if "ratio" in entry else ""
        paired = f"{entry['paired_ratio']:.2f}" if entry.get("paired_ratio") is not None else ""
        inner = f"{entry['inner_seconds']['median']:.3f}" if "inner_seconds" in entry else ""
        plan = f"{entry['plan_seconds']['median']:.3f}" if "plan_seconds" in entry else ""
        build = f"{entry['build_seconds']['median']:.2f}" if "build_seconds" in entry else ""
        lines.append(
            f"{path:<20} {entry['seconds']['median']:>7.3f} {ratio:>12} {paired:>7} {entry['cpu_seconds']['median']:>6.2f} "
            f"{inner:>7} {entry['minor_faults']['median'] / 1000:>8.1f} {entry['extra_peak']['median'] / MIB:>14.1f} "
            f"{plan:>6} {build:>7} "
            f"{'yes' if not entry['wrong'] and not entry['failures'] else 'NO':>3}"
        )
    lines.append("")
    lines.append("Goals:")
    for goal in goals:
        measured = goal["measured"]
        shown = f"{measured / MIB:.1f} MiB" if goal["limit"] > 1000 else f"{measured}"
        if goal.get("paired") is not None:
            shown += f" (paired {goal['paired']})"
        lines.append(f"  [{'met' if goal['met'] else 'MISSED'}] {goal['goal']}: {shown}")
    lines.append("")
    lines.append(
        "ratio: median over the reference's median (kh = keras-hub's converter, copy = shutil.copyfile, "
        "c+fs = copy + fsync);"
    )
    lines.append("paired: median over rounds of the per-round ratio; inner s: the executor's or writer's own timing;")
    lines.append("faults k: minor page faults during the timed region, thousands (4 KiB pages of fresh memory);")
    lines.append("plan s: mapper.make_plan (not in wall s); build s: building the BertBackbone (never timed).")
    for path, entry in summary.items():
        lines.append(f"  {path}: {entry['label']}")
    return "\n".join(lines)


def host() -> dict[str, Any]:
    """What the figures were measured on."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for package in ("tensorflow", "keras", "keras-hub", "safetensors", "numpy", "weight-mapper"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    create_parser = commands.add_parser("create", help="write the cached Hugging Face checkpoint")
    create_parser.add_argument("--size", choices=SIZES, default="base")
    one = commands.add_parser("measure", help="one measurement in this process (prints a RESULT line)")
    one.add_argument("path", choices=PATHS)
    one.add_argument("--size", choices=SIZES, default="base")
    one.add_argument("--profile", help="write cProfile stats of the timed region to this file")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--size", choices=SIZES, default="base", help="checkpoint size (dev: tiny, to try it out)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--profile-dir", help="write cProfile stats of every measurement into this directory")
    parser.add_argument("--output", help="the results file (default benchmarks/porting-results-<date>.json)")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for the other benchmark (trying out only)")
    args = parser.parse_args(argv)
    if args.command == "create":
        print("RESULT " + json.dumps(create(args.size)))
        return 0
    if args.command == "measure":
        print("RESULT " + json.dumps(run_measurement(args.path, args.size, args.profile)))
        return 0

    if load_meta(args.size) is None:
        print(f"writing the {args.size} checkpoint to {data_dir(args.size)} (once) ...", flush=True)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "create", "--size", args.size], check=True)
    meta = load_meta(args.size)
    assert meta is not None
    if args.profile_dir:
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    waited: list[float] = []
    started = time.perf_counter()
    results = run_rounds(list(args.paths), args.rounds, args.size, args.profile_dir, None if args.no_wait else waited)
    summary = summarise(results, list(args.paths))
    goals = check_goals(summary, meta)
    print(render(summary, meta, goals, args.rounds))
    date = dt.date.today().isoformat()
    output = Path(args.output) if args.output else HERE / f"porting-results-{date}.json"
    document = {
        "benchmark": "porting",
        "date": date,
        "rounds": args.rounds,
        "seconds": time.perf_counter() - started,
        "waited_for_other_benchmark_seconds": None if args.no_wait else waited,
        "host": host(),
        "checkpoint": meta,
        "rules": {"port": str(PORT_RULES.relative_to(ROOT)), "convert": str(CONVERT_RULES.relative_to(ROOT))},
        "goals": goals,
        "summary": summary,
        "results": results,
    }
    output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {output}")
    return (
        0
        if all(goal["met"] for goal in goals) and not any(e["failures"] or e["wrong"] for e in summary.values())
        else 1
    )


if __name__ == "__main__":
    raise SystemExit(main())
