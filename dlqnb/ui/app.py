"""The Deep Network Quantizer app in JupyterLab, built from ipywidgets and Plotly FigureWidgets.

``QuantizerApp(net, calibration_data, validation_data)`` shows:

* a **Calibrate** button with a progress bar (calibration runs batch by batch; the ranges widen as
  :meth:`DLQuantizer.calibrate` documents);
* the **layer table** of the Deep Network Quantizer: one row per calibrated tensor with its name in
  full, Learnables/Activations, min, max and a small MSB histogram with its 8-bit type boxed, and a
  **Quantize** check box on each quantizable layer's Weights row (exclusion is honoured by quantize,
  validate and export); clicking a row shows its layer's large **MSB heat map** of weights, bias and
  activations;
* a **Validate** button showing the metric and memory table, a **Sensitivity** button ranking the
  quantized layers, and **Export** buttons for the calibration file and the QDQ ONNX model.

The widgets only call the library and show its results. Every button has a method of the same name
(``app.calibrate()``, ``app.validate()``, ...), which is what the buttons call and what tests drive.

Example:
    >>> import torch, torchvision
    >>> app = QuantizerApp(torchvision.models.squeezenet1_1(num_classes=5), torch.rand(4, 3, 64, 64))
    >>> app.calibrate()
    >>> app.row_buttons["features_3_squeeze_features_3_squeeze_activation_Bias"].click()
    >>> list(app.heatmap.layout.yaxis.ticktext)[0]
    'features_3_squeeze_features_3_squeeze_activation_Weights'
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from ipywidgets.widgets.widget_string import HTMLStyle
import plotly.graph_objects as go
from torch import nn

from dlqnb.core.batches import count_batches, iter_batches
from dlqnb.calibration.file import CalibrationState
from dlqnb.calibration.rows import CalibrationRow
from dlqnb.ui.plotting import calibration_heatmap, msb_sparkline, sensitivity_figure
from dlqnb.quantizer import DLQuantizer
from dlqnb.evaluation.sensitivity import sensitivity_analysis
from dlqnb.evaluation.validation import QuantizationOptions

__all__ = ["QuantizerApp"]

_CHECK_WIDTH = "90px"
_ROW_LAYOUT = {"flex": "0 0 auto", "min_height": "30px", "align_items": "center"}  # rows keep their height in the scrolled table
_TABLE_STYLE = (
    "<style>.dlqnb-row-name button, button.dlqnb-row-name {text-align: left; font-family: monospace;}"
    " .dlqnb-layer-row {border-bottom: 1px solid #eee;}</style>"
)


# The columns after the name: (header, width); one HTML widget per row holds them, to keep the widget count low.
_VALUE_COLUMNS = (("Learnables / Activations", "180px"), ("MinValue", "90px"), ("MaxValue", "90px"), ("MSB histogram", "130px"))
_VALUES_WIDTH = "500px"


def _spans(texts: list[str]) -> str:
    cells = "".join(f"<span style='display:inline-block;width:{width}'>{text}</span>" for text, (_, width) in zip(texts, _VALUE_COLUMNS))
    return f"<div style='white-space:nowrap'>{cells}</div>"


def _number(value: float) -> str:
    return "0" if value == 0 else f"{value:.5g}" if math.isfinite(value) else str(value)


class QuantizerApp:
    """An interactive quantizer for one network (see the module docstring).

    Args:
        net: The network to quantize.
        calibration_data: Data for :meth:`DLQuantizer.calibrate`.
        validation_data: Labelled data for validation and sensitivity (optional).
        execution_environment: ``"gpu"`` or ``"cpu"``.
        options: :class:`~dlqnb.QuantizationOptions` for validation.
        output_dir: Where the Export buttons write.
    """

    def __init__(
        self,
        net: nn.Module,
        calibration_data: Any,
        validation_data: Any = None,
        execution_environment: str = "gpu",
        options: QuantizationOptions | None = None,
        output_dir: str | os.PathLike[str] = ".",
    ) -> None:
        self.quantizer = DLQuantizer(net, execution_environment=execution_environment)
        self.calibration_data = calibration_data
        self.validation_data = validation_data
        self.options = options or QuantizationOptions()
        self.output_dir = Path(output_dir)
        self.heatmap = go.FigureWidget(layout={"title": "Calibrate, then select a layer", "height": 300})
        self.sensitivity_chart = go.FigureWidget(layout={"title": "Per-layer sensitivity", "height": 300})
        self.status = widgets.HTML("Not calibrated.")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="Calibration")
        self.calibrate_button = widgets.Button(description="Calibrate", button_style="primary", icon="play")
        self.validate_button = widgets.Button(description="Validate", disabled=True)
        self.sensitivity_button = widgets.Button(description="Sensitivity", disabled=True)
        self.export_calibration_button = widgets.Button(description="Export calibration file", disabled=True)
        self.export_onnx_button = widgets.Button(description="Export QDQ ONNX", disabled=True)
        self.layer_table = widgets.VBox([widgets.HTML("<i>Calibrate to fill the layer table.</i>")], layout={"max_height": "460px", "overflow": "auto"})
        self.layer_table.add_class("dlqnb-layer-table")
        self.row_buttons: dict[str, widgets.Button] = {}
        self.selected_layer: str | None = None
        self._check_layout = widgets.Layout(width=_CHECK_WIDTH)
        self.switches = {
            name: widgets.Checkbox(value=True, description="Quantize", indent=False, layout=self._check_layout)
            for name in self.quantizer.quantizable_layers
        }
        self.results = widgets.HTML()
        self.calibrate_button.on_click(lambda _: self.calibrate())
        self.validate_button.on_click(lambda _: self.validate())
        self.sensitivity_button.on_click(lambda _: self.sensitivity())
        self.export_calibration_button.on_click(lambda _: self.export_calibration())
        self.export_onnx_button.on_click(lambda _: self.export_onnx())
        for name, switch in self.switches.items():
            switch.observe(lambda change, name=name: self.set_quantize(name, change["new"]), names="value")
        self.widget = widgets.VBox(
            [
                widgets.HTML(_TABLE_STYLE),
                widgets.HBox([self.calibrate_button, self.progress, self.status]),
                self.layer_table,
                self.heatmap,
                widgets.HBox([self.validate_button, self.sensitivity_button, self.export_calibration_button, self.export_onnx_button]),
                self.results,
                self.sensitivity_chart,
            ]
        )

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # ------------------------------------------------------------------ actions (what the buttons call)
    def calibrate(self) -> None:
        """Calibrate on the calibration data, batch by batch, updating the progress bar.

        Each call starts over from no statistics, so pressing Calibrate twice does not count the same
        images twice (:meth:`DLQuantizer.calibrate` itself accumulates across calls).
        """
        total = count_batches(self.calibration_data) or 1
        self.progress.max, self.progress.value = total, 0
        self.status.value = "Calibrating..."
        self.quantizer.restore_calibration(CalibrationState.empty())
        for images, labels in iter_batches(self.calibration_data):
            self.quantizer.calibrate([(images, labels)] if labels is not None else [images], progress=False)
            self.progress.value += 1
        layers = self.quantizer.quantizable_layers
        self._fill_layer_table()
        self.status.value = f"Calibrated on {self.quantizer.num_calibration_samples_} images: {len(self.quantizer.calibration_table)} rows."
        for button in (self.export_calibration_button, self.export_onnx_button):
            button.disabled = False
        self.validate_button.disabled = self.sensitivity_button.disabled = self.validation_data is None
        if layers:
            self.select(layers[0])

    def _fill_layer_table(self) -> None:
        types = self.quantizer.quantization_types()
        histograms = {row: self.quantizer.range_stats(row).histogram for row in types["Optimized Layer Name"]}
        bits = [bit for h in histograms.values() for bit in h.nonzero_counts()] + list(types["MSB"]) + list(types["LSB"])
        high, low = max(bits) + 1, min(bits) - 1
        name_width = f"{max(len(row) for row in histograms) + 6}ch"  # wide enough for the longest name: never cut
        # A widget's layout and style are widgets of their own; one shared instance per column keeps a
        # 94-row table near 300 widgets instead of 800, so its messages reach the browser in one short burst.
        name_layout, values_layout, row_layout = widgets.Layout(width=name_width), widgets.Layout(width=_VALUES_WIDTH), widgets.Layout(**_ROW_LAYOUT)
        name_style, values_style = widgets.ButtonStyle(), HTMLStyle()
        header = widgets.HBox(
            [
                widgets.HTML("<b>Quantize</b>", layout=self._check_layout, style=values_style),
                widgets.HTML("<b>Optimized Layer Name</b>", layout=name_layout, style=values_style),
                widgets.HTML(_spans([f"<b>{title}</b>" for title, _ in _VALUE_COLUMNS]), layout=values_layout, style=values_style),
            ],
            layout=row_layout,
        )
        rows = [header]
        no_check = widgets.Box(layout=self._check_layout)  # one spacer, shown on every row without a box
        self.row_buttons = {}
        for row in types.itertuples(index=False):
            name, network_layer, kind, low_value, high_value = row[:5]
            layer = CalibrationRow.parse(name).layer
            button = widgets.Button(
                description=name, tooltip=f"{name} (network layer {network_layer})", layout=name_layout, style=name_style, _dom_classes=("dlqnb-row-name",)
            )
            button.on_click(lambda _, layer=layer: self.select(layer))
            self.row_buttons[name] = button
            check = self.switches[layer] if kind == "Weights" and layer in self.switches else no_check
            values = _spans([kind, _number(low_value), _number(high_value), msb_sparkline(histograms[name], int(row[5]), high, low)])
            line = widgets.HBox([check, button, widgets.HTML(values, layout=values_layout, style=values_style)], layout=row_layout, _dom_classes=("dlqnb-layer-row",))
            rows.append(line)
        self.layer_table.children = rows

    def select(self, layer: str) -> None:
        """Show the MSB heat map of a layer's weights, bias and activations (an optimized layer name, or a
        layer with only an Activations row)."""
        figure = calibration_heatmap(self.quantizer, layer)
        self.selected_layer = layer
        for name, button in self.row_buttons.items():
            style = "info" if CalibrationRow.parse(name).layer == layer else ""
            if button.button_style != style:  # one message per changed row, not per row
                button.button_style = style
        with self.heatmap.batch_update():
            self.heatmap.data = []
            self.heatmap.add_trace(figure.data[0])
            self.heatmap.layout = figure.layout

    def set_quantize(self, layer: str, quantize: bool) -> None:
        """Switch a layer's quantization on or off."""
        if quantize:
            self.quantizer.include(layer)
        else:
            self.quantizer.exclude(layer)
        if self.switches[layer].value != quantize:
            self.switches[layer].value = quantize
        self.status.value = f"{len(self.quantizer.quantized_layers())} layers quantized, {len(self.quantizer.excluded_layers)} kept in float."

    def validate(self) -> Any:
        """Validate and show the metric and memory table."""
        result = self.quantizer.validate(self.validation_data, self.options, progress=False)
        self.results.value = f"<p><b>Validated on {result.num_samples} images</b></p>" + result.metric_results.to_html(index=False)
        return result

    def sensitivity(self) -> Any:
        """Rank the quantized layers by harm and chart them."""
        table = sensitivity_analysis(self.quantizer, self.validation_data, self.options.metric_fcn[0], progress=False)
        figure = sensitivity_figure(table)
        with self.sensitivity_chart.batch_update():
            self.sensitivity_chart.data = []
            self.sensitivity_chart.add_trace(figure.data[0])
            self.sensitivity_chart.layout = figure.layout
        return table

    def export_calibration(self) -> Path:
        """Write the calibration file into the output folder."""
        path = self.output_dir / "quantizer_calibration.safetensors"
        self.quantizer.save(path)
        self.status.value = f"Wrote {html.escape(str(path))}."
        return path

    def export_onnx(self) -> Path:
        """Write the QDQ ONNX model into the output folder."""
        from dlqnb.deploy import export_qdq_onnx

        path = export_qdq_onnx(self.quantizer, self.output_dir / f"model_int8_{self.quantizer.execution_environment}.onnx")
        self.status.value = f"Wrote {html.escape(str(path))}."
        return path
