"""``DLQuantizer``: calibrate a network, then quantize, validate and save it.

The MATLAB ``dlquantizer`` in PyTorch, and the orchestration of the stages: construction traces and
optimizes a copy of the network (:mod:`dlqnb.core.graph`); :meth:`DLQuantizer.calibrate` runs that
optimized network over the data with the statistics recorder (:mod:`dlqnb.calibration.recorder`),
which records, for every layer that produces a tensor, the range and MSB counts of its activations;
the calibration table (:mod:`dlqnb.calibration.rows`) adds those of every optimized layer's folded
weights and bias. The plan (:mod:`dlqnb.plan`) is built from these statistics and the quantizer's
options; the emulated network (:mod:`dlqnb.emulation`) and the export read it.

The calibration table has exactly MATLAB's columns and is shaped like MATLAB's: the Weights and
Bias rows of every conv/linear layer first, then the Activations rows, each part in network order.

A network that returns several outputs is scored (validation, export) on the one ``output=`` names: a
tuple's or list's first element by default, with a warning; a dict's entry must be named.

Calling :meth:`~DLQuantizer.calibrate` again widens the ranges with the new data (the counts add
up); the weights and bias rows do not change. A calibration that fails (bad batch, non-finite
activations) leaves the earlier state untouched.

Recovery beyond MATLAB's workflow: :meth:`~DLQuantizer.correct_bias` (empirical bias correction),
:meth:`~DLQuantizer.choose_float_layers` (the shortest prefix of the sensitivity ranking to keep in float that keeps the accuracy) and
:meth:`~DLQuantizer.quantization_error` (each tensor's error split into clipping and rounding).

Example:
    >>> import torch, torchvision
    >>> net = torchvision.models.squeezenet1_1(num_classes=5)
    >>> q = DLQuantizer(net)
    >>> table = q.calibrate(torch.rand(4, 3, 64, 64), progress=False)
    >>> list(table.columns)
    ['Optimized Layer Name', 'Network Layer Name', 'Learnables / Activations', 'MinValue', 'MaxValue']
    >>> table.iloc[0, :3].tolist()
    ['features_0_features_1_Weights', 'features_1', 'Weights']
"""

from __future__ import annotations

from collections.abc import Iterable
import copy
import warnings
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from dlqnb.core.batches import count_batches, iter_batches
from dlqnb.calibration.file import CalibrationState, read_calibration, stored_bias_corrections, write_calibration
from dlqnb.calibration.observers import RangeStats
from dlqnb.calibration.recorder import StatsRecorder, derivable_sources
from dlqnb.calibration.rows import CALIBRATION_COLUMNS, CalibrationRow, calibration_rows, calibration_table, row_statistics
from dlqnb.emulation.network import build_emulated_network
from dlqnb.errors import CalibrationError, NotCalibratedError
from dlqnb.core.graph import OptimizedNetwork, optimize_network
from dlqnb.core.numerics import ExponentScheme, FixedPointType, Rounding, representable_bits
from dlqnb.evaluation.bias_correction import empirical_bias_corrections
from dlqnb.plan.builder import QuantizationPlan, build_plan, check_bias_corrections
from dlqnb.plan.types import PlanOptions, TypeChoice, choose_types, row_fraction_length, type_settings
from dlqnb.evaluation.validation import (
    OutputChoice,
    QuantizationOptions,
    ValidationResult,
    check_output_choice,
    learnable_memory,
    run_both,
    validation_table,
)

if TYPE_CHECKING:
    from dlqnb.evaluation.sensitivity import FloatLayerChoice

__all__ = ["CALIBRATION_COLUMNS", "CalibrationError", "DLQuantizer", "NotCalibratedError"]

ExecutionEnvironment = Literal["gpu", "cpu"]
#: Plans kept per quantizer (one per options: exclusions, rounding).
_PLANS_KEPT = 4


class _CorrectionSettings(NamedTuple):
    """The settings bias corrections are measured for (they correct these weight codes and types)."""

    execution_environment: str
    exponent_scheme: str
    per_channel_weights: bool


class DLQuantizer:
    """Quantize a network's weights, biases and activations to scaled 8-bit integers.

    Args:
        net: The network (an ``nn.Module`` that torch.fx can trace); it is never modified.
        execution_environment: ``"gpu"`` (cuDNN/TensorRT int8, the default) or ``"cpu"`` (ONNX
            Runtime int8); see ``docs/design.md`` for the arithmetic of each.
        exponent_scheme: How a type is chosen from the ranges: ``"minmax"`` (MATLAB's default)
            or ``"histogram"`` (see :func:`dlqnb.core.numerics.choose_fraction_length`).
        excluded_layers: Optimized layer names to keep in float (the app's per-layer switch).
        per_channel_weights: One power-of-two weight scale per output channel (MinMax of each
            channel) instead of one per layer; emulation and export follow it.
        output: For a network that returns several outputs, which one holds the class scores that
            :meth:`validate` compares and the exported model returns: an index of a tuple or list
            (default: the first, with a warning), a key of a dict (required for a dict). Leave it
            unset for a network that returns one tensor.

    Attributes:
        optimized: The traced network with BatchNorm folded and activations fused.
        excluded_layers: Optimized layers the user keeps in float.
        num_calibration_samples_: Images seen by :meth:`calibrate` so far.
        input_shape_: Shape of one input :meth:`calibrate` saw last: (C, H, W) for images, (C, L) for
            1-D signals, (C, D, H, W) for volumes.
        output: Which output is scored (see ``output`` above).

    Raises:
        NetworkGraphError: If the network cannot be traced, holds a layer dlqnb cannot handle, or has
            a parameter or buffer on the meta device (no values to calibrate); the message names it.

    Example:
        >>> import torch, torchvision
        >>> q = DLQuantizer(torchvision.models.resnet18(num_classes=3), execution_environment="gpu")
        >>> _ = q.calibrate(torch.rand(2, 3, 32, 32), progress=False)
        >>> q.num_calibration_samples_
        2
    """

    def __init__(
        self,
        net: nn.Module,
        execution_environment: ExecutionEnvironment = "gpu",
        exponent_scheme: ExponentScheme = "minmax",
        excluded_layers: Iterable[str] = (),
        per_channel_weights: bool = False,
        output: OutputChoice = None,
    ) -> None:
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        environment = str(execution_environment).lower()
        if environment not in ("gpu", "cpu"):
            raise ValueError(f"execution_environment must be 'gpu' or 'cpu', got {execution_environment!r}")
        if exponent_scheme not in ("minmax", "histogram"):
            raise ValueError(f"exponent_scheme must be 'minmax' or 'histogram', got {exponent_scheme!r}")
        self.network = net
        self.execution_environment: ExecutionEnvironment = environment  # type: ignore[assignment]
        self.exponent_scheme: ExponentScheme = exponent_scheme
        self.per_channel_weights = bool(per_channel_weights)
        self.output: OutputChoice = check_output_choice(output)
        self.optimized: OptimizedNetwork = optimize_network(net)
        self._derivable = derivable_sources(self.optimized.module)
        self._state = CalibrationState.empty()
        self._row_stats_cache: dict[CalibrationRow, RangeStats] | None = None
        self._plans: dict[PlanOptions, QuantizationPlan] = {}
        self._types: dict[tuple[str, str, bool], TypeChoice] = {}  # by type_settings: shared by the plans
        self._bias_corrections: dict[str, tuple[float, ...]] = {}
        self._corrections_measured_for: _CorrectionSettings | None = None  # the settings the corrections belong to
        self.excluded_layers: set[str] = set()
        self.exclude(*excluded_layers)

    # ------------------------------------------------------------------ calibration
    def calibrate(self, data: Any, mini_batch_size: int | None = None, progress: bool = True) -> pd.DataFrame:
        """Exercise the network on ``data`` and collect the dynamic ranges.

        Args:
            data: A DataLoader, a Dataset of ``(image, label)``, an iterable of ``(images, labels)``
                batches, or a tensor of images, preprocessed as the network expects.
            mini_batch_size: Batch size for a tensor or Dataset (default 32).
            progress: Show a tqdm progress bar.

        Returns:
            The calibration table (see :attr:`calibration_table`).

        Raises:
            DataError: Empty data, a batch that is not a finite float image batch.
            CalibrationError: A layer fails on the data (wrong channels or size) or overflows.
        """
        stats: dict[str, RangeStats] = {}
        recorder = StatsRecorder(self.optimized.module, self._derivable, stats)
        samples = 0
        shape: tuple[int, ...] = ()
        batches = iter_batches(data, mini_batch_size)
        total = count_batches(data, mini_batch_size)
        with torch.no_grad():
            for index, (images, _labels) in enumerate(
                tqdm(batches, total=total, desc="Calibrating", unit="batch", disable=not progress)
            ):
                recorder.batch_index, recorder.batch_shape = index, tuple(images.shape)
                recorder.run(images)
                samples += images.shape[0]
                shape = tuple(images.shape[1:])
        merged = {name: RangeStats.union([part]) for name, part in self._state.stats.items()}
        for name, part in stats.items():
            merged.setdefault(name, RangeStats.empty()).merge_in(part)
        self.restore_calibration(
            CalibrationState(merged, self._state.tensor_nodes | recorder.tensor_nodes, self._state.num_samples + samples, shape or self._state.input_shape)
        )
        return self.calibration_table

    def calibration_state(self) -> CalibrationState:
        """What calibration recorded (ranges and MSB counts of the observed tensors, sample count);
        what the calibration file stores."""
        return self._state

    def restore_calibration(self, state: CalibrationState) -> None:
        """Set the recorded statistics (after :meth:`calibrate`, or from a calibration file).

        Bias corrections are cleared, with a warning: they were measured with the types of the earlier
        ranges (call :meth:`correct_bias` again).
        """
        self._state = state
        self._row_stats_cache = None
        self._plans = {}
        self._types = {}
        if self._bias_corrections:
            self._bias_corrections = {}
            warnings.warn(
                "the calibration changed: the bias corrections measured with the earlier ranges were cleared; "
                "call correct_bias(data) again",
                UserWarning,
                stacklevel=3,
            )

    @property
    def num_calibration_samples_(self) -> int:
        """Images seen by :meth:`calibrate` so far."""
        return self._state.num_samples

    @property
    def input_shape_(self) -> tuple[int, ...] | None:
        """Shape of one input calibration saw last, channels first ((C, H, W) for images, (C, L) for 1-D
        signals); None before calibration, or from a calibration file that predates recording it."""
        return tuple(self._state.input_shape) if self._state.input_shape else None

    @property
    def is_calibrated(self) -> bool:
        """Whether :meth:`calibrate` has run."""
        return self.num_calibration_samples_ > 0

    def check_calibrated(self, what: str) -> None:
        """Raise :class:`NotCalibratedError` naming ``what`` when :meth:`calibrate` has not run."""
        if not self.is_calibrated:
            raise NotCalibratedError(f"{what} needs calibration ranges: call calibrate(data) first")

    def _row_stats(self) -> dict[CalibrationRow, RangeStats]:
        """Statistics of every calibration row, in table order (learnables computed, pass-through
        layers derived).

        Computed once per calibration state (it reads every folded weight): the table, the types,
        the plan and the heat maps all ask for it.
        """
        if self._row_stats_cache is None:
            rows = calibration_rows(self.optimized, self._state.tensor_nodes)
            self._row_stats_cache = row_statistics(self.optimized, self._state, self._derivable, rows)
        return dict(self._row_stats_cache)

    @property
    def calibration_table(self) -> pd.DataFrame:
        """The calibration table: one row per weights, bias and activations tensor.

        Columns, exactly: ``Optimized Layer Name`` (``<layer>_<Weights|Bias|Activations>``),
        ``Network Layer Name``, ``Learnables / Activations``, ``MinValue``, ``MaxValue``.
        """
        self.check_calibrated("the calibration table")
        return calibration_table(calibration_rows(self.optimized, self._state.tensor_nodes), self._row_stats())

    def range_stats(self, row_name: str) -> RangeStats:
        """The recorded range and MSB histogram of one calibration-table row.

        Raises:
            KeyError: If no row has that ``Optimized Layer Name``; the message lists close names.
        """
        self.check_calibrated("range_stats")
        stats = self._row_stats()
        try:
            return stats[CalibrationRow.parse(row_name)]
        except (ValueError, KeyError):
            names = [row.name for row in stats]
            close = [name for name in names if row_name.split("_")[0] in name][:5]
            raise KeyError(f"no calibration row named {row_name!r}; rows look like {close or names[:5]}") from None

    def quantization_types(self, data: Any = None, mini_batch_size: int | None = None, progress: bool = True) -> pd.DataFrame:
        """The calibration table with the 8-bit type chosen for each row and what it costs.

        Adds ``FractionLength`` (scale ``2**-FractionLength``), ``MSB``/``LSB`` (the type's
        representable bits ``2**MSB … 2**LSB``), and counts from the MSB histogram: ``Overflow``
        (values whose MSB is above the type), ``Underflow`` (nonzero values that round to zero),
        ``Zeros`` and ``Count``. With ``data``, also the columns of :meth:`quantization_error`
        (``SQNR(dB)``, ``ClippingSQNR(dB)``, ``RoundingSQNR(dB)``, ``Dominant``; empty for Bias rows).
        """
        if data is not None:
            errors = self.quantization_error(data, mini_batch_size, progress)
            merged = self.quantization_types().merge(errors, on="Optimized Layer Name", how="left")
            return merged.fillna({"Dominant": ""})
        table = self.calibration_table  # reads the cached row statistics
        extra = []
        for row_stats in self._row_stats().values():  # in table order
            fraction = row_fraction_length(row_stats, self.exponent_scheme)
            msb, lsb = representable_bits(fraction)
            histogram = row_stats.histogram
            extra.append(
                (fraction, msb, lsb, histogram.overflow(fraction), histogram.underflow(fraction), histogram.zeros, histogram.total)
            )
        columns = ["FractionLength", "MSB", "LSB", "Overflow", "Underflow", "Zeros", "Count"]
        return pd.concat([table, pd.DataFrame(extra, columns=columns, index=table.index)], axis=1)

    # ------------------------------------------------------------------ layer selection
    @property
    def quantizable_layers(self) -> list[str]:
        """Every optimized conv/linear layer, in network order."""
        return list(self.optimized.layers)

    def _check_layer_names(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        unknown = [name for name in names if name not in self.optimized.layers]
        if unknown:
            raise KeyError(f"no optimized layer named {unknown}; quantizable layers are {self.quantizable_layers}")
        return names

    def exclude(self, *names: str) -> DLQuantizer:
        """Keep these optimized layers in float (quantize, validate and export honour it)."""
        self.excluded_layers.update(self._check_layer_names(names))
        return self

    def include(self, *names: str) -> DLQuantizer:
        """Quantize these optimized layers again (undo :meth:`exclude`)."""
        self.excluded_layers.difference_update(self._check_layer_names(names))
        return self

    def with_excluded(self, names: Iterable[str]) -> DLQuantizer:
        """A copy sharing this calibration (and bias corrections) that keeps exactly ``names`` in float."""
        variant = copy.copy(self)
        variant.excluded_layers = set(self._check_layer_names(names))
        variant._plans = {}
        return variant

    def with_bias_corrections(self, corrections: dict[str, Iterable[float]]) -> DLQuantizer:
        """A copy sharing this calibration and exclusions that carries exactly these bias corrections
        (one value per output channel of each layer named; ``{}`` for none).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> q = DLQuantizer(nn.Sequential(nn.Conv2d(1, 2, 3)).eval())
            >>> _ = q.calibrate(torch.rand(4, 1, 8, 8), progress=False)
            >>> q.with_bias_corrections({"0": [0.5, -0.25]}).bias_corrections, q.bias_corrections
            ({'0': (0.5, -0.25)}, {})
        """
        variant = copy.copy(self)
        variant.excluded_layers = set(self.excluded_layers)
        variant._set_bias_corrections(corrections)
        return variant

    def _set_bias_corrections(self, corrections: dict[str, Iterable[float]]) -> None:
        self._check_layer_names(corrections)
        values = {name: tuple(float(v) for v in layer_values) for name, layer_values in corrections.items()}
        check_bias_corrections(self.optimized, values.items())
        self._bias_corrections = values
        self._corrections_measured_for = self._correction_settings()
        self._plans = {}

    def _correction_settings(self) -> _CorrectionSettings:
        """What bias corrections depend on besides the calibration: the target and the weight and activation types."""
        return _CorrectionSettings(self.execution_environment, self.exponent_scheme, self.per_channel_weights)

    def _drop_corrections_of_other_settings(self) -> None:
        """Clear the bias corrections, with a warning, once the target, exponent scheme or per-channel flag
        they were measured with has been changed: they correct weight codes this quantizer no longer uses."""
        if self._bias_corrections and self._corrections_measured_for != self._correction_settings():
            measured_for = self._corrections_measured_for._asdict() if self._corrections_measured_for else {}
            self._bias_corrections = {}
            warnings.warn(
                f"the bias corrections were measured with {measured_for}; these settings changed since, so they were "
                "cleared: call correct_bias(data) again",
                UserWarning,
                stacklevel=4,
            )

    # ------------------------------------------------------------------ recovery beyond MATLAB
    @property
    def bias_corrections(self) -> dict[str, tuple[float, ...]]:
        """The empirical bias corrections (:meth:`correct_bias`): per optimized layer, one value per
        output channel subtracted from its bias; empty when none were measured, and cleared (with a
        warning) once the target, exponent scheme or per-channel flag changes."""
        self._drop_corrections_of_other_settings()
        return dict(self._bias_corrections)

    def correct_bias(
        self, data: Any, mini_batch_size: int | None = None, sequential: bool = True, progress: bool = True, rounding: Rounding | None = None
    ) -> DLQuantizer:
        """Empirical bias correction: restore each quantized layer's float mean output per channel.

        For every quantized conv/linear layer, the float and the emulated int8 networks run on ``data``;
        the mean per output channel of (quantized − float) pre-activation output is subtracted from
        the layer's bias (:mod:`dlqnb.evaluation.bias_correction`). Layers are corrected one at a time
        in network order, each measured with the corrections of the layers before it
        (``sequential=False``: all from one pass). The plan applies the corrections, so
        :meth:`quantize`, :meth:`validate`, :meth:`save` and the ONNX export all use them: on
        ``"cpu"`` the corrected bias is coded in int32 at input scale × weight scale, on ``"gpu"`` it
        stays float.

        The corrections stay with the quantizer when layers are excluded or included (a layer kept
        in float ignores its own; call this again to measure for the new set); a new calibration
        clears them.

        Args:
            data: Images in any form :meth:`calibrate` takes (labels are not needed).
            mini_batch_size: Batch size for a tensor or Dataset.
            sequential: Correct the layers one at a time in network order, or all from one run.
            progress: Show a progress bar.
            rounding: The activation rounding of the network the corrections are measured on (see
                :meth:`quantize`): None, the target's rule; ``"half_even"`` on ``"gpu"`` for a model deployed
                with TensorRT (or ONNX Runtime), which rounds ties to even. With power-of-two scales ties are
                common, and rounding them away from zero shifts the mean: corrections measured with one rule
                over-correct a network that rounds with the other.

        Returns:
            This quantizer (corrections in :attr:`bias_corrections`).

        Raises:
            NotCalibratedError: Before :meth:`calibrate`.
            DataError: Empty data or a bad batch.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> q = DLQuantizer(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 1)).eval())
            >>> x = torch.rand(4, 1, 8, 8)
            >>> _ = q.calibrate(x, progress=False)
            >>> sorted(q.correct_bias(x, progress=False).bias_corrections)
            ['0_1', '2']
        """
        self._set_bias_corrections(empirical_bias_corrections(self, data, mini_batch_size, sequential, progress, rounding))
        return self

    def choose_float_layers(self, data: Any, max_accuracy_drop: float = 0.01, **options: Any) -> FloatLayerChoice:
        """The shortest prefix of the sensitivity ranking to keep in float so that the accuracy drops by at
        most ``max_accuracy_drop`` (greedy, so not always the smallest set; verified by re-validation; see
        :func:`dlqnb.evaluation.sensitivity.choose_float_layers`, which takes the other ``options``).
        Apply it with ``q.exclude(*choice.layers)``.

        Example:
            >>> import torch
            >>> from torch import nn
            >>> q = DLQuantizer(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval())
            >>> x = torch.rand(8, 4)
            >>> _ = q.calibrate(x, progress=False)
            >>> q.choose_float_layers([(x, q.network(x).argmax(1))], 0.5, progress=False).layers
            ()
        """
        from dlqnb.evaluation.sensitivity import choose_float_layers

        return choose_float_layers(self, data, max_accuracy_drop, **options)

    def quantization_error(self, data: Any, mini_batch_size: int | None = None, progress: bool = True) -> pd.DataFrame:
        """Each weights and activations row's quantization error split into clipping and rounding, as
        SQNRs in dB (see :func:`dlqnb.evaluation.quantization_error.quantization_error`).

        Example:
            >>> import torch
            >>> from torch import nn
            >>> q = DLQuantizer(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval())
            >>> x = torch.rand(4, 1, 8, 8)
            >>> _ = q.calibrate(x, progress=False)
            >>> q.quantization_error(x, progress=False)["Dominant"].tolist()
            ['rounding', 'rounding', 'rounding']
        """
        from dlqnb.evaluation.quantization_error import quantization_error

        return quantization_error(self, data, mini_batch_size, progress)

    def plan_options(self, rounding: Rounding | None = None) -> PlanOptions:
        """What a plan is built for: this quantizer's target, exclusions, exponent scheme, per-channel
        flag and bias corrections, and the activation rounding (None: the target's rule)."""
        self._drop_corrections_of_other_settings()
        return PlanOptions(
            self.execution_environment, frozenset(self.excluded_layers), self.exponent_scheme, self.per_channel_weights, rounding, self._bias_corrections
        )

    def plan(self, rounding: Rounding | None = None) -> QuantizationPlan:
        """The quantization plan for the current calibration and options (see :mod:`dlqnb.plan.builder`):
        what every node does, and the int8 codes of every quantized layer. Built once per calibration
        and options.

        Args:
            rounding: How activations are rounded where they are quantized (see :meth:`quantize`).

        Raises:
            NotCalibratedError: Before :meth:`calibrate`.
        """
        self.check_calibrated("the quantization plan")
        options = self.plan_options(rounding)
        if options not in self._plans:  # restore_calibration clears them
            if len(self._plans) >= _PLANS_KEPT:  # the app toggles exclusions: keep the recent few only
                del self._plans[next(iter(self._plans))]
            statistics, settings = self._row_stats(), type_settings(options)
            if settings not in self._types:
                self._types[settings] = choose_types(self.optimized, statistics, options)
            self._plans[options] = build_plan(self.optimized, statistics, options, self._types[settings])
        return self._plans[options]

    def unsupported_layers(self) -> pd.DataFrame:
        """Layers that compute in float on the target, with the reason.

        On the ``"gpu"`` target (cuDNN, as in MATLAB's *INT8 Code Generation for Deep Learning
        Networks*) a conv/linear layer fused with a leaky ReLU or a clipped ReLU (ReLU6) stays in
        float, and so does global average pooling; on both targets layers with no int8 form (average
        pooling, the input normalization, SiLU, sigmoid, softmax, ...) compute in float on dequantized
        values. Shape queries and layers that only move float values are not listed.
        """
        return pd.DataFrame(self.plan().float_layers(), columns=["Layer", "Reason"])

    def quantized_layers(self) -> list[str]:
        """Optimized layers that run in int8: quantizable, supported by the target, not excluded."""
        return list(self.plan().layers)

    # ------------------------------------------------------------------ types, quantize, validate
    def type_choice(self) -> TypeChoice:
        """The type of every activation and weight for this target (:func:`dlqnb.plan.types.choose_types`);
        every plan of this calibration with the same target, exponent scheme and per-channel flag is built
        from this one choice, so read it without changing it (:meth:`tensor_types` gives a copy).

        Raises:
            NotCalibratedError: Before :meth:`calibrate`.
        """
        self.check_calibrated("the types")
        return self.plan().types  # the plan is built from this choice and cached: choose once

    def tensor_types(self) -> dict[str, FixedPointType]:
        """The 8-bit type of every tensor-producing node, by node name, for this target.

        Signed int8 everywhere on ``"gpu"``; on ``"cpu"`` uint8 with the same scale where the
        calibrated minimum is >= 0 (zero point 0, as ONNX Runtime's QLinearConv wants). Scales are
        shared as TensorRT and ONNX Runtime share them (:mod:`dlqnb.plan.types`).
        """
        return dict(self.type_choice().activations)

    def weight_fraction_lengths(self) -> dict[str, int | list[int]]:
        """The int8 weight fraction length of every optimized layer (with ``per_channel_weights``, a
        list: the fraction length of each output channel); the types are :meth:`type_choice`'s ``weights``."""
        return {
            name: list(weight_type.fraction_lengths) if weight_type.per_channel else weight_type.fraction_length
            for name, weight_type in self.type_choice().weights.items()
        }

    def quantize(self, rounding: Rounding | None = None) -> nn.Module:
        """An ``nn.Module`` that emulates the int8 target exactly (see :mod:`dlqnb.emulation.network`).

        Args:
            rounding: How activations are rounded where they are quantized. By default the target's
                rule: ties away from zero on ``"gpu"`` (MATLAB's cuDNN target), to even on ``"cpu"``
                (ONNX Runtime). ``"half_even"`` on ``"gpu"`` computes what TensorRT computes from the
                exported file (its QuantizeLinear rounds ties to even); weight codes are the same.

        Raises:
            NotCalibratedError: Before :meth:`calibrate`.
        """
        from dlqnb.models.networks import network_metadata

        metadata = {k: v for k, v in network_metadata(self.network).items() if k in ("class_names", "input_size") and v}
        return build_emulated_network(self.optimized.module, self.plan(rounding), metadata)

    def validate(
        self,
        data: Any,
        options: QuantizationOptions | None = None,
        mini_batch_size: int | None = None,
        progress: bool = True,
        rounding: Rounding | None = None,
    ) -> ValidationResult:
        """Quantize, run float and quantized networks on ``data``, and compare them.

        Args:
            data: Labelled data in any form :meth:`calibrate` takes.
            options: :class:`~dlqnb.QuantizationOptions` (metric functions; top-1 accuracy by default).
            mini_batch_size: Batch size for a tensor or Dataset.
            progress: Show a progress bar.
            rounding: The quantized network's activation rounding (see :meth:`quantize`): None, the
                target's rule, as MATLAB validates; ``"half_even"`` scores a ``"gpu"`` model as TensorRT and
                ONNX Runtime compute its exported file.

        Returns:
            A :class:`~dlqnb.evaluation.validation.ValidationResult` (``num_samples``, ``metric_results``). A
            network with several outputs is scored on the one :attr:`output` names.

        Raises:
            NotCalibratedError: Before :meth:`calibrate`.
            ValidationError: Data the network cannot take (names the batch and the reason).
            ScoredOutputError: The network returns a dict and :attr:`output` names none of its keys.
        """
        self.check_calibrated("validate")
        options = options or QuantizationOptions()
        float_scores, quantized_scores, labels = run_both(self.network, self.quantize(rounding), data, mini_batch_size, progress, self.output)
        table = validation_table(options.metric_fcn, float_scores, quantized_scores, labels, learnable_memory(self.network, self.plan()))
        return ValidationResult(len(float_scores), table, float_scores, quantized_scores, labels)

    # ------------------------------------------------------------------ calibration file
    def network_fingerprint(self) -> str:
        """SHA-256 of the optimized graph's code and of every parameter and buffer (names, shapes,
        bytes): what ties a calibration file or an exported model to this network."""
        from dlqnb.calibration.file import fingerprint

        return fingerprint(self.optimized.module)

    def save(self, path: str) -> None:
        """Write the calibration file (see :mod:`dlqnb.calibration.file`)."""
        self.check_calibrated("save")
        write_calibration(
            path,
            self._state,
            {
                "execution_environment": self.execution_environment,
                "exponent_scheme": self.exponent_scheme,
                "excluded_layers": sorted(self.excluded_layers),
                "per_channel_weights": self.per_channel_weights,
                "network_fingerprint": self.network_fingerprint(),
                "bias_corrections": {name: list(values) for name, values in self.bias_corrections.items()},
            },
        )

    @classmethod
    def load(cls, path: str, net: nn.Module, execution_environment: str | None = None, output: OutputChoice = None) -> DLQuantizer:
        """A calibrated quantizer for ``net`` from a calibration file written by :meth:`save`.

        Args:
            path: The calibration file.
            net: The network it was calibrated on.
            execution_environment: Another target for the same ranges (the file's by default): the
                ranges do not depend on the target, the types derived from them do.
            output: Which output holds the class scores, for a network with several (see the class).

        Raises:
            CalibrationFileError: Missing, truncated, foreign, newer, edited file, or a different network.
        """
        from dlqnb.calibration.file import CalibrationFileError

        settings, state = read_calibration(path)
        quantizer = cls(
            net,
            execution_environment=execution_environment or settings["execution_environment"],
            exponent_scheme=settings["exponent_scheme"],
            excluded_layers=settings["excluded_layers"],
            per_channel_weights=settings.get("per_channel_weights", False),
            output=output,
        )
        if quantizer.network_fingerprint() != settings["network_fingerprint"]:
            raise CalibrationFileError(
                f"{str(path)!r} was calibrated on a different network (its graph or weights differ from "
                f"the {type(net).__name__} given); calibrate this network instead"
            )
        quantizer.restore_calibration(state)
        corrections = stored_bias_corrections(path, settings)
        try:
            quantizer._set_bias_corrections(corrections)
        except (ValueError, KeyError) as error:
            raise CalibrationFileError(f"{str(path)!r} has bias corrections that do not fit this network: {error}") from error
        return quantizer

    def __repr__(self) -> str:
        state = f"{self.num_calibration_samples_} calibration samples" if self.is_calibrated else "not calibrated"
        return (
            f"DLQuantizer({type(self.network).__name__}, execution_environment={self.execution_environment!r}, "
            f"{len(self.optimized.layers)} quantizable layers, {state})"
        )

