"""Why a layer loses accuracy: each tensor's quantization error split into clipping and rounding.

Quantizing a tensor ``x`` to its scaled 8-bit type gives ``Q(x)``; the error ``Q(x) − x`` has two sources:

* **clipping**: values outside the type's representable range (``x / scale`` beyond the smallest or
  largest code) saturate; their error is the distance to the range's end. The range was chosen too
  small (too many fraction bits) for them;
* **rounding**: values inside the range are rounded to the nearest step ``2**-FractionLength``; their
  error is at most half a step. The step is too coarse (too few fraction bits) when it dominates.

Each is reported as a signal-to-quantization-noise ratio in dB, ``10·log10(Σx² / Σe²)``, with the
noise summed over the values of that kind only; the two noises add up to the total
(``SQNR(dB)``), so the component with the smaller SQNR is the ``Dominant`` one. A component without
noise has an infinite SQNR; a tensor without any error is ``Dominant`` ``"none"``.

Every Weights row (the folded weights, in their weight type: per channel with per-channel weights,
rounded by the target's rule) and every Activations row (the float network's output of that layer on
``data``, in the type the target gives it — uint8 after ReLU on ``"cpu"``, shared with a concatenation —
rounded as the target rounds activations) gets one row. Each tensor is quantized alone, from the float
network's values: the table shows what each type costs by itself, not the errors that earlier layers
pass on. Bias rows are left out (a float32 bias on ``"gpu"``, int32 codes at the accumulator's fine
scale on ``"cpu"``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from dlqnb import DLQuantizer
    >>> q = DLQuantizer(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval())
    >>> x = torch.rand(4, 1, 8, 8)
    >>> _ = q.calibrate(x, progress=False)
    >>> table = quantization_error(q, x, progress=False)
    >>> list(table.columns)
    ['Optimized Layer Name', 'SQNR(dB)', 'ClippingSQNR(dB)', 'RoundingSQNR(dB)', 'Dominant', 'Quantized']
    >>> table["Dominant"].tolist()  # MinMax ranges fit the calibration data: rounding dominates
    ['rounding', 'rounding', 'rounding']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
import torch.fx as fx
from torch import Tensor
from tqdm.auto import tqdm

from dlqnb.calibration.rows import CalibrationRow
from dlqnb.core.batches import count_batches, iter_batches
from dlqnb.core.graph import layer_name
from dlqnb.core.numerics import FixedPointType, Rounding
from dlqnb.evaluation.bias_correction import run_on_data

if TYPE_CHECKING:
    from dlqnb.quantizer import DLQuantizer

__all__ = ["ERROR_COLUMNS", "ErrorSplit", "quantization_error", "split_error"]

#: The columns of :func:`quantization_error`'s table.
ERROR_COLUMNS = ["Optimized Layer Name", "SQNR(dB)", "ClippingSQNR(dB)", "RoundingSQNR(dB)", "Dominant", "Quantized"]


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclass
class ErrorSplit:
    """Signal and noise powers (sums of squares) of one tensor, accumulated batch after batch.

    Attributes:
        signal: Σx².
        clipping: Σe² over the values outside the type's range.
        rounding: Σe² over the values inside it.
    """

    signal: float = 0.0
    clipping: float = 0.0
    rounding: float = 0.0

    def add(self, x: Tensor, tensor_type: FixedPointType, rounding: Rounding) -> None:
        """Add the values ``x`` quantized to ``tensor_type`` (per-channel types along their axis)."""
        x = x.detach().double()
        error_squared = (tensor_type.quantize_dequantize(x, rounding) - x).square()
        unsaturated = x / tensor_type.dequantize(torch.ones_like(x))  # x in steps of its (channel's) scale
        low, high = tensor_type.bounds
        outside = (unsaturated < low) | (unsaturated > high)
        self.signal += float(x.square().sum())
        self.clipping += float(error_squared[outside].sum())
        self.rounding += float(error_squared[~outside].sum())

    @property
    def dominant(self) -> str:
        """``"clipping"`` or ``"rounding"``: the larger noise (``"none"`` without any)."""
        if self.clipping == 0.0 and self.rounding == 0.0:
            return "none"
        return "clipping" if self.clipping > self.rounding else "rounding"

    def row(self, name: str, quantized: bool = True) -> dict[str, Any]:
        """One row of the table (``quantized``: whether the target really quantizes the tensor)."""
        values = (_sqnr(self.signal, self.clipping + self.rounding), _sqnr(self.signal, self.clipping), _sqnr(self.signal, self.rounding))
        return dict(zip(ERROR_COLUMNS, (name, *values, self.dominant, quantized)))


def split_error(x: Tensor, tensor_type: FixedPointType, rounding: Rounding = "half_away") -> ErrorSplit:
    """The clipping/rounding split of one tensor quantized to ``tensor_type``.

    Example:
        >>> split = split_error(torch.tensor([0.3, 5.0]), FixedPointType(5))  # steps of 1/32 up to 127/32: 5.0 saturates
        >>> split.dominant, round(split.clipping, 4), round(split.rounding, 6)
        ('clipping', 1.0635, 0.000156)
    """
    split = ErrorSplit()
    split.add(x, tensor_type, rounding)
    return split


class _ActivationReader(fx.Interpreter):
    """Runs the optimized graph and hands each wanted node's output over as soon as it exists (before
    an in-place op can overwrite it)."""

    def __init__(self, module: fx.GraphModule, wanted: dict[str, tuple[FixedPointType, ErrorSplit]], rounding: Rounding) -> None:
        super().__init__(module, garbage_collect_values=True)
        self.wanted = wanted
        self.rounding = rounding

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        entry = self.wanted.get(layer_name(n)) if n.op != "output" else None
        if entry is not None and isinstance(out, Tensor) and out.is_floating_point():
            tensor_type, split = entry
            split.add(out, tensor_type, self.rounding)
        return out


def quantization_error(quantizer: DLQuantizer, data: Any, mini_batch_size: int | None = None, progress: bool = True) -> pd.DataFrame:
    """The quantization error of every Weights and Activations row, split into clipping and rounding.

    Args:
        quantizer: A calibrated :class:`~dlqnb.DLQuantizer` (its target's types are used).
        data: Images in any form :meth:`DLQuantizer.calibrate` takes (labels are not needed).
        mini_batch_size: Batch size for a tensor or Dataset.
        progress: Show a progress bar.

    Returns:
        A DataFrame, one row per Weights and Activations row in calibration-table order:
        ``Optimized Layer Name``, ``SQNR(dB)`` (total), ``ClippingSQNR(dB)``, ``RoundingSQNR(dB)``,
        ``Dominant`` (``"clipping"``, ``"rounding"``, or ``"none"`` for an exact tensor) and ``Quantized``:
        whether the target quantizes the tensor at all. For one it computes in float (an excluded layer,
        a layer with no int8 form on the target) the SQNRs say what its 8-bit type would cost, not an
        error the quantized network makes.

    Raises:
        NotCalibratedError: Before :meth:`DLQuantizer.calibrate`.
        DataError: Empty data, a bad batch, or one the network cannot run on (wrong shape).
    """
    quantizer.check_calibrated("quantization_error")
    plan = quantizer.plan()
    types = plan.types
    rows = [CalibrationRow.parse(name) for name in quantizer.calibration_table["Optimized Layer Name"]]
    splits: dict[CalibrationRow, ErrorSplit] = {}
    activations: dict[str, tuple[FixedPointType, ErrorSplit]] = {}
    for row in rows:
        if row.part == "Weights":
            weight = quantizer.optimized.fused(row.layer).layer.weight
            splits[row] = split_error(weight, types.weights[row.layer], plan.options.code_rounding)
        elif row.part == "Activations" and row.layer in types.activations:
            splits[row] = ErrorSplit()
            activations[row.layer] = (types.activations[row.layer], splits[row])
    reader = _ActivationReader(quantizer.optimized.module, activations, plan.rounding)
    batches = iter_batches(data, mini_batch_size)
    with torch.no_grad():
        batches = tqdm(batches, total=count_batches(data, mini_batch_size), desc="Quantization error", unit="batch", disable=not progress)
        for index, (images, _labels) in enumerate(batches):
            run_on_data(reader.run, images, index, "quantization_error", quantizer.input_shape_)
    int8_activations = set(plan.quantize_after) | set(plan.quantize_for) | {name for name, node in plan.nodes.items() if node.run == "int8"}

    def quantized(row: CalibrationRow) -> bool:
        return row.layer in plan.layers if row.part == "Weights" else row.layer in int8_activations

    return pd.DataFrame([splits[row].row(row.name, quantized(row)) for row in rows if row in splits], columns=ERROR_COLUMNS)
