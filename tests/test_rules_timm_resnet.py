"""rules/timm-resnet-to-keras-hub.toml against keras-hub's own timm converter, on tiny random timm ResNets.

Each case writes a timm-style directory (config.json + model.safetensors, timm's state-dict names), loads it once
with ``keras_hub.models.ResNetBackbone.from_preset(directory)`` (keras-hub's timm preset loader and
``convert_resnet.convert_weights``), then fills a fresh backbone of the same configuration through the rule file:
every variable must be bit-identical to keras-hub's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mapper
from mapper.errors import PlanError
from mapper.plan import Plan, ProblemKind, SkipKind
from mapper.report import render_text
from mapper.specs import TensorSpec, VariableMap
from tests.vision_fixtures import (
    OFFLINE_ENVIRONMENT,
    TinyResNet,
    assert_bit_identical,
    variable_bytes,
    write_timm_resnet,
)

pytestmark = pytest.mark.tf
pytest.importorskip("tensorflow")
pytest.importorskip("safetensors")
keras_hub = pytest.importorskip("keras_hub")

RULES = Path(__file__).resolve().parent.parent / "rules" / "timm-resnet-to-keras-hub.toml"
CONFIGS = {
    "basic-resnet18": TinyResNet("resnet18", filters=(64, 16), blocks=(2, 1), strides=(1, 2)),
    "bottleneck-resnet50": TinyResNet("resnet50", filters=(64, 8), blocks=(1, 2), strides=(1, 2)),
}
FC_REASON = "timm classifier head: ResNetBackbone has none"
COUNTER_REASON = "BatchNorm step counter (int64)"


@dataclass(frozen=True)
class Ported:
    """A timm directory, the tensors in it, and keras-hub's own load of it."""

    config: TinyResNet
    directory: Path
    values: dict[str, np.ndarray]
    reference: Any


def fresh_backbone(config: TinyResNet) -> Any:
    return keras_hub.models.ResNetBackbone(**config.backbone_config())


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def ported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ported]:
    config = CONFIGS[request.param]
    directory = tmp_path_factory.mktemp(request.param) / "timm-model"
    values = write_timm_resnet(directory, config, seed=len(request.param))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in OFFLINE_ENVIRONMENT.items():
            patch.setenv(key, value)
        reference = keras_hub.models.ResNetBackbone.from_preset(str(directory), **config.keras_hub_overrides())
    yield Ported(config, directory, values, reference)


def skipped_names(config: TinyResNet, values: dict[str, np.ndarray]) -> set[str]:
    return {name for name in values if name.endswith("num_batches_tracked") or name.startswith("fc.")}


def test_reference_is_keras_hub_timm_loader(ported: Ported) -> None:
    # The oracle really loaded the file: its stem kernel is timm's conv1.weight, permuted.
    kernel = np.asarray(ported.reference.get_layer("conv1_conv").kernel)
    np.testing.assert_array_equal(kernel, ported.values["conv1.weight"].transpose(2, 3, 1, 0))
    assert ported.reference.block_type == ported.config.backbone_config()["block_type"]


def test_plan_fills_every_weight_and_skips_only_the_documented(ported: Ported) -> None:
    backbone = fresh_backbone(ported.config)
    plan = mapper.make_plan(RULES, ported.directory, backbone)
    assert plan.ok, render_text(plan)
    assert plan.problems == ()
    assert plan.unused_sources == () and plan.unfilled_targets == ()
    assert {assignment.target for assignment in plan.assignments} == {weight.path for weight in backbone.weights}
    assert {skip.name for skip in plan.skips} == skipped_names(ported.config, ported.values)
    assert {skip.kind for skip in plan.skips} == {SkipKind.RULE}
    reasons = {skip.name: skip.reason for skip in plan.skips}
    assert reasons["fc.weight"].startswith(FC_REASON)
    assert reasons["layer1.0.bn1.num_batches_tracked"].startswith(COUNTER_REASON)
    shortcut = plan.assignment_for("stack1_block0_0_conv/kernel")
    assert shortcut is not None
    assert shortcut.source == "layer2.0.downsample.0.weight"
    assert [operation.describe() for operation in shortcut.operations] == ["transpose[2, 3, 1, 0]"]


def test_every_variable_is_bit_identical_to_keras_hub(ported: Ported) -> None:
    backbone = fresh_backbone(ported.config)
    before = variable_bytes(backbone)
    plan = mapper.transfer(RULES, ported.directory, backbone)
    assert plan.ok
    after = variable_bytes(backbone)
    # Every weight changed from its initial value (BatchNorm's initial ones included)...
    assert all(after[path] != before[path] for path in before)
    # ...to exactly what keras-hub's converter gives.
    assert_bit_identical(backbone, ported.reference)


def test_the_safetensors_file_itself_works_too(ported: Ported) -> None:
    backbone = fresh_backbone(ported.config)
    mapper.transfer(RULES, ported.directory / "model.safetensors", backbone)
    assert_bit_identical(backbone, ported.reference)


def test_report_names_the_skips_with_reasons(ported: Ported) -> None:
    plan = mapper.make_plan(RULES, ported.directory, fresh_backbone(ported.config))
    report = " ".join(render_text(plan, width=200).split())
    assert FC_REASON in report
    assert COUNTER_REASON in report
    assert "fc.weight" in report or "fc.{bias,weight}" in report


def test_headless_export_without_counters_plans_cleanly(ported: Ported) -> None:
    # The two skip rules are optional: an export with neither fc.* nor num_batches_tracked fits the file too.
    specs = VariableMap(
        TensorSpec(name, value.shape, str(value.dtype))
        for name, value in ported.values.items()
        if name not in skipped_names(ported.config, ported.values)
    )
    plan = mapper.make_plan(RULES, specs, fresh_backbone(ported.config))
    assert plan.ok, render_text(plan)
    assert plan.problems == () and plan.skips == ()


def _plan_errors(plan: Plan) -> dict[ProblemKind, list[str]]:
    found: dict[ProblemKind, list[str]] = {}
    for problem in plan.errors:
        found.setdefault(problem.kind, []).extend(problem.names)
    return found


def test_a_deeper_checkpoint_than_the_backbone_is_an_error_and_changes_nothing(ported: Ported, tmp_path: Path) -> None:
    # A checkpoint with one more block in the last stage than the backbone: its tensors have no target.
    config = ported.config
    deeper = TinyResNet(
        config.architecture, config.filters, (*config.blocks[:-1], config.blocks[-1] + 1), config.strides
    )
    write_timm_resnet(tmp_path / "deeper", deeper)
    backbone = fresh_backbone(config)
    before = variable_bytes(backbone)
    extra_block = f"layer{len(config.blocks)}.{config.blocks[-1]}"
    extra_target = f"stack{len(config.blocks) - 1}_block{config.blocks[-1]}_1_conv/kernel"
    with pytest.raises(PlanError, match=r"has \d+ errors; nothing was changed") as raised:
        mapper.transfer(RULES, tmp_path / "deeper", backbone)
    errors = _plan_errors(raised.value.plan)
    assert set(errors) == {ProblemKind.MISSING_TARGET}
    assert f"{extra_block}.conv1.weight" in errors[ProblemKind.MISSING_TARGET]
    messages = [problem.message for problem in raised.value.plan.errors]
    assert any(f"'{extra_block}.conv1.weight' maps to '{extra_target}'" in message for message in messages)
    assert variable_bytes(backbone) == before


def test_a_resnet_v2_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    # resnetv2_* names (stem.conv, stages.N.blocks.M, norm) are not covered: every tensor is reported unused.
    specs = VariableMap(
        [
            TensorSpec("stem.conv.weight", (64, 3, 7, 7), "float32"),
            TensorSpec("stages.0.blocks.0.norm1.weight", (64,), "float32"),
            TensorSpec("norm.weight", (64,), "float32"),
        ]
    )
    plan = mapper.make_plan(RULES, specs, fresh_backbone(CONFIGS["basic-resnet18"]))
    assert not plan.ok
    assert {entry.name for entry in plan.unused_sources} == set(specs)
    assert ProblemKind.UNUSED_SOURCE in _plan_errors(plan)
