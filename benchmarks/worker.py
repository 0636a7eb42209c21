"""One measurement in a fresh process: ``worker.py measure MODEL PATH`` prints a RESULT line of JSON.

Also ``worker.py create MODEL`` (write the cached checkpoint). run.py starts one worker per measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import models

NATIVE_PATHS = ("native", "tf_init_from_checkpoint", "tf_chunked_restore")
MAPPER_PATHS = ("mapper_assign", "mapper_assign_memory", "mapper_assign_norollback", "mapper_init_from_checkpoint")
# The executor's all-or-nothing mode for each apply path: "verify" is the default.
ROLLBACKS = {"mapper_assign": "verify", "mapper_assign_memory": "memory", "mapper_assign_norollback": "off"}
PATHS = NATIVE_PATHS + MAPPER_PATHS
PATH_LABELS = {
    "native": "tf.train.Checkpoint(model=m).read(p).assert_consumed()",
    "tf_init_from_checkpoint": "tf.compat.v1.train.init_from_checkpoint(p, {key: v.value})",
    "tf_chunked_restore": "reference: RestoreV2 per 64 MiB/64 tensors + AssignVariableOp, bare TF",
    "mapper_assign": 'apply_plan(method="assign"), rollback="verify" (the default)',
    "mapper_assign_memory": 'apply_plan(method="assign", rollback="memory")',
    "mapper_assign_norollback": 'apply_plan(method="assign", rollback="off")',
    "mapper_init_from_checkpoint": 'apply_plan(method="init_from_checkpoint")',
}
KIB = 1024


# --- memory -----------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with Path("/proc/self/status").open() as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakMemory:
    """Peak RSS over a region of code.

    On Linux the kernel's own high-water mark is reset first (``echo 5 > /proc/self/clear_refs``) and read
    back as ``VmHWM``: exact, and nothing runs beside the code measured. Where that is not allowed, a
    thread samples RSS every 5 ms instead (it can miss short peaks and takes the GIL now and then).
    """

    def __init__(self) -> None:
        self.method = "VmHWM after clear_refs"
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.method = "RSS sampled every 5 ms"
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Reset the high-water mark; returns RSS (bytes) just before the region."""
        gc.collect()
        before = _status_kib("VmRSS") * KIB
        if self.method.startswith("VmHWM"):
            Path("/proc/self/clear_refs").write_text("5")
        else:
            self._peak = before
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return before

    def stop(self) -> int:
        """Peak RSS (bytes) since start()."""
        if self.method.startswith("VmHWM"):
            return _status_kib("VmHWM") * KIB
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return max(self._peak, _status_kib("VmRSS") * KIB)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _status_kib("VmRSS") * KIB)


def measure(action: Callable[[], Any], *, profile: str | None = None) -> tuple[dict[str, Any], Any]:
    """Run ``action`` once; wall and CPU time, page faults, RSS before/peak/after. Returns (figures, result)."""
    memory = PeakMemory()
    load_before = os.getloadavg()[0]
    rss_before = memory.start()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    rss_peak = memory.stop()
    gc.collect()
    rss_after = _status_kib("VmRSS") * KIB
    if profiler is not None and profile:
        profiler.dump_stats(profile)
    figures = {
        "seconds": seconds,
        "cpu_seconds": (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime),
        "system_seconds": usage_after.ru_stime - usage_before.ru_stime,
        "minor_faults": usage_after.ru_minflt - usage_before.ru_minflt,
        "major_faults": usage_after.ru_majflt - usage_before.ru_majflt,
        "rss_before": rss_before,
        "rss_peak": rss_peak,
        "rss_after": rss_after,
        "extra_peak": max(0, rss_peak - rss_before),
        "memory_method": memory.method,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    return figures, result


# --- the restore paths ----------------------------------------------------------------------------------


def _native(model: Any, meta: dict[str, Any]) -> Callable[[], Any]:
    import tensorflow as tf

    def restore() -> Any:
        return tf.train.Checkpoint(model=model).read(meta["prefix"]).assert_consumed()

    return restore


def _tf_init_from_checkpoint(model: Any, meta: dict[str, Any]) -> Callable[[], Any]:
    import tensorflow as tf

    # Built before timing, like our plan: the checkpoint key of each weight, to the tf.Variable behind it.
    assignment_map = {key: variable.value for key, variable in zip(meta["keys"], model.weights, strict=True)}

    def restore() -> Any:
        tf.compat.v1.train.init_from_checkpoint(meta["prefix"], assignment_map)

    return restore


def _tf_chunked_restore(model: Any, meta: dict[str, Any]) -> Callable[[], Any]:
    """What our assign executor does, in bare TensorFlow: the floor for any executor built on RestoreV2."""
    import tensorflow as tf

    limit, most = 64 * 2**20, 64  # the executor's DEFAULT_BATCH_BYTES and MAX_BATCH_TENSORS
    variables = [weight.value for weight in model.weights]
    batches: list[list[int]] = [[]]
    total = 0
    for index, variable in enumerate(variables):
        nbytes = variable.shape.num_elements() * variable.dtype.size
        if batches[-1] and (total + nbytes > limit or len(batches[-1]) >= most):
            batches.append([])
            total = 0
        batches[-1].append(index)
        total += nbytes
    prepared = [
        (
            [meta["keys"][index] for index in batch],
            [variables[index].dtype for index in batch],
            [variables[index].handle for index in batch],
        )
        for batch in batches
    ]

    def restore() -> Any:
        assign, read = tf.raw_ops.AssignVariableOp, tf.raw_ops.RestoreV2
        for names, dtypes, handles in prepared:
            with tf.device("/cpu:0"):
                tensors = read(
                    prefix=meta["prefix"], tensor_names=names, shape_and_slices=[""] * len(names), dtypes=dtypes
                )
            for handle, tensor in zip(handles, tensors, strict=True):
                assign(resource=handle, value=tensor)
            del tensors, tensor
        return len(prepared)

    return restore


def _mapper(model: Any, meta: dict[str, Any], path: str, extra: dict[str, Any]) -> Callable[[], Any]:
    """Plan (timed step by step, outside the restore) and return the apply call."""
    from mapper.plan.planner import build_plan
    from mapper.rules import parse_rules
    from mapper.run.executor import apply_plan
    from mapper.sources.tf_checkpoint import TFCheckpointSource
    from mapper.targets.variables import target_from

    steps: dict[str, float] = {}
    # A full collection now, so that none lands in a planning step by chance: with S's 5,000 Keras variables
    # alive (about 360k tracked objects) one takes about 0.33 s, and building the model leaves one due.
    gc.collect()
    started = time.perf_counter()
    source = TFCheckpointSource(meta["prefix"])
    specs = source.specs()
    steps["open_source_and_specs"] = time.perf_counter() - started
    started = time.perf_counter()
    target = target_from(model, checkpoint_root="net")
    steps["target_from"] = time.perf_counter() - started
    started = time.perf_counter()
    rules = parse_rules(
        models.renaming_rules(meta["model"], skip_object_graph="_CHECKPOINTABLE_OBJECT_GRAPH" in specs),
        file=f"bench-{meta['model']}.toml",
    )
    steps["parse_rules"] = time.perf_counter() - started
    started = time.perf_counter()
    plan = build_plan(rules, specs, target.map)
    steps["build_plan"] = time.perf_counter() - started
    steps["total"] = sum(steps.values())
    if not plan.ok:
        shown = "; ".join(problem.message for problem in plan.errors[:5])
        raise SystemExit(f"the benchmark plan for {meta['model']} has {len(plan.errors)} errors: {shown}")
    renamed = sum(1 for assignment in plan.assignments if assignment.source != assignment.target_key)
    extra.update(
        plan_seconds=steps,
        assignments=len(plan.assignments),
        renamed=renamed,
        source_tensors=len(specs),
        target_variables=len(target.map.variables),
    )
    method = "init_from_checkpoint" if path == "mapper_init_from_checkpoint" else "assign"
    rollback = ROLLBACKS.get(path, "verify")

    options: dict[str, Any] = {}
    if os.environ.get("WEIGHT_MAPPER_BENCH_BATCH_BYTES"):  # an experiment knob; run.py never sets it
        options["batch_bytes"] = int(os.environ["WEIGHT_MAPPER_BENCH_BATCH_BYTES"])
    extra["apply_options"] = options

    def restore() -> Any:
        return apply_plan(plan, source, target, method=method, rollback=rollback, **options)

    return restore


def verify(model: Any, meta: dict[str, Any]) -> int:
    """How many weights do not hold the checkpoint's values (compared at their first and last elements)."""
    wrong = 0
    for variable, expected in zip(model.weights, meta["fingerprints"], strict=True):
        if models.fingerprint(variable.numpy()) != expected:
            wrong += 1
    return wrong


def run_measurement(name: str, path: str, profile: str | None, *, wait: bool = False) -> dict[str, Any]:
    """Build the model, prepare the path, then time the restore alone.

    With ``wait``, print ``READY`` once prepared and block until a line arrives on stdin: run.py prepares
    a few workers at once (building models is the slow part) and then lets them measure one at a time.
    """
    meta = models.load_meta(name)
    if meta is None:
        raise SystemExit(f"no cached checkpoint for {name}; run `worker.py create {name}` first")
    started = time.perf_counter()
    import keras
    import tensorflow as tf

    import_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model = models.build_model(name)
    build_seconds = time.perf_counter() - started
    if path in MAPPER_PATHS:  # imported now, so that planning times below do not include imports
        import mapper.plan.planner
        import mapper.run.executor
        import mapper.sources.tf_checkpoint
        import mapper.targets.variables  # noqa: F401
    if wait:
        print("READY", flush=True)
        if not sys.stdin.readline():
            raise SystemExit("stdin closed before the go signal; not measuring")
    # Planning runs after the go signal: no other worker is building a model while it is timed.
    extra: dict[str, Any] = {}
    if path == "native":
        restore = _native(model, meta)
    elif path == "tf_init_from_checkpoint":
        restore = _tf_init_from_checkpoint(model, meta)
    elif path == "tf_chunked_restore":
        restore = _tf_chunked_restore(model, meta)
    elif path in MAPPER_PATHS:
        restore = _mapper(model, meta, path, extra)
    else:
        raise SystemExit(f"unknown path {path!r}; choose one of {', '.join(PATHS)}")
    figures, result = measure(restore, profile=profile)
    if path in MAPPER_PATHS:
        extra["apply_result"] = {
            "assigned": result.assigned,
            "bytes_read": result.bytes_read,
            "batches": result.batches,
            "seconds": result.seconds,
        }
    return {
        "model": name,
        "path": path,
        **figures,
        **extra,
        "wrong_after_restore": verify(model, meta),
        "import_seconds": import_seconds,
        "build_seconds": build_seconds,
        "pid": os.getpid(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="write the cached checkpoint of a model")
    create.add_argument("model", choices=models.MODELS)
    run = commands.add_parser("measure", help="time one restore path on one model")
    run.add_argument("model", choices=models.MODELS)
    run.add_argument("path", choices=PATHS)
    run.add_argument("--profile", help="write cProfile stats of the restore to this file")
    run.add_argument("--wait", action="store_true", help="print READY when prepared, measure after a line on stdin")
    args = parser.parse_args(argv)
    if args.command == "create":
        meta = models.create_checkpoint(args.model)
        summary = {key: value for key, value in meta.items() if key not in ("keys", "fingerprints")}
        print("RESULT " + json.dumps(summary))
        return 0
    print("RESULT " + json.dumps(run_measurement(args.model, args.path, args.profile, wait=args.wait)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
