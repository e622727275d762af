"""The quantizer app, driven headless: set widget values, click, and check the library state they change."""

from __future__ import annotations

import torch
import torchvision

from dlqnb.app import QuantizerApp
from dlqnb.emulation import EmulatedLayer


def make_app(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(num_classes=5).eval()
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        labels = net(images).argmax(1)
    data = [(images[:3], labels[:3]), (images[3:], labels[3:])]
    return QuantizerApp(net, data, data, output_dir=tmp_path)


def test_calibrate_button_calibrates_and_fills_the_layer_list(tmp_path):
    app = make_app(tmp_path)
    assert not app.quantizer.is_calibrated and app.validate_button.disabled
    app.calibrate_button.click()
    assert app.quantizer.num_calibration_samples_ == 6
    assert app.progress.value == app.progress.max == 2
    assert len(app.layer_select.options) == 26 and not app.validate_button.disabled
    # the first layer is selected and its heat map shown: weights, bias and activations
    assert list(app.heatmap.layout.yaxis.ticktext) == [f"features_0_features_1_{k}" for k in ("Weights", "Bias", "Activations")]


def test_selecting_a_layer_updates_the_heat_map(tmp_path):
    app = make_app(tmp_path)
    app.calibrate()
    layer = "features_12_expand3x3_features_12_expand3x3_activation"
    app.layer_select.value = layer
    assert app.heatmap.layout.yaxis.ticktext[0] == f"{layer}_Weights"
    counts = app.quantizer.range_stats(f"{layer}_Weights").histogram.nonzero_counts()
    shown = {k: c[0] for k, c in zip(app.heatmap.data[0].x, app.heatmap.data[0].customdata[0]) if c[0]}
    assert shown == counts


def test_quantize_switch_excludes_the_layer_everywhere(tmp_path):
    app = make_app(tmp_path)
    app.calibrate()
    app.switches["features_0_features_1"].value = False
    assert "features_0_features_1" in app.quantizer.excluded_layers
    assert not isinstance(app.quantizer.quantize().get_submodule("features_0_features_1"), EmulatedLayer)
    app.switches["features_0_features_1"].value = True
    assert app.quantizer.excluded_layers == set()


def test_validate_sensitivity_and_export_buttons(tmp_path):
    app = make_app(tmp_path)
    app.calibrate()
    app.validate_button.click()
    assert "Floating-Point" in app.results.value and "LearnableParameterMemory(bytes)" in app.results.value
    app.sensitivity_button.click()
    assert len(app.sensitivity_chart.data[0].y) == 15  # the 15 most harmful of 26 layers
    app.export_calibration_button.click()
    app.export_onnx_button.click()
    assert (tmp_path / "quantizer_calibration.safetensors").stat().st_size > 0
    assert (tmp_path / "model_int8_gpu.onnx").stat().st_size > 0
