"""The Deep Network Quantizer app in JupyterLab, built from ipywidgets and Plotly FigureWidgets.

``QuantizerApp(net, calibration_data, validation_data)`` shows:

* a **Calibrate** button with a progress bar (calibration runs batch by batch; the ranges widen as
  :meth:`DLQuantizer.calibrate` documents);
* the **layer table** of the Deep Network Quantizer: one row per calibrated tensor with its
  Optimized Layer Name in full, its Network Layer Name, Learnables/Activations, min, max and a small
  MSB histogram with its 8-bit type boxed and the bits the type cannot represent greyed, and a
  **Quantize** check box on every row of a quantizable layer (one box per layer, shown on each of its
  rows; exclusion is honoured by quantize, validate and export); clicking a row shows its layer's
  large **MSB heat map** of weights, bias and activations;
* a **Validate** button showing the metric and memory table, a **Sensitivity** button ranking the
  quantized layers, and **Export** buttons for the calibration file and the QDQ ONNX model.

The widgets only call the library and show its results. Every button has a method of the same name
(``app.calibrate()``, ``app.validate()``, ...), which is what the buttons call and what tests drive.

Where no kernel is attached (a notebook exported to HTML, a batch report) the app shows its static
view: :meth:`QuantizerApp.to_html` (the layer table, the selected layer's heat map, the validation
table and the sensitivity chart, Plotly figures that need no network). Its display carries both, the
live widgets and this HTML; a frontend that has the widget state shows the widgets.

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
import re
from pathlib import Path
from typing import Any, NamedTuple

import ipywidgets as widgets
from ipywidgets.widgets.widget_string import HTMLStyle
import plotly.graph_objects as go
import plotly.io as pio
from torch import nn

from dlqnb.core.batches import count_batches, iter_batches
from dlqnb.core.numerics import MSBHistogram, representable_bits
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
_VALUE_COLUMNS = (
    ("Network Layer Name", "200px"), ("Learnables / Activations", "170px"), ("MinValue", "90px"), ("MaxValue", "90px"), ("MSB histogram", "130px"),
)
_VALUES_WIDTH = "690px"
_GREY = "rgba(120, 120, 120, 0.35)"
_STATIC_STYLE = (
    "<style>.dlqnb-app-static table {border-collapse: collapse; font-size: 12px}"
    " .dlqnb-app-static th, .dlqnb-app-static td {padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap}"
    " .dlqnb-app-static td.dlqnb-name {font-family: monospace; text-align: left !important} .dlqnb-app-static .dlqnb-selected {background: #e8f1fb}"
    " .dlqnb-app-static .dlqnb-table-scroll {max-height: 460px; overflow: auto}</style>"
)


def _spans(texts: list[str]) -> str:
    cells = "".join(f"<span style='display:inline-block;width:{width}'>{text}</span>" for text, (_, width) in zip(texts, _VALUE_COLUMNS))
    return f"<div style='white-space:nowrap'>{cells}</div>"


def _number(value: float) -> str:
    return "0" if value == 0 else f"{value:.5g}" if math.isfinite(value) else str(value)


class _TableRow(NamedTuple):
    name: str  # Optimized Layer Name (the row)
    layer: str  # its optimized layer
    network_layer: str
    kind: str  # Weights, Bias or Activations
    min_value: str
    max_value: str
    sparkline: str  # inline SVG


def _msb_cell(histogram: MSBHistogram, fraction_length: int, high: int, low: int, width: int = 120, height: int = 18) -> str:
    """The table's small MSB histogram: :func:`~dlqnb.ui.plotting.msb_sparkline` with the bits the type
    cannot represent greyed, as the large heat map greys them."""
    svg = msb_sparkline(histogram, fraction_length, high, low, width=width, height=height)
    msb, lsb = representable_bits(fraction_length)
    column = width / (high - low + 1)
    bands = [((high - min(msb, high)) * column, 0.0), (width, (high - max(lsb, low) + 1) * column)]  # (right edge, left edge)
    grey = "".join(
        f'<rect x="{left:.1f}" y="0" width="{right - left:.1f}" height="{height}" fill="{_GREY}"><title>not representable</title></rect>'
        for right, left in bands
        if right > left
    )
    cut = svg.index(">") + 1  # after the opening <svg ...>: the bands lie under the bars and the box
    return svg[:cut] + grey + svg[cut:]


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
        self.error_button = widgets.Button(description="Error analysis", disabled=True, tooltip="Split each tensor's quantization error into clipping and rounding")
        self.export_calibration_button = widgets.Button(description="Export calibration file", disabled=True)
        self.export_onnx_button = widgets.Button(description="Export QDQ ONNX", disabled=True)
        self.layer_table = widgets.VBox([widgets.HTML("<i>Calibrate to fill the layer table.</i>")], layout={"max_height": "460px", "overflow": "auto"})
        self.layer_table.add_class("dlqnb-layer-table")
        self.row_buttons: dict[str, widgets.Button] = {}
        self.selected_layer: str | None = None
        self._check_layout = widgets.Layout(width=_CHECK_WIDTH, flex="0 0 auto")
        self.switches = {
            name: widgets.Checkbox(value=True, description="Quantize", indent=False, layout=self._check_layout)
            for name in self.quantizer.quantizable_layers
        }
        self.results = widgets.HTML()
        self.sensitivity_table: Any = None  # the last sensitivity ranking (a DataFrame), for the static view
        self.error_table: Any = None  # the last clipping/rounding split (a DataFrame), shown beside the heat map
        self.error_view = widgets.HTML(layout={"min_width": "320px"})
        self.calibrate_button.on_click(lambda _: self.calibrate())
        self.validate_button.on_click(lambda _: self.validate())
        self.sensitivity_button.on_click(lambda _: self.sensitivity())
        self.error_button.on_click(lambda _: self.error_analysis())
        self.export_calibration_button.on_click(lambda _: self.export_calibration())
        self.export_onnx_button.on_click(lambda _: self.export_onnx())
        for name, switch in self.switches.items():
            switch.observe(lambda change, name=name: self.set_quantize(name, change["new"]), names="value")
        self.widget = widgets.VBox(
            [
                widgets.HTML(_TABLE_STYLE),
                widgets.HBox([self.calibrate_button, self.progress, self.status]),
                self.layer_table,
                widgets.HBox([self.heatmap, self.error_view]),
                widgets.HBox([self.validate_button, self.sensitivity_button, self.error_button, self.export_calibration_button, self.export_onnx_button]),
                self.results,
                self.sensitivity_chart,
            ]
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The live widgets and, for frontends without the widget state (exported HTML), :meth:`to_html`.

        A static view with a figure embeds plotly.js, so it draws offline on its own (an output shown
        earlier may have been replaced when its cell ran again).
        """
        bundle = dict(self.widget._repr_mimebundle_() or {})
        bundle["text/plain"] = f"QuantizerApp ({html.unescape(re.sub('<[^>]+>', '', self.status.value))})"
        # Plotly's own renderers embed plotly.js only once a figure is shown through them, which an app display is not
        has_figure = self.quantizer.is_calibrated or self.sensitivity_table is not None
        bundle["text/html"] = self.to_html(include_plotlyjs=has_figure)
        return bundle

    def to_html(self, include_plotlyjs: bool = True) -> str:
        """The app's static view: status, layer table (Quantize boxes shown, not clickable), the selected
        layer's MSB heat map, the validation table and the sensitivity chart, as they are now.

        Args:
            include_plotlyjs: Embed plotly.js (about 4.7 MB), so the HTML shows its figures on its own and
                offline; False where the page loads plotly.js already.

        Example:
            >>> import torch, torchvision
            >>> app = QuantizerApp(torchvision.models.squeezenet1_1(num_classes=5), torch.rand(2, 3, 64, 64))
            >>> app.calibrate()
            >>> page = app.to_html(include_plotlyjs=False)
            >>> page.count("<tr class='dlqnb-layer-row") == len(app.quantizer.calibration_table)
            True
        """
        parts = [_STATIC_STYLE, "<div class='dlqnb-app-static'>", f"<p><b>Deep Network Quantizer</b>: {self.status.value}</p>"]
        plotlyjs: bool | str = include_plotlyjs
        if self.quantizer.is_calibrated:
            parts.append(self._static_table())
            if self.selected_layer is not None:
                parts.append(self._figure_html(calibration_heatmap(self.quantizer, self.selected_layer), plotlyjs))
                plotlyjs = False  # once per page
                parts.append(self._error_html())
        else:
            parts.append("<p><i>Calibrate to fill the layer table.</i></p>")
        if self.results.value:
            parts.append(self.results.value)
        if self.sensitivity_table is not None:
            parts.append(self._figure_html(sensitivity_figure(self.sensitivity_table), plotlyjs))
        parts.append("</div>")
        return "\n".join(parts)

    @staticmethod
    def _figure_html(figure: go.Figure, include_plotlyjs: bool | str) -> str:
        return pio.to_html(figure, include_plotlyjs=include_plotlyjs, include_mathjax=False, full_html=False, default_width="100%", validate=False)

    def _static_table(self) -> str:
        header = "".join(f"<th>{title}</th>" for title in ("Quantize", "Optimized Layer Name", *(name for name, _ in _VALUE_COLUMNS)))
        lines = []
        for row in self._table_rows():
            switch = self.switches.get(row.layer)
            check = "" if switch is None else f"<input type='checkbox' disabled{' checked' if switch.value else ''} title='Quantize {html.escape(row.layer)}'>"
            selected = " dlqnb-selected" if row.layer == self.selected_layer else ""
            cells = [check, html.escape(row.name), html.escape(row.network_layer), row.kind, row.min_value, row.max_value, row.sparkline]
            lines.append(
                f"<tr class='dlqnb-layer-row{selected}'>"
                + "".join(f"<td{' class=dlqnb-name' if index == 1 else ''}>{cell}</td>" for index, cell in enumerate(cells))
                + "</tr>"
            )
        return f"<div class='dlqnb-table-scroll'><table><thead><tr>{header}</tr></thead><tbody>{''.join(lines)}</tbody></table></div>"

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
        self.error_table = None  # measured against the previous ranges
        for button in (self.export_calibration_button, self.export_onnx_button, self.error_button):
            button.disabled = False
        self.validate_button.disabled = self.sensitivity_button.disabled = self.validation_data is None
        if layers:
            self.select(layers[0])

    def _table_rows(self) -> list[_TableRow]:
        """The layer table's rows, as the widget table and the static view both show them."""
        types = self.quantizer.quantization_types()
        histograms = {row: self.quantizer.range_stats(row).histogram for row in types["Optimized Layer Name"]}
        bits = [bit for h in histograms.values() for bit in h.nonzero_counts()] + list(types["MSB"]) + list(types["LSB"])
        high, low = max(bits) + 1, min(bits) - 1
        rows = []
        for row in types.itertuples(index=False):
            name, network_layer, kind, low_value, high_value, fraction = row[:6]
            rows.append(
                _TableRow(
                    name, CalibrationRow.parse(name).layer, str(network_layer), str(kind),
                    _number(low_value), _number(high_value), _msb_cell(histograms[name], int(fraction), high, low),
                )
            )
        return rows

    def _fill_layer_table(self) -> None:
        rows = self._table_rows()
        name_width = f"{max(len(row.name) for row in rows) + 6}ch"  # wide enough for the longest name: never cut
        # A widget's layout and style are widgets of their own; one shared instance per column keeps a
        # 93-row table near 300 widgets instead of 800, so its messages reach the browser in one short burst.
        # Columns never shrink (a narrow notebook scrolls the table sideways rather than cutting names off).
        name_layout, values_layout = widgets.Layout(width=name_width, flex="0 0 auto"), widgets.Layout(width=_VALUES_WIDTH, flex="0 0 auto")
        row_layout = widgets.Layout(**_ROW_LAYOUT)
        name_style, values_style = widgets.ButtonStyle(), HTMLStyle()
        header = widgets.HBox(
            [
                widgets.HTML("<b>Quantize</b>", layout=self._check_layout, style=values_style),
                widgets.HTML("<b>Optimized Layer Name</b>", layout=name_layout, style=values_style),
                widgets.HTML(_spans([f"<b>{title}</b>" for title, _ in _VALUE_COLUMNS]), layout=values_layout, style=values_style),
            ],
            layout=row_layout,
        )
        lines = [header]
        no_check = widgets.Box(layout=self._check_layout)  # one spacer, shown on every row without a box
        self.row_buttons = {}
        for row in rows:
            button = widgets.Button(description=row.name, tooltip=row.name, layout=name_layout, style=name_style, _dom_classes=("dlqnb-row-name",))
            button.on_click(lambda _, layer=row.layer: self.select(layer))
            self.row_buttons[row.name] = button
            # The layer's one box, shown on each of its rows (views of one widget: they switch together).
            check = self.switches.get(row.layer, no_check)
            cells = [html.escape(row.network_layer), row.kind, row.min_value, row.max_value, row.sparkline]
            values = widgets.HTML(_spans(cells), layout=values_layout, style=values_style)
            lines.append(widgets.HBox([check, button, values], layout=row_layout, _dom_classes=("dlqnb-layer-row",)))
        self.layer_table.children = lines

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
        self.error_view.value = self._error_html()

    def error_analysis(self, data: Any = None) -> Any:
        """Split each weights and activations row's quantization error into clipping and rounding
        (:meth:`DLQuantizer.quantization_error`) and show the selected layer's beside its heat map.

        Args:
            data: Data to measure on (default: the calibration data; the button uses that).

        Returns:
            The table, one row per weights or activations row.
        """
        self.error_table = self.quantizer.quantization_error(self.calibration_data if data is None else data, progress=False)
        self.error_view.value = self._error_html()
        return self.error_table

    def _error_html(self) -> str:
        """The selected layer's rows of the error split, as HTML ("" before an error analysis or a selection)."""
        if self.error_table is None or self.selected_layer is None:
            return ""
        layers = self.error_table["Optimized Layer Name"].map(lambda name: CalibrationRow.parse(name).layer)
        rows = self.error_table[layers == self.selected_layer]
        if rows.empty:
            return f"<p><i>No weights or activations of {html.escape(self.selected_layer)} to analyse.</i></p>"
        title = "<p><b>Why it loses accuracy</b>: signal-to-quantization-noise ratios (dB)</p>"
        return title + rows.to_html(index=False, float_format=lambda value: f"{value:.1f}", classes="dlqnb-error-table")

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

    def sensitivity(self, data: Any = None) -> Any:
        """Rank the quantized layers by harm and chart them.

        Args:
            data: Labelled data to rank on (default: the validation data; the button uses that). Each
                layer costs one pass over it, so a few batches keep it quick.
        """
        table = sensitivity_analysis(self.quantizer, self.validation_data if data is None else data, self.options.metric_fcn[0], progress=False)
        self.sensitivity_table = table
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
