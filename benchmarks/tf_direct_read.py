"""Reading every tensor of a BERT-base-sized TF checkpoint: direct reads against RestoreV2 and get_tensor.

``python benchmarks/tf_direct_read.py [--directory /tmp/tf-direct-bench]`` writes (once) a TF1-style checkpoint
of BERT-base's 199 float32 tensors (110M parameters, 418 MiB) with random values, reads its files once so that
every path starts from the page cache, then measures each path in a fresh process and prints a table (wall time,
CPU time, peak RSS above the RSS before the read). The figures are for a report, not a test: run it on a quiet
machine, once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the mapper of this checkout, not an installed one

MIB = 2**20
BATCH_BYTES, BATCH_TENSORS = 64 * MIB, 64  # the batches the executor and the chunked reference read
PATHS = {
    "direct": "TFCheckpointSource.read per 64 MiB/64 tensors (positional reads + crc32c; TensorFlow not imported)",
    "restore_v2_chunked": "tf.raw_ops.RestoreV2 per 64 MiB/64 tensors, on the CPU",
    "get_tensor": "tf.train.load_checkpoint(p).get_tensor(name) for each tensor",
}


def bert_shapes() -> dict[str, tuple[int, ...]]:
    """The float32 tensors of Google's BERT-base checkpoint, by their TF1 names (110M parameters)."""
    hidden, inner = 768, 3072
    shapes: dict[str, tuple[int, ...]] = {
        "bert/embeddings/word_embeddings": (30522, hidden),
        "bert/embeddings/position_embeddings": (512, hidden),
        "bert/embeddings/token_type_embeddings": (2, hidden),
        "bert/embeddings/LayerNorm/gamma": (hidden,),
        "bert/embeddings/LayerNorm/beta": (hidden,),
        "bert/pooler/dense/kernel": (hidden, hidden),
        "bert/pooler/dense/bias": (hidden,),
    }
    for layer in range(12):
        base = f"bert/encoder/layer_{layer}"
        for dense, shape in (
            ("attention/self/query", (hidden, hidden)),
            ("attention/self/key", (hidden, hidden)),
            ("attention/self/value", (hidden, hidden)),
            ("attention/output/dense", (hidden, hidden)),
            ("intermediate/dense", (hidden, inner)),
            ("output/dense", (inner, hidden)),
        ):
            shapes[f"{base}/{dense}/kernel"] = shape
            shapes[f"{base}/{dense}/bias"] = (shape[1],)
        for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
            shapes[f"{base}/{norm}/gamma"] = (hidden,)
            shapes[f"{base}/{norm}/beta"] = (hidden,)
    return shapes


def write_checkpoint(directory: Path) -> str:
    """The benchmark checkpoint's prefix, written with one SaveV2 if it is not there yet."""
    prefix = str(directory / "bert_base.ckpt")
    if Path(prefix + ".index").is_file():
        return prefix
    import numpy as np
    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261203)
    names = sorted(bert_shapes())
    tensors = [tf.constant(rng.standard_normal(bert_shapes()[name], dtype=np.float32)) for name in names]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    return prefix


def batches(sizes: dict[str, int]) -> Iterator[list[str]]:
    """Names in order, cut into batches of at most BATCH_BYTES (or one larger tensor) and BATCH_TENSORS."""
    batch: list[str] = []
    total = 0
    for name, nbytes in sizes.items():
        if batch and (total + nbytes > BATCH_BYTES or len(batch) == BATCH_TENSORS):
            yield batch
            batch, total = [], 0
        batch.append(name)
        total += nbytes
    if batch:
        yield batch


# --- the paths, each run in its own process -------------------------------------------------------------------


def _direct(prefix: str) -> Callable[[], int]:
    from mapper.sources.tf_checkpoint import TFCheckpointSource

    def run() -> int:
        source = TFCheckpointSource(prefix)
        read = 0
        for batch in batches({name: spec.nbytes for name, spec in source.specs().items()}):
            values = source.read(batch)
            read += sum(value.nbytes for value in values.values())
            del values
        return read

    return run


def _restore_v2_chunked(prefix: str) -> Callable[[], int]:
    import tensorflow as tf

    def run() -> int:
        reader = tf.train.load_checkpoint(prefix)
        shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
        sizes = {name: dtypes[name].size * max(1, int(_product(shapes[name]))) for name in sorted(shapes)}
        read = 0
        for batch in batches(sizes):
            with tf.device("/cpu:0"):
                tensors = tf.raw_ops.RestoreV2(
                    prefix=prefix,
                    tensor_names=batch,
                    shape_and_slices=[""] * len(batch),
                    dtypes=[dtypes[name] for name in batch],
                )
            read += sum(int(tf.size(tensor)) * tensor.dtype.size for tensor in tensors)
            del tensors
        return read

    return run


def _get_tensor(prefix: str) -> Callable[[], int]:
    import tensorflow as tf

    def run() -> int:
        reader = tf.train.load_checkpoint(prefix)
        read = 0
        for name in sorted(reader.get_variable_to_shape_map()):
            read += reader.get_tensor(name).nbytes
        return read

    return run


def _product(shape: list[int]) -> int:
    result = 1
    for dim in shape:
        result *= dim
    return result


def measure_path(path: str, prefix: str) -> dict[str, Any]:
    """One path measured in this process: wall and CPU seconds, peak RSS above the RSS before, bytes read."""
    from worker import PeakMemory

    run = {"direct": _direct, "restore_v2_chunked": _restore_v2_chunked, "get_tensor": _get_tensor}[path](prefix)
    memory = PeakMemory()
    before = memory.start()
    cpu = time.process_time()
    started = time.perf_counter()
    read = run()
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu
    peak = memory.stop()
    return {
        "path": path,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "rss_before_mib": before / MIB,
        "extra_peak_mib": (peak - before) / MIB,
        "bytes_read": read,
        "tensorflow_imported": "tensorflow" in sys.modules,
        "memory_method": memory.method,
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directory", type=Path, default=Path("/tmp/tf-direct-bench"))
    parser.add_argument("--worker", choices=sorted(PATHS), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    prefix = str(arguments.directory / "bert_base.ckpt")
    if arguments.worker:
        print("RESULT " + json.dumps(measure_path(arguments.worker, prefix)))
        return
    prefix = write_checkpoint(arguments.directory)  # in this process only if it is missing (imports TensorFlow)
    for file in sorted(arguments.directory.glob("bert_base.ckpt.*")):
        file.read_bytes()  # into the page cache: every path then reads the same warm files
    results = []
    for path in PATHS:
        command = [sys.executable, __file__, "--directory", str(arguments.directory), "--worker", path]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:]))
    total = results[0]["bytes_read"]
    print(
        f"{len(bert_shapes())} float32 tensors, {total / MIB:.0f} MiB, read from the page cache; load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'path':<20} {'wall s':>7} {'cpu s':>7} {'GB/s':>6} {'extra peak MiB':>15} {'TF':>4}  what")
    for result in results:
        print(
            f"{result['path']:<20} {result['seconds']:>7.3f} {result['cpu_seconds']:>7.3f} "
            f"{result['bytes_read'] / result['seconds'] / 1e9:>6.2f} {result['extra_peak_mib']:>15.0f} "
            f"{'yes' if result['tensorflow_imported'] else 'no':>4}  {PATHS[result['path']]}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
