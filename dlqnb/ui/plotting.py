"""Plotly views of calibration results: MSB heat maps as the Deep Network Quantizer app draws them.

Everything here only reads results (histograms, tables, chosen types); nothing computes quantization.

A heat map has one row per tensor (weights, bias or activations of a layer) and one column per bit
position ``2**k``, most significant on the left as in a binary word. A cell's colour is the number of
logged values whose most significant bit is ``2**k`` (log scale, darker = more). The bits of the
chosen 8-bit type are boxed; bits outside it are greyed: values with their MSB left of the box
overflow (saturate), values right of it lose all their bits.

Example:
    >>> import torch
    >>> from dlqnb.core.numerics import MSBHistogram
    >>> fig = msb_heatmap({"seed": MSBHistogram.of(torch.tensor([0.03125, 2.1, 16.25]))}, {"seed": 3})
    >>> fig.data[0].type
    'heatmap'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from dlqnb.calibration.rows import CalibrationRow
from dlqnb.core.numerics import MSBHistogram, representable_bits
from dlqnb.evaluation.metrics import MEGABYTE

if TYPE_CHECKING:
    from dlqnb.evaluation.sensitivity import FloatLayerChoice
    from dlqnb.quantizer import DLQuantizer

__all__ = [
    "calibration_heatmap",
    "float_layer_tradeoff_figure",
    "msb_heatmap",
    "msb_sparkline",
    "prediction_comparison_figure",
    "pruning_progress_figure",
    "quantization_error_figure",
    "score_agreement_figure",
    "sensitivity_figure",
    "style_bit_table",
    "training_progress_figure",
    "use_offline_renderer",
]

_GREY = "rgba(120, 120, 120, 0.45)"
_BOX = "#d62728"


def use_offline_renderer() -> None:
    """Render Plotly figures for JupyterLab and for exported HTML, with no network.

    JupyterLab shows the Plotly MIME output; the HTML output next to it carries plotly.js once per
    notebook, so a notebook exported with nbconvert opens offline with working figures. (Plotly's own
    ``notebook`` renderer would also load MathJax from a CDN for every figure; dlqnb's does not.)
    """
    if "dlqnb_notebook" not in pio.renderers:
        pio.renderers["dlqnb_notebook"] = _OfflineNotebookRenderer()
    pio.renderers.default = "plotly_mimetype+dlqnb_notebook"


def _offline_notebook_renderer_class() -> type:
    from plotly.io._base_renderers import NotebookRenderer

    class OfflineNotebookRenderer(NotebookRenderer):
        """Plotly's notebook renderer (plotly.js embedded once) with no MathJax fetched from a CDN."""

        def to_mimebundle(self, fig_dict: dict) -> dict:
            html = pio.to_html(
                fig_dict,
                config=self.config,
                auto_play=self.auto_play,
                include_plotlyjs=False,  # activate() embedded plotly.js once for the notebook
                include_mathjax=False,
                full_html=False,
                animation_opts=self.animation_opts,
                default_width="100%",
                default_height=525,
                validate=False,
            )
            return {"text/html": html}

    return OfflineNotebookRenderer


def _OfflineNotebookRenderer() -> Any:  # noqa: N802 - builds the renderer lazily (plotly internals)
    return _offline_notebook_renderer_class()(connected=False)


def _bit_label(k: int) -> str:
    return f"2<sup>{k}</sup>"


def msb_heatmap(
    histograms: Mapping[str, MSBHistogram],
    fraction_lengths: Mapping[str, int] | None = None,
    word_length: int = 8,
    title: str = "MSB counts per bit position",
) -> go.Figure:
    """Heat map of MSB counts, one row per named histogram, with each row's type boxed.

    Args:
        histograms: Row label → MSB histogram.
        fraction_lengths: Row label → fraction length of the row's type; rows left out get no box.
        word_length: Word length of the types.
        title: Figure title.

    Returns:
        A Plotly figure (one heatmap trace; boxes and grey bands as layout shapes).
    """
    if not histograms:
        raise ValueError("msb_heatmap needs at least one histogram")
    fraction_lengths = fraction_lengths or {}
    labels = list(histograms)
    present = [k for h in histograms.values() for k in h.nonzero_counts()]
    bounds = [bit for label in labels if label in fraction_lengths for bit in representable_bits(fraction_lengths[label], word_length)]
    low = min(present + bounds, default=-8) - 1
    high = max(present + bounds, default=8) + 1
    bits = list(range(high, low - 1, -1))

    z, text, custom = [], [], []
    for label in labels:
        histogram = histograms[label]
        counts = histogram.nonzero_counts()
        fraction = fraction_lengths.get(label)
        if fraction is None:
            type_text, overflow, underflow = "none", "", ""
        else:
            msb, lsb = representable_bits(fraction, word_length)
            type_text = f"2^{msb} … 2^{lsb} (fraction length {fraction})"
            overflow, underflow = histogram.overflow(fraction, word_length), histogram.underflow(fraction, word_length)
        z.append([math.log10(counts[k]) if counts.get(k) else None for k in bits])
        text.append([str(counts.get(k, 0)) for k in bits])
        custom.append([[counts.get(k, 0), type_text, overflow, underflow, histogram.zeros, label] for k in bits])

    peak = max((value for row in z for value in row if value is not None), default=0.0)
    ticks = list(range(0, int(math.floor(peak)) + 1))
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=bits,
            y=list(range(len(labels))),
            customdata=custom,
            text=text,
            colorscale=[[0.0, "#c6dbef"], [0.5, "#4292c6"], [1.0, "#08306b"]],  # a count of 1 stays visible
            zmin=0,
            zmax=max(peak, 1.0),
            xgap=1,
            ygap=2,
            colorbar={"title": "MSB count", "tickvals": ticks, "ticktext": [f"{10**t:,}" for t in ticks]},
            hovertemplate=(
                "%{customdata[5]}<br>bit 2^%{x}: %{customdata[0]} values<br>type: %{customdata[1]}"
                "<br>overflow: %{customdata[2]}<br>underflow: %{customdata[3]}<br>zeros: %{customdata[4]}<extra></extra>"
            ),
        )
    )
    shapes = []
    for row, label in enumerate(labels):
        if label not in fraction_lengths:
            continue
        msb, lsb = representable_bits(fraction_lengths[label], word_length)
        y0, y1 = row - 0.5, row + 0.5
        shapes.append({"type": "rect", "x0": high + 0.5, "x1": msb + 0.5, "y0": y0, "y1": y1, "fillcolor": _GREY, "line": {"width": 0}, "layer": "above"})
        shapes.append({"type": "rect", "x0": lsb - 0.5, "x1": low - 0.5, "y0": y0, "y1": y1, "fillcolor": _GREY, "line": {"width": 0}, "layer": "above"})
        shapes.append({"type": "rect", "x0": msb + 0.5, "x1": lsb - 0.5, "y0": y0, "y1": y1, "line": {"color": _BOX, "width": 2}, "layer": "above"})
    figure.update_layout(
        title=title,
        shapes=shapes,
        height=140 + 46 * len(labels),
        margin={"l": 20, "r": 20, "t": 60, "b": 50},
        plot_bgcolor="white",
    )
    figure.update_xaxes(
        autorange="reversed", tickvals=bits, ticktext=[_bit_label(k) for k in bits], title="bit position of the MSB", showgrid=False
    )
    figure.update_yaxes(tickvals=list(range(len(labels))), ticktext=labels, autorange="reversed", showgrid=False, automargin=True)
    return figure


def msb_sparkline(
    histogram: MSBHistogram, fraction_length: int | None, high: int, low: int, word_length: int = 8, width: int = 120, height: int = 18
) -> str:
    """A small inline SVG of one row's MSB counts (bits ``high`` … ``low``, most significant left) with
    its 8-bit type boxed, as a table cell shows it; works offline, in HTML exports too.

    Example:
        >>> import torch
        >>> svg = msb_sparkline(MSBHistogram.of(torch.tensor([0.5, 2.0])), 3, 8, -12)
        >>> svg.startswith("<svg") and svg.count("<rect") == 3  # two bars and the box
        True
    """
    counts = histogram.nonzero_counts()
    bits = list(range(high, low - 1, -1))
    column = width / len(bits)
    peak = math.log10(1 + max(counts.values(), default=1))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for index, bit in enumerate(bits):
        if counts.get(bit):
            bar = max(1.0, (height - 2) * math.log10(1 + counts[bit]) / peak)
            parts.append(
                f'<rect x="{index * column:.1f}" y="{height - 1 - bar:.1f}" width="{max(column - 0.5, 0.5):.1f}" '
                f'height="{bar:.1f}" fill="#2171b5"><title>2^{bit}: {counts[bit]}</title></rect>'
            )
    if fraction_length is not None:
        msb, lsb = representable_bits(fraction_length, word_length)
        left, right = (high - min(msb, high)) * column, (high - max(lsb, low) + 1) * column
        parts.append(f'<rect x="{left:.1f}" y="0.5" width="{right - left:.1f}" height="{height - 1}" fill="none" stroke="{_BOX}" stroke-width="1"/>')
    parts.append("</svg>")
    return "".join(parts)


def _rows_for(quantizer: DLQuantizer, rows: str | Sequence[str] | None) -> list[str]:
    names = list(quantizer.calibration_table["Optimized Layer Name"])
    if rows is None:
        rows = CalibrationRow.parse(names[0]).layer
    if isinstance(rows, str):
        if rows in names:
            return [rows]
        grouped = [row.name for row in CalibrationRow.of_layer(rows) if row.name in names]
        if grouped:
            return grouped
        raise KeyError(f"no calibration row or optimized layer named {rows!r}")
    missing = [row for row in rows if row not in names]
    if missing:
        raise KeyError(f"no calibration rows named {missing}")
    return list(rows)


def calibration_heatmap(quantizer: DLQuantizer, rows: str | Sequence[str] | None = None, title: str | None = None) -> go.Figure:
    """MSB heat map of calibration-table rows with the 8-bit type the quantizer chose for each.

    Args:
        quantizer: A calibrated :class:`~dlqnb.DLQuantizer`.
        rows: An optimized layer name (its Weights, Bias and Activations rows), one row name
            (``Optimized Layer Name``), a list of row names, or None for the first layer.
        title: Figure title (default: names the rows' layer).

    Example:
        >>> import torch, torchvision
        >>> from dlqnb import DLQuantizer
        >>> q = DLQuantizer(torchvision.models.squeezenet1_1(num_classes=5))
        >>> _ = q.calibrate(torch.rand(2, 3, 64, 64), progress=False)
        >>> list(calibration_heatmap(q, "features_0_features_1").layout.yaxis.ticktext)
        ['features_0_features_1_Weights', 'features_0_features_1_Bias', 'features_0_features_1_Activations']
    """
    names = _rows_for(quantizer, rows)
    types = quantizer.quantization_types().set_index("Optimized Layer Name")
    histograms = {name: quantizer.range_stats(name).histogram for name in names}
    fractions = {name: int(types.loc[name, "FractionLength"]) for name in names}
    return msb_heatmap(histograms, fractions, title=title or f"MSB counts: {', '.join(names) if len(names) < 2 else CalibrationRow.parse(names[0]).layer}")


def training_progress_figure(info: pd.DataFrame, widget: bool = False) -> go.Figure:
    """Accuracy and loss per iteration from a training-info table (MATLAB's training-progress plot).

    Args:
        info: The table :func:`dlqnb.training.train.train_network` returns.
        widget: Return a ``go.FigureWidget`` that training updates live.
    """
    from plotly.subplots import make_subplots

    base = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=("Accuracy (%)", "Loss"))
    validated = info.dropna(subset=["ValidationAccuracy"]) if len(info) else info
    traces = [
        (info["Iteration"], info["TrainingAccuracy"] * 100, "training", "#1f77b4", "lines", 1),
        (validated["Iteration"], validated["ValidationAccuracy"] * 100, "validation", "#333333", "lines+markers", 1),
        (info["Iteration"], info["TrainingLoss"], "training", "#ff7f0e", "lines", 2),
        (validated["Iteration"], validated["ValidationLoss"], "validation", "#333333", "lines+markers", 2),
    ]
    for x, y, name, color, mode, row in traces:
        base.add_trace(
            go.Scatter(x=list(x), y=list(y), name=f"{name} {'accuracy' if row == 1 else 'loss'}", mode=mode, line={"color": color, "dash": "dash" if name == "validation" else "solid"}),
            row=row,
            col=1,
        )
    base.update_layout(height=480, title="Training progress", margin={"t": 70})
    base.update_xaxes(title="Iteration", row=2, col=1)
    return go.FigureWidget(base) if widget else base


def style_bit_table(table: pd.DataFrame, fraction_length: int | None = None, word_length: int = 8) -> Any:
    """The *Quantization of Deep Neural Networks* view of :func:`dlqnb.core.numerics.bit_table`: each value's MSB in yellow, the MSB
    counts per column in green, and, given a type, the bits outside it greyed.

    Returns:
        A pandas ``Styler`` (renders in notebooks and exported HTML).
    """
    bit_columns = [c for c in table.columns if c.startswith("2^")]
    counts = {c: int(sum(table["MSB"] == int(c[2:]))) for c in bit_columns}
    shown = pd.concat([table, pd.DataFrame([{"Value": "MSB count", **counts, "MSB": ""}])], ignore_index=True)
    outside: set[str] = set()
    if fraction_length is not None:
        msb, lsb = representable_bits(fraction_length, word_length)
        outside = {c for c in bit_columns if not lsb <= int(c[2:]) <= msb}

    def colour(row: pd.Series) -> list[str]:
        styles = []
        for column in shown.columns:
            if row.name == len(shown) - 1:
                styles.append("background-color: #b7e4b0; font-weight: bold" if column in counts and counts[column] else "")
            elif column in bit_columns and row["MSB"] != "" and row["MSB"] is not None and int(column[2:]) == row["MSB"]:
                styles.append("background-color: #ffe45c; font-weight: bold")
            elif column in outside:
                styles.append("color: #aaaaaa; background-color: #eeeeee")
            else:
                styles.append("")
        return styles

    return shown.style.apply(colour, axis=1).hide(axis="index")


def prediction_comparison_figure(image: Any, class_names: Sequence[str], probabilities: Mapping[str, Sequence[float]], title: str = "Predictions") -> go.Figure:
    """An image beside horizontal bars of class probabilities, one bar series per implementation
    (MATLAB's ``barh`` figure: MATLAB single against the int8 code).

    Args:
        image: H×W×3 uint8 image.
        class_names: Names of the classes, in score order.
        probabilities: Legend label → probabilities per class.
        title: Figure title.
    """
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], horizontal_spacing=0.2)
    figure.add_trace(go.Image(z=image), row=1, col=1)
    for label, values in probabilities.items():
        figure.add_trace(go.Bar(x=list(values), y=list(class_names), orientation="h", name=label), row=1, col=2)
    figure.update_xaxes(visible=False, row=1, col=1)
    figure.update_yaxes(visible=False, row=1, col=1)
    figure.update_xaxes(title="Probability", range=[0, 1.1], row=1, col=2)
    figure.update_layout(title=title, barmode="group", height=420, legend={"orientation": "h", "y": -0.2})
    return figure


def score_agreement_figure(float_scores: Any, quantized_scores: Any, class_names: Sequence[str] | None = None, title: str | None = None) -> go.Figure:
    """Each image's class scores from the float network (x) against the quantized network's (y), one
    colour per class, beside the diagonal where the two agree exactly.

    Args:
        float_scores: N×K scores of the float network (a tensor or array).
        quantized_scores: N×K scores of the quantized network on the same images.
        class_names: K class names for the legend (default ``class 0``, ``class 1``, ...).
        title: Figure title (default: how many images keep their top-1 class).

    Example:
        >>> import torch
        >>> fig = score_agreement_figure(torch.tensor([[2.0, 1.0], [0.5, 1.5]]), torch.tensor([[2.0, 1.25], [1.0, 0.75]]), ["cap", "cube"])
        >>> fig.layout.title.text
        'Float vs quantized scores: top-1 class agrees on 1 of 2 images'
    """
    reference = [[float(v) for v in row] for row in float_scores]
    quantized = [[float(v) for v in row] for row in quantized_scores]
    if len(reference) != len(quantized) or any(len(a) != len(b) for a, b in zip(reference, quantized)):
        raise ValueError("float_scores and quantized_scores must have the same N×K shape")
    classes = len(reference[0]) if reference else 0
    names = list(class_names) if class_names is not None else [f"class {k}" for k in range(classes)]
    if len(names) != classes:
        raise ValueError(f"class_names has {len(names)} names for {classes} score columns")
    agree = sum(max(range(classes), key=a.__getitem__) == max(range(classes), key=b.__getitem__) for a, b in zip(reference, quantized))
    figure = go.Figure()
    for k, name in enumerate(names):
        figure.add_trace(
            go.Scatter(
                x=[row[k] for row in reference], y=[row[k] for row in quantized], mode="markers", name=name,
                customdata=list(range(len(reference))), hovertemplate=f"image %{{customdata}}, {name}<br>float %{{x:.4g}}<br>quantized %{{y:.4g}}<extra></extra>",
            )
        )
    values = [v for row in reference + quantized for v in row] or [0.0]
    low, high = min(values), max(values)
    figure.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", line={"dash": "dash", "color": "grey"}, name="equal", hoverinfo="skip"))
    figure.update_layout(
        title=title or f"Float vs quantized scores: top-1 class agrees on {agree} of {len(reference)} images",
        xaxis_title="float score", yaxis_title="quantized score", height=420,
    )
    return figure


def pruning_progress_figure(history: pd.DataFrame) -> go.Figure:
    """Validation accuracy, learnable parameters and FLOPs per prune → fine-tune iteration.

    Args:
        history: Columns ``Iteration``, ``ValidationAccuracy``, ``Parameters``, ``FLOPs``.
    """
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=3, subplot_titles=("Validation accuracy (%)", "Learnable parameters", "Multiply-accumulates"))
    for column, (key, scale) in enumerate((("ValidationAccuracy", 100), ("Parameters", 1), ("FLOPs", 1)), start=1):
        figure.add_trace(go.Scatter(x=list(history["Iteration"]), y=list(history[key] * scale), mode="lines+markers", showlegend=False), row=1, col=column)
        figure.update_xaxes(title="Iteration", dtick=1, row=1, col=column)
    figure.update_layout(title="Prune → fine-tune", height=360)
    return figure


def sensitivity_figure(table: pd.DataFrame, top: int = 15) -> go.Figure:
    """Horizontal bars of the most harmful layers from :func:`dlqnb.evaluation.sensitivity.sensitivity_analysis`."""
    shown = table.head(top).iloc[::-1]
    figure = go.Figure(
        go.Bar(
            x=list(shown["OutputError"]),
            y=list(shown["Layer"]),
            orientation="h",
            customdata=list(zip(shown["MetricOutput"], shown["Harm"])),
            hovertemplate="%{y}<br>output error %{x:.4f}<br>metric %{customdata[0]:.4f}, harm %{customdata[1]:.4f}<extra></extra>",
        )
    )
    figure.update_layout(title="Per-layer sensitivity (most harmful at the top)", xaxis_title="relative output error", height=120 + 24 * len(shown), margin={"l": 20})
    figure.update_yaxes(automargin=True)
    return figure


def float_layer_tradeoff_figure(choice: FloatLayerChoice) -> go.Figure:
    """Accuracy against learnable memory as layers are kept in float, from
    :func:`dlqnb.evaluation.sensitivity.choose_float_layers`; the chosen point is marked, the
    acceptable accuracy drawn as a dashed line.

    Example:
        >>> import pandas as pd
        >>> from dlqnb.evaluation.sensitivity import FloatLayerChoice
        >>> curve = pd.DataFrame({"num_float_layers": [0, 1], "float_layers": [(), ("conv1",)], "accuracy": [0.8, 0.95],
        ...     "accuracy_drop": [0.15, 0.0], "learnable_memory_bytes": [1000, 1300], "memory_reduction": [0.75, 0.675],
        ...     "meets_target": [False, True]})
        >>> figure = float_layer_tradeoff_figure(FloatLayerChoice(("conv1",), 0.95, 0.95, 0.01, True, curve, pd.DataFrame()))
        >>> list(figure.data[1].x), list(figure.data[1].y)
        ([1300], [0.95])
    """
    curve = choice.trade_off
    memory = list(curve["learnable_memory_bytes"])
    labels = [", ".join(layers) or "(none)" for layers in curve["float_layers"]]
    figure = go.Figure(
        go.Scatter(
            x=memory,
            y=list(curve["accuracy"]),
            mode="lines+markers+text",
            text=[str(n) for n in curve["num_float_layers"]],
            textposition="top center",
            customdata=list(zip(labels, curve["memory_reduction"])),
            hovertemplate="%{customdata[0]} in float<br>accuracy %{y:.4f}<br>%{x:,} bytes (%{customdata[1]:.1%} smaller)<extra></extra>",
            name="layers in float",
        )
    )
    chosen = choice.chosen
    figure.add_trace(
        go.Scatter(
            x=[chosen["learnable_memory_bytes"]],
            y=[chosen["accuracy"]],
            mode="markers",
            marker={"symbol": "star", "size": 16, "color": _BOX},
            name=f"chosen: {len(choice.layers)} layer(s) in float",
        )
    )
    figure.add_hline(y=choice.float_accuracy - choice.max_accuracy_drop, line_dash="dash", line_color="grey", annotation_text="acceptable")
    figure.add_hline(y=choice.float_accuracy, line_dash="dot", line_color="green", annotation_text="float")
    figure.update_layout(
        title="Accuracy against learnable memory as layers are kept in float",
        xaxis_title="learnable parameter memory (bytes)",
        yaxis_title="accuracy",
        height=420,
    )
    return figure


def quantization_error_figure(table: pd.DataFrame) -> go.Figure:
    """Grouped bars per row of :func:`dlqnb.evaluation.quantization_error.quantization_error`: total,
    clipping and rounding SQNR in dB (higher is better; a component without noise has no bar).

    Example:
        >>> table = pd.DataFrame({"Optimized Layer Name": ["conv1_Activations"], "SQNR(dB)": [20.0],
        ...     "ClippingSQNR(dB)": [21.0], "RoundingSQNR(dB)": [float("inf")], "Dominant": ["clipping"]})
        >>> [trace.name for trace in quantization_error_figure(table).data], quantization_error_figure(table).data[2].y
        (['total', 'clipping', 'rounding'], (None,))
    """
    names = list(table["Optimized Layer Name"])
    figure = go.Figure()
    for column, label in (("SQNR(dB)", "total"), ("ClippingSQNR(dB)", "clipping"), ("RoundingSQNR(dB)", "rounding")):
        values = [float(v) if math.isfinite(v) else None for v in table[column]]
        figure.add_trace(
            go.Bar(
                x=names,
                y=values,
                name=label,
                customdata=list(table["Dominant"]),
                hovertemplate="%{x}<br>" + label + " SQNR %{y:.1f} dB<br>dominant: %{customdata}<extra></extra>",
            )
        )
    figure.update_layout(
        barmode="group",
        title="Quantization error per tensor: clipping against rounding (SQNR, higher is better)",
        yaxis_title="SQNR (dB)",
        height=420,
    )
    figure.update_xaxes(tickangle=-45, automargin=True)
    return figure


def recipe_pareto_figure(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Accuracy against learnable memory and against int8 latency, one marker per recipe, the Pareto
    front joined by a line: the view of :func:`dlqnb.recipes.compare_recipes`' table.

    Left: accuracy against learnable memory, coloured by latency (recipes with the same memory and
    accuracy share one marker, its hover lists them all). Right, where latency was measured: accuracy
    against latency. Recipes on the Pareto front (the table's ``pareto`` column) are drawn as diamonds
    and joined in order of the panel's x; recipes that failed are left out and counted in the title.

    Args:
        table: A ``compare_recipes`` table (columns ``recipe``, ``accuracy``, ``memory_bytes``,
            ``latency_ms``, ``pareto``; ``error`` optional).
        title: The figure's title (default: how many recipes, and how many on the front).

    Raises:
        ValueError: A column is missing.

    Example:
        >>> import pandas as pd
        >>> table = pd.DataFrame({"recipe": ["a", "b"], "accuracy": [0.9, 0.8], "memory_bytes": [400, 100],
        ...                       "latency_ms": [3.0, 2.0], "pareto": [True, True]})
        >>> [trace.name for trace in recipe_pareto_figure(table).data]
        ['recipes', 'Pareto front', 'recipes', 'Pareto front']
    """
    from plotly.subplots import make_subplots

    missing = [c for c in ("recipe", "accuracy", "memory_bytes", "latency_ms", "pareto") if c not in table.columns]
    if missing:
        raise ValueError(f"recipe_pareto_figure needs a compare_recipes table; the columns {missing} are missing")
    failed = table["accuracy"].isna()
    shown = table[~failed]
    timed = shown["latency_ms"].notna().any()
    figure = make_subplots(
        rows=1, cols=2 if timed else 1, shared_yaxes=True, horizontal_spacing=0.06,
        subplot_titles=("Accuracy vs learnable memory", "Accuracy vs int8 latency") if timed else ("Accuracy vs learnable memory",),
    )

    def latency_text(value: float) -> str:
        return f"{value:.3g} ms" if value == value else "not measured"

    # one marker per (memory, accuracy): recipes that quantize alike land on the same spot
    groups = list(shown.groupby(["memory_bytes", "accuracy"], sort=False))
    memory_mb = [memory / MEGABYTE for (memory, _), _ in groups]
    accuracy = [100 * value for (_, value), _ in groups]
    hover = [
        "<br>".join(f"{r['recipe']}: {latency_text(r['latency_ms'])}" for _, r in group.iterrows())
        + f"<br>accuracy {100 * value:.4g} %, memory {memory / MEGABYTE:.4g} MB"
        for (memory, value), group in groups
    ]
    on_front = [bool(group["pareto"].any()) for _, group in groups]
    marker: dict[str, Any] = {"size": 13, "symbol": ["diamond" if front else "circle" for front in on_front], "line": {"width": 1, "color": "black"}}
    if timed:
        marker.update(color=[group["latency_ms"].min() for _, group in groups], colorscale="Viridis", reversescale=True, showscale=True,
                      colorbar={"title": "latency (ms)", "x": 1.02})
    figure.add_trace(go.Scatter(x=memory_mb, y=accuracy, mode="markers", name="recipes", marker=marker, text=hover,
                                hovertemplate="%{text}<extra></extra>", showlegend=False), row=1, col=1)
    front = shown[shown["pareto"].astype(bool)]
    along_memory = front.sort_values(["memory_bytes", "accuracy"])
    figure.add_trace(go.Scatter(x=list(along_memory["memory_bytes"] / MEGABYTE), y=list(100 * along_memory["accuracy"]), mode="lines",
                                name="Pareto front", line={"dash": "dash", "color": _BOX}, hoverinfo="skip"), row=1, col=1)
    figure.update_xaxes(title="learnable memory (MB, 2^20 bytes)", row=1, col=1)
    if timed:
        figure.add_trace(go.Scatter(
            x=list(shown["latency_ms"]), y=list(100 * shown["accuracy"]), mode="markers", name="recipes", showlegend=False,
            marker={"size": 11, "symbol": ["diamond" if p else "circle" for p in shown["pareto"]], "line": {"width": 1, "color": "black"}},
            text=[f"{r['recipe']}<br>accuracy {100 * r['accuracy']:.4g} %, memory {r['memory_bytes'] / MEGABYTE:.4g} MB, {latency_text(r['latency_ms'])}"
                  for _, r in shown.iterrows()],
            hovertemplate="%{text}<extra></extra>"), row=1, col=2)
        along_latency = front.dropna(subset=["latency_ms"]).sort_values(["latency_ms", "accuracy"])
        figure.add_trace(go.Scatter(x=list(along_latency["latency_ms"]), y=list(100 * along_latency["accuracy"]), mode="lines",
                                    name="Pareto front", line={"dash": "dash", "color": _BOX}, hoverinfo="skip", showlegend=False), row=1, col=2)
        figure.update_xaxes(title="int8 latency (ms per batch)", row=1, col=2)
    figure.update_yaxes(title="accuracy (%)", row=1, col=1)
    note = f"; {int(failed.sum())} failed" if failed.any() else ""
    figure.update_layout(
        title=title or f"Quantization recipes: {len(front)} of {len(shown)} on the Pareto front (diamonds){note}",
        height=430, legend={"orientation": "h", "y": -0.2},
    )
    return figure


__all__.append("recipe_pareto_figure")
