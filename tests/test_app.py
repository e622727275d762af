"""The quantizer app, driven headless: set widget values, click, and check the library state they change."""

from __future__ import annotations

import re

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
    assert first[0] is app.switches["features_0_features_1"]  # the Quantize box sits on the layer's rows
    assert "Weights" in first[2].value and "<svg" in first[2].value
    assert ">features_1<" in first[2].value  # the Network Layer Name column (the fused ReLU)
    names = list(table["Optimized Layer Name"])
    activations_row = rows[names.index("features_0_features_1_Activations")].children
    assert rows[1].children[0] is activations_row[0] is app.switches["features_0_features_1"]  # one box, on each of its rows
    pool_row = rows[names.index("features_2_Activations")].children
    assert pool_row[0] not in app.switches.values()  # a layer that is not quantizable has no box
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


def test_the_table_histograms_grey_the_bits_the_type_cannot_represent():
    from dlqnb.core.numerics import MSBHistogram
    from dlqnb.ui.app import _msb_cell

    # bits 8 … -12 in 21 columns of 6 px; fraction length 3 represents 2^3 … 2^-3 (8 bits with the sign)
    svg = _msb_cell(MSBHistogram.of(torch.tensor([0.5, 2.0, 40.0])), 3, 8, -12, width=126)
    greyed = re.findall(r'<rect x="([\d.]+)" y="0" width="([\d.]+)" height="18" fill="rgba[^"]*"><title>not representable', svg)
    # 2^8 … 2^4 (5 columns) on the left, 2^-4 … 2^-12 (9 columns) on the right
    assert [(float(x), float(w)) for x, w in greyed] == [(0.0, 30.0), (72.0, 54.0)]
    assert svg.count('fill="#2171b5"') == 3  # the bars are still drawn, over the grey


def test_the_display_carries_the_widgets_and_a_static_view(tmp_path):
    app = make_app(tmp_path)
    app.calibrate()
    app.validate()
    bundle = app._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == app.widget.model_id
    page = bundle["text/html"]
    assert page.count("<tr class='dlqnb-layer-row") == len(app.quantizer.calibration_table)
    assert "Plotly.newPlot" in page and "LearnableParameterMemory(bytes)" in page
    assert page.count("<input type='checkbox' disabled checked") == 3 * len(app.switches)  # each layer's Weights, Bias and Activations rows
    # every view embeds plotly.js: shown again (its cell run again), the new output replaces the one that had it
    from plotly.offline import get_plotlyjs

    plotlyjs_start = get_plotlyjs()[:2000]
    assert plotlyjs_start in page and plotlyjs_start in app._repr_mimebundle_()["text/html"]


def test_error_analysis_shows_the_selected_layers_clipping_and_rounding(tmp_path):
    app = make_app(tmp_path)
    assert app.error_button.disabled  # nothing to analyse before calibrating
    app.calibrate()
    assert app.error_view.value == ""
    app.error_button.click()
    layer = "features_3_squeeze_features_3_squeeze_activation"
    app.select(layer)
    shown = app.error_view.value
    # exactly the selected layer's weights and activations rows, each with its dominant error
    expected = [name for name in app.quantizer.calibration_table["Optimized Layer Name"] if name.startswith(layer + "_") and not name.endswith("_Bias")]
    assert len(expected) == 2
    assert all(f">{name}<" in shown for name in expected)
    assert shown.count("</tr>") == 1 + len(expected)  # header and one row each
    assert re.search(r">(clipping|rounding|none)<", shown)
    assert "Why it loses accuracy" in app.to_html(include_plotlyjs=False)
    app.calibrate()  # new ranges: the old split no longer holds
    assert app.error_table is None and app.error_view.value == ""
