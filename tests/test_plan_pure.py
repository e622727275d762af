"""The plan is a pure function of values (network, statistics, options) and the only place that
decides types, codes, rounding and accumulator precision; the emulation reads only the plan."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from dlqnb import DLQuantizer
from dlqnb.calibration.file import read_calibration, write_calibration
from dlqnb.calibration.rows import CalibrationRow, calibration_rows, row_statistics
from dlqnb.core.numerics import FixedPointType
from dlqnb.core.targets import plan_library
from dlqnb.emulation.network import EmulatedLayer, QuantizedGlobalAveragePool
from dlqnb.plan import PlanOptions, build_plan, choose_types
from dlqnb.plan.builder import corrected_layer_plan

PLAN_DIR = Path(__file__).resolve().parent.parent / "dlqnb" / "plan"
FORBIDDEN = ("dlqnb.quantizer", "dlqnb.emulation", "dlqnb.evaluation", "dlqnb.deploy", "dlqnb.ui")


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(6, 3, 12, 12)


def calibrated(target: str, images: torch.Tensor, **kwargs) -> DLQuantizer:
    quantizer = DLQuantizer(small_net(), execution_environment=target, **kwargs)
    quantizer.calibrate(images, progress=False)
    return quantizer


def test_the_plan_package_imports_no_later_stage():
    for path in PLAN_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):  # TYPE_CHECKING blocks included: none allowed
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [name for name in names if name.startswith(FORBIDDEN)], f"{path.name} imports {names}"


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_build_plan_from_values_is_the_quantizers_plan(target, images):
    quantizer = calibrated(target, images)
    state = quantizer.calibration_state()
    rows = calibration_rows(quantizer.optimized, state.tensor_nodes)
    statistics = row_statistics(quantizer.optimized, state, quantizer._derivable, rows)
    plan = build_plan(quantizer.optimized, statistics, PlanOptions(target))
    reference = quantizer.plan()
    assert plan.nodes == reference.nodes and plan.quantize_after == reference.quantize_after and plan.pools == reference.pools
    for name, layer in plan.layers.items():
        assert torch.equal(layer.weight_codes, reference.layers[name].weight_codes)
        assert torch.equal(layer.bias, reference.layers[name].bias)
    assert plan.target_library == plan_library(target)


def test_types_come_from_the_type_choice(images):
    quantizer = calibrated("cpu", images)
    choice = choose_types(quantizer.optimized, quantizer._row_stats(), quantizer.plan_options())
    assert quantizer.tensor_types() == choice.activations
    assert quantizer.weight_fraction_lengths() == {name: t.fraction_length for name, t in choice.weights.items()}
    layer = quantizer.plan().layers["0_1_2"]
    assert layer.input_type == choice.activations["input_1"] and layer.weight_type == choice.weights["0_1_2"]
    assert layer.accumulator_type.fraction_length == layer.input_type.fraction_length + layer.weight_type.fraction_length
    assert layer.bias_type is layer.accumulator_type and layer.accumulator_type.word_length == 32


@pytest.mark.parametrize(("target", "rounding"), [("gpu", None), ("gpu", "half_even"), ("cpu", None)])
def test_one_corrected_layer_is_what_the_whole_corrected_plan_codes(target, rounding, images):
    quantizer = calibrated(target, images, per_channel_weights=True)
    name = "7"  # the linear layer: 4 output channels
    correction = (0.25, -0.125, 1e-3, 0.0)
    layer = corrected_layer_plan(quantizer.optimized, quantizer.plan(rounding), name, correction)
    whole = quantizer.with_bias_corrections({name: correction}).plan(rounding).layers[name]
    assert not torch.equal(whole.bias, quantizer.plan(rounding).layers[name].bias)  # the correction moved the bias
    assert (layer.bias_codes is None) == (target == "gpu")
    for field in dataclasses.fields(layer):
        mine, theirs = getattr(layer, field.name), getattr(whole, field.name)
        assert torch.equal(mine, theirs) if isinstance(mine, torch.Tensor) else mine == theirs, field.name
    with pytest.raises(ValueError, match="4 output channels"):
        corrected_layer_plan(quantizer.optimized, quantizer.plan(), name, correction[:3])
    with pytest.raises(KeyError, match="not a quantized layer"):
        corrected_layer_plan(quantizer.optimized, quantizer.with_excluded([name]).plan(), name, correction)


def test_plans_share_their_types_until_the_calibration_changes(images):
    quantizer = calibrated("cpu", images, exponent_scheme="histogram", per_channel_weights=True)
    types = quantizer.plan().types
    assert quantizer.with_excluded(["7"]).plan().types is types and quantizer.plan("half_away").types is types
    quantizer.per_channel_weights = False
    assert quantizer.plan().types is not types
    assert quantizer.plan().types == choose_types(quantizer.optimized, quantizer._row_stats(), quantizer.plan_options())
    quantizer.calibrate(images * 4, progress=False)  # wider ranges: other activation types
    assert quantizer.plan().types == choose_types(quantizer.optimized, quantizer._row_stats(), quantizer.plan_options())
    assert quantizer.plan().types.activations != types.activations


def test_the_fused_activation_decision_is_the_plans(images):
    gpu, cpu = calibrated("gpu", images), calibrated("cpu", images)
    assert "3_4" not in gpu.plan().layers and "clipped ReLU (ReLU6)" in gpu.plan().node("3_4").reason
    assert "3_4" in cpu.plan().layers and "5" in cpu.plan().pools  # global average pooling: int8 on "cpu"


def test_the_emulation_reads_rounding_and_precision_from_the_plan(images):
    quantizer = calibrated("cpu", images)
    plan = quantizer.plan(rounding="half_away")
    assert plan.rounding == "half_away" and all(layer.rounding == "half_away" for layer in plan.layers.values())
    assert plan.pools["5"].rounding == "half_even"  # ONNX Runtime's pooling kernel rounds, not a QuantizeLinear
    for name, layer in plan.layers.items():  # codes follow the target's rule whatever the activations do
        assert torch.equal(layer.weight_codes, quantizer.plan().layers[name].weight_codes)
    network = quantizer.quantize(rounding="half_away")
    emulated = {name: module for name, module in network.named_modules() if isinstance(module, EmulatedLayer)}
    assert {name: module.spec.rounding for name, module in emulated.items()} == {name: "half_away" for name in plan.layers}
    assert all(module.accumulate_dtype == plan.layers[name].accumulator_dtype for name, module in emulated.items())
    pool = next(module for module in network.modules() if isinstance(module, QuantizedGlobalAveragePool))
    assert pool.pool == plan.pools["5"]
    assert quantizer.plan(rounding="half_away") is plan  # kept per options


def test_per_channel_weights_follow_the_exponent_scheme(images):
    net = nn.Sequential(nn.Flatten(), nn.Linear(20000, 2)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.full((2, 20000), 0.01))
        net[1].weight[0, 0] = 1.0  # one rare outlier: the histogram scheme lets it saturate
    fractions = {}
    for scheme in ("minmax", "histogram"):
        quantizer = DLQuantizer(net, exponent_scheme=scheme, per_channel_weights=True)
        quantizer.calibrate(torch.rand(2, 20000), progress=False)
        fractions[scheme] = quantizer.weight_fraction_lengths()["1"]
        assert quantizer.plan().layers["1"].weight_type == FixedPointType(tuple(fractions[scheme]), axis=0)
    assert fractions["minmax"] == [6, 13] and fractions["histogram"] == [13, 13]  # 2**-7 <= 0.01 < 2**-6


def test_the_calibration_file_stores_no_types_and_old_files_still_load(images, tmp_path):
    quantizer = calibrated("cpu", images, per_channel_weights=True)
    path = tmp_path / "new.safetensors"
    quantizer.save(path)
    settings, _ = read_calibration(path)
    assert "types" not in settings
    old = tmp_path / "old.safetensors"  # as earlier versions wrote it: one 8-bit fraction length per row
    types = quantizer.quantization_types()
    write_calibration(old, quantizer.calibration_state(), {**{k: settings[k] for k in ("execution_environment", "exponent_scheme", "excluded_layers", "per_channel_weights", "network_fingerprint")}, "types": dict(zip(types["Optimized Layer Name"], map(int, types["FractionLength"])))})
    loaded = DLQuantizer.load(old, small_net())
    assert loaded.quantization_types().equals(types) and loaded.tensor_types() == quantizer.tensor_types()


def test_calibration_rows_name_and_parse_alike():
    for name in ("conv1_Weights", "fire2-squeeze1x1_Activations", "features_0_features_1_Bias"):
        assert CalibrationRow.parse(name).name == name
    assert CalibrationRow.parse("fire2-squeeze1x1_Activations") == CalibrationRow("fire2-squeeze1x1", "Activations")
    for bad in ("conv1", "conv1_weights", "_Bias"):
        with pytest.raises(ValueError, match="not a calibration row name"):
            CalibrationRow.parse(bad)
    with pytest.raises(ValueError):
        CalibrationRow("conv1", "Gradients")  # type: ignore[arg-type]
