"""The quantizer app, driven headless: set widget values, click, and check the library state they change."""

from __future__ import annotations

import torch
import torchvision

from dlqnb.ui.app import QuantizerApp
from dlqnb.emulation.network import EmulatedLayer


def make_app(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(num_classes=5).eval()
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        labels = net(images).argmax(1)
    data = [(images[:3], labels[:3]), (images[3:], labels[3:])]
    return QuantizerApp(net, data, data, output_dir=tmp_path)


def test_calibrate_button_calibrates_and_fills_the_layer_table(tmp_path):
    app = make_app(tmp_path)
    assert not app.quantizer.is_calibrated and app.validate_button.disabled
    app.calibrate_button.click()
    assert app.quantizer.num_calibration_samples_ == 6
    assert app.progress.value == app.progress.max == 2
    assert not app.validate_button.disabled
    table = app.quantizer.calibration_table
    # one row per calibrated tensor, in the table's order, each name in full
    assert list(app.row_buttons) == list(table["Optimized Layer Name"])
    assert all(button.description == name for name, button in app.row_buttons.items())
    rows = app.layer_table.children[1:]
    assert len(rows) == len(table)
    first = rows[0].children
    assert first[0] is app.switches["features_0_features_1"]  # the Quantize box sits on the layer's Weights row
    assert "Weights" in first[2].value and "<svg" in first[2].value
    bias_row = rows[1].children
    assert not isinstance(bias_row[0], type(app.switches["features_0_features_1"]))  # one box per layer
    # the first layer is selected and its heat map shown: weights, bias and activations
    assert list(app.heatmap.layout.yaxis.ticktext) == [f"features_0_features_1_{k}" for k in ("Weights", "Bias", "Activations")]
    assert app.row_buttons["features_0_features_1_Bias"].button_style == "info"


def test_the_layer_table_costs_three_widgets_a_row(tmp_path):
    from ipywidgets.widgets.widget import _instances as live_widgets

    app = make_app(tmp_path)
    before = len(live_widgets)
    app.calibrate()
    created = len(live_widgets) - before  # each one is a comm_open message to the browser
    rows = len(app.row_buttons)
    # the row, its name button and its values: layouts and styles are shared by the whole column
    assert created <= 3 * rows + 12, f"{created} widgets for {rows} rows"


def test_calibrating_again_starts_over(tmp_path):
    app = make_app(tmp_path)
    app.calibrate()
    first = app.quantizer.calibration_table.copy()
    app.switches["features_0_features_1"].value = False
    app.calibrate_button.click()
    assert app.quantizer.num_calibration_samples_ == 6  # the same six images, not twelve
    assert app.quantizer.calibration_table.equals(first)
    assert "Calibrated on 6 images" in app.status.value
    assert app.quantizer.excluded_layers == {"features_0_features_1"}  # the Quantize boxes keep their state


def test_selecting_a_row_updates_the_heat_map(tmp_path):
    app = make_app(tmp_path)
    app.calibrate()
    layer = "features_12_expand3x3_features_12_expand3x3_activation"
    app.row_buttons[f"{layer}_Activations"].click()
    assert app.selected_layer == layer
    assert app.heatmap.layout.yaxis.ticktext[0] == f"{layer}_Weights"
    counts = app.quantizer.range_stats(f"{layer}_Weights").histogram.nonzero_counts()
    shown = {k: c[0] for k, c in zip(app.heatmap.data[0].x, app.heatmap.data[0].customdata[0]) if c[0]}
    assert shown == counts
    app.row_buttons["features_2_Activations"].click()  # a layer with only an activations row
    assert list(app.heatmap.layout.yaxis.ticktext) == ["features_2_Activations"]


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
