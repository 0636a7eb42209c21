"""End to end: a TF1 name-based BERT checkpoint into a Keras 3 encoder through rules/tf1-bert-to-keras-encoder.toml.

The checkpoint is written in graph mode by ``tf.compat.v1.train.Saver`` with Adam slots and ``global_step``;
the model's outputs are compared with a NumPy forward pass computed from the checkpoint's own numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import mapper
from mapper.report import render_text

pytestmark = pytest.mark.tf
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

RULES = Path(__file__).resolve().parent.parent / "rules" / "tf1-bert-to-keras-encoder.toml"
VOCAB, HIDDEN, HEADS, FFN, LAYERS, CLASSES = 50, 8, 2, 16, 2, 3
EPSILON = 1e-12


def _tf1_bert_values(seed: int = 0) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return (generator.normal(size=shape) * 0.5).astype("float32")

    values = {
        "bert/embeddings/word_embeddings": normal(VOCAB, HIDDEN),
        "bert/embeddings/LayerNorm/gamma": 1 + normal(HIDDEN),
        "bert/embeddings/LayerNorm/beta": normal(HIDDEN),
        "bert/pooler/dense/kernel": normal(HIDDEN, HIDDEN),
        "bert/pooler/dense/bias": normal(HIDDEN),
        "cls/predictions/output_bias": normal(VOCAB),
        "cls/seq_relationship/output_weights": normal(2, HIDDEN),
    }
    for i in range(LAYERS):
        layer = f"bert/encoder/layer_{i}"
        for part in ("query", "key", "value"):
            values[f"{layer}/attention/self/{part}/kernel"] = normal(HIDDEN, HIDDEN)
            values[f"{layer}/attention/self/{part}/bias"] = normal(HIDDEN)
        values[f"{layer}/attention/output/dense/kernel"] = normal(HIDDEN, HIDDEN)
        values[f"{layer}/attention/output/dense/bias"] = normal(HIDDEN)
        values[f"{layer}/intermediate/dense/kernel"] = normal(HIDDEN, FFN)
        values[f"{layer}/intermediate/dense/bias"] = normal(FFN)
        values[f"{layer}/output/dense/kernel"] = normal(FFN, HIDDEN)
        values[f"{layer}/output/dense/bias"] = normal(HIDDEN)
        for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
            values[f"{layer}/{norm}/gamma"] = 1 + normal(HIDDEN)
            values[f"{layer}/{norm}/beta"] = normal(HIDDEN)
    return values


def write_tf1_bert_checkpoint(directory: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Write the checkpoint the way TF1 BERT pretraining did: graph mode, Saver, Adam slots, global_step."""
    values = _tf1_bert_values()
    prefix = directory / "model.ckpt"
    with tf.Graph().as_default():
        for name, value in values.items():
            tf.compat.v1.get_variable(name, initializer=value)
            tf.compat.v1.get_variable(f"{name}/adam_m", initializer=np.zeros_like(value))
            tf.compat.v1.get_variable(f"{name}/adam_v", initializer=np.zeros_like(value))
        tf.compat.v1.get_variable("global_step", initializer=np.int64(1000))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(prefix), write_meta_graph=False)
    return prefix, values


def build_encoder() -> keras.Model:
    """The Keras 3 encoder the rule file targets."""
    keras.utils.set_random_seed(7)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, HIDDEN, name="embeddings")(tokens)
    x = keras.layers.LayerNormalization(epsilon=EPSILON, name="embeddings_norm")(x)
    for i in range(LAYERS):
        attention = keras.layers.MultiHeadAttention(HEADS, HIDDEN // HEADS, name=f"layer_{i}_attention")(x, x)
        x = keras.layers.LayerNormalization(epsilon=EPSILON, name=f"layer_{i}_attention_norm")(x + attention)
        hidden = keras.layers.EinsumDense(
            "btd,fd->btf", (None, FFN), bias_axes="f", activation="gelu", name=f"layer_{i}_intermediate"
        )(x)
        output = keras.layers.EinsumDense("btf,df->btd", (None, HIDDEN), bias_axes="d", name=f"layer_{i}_output")(
            hidden
        )
        x = keras.layers.LayerNormalization(epsilon=EPSILON, name=f"layer_{i}_output_norm")(x + output)
    return keras.Model(tokens, x, name="encoder")


def reference_encoder(values: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """BERT's forward pass in NumPy, straight from the TF1 checkpoint's numbers."""

    def layer_norm(x: np.ndarray, prefix: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(variance + EPSILON) * values[f"{prefix}/gamma"] + values[f"{prefix}/beta"]

    def dense(x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ values[f"{prefix}/kernel"] + values[f"{prefix}/bias"]

    erf = np.vectorize(math.erf)
    head_dim = HIDDEN // HEADS
    x = layer_norm(values["bert/embeddings/word_embeddings"][tokens].astype("float64"), "bert/embeddings/LayerNorm")
    for i in range(LAYERS):
        layer = f"bert/encoder/layer_{i}"
        batch, length, _ = x.shape

        def heads(y: np.ndarray, batch: int = batch, length: int = length) -> np.ndarray:
            return y.reshape(batch, length, HEADS, head_dim).transpose(0, 2, 1, 3)

        query, key, value = (heads(dense(x, f"{layer}/attention/self/{part}")) for part in ("query", "key", "value"))
        scores = query @ key.transpose(0, 1, 3, 2) / math.sqrt(head_dim)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        context = (weights @ value).transpose(0, 2, 1, 3).reshape(batch, length, HIDDEN)
        x = layer_norm(x + dense(context, f"{layer}/attention/output/dense"), f"{layer}/attention/output/LayerNorm")
        hidden = dense(x, f"{layer}/intermediate/dense")
        hidden = 0.5 * hidden * (1 + erf(hidden / math.sqrt(2)))
        x = layer_norm(x + dense(hidden, f"{layer}/output/dense"), f"{layer}/output/LayerNorm")
    return x


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    return write_tf1_bert_checkpoint(tmp_path_factory.mktemp("tf1_bert"))


def test_plan_uses_every_tensor_and_fills_every_variable(checkpoint: tuple[Path, dict[str, np.ndarray]]) -> None:
    prefix, values = checkpoint
    model = build_encoder()
    plan = mapper.make_plan(RULES, prefix, model)
    assert plan.ok, render_text(plan)
    counts = plan.counts()
    assert counts["mapped"] == len(model.weights)
    assert counts["unused"] == counts["unfilled"] == 0
    # 3 slots for each value (the value, adam_m, adam_v) + global_step; 4 head/pooler tensors skipped with their slots
    assert counts["skipped_by_rule"] == 2 * len(values) + 1 + 4
    query = plan.assignment_for("layer_0_attention/query/kernel")
    assert query is not None
    assert (query.source, query.source_shape, query.target_shape) == (
        "bert/encoder/layer_0/attention/self/query/kernel",
        (HIDDEN, HIDDEN),
        (HIDDEN, HEADS, HIDDEN // HEADS),
    )
    ffn = plan.assignment_for("layer_1_intermediate/kernel")
    assert ffn is not None
    assert [operation.describe() for operation in ffn.operations] == ["transpose[1, 0]"]


@pytest.mark.parametrize("method", ["assign"])
def test_outputs_equal_an_independent_reference(checkpoint: tuple[Path, dict[str, np.ndarray]], method: str) -> None:
    prefix, values = checkpoint
    model = build_encoder()
    tokens = np.random.default_rng(3).integers(0, VOCAB, size=(2, 5)).astype("int32")
    before = np.asarray(model(tokens))
    mapper.transfer(RULES, prefix, model, method=method)
    after = np.asarray(model(tokens))
    expected = reference_encoder(values, tokens)
    assert not np.allclose(before, expected, atol=1e-3)
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-4)


def test_report_names_the_skips(checkpoint: tuple[Path, dict[str, np.ndarray]]) -> None:
    prefix, _ = checkpoint
    plan = mapper.make_plan(RULES, prefix, build_encoder())
    report = " ".join(render_text(plan, width=200).split())
    assert "Adam slots and the step counter" in report
    assert "masked-LM, next-sentence and pooler heads" in report
