"""Plotly heat maps read the histograms they are given; records round-trip through notebook outputs."""

from __future__ import annotations

import math
import re

import nbformat
import pytest
import torch

import dlqnb
from dlqnb.core.numerics import MSBHistogram
from dlqnb.ui.plotting import calibration_heatmap, msb_heatmap, score_agreement_figure, training_progress_figure
from dlqnb.reports.records import RECORD_MIME_TYPE, read_records, record


def test_heatmap_cells_boxes_and_greys():
    histogram = MSBHistogram.of(torch.tensor([0.03125, 2.1, 16.25, 17.0]))
    figure = msb_heatmap({"p": histogram}, {"p": 3})
    trace = figure.data[0]
    cells = dict(zip(trace.x, trace.z[0]))
    assert cells[4] == pytest.approx(math.log10(2)) and cells[1] == 0.0 and cells[-5] == 0.0
    assert cells[3] is None  # no MSB at 2^3
    box = [s for s in figure.layout.shapes if s.line.width == 2]
    assert len(box) == 1 and (box[0].x0, box[0].x1) == (3.5, -3.5)  # bits 2^3 ... 2^-3
    greys = [s for s in figure.layout.shapes if s.fillcolor]
    assert len(greys) == 2
    hover = {k: data[:4] for k, data in zip(trace.x, trace.customdata[0])}
    assert hover[4] == [2, "2^3 … 2^-3 (fraction length 3)", 2, 1]


def test_calibration_heatmap_rows(squeezenet, images):
    quantizer = dlqnb.DLQuantizer(squeezenet)
    quantizer.calibrate(images, progress=False)
    figure = calibration_heatmap(quantizer, "features_0_features_1")
    assert list(figure.layout.yaxis.ticktext) == [f"features_0_features_1_{k}" for k in ("Weights", "Bias", "Activations")]
    weights = quantizer.range_stats("features_0_features_1_Weights").histogram.nonzero_counts()
    row = dict(zip(figure.data[0].x, figure.data[0].customdata[0]))
    assert {k: row[k][0] for k in weights} == weights
    with pytest.raises(KeyError, match="no calibration row"):
        calibration_heatmap(quantizer, "conv99")


def test_offline_html_embeds_plotly():
    figure = msb_heatmap({"p": MSBHistogram.of(torch.tensor([1.0]))})
    html = figure.to_html(include_plotlyjs=True, full_html=True)
    assert re.search(r"<script[^>]*\bsrc=", html) is None  # nothing loaded from the network
    assert len(html) > 1_000_000  # plotly.js itself is inside


def test_training_progress_figure_plots_validation_points():
    import pandas as pd

    info = pd.DataFrame(
        {"Iteration": [1, 2, 3], "Epoch": [1, 1, 1], "TrainingLoss": [1.0, 0.5, 0.2], "TrainingAccuracy": [0.1, 0.5, 0.9],
         "ValidationLoss": [float("nan"), 0.6, float("nan")], "ValidationAccuracy": [float("nan"), 0.7, float("nan")], "LearnRate": [0.1] * 3}
    )
    figure = training_progress_figure(info)
    assert list(figure.data[1].x) == [2] and list(figure.data[1].y) == [70.0]


def test_score_agreement_figure_plots_every_score_and_counts_kept_top1():
    float_scores = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0], [2.0, 2.5, 0.0]])
    quantized = float_scores.clone()
    quantized[1, 2] = 2.5  # image 1's top class changes from 1 to 2
    quantized[3, 0] = 2.25  # image 3's scores move, its top class stays 1
    figure = score_agreement_figure(float_scores, quantized, ["a", "b", "c"])
    assert "agrees on 3 of 4 images" in figure.layout.title.text
    points = {trace.name: list(zip(trace.x, trace.y)) for trace in figure.data if trace.mode == "markers"}
    assert points["c"] == [(0.0, 0.0), (1.0, 2.5), (4.0, 4.0), (0.0, 0.0)]
    diagonal = next(trace for trace in figure.data if trace.mode == "lines")
    assert (min(diagonal.x), max(diagonal.x)) == (0.0, 4.0) and list(diagonal.x) == list(diagonal.y)
    with pytest.raises(ValueError, match="2 names for 3 score columns"):
        score_agreement_figure(float_scores, quantized, ["a", "b"])
    with pytest.raises(ValueError, match="same N×K shape"):
        score_agreement_figure(float_scores, quantized[:3])


def test_records_round_trip_through_notebook_outputs():
    record("accuracy", torch.tensor(0.95))
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={RECORD_MIME_TYPE: {"name": "accuracy", "value": 0.9}, "text/plain": "x"}),
        nbformat.v4.new_output("stream", text="accuracy = 0.1\n"),  # printed text is never read
        nbformat.v4.new_output("display_data", data={RECORD_MIME_TYPE: {"name": "accuracy", "value": 0.95}}),
    ]
    notebook.cells.append(cell)
    assert read_records(notebook) == {"accuracy": 0.95}
    assert dlqnb.recorded()["accuracy"] == pytest.approx(0.95)


@pytest.mark.parametrize("value, error", [(float("nan"), ValueError), (object(), TypeError)])
def test_record_rejects_what_json_cannot_hold(value, error):
    with pytest.raises(error):
        record("bad", value)
