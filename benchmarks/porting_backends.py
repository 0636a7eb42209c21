"""Porting benchmark on JAX and PyTorch: BERT-base (HF safetensors) into keras-hub's BertBackbone, no TensorFlow.

Run by hand, never by the test suite: ``python benchmarks/porting_backends.py`` (see benchmarks/README.md,
"Porting on every backend"). The checkpoint is porting.py's (written once, shared). Each measurement runs in a
fresh process (``porting_backends.py measure BACKEND PATH``) with ``KERAS_BACKEND`` set and TensorFlow made
unimportable, one at a time, in interleaved rounds whose order rotates; keras-hub's converter and ``mapper.apply``
are measured on the same backend in the same rounds. Prints a table and writes
``benchmarks/porting-backends-results-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE), str(ROOT / "tests")]

import porting  # noqa: E402  (benchmarks/ is not a package; the checkpoint, its checks, the page-cache warm-up)
from worker import measure  # noqa: E402  (fresh-process figures: wall, CPU, faults, VmHWM peak)

MIB = 2**20
BACKENDS = ("jax", "torch")
PATHS = ("keras_hub", "mapper_verify", "mapper_off")
PATH_LABELS = {
    "keras_hub": "keras-hub: convert_bert.convert_weights(backbone, SafetensorLoader(dir), config)",
    "mapper_verify": "mapper.apply(plan, dir, backbone) (rollback='verify', the default)",
    "mapper_off": "mapper.apply(plan, dir, backbone, rollback='off')",
}


def run_measurement(backend: str, path: str, size: str) -> dict[str, Any]:
    """Build the backbone (and plan) on ``backend``, then time keras-hub's converter or mapper's apply alone."""
    for blocked in ("tensorflow", "tf_keras"):  # proves the port needs no TensorFlow
        sys.modules[blocked] = None  # type: ignore[assignment]
    meta = porting.load_meta(size)
    if meta is None:
        raise SystemExit(f"no cached checkpoint of size {size!r}; run `porting.py create --size {size}` first")
    directory = porting.data_dir(size)
    started = time.perf_counter()
    import keras
    import keras_hub
    from keras_hub.src.utils.transformers import convert_bert
    from keras_hub.src.utils.transformers.safetensor_utils import SafetensorLoader

    import mapper

    if keras.backend.backend() != backend:
        raise SystemExit(f"Keras runs on {keras.backend.backend()!r}, not {backend!r}")
    extra: dict[str, Any] = {"import_seconds": time.perf_counter() - started}
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    started = time.perf_counter()
    backbone = keras_hub.models.BertBackbone(**convert_bert.convert_backbone_config(config))
    extra["build_seconds"] = time.perf_counter() - started
    if path == "keras_hub":

        def port() -> Any:
            with SafetensorLoader(str(directory)) as loader:
                convert_bert.convert_weights(backbone, loader, config)

    else:
        started = time.perf_counter()
        plan = mapper.make_plan(porting.PORT_RULES, directory, backbone)
        extra["plan_seconds"] = time.perf_counter() - started
        if not plan.ok:
            raise SystemExit(f"the port plan has {len(plan.errors)} errors: {plan.errors[0].message}")
        rollback = "verify" if path == "mapper_verify" else "off"

        def port() -> Any:
            return mapper.apply(plan, directory, backbone, rollback=rollback)

    figures, _ = measure(port)
    by_path = {weight.path: weight for weight in backbone.weights}
    wrong = porting.wrong_values(meta, lambda name: keras.ops.convert_to_numpy(by_path[name].value))
    loaded = sorted(
        name for name, module in sys.modules.items() if module is not None and name.startswith("tensorflow")
    )
    return {"backend": backend, "path": path, **figures, **extra, "wrong": wrong, "tensorflow": loaded}


def run_worker(backend: str, path: str, size: str) -> dict[str, Any]:
    """One measurement in a fresh process on ``backend``; its RESULT, or {"error": ...}."""
    command = [sys.executable, str(Path(__file__).resolve()), "measure", backend, path, "--size", size]
    environment = {**os.environ, "KERAS_BACKEND": backend}
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    for line in finished.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return result
    return {"backend": backend, "path": path, "error": f"exit code {finished.returncode}: {finished.stderr[-2000:]}"}


def run_rounds(rounds: int, size: str) -> list[dict[str, Any]]:
    """Every (backend, path) once per round, in an order that rotates from round to round; one process at a time."""
    pairs = [(backend, path) for backend in BACKENDS for path in PATHS]
    weights = porting.data_dir(size) / "model.safetensors"
    results: list[dict[str, Any]] = []
    for round_number in range(1, rounds + 1):
        shift = (round_number - 1) % len(pairs)
        for backend, path in pairs[shift:] + pairs[:shift]:
            porting.warm_page_cache(weights)
            result = run_worker(backend, path, size) | {"round": round_number}
            results.append(result)
            shown = (
                f"{result['seconds']:.3f} s, {result['extra_peak'] / MIB:.0f} MiB extra"
                + ("" if not result["wrong"] else f", WRONG {result['wrong']}")
                if "seconds" in result
                else "FAILED " + result["error"][-400:]
            )
            print(f"  [{len(results)}/{rounds * len(pairs)}] {backend} {path}: {shown}", flush=True)
    return results


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per backend and path: medians, and the ratio to keras-hub's converter on the same backend (also per round)."""
    summary: dict[str, dict[str, Any]] = {}
    for backend in BACKENDS:
        for path in PATHS:
            runs = [r for r in results if (r["backend"], r["path"]) == (backend, path) and "seconds" in r]
            entry: dict[str, Any] = {"label": PATH_LABELS[path], "runs": len(runs)}
            for figure in ("seconds", "cpu_seconds", "extra_peak", "build_seconds", "plan_seconds"):
                values = [r[figure] for r in runs if figure in r]
                if values:
                    entry[figure] = statistics.median(values)
            entry["wrong"] = sorted({name for r in runs for name in r["wrong"]})
            entry["tensorflow_loaded"] = sorted({name for r in runs for name in r["tensorflow"]})
            summary[f"{backend} {path}"] = entry
        reference = summary[f"{backend} keras_hub"].get("seconds")
        for path in PATHS[1:]:
            entry = summary[f"{backend} {path}"]
            if reference and "seconds" in entry:
                entry["ratio"] = entry["seconds"] / reference
                paired = [
                    mine["seconds"] / theirs["seconds"]
                    for mine in results
                    for theirs in results
                    if (mine["backend"], mine["path"], theirs["backend"], theirs["path"])
                    == (backend, path, backend, "keras_hub")
                    and mine["round"] == theirs["round"]
                    and "seconds" in mine
                    and "seconds" in theirs
                ]
                entry["paired_ratio"] = statistics.median(paired) if paired else None
    return summary


def render(summary: dict[str, dict[str, Any]], rounds: int, size: str) -> str:
    """The human-readable table."""
    header = (
        f"{'backend path':<22} {'wall s':>7} {'x keras-hub':>11} {'paired':>7} {'cpu s':>6} {'extra MiB':>9} {'ok':>3}"
    )
    lines = [f"\nBertModel safetensors ({size}) -> BertBackbone, median of {rounds} rounds", header, "-" * len(header)]
    for name, entry in summary.items():
        if "seconds" not in entry:
            lines.append(f"{name:<22} FAILED")
            continue
        ratio = f"{entry['ratio']:.2f}" if "ratio" in entry else ""
        paired = f"{entry['paired_ratio']:.2f}" if entry.get("paired_ratio") is not None else ""
        ok = "yes" if not entry["wrong"] and not entry["tensorflow_loaded"] else "NO"
        lines.append(
            f"{name:<22} {entry['seconds']:>7.3f} {ratio:>11} {paired:>7} {entry['cpu_seconds']:>6.2f} "
            f"{entry['extra_peak'] / MIB:>9.1f} {ok:>3}"
        )
    lines += ["", *(f"  {path}: {label}" for path, label in PATH_LABELS.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command")
    one = commands.add_parser("measure", help="one measurement in this process (prints a RESULT line)")
    one.add_argument("backend", choices=BACKENDS)
    one.add_argument("path", choices=PATHS)
    one.add_argument("--size", choices=porting.SIZES, default="base")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--size", choices=porting.SIZES, default="base", help="checkpoint size (dev: tiny)")
    parser.add_argument("--output", help="the results file (default benchmarks/porting-backends-results-<date>.json)")
    args = parser.parse_args(argv)
    if args.command == "measure":
        print("RESULT " + json.dumps(run_measurement(args.backend, args.path, args.size)))
        return 0
    if porting.load_meta(args.size) is None:
        subprocess.run([sys.executable, str(HERE / "porting.py"), "create", "--size", args.size], check=True)
    started = time.perf_counter()
    results = run_rounds(args.rounds, args.size)
    summary = summarise(results)
    print(render(summary, args.rounds, args.size))
    date = dt.date.today().isoformat()
    output = Path(args.output) if args.output else HERE / f"porting-backends-results-{date}.json"
    document = {
        "benchmark": "porting-backends",
        "date": date,
        "rounds": args.rounds,
        "seconds": time.perf_counter() - started,
        "host": porting.host() | {"load_average_after": os.getloadavg()},
        "checkpoint": porting.load_meta(args.size),
        "summary": summary,
        "results": results,
    }
    output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {output}")
    return 0 if all(not entry["wrong"] and entry["runs"] == args.rounds for entry in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
