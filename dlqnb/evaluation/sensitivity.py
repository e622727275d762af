"""Per-layer sensitivity: which quantized layer hurts the network most.

For each layer the quantizer would quantize, :func:`sensitivity_analysis` runs the network with only
that layer quantized (``mode="only"``) or with every layer but that one quantized (``mode="all_but"``),
through the same exact emulation as :meth:`DLQuantizer.quantize`, and compares it with the float network:

* ``MetricOutput``: the metric (top-1 accuracy by default) of that configuration;
* ``Harm``: float metric minus ``MetricOutput`` (for ``"all_but"``: ``MetricOutput`` minus the metric
  of the fully quantized network, what keeping the layer in float regains);
* ``OutputError``: mean absolute difference of the scores from the float network's, relative to the
  mean absolute float score, which ranks layers even where a small validation set shows no accuracy
  change.

Rows are sorted by harm, then output error. Nothing is recalibrated: every configuration uses the
quantizer's calibration.

Example:
    >>> import torch, torchvision
    >>> from dlqnb import DLQuantizer
    >>> q = DLQuantizer(torchvision.models.squeezenet1_1(num_classes=5))
    >>> x, y = torch.rand(4, 3, 64, 64), torch.arange(4)
    >>> _ = q.calibrate(x, progress=False)
    >>> table = sensitivity_analysis(q, [(x, y)], progress=False)
    >>> list(table.columns)
    ['Layer', 'MetricOutput', 'Harm', 'OutputError']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from dlqnb.core.batches import iter_batches
from dlqnb.evaluation.validation import Metric, scored_output, top1_accuracy

if TYPE_CHECKING:
    from dlqnb.quantizer import DLQuantizer

__all__ = ["sensitivity_analysis"]


def sensitivity_analysis(
    quantizer: DLQuantizer,
    data: Any,
    metric: Metric = top1_accuracy,
    mode: Literal["only", "all_but"] = "only",
    mini_batch_size: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Rank the quantized layers by the harm quantizing them does.

    Args:
        quantizer: A calibrated :class:`~dlqnb.DLQuantizer` (its exclusions are respected).
        data: Labelled data in any form ``validate`` takes.
        metric: ``fn(scores, labels) -> float``, higher is better.
        mode: ``"only"``: quantize just the layer; ``"all_but"``: quantize all layers but it.
        mini_batch_size: Batch size for a tensor or Dataset.
        progress: Show a progress bar.

    Returns:
        A DataFrame ``Layer``, ``MetricOutput``, ``Harm``, ``OutputError``, most harmful first.
    """
    if mode not in ("only", "all_but"):
        raise ValueError(f"mode must be 'only' or 'all_but', got {mode!r}")
    quantizer.check_calibrated("sensitivity_analysis")
    batches = list(iter_batches(data, mini_batch_size))
    images = [b[0] for b in batches]
    labels = None if any(b[1] is None for b in batches) else torch.cat([b[1] for b in batches])
    with torch.no_grad():
        reference = torch.cat([scored_output(quantizer.optimized.module(x), quantizer.output) for x in images])
    float_metric = float(metric(reference, labels))
    layers = quantizer.quantized_layers()
    baseline = float_metric
    if mode == "all_but":  # harm = what keeping the layer in float regains over quantizing everything
        with torch.no_grad():
            full = quantizer.quantize()
            baseline = float(metric(torch.cat([scored_output(full(x), quantizer.output) for x in images]), labels))
    rows = []
    for layer in tqdm(layers, desc="Sensitivity", disable=not progress):
        others = [name for name in layers if name != layer]
        variant = quantizer.with_excluded(set(quantizer.excluded_layers) | (set(others) if mode == "only" else {layer}))
        network = variant.quantize()
        with torch.no_grad():
            scores = torch.cat([scored_output(network(x), quantizer.output) for x in images])
        value = float(metric(scores, labels))
        error = float((scores - reference).abs().mean() / reference.abs().mean().clamp_min(1e-12))
        harm = baseline - value if mode == "only" else value - baseline
        rows.append({"Layer": layer, "MetricOutput": value, "Harm": harm, "OutputError": error})
    table = pd.DataFrame(rows, columns=["Layer", "MetricOutput", "Harm", "OutputError"])
    order = ["Harm", "OutputError"]
    return table.sort_values(order, ascending=[False, mode == "all_but"]).reset_index(drop=True)
