"""Real model pairs for measuring ``suggest``: each source checkpoint's tensors, a target model, and the values the
target truly gets, from the shipped rule files (planned and applied) or keras-hub's own converters.

A pair's ``reference`` maps each target variable (its Keras path) to the value a correct port gives it; variables
a correct port leaves alone (a new classifier head) are not in it. ``measure`` plans a drafted rule file, applies
every assignment to the source's values with NumPy, and counts each target as placed-correct (the value equals the
reference), placed-wrong (another value, or a variable the reference leaves alone) or undecided (not placed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mapper.ops import NUMPY, apply_operations, combine_values
from mapper.plan import Assignment, Plan
from mapper.plan.planner import build_plan
from mapper.rules import load_rules, parse_rules
from mapper.sources import open_source
from mapper.specs import TargetMap, TensorSpec, VariableMap
from mapper.targets.variables import target_from

RULES = Path(__file__).resolve().parent.parent / "rules"


@dataclass(frozen=True)
class ModelPair:
    """A source checkpoint and a target model, with what a correct port puts into each target variable."""

    name: str
    source: VariableMap
    values: Mapping[str, np.ndarray]
    target: TargetMap
    reference: Mapping[str, np.ndarray]  # target path -> the correct value


@dataclass(frozen=True)
class Tally:
    """How a draft did on one pair, counted per target variable."""

    correct: int
    wrong: int
    undecided: int
    wrong_names: tuple[str, ...] = ()

    def row(self) -> tuple[int, int, int]:
        return self.correct, self.wrong, self.undecided


def assignment_value(assignment: Assignment, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """What applying ``assignment`` writes, computed with NumPy from the source's values."""
    members = [values[name] for name in assignment.source_names]
    # A join (concat or stack) runs first; the operations then run on the joined tensor.
    joined = members[0] if assignment.join is None else combine_values(assignment.join.combine, members, NUMPY)
    return np.asarray(apply_operations(assignment.operations, joined, NUMPY))


def measure(pair: ModelPair, toml: str) -> Tally:
    """Plan ``toml`` against the pair and count what it places correctly, wrongly, or leaves undecided."""
    plan = build_plan(parse_rules(toml, file="<draft>"), pair.source, pair.target)
    return tally(pair, plan)


def tally(pair: ModelPair, plan: Plan) -> Tally:
    """Count a plan's assignments against the pair's reference values."""
    placed: set[str] = set()
    wrong: list[str] = []
    for assignment in plan.assignments:
        placed.add(assignment.target)
        expected = pair.reference.get(assignment.target)
        value = assignment_value(assignment, pair.values)
        if expected is None or value.shape != expected.shape or not np.array_equal(value, expected):
            wrong.append(assignment.target)
    correct = len(placed) - len(wrong)
    undecided = sum(1 for name in pair.reference if name not in placed)
    return Tally(correct, len(wrong), undecided, tuple(sorted(wrong)))


def reference_from_rules(
    rules: str, source: VariableMap, values: Mapping[str, np.ndarray], target: TargetMap
) -> dict[str, np.ndarray]:
    """The values a shipped rule file gives every target variable it fills (the plan must be clean)."""
    plan = build_plan(load_rules(RULES / rules), source, target)
    assert plan.ok, [problem.message for problem in plan.problems]
    return {assignment.target: assignment_value(assignment, values) for assignment in plan.assignments}


class _Recorder:
    """Stands in for keras-hub's SafetensorLoader: records what ``port_weight`` would assign, by variable path."""

    def __init__(
        self, tensors: Mapping[str, np.ndarray], prefix: str = "", renames: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.tensors = tensors
        self.prefix = prefix
        self.renames = renames
        self.values: dict[str, np.ndarray] = {}

    def get_tensor(self, key: str) -> np.ndarray:
        name = key.removeprefix(self.prefix)
        for pattern, replacement in self.renames:
            name = re.sub(pattern, replacement, name)
        return self.tensors[name]

    def port_weight(
        self, keras_variable: Any, hf_weight_key: str, hook_fn: Callable[[Any, Any], Any] | None = None
    ) -> None:
        tensor = self.get_tensor(hf_weight_key)
        if hook_fn is not None:
            tensor = hook_fn(tensor, list(keras_variable.shape))
        self.values[keras_variable.path] = np.asarray(tensor, dtype=keras_variable.dtype).reshape(keras_variable.shape)


def _source(tensors: Mapping[str, np.ndarray]) -> VariableMap:
    """The tensors as a safetensors file lists them: sorted by name."""
    return VariableMap(
        [TensorSpec(name, tuple(tensors[name].shape), str(tensors[name].dtype)) for name in sorted(tensors)],
        description="model.safetensors",
    )


def _state_dict(module: Any, seed: int) -> dict[str, np.ndarray]:
    """A module's parameters with random values: fresh LayerNorms (ones, zeros) and zero biases would make a swap
    of two of them look correct.
    """
    generator = np.random.default_rng(seed)
    return {
        name: generator.standard_normal(tuple(value.shape)).astype(np.float32)
        for name, value in module.state_dict().items()
    }


# --- the shipped families: the truth is the shipped rule file -----------------------------------------------------


def hf_bert(directory: Path) -> ModelPair:
    """Hugging Face BertForPreTraining (legacy names, buffers, heads) -> keras-hub BertBackbone."""
    import keras_hub
    from hf_fixtures import BertVariant, write_bert
    from keras_hub.src.utils.transformers import convert_bert

    variant = BertVariant(
        architecture="BertForPreTraining", prefix="bert.", layer_norm=("gamma", "beta"), head="pretraining",
        position_ids=True,
    )  # fmt: skip
    hf = write_bert(directory, variant)
    source = open_source(hf.safetensors).specs()
    backbone = keras_hub.models.BertBackbone(**convert_bert.convert_backbone_config(hf.config))
    target = target_from(backbone).map
    reference = reference_from_rules("hf-bert-to-keras-hub.toml", source, hf.tensors, target)
    return ModelPair("hf-bert", source, hf.tensors, target, reference)


def hf_llama(directory: Path) -> ModelPair:
    """Hugging Face Llama (grouped-query attention, separate lm_head, rotary buffers) -> keras-hub Llama3Backbone."""
    import keras_hub
    from hf_fixtures import LlamaVariant, write_llama
    from keras_hub.src.utils.transformers import convert_llama3

    hf = write_llama(directory, LlamaVariant(tie_word_embeddings=False, inv_freq=True))
    source = open_source(hf.safetensors).specs()
    backbone = keras_hub.models.Llama3Backbone(**convert_llama3.convert_backbone_config(hf.config))
    target = target_from(backbone).map
    reference = reference_from_rules("hf-llama-to-keras-hub.toml", source, hf.tensors, target)
    return ModelPair("hf-llama", source, hf.tensors, target, reference)


def timm_resnet(directory: Path) -> ModelPair:
    """timm ResNet-18-style (basic blocks, a downsample shortcut, num_batches_tracked, fc) -> ResNetBackbone."""
    import keras_hub

    from tests.vision_fixtures import TinyResNet, write_timm_resnet

    config = TinyResNet("resnet18", filters=(64, 16), blocks=(2, 1), strides=(1, 2))
    values = write_timm_resnet(directory, config)
    source = open_source(directory / "model.safetensors").specs()
    target = target_from(keras_hub.models.ResNetBackbone(**config.backbone_config())).map
    reference = reference_from_rules("timm-resnet-to-keras-hub.toml", source, values, target)
    return ModelPair("timm-resnet", source, values, target, reference)


def tf1_bert(directory: Path) -> ModelPair:
    """A TF1 BERT Saver checkpoint (Adam slots, global_step) -> the Keras encoder of tests/test_tf1_bert.py."""
    from test_tf1_bert import build_encoder, write_tf1_bert_checkpoint

    prefix, weights = write_tf1_bert_checkpoint(directory)
    opened = open_source(prefix)
    source = opened.specs()
    values = {name: np.asarray(value) for name, value in opened.read(list(source)).items()}
    target = target_from(build_encoder()).map
    reference = reference_from_rules("tf1-bert-to-keras-encoder.toml", source, values, target)
    assert all(name in values for name in weights)
    return ModelPair("tf1-bert", source, values, target, reference)


# --- GPT-2 and ViT: the truth is keras-hub's converter (convert_gpt2.py, convert_vit.py) -------------------------


def gpt2() -> ModelPair:
    """transformers GPT2Model (Conv1D ``[in, out]`` weights, fused ``c_attn``) -> keras-hub GPT2Backbone."""
    import keras_hub
    from keras_hub.src.utils.transformers import convert_gpt2
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(vocab_size=50, n_positions=24, n_embd=16, n_layer=2, n_head=4)
    tensors = _state_dict(GPT2Model(config), seed=1)
    # Non-persistent attention-mask buffers are not saved; save_pretrained writes only the parameters.
    tensors = {name: value for name, value in tensors.items() if not name.endswith(".attn.bias")}
    backbone = keras_hub.models.GPT2Backbone(**convert_gpt2.convert_backbone_config(config.to_dict()))
    recorder = _Recorder(tensors)
    convert_gpt2.convert_weights(backbone, recorder, config.to_dict())
    return ModelPair("gpt2", _source(tensors), tensors, target_from(backbone).map, recorder.values)


_VIT_RENAMES = (
    (r"^encoder\.layer\.", "layers."),
    (r"\.attention\.attention\.(query|key|value)\.", lambda m: f".attention.{m[1][0]}_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
)


def vit() -> ModelPair:
    """transformers ViTModel (patch conv, class token, ``layernorm_before``/``after``, pooler) -> ViTBackbone."""
    import keras_hub
    from keras_hub.src.utils.transformers import convert_vit
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32, image_size=8, patch_size=4
    )
    tensors = _state_dict(ViTModel(config), seed=2)
    backbone = keras_hub.models.ViTBackbone(**convert_vit.convert_backbone_config(config.to_dict()))
    # The converter reads a ViTForImageClassification's names of transformers 4; transformers 5 renamed the
    # layers (it converts old checkpoints on load), so the recorder translates the converter's keys.
    recorder = _Recorder(tensors, prefix="vit.", renames=_VIT_RENAMES)
    convert_vit.convert_weights(backbone, recorder, config.to_dict())
    return ModelPair("vit", _source(tensors), tensors, target_from(backbone).map, recorder.values)


# --- the same architecture: a Keras model's TF2 checkpoint into its twin with a new head --------------------------


def same_architecture(directory: Path) -> ModelPair:
    """mapper.demo: the pretrained 10-class model's ``tf.train.Checkpoint`` -> the 5-class model (head left alone)."""
    from mapper import demo

    pretrained, prefix = demo.write_pretrained_checkpoint(directory)
    opened = open_source(prefix)
    source = opened.specs()
    values = {name: np.asarray(value) for name, value in opened.read(list(source)).items()}
    target = target_from(demo.new_model()).map
    reference = reference_from_rules("keras-same-architecture.toml", source, values, target)
    assert not any(name.startswith("head/") for name in reference)
    assert len(reference) == len(pretrained.weights) - 2
    return ModelPair("same-architecture", source, values, target, reference)


def same_architecture_cnn(directory: Path) -> ModelPair:
    """tests/vision_fixtures.py's CNN (Conv2D with and without bias, BatchNorm, a nested block): its TF2 object
    checkpoint -> a fresh model of the same architecture.
    """
    import keras
    import tensorflow as tf

    from tests.vision_fixtures import build_cnn, randomize

    pretrained = build_cnn(keras)
    randomize(pretrained, seed=3)
    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / "ckpt"
    tf.train.Checkpoint(model=pretrained).write(str(prefix))
    opened = open_source(prefix)
    source = opened.specs()
    values = {name: np.asarray(value) for name, value in opened.read(list(source)).items()}
    target = target_from(build_cnn(keras)).map
    reference = reference_from_rules("keras-same-architecture.toml", source, values, target)
    assert len(reference) == len(pretrained.weights)
    return ModelPair("same-architecture-cnn", source, values, target, reference)


def build_all(scratch: Path) -> dict[str, ModelPair]:
    """Every pair, built once (offline), in the table's order."""
    from tests.vision_fixtures import OFFLINE_ENVIRONMENT

    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    pairs = [
        hf_bert(scratch / "hf-bert"),
        hf_llama(scratch / "hf-llama"),
        timm_resnet(scratch / "timm-resnet"),
        tf1_bert(scratch / "tf1-bert"),
        gpt2(),
        vit(),
        same_architecture(scratch / "same-architecture"),
        same_architecture_cnn(scratch / "same-architecture-cnn"),
    ]
    return {pair.name: pair for pair in pairs}


def raw_placements(pair: ModelPair) -> list[tuple[str, str, float, bool]]:
    """suggest's placement before its consistency stage withdraws anything: ``(source, target, confidence, right)``.

    This is what the confidence is computed on, so it is where calibration is measured: the consistency stage
    hides wrong guesses, it does not make the confidence of the rest mean more.
    """
    from mapper.authoring.suggest._assignment import place
    from mapper.authoring.suggest._bookkeeping import find_bookkeeping
    from mapper.authoring.suggest._fused import find_splits
    from mapper.authoring.suggest._names import describe

    _, bookkeeping = find_bookkeeping(pair.source)
    keys = [name for name in pair.source if name not in bookkeeping]
    sources = describe(keys, [pair.source[name] for name in keys])
    target_keys = pair.target.names("path")
    targets = describe(target_keys, [pair.target.variables[name] for name in target_keys])
    splits = find_splits(sources, targets)
    placed = place(
        [name for name in sources if name.key not in splits.sources],
        [name for name in targets if name.key not in splits.targets],
    )
    found = []
    for chosen in placed:
        ops = ", ".join(chosen.fit.ops)
        toml = f"format = 1\n[[rules]]\nmatch = '{re.escape(chosen.source.key)}'\ntarget = \"{chosen.target.key}\"\n"
        plan = build_plan(parse_rules(toml + (f"ops = [{ops}]\n" if ops else "")), pair.source, pair.target)
        found.append((chosen.source.key, chosen.target.key, chosen.confidence, tally(pair, plan).correct == 1))
    return found
