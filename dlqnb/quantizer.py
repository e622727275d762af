"""``DLQuantizer``: calibrate a network and choose a scaled 8-bit type for every tensor.

The MATLAB ``dlquantizer`` in PyTorch. Construction traces and optimizes a copy of the network
(:mod:`dlqnb.graph`); :meth:`DLQuantizer.calibrate` runs that optimized network over the data and
records, for every optimized layer, the range and MSB counts of its folded weights and bias, and for
every layer that produces a tensor the range and MSB counts of its activations.

The calibration table has exactly the seed's columns and is shaped like the seed's: the Weights and
Bias rows of every conv/linear layer first, then the Activations rows, each part in network order.

Calling :meth:`~DLQuantizer.calibrate` again widens the ranges with the new data (the counts add
up); the weights and bias rows do not change. A calibration that fails (bad batch, non-finite
activations) leaves the earlier state untouched.

How the statistics are gathered, exactly and cheaply: each computing layer's output is read once, by
one C++ pass on all cores (:mod:`dlqnb._kernel`), before the next layer runs (so in-place ops cannot
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
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from dlqnb.batches import count_batches, iter_batches
from dlqnb.graph import OptimizedNetwork, mutates_input, optimize_network, value_sources
from dlqnb.emulation import TARGET_LIBRARY, TensorType, build_emulated_network, int8_node
from dlqnb.numerics import ExponentScheme, choose_fraction_length, fraction_length, representable_bits
from dlqnb.observers import RangeStats

__all__ = ["CALIBRATION_COLUMNS", "CalibrationError", "DLQuantizer", "NotCalibratedError"]

CALIBRATION_COLUMNS = [
    "Optimized Layer Name",
    "Network Layer Name",
    "Learnables / Activations",
    "MinValue",
    "MaxValue",
]
ExecutionEnvironment = Literal["gpu", "cpu"]


class CalibrationError(RuntimeError):
    """Calibration failed on a layer or batch; the message names it."""


class NotCalibratedError(RuntimeError):
    """A step that needs calibration ranges was called before :meth:`DLQuantizer.calibrate`."""


@dataclass(frozen=True)
class _Row:
    layer: str  # optimized layer name (a node of the optimized graph)
    network_layer: str
    kind: str  # Weights | Bias | Activations

    @property
    def name(self) -> str:
        return f"{self.layer}_{self.kind}"


class _StatsRecorder(fx.Interpreter):
    """Runs the optimized graph, recording each computing node's output as soon as it exists."""

    def __init__(self, module: fx.GraphModule, derived: set[str], stats: dict[str, RangeStats]) -> None:
        super().__init__(module, garbage_collect_values=True)
        self.derived = derived
        self.stats = stats
        self.tensor_nodes: set[str] = set()
        self.batch_index = 0
        self.batch_shape: tuple[int, ...] = ()

    def run_node(self, n: fx.Node) -> Any:
        try:
            out = super().run_node(n)
        except CalibrationError:
            raise
        except Exception as error:
            raise CalibrationError(
                f"layer '{n.name}' failed on batch {self.batch_index} of input shape {self.batch_shape}: {error}"
            ) from error
        if n.op != "output" and n.op != "get_attr" and isinstance(out, Tensor) and out.is_floating_point():
            self.tensor_nodes.add(n.name)
            if n.name not in self.derived:
                stats = self.stats.setdefault(n.name, RangeStats.empty())
                stats.update(out)
                if stats.histogram.nonfinite:
                    raise CalibrationError(
                        f"layer '{n.name}' produced NaN or Inf activations on batch {self.batch_index}; "
                        "the network overflows float32 on this data"
                    )
        return out


class DLQuantizer:
    """Quantize a network's weights, biases and activations to scaled 8-bit integers.

    Args:
        net: The network (an ``nn.Module`` that torch.fx can trace); it is never modified.
        execution_environment: ``"gpu"`` (cuDNN/TensorRT int8, the default) or ``"cpu"`` (ONNX
            Runtime int8); see ``shared/DESIGN.md`` for the arithmetic of each.
        exponent_scheme: How a type is chosen from the ranges: ``"minmax"`` (the seeds' default)
            or ``"histogram"`` (see :func:`dlqnb.numerics.choose_fraction_length`).
        excluded_layers: Optimized layer names to keep in float (the app's per-layer switch).
        per_channel_weights: One power-of-two weight scale per output channel (MinMax of each
            channel) instead of one per layer; emulation and export follow it.

    Attributes:
        optimized_: The traced network with BatchNorm folded and activations fused.
        num_calibration_samples_: Images seen by :meth:`calibrate` so far.
        excluded_layers_: Optimized layers the user keeps in float.

    Raises:
        NetworkGraphError: If the network cannot be traced or holds a layer dlqnb cannot handle.

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
        self.optimized_: OptimizedNetwork = optimize_network(net)
        self._derived_sources = _derived_sources(self.optimized_.module)
        self._stats: dict[str, RangeStats] = {}
        self._tensor_nodes: set[str] = set()
        self._row_stats_cache: dict[str, RangeStats] | None = None
        self.num_calibration_samples_ = 0
        self.excluded_layers_: set[str] = set()
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
        recorder = _StatsRecorder(self.optimized_.module, set(self._derived_sources), stats)
        samples = 0
        batches = iter_batches(data, mini_batch_size)
        total = count_batches(data, mini_batch_size)
        with torch.no_grad():
            for index, (images, _labels) in enumerate(
                tqdm(batches, total=total, desc="Calibrating", unit="batch", disable=not progress)
            ):
                recorder.batch_index, recorder.batch_shape = index, tuple(images.shape)
                recorder.run(images)
                samples += images.shape[0]
        for name, part in stats.items():
            self._stats.setdefault(name, RangeStats.empty()).merge_in(part)
        self._restore_calibration(self._stats, self._tensor_nodes | recorder.tensor_nodes, self.num_calibration_samples_ + samples)
        return self.calibration_table

    def _restore_calibration(self, stats: dict[str, RangeStats], tensor_nodes: set[str], samples: int) -> None:
        """Set the recorded statistics (after calibrate, or from a calibration file) and drop derived state."""
        self._stats = stats
        self._tensor_nodes = tensor_nodes
        self.num_calibration_samples_ = samples
        self._row_stats_cache = None

    @property
    def is_calibrated(self) -> bool:
        """Whether :meth:`calibrate` has run."""
        return self.num_calibration_samples_ > 0

    def _require_calibration(self, what: str) -> None:
        if not self.is_calibrated:
            raise NotCalibratedError(f"{what} needs calibration ranges: call calibrate(data) first")

    def _rows(self) -> list[_Row]:
        learnables: list[_Row] = []
        activations: list[_Row] = []
        for node in self.optimized_.nodes():
            layer = self.optimized_.layers.get(node.name)
            if layer is not None:
                learnables.append(_Row(node.name, layer.network_layer_name, "Weights"))
                learnables.append(_Row(node.name, layer.network_layer_name, "Bias"))
            if node.name in self._tensor_nodes:
                network_layer = layer.network_layer_name if layer is not None else node.name
                activations.append(_Row(node.name, network_layer, "Activations"))
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
        by_node = dict(self._stats)
        for name, sources in self._derived_sources.items():
            if name in self._tensor_nodes:
                by_node[name] = RangeStats.union(by_node[source] for source in sources)
        result: dict[str, RangeStats] = {}
        for row in self._rows():
            if row.kind == "Activations":
                result[row.name] = by_node[row.layer]
            else:
                fused = self.optimized_.fused(row.layer)
                tensor = fused.layer.weight if row.kind == "Weights" else fused.layer.bias
                result[row.name] = RangeStats.of(tensor.detach())
        return result

    @property
    def calibration_table(self) -> pd.DataFrame:
        """The calibration table: one row per weights, bias and activations tensor.

        Columns, exactly: ``Optimized Layer Name`` (``<layer>_<Weights|Bias|Activations>``),
        ``Network Layer Name``, ``Learnables / Activations``, ``MinValue``, ``MaxValue``.
        """
        self._require_calibration("the calibration table")
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
        self._require_calibration("range_stats")
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
        return list(self.optimized_.layers)

    def _check_layer_names(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        unknown = [name for name in names if name not in self.optimized_.layers]
        if unknown:
            raise KeyError(f"no optimized layer named {unknown}; quantizable layers are {self.quantizable_layers}")
        return names

    def exclude(self, *names: str) -> DLQuantizer:
        """Keep these optimized layers in float (quantize, validate and export honour it)."""
        self.excluded_layers_.update(self._check_layer_names(names))
        return self

    def include(self, *names: str) -> DLQuantizer:
        """Quantize these optimized layers again (undo :meth:`exclude`)."""
        self.excluded_layers_.difference_update(self._check_layer_names(names))
        return self

    def unsupported_layers(self) -> pd.DataFrame:
        """Layers the target cannot run in int8, with the reason: they stay in float.

        On the ``"gpu"`` target (cuDNN, seed 001) a conv/linear layer fused with a leaky ReLU or a
        clipped ReLU (ReLU6) stays in float, and so does global average pooling; on both targets
        layers with no int8 implementation in dlqnb (average pooling, the input normalization,
        softmax, ...) compute in float on dequantized values.
        """
        rows = []
        library = TARGET_LIBRARY[self.execution_environment]
        for name, layer in self.optimized_.layers.items():
            if self.execution_environment == "gpu" and layer.activation in ("leaky_relu", "relu6"):
                kind = "leaky ReLU" if layer.activation == "leaky_relu" else "clipped ReLU (ReLU6)"
                rows.append((name, f"fused with a {kind}, which is not an int8 layer for {library} (seed 001)"))
        module = self.optimized_.module
        for node in self.optimized_.nodes():
            if node.op in ("placeholder", "output", "get_attr") or node.name in self.optimized_.layers or int8_node(module, node, self.execution_environment):
                continue
            target = type(module.get_submodule(node.target)).__name__ if node.op == "call_module" else str(getattr(node.target, "__name__", node.target))
            if "adaptive_avg_pool" in target.lower() or target == "AdaptiveAvgPool2d":
                reason = (
                    f"global average pooling is not an int8 layer for {library} (seed 001)"
                    if self.execution_environment == "gpu"
                    else "global average pooling: computed in float on dequantized values"
                )
            else:
                reason = f"{target} has no int8 implementation in dlqnb: computed in float"
            rows.append((node.name, reason))
        return pd.DataFrame(rows, columns=["Layer", "Reason"])

    def quantized_layers(self) -> list[str]:
        """Optimized layers that run in int8: quantizable, supported by the target, not excluded."""
        unsupported = set(self.unsupported_layers()["Layer"])
        return [name for name in self.optimized_.layers if name not in unsupported and name not in self.excluded_layers_]

    # ------------------------------------------------------------------ types, quantize, validate
    def tensor_types(self) -> dict[str, TensorType]:
        """The 8-bit type of every tensor-producing node, by node name, for this target.

        Signed int8 everywhere on ``"gpu"``; on ``"cpu"`` uint8 with the same scale where the
        calibrated minimum is >= 0 (zero point 0, as ONNX Runtime's QLinearConv wants).

        Scales are shared as TensorRT and ONNX Runtime share them: a concatenation's inputs (when it is
        their only consumer) take the concatenation's type, whose calibrated range is the union of
        theirs, so they are produced in it directly (one rounding instead of two, and the
        concatenation is a copy); max pooling, flatten and dropout keep their input's type, as their
        values stay on its grid.
        """
        types = self.quantization_types()
        activations = types[types["Learnables / Activations"] == "Activations"]
        result = {}
        for row_name, low, fraction in zip(activations["Optimized Layer Name"], activations["MinValue"], activations["FractionLength"]):
            node = row_name[: -len("_Activations")]
            signed = self.execution_environment == "gpu" or low < 0
            result[node] = TensorType(int(fraction), signed)
        module = self.optimized_.module
        for node in self.optimized_.nodes():
            if node.name not in result:
                continue
            if node.op == "call_function" and node.target in (torch.cat, torch.concat):
                for source in node.args[0]:
                    if isinstance(source, fx.Node) and source.name in result and len(source.users) == 1:
                        result[source.name] = result[node.name]
            elif _keeps_input_grid(module, node) and isinstance(node.args[0], fx.Node) and node.args[0].name in result:
                result[node.name] = result[node.args[0].name]
        return result

    def weight_fraction_lengths(self) -> dict[str, int | list[int]]:
        """The int8 weight fraction length of every optimized layer (with ``per_channel_weights``, a
        list: the MinMax fraction length of each output channel)."""
        if self.per_channel_weights:
            result: dict[str, int | list[int]] = {}
            for name in self.optimized_.layers:
                weight = self.optimized_.fused(name).layer.weight.detach()
                result[name] = [fraction_length(m) for m in weight.abs().flatten(1).amax(1).tolist()]
            return result
        types = self.quantization_types()
        weights = types[types["Learnables / Activations"] == "Weights"]
        return {name[: -len("_Weights")]: int(f) for name, f in zip(weights["Optimized Layer Name"], weights["FractionLength"])}

    def quantize(self) -> nn.Module:
        """An ``nn.Module`` that emulates the int8 target exactly (see :mod:`dlqnb.emulation`).

        Raises:
            NotCalibratedError: Before :meth:`calibrate`.
        """
        self._require_calibration("quantize")
        from dlqnb.models import network_metadata

        metadata = {k: v for k, v in network_metadata(self.network).items() if k in ("class_names", "input_size") and v}
        return build_emulated_network(
            self.optimized_.module,
            {name: layer.members for name, layer in self.optimized_.layers.items()},
            self.quantized_layers(),
            self.weight_fraction_lengths(),
            self.tensor_types(),
            self.execution_environment,
            metadata,
        )

    def validate(self, data: Any, options: Any = None, mini_batch_size: int | None = None, progress: bool = True) -> Any:
        """Quantize, run float and quantized networks on ``data``, and compare them.

        Args:
            data: Labelled data in any form :meth:`calibrate` takes.
            options: :class:`~dlqnb.QuantizationOptions` (metric functions; top-1 accuracy by default).
            mini_batch_size: Batch size for a tensor or Dataset.
            progress: Show a progress bar.

        Returns:
            A :class:`~dlqnb.validation.ValidationResult` (``num_samples``, ``metric_results``).

        Raises:
            NotCalibratedError: Before :meth:`calibrate`.
            CalibrationError: Data the network cannot take (names the batch and the reason).
        """
        from dlqnb.validation import QuantizationOptions, ValidationResult, learnable_memory, run_both, validation_table

        self._require_calibration("validate")
        options = options or QuantizationOptions()
        float_scores, quantized_scores, labels = run_both(self, data, mini_batch_size, progress)
        table = validation_table(options.metric_fcn, float_scores, quantized_scores, labels, learnable_memory(self))
        return ValidationResult(len(float_scores), table, float_scores, quantized_scores, labels)

    # ------------------------------------------------------------------ calibration file
    def save(self, path: str) -> None:
        """Write the calibration file (see :mod:`dlqnb.calibration_file`)."""
        from dlqnb.calibration_file import save_calibration

        save_calibration(self, path)

    @classmethod
    def load(cls, path: str, net: nn.Module) -> DLQuantizer:
        """A calibrated quantizer for ``net`` from a calibration file written by :meth:`save`."""
        from dlqnb.calibration_file import load_calibration

        return load_calibration(path, net)

    def __repr__(self) -> str:
        state = f"{self.num_calibration_samples_} calibration samples" if self.is_calibrated else "not calibrated"
        return (
            f"DLQuantizer({type(self.network).__name__}, execution_environment={self.execution_environment!r}, "
            f"{len(self.optimized_.layers)} quantizable layers, {state})"
        )


def _keeps_input_grid(module: fx.GraphModule, node: fx.Node) -> bool:
    """Int8 layers whose output values are some of their input's values (pooling by max, reshaping)."""
    if node.op == "call_module":
        return isinstance(module.get_submodule(node.target), (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Dropout, nn.Identity, nn.Flatten))
    if node.op == "call_function":
        return node.target in (torch.flatten, torch.reshape, F.max_pool2d)
    return node.op == "call_method" and node.target in ("view", "reshape", "flatten", "contiguous")


def _derived_sources(module: fx.GraphModule) -> dict[str, list[str]]:
    """Nodes whose statistics are the union of their inputs', by name, with those inputs."""
    mutated = {
        n.args[0].name for n in module.graph.nodes if n.args and isinstance(n.args[0], fx.Node) and mutates_input(module, n)
    }
    derived: dict[str, list[str]] = {}
    for node in module.graph.nodes:
        sources = value_sources(module, node)
        if sources is not None and not any(source.name in mutated for source in sources):
            derived[node.name] = [source.name for source in sources]
    return derived

