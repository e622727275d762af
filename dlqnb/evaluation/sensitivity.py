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

:func:`choose_float_layers` turns the ranking into a decision: the shortest prefix of it to keep in
float so that the metric drops by at most a given amount. It adds layers to the float set in ranking
order (greedy), re-validating each prefix with the exact emulation, and stops at the first prefix that
meets the target; ``q.exclude(*choice.layers)`` applies it. Its ``trade_off`` table (metric and
learnable memory per prefix) is what :func:`dlqnb.ui.plotting.float_layer_tradeoff_figure` draws.

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

import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from dlqnb.core.batches import iter_batches
from dlqnb.core.numerics import Rounding
from dlqnb.evaluation.validation import Metric, OutputChoice, learnable_memory, scored_output, top1_accuracy

if TYPE_CHECKING:
    from dlqnb.quantizer import DLQuantizer

__all__ = ["TRADE_OFF_COLUMNS", "FloatLayerChoice", "choose_float_layers", "relative_score_error", "sensitivity_analysis"]

#: The columns of :attr:`FloatLayerChoice.trade_off`.
TRADE_OFF_COLUMNS = [
    "num_float_layers",
    "float_layers",
    "accuracy",
    "accuracy_drop",
    "learnable_memory_bytes",
    "memory_reduction",
    "meets_target",
]


def _labelled_images(data: Any, mini_batch_size: int | None) -> tuple[list[Tensor], Tensor | None]:
    """The data's image batches, and all its labels (None when a batch has none)."""
    batches = list(iter_batches(data, mini_batch_size))
    labels = None if any(b[1] is None for b in batches) else torch.cat([b[1] for b in batches])
    return [b[0] for b in batches], labels


def _scores(network: nn.Module, images: list[Tensor], output: OutputChoice) -> Tensor:
    with torch.no_grad():
        return torch.cat([scored_output(network(x), output) for x in images])


def relative_score_error(scores: Any, reference: Any) -> float:
    """Mean absolute difference of two score arrays (tensors or array-likes), relative to the mean
    absolute ``reference`` score: the ``OutputError`` of :func:`sensitivity_analysis`.

    Example:
        >>> relative_score_error([[1.0, 3.0]], [[2.0, 2.0]])
        0.5
    """
    scores, reference = torch.as_tensor(scores), torch.as_tensor(reference)
    return float((scores - reference).abs().mean() / reference.abs().mean().clamp_min(1e-12))


def sensitivity_analysis(
    quantizer: DLQuantizer,
    data: Any,
    metric: Metric = top1_accuracy,
    mode: Literal["only", "all_but"] = "only",
    mini_batch_size: int | None = None,
    progress: bool = True,
    rounding: Rounding | None = None,
) -> pd.DataFrame:
    """Rank the quantized layers by the harm quantizing them does.

    Args:
        quantizer: A calibrated :class:`~dlqnb.DLQuantizer` (its exclusions are respected).
        data: Labelled data in any form ``validate`` takes.
        metric: ``fn(scores, labels) -> float``, higher is better.
        mode: ``"only"``: quantize just the layer; ``"all_but"``: quantize all layers but it.
        mini_batch_size: Batch size for a tensor or Dataset.
        progress: Show a progress bar.
        rounding: The activation rounding of the emulation (see :meth:`DLQuantizer.quantize`; None: the
            target's rule).

    Returns:
        A DataFrame ``Layer``, ``MetricOutput``, ``Harm``, ``OutputError``, most harmful first.
    """
    if mode not in ("only", "all_but"):
        raise ValueError(f"mode must be 'only' or 'all_but', got {mode!r}")
    quantizer.check_calibrated("sensitivity_analysis")
    images, labels = _labelled_images(data, mini_batch_size)
    reference = _scores(quantizer.optimized.module, images, quantizer.output)
    float_metric = float(metric(reference, labels))
    layers = quantizer.quantized_layers()
    baseline = float_metric
    if mode == "all_but":  # harm = what keeping the layer in float regains over quantizing everything
        baseline = float(metric(_scores(quantizer.quantize(rounding), images, quantizer.output), labels))
    rows = []
    for layer in tqdm(layers, desc="Sensitivity", disable=not progress):
        others = [name for name in layers if name != layer]
        variant = quantizer.with_excluded(set(quantizer.excluded_layers) | (set(others) if mode == "only" else {layer}))
        scores = _scores(variant.quantize(rounding), images, quantizer.output)
        value = float(metric(scores, labels))
        error = relative_score_error(scores, reference)
        harm = baseline - value if mode == "only" else value - baseline
        rows.append({"Layer": layer, "MetricOutput": value, "Harm": harm, "OutputError": error})
    table = pd.DataFrame(rows, columns=["Layer", "MetricOutput", "Harm", "OutputError"])
    order = ["Harm", "OutputError"]
    return table.sort_values(order, ascending=[False, mode == "all_but"]).reset_index(drop=True)


@dataclass
class FloatLayerChoice:
    """What :func:`choose_float_layers` chose.

    Attributes:
        layers: The optimized layers to keep in float (besides those the quantizer excluded already),
            most harmful first; apply with ``q.exclude(*choice.layers)``.
        accuracy: The metric of the network quantized with them in float (re-validated).
        float_accuracy: The metric of the float network on the same data.
        max_accuracy_drop: The largest drop asked for.
        meets_target: Whether ``float_accuracy - accuracy <= max_accuracy_drop`` (False only when even
            every ranked layer in float does not get there; ``layers`` then holds them all).
        trade_off: One row per prefix of the ranking that was validated (:data:`TRADE_OFF_COLUMNS`):
            ``num_float_layers``, ``float_layers`` (a tuple), ``accuracy``, ``accuracy_drop``,
            ``learnable_memory_bytes`` (as :meth:`DLQuantizer.validate` counts it),
            ``memory_reduction`` (1 − quantized / float bytes), ``meets_target``.
        ranking: The sensitivity table the layers were taken from.
    """

    layers: tuple[str, ...]
    accuracy: float
    float_accuracy: float
    max_accuracy_drop: float
    meets_target: bool
    trade_off: pd.DataFrame = field(repr=False)
    ranking: pd.DataFrame = field(repr=False)

    @property
    def accuracy_drop(self) -> float:
        """``float_accuracy - accuracy``."""
        return self.float_accuracy - self.accuracy

    @property
    def chosen(self) -> pd.Series:
        """The trade-off row of the choice."""
        return self.trade_off.iloc[len(self.layers)]


def _check_drop(max_accuracy_drop: Any) -> float:
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, numbers.Real):  # NumPy scalars too
        raise TypeError(f"max_accuracy_drop must be a number (e.g. 0.01 for one point of accuracy), got {max_accuracy_drop!r}")
    if not math.isfinite(max_accuracy_drop) or max_accuracy_drop < 0:
        raise ValueError(f"max_accuracy_drop must be a finite number >= 0 (e.g. 0.01 for one point of accuracy), got {max_accuracy_drop!r}")
    return float(max_accuracy_drop)


def choose_float_layers(
    quantizer: DLQuantizer,
    data: Any,
    max_accuracy_drop: float = 0.01,
    metric: Metric = top1_accuracy,
    ranking: pd.DataFrame | None = None,
    mode: Literal["only", "all_but"] = "only",
    full_curve: bool = False,
    mini_batch_size: int | None = None,
    progress: bool = True,
    rounding: Rounding | None = None,
) -> FloatLayerChoice:
    """The smallest prefix of the sensitivity ranking to keep in float so that the metric drops by at
    most ``max_accuracy_drop``.

    Layers are added to the float set one at a time in ranking order (most harmful first); after each,
    the network is re-validated on ``data`` with the exact emulation. The first prefix whose drop is
    within the target is the choice. The quantizer is not changed.

    Args:
        quantizer: A calibrated :class:`~dlqnb.DLQuantizer` (its exclusions and bias corrections are kept).
        data: Labelled data in any form ``validate`` takes (the same data ranks and verifies).
        max_accuracy_drop: Largest acceptable ``float metric - quantized metric`` (0.01: one point of accuracy).
        metric: ``fn(scores, labels) -> float``, higher is better.
        ranking: A :func:`sensitivity_analysis` table to take the order from (computed when None).
        mode: The sensitivity mode used when the ranking is computed here.
        full_curve: Validate every prefix, not only up to the choice (a complete ``trade_off`` curve).
        mini_batch_size: Batch size for a tensor or Dataset.
        progress: Show progress bars.
        rounding: The activation rounding the ranking and every re-validation use (see
            :meth:`DLQuantizer.quantize`; ``"half_even"`` judges a ``"gpu"`` model as TensorRT and ONNX
            Runtime run its exported file). None: the target's rule.

    Returns:
        A :class:`FloatLayerChoice`.

    Raises:
        ValueError: ``max_accuracy_drop`` negative or not finite.
        TypeError: ``max_accuracy_drop`` not a number.
        NotCalibratedError: Before :meth:`DLQuantizer.calibrate`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from dlqnb import DLQuantizer
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
        >>> q = DLQuantizer(net)
        >>> x = torch.rand(8, 4)
        >>> _ = q.calibrate(x, progress=False)
        >>> choice = choose_float_layers(q, [(x, net(x).argmax(1))], max_accuracy_drop=1.0, progress=False)
        >>> choice.layers, choice.meets_target, list(choice.trade_off["num_float_layers"])
        ((), True, [0])
    """
    target = _check_drop(max_accuracy_drop)
    quantizer.check_calibrated("choose_float_layers")
    if ranking is None:
        ranking = sensitivity_analysis(quantizer, data, metric, mode, mini_batch_size, progress, rounding)
    order = list(ranking["Layer"])
    images, labels = _labelled_images(data, mini_batch_size)
    float_metric = float(metric(_scores(quantizer.optimized.module, images, quantizer.output), labels))
    rows = []
    chosen: int | None = None
    steps = tqdm(range(len(order) + 1), desc="Choosing float layers", disable=not progress)
    for count in steps:
        variant = quantizer.with_excluded(set(quantizer.excluded_layers) | set(order[:count]))
        value = float(metric(_scores(variant.quantize(rounding), images, quantizer.output), labels))
        float_bytes, quantized_bytes = learnable_memory(quantizer.network, variant.plan())
        meets = float_metric - value <= target + 1e-12  # metrics are sums of floats: no spurious miss
        rows.append((count, tuple(order[:count]), value, float_metric - value, quantized_bytes, 1 - quantized_bytes / float_bytes, meets))
        if meets and chosen is None:
            chosen = count
            if not full_curve:
                break
    trade_off = pd.DataFrame(rows, columns=TRADE_OFF_COLUMNS)
    if chosen is None:
        chosen = len(order)
        warnings.warn(
            f"even with all {len(order)} ranked layers in float the metric drops by {float_metric - rows[-1][2]:.4g} "
            f"> max_accuracy_drop={target}: the choice keeps them all in float",
            UserWarning,
            stacklevel=2,
        )
    return FloatLayerChoice(tuple(order[:chosen]), float(trade_off["accuracy"].iloc[chosen]), float_metric, target, bool(trade_off["meets_target"].iloc[chosen]), trade_off, ranking)
