"""Per-layer network metrics (MATLAB's ``estimateNetworkMetrics``): learnables, operations, parameter
memory, multiply-accumulates and arithmetic intensity of every layer that has learnables.

:func:`estimate_network_metrics` takes a float network (with the shape of one input) or a calibrated
:class:`~dlqnb.DLQuantizer`. For a network, the layers are its own (BatchNorm included, 4 bytes per
parameter, as MATLAB counts single precision). For a quantizer, they are the optimized layers of the
quantized network (BatchNorm folded), and the memory is what :meth:`~dlqnb.DLQuantizer.validate` reports,
layer by layer: :func:`dlqnb.evaluation.validation.learnable_memory` applied to each layer's part of the
plan, so that the column sums to validate's ``LearnableParameterMemory(bytes)`` of the quantized network.

Columns, for one input (batch size 1):

* ``LayerName``, ``LayerType`` (MATLAB's names: ``2-D Convolution``, ``2-D Grouped Convolution``,
  ``Fully Connected``, ``Batch Normalization``; other layers their class name);
* ``NumberOfLearnables``: the non-zero learnable values (for a quantized layer, its non-zero int8 weight
  codes and biases);
* ``NumberOfOperations``: multiplications and additions, 2 per multiply-accumulate;
* ``ParameterMemory (MB)``: bytes of the learnables / 2**20;
* ``NumberOfMACs``: multiply-accumulates, ``C_out × C_in/groups × k_h × k_w × H_out × W_out`` for a
  convolution, ``in_features × out_features`` (per position) for a fully connected layer, one per value
  for a BatchNorm; <NA> for other layers with learnables (LayerNorm, a submodule captured whole, ...);
* ``ArithmeticIntensity (FLOP/B)``: operations per byte of memory the layer touches (its learnables, its
  input and its output, each read or written once): 4 bytes per float value, the type's bytes for the
  int8/uint8 input and output of a quantized layer.

A module called more than once gives a row per call; its learnables count in the first.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 10))
    >>> table = estimate_network_metrics(net, input_size=(3, 32, 32))
    >>> table[["LayerName", "LayerType", "NumberOfMACs"]].values.tolist()
    [['0', '2-D Convolution', 194400], ['3', 'Fully Connected', 72000]]
"""

from __future__ import annotations

import copy
import dataclasses
import math
from operator import attrgetter
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
import torch.fx as fx
from torch import Tensor, nn

from dlqnb.core.graph import FusedLayer, layer_name, trace_network
from dlqnb.core.ops import conv_or_linear, is_batchnorm
from dlqnb.evaluation.validation import learnable_memory
from dlqnb.models.networks import network_metadata

if TYPE_CHECKING:
    from dlqnb.plan.builder import QuantizationPlan
    from dlqnb.quantizer import DLQuantizer

__all__ = ["MEGABYTE", "METRIC_COLUMNS", "estimate_network_metrics"]

METRIC_COLUMNS = [
    "LayerName",
    "LayerType",
    "NumberOfLearnables",
    "NumberOfOperations",
    "ParameterMemory (MB)",
    "NumberOfMACs",
    "ArithmeticIntensity (FLOP/B)",
]
#: Bytes of a float learnable or activation (MATLAB's single precision; ``learnable_memory``'s float rule).
_FLOAT_BYTES = 4
#: The MB of dlqnb's tables and figures: 2**20 bytes (MATLAB's page does not say which it means).
MEGABYTE = 2**20


class _ShapeRecorder(fx.Interpreter):
    """Runs a graph and records the shape of every tensor it produces (without touching ``node.meta``,
    which other stages read)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}

    def run_node(self, node: fx.Node) -> Any:
        result = super().run_node(node)
        if isinstance(result, Tensor):
            self.shapes[node] = tuple(result.shape)
        return result


def _layer_type(module: nn.Module) -> str:
    layer = module.layer if isinstance(module, FusedLayer) else module
    traits = conv_or_linear(layer)
    if traits is not None and traits.kind == "conv":
        dims = layer.weight.dim() - 2
        return f"{dims}-D Grouped Convolution" if layer.groups > 1 else f"{dims}-D Convolution"
    if traits is not None:
        return "Fully Connected"
    if is_batchnorm(layer):
        return "Batch Normalization"
    return type(layer).__name__


def _macs(module: nn.Module, output_values: int) -> int | None:
    """Multiply-accumulates of one call that produces ``output_values`` values (None where unknown)."""
    layer = module.layer if isinstance(module, FusedLayer) else module
    traits = conv_or_linear(layer)
    if traits is not None and traits.kind == "conv":
        return output_values * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
    if traits is not None:
        return output_values * layer.in_features
    if is_batchnorm(layer):
        return output_values  # one multiply-add per value once folded into a scale and a shift
    return None


def _quantized_bytes(plan: QuantizationPlan, name: str, num_parameters: int) -> int:
    """Bytes of one layer's ``num_parameters`` learnables in the quantized network: validate's rule,
    applied to the part of the plan that is this layer."""
    part = dataclasses.replace(plan, layers={name: plan.layers[name]} if name in plan.layers else {}, optimized_parameters=num_parameters)
    return learnable_memory(nn.Module(), part)[1]


def _check_input_size(input_size: Any) -> tuple[int, ...]:
    if not isinstance(input_size, Sequence) or isinstance(input_size, str) or not input_size or not all(isinstance(d, int) and d > 0 for d in input_size):
        raise ValueError(f"input_size must be the shape of one input, channels first, e.g. (3, 224, 224); got {input_size!r}")
    return tuple(int(d) for d in input_size)


def _network_input_size(net: nn.Module) -> tuple[int, ...]:
    metadata = network_metadata(net)
    if metadata["input_size"] and metadata["channels"]:
        return (metadata["channels"], *metadata["input_size"])
    raise ValueError(
        f"estimate_network_metrics needs the shape of one input of {type(net).__name__}: pass input_size, channels "
        "first, e.g. input_size=(3, 224, 224)"
    )


def _shapes(gm: fx.GraphModule, input_size: tuple[int, ...]) -> dict[fx.Node, tuple[int, ...]]:
    parameter = next(iter(gm.parameters()), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = parameter.device if parameter is not None else None
    example = torch.rand(1, *input_size, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    recorder = _ShapeRecorder(gm)
    try:
        with torch.no_grad():
            recorder.run(example)
    except Exception as error:
        raise ValueError(f"the network cannot take an input of input_size={input_size} (batch of 1): {error}") from error
    return recorder.shapes


def _rows(gm: fx.GraphModule, input_size: tuple[int, ...], plan: QuantizationPlan | None) -> list[dict[str, Any]]:
    shapes = _shapes(gm, input_size)
    counted: set[int] = set()
    rows = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            parameters = list(module.parameters())
        elif node.op == "get_attr" and isinstance(attrgetter(str(node.target))(gm), nn.Parameter):
            module, parameters = None, [attrgetter(str(node.target))(gm)]
        else:
            continue
        if not parameters:
            continue
        name = layer_name(node)
        new = [p for p in parameters if id(p) not in counted]
        counted.update(id(p) for p in new)
        quantized = plan.layers.get(name) if plan is not None else None
        total_values = sum(p.numel() for p in parameters)
        if plan is not None:
            parameter_bytes = _quantized_bytes(plan, name, total_values)
        else:
            parameter_bytes = _FLOAT_BYTES * total_values
        if quantized is not None:
            learnables = int(torch.count_nonzero(quantized.weight_codes)) + int(torch.count_nonzero(quantized.bias))
            input_bytes, output_bytes = quantized.input_type.word_length / 8, quantized.output_type.word_length / 8
        else:
            learnables = sum(int(torch.count_nonzero(p)) for p in parameters)
            input_bytes = output_bytes = _FLOAT_BYTES
        if not new:  # a module called again: its learnables are in its first row
            learnables = 0
        output_values = math.prod(shapes[node][1:]) if node in shapes else 0
        source = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        input_values = math.prod(shapes[source][1:]) if source in shapes else 0
        macs = _macs(module, output_values) if module is not None else None
        operations = 2 * macs if macs is not None else None
        touched = parameter_bytes + input_values * input_bytes + output_values * output_bytes
        rows.append(
            {
                "LayerName": name,
                "LayerType": _layer_type(module) if module is not None else "Parameter",
                "NumberOfLearnables": learnables,
                "NumberOfOperations": operations,
                "ParameterMemory (MB)": (parameter_bytes if new else 0) / MEGABYTE,
                "NumberOfMACs": macs,
                "ArithmeticIntensity (FLOP/B)": operations / touched if operations is not None and touched else math.nan,
            }
        )
    return rows


def estimate_network_metrics(net_or_quantizer: nn.Module | DLQuantizer, input_size: Sequence[int] | None = None) -> pd.DataFrame:
    """Per-layer metrics of a network or of the quantized network of a quantizer (MATLAB's
    ``estimateNetworkMetrics``; the columns are in the module docstring).

    Args:
        net_or_quantizer: A float ``nn.Module`` (never modified), or a calibrated
            :class:`~dlqnb.DLQuantizer` (its optimized layers, the memory of its quantized network).
        input_size: The shape of one input, channels first (``(3, 224, 224)``). By default: for a
            quantizer, the shape calibration saw (``q.input_shape_``); for a network, the channels and
            input size dlqnb recorded on it (its ``data`` layer and ``input_size``).

    Returns:
        One row per layer that has learnables, in network order; ``NumberOfMACs`` and
        ``NumberOfOperations`` are nullable integers (<NA> for a layer whose operations are not modelled).

    Raises:
        NotCalibratedError: A quantizer that has not been calibrated.
        NetworkGraphError: A network that torch.fx cannot trace.
        ValueError: No ``input_size`` to use, a malformed one, or one the network cannot take.
        TypeError: Neither a network nor a quantizer.

    Example:
        >>> from torch import nn
        >>> estimate_network_metrics(nn.Linear(3, 2), input_size=(3,)).loc[0, ["NumberOfMACs", "NumberOfOperations"]].tolist()
        [6, 12]
    """
    plan = None
    if isinstance(net_or_quantizer, nn.Module):
        size = _check_input_size(input_size) if input_size is not None else _network_input_size(net_or_quantizer)
        model = copy.deepcopy(net_or_quantizer).eval()
        if fx.Tracer().is_leaf_module(model, ""):  # one torch layer: fx would trace into its forward
            model = nn.Sequential(OrderedDict([(type(model).__name__.lower(), model)]))
        gm = trace_network(model)
    elif hasattr(net_or_quantizer, "optimized") and hasattr(net_or_quantizer, "plan"):
        quantizer = net_or_quantizer
        quantizer.check_calibrated("estimate_network_metrics")
        size = input_size if input_size is not None else quantizer.input_shape_
        if size is None:
            raise ValueError("the quantizer's calibration file does not record the input shape: pass input_size, e.g. (3, 227, 227)")
        size = _check_input_size(size)
        gm, plan = quantizer.optimized.module, quantizer.plan()
    else:
        raise TypeError(f"estimate_network_metrics takes an nn.Module or a DLQuantizer, got {type(net_or_quantizer).__name__}")
    table = pd.DataFrame(_rows(gm, size, plan), columns=METRIC_COLUMNS)
    for column in ("NumberOfOperations", "NumberOfMACs"):
        table[column] = table[column].astype("Int64")
    return table
