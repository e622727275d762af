"""The type choice: the scaled integer type of every tensor on a target, from calibrated statistics.

The one place that decides types (the plan builds on it, :meth:`DLQuantizer.tensor_types` and
:meth:`DLQuantizer.weight_fraction_lengths` read it):

* **fraction lengths** by the exponent scheme (:func:`dlqnb.core.numerics.choose_fraction_length`),
  from each calibration row's range and MSB counts; per-channel weights take one per output channel,
  by the same scheme, from each channel's values;
* **signedness**: signed int8 everywhere on ``"gpu"``; on ``"cpu"`` uint8 with the same scale where
  the calibrated minimum is >= 0 (zero point 0, as ONNX Runtime's QLinearConv wants);
* **scale sharing**, as TensorRT and ONNX Runtime share scales: a concatenation's inputs (when it is
  their only consumer) take the concatenation's type, whose calibrated range is the union of theirs,
  so they are produced in it directly (one rounding instead of two, and the concatenation is a copy);
  ops that keep their input's grid (max pooling, reshapes, dropout; :mod:`dlqnb.core.ops`) keep its type.

Example:
    >>> import torch, torch.nn as nn
    >>> from dlqnb.calibration.observers import RangeStats
    >>> from dlqnb.calibration.rows import CalibrationRow
    >>> from dlqnb.core.graph import optimize_network
    >>> optimized = optimize_network(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    >>> statistics = {CalibrationRow("0_1", "Weights"): RangeStats.of(torch.tensor([-0.3, 0.2])),
    ...     CalibrationRow("input_1", "Activations"): RangeStats.of(torch.tensor([-1.0, 1.5])),
    ...     CalibrationRow("0_1", "Activations"): RangeStats.of(torch.tensor([0.0, 3.0]))}
    >>> types = choose_types(optimized, statistics, PlanOptions("cpu"))
    >>> types.activations["0_1"], types.weights["0_1"].fraction_length
    (FixedPointType(fraction_lengths=(5,), axis=None, signed=False, word_length=8), 8)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import get_args

from dlqnb.calibration.observers import RangeStats
from dlqnb.calibration.rows import CalibrationRow
from dlqnb.core.graph import OptimizedNetwork, layer_name
from dlqnb.core.numerics import ExponentScheme, FixedPointType, MSBHistogram, Rounding, choose_fraction_length
from dlqnb.core.ops import op_traits, tensor_args

__all__ = ["TARGET_ROUNDING", "PlanOptions", "TypeChoice", "choose_types", "row_fraction_length", "target_rounding", "type_settings"]

#: How each target rounds ties: away from zero on ``"gpu"`` (MATLAB's cuDNN target), to even on
#: ``"cpu"`` (ONNX's QuantizeLinear).
TARGET_ROUNDING: dict[str, Rounding] = {"gpu": "half_away", "cpu": "half_even"}

#: Per-channel weight types run along the output channels of a conv/linear weight.
WEIGHT_CHANNEL_AXIS = 0


def target_rounding(target: str) -> Rounding:
    """How ``target`` rounds ties (see :data:`TARGET_ROUNDING`).

    Example:
        >>> target_rounding("gpu")
        'half_away'
    """
    return TARGET_ROUNDING[target]


@dataclass(frozen=True)
class PlanOptions:
    """What a plan is built for, besides the network and its statistics.

    Attributes:
        target: ``"gpu"`` or ``"cpu"``.
        excluded_layers: Optimized layers kept in float.
        exponent_scheme: ``"minmax"`` or ``"histogram"`` (:func:`dlqnb.core.numerics.choose_fraction_length`).
        per_channel_weights: One weight fraction length per output channel.
        rounding: How activations are rounded where they are quantized; None for the target's rule
            (:data:`TARGET_ROUNDING`). Weight and bias codes always follow the target's rule.
        bias_corrections: Empirical bias corrections (:meth:`DLQuantizer.correct_bias`): for an optimized
            layer, one value per output channel subtracted from its float bias before the bias is
            coded (a mapping is accepted and kept as sorted ``(layer, values)`` pairs, so that the
            options stay hashable). A layer kept in float ignores its correction.

    Example:
        >>> PlanOptions("cpu", excluded_layers=["conv1"]).activation_rounding
        'half_even'
        >>> PlanOptions("gpu", bias_corrections={"conv1": [0.5, -0.25]}).bias_correction("conv1")
        (0.5, -0.25)
    """

    target: str
    excluded_layers: frozenset[str] = frozenset()
    exponent_scheme: ExponentScheme = "minmax"
    per_channel_weights: bool = False
    rounding: Rounding | None = None
    bias_corrections: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.target not in TARGET_ROUNDING:
            raise ValueError(f"target must be one of {sorted(TARGET_ROUNDING)}, got {self.target!r}")
        if self.rounding is not None and self.rounding not in get_args(Rounding):
            raise ValueError(f"rounding must be 'half_away' or 'half_even' (or None for the target's rule), got {self.rounding!r}")
        object.__setattr__(self, "excluded_layers", frozenset(self.excluded_layers))
        object.__setattr__(self, "bias_corrections", _frozen_corrections(self.bias_corrections))

    def bias_correction(self, layer: str) -> tuple[float, ...] | None:
        """The bias correction of one optimized layer (one value per output channel), or None."""
        return dict(self.bias_corrections).get(layer)

    @property
    def code_rounding(self) -> Rounding:
        """How weight and bias codes are rounded: the target's rule."""
        return target_rounding(self.target)

    @property
    def activation_rounding(self) -> Rounding:
        """How activations are rounded where they are quantized."""
        return self.rounding or self.code_rounding


def _frozen_corrections(corrections: Mapping[str, Iterable[float]] | Iterable[tuple[str, Iterable[float]]]) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """Bias corrections as sorted ``(layer, values)`` pairs of finite floats.

    Raises:
        ValueError: A value that is not a finite number, or a layer named twice; the message names the layer.
    """
    pairs = list(corrections.items()) if isinstance(corrections, Mapping) else list(corrections)
    result: dict[str, tuple[float, ...]] = {}
    for layer, values in pairs:
        if layer in result:
            raise ValueError(f"bias_corrections names layer {layer!r} twice")
        numbers = tuple(float(v) for v in values)
        if not all(math.isfinite(v) for v in numbers):
            raise ValueError(f"bias_corrections of layer {layer!r} must be finite numbers, got {numbers}")
        result[str(layer)] = numbers
    return tuple(sorted(result.items()))


@dataclass(frozen=True)
class TypeChoice:
    """The chosen types.

    Attributes:
        activations: The type of every tensor-producing node's output, by node name.
        weights: The int8 weight type of every optimized conv/linear layer (per channel along axis 0
            with per-channel weights).
    """

    activations: dict[str, FixedPointType]
    weights: dict[str, FixedPointType]


def row_fraction_length(stats: RangeStats, scheme: ExponentScheme) -> int:
    """The 8-bit fraction length a calibration row gets by the exponent scheme.

    Example:
        >>> import torch
        >>> row_fraction_length(RangeStats.of(torch.tensor([0.03125, 2.1, 16.25])), "minmax")
        2
    """
    return choose_fraction_length(stats.min_value, stats.max_value, stats.histogram, scheme)


def type_settings(options: PlanOptions) -> tuple[str, str, bool]:
    """What :func:`choose_types` reads of ``options`` (target, exponent scheme, per-channel flag): plans of
    one calibration whose options agree on it share their types, whatever their exclusions, rounding or
    bias corrections.

    Example:
        >>> type_settings(PlanOptions("cpu", excluded_layers=frozenset({"fc"}), rounding="half_away"))
        ('cpu', 'minmax', False)
    """
    return (options.target, options.exponent_scheme, options.per_channel_weights)


def choose_types(optimized: OptimizedNetwork, statistics: Mapping[CalibrationRow, RangeStats], options: PlanOptions) -> TypeChoice:
    """The type of every activation and weight (see the module docstring).

    Args:
        optimized: The optimized network.
        statistics: The statistics of every calibration row.
        options: The target, exponent scheme and per-channel flag.
    """
    return TypeChoice(_activation_types(optimized, statistics, options), _weight_types(optimized, statistics, options))


def _activation_types(optimized: OptimizedNetwork, statistics: Mapping[CalibrationRow, RangeStats], options: PlanOptions) -> dict[str, FixedPointType]:
    result: dict[str, FixedPointType] = {}
    for row, stats in statistics.items():
        if row.part == "Activations":
            # uint8 only where no negative value was seen: on "gpu" TensorRT takes int8 only
            signed = options.target == "gpu" or stats.min_value < 0
            result[row.layer] = FixedPointType(row_fraction_length(stats, options.exponent_scheme), signed=signed)
    module = optimized.module
    for node in optimized.nodes():
        name = layer_name(node)
        if name not in result:
            continue
        traits = op_traits(module, node)
        if traits.kind == "concat":
            for source in tensor_args(node):
                if layer_name(source) in result and len(source.users) == 1:
                    result[layer_name(source)] = result[name]
        elif traits.keeps_type:
            sources = [layer_name(source) for source in tensor_args(node) if layer_name(source) in result]
            if len(sources) == 1:
                result[name] = result[sources[0]]
    return result


def _weight_types(optimized: OptimizedNetwork, statistics: Mapping[CalibrationRow, RangeStats], options: PlanOptions) -> dict[str, FixedPointType]:
    scheme = options.exponent_scheme
    if not options.per_channel_weights:
        return {name: FixedPointType(row_fraction_length(statistics[CalibrationRow(name, "Weights")], scheme)) for name in optimized.layers}
    result = {}
    for name in optimized.layers:
        channels = optimized.fused(name).layer.weight.detach().flatten(1)
        lows, highs = channels.amin(1).tolist(), channels.amax(1).tolist()
        fractions = [
            # the MSB counts only matter to the histogram scheme: not counted for MinMax
            choose_fraction_length(low, high, MSBHistogram.of(channel) if scheme == "histogram" else None, scheme)
            for low, high, channel in zip(lows, highs, channels)
        ]
        result[name] = FixedPointType(tuple(fractions), axis=WEIGHT_CHANNEL_AXIS)
    return result
