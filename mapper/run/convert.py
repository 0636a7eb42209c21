"""Carrying out a conversion plan: read a batch, transform it, write it to the new file, release it; all or nothing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mapper.errors import ApplyError, OutputError, PlanError
from mapper.interrupts import sigterm_raises
from mapper.outputs.base import TensorWriter
from mapper.outputs.files import OutputFormat, check_not_a_source, check_output, output_files, output_format
from mapper.outputs.writers import open_writer
from mapper.plan.model import Plan
from mapper.run.batches import DEFAULT_BATCH_BYTES, Sources, ValueStream
from mapper.run.transfer import Transfer
from mapper.specs import TensorSpec
from mapper.text import first_line


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion wrote.

    ``written`` counts tensors in the output, ``bytes_read`` source bytes (each source tensor once),
    ``bytes_written`` the tensors' bytes in the output.

    Example:
        >>> from mapper.plan import Plan
        >>> plan = Plan(rule_files=("r.toml",), source="s", target="t", namespace="path")
        >>> result = ConvertResult(plan, "out.safetensors", "safetensors", 2, 48, 48, 1, 0.01)
        >>> result.written, result.format
        (2, 'safetensors')
    """

    plan: Plan
    output: str
    format: OutputFormat
    written: int
    bytes_read: int
    bytes_written: int
    batches: int
    seconds: float


def write_plan(
    plan: Plan,
    source: Sources,
    output: str | os.PathLike[str],
    *,
    format: str | None = None,
    overwrite: bool = False,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> ConvertResult:
    """Carry out a plan into a new file: read a batch, transform it, write it, release it; all or nothing.

    Every tensor gets the name its assignment's ``target_key`` gives it. Everything checkable is checked before
    any file is created: the output (its directory exists; it is not there yet unless ``overwrite``; it is not
    one of the source's files), the plan (no errors, consistent), the sources (every tensor there, as planned)
    and the output format (it can hold the names and dtypes). The output is written under a temporary name
    in its directory and moved into place only when complete; if anything fails, the temporary files are
    removed and an existing output is left as it was. The source is only read.

    Args:
        plan: a plan without errors, from ``plan_conversion`` (or ``build_plan`` for a model's target).
        source: the Source the plan was made from, or ``{name: Source}`` for named sources.
        output: the output file, or a TF checkpoint prefix.
        format: ``"tf-checkpoint"``, ``"safetensors"`` or ``"keras-h5"``; None to go by the output's suffix.
        overwrite: replace an existing output.
        batch_bytes: upper bound on the source bytes read at once. Into a TF checkpoint or safetensors from a
            safetensors file or a TF checkpoint, a tensor without operations is copied through a 128 KiB buffer
            and one with operations is staged whole in reused buffers, so memory stays near twice the largest
            transformed tensor whatever the batch; other sources and writers hold a batch at a time. No
            TensorFlow is needed, except for a TF checkpoint holding strings (saved with ``SaveV2``) or a source
            that reads with it.
        progress: called as ``progress(done, total)`` with counts of tensors after each batch.

    Returns:
        A ConvertResult.

    Raises:
        TargetError: the output's format cannot hold a name or dtype.
        OutputError: the output is refused (it exists, its directory is missing or read-only, it does not fit the
            free space or the file size limit), or writing it failed part-way (a full disk): the message names
            the output and the cause; nothing was left at the output.
        PlanError: the plan has errors, writes nothing, or is inconsistent.
        SourceError: a planned source tensor is missing or has another shape or dtype.
        ApplyError: reading, transforming or writing failed part-way (the cause is chained); nothing was left
            at the output.
        Terminated: SIGTERM arrived while writing (a SystemExit with code 143); the temporary files were removed.

    Example:
        >>> import tempfile, numpy as np
        >>> from mapper.rules import parse_rules
        >>> from mapper.sources.memory import MemorySource
        >>> from mapper.plan.conversion import plan_conversion
        >>> from mapper.sources.safetensors import SafetensorsSource
        >>> source = MemorySource({"old/w": np.arange(6, dtype="float32").reshape(2, 3)})
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "old/w"\\ntarget = "new/w"\\nops = [{ transpose = [1, 0] }]')
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     result = write_plan(plan_conversion(rules, source), source, f"{tmp}/out.safetensors")
        ...     print(result.written, SafetensorsSource(f"{tmp}/out.safetensors").read(["new/w"])["new/w"].tolist())
        1 [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    """
    started = time.perf_counter()
    path = Path(output)
    chosen = output_format(path, format)
    check_output(path, chosen, overwrite=overwrite)
    stream = ValueStream(plan, source, batch_bytes=batch_bytes)
    if not plan.assignments:
        raise PlanError(
            f"the plan from {plan.source} writes no tensor, so there is nothing to convert: every source tensor "
            "was skipped or matched no rule; check the rule file (see the plan report)",
            problems=(),
            plan=plan,
        )
    check_not_a_source(path, chosen, stream.sources.values())
    specs = [TensorSpec(a.target_key, a.target_shape, a.target_dtype) for a in plan.assignments]
    existed = bool(output_files(path, chosen))
    with sigterm_raises():
        writer = open_writer(path, specs, format=chosen, overwrite=overwrite)
        bytes_read = _write_batches(plan, stream, writer, path=path, existed=existed, progress=progress)
    return ConvertResult(
        plan,
        str(path),
        chosen,
        len(plan.assignments),
        bytes_read,
        writer.bytes_written,
        len(stream.batches),
        time.perf_counter() - started,
    )


def _write_batches(
    plan: Plan,
    stream: ValueStream,
    writer: TensorWriter,
    *,
    path: Path,
    existed: bool,
    progress: Callable[[int, int], None] | None,
) -> int:
    """Write every batch of ``stream`` and commit; abort on any failure (SIGTERM too). Returns the bytes read."""
    total = len(plan.assignments)
    done = bytes_read = 0
    phase: str | None = None  # what is being done outside the transfer; None while it reads, transforms or writes
    left = f"{path} keeps its previous contents" if existed else f"{path} was not created"
    transfer = Transfer(stream, writer)
    try:
        for number, batch in enumerate(stream.batches, 1):
            transfer.write_batch(number, batch)
            phase = f"writing batch {number} of {len(stream.batches)} to {path}"
            writer.end_batch()
            done += len(batch.assignments)
            bytes_read += batch.nbytes
            if progress is not None:
                phase = f"reporting progress after batch {number} of {len(stream.batches)}"
                progress(done, total)
            phase = None
        phase = f"finishing {path}"
        writer.commit()
    except OutputError as error:  # the output's own fault (a full disk, a read-only directory): named as such
        writer.abort()
        raise OutputError(
            f"converting {plan.source} to {path} failed while {phase or transfer.step}: {error}\nnothing was "
            f"written: {left}, and the temporary files were removed",
            path=path,
            errno=error.errno,
        ) from error
    except Exception as error:
        writer.abort()
        raise ApplyError(
            f"converting {plan.source} to {path} failed while {phase or transfer.step}: {type(error).__name__}: "
            f"{first_line(error)}\nnothing was written: {left}, and the temporary files were removed; fix the cause "
            "and convert again"
        ) from error
    except BaseException:  # KeyboardInterrupt, Terminated (SIGTERM): clean up, then let it stop the program
        writer.abort()
        raise
    return bytes_read


__all__ = ["ConvertResult", "write_plan"]
