"""``DLQuantizer``: calibrate a network and choose a scaled 8-bit type for every tensor.

The MATLAB ``dlquantizer`` in PyTorch. Construction traces and optimizes a copy of the network
(:mod:`dlqnb.core.graph`); :meth:`DLQuantizer.calibrate` runs that optimized network over the data and
records, for every optimized layer, the range and MSB counts of its folded weights and bias, and for
every layer that produces a tensor the range and MSB counts of its activations.

The calibration table has exactly MATLAB's columns and is shaped like MATLAB's: the Weights and
Bias rows of every conv/linear layer first, then the Activations rows, each part in network order.

A network that returns several outputs is scored (validation, export) on the one ``output=`` names: a
tuple's or list's first element by default, with a warning; a dict's entry must be named.

Calling :meth:`~DLQuantizer.calibrate` again widens the ranges with the new data (the counts add
up); the weights and bias rows do not change. A calibration that fails (bad batch, non-finite
activations) leaves the earlier state untouched.

How the statistics are gathered, exactly and cheaply: each computing layer's output is read once, by
one C++ pass on all cores (:mod:`dlqnb.calibration.kernel`), before the next layer runs (so in-place ops cannot
overwrite it); layers that only rearrange or join values (concatenation, flatten, reshape, dropout
at inference) get the union of their inputs' statistics without reading their outputs at all.

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
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
import torch.fx as fx
from torch import Tensor, nn
from tqdm.auto import tqdm

from dlqnb.core.batches import count_batches, iter_batches
from dlqnb.calibration.file import CalibrationState, read_calibration, write_calibration
from dlqnb.emulation.network import build_emulated_network
from dlqnb.errors import CalibrationError, NotCalibratedError
from dlqnb.core.graph import OptimizedNetwork, layer_name, optimize_network
from dlqnb.core.numerics import ExponentScheme, Rounding, choose_fraction_length, fraction_length, representable_bits
from dlqnb.calibration.observers import RangeStats
from dlqnb.core.ops import mutates_input, op_traits, tensor_args
from dlqnb.plan.builder import QuantizationPlan, TensorType, build_plan
from dlqnb.evaluation.validation import (
    OutputChoice,
    QuantizationOptions,
    ValidationResult,
    check_output_choice,
    learnable_memory,
    run_both,
    validation_table,
)

__all__ = ["CALIBRATION_COLUMNS", "CalibrationError", "DLQuantizer", "NotCalibratedError"]

CALIBRATION_COLUMNS = [
    "Optimized Layer Name",
    "Network Layer Name",
    "Learnables / Activations",
    "MinValue",
    "MaxValue",
]
ExecutionEnvironment = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class _Row:
    layer: str  # optimized layer name (a node of the optimized graph)
    network_layer: str
    kind: str  # Weights | Bias | Activations

    @property
    def name(self) -> str:
        return f"{self.layer}_{self.kind}"


class _StatsRecorder(fx.Interpreter):
    """Runs the optimized graph, recording each computing node's output as soon as it exists.

    A node that only moves values (:mod:`dlqnb.core.ops`) and whose tensor inputs are all recorded
    activations is not read at all: its statistics are the union of its inputs'. A candidate whose
    inputs turn out not to be activations (a tuple, a parameter) is recorded like any other node.
    """

    def __init__(self, module: fx.GraphModule, candidates: dict[str, list[str]], stats: dict[str, RangeStats]) -> None:
        super().__init__(module, garbage_collect_values=True)
        self.candidates = candidates
        self.stats = stats
        self.tensor_nodes: set[str] = set()
        self.batch_index = 0
        self.batch_shape: tuple[int, ...] = ()

    def run_node(self, n: fx.Node) -> Any:
        name = layer_name(n)
        try:
            out = super().run_node(n)
        except CalibrationError:
            raise
        except Exception as error:
            raise CalibrationError(
                f"layer '{name}' failed on batch {self.batch_index} of input shape {self.batch_shape}: {error}"
            ) from error
        if n.op in ("output", "get_attr") or not isinstance(out, Tensor) or not out.is_floating_point():
            return out
        self.tensor_nodes.add(name)
        sources = self.candidates.get(name)
        if sources and all(source in self.tensor_nodes for source in sources):
            return out  # derived from its sources' statistics
        stats = self.stats.setdefault(name, RangeStats.empty())
        stats.update(out)
        if stats.histogram.nonfinite:
            raise CalibrationError(
                f"layer '{name}' produced NaN or Inf activations on batch {self.batch_index}; "
                "the network overflows float32 on this data"
            )
        return out


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
        self._derivable = _derivable_sources(self.optimized.module)
        self._state = CalibrationState.empty()
        self._row_stats_cache: dict[str, RangeStats] | None = None
        self._plan_cache: tuple[tuple[Any, ...], QuantizationPlan] | None = None
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
        recorder = _StatsRecorder(self.optimized.module, self._derivable, stats)
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
        """Set the recorded statistics (after :meth:`calibrate`, or from a calibration file)."""
        self._state = state
        self._row_stats_cache = None
        self._plan_cache = None

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

    def _rows(self) -> list[_Row]:
        learnables: list[_Row] = []
        activations: list[_Row] = []
        tensor_nodes = self._state.tensor_nodes
        for node in self.optimized.nodes():
            name = layer_name(node)
            layer = self.optimized.layers.get(name)
            if layer is not None:
                learnables.append(_Row(name, layer.network_layer_name, "Weights"))
                learnables.append(_Row(name, layer.network_layer_name, "Bias"))
            if name in tensor_nodes:
                network_layer = layer.network_layer_name if layer is not None else name
                activations.append(_Row(name, network_layer, "Activations"))
        return learnables + activations

    def _row_stats(self) -> dict[str, RangeStats]:
        """Statistics of every row, by row name (learnables computed, pass-through layers derived).

        Computed once per calibration state (it reads every folded weight): the table, the types,
        quantize, export and the heat maps all ask for it.
        """
        if self._row_stats_cache is None:
            self._row_stats_cache = self._compute_row_stats()
        return dict(self._row_stats_cache)

    def _compute_row_stats(self) -> dict[str, RangeStats]:
        by_node = dict(self._state.stats)
        for name, sources in self._derivable.items():  # in network order: sources come first
            if name in self._state.tensor_nodes and name not in by_node:
                by_node[name] = RangeStats.union(by_node[source] for source in sources)
        result: dict[str, RangeStats] = {}
        for row in self._rows():
            if row.kind == "Activations":
                result[row.name] = by_node[row.layer]
            else:
                fused = self.optimized.fused(row.layer)
                tensor = fused.layer.weight if row.kind == "Weights" else fused.layer.bias
                result[row.name] = RangeStats.of(tensor.detach())
        return result

    @property
    def calibration_table(self) -> pd.DataFrame:
        """The calibration table: one row per weights, bias and activations tensor.

        Columns, exactly: ``Optimized Layer Name`` (``<layer>_<Weights|Bias|Activations>``),
        ``Network Layer Name``, ``Learnables / Activations``, ``MinValue``, ``MaxValue``.
        """
        self.check_calibrated("the calibration table")
        stats = self._row_stats()
        records = [
            (row.name, row.network_layer, row.kind, stats[row.name].min_value, stats[row.name].max_value)
            for row in self._rows()
        ]
        return pd.DataFrame.from_records(records, columns=CALIBRATION_COLUMNS)

    def range_stats(self, row_name: str) -> RangeStats:
        """The recorded range and MSB histogram of one calibration-table row.

        Raises:
            KeyError: If no row has that ``Optimized Layer Name``; the message lists close names.
        """
        self.check_calibrated("range_stats")
        stats = self._row_stats()
        if row_name not in stats:
            close = [name for name in stats if row_name.split("_")[0] in name][:5]
            raise KeyError(f"no calibration row named {row_name!r}; rows look like {close or list(stats)[:5]}")
        return stats[row_name]

    def quantization_types(self) -> pd.DataFrame:
        """The calibration table with the 8-bit type chosen for each row and what it costs.

        Adds ``FractionLength`` (scale ``2**-FractionLength``), ``MSB``/``LSB`` (the type's
        representable bits ``2**MSB … 2**LSB``), and counts from the MSB histogram: ``Overflow``
        (values whose MSB is above the type), ``Underflow`` (nonzero values that round to zero),
        ``Zeros`` and ``Count``.
        """
        table = self.calibration_table  # reads the cached row statistics
        stats = self._row_stats()
        extra = []
        for row_name, low, high in zip(table["Optimized Layer Name"], table["MinValue"], table["MaxValue"]):
            row_stats = stats[row_name]
            fraction = choose_fraction_length(low, high, row_stats.histogram, self.exponent_scheme)
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
        """A copy sharing this calibration that keeps exactly ``names`` in float."""
        variant = copy.copy(self)
        variant.excluded_layers = set(self._check_layer_names(names))
        variant._plan_cache = None
        return variant

    def plan(self) -> QuantizationPlan:
        """The quantization plan for the current calibration, target and exclusions (see
        :mod:`dlqnb.plan.builder`): what every node does, and the int8 codes of every quantized layer.

        Raises:
            NotCalibratedError: Before :meth:`calibrate`.
        """
        self.check_calibrated("the quantization plan")
        key = (frozenset(self.excluded_layers), self.per_channel_weights)  # restore_calibration clears the cache
        if self._plan_cache is None or self._plan_cache[0] != key:
            self._plan_cache = (key, build_plan(self))
        return self._plan_cache[1]

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
    def tensor_types(self) -> dict[str, TensorType]:
        """The 8-bit type of every tensor-producing node, by node name, for this target.

        Signed int8 everywhere on ``"gpu"``; on ``"cpu"`` uint8 with the same scale where the
        calibrated minimum is >= 0 (zero point 0, as ONNX Runtime's QLinearConv wants).

        Scales are shared as TensorRT and ONNX Runtime share them: a concatenation's inputs (when it is
        their only consumer) take the concatenation's type, whose calibrated range is the union of
        theirs, so they are produced in it directly (one rounding instead of two, and the
        concatenation is a copy); ops that keep their input's grid (max pooling, reshapes, dropout;
        :mod:`dlqnb.core.ops`) keep its type.
        """
        types = self.quantization_types()
        activations = types[types["Learnables / Activations"] == "Activations"]
        result = {}
        for row_name, low, fraction in zip(activations["Optimized Layer Name"], activations["MinValue"], activations["FractionLength"]):
            node = row_name[: -len("_Activations")]
            signed = self.execution_environment == "gpu" or low < 0
            result[node] = TensorType(int(fraction), signed)
        module = self.optimized.module
        for node in self.optimized.nodes():
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

    def weight_fraction_lengths(self) -> dict[str, int | list[int]]:
        """The int8 weight fraction length of every optimized layer (with ``per_channel_weights``, a
        list: the MinMax fraction length of each output channel)."""
        if self.per_channel_weights:
            result: dict[str, int | list[int]] = {}
            for name in self.optimized.layers:
                weight = self.optimized.fused(name).layer.weight.detach()
                result[name] = [fraction_length(m) for m in weight.abs().flatten(1).amax(1).tolist()]
            return result
        types = self.quantization_types()
        weights = types[types["Learnables / Activations"] == "Weights"]
        return {name[: -len("_Weights")]: int(f) for name, f in zip(weights["Optimized Layer Name"], weights["FractionLength"])}

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

        if rounding not in (None, "half_away", "half_even"):
            raise ValueError(f"rounding must be 'half_away' or 'half_even' (or None for the target's rule), got {rounding!r}")
        metadata = {k: v for k, v in network_metadata(self.network).items() if k in ("class_names", "input_size") and v}
        return build_emulated_network(self.optimized.module, self.plan(), metadata, rounding)

    def validate(self, data: Any, options: QuantizationOptions | None = None, mini_batch_size: int | None = None, progress: bool = True) -> ValidationResult:
        """Quantize, run float and quantized networks on ``data``, and compare them.

        Args:
            data: Labelled data in any form :meth:`calibrate` takes.
            options: :class:`~dlqnb.QuantizationOptions` (metric functions; top-1 accuracy by default).
            mini_batch_size: Batch size for a tensor or Dataset.
            progress: Show a progress bar.

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
        float_scores, quantized_scores, labels = run_both(self.network, self.quantize(), data, mini_batch_size, progress, self.output)
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
        types = self.quantization_types()
        write_calibration(
            path,
            self._state,
            {
                "execution_environment": self.execution_environment,
                "exponent_scheme": self.exponent_scheme,
                "excluded_layers": sorted(self.excluded_layers),
                "per_channel_weights": self.per_channel_weights,
                "network_fingerprint": self.network_fingerprint(),
                "types": {row: int(f) for row, f in zip(types["Optimized Layer Name"], types["FractionLength"])},
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
        return quantizer

    def __repr__(self) -> str:
        state = f"{self.num_calibration_samples_} calibration samples" if self.is_calibrated else "not calibrated"
        return (
            f"DLQuantizer({type(self.network).__name__}, execution_environment={self.execution_environment!r}, "
            f"{len(self.optimized.layers)} quantizable layers, {state})"
        )


def _derivable_sources(module: fx.GraphModule) -> dict[str, list[str]]:
    """Nodes that only move values (by :mod:`dlqnb.core.ops`) with the tensor inputs whose statistics they
    may be derived from, in network order; inputs that an in-place op overwrites are not usable."""
    mutated = {
        layer_name(n.args[0]) for n in module.graph.nodes if n.args and isinstance(n.args[0], fx.Node) and mutates_input(module, n)
    }
    derivable: dict[str, list[str]] = {}
    for node in module.graph.nodes:
        if op_traits(module, node).values != "moves":
            continue
        sources = [s for s in tensor_args(node) if op_traits(module, s).is_layer]
        if sources and not any(layer_name(source) in mutated for source in sources):
            derivable[layer_name(node)] = [layer_name(source) for source in sources]
    return derivable
