"""The built-in example: restore a 10-class model's checkpoint into a 5-class model, keeping the new head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mapper.errors import OutputError

# The rule file for the TensorFlow backend's checkpoint (tf.train.Checkpoint keys), and for every backend's
# safetensors file (Keras variable paths).
RULES = Path(__file__).resolve().parent.parent / "rules" / "keras-same-architecture.toml"
PATH_RULES = RULES.with_name("keras-same-architecture-paths.toml")
FEATURES = 16


def build_classifier(num_classes: int, *, seed: int = 0) -> Any:
    """A small Keras 3 classifier: dense backbone with batch norm, and a ``head`` with ``num_classes`` outputs.

    Example:
        >>> [tuple(variable.shape) for variable in build_classifier(5).get_layer("head").weights]
        [(32, 5), (5,)]
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((FEATURES,), name="features")
    hidden = keras.layers.Dense(32, activation="relu", name="d1")(inputs)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    hidden = keras.layers.Dense(32, activation="relu", name="d2")(hidden)
    outputs = keras.layers.Dense(num_classes, name="head")(hidden)
    return keras.Model(inputs, outputs, name="classifier")


def pretrained_model() -> Any:
    """The "pretrained" 10-class model: random numbers stand in for training, batch-norm statistics included.

    Example:
        >>> model = pretrained_model()
        >>> tuple(model.get_layer("head").kernel.shape), bool((model.get_layer("bn").moving_variance.numpy() >= 0).all())
        ((32, 10), True)
    """
    import numpy as np

    model = build_classifier(10, seed=1)
    generator = np.random.default_rng(1)
    for variable in model.weights:
        values = generator.normal(size=tuple(variable.shape)).astype("float32")
        variable.assign(np.abs(values) if "variance" in variable.path else values)
    return model


def new_model() -> Any:
    """The model to fine-tune: same backbone, a head for 5 classes (the ``--target`` factory of the demo).

    Example:
        >>> tuple(new_model().get_layer("head").kernel.shape)
        (32, 5)
    """
    return build_classifier(5, seed=2)


def write_pretrained_checkpoint(directory: Path) -> tuple[Any, Path]:
    """Save the pretrained model with ``tf.train.Checkpoint(model=...).write`` under ``directory`` (TensorFlow backend).

    Returns:
        The pretrained model and the checkpoint prefix.

    Raises:
        OutputError: Keras runs on another backend, where its variables are not ``tf.Variable``s.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as scratch:
        ...     model, prefix = write_pretrained_checkpoint(Path(scratch) / "pretrained")
        ...     prefix.name, sorted(path.name for path in prefix.parent.iterdir())
        ('ckpt', ['ckpt.data-00000-of-00001', 'ckpt.index'])
    """
    model = pretrained_model()
    import keras

    if keras.backend.backend() != "tensorflow":
        raise OutputError(
            f"cannot write the demo's TF checkpoint under {directory}: tf.train.Checkpoint saves tf.Variables, which "
            f"a Keras model's variables are only on the TensorFlow backend (this is {keras.backend.backend()!r}); "
            "use write_pretrained_safetensors",
            path=directory,
        )
    import tensorflow as tf

    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / "ckpt"
    tf.train.Checkpoint(model=model).write(str(prefix))
    return model, prefix


def write_pretrained_safetensors(directory: Path) -> tuple[Any, Path]:
    """Save the pretrained model's weights under their Keras paths as ``directory/model.safetensors`` (no TensorFlow).

    Returns:
        The pretrained model and the safetensors file.

    Example:
        >>> import tempfile
        >>> from mapper.sources.safetensors import SafetensorsSource
        >>> with tempfile.TemporaryDirectory() as scratch:
        ...     model, path = write_pretrained_safetensors(Path(scratch) / "pretrained")
        ...     list(SafetensorsSource(path).specs())[:2]
        ['bn/beta', 'bn/gamma']
    """
    import numpy as np

    from mapper.outputs.writers import open_writer
    from mapper.specs import TensorSpec

    model = pretrained_model()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.safetensors"
    values = {variable.path: np.asarray(variable.numpy()) for variable in model.weights}
    specs = [TensorSpec(name, value.shape, value.dtype.name) for name, value in sorted(values.items())]
    with open_writer(path, specs, overwrite=True) as writer:
        for name, value in values.items():
            writer.write(name, value)
    return model, path


def write_pretrained(directory: Path, backend: str) -> tuple[Any, Path]:
    """The demo's pretrained weights for the Keras ``backend``: a TF checkpoint on tensorflow, else safetensors.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as scratch:
        ...     write_pretrained(Path(scratch), "jax")[1].name
        'model.safetensors'
    """
    if backend == "tensorflow":
        return write_pretrained_checkpoint(directory)
    return write_pretrained_safetensors(directory)


def rules_for(backend: str) -> Path:
    """The demo's rule file for what ``write_pretrained`` writes on ``backend``.

    Example:
        >>> rules_for("tensorflow").name, rules_for("torch").name
        ('keras-same-architecture.toml', 'keras-same-architecture-paths.toml')
    """
    return RULES if backend == "tensorflow" else PATH_RULES


def compare_with_pretrained(model: Any, pretrained: Any, initial: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """Check a restored model: the head kept its initial values and everything else equals the pretrained model.

    Returns:
        ``(variable path, as expected, what was found)`` for every weight.

    Example:
        >>> model, pretrained = new_model(), pretrained_model()
        >>> initial = {variable.path: variable.numpy() for variable in model.weights}
        >>> found = compare_with_pretrained(model, pretrained, initial)
        >>> found[0], found[-1]
        (('d1/kernel', False, 'DIFFERS from the pretrained value'), ('head/bias', True, 'kept its initial value'))
    """
    import numpy as np

    expected = {variable.path: np.asarray(variable.numpy()) for variable in pretrained.weights}
    results = []
    for variable in model.weights:
        value = np.asarray(variable.numpy())
        if variable.path.startswith("head/"):
            same = bool(np.array_equal(value, initial[variable.path]))
            found = "kept its initial value" if same else "CHANGED, but should have kept its initial value"
        else:
            same = bool(np.array_equal(value, expected[variable.path]))
            found = "equals the pretrained value" if same else "DIFFERS from the pretrained value"
        results.append((variable.path, same, found))
    return results
