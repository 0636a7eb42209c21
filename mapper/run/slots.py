"""Target variables by kind (TensorFlow, Keras on JAX, Keras on torch): how each is checked, assigned and snapshotted."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from mapper.errors import TargetError
from mapper.plan import Assignment, Plan
from mapper.run.reuse import HostBuffers, host_view
from mapper.run.values import aligned_empty, mapped_empty, spec_text, writable_view
from mapper.targets.base import VariableTarget

TENSORFLOW = "tensorflow"
# Dtypes a variable can be given in place from host memory (what DLPack carries and NumPy holds natively).
_IN_PLACE_DTYPES = frozenset(
    ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
)
# Keras backends whose variables this module assigns; NumPy and OpenVINO variables cannot be assigned in place.
BACKENDS = ("tensorflow", "jax", "torch")


class Slot(Protocol):
    """A target variable ready to assign, of one kind; ``snapshot`` keeps its value for ``restore``."""

    name: str

    def snapshot(self) -> Any:
        """What ``restore`` needs to give the variable back its present value."""
        ...

    def restore(self, saved: Any) -> None:
        """Give the variable back the value ``snapshot`` kept; raises if that fails."""
        ...


@dataclass(frozen=True)
class Slots:
    """The checked slots of a plan's targets, by target name, all of one ``kind`` (a Keras backend name).

    Example:
        >>> Slots("jax", {}).tensorflow
        False
    """

    kind: str
    by_name: Mapping[str, Any]

    @property
    def tensorflow(self) -> bool:
        """Whether the slots are TensorFlow variables (assigned from tf.Tensors), not host arrays."""
        return self.kind == TENSORFLOW


def active_backend() -> str | None:
    """The Keras backend fixed when Keras was imported, or None if Keras was not imported.

    Example:
        >>> import keras
        >>> active_backend() == keras.backend.backend()
        True
    """
    keras = sys.modules.get("keras")
    return None if keras is None else str(keras.backend.backend())


def check_targets(plan: Plan, target: VariableTarget, *, eager: bool = True) -> Slots:
    """Every planned target variable exists, is of a kind the active backend assigns, and has the planned spec.

    Raises:
        TargetError: a variable is missing, has another shape or dtype, cannot hold the planned shape in its
            layout, or is not a variable of the active Keras backend (a ``tf.Variable`` under JAX, a
            ``torch.nn.Parameter``, a JAX array).

    Example:
        >>> import keras, numpy as np
        >>> from mapper.plan import RuleRef
        >>> from mapper.specs import TargetMap, TensorSpec, VariableMap
        >>> variable = keras.Variable(np.zeros(2, "float32"), name="b")
        >>> target = VariableTarget("demo", TargetMap(VariableMap([TensorSpec("b", (2,), "float32")])), {"b": variable})
        >>> plan = Plan(("r.toml",), "s", "demo", "path", assignments=(
        ...     Assignment("b", "b", "w", RuleRef("r.toml", 1), (), (3,), "float32", (3,), "float32"),))
        >>> check_targets(plan, target)
        Traceback (most recent call last):
        mapper.errors.TargetError: variable 'b' of demo is [2] float32, but the plan assigns it [3] float32 ...
    """
    backend = active_backend()
    slots: dict[str, Any] = {}
    kind = TENSORFLOW if backend is None else backend
    # Which values' memory no other live array shares (a new value may then reuse it): looked at once, if asked.
    host = HostBuffers() if backend == "jax" else None
    for assignment in plan.assignments:
        name = assignment.target
        if name not in target.variables:
            close = difflib.get_close_matches(name, list(target.variables), n=3)
            hint = f"; closest names: {', '.join(map(repr, close))}" if close else ""
            raise TargetError(
                f"{target.description} has no variable {name!r}, which the plan assigns from {assignment.source!r} "
                f"({assignment.rule}){hint}; the model changed since the plan was made, so plan again"
            )
        if name not in slots:
            slot, kind = _slot(name, target.variables[name], backend, target.description, eager=eager, host=host)
            _check_spec(slot, assignment, target.description)
            slots[name] = slot
    return Slots(kind, slots)


def _slot(
    name: str, variable: Any, backend: str | None, where: str, *, eager: bool, host: HostBuffers | None
) -> tuple[Any, str]:
    keras = sys.modules.get("keras")
    tf = sys.modules.get("tensorflow")
    if keras is not None and isinstance(variable, keras.Variable) and backend != TENSORFLOW:
        if backend == "jax":
            return JaxSlot.of(name, variable, host), "jax"
        if backend == "torch":
            return TorchSlot.of(name, variable), "torch"
        raise TargetError(
            f"target variable {name!r} of {where} is a Keras variable of the {backend!r} backend, which cannot be "
            f"assigned in place; use one of the Keras backends {', '.join(map(repr, BACKENDS))} (KERAS_BACKEND)"
        )
    is_keras = keras is not None and isinstance(variable, keras.Variable)
    if tf is not None and backend in (None, TENSORFLOW) and (is_keras or _is_tf_variable(variable, tf)):
        return TFSlot.of(name, variable, tf, eager=eager), TENSORFLOW
    if tf is not None and _is_tf_variable(variable, tf):
        raise TargetError(
            f"target variable {name!r} of {where} is a TensorFlow variable ({_kind(variable)}), but the active Keras "
            f"backend is {backend!r}, whose variables are assigned without TensorFlow; to assign tf.Variables and "
            "tf.Module targets, set KERAS_BACKEND=tensorflow before Keras is imported, or pass a Keras model built "
            f"under the {backend!r} backend"
        )
    raise TargetError(
        f"target variable {name!r} of {where} is a {_kind(variable)}, not a keras.Variable of the active Keras "
        f"backend ({backend or 'none imported'}) or a tf.Variable; pass the Keras model or layer (or its "
        "keras.Variable objects) whose weights these are, built under that backend"
    )


def _is_tf_variable(variable: Any, tf: Any) -> bool:
    return isinstance(variable, (tf.Variable, tf.distribute.DistributedValues))


def _check_spec(slot: Any, assignment: Assignment, where: str) -> None:
    shape, dtype = slot.spec()
    if shape != assignment.target_shape or dtype != assignment.target_dtype:
        layout = slot.layout_problem(assignment.target_shape) if shape is not None else None
        raise TargetError(
            f"variable {slot.name!r} of {where} is {spec_text(shape, dtype)}, but the plan assigns it "
            f"{spec_text(assignment.target_shape, assignment.target_dtype)} from {assignment.source!r} "
            f"({assignment.rule}){layout or ''}; the model changed since the plan was made, so plan again"
        )
    problem = slot.layout_problem(assignment.target_shape)
    if problem:
        raise TargetError(f"variable {slot.name!r} of {where} cannot be assigned{problem}; nothing was changed")


def _kind(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}" if cls.__module__ != "builtins" else cls.__qualname__


# --- TensorFlow -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TFSlot:
    """A TensorFlow variable (or a Keras variable on TensorFlow): the tf.Variable behind it and its per-device parts.

    Example:
        >>> import tensorflow as tf
        >>> slot = TFSlot.of("w", tf.Variable([1.0, 2.0]), tf, eager=True)
        >>> saved = slot.snapshot()
        >>> slot.assign(tf.constant([5.0, 6.0])); slot.restore(saved); slot.variable.numpy().tolist()
        [1.0, 2.0]
    """

    name: str
    variable: Any  # the tf.Variable (a MirroredVariable under a distribution strategy)
    parts: tuple[Any, ...]  # plain resource variables holding the values: the variable, or its replicas
    fast: bool  # assign with a raw AssignVariableOp on the handle
    tf: Any

    @classmethod
    def of(cls, name: str, variable: Any, tf: Any, *, eager: bool) -> TFSlot:
        """The slot of a tf.Variable, or of a built Keras 3 variable on the TensorFlow backend."""
        inner = variable
        if not isinstance(inner, tf.Variable):
            # A Keras 3 variable holds its tf.Variable as ``.value`` (outside autocast and stateless scopes).
            inner = getattr(variable, "value", None)
            if not isinstance(inner, tf.Variable):
                raise TargetError(
                    f"target variable {name!r} is a {type(variable).__name__}, not a tf.Variable or a built Keras 3 "
                    "variable; build the model (call it once or model.build(shape)) before applying, outside any "
                    "autocast or stateless scope"
                )
        if isinstance(inner, tf.distribute.DistributedValues):
            return cls(name, inner, tuple(inner.values), False, tf)
        return cls(name, inner, (inner,), eager and hasattr(inner, "handle"), tf)

    def spec(self) -> tuple[tuple[int | None, ...] | None, str]:
        """The static shape (None where a TF1 graph leaves it unknown) and the base dtype's name."""
        shape = self.variable.shape
        dims = None if shape.rank is None else tuple(shape.as_list())
        return dims, self.variable.dtype.base_dtype.name  # base: TF1 reference variables say "float32_ref"

    def layout_problem(self, shape: tuple[int, ...]) -> str | None:  # noqa: ARG002 - replicas hold whole values
        """None: TensorFlow variables (and their replicas) hold whole values."""
        return None

    def assign(self, value: Any) -> None:
        """Assign a tf.Tensor of the variable's shape and dtype (checked by the op)."""
        if self.fast:
            self.tf.raw_ops.AssignVariableOp(resource=self.variable.handle, value=value, validate_shape=True)
        else:
            self.variable.assign(value, read_value=False)

    fills_own_memory: ClassVar[bool] = False  # write_in_place fills a staging buffer, then one op copies it
    uses_staging: ClassVar[bool] = True

    def writes_in_place(self, dtype: str) -> bool:
        """Whether ``write_in_place`` can give this variable a value of ``dtype``.

        It can for an eager plain resource variable of rank 1 or more and a dtype DLPack carries (not under a
        distribution strategy: replicas take ``assign``).
        """
        return self.fast and dtype in _IN_PLACE_DTYPES and bool(self.variable.shape.rank)

    def write_in_place(self, fill: Callable[[np.ndarray], None], staging: Any) -> None:
        """``fill`` the value into ``staging``, then copy it into the variable's own buffer.

        The copy is a ``ResourceScatterUpdate`` over every row, so no buffer of the variable's size is allocated.
        TensorFlow copies the variable first if anything else still holds its buffer (copy on write), as any update
        in place does.
        """
        tf = self.tf
        shape = tuple(self.variable.shape.as_list())
        host = staging.array(shape, self.variable.dtype.name)
        fill(host)
        updates = tf.experimental.dlpack.from_dlpack(host.__dlpack__())
        rows = tf.range(shape[0], dtype=tf.int64 if shape[0] > 2**31 - 1 else tf.int32)
        tf.raw_ops.ResourceScatterUpdate(resource=self.variable.handle, indices=rows, updates=updates)

    def snapshot(self) -> list[tuple[Any, Any]]:
        """The present value of each part, without a copy.

        The read tensor shares the variable's buffer; assigning later allocates a new one because this
        reference is alive (copy-on-write), so no copy is made here.
        """
        read = self.tf.raw_ops.ReadVariableOp
        return [(part, read(resource=part.handle, dtype=part.dtype)) for part in self.parts]

    def restore(self, saved: list[tuple[Any, Any]]) -> None:
        """Put every part's saved value back; raises the first failure after trying every part."""
        failure: Exception | None = None
        for part, value in saved:
            try:
                self.tf.raw_ops.AssignVariableOp(resource=part.handle, value=value, validate_shape=True)
            except Exception as error:  # keep restoring the other parts
                failure = failure or error
        if failure is not None:
            raise failure


# --- Keras on JAX ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JaxSlot:
    """A Keras variable on JAX; its new value is built shard by shard in the variable's own sharding.

    Only a Keras variable of the jax backend makes one (``JaxSlot.of``); tests/backends/test_apply_keras.py
    assigns through it under ``KERAS_BACKEND=jax``.

    Example:
        >>> import dataclasses
        >>> [field.name for field in dataclasses.fields(JaxSlot)]
        ['name', 'variable', 'sharding', 'host']
    """

    name: str
    variable: Any
    sharding: Any  # the jax.sharding.Sharding the value has and keeps
    # What tells whether the value's memory is seen by anything else (None: never reused; its sharding differs).
    host: HostBuffers | None = None

    @classmethod
    def of(cls, name: str, variable: Any, host: HostBuffers | None = None) -> JaxSlot:
        """The slot of a built Keras variable on the JAX backend; ``host`` tells whether its memory may be reused."""
        value = getattr(variable, "_value", None)
        if value is None or not hasattr(value, "sharding"):
            raise TargetError(
                f"target variable {name!r} is a Keras variable with no value yet; build the model (call it once or "
                "model.build(shape)) before applying"
            )
        sharding = value.sharding
        layout = getattr(variable, "_layout", None)
        backend_layout = getattr(layout, "backend_layout", layout)
        if backend_layout is not None and hasattr(backend_layout, "shard_shape"):
            sharding = backend_layout  # where Keras puts every assigned value
        same = value.sharding is sharding or value.sharding.is_equivalent_to(sharding, len(variable.shape))
        return cls(name, variable, sharding, host if same else None)

    def spec(self) -> tuple[tuple[int, ...], str]:
        """The variable's shape and dtype."""
        return tuple(self.variable.shape), str(self.variable.dtype)

    def layout_problem(self, shape: tuple[int, ...]) -> str | None:
        """Why the variable's sharding cannot hold ``shape`` (a dimension not divisible by its mesh axis), or None."""
        try:
            self.sharding.shard_shape(tuple(shape))
        except ValueError as error:
            reason = str(error).split(" implies that ")[-1].split(" (full shape")[0]
            layout = getattr(self.sharding, "spec", self.sharding)
            return f" (its sharding {layout} cannot hold {list(shape)}: {reason})"
        return None

    def assign(self, host: np.ndarray, *, owned: bool) -> None:
        """Fill each shard from its slice of ``host``, nothing gathered on one device; keeps the sharding.

        JAX on the CPU may adopt a host buffer without copying, so a buffer the caller does not own is copied.
        """
        import jax

        if not owned:
            host = _copy(host)
        array = jax.make_array_from_callback(host.shape, self.sharding, lambda index: np.asarray(host[index]))
        self.variable.assign(array)

    uses_staging: ClassVar[bool] = False

    @property
    def fills_own_memory(self) -> bool:
        """Whether ``write_in_place`` fills the memory of the value it replaces (nothing else can see it now)."""
        return self._reusable_view() is not None

    def writes_in_place(self, dtype: str) -> bool:
        """Whether ``write_in_place`` takes ``dtype``: any NumPy holds natively, and bfloat16."""
        return dtype in _IN_PLACE_DTYPES or dtype == "bfloat16"

    def write_in_place(self, fill: Callable[[np.ndarray], None], staging: Any) -> None:  # noqa: ARG002 - no staging
        """``fill`` the new value into the memory of the value it replaces, if nothing else can see it; else a new one.

        JAX arrays are immutable, so the memory is reused only when no one could tell: the value is on one CPU
        device, held by the variable alone (no other reference, no other live array over its buffer: a reference
        count and ``HostBuffers.alone``) and computed (``HostBuffers`` waited for that). That is what donating it
        to XLA would do, without compiling a program per shape (7 of them cost 0.1 s here for BERT). The new array is made over the same buffer, and the old one
        lives on only as its owner. Fresh memory is what the port's time went to (its first touch took 0.3-1.5 s
        for BERT's 418 MiB on this VM), and the old values, once freed, stayed in the allocator's arenas (300 MiB).
        A read that fails midway leaves part of the new value there, as on torch (``fills_own_memory``).

        Otherwise (a sharded or replicated value, one something else holds) ``fill`` goes into a new host buffer of
        ordinary pages that the new array is built from, shard by shard.
        """
        import jax

        view = self._reusable_view()
        if view is None:
            host = mapped_empty(tuple(self.variable.shape), self.variable.dtype)
            fill(host)
            self.assign(host, owned=True)
            return
        fill(view)
        self.variable.assign(jax.device_put(view, self.sharding))  # no copy: the buffer is aligned

    def _reusable_view(self) -> np.ndarray | None:
        """A writable view of the present value's buffer, if nothing but the variable can see it; else None."""
        value = self.variable._value
        # The variable's reference, this name's and getrefcount's argument: a snapshot or a caller's is one more.
        if self.host is None or sys.getrefcount(value) > 3 or not self.host.alone(value):
            return None
        return host_view(value)

    def snapshot(self) -> Any:
        """The present jax.Array: immutable, so kept without a copy."""
        return self.variable.value

    def restore(self, saved: Any) -> None:
        """Give the variable its saved array back (same sharding: no relayout)."""
        self.variable.assign(saved)


# --- Keras on torch -------------------------------------------------------------------------------

# ml_dtypes' dtypes, which torch.from_numpy does not take: carried as unsigned integers of their width, then viewed.
_TORCH_VIEWS = {"bfloat16": "bfloat16", "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2"}


@dataclass(frozen=True, slots=True)
class TorchSlot:
    """A Keras variable on torch: Keras copies the value into the parameter in place.

    Only a Keras variable of the torch backend makes one (``TorchSlot.of``); tests/backends/test_apply_keras.py
    assigns through it under ``KERAS_BACKEND=torch``.

    Example:
        >>> import dataclasses
        >>> [field.name for field in dataclasses.fields(TorchSlot)]
        ['name', 'variable']
    """

    name: str
    variable: Any

    @classmethod
    def of(cls, name: str, variable: Any) -> TorchSlot:
        """The slot of a built Keras variable on the torch backend."""
        if getattr(variable, "_value", None) is None:
            raise TargetError(
                f"target variable {name!r} is a Keras variable with no value yet; build the model (call it once or "
                "model.build(shape)) before applying"
            )
        return cls(name, variable)

    def spec(self) -> tuple[tuple[int, ...], str]:
        """The variable's shape and dtype."""
        return tuple(self.variable.shape), str(self.variable.dtype)

    def layout_problem(self, shape: tuple[int, ...]) -> str | None:  # noqa: ARG002 - one device holds the whole value
        """None: a torch parameter holds its whole value."""
        return None

    def assign(self, host: np.ndarray, *, owned: bool) -> None:  # noqa: ARG002 - Keras copies into the parameter
        """Hand ``host`` to torch without a copy (``torch.from_numpy``); Keras copies it into the parameter."""
        self.variable.assign(to_torch(host))

    fills_own_memory: ClassVar[bool] = True  # write_in_place reads into the parameter itself
    uses_staging: ClassVar[bool] = False

    def writes_in_place(self, dtype: str) -> bool:
        """Whether ``write_in_place`` can fill this parameter: a contiguous CPU tensor of a dtype NumPy holds."""
        value = self.variable._value  # not .value, which an autocast scope would hand out as a cast copy
        return dtype in _IN_PLACE_DTYPES and value.device.type == "cpu" and bool(value.is_contiguous())

    def write_in_place(self, fill: Callable[[np.ndarray], None], staging: Any) -> None:  # noqa: ARG002 - no copy
        """``fill`` the parameter's own memory, as Keras's assign (``copy_``) would change it, without a buffer between.

        The parameter's version counter is bumped, as an in-place torch operation does, so autograd still notices.
        """
        import torch

        value = self.variable._value
        fill(value.detach().numpy())
        torch.autograd.graph.increment_version(value)

    def snapshot(self) -> Any:
        """A copy of the present value: torch parameters change in place, so this costs the variable's size."""
        return self.variable.value.detach().clone()

    def restore(self, saved: Any) -> None:
        """Copy the saved value back into the parameter."""
        self.variable.assign(saved)


def to_torch(host: np.ndarray) -> Any:
    """A torch tensor sharing ``host``'s memory (copied only if it is read-only memory); ml_dtypes become views.

    Example:
        >>> import numpy as np
        >>> to_torch(np.arange(3, dtype="float32")).tolist()
        [0.0, 1.0, 2.0]
    """
    import torch

    array = writable_view(host)
    if array is None:
        array = _copy(host)
    name = array.dtype.name
    if name in _TORCH_VIEWS:
        carrier = np.dtype(f"uint{8 * array.dtype.itemsize}")
        return torch.from_numpy(array.view(carrier)).view(getattr(torch, _TORCH_VIEWS[name]))
    return torch.from_numpy(array)


def _copy(host: np.ndarray) -> np.ndarray:
    copy = aligned_empty(host.shape, host.dtype)
    np.copyto(copy, host)
    return copy


__all__ = ["BACKENDS", "JaxSlot", "Slot", "Slots", "TFSlot", "TorchSlot", "active_backend", "check_targets", "to_torch"]
