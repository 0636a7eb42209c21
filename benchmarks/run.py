"""Loading-speed benchmarks: native TensorFlow restores against weight-mapper's executors, plus planning speed.

Run with ``make bench`` (or ``python benchmarks/run.py --help``). Prints a table and writes
``benchmarks/results-<date>.json``. Each restore is measured in a fresh process (benchmarks/worker.py);
see benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402  (benchmarks/ is not a package)
from worker import MAPPER_PATHS, NATIVE_PATHS, PATH_LABELS, PATHS  # noqa: E402

MIB = 2**20
GOALS = {"B": 0.35, "S": 0.15}  # our apply's wall time as a fraction of the native restore's (issue 10)
MEMORY_SLACK = 64 * MIB  # extra peak memory goal: 1.5 x the largest tensor + 64 MiB
PLANNING_GOAL_SECONDS = 0.5  # 100,000 names against 200 rules (issue 10)
FLATNESS = 1.25  # per-name planning time at 100k at most this many times that at 25k
STDERR_TAIL = 3000


# --- running workers ------------------------------------------------------------------------------------


class Worker:
    """One worker process: started, prepared (READY), then told to measure."""

    def __init__(self, model: str, path: str, *, profile: str | None = None) -> None:
        self.model, self.path = model, path
        command = [sys.executable, str(HERE / "worker.py"), "measure", model, path, "--wait"]
        if profile:
            command += ["--profile", profile]
        self.stderr: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115  (closed in finish())
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=environment,
        )
        self.error: str | None = None

    def ready(self) -> bool:
        """Wait until the worker has built its model and prepared its path."""
        line = self._line(("READY",))
        return line is not None

    def measure(self) -> dict[str, Any]:
        """Let the worker measure; returns its figures (or {"error": ...}) once it has exited."""
        if self.error is None:
            assert self.process.stdin is not None
            self.process.stdin.write("go\n")
            self.process.stdin.flush()
            line = self._line(("RESULT ",))
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT ")) if line else {}
        else:
            result = {}
        self.process.wait()
        if not result:
            result = {"model": self.model, "path": self.path, "error": self.error or self._stderr_tail()}
        self.stderr.close()
        return result

    def kill(self) -> None:
        """Stop the worker if it is still running (on Ctrl-C or SIGTERM of run.py)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _line(self, prefixes: tuple[str, ...]) -> str | None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(prefixes):
                return line.strip()
        self.process.wait()
        self.error = (
            f"worker exited with code {self.process.returncode} before {prefixes[0].strip()}:\n{self._stderr_tail()}"
        )
        return None

    def _stderr_tail(self) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        lines = [line for line in self.stderr.read().splitlines() if "cuda" not in line.lower()]
        return "\n".join(lines)[-STDERR_TAIL:]


def warm_page_cache(names: list[str]) -> None:
    """Read every data file once, so that no measurement pays for the disk."""
    for name in names:
        meta = models.load_meta(name)
        assert meta is not None
        for data in meta["data_files"]:
            with Path(data).open("rb") as handle:
                while handle.read(16 * MIB):
                    pass


def ensure_checkpoints(names: list[str]) -> dict[str, dict[str, Any]]:
    """Create missing cached checkpoints (each in its own process); return their metadata."""
    metas = {}
    for name in names:
        meta = models.load_meta(name)
        if meta is None:
            print(f"writing the {name} checkpoint to {models.model_dir(name)} (once per cache version) ...", flush=True)
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, str(HERE / "worker.py"), "create", name],
                check=True,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            )
            print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
            meta = models.load_meta(name)
            assert meta is not None
        metas[name] = meta
    return metas


def schedule(names: list[str], paths: list[str], rounds: int) -> list[list[tuple[str, str]]]:
    """Per round, every (model, path) once; the order rotates from round to round."""
    combos = [(name, path) for name in names for path in paths]
    return [combos[r % len(combos) :] + combos[: r % len(combos)] for r in range(rounds)]


def run_rounds(names: list[str], paths: list[str], rounds: int, setup: int) -> list[dict[str, Any]]:
    """Run every round; ``setup`` workers build their models at once, then measure one at a time."""
    results: list[dict[str, Any]] = []
    plan = schedule(names, paths, rounds)
    total = sum(len(jobs) for jobs in plan)
    done = 0
    for round_number, jobs in enumerate(plan, start=1):
        warm_page_cache(names)
        for start in range(0, len(jobs), setup):
            group = [Worker(name, path) for name, path in jobs[start : start + setup]]
            try:
                for worker in group:
                    worker.ready()
            except BaseException:
                for worker in group:
                    worker.kill()
                raise
            for index, worker in enumerate(group):
                try:
                    result = worker.measure()
                except BaseException:
                    for other in group[index:]:
                        other.kill()
                    raise
                result["round"] = round_number
                results.append(result)
                done += 1
                shown = (
                    f"{result['seconds']:.3f} s, {result['extra_peak'] / MIB:.0f} MiB extra"
                    if "seconds" in result
                    else "FAILED"
                )
                print(f"  [{done}/{total}] round {round_number}: {worker.model} {worker.path}: {shown}", flush=True)
    return results


# --- summarising -----------------------------------------------------------------------------------------

FIGURES = (
    "seconds",
    "cpu_seconds",
    "system_seconds",
    "minor_faults",
    "extra_peak",
    "rss_before",
    "rss_after",
    "load_before",
)


def summarise(results: list[dict[str, Any]], names: list[str], paths: list[str]) -> dict[str, dict[str, Any]]:
    """Medians (and min/max) per model and path, with ratios against native from the same run."""
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        summary[name] = {}
        for path in paths:
            runs = [r for r in results if r["model"] == name and r["path"] == path and "seconds" in r]
            failures = [r for r in results if r["model"] == name and r["path"] == path and "seconds" not in r]
            entry: dict[str, Any] = {"label": PATH_LABELS[path], "runs": len(runs), "failures": len(failures)}
            if failures:
                entry["first_failure"] = failures[0].get("error", "")[-STDERR_TAIL:]
            if runs:
                for figure in FIGURES:
                    values = [r[figure] for r in runs]
                    entry[figure] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
                entry["wrong_after_restore"] = max(r["wrong_after_restore"] for r in runs)
                if path in MAPPER_PATHS:
                    steps = runs[0]["plan_seconds"]
                    entry["plan_seconds"] = {
                        step: statistics.median(r["plan_seconds"][step] for r in runs) for step in steps
                    }
                    entry["assignments"] = runs[0]["assignments"]
                    entry["renamed"] = runs[0]["renamed"]
                    entry["batches"] = runs[0]["apply_result"]["batches"]
            summary[name][path] = entry
        native = summary[name].get("native", {})
        for entry in summary[name].values():
            for figure in ("seconds", "cpu_seconds"):
                if figure in entry and figure in native:
                    entry[f"{figure}_ratio"] = entry[figure]["median"] / native[figure]["median"]
    return summary


def paired_ratios(results: list[dict[str, Any]], name: str, path: str) -> list[float]:
    """Per round: this path's wall time over native's in the same round (robust to a host that slows down)."""
    by_round: dict[int, dict[str, float]] = {}
    for r in results:
        if r["model"] == name and "seconds" in r:
            by_round.setdefault(r["round"], {})[r["path"]] = r["seconds"]
    return [times[path] / times["native"] for times in by_round.values() if path in times and "native" in times]


def check_goals(
    summary: dict[str, dict[str, Any]], metas: dict[str, dict[str, Any]], planning: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Each goal of the issue with its limit, what was measured, and whether it was met."""
    goals: list[dict[str, Any]] = []
    for name, limit in GOALS.items():
        for path in ("mapper_assign", "mapper_assign_memory", "mapper_assign_norollback"):
            entry = summary.get(name, {}).get(path, {})
            if "seconds_ratio" in entry:
                goals.append(
                    {
                        "goal": f"{name}: {path} wall time <= {limit} x native",
                        "limit": limit,
                        "measured": round(entry["seconds_ratio"], 3),
                        "met": entry["seconds_ratio"] <= limit,
                    }
                )
        for path in ("mapper_assign", "mapper_assign_memory", "mapper_assign_norollback"):
            entry = summary.get(name, {}).get(path, {})
            if "extra_peak" in entry and name in metas:
                budget = 1.5 * metas[name]["largest_bytes"] + MEMORY_SLACK
                measured = entry["extra_peak"]["median"]
                goals.append(
                    {
                        "goal": f"{name}: {path} extra peak memory <= 1.5 x largest tensor + 64 MiB "
                        f"({budget / MIB:.0f} MiB)",
                        "limit": budget,
                        "measured": measured,
                        "met": measured <= budget,
                    }
                )
    if planning:
        sizes = {size["names"]: size for size in planning["sizes"]}
        if 100_000 in sizes:
            seconds = sizes[100_000]["seconds_median"]
            goals.append(
                {
                    "goal": f"planning: 100,000 names against 200 rules in under {PLANNING_GOAL_SECONDS} s (wall)",
                    "limit": PLANNING_GOAL_SECONDS,
                    "measured": round(seconds, 3),
                    "met": seconds < PLANNING_GOAL_SECONDS,
                }
            )
        if 25_000 in sizes and 100_000 in sizes:
            best = "cpu_microseconds_per_name_best"
            growth = sizes[100_000][best] / sizes[25_000][best]
            goals.append(
                {
                    "goal": f"planning: linear (best CPU time per name at 100k <= {FLATNESS} x that at 25k)",
                    "limit": FLATNESS,
                    "measured": round(growth, 3),
                    "met": growth <= FLATNESS,
                }
            )
    return goals


# --- the table --------------------------------------------------------------------------------------------


def render(
    summary: dict[str, dict[str, Any]],
    metas: dict[str, dict[str, Any]],
    results: list[dict[str, Any]],
    planning: dict[str, Any] | None,
    goals: list[dict[str, Any]],
    rounds: int,
) -> str:
    """The human-readable report."""
    lines: list[str] = []
    for name, paths in summary.items():
        meta = metas[name]
        lines.append(
            f"\nModel {name}: {meta['variables']:,} variables, {meta['total_bytes'] / MIB:.1f} MiB, largest tensor "
            f"{meta['largest_bytes'] / MIB:.2f} MiB ({meta['largest_name']}); median of {rounds} rounds, each a fresh process"
        )
        header = (
            f"{'path':<28} {'wall s':>7} {'x native':>8} {'paired':>7} {'cpu s':>7} {'x native':>8} {'sys s':>6} "
            f"{'minor faults':>12} {'extra peak MiB':>14} {'plan s':>7} {'ok':>3}"
        )
        lines += [header, "-" * len(header)]
        for path, entry in paths.items():
            if "seconds" not in entry:
                lines.append(f"{path:<28} FAILED ({entry['failures']} runs): {entry.get('first_failure', '')[:300]}")
                continue
            paired = paired_ratios(results, name, path)
            plan = entry.get("plan_seconds", {}).get("total")
            lines.append(
                f"{path:<28} {entry['seconds']['median']:>7.3f} {entry['seconds_ratio']:>8.2f} "
                f"{statistics.median(paired) if paired else float('nan'):>7.2f} "
                f"{entry['cpu_seconds']['median']:>7.3f} {entry['cpu_seconds_ratio']:>8.2f} "
                f"{entry['system_seconds']['median']:>6.3f} "
                f"{entry['minor_faults']['median']:>12,.0f} {entry['extra_peak']['median'] / MIB:>14.1f} "
                f"{'' if plan is None else f'{plan:.3f}':>7} {'yes' if entry['wrong_after_restore'] == 0 else 'NO':>3}"
            )
        loads = [entry["load_before"]["median"] for entry in paths.values() if "load_before" in entry]
        if loads:
            lines.append(f"(host load average during these runs, median per path: {min(loads):.1f}-{max(loads):.1f})")
        for path in MAPPER_PATHS:
            steps = paths.get(path, {}).get("plan_seconds")
            if steps:
                shown = ", ".join(f"{step} {seconds * 1000:.1f} ms" for step, seconds in steps.items())
                lines.append(f"planning before {path}: {shown}")
                break
    if planning:
        lines.append(
            f"\nPlanning: build_plan against {planning['rules']} rules (parse_rules: "
            f"{planning['parse_rules_seconds_median'] * 1000:.1f} ms); median of {planning['repeats']} repeats, "
            "and the best CPU time per name"
        )
        header = (
            f"{'names':>8} {'wall s':>8} {'us/name':>8} {'cpu s':>8} {'cpu us/name':>11} {'best':>6} "
            f"{'assigned':>9} {'skipped':>8}"
        )
        lines += [header, "-" * len(header)]
        for size in planning["sizes"]:
            lines.append(
                f"{size['names']:>8,} {size['seconds_median']:>8.3f} {size['microseconds_per_name']:>8.1f} "
                f"{size['cpu_seconds_median']:>8.3f} {size['cpu_microseconds_per_name']:>11.1f} "
                f"{size['cpu_microseconds_per_name_best']:>6.1f} "
                f"{size['assignments']:>9,} {size['skips']:>8,}"
            )
    lines.append("\nGoals")
    for goal in goals:
        measured = goal["measured"]
        shown = f"{measured / MIB:.1f} MiB" if "peak memory" in goal["goal"] else f"{measured}"
        lines.append(f"  [{'met ' if goal['met'] else 'MISS'}] {goal['goal']}: measured {shown}")
    return "\n".join(lines)


def host_info() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["memory_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE), "status", "--porcelain", "--", "mapper"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["git_commit"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each runs every path on every model once")
    parser.add_argument("--models", nargs="+", choices=models.MODELS, default=list(models.MODELS))
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument(
        "--setup",
        type=int,
        default=2,
        help="workers that import TensorFlow and build their model at the same time (measuring is always one at a time)",
    )
    parser.add_argument("--no-planning", action="store_true", help="skip the planning benchmark")
    parser.add_argument("--planning-only", action="store_true", help="run only the planning benchmark")
    parser.add_argument("--output", type=Path, help="JSON output (default: benchmarks/results-<date>.json)")
    args = parser.parse_args(argv)
    if "native" not in args.paths:
        parser.error("--paths must include native: every ratio is taken against it")

    # SIGTERM unwinds like Ctrl-C, so that the workers started so far are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"{Path(__file__).name}: terminated"))
    started = time.perf_counter()
    started_at = dt.datetime.now().astimezone()
    host = host_info()
    metas: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    summary: dict[str, dict[str, Any]] = {}
    if not args.planning_only:
        metas = ensure_checkpoints(args.models)
        total = args.rounds * len(args.models) * len(args.paths)
        print(
            f"{total} measurements: {args.rounds} rounds x {len(args.models)} models x {len(args.paths)} paths",
            flush=True,
        )
        results = run_rounds(args.models, args.paths, args.rounds, max(1, args.setup))
        summary = summarise(results, args.models, args.paths)
    planning = None
    if not args.no_planning:
        import planning as planning_benchmark

        print("planning benchmark ...", flush=True)
        planning = planning_benchmark.run()
    goals = check_goals(summary, metas, planning)
    print(render(summary, metas, results, planning, goals, args.rounds))
    duration = time.perf_counter() - started
    print(f"\ntotal time {duration / 60:.1f} min")

    versions = next((r["versions"] for r in results if "versions" in r), {})
    output = args.output or HERE / f"results-{started_at.date().isoformat()}.json"
    document = {
        "started": started_at.isoformat(timespec="seconds"),
        "duration_seconds": round(duration, 1),
        "host": {**host, "load_average_at_end": os.getloadavg()},
        "versions": versions,
        "config": {
            "rounds": args.rounds,
            "models": args.models,
            "paths": args.paths,
            "setup_parallel": args.setup,
            "native_paths": [path for path in args.paths if path in NATIVE_PATHS],
        },
        "models": {
            name: {key: value for key, value in meta.items() if key not in ("keys", "fingerprints")}
            for name, meta in metas.items()
        },
        "restore": summary,
        "paired_wall_ratios": {
            name: {path: paired_ratios(results, name, path) for path in args.paths} for name in summary
        },
        "goals": goals,
        "planning": planning,
        "runs": results,
    }
    output.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
