"""The round-trip proof of a rule file: export(import(checkpoint)) is the checkpoint, import(export(model)) the model.

Both directions are compared bit for bit (shape, dtype and bytes): every source tensor the rules do not skip must
come back as it was read, and every variable the export writes must come back as it was before the export. A tensor
the rule file restores in part from the checkpoint (``[[export.restore]]``) is compared whole; only the block the
model holds is proven by the export, the rest is the checkpoint's own. A skipped tensor it restores whole is compared
too (it is the checkpoint's, copied), and is not counted as dropped.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mapper.plan.inverse import Left
from mapper.sources import SourceLike
from mapper.text import plural, quoted


@dataclass(frozen=True)
class RoundTrip:
    """What a round trip compared, and every name that did not come back bit-identical.

    Example:
        >>> trip = RoundTrip(checkpoint_tensors=3, model_variables=3)
        >>> trip.ok, trip.summary()
        (True, 'round trip: 3 checkpoint tensors and 3 model variables came back bit-identical (0 dropped)')
    """

    checkpoint_tensors: int  # source tensors compared: export(import(checkpoint)) against the checkpoint
    model_variables: int  # variables compared: import(export(model)) against the model
    checkpoint_differences: tuple[str, ...] = ()
    model_differences: tuple[str, ...] = ()
    dropped: tuple[Left, ...] = ()  # source tensors the rules skip, which an export does not write
    restored: tuple[str, ...] = ()  # source tensors an export writes in part or whole from the checkpoint
    # ([[export.restore]])

    @property
    def ok(self) -> bool:
        """Whether both directions came back bit-identical."""
        return not self.checkpoint_differences and not self.model_differences

    def summary(self) -> str:
        """One line for each direction that differs, or one line saying both came back."""
        if self.ok:
            restored = f", {len(self.restored)} restored from the checkpoint" if self.restored else ""
            return (
                f"round trip: {plural(self.checkpoint_tensors, 'checkpoint tensor')} and "
                f"{plural(self.model_variables, 'model variable')} came back bit-identical ({len(self.dropped)} dropped"
                f"{restored})"
            )
        lines = []
        if self.checkpoint_differences:
            lines.append(
                f"export(import(checkpoint)) differs from the checkpoint in {len(self.checkpoint_differences)} of "
                f"{self.checkpoint_tensors} tensors: {quoted(self.checkpoint_differences)}"
            )
        if self.model_differences:
            lines.append(
                f"import(export(model)) differs from the model in {len(self.model_differences)} of "
                f"{self.model_variables} variables: {quoted(self.model_differences)}"
            )
        return "\n".join(lines)


def same(a: Any, b: Any) -> bool:
    """Whether two arrays have one shape, one dtype and the same bytes.

    Example:
        >>> same(np.zeros(2, "float32"), np.zeros(2, "float32")), same(np.zeros(2, "float32"), np.zeros(2))
        (True, False)
    """
    left, right = np.asarray(a), np.asarray(b)
    return left.shape == right.shape and left.dtype == right.dtype and left.tobytes() == right.tobytes()


def _values(target: Any, names: set[str]) -> dict[str, np.ndarray]:
    return {name: np.array(variable.numpy()) for name, variable in target.variables.items() if name in names}


def roundtrip(
    rules: Any,
    source: SourceLike,
    model: object,
    *,
    lossy_casts: bool | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> RoundTrip:
    """Prove a rule file runs both ways on ``source`` and ``model``, bit for bit.

    First the model as it is is exported (A); then the checkpoint is imported and exported again (B), and B is
    compared with the checkpoint on every tensor the rules do not skip; then A is imported, and the model compared
    with what it held at first (except variables whose cast back rounds, allowed by ``lossy_casts``: a float32 model
    of a bfloat16 checkpoint holds values bfloat16 cannot); then B is imported, and the model compared with what
    the import of the checkpoint gave it. Dead rules are allowed for the re-imports: the skipped tensors are not
    there.

    Args:
        rules: a RuleSet or a rule file's path.
        source: the checkpoint (path or Source).
        model: the model the rule file imports into (it is changed, and ends holding the checkpoint's values).
        lossy_casts: as for ``mapper.export``.
        workdir: where the two exports go (created if missing; default: a temporary directory, removed afterwards).

    Returns:
        A RoundTrip; ``ok`` when both directions are bit-identical.

    Raises:
        PlanError: the plan has errors, or cannot be run backwards (NotInvertibleError).

    Example:
        >>> import keras
        >>> from mapper.rules import parse_rules
        >>> from mapper.sources.memory import MemorySource
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="d")], name="m")
        >>> rules = parse_rules('format = 1\\n[[rules]]\\nmatch = "w"\\ntarget = "m/d/kernel"\\nops = [{ transpose = [1, 0] }]'
        ...                     '\\n[[rules]]\\nmatch = "b"\\ntarget = "m/d/bias"')
        >>> source = MemorySource({"w": np.ones((3, 2), "float32"), "b": np.zeros(3, "float32")})
        >>> roundtrip(rules, source, model).summary()
        'round trip: 2 checkpoint tensors and 2 model variables came back bit-identical (0 dropped)'
    """
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="mapper-roundtrip-") as scratch:
            return _roundtrip(rules, source, model, lossy_casts, Path(scratch))
    Path(workdir).mkdir(parents=True, exist_ok=True)
    return _roundtrip(rules, source, model, lossy_casts, Path(workdir))


def _roundtrip(rules: Any, source: SourceLike, model: object, lossy_casts: bool | None, work: Path) -> RoundTrip:
    from mapper.api import as_rules, as_source, as_target, export, transfer

    rule_set = as_rules(rules)
    opened = as_source(source)
    target = as_target(model, checkpoint_root=rule_set.target.checkpoint_root)
    relaxed = rule_set.model_copy(update={"policies": rule_set.policies.model_copy(update={"dead_rule": "ignore"})})
    # A: the model as it is. B: the checkpoint imported, then exported again.
    first = export(rule_set, target, work / "model", like=opened, lossy_casts=lossy_casts, overwrite=True)
    exported = {piece.variable for tensor in first.inverse.tensors for piece in tensor.pieces}
    fresh = _values(target, exported)
    transfer(rule_set, opened, target)
    imported = _values(target, exported)
    second = export(rule_set, target, work / "checkpoint", like=opened, lossy_casts=lossy_casts, overwrite=True)
    written = as_source(work / "checkpoint" / second.files[-1])
    compared = [tensor.name for tensor in second.inverse.tensors if tensor.copy_of is None]
    checkpoint_differences = [
        name for name in compared if not same(written.read([name])[name], opened.read([name])[name])
    ]
    # import(A) is the model as it was, unless a cast back rounds (then only values from the checkpoint come back).
    transfer(relaxed, as_source(work / "model" / first.files[-1]), target)
    after = _values(target, exported)
    rounded = set(first.inverse.rounded)
    model_differences = [name for name in sorted(fresh) if name not in rounded and not same(fresh[name], after[name])]
    # import(B) is the imported model, every variable (A changed them all, so each is assigned again).
    transfer(relaxed, written, target)
    again = _values(target, exported)
    model_differences += [name for name in sorted(imported) if not same(imported[name], again[name])]
    return RoundTrip(
        checkpoint_tensors=len(compared),
        model_variables=len(fresh),
        checkpoint_differences=tuple(checkpoint_differences),
        model_differences=tuple(dict.fromkeys(model_differences)),
        dropped=second.inverse.dropped,
        restored=second.inverse.restored,
    )


__all__ = ["RoundTrip", "roundtrip", "same"]
