"""The Deep Network Quantizer app in JupyterLab, built from ipywidgets and Plotly FigureWidgets.

``QuantizerApp(net, calibration_data, validation_data)`` shows:

* a **Calibrate** button with a progress bar (calibration runs batch by batch; the ranges widen as
  :meth:`DLQuantizer.calibrate` documents);
* the calibrated layers as a list, each with a **Quantize** switch (exclusion is honoured by
  quantize, validate and export) and the selected layer's **MSB heat map** of its weights, bias and
  activations, with each 8-bit type boxed;
* a **Validate** button showing the metric and memory table, a **Sensitivity** button ranking the
  quantized layers, and **Export** buttons for the calibration file and the QDQ ONNX model.

The widgets only call the library and show its results. Every button has a method of the same name
(``app.calibrate()``, ``app.validate()``, ...), which is what the buttons call and what tests drive.

Example:
    >>> import torch, torchvision
    >>> app = QuantizerApp(torchvision.models.squeezenet1_1(num_classes=5), torch.rand(4, 3, 64, 64))
    >>> app.calibrate()
    >>> app.select("features_0_features_1")
    >>> list(app.heatmap.layout.yaxis.ticktext)[0]
    'features_0_features_1_Weights'
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go
from torch import nn

from dlqnb.batches import count_batches, iter_batches
from dlqnb.plotting import calibration_heatmap, sensitivity_figure
from dlqnb.quantizer import DLQuantizer
from dlqnb.sensitivity import sensitivity_analysis
from dlqnb.validation import QuantizationOptions

__all__ = ["QuantizerApp"]


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
        self.layer_select = widgets.Select(options=[], description="Layer", rows=12, layout={"width": "100%"})
        self.switches = {
            name: widgets.Checkbox(value=True, description="Quantize", indent=False, layout={"width": "auto"})
            for name in self.quantizer.quantizable_layers
        }
        self.results = widgets.HTML()
        self.calibrate_button.on_click(lambda _: self.calibrate())
        self.validate_button.on_click(lambda _: self.validate())
        self.sensitivity_button.on_click(lambda _: self.sensitivity())
        self.export_calibration_button.on_click(lambda _: self.export_calibration())
        self.export_onnx_button.on_click(lambda _: self.export_onnx())
        self.layer_select.observe(lambda change: self.select(change["new"]) if change["new"] else None, names="value")
        for name, switch in self.switches.items():
            switch.observe(lambda change, name=name: self.set_quantize(name, change["new"]), names="value")
        switch_rows = [widgets.HBox([switch, widgets.Label(name)]) for name, switch in self.switches.items()]
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.calibrate_button, self.progress, self.status]),
                widgets.HBox(
                    [
                        widgets.VBox([self.layer_select, widgets.HTML("<b>Quantize switches</b>"), widgets.VBox(switch_rows, layout={"max_height": "260px", "overflow": "auto"})], layout={"width": "40%"}),
                        widgets.VBox([self.heatmap], layout={"width": "60%"}),
                    ]
                ),
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
        """Calibrate on the calibration data, batch by batch, updating the progress bar."""
        total = count_batches(self.calibration_data) or 1
        self.progress.max, self.progress.value = total, 0
        for images, labels in iter_batches(self.calibration_data):
            self.quantizer.calibrate([(images, labels)] if labels is not None else [images], progress=False)
            self.progress.value += 1
        layers = self.quantizer.quantizable_layers
        self.layer_select.options = layers
        self.status.value = f"Calibrated on {self.quantizer.num_calibration_samples_} images: {len(self.quantizer.calibration_table)} rows."
        for button in (self.export_calibration_button, self.export_onnx_button):
            button.disabled = False
        self.validate_button.disabled = self.sensitivity_button.disabled = self.validation_data is None
        if layers:
            self.layer_select.value = layers[0]

    def select(self, layer: str) -> None:
        """Show the MSB heat map of a layer's weights, bias and activations."""
        figure = calibration_heatmap(self.quantizer, layer)
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
