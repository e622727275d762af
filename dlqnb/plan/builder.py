"""The quantization plan: what happens to every node of the optimized network on the chosen target.

:func:`build_plan` is a pure function of values: the optimized network, the calibrated statistics of
every calibration row and the :class:`~dlqnb.plan.types.PlanOptions` (target, exclusions, exponent
scheme, per-channel weights, rounding). It is the only place that decides what runs in int8 and that
computes the int8 codes; both the emulated network (:meth:`~dlqnb.DLQuantizer.quantize`) and the QDQ
ONNX file (:func:`dlqnb.deploy.export_qdq_onnx`) are made from it, so that they compute the same thing.
:meth:`~dlqnb.DLQuantizer.plan` builds it and keeps it.

For every node it records one of:

* a **quantized layer** (an optimized conv/linear layer): its int8 weight codes with their power-of-two
  scale(s), its accumulator type (int32 at input scale × weight scale), its bias (int32 codes in the
  accumulator type on ``"cpu"``; float32 on ``"gpu"``, as TensorRT takes biases and as MATLAB's cuDNN
  target keeps them; an empirical bias correction in the options is subtracted from the float bias
  first, so emulation and export both add the corrected bias), its input and output types, the
  precision that accumulates it exactly and the rounding of its input;
* an **int8 op** (max pooling, concatenation, addition, ReLU, reshapes, dropout; global average pooling
  on ``"cpu"``, with its own plan; see :mod:`dlqnb.core.ops`) and the type of its output;
* a **float op**, with the reason it is not quantized.

Quantization points (QuantizeLinear → DequantizeLinear pairs, fake quantization in the emulation) go
after every int8 node (``quantize_after``: all its consumers read int8 values), and after a float node
whose output an int8 node reads (``quantize_for``: only the int8 consumers read the quantized copy).
Ops that only move values (reshapes, max pooling, dropout) run in int8 when their input is int8 and
keep its type; otherwise they run in float.

Example:
    >>> import torch, torchvision
    >>> from dlqnb import DLQuantizer
    >>> q = DLQuantizer(torchvision.models.resnet18(num_classes=3), execution_environment="cpu")
    >>> _ = q.calibrate(torch.rand(2, 3, 32, 32), progress=False)
    >>> plan = q.plan()
    >>> len(plan.layers), plan.node("maxpool").run, plan.node("avgpool").run, plan.pools["avgpool"].keepdim
    (21, 'int8', 'int8', True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from dlqnb.calibration.observers import RangeStats
from dlqnb.calibration.rows import CalibrationRow
from dlqnb.core.capture import float_reason
from dlqnb.core.graph import OptimizedLayer, OptimizedNetwork, layer_name
from dlqnb.core.numerics import FixedPointType, Rounding, bias_type
from dlqnb.core.ops import fused_activation_name, fused_activation_runs_int8, global_average_pool, op_traits, tensor_args
from dlqnb.core.targets import plan_library
from dlqnb.plan.types import PlanOptions, TypeChoice, choose_types

__all__ = ["LayerPlan", "NodePlan", "PoolPlan", "QuantizationPlan", "TensorType", "build_plan", "check_bias_corrections", "corrected_layer_plan"]

#: The type of a quantized tensor (the name earlier versions used).
TensorType = FixedPointType

#: Accumulators whose every possible value is a whole number below this are exact in float32.
_EXACT_FLOAT32 = 2**24


@dataclass(frozen=True)
class LayerPlan:
    """A quantized conv/linear layer: its codes, its types and how the target computes it.

    Attributes:
        name: Optimized layer name.
        members: Network layers folded into it (conv/linear, BatchNorm, activation).
        input_type: Type of the tensor it reads.
        output_type: Type of its output (after the fused activation).
        weight_type: Type of the int8 weights (per channel along axis 0 with per-channel weights).
        accumulator_type: The int32 type of the accumulator, ``bias_type(input_type, weight_type)``:
            its scale turns the accumulator into the layer's output.
        weight_codes: int8 weight codes.
        bias_codes: int32 bias codes in ``accumulator_type`` (``"cpu"``), else None.
        bias: The float32 bias the target adds (``"gpu"``), or the value of the int32 codes (``"cpu"``).
        accumulator_dtype: ``torch.float32`` where every possible accumulator is a whole number below
            2**24 (exact in float32), else ``torch.float64``: what the emulation accumulates in.
        rounding: How the layer's input is rounded to codes (the plan's activation rounding).
    """

    name: str
    members: tuple[str, ...]
    input_type: FixedPointType
    output_type: FixedPointType
    weight_type: FixedPointType
    accumulator_type: FixedPointType
    weight_codes: Tensor = field(repr=False)
    bias_codes: Tensor | None = field(repr=False)
    bias: Tensor = field(repr=False)
    accumulator_dtype: torch.dtype = torch.float32
    rounding: Rounding = "half_away"

    @property
    def per_channel(self) -> bool:
        """Whether the weights have one scale per output channel."""
        return self.weight_type.per_channel

    @property
    def integer_bias(self) -> bool:
        """Whether the bias is added as int32 codes to the accumulator (``"cpu"``) rather than in float."""
        return self.bias_codes is not None

    @property
    def bias_type(self) -> FixedPointType | None:
        """The type of the int32 bias codes (the accumulator's), or None for a float32 bias."""
        return self.accumulator_type if self.integer_bias else None


@dataclass(frozen=True)
class PoolPlan:
    """Global average pooling computed in int8 (``"cpu"``: ONNX Runtime's QLinearGlobalAveragePool).

    Attributes:
        name: The pooling node.
        input_type: Type of the tensor it pools.
        output_type: Type of its output (already quantized: no quantization point follows it).
        keepdim: Whether the output keeps the pooled dimensions (N×C×1×1) or is N×C.
        rounding: How the pooled sums are rounded: the target's own rule, which a rounding override
            of the quantization points does not change (the target's kernel rounds, not a QuantizeLinear).
    """

    name: str
    input_type: FixedPointType
    output_type: FixedPointType
    keepdim: bool
    rounding: Rounding


@dataclass(frozen=True)
class NodePlan:
    """What happens to one node.

    Attributes:
        name: The node (an optimized layer name or a network layer name).
        kind: Its op kind from :mod:`dlqnb.core.ops` (``"conv"``, ``"max_pool"``, ``"silu"``, ...).
        run: ``"int8"``, ``"float"``, or ``"none"`` (input, output, shape queries, constants).
        output_type: Type of its output where it is quantized, else None.
        reason: Why a layer that computes stays in float ("" otherwise).
    """

    name: str
    kind: str
    run: Literal["int8", "float", "none"]
    output_type: FixedPointType | None = None
    reason: str = ""


@dataclass
class QuantizationPlan:
    """What every node does on the target; read by emulation and export alike.

    Attributes:
        options: What the plan was built for (target, exclusions, exponent scheme, per-channel
            weights, rounding).
        types: The type choice the plan is made of (:func:`dlqnb.plan.types.choose_types`).
        nodes: Every node's plan, in network order.
        layers: The quantized conv/linear layers, by optimized layer name.
        quantize_after: Int8 nodes whose output is quantized where it is produced, with its type, in
            network order.
        quantize_for: Float nodes whose output is quantized for their int8 consumers only, with its type.
        pools: Global average pooling nodes computed in int8, by node name.
        optimized_parameters: Parameters of the optimized network (BatchNorm folded).
    """

    options: PlanOptions
    types: TypeChoice
    nodes: dict[str, NodePlan]
    layers: dict[str, LayerPlan]
    quantize_after: dict[str, FixedPointType]
    quantize_for: dict[str, FixedPointType]
    pools: dict[str, PoolPlan] = field(default_factory=dict)
    optimized_parameters: int = 0

    @property
    def target(self) -> str:
        """``"gpu"`` or ``"cpu"``."""
        return self.options.target

    @property
    def rounding(self) -> Rounding:
        """How activations are rounded where they are quantized (by default the target's rule: ties
        away from zero on ``"gpu"``, to even on ``"cpu"``)."""
        return self.options.activation_rounding

    @property
    def target_library(self) -> str:
        """The library the plan follows: ``"cudnn"`` (GPU target) or ``"onnxruntime"`` (CPU target)."""
        return plan_library(self.target)

    def node(self, name: str) -> NodePlan:
        """The plan of one node.

        Raises:
            KeyError: No such node; the message lists some.
        """
        if name not in self.nodes:
            raise KeyError(f"no node named {name!r} in the plan; nodes look like {list(self.nodes)[:6]}")
        return self.nodes[name]

    def tensor_type(self, name: str) -> FixedPointType:
        """The type a node's output is quantized to (where it is produced, or for its int8 consumers)."""
        return self.quantize_after[name] if name in self.quantize_after else self.quantize_for[name]

    def float_layers(self) -> list[tuple[str, str]]:
        """``(node, reason)`` of every layer that computes in float."""
        return [(name, node.reason) for name, node in self.nodes.items() if node.reason]


def build_plan(
    optimized: OptimizedNetwork, statistics: Mapping[CalibrationRow, RangeStats], options: PlanOptions, types: TypeChoice | None = None
) -> QuantizationPlan:
    """The plan of a calibrated network (:meth:`DLQuantizer.plan` builds it once per calibration and options).

    Args:
        optimized: The optimized network (BatchNorm folded, activations fused).
        statistics: The calibrated statistics of every calibration row (:mod:`dlqnb.calibration.rows`).
        options: Target, exclusions, exponent scheme, per-channel weights and rounding.
        types: ``choose_types(optimized, statistics, options)``, where the caller has it already (it
            depends only on :func:`~dlqnb.plan.types.type_settings` of the options; choosing per-channel
            histogram types reads every weight).

    Example:
        >>> import torch, torch.nn as nn
        >>> from dlqnb.calibration.file import CalibrationState
        >>> from dlqnb.calibration.observers import RangeStats
        >>> from dlqnb.calibration.rows import calibration_rows, row_statistics
        >>> from dlqnb.core.graph import optimize_network
        >>> optimized = optimize_network(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
        >>> state = CalibrationState({"input_1": RangeStats.of(torch.tensor([0.0, 1.0])),
        ...     "0_1": RangeStats.of(torch.tensor([0.0, 2.0]))}, {"input_1", "0_1"}, 1)
        >>> rows = calibration_rows(optimized, state.tensor_nodes)
        >>> plan = build_plan(optimized, row_statistics(optimized, state, {}, rows), PlanOptions("cpu"))
        >>> layer = plan.layers["0_1"]
        >>> layer.input_type.signed, layer.accumulator_type.fraction_length - layer.weight_type.fraction_length, layer.integer_bias
        (False, 6, True)
    """
    check_bias_corrections(optimized, options.bias_corrections)
    if types is None:
        types = choose_types(optimized, statistics, options)
    library = plan_library(options.target)
    gm = optimized.module
    activation_types = types.activations
    nodes: dict[str, NodePlan] = {}
    layers: dict[str, LayerPlan] = {}
    pools: dict[str, PoolPlan] = {}
    produced_int8: dict[str, None] = {}  # an ordered set: quantization points follow network order
    quantize_for: dict[str, FixedPointType] = {}

    def float_node(name: str, kind: str, reason: str) -> None:
        nodes[name] = NodePlan(name, kind, "float", reason=reason)

    def int8_node(name: str, kind: str) -> None:
        nodes[name] = NodePlan(name, kind, "int8", activation_types[name])
        produced_int8[name] = None

    for node in gm.graph.nodes:
        traits = op_traits(gm, node)
        name = layer_name(node)
        inputs = [layer_name(s) for s in tensor_args(node)]
        sources = [source for source in inputs if source in activation_types]
        if not traits.is_layer or node.op == "placeholder":
            nodes[name] = NodePlan(name, traits.kind, "none", activation_types.get(name) if node.op == "placeholder" else None)
            continue
        layer = optimized.layers.get(name)
        if layer is not None:
            reason = _layer_float_reason(layer, gm.get_submodule(name).layer, options, library)
            source = layer_name(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
            if not reason and (source is None or source not in activation_types or name not in activation_types):
                reason = "its input has no calibrated type: computed in float"
            if reason:
                float_node(name, traits.kind, reason)
                continue
            assert source is not None
            layers[name] = _layer_plan(layer, gm.get_submodule(name).layer, activation_types[source], activation_types[name], types, options)
            int8_node(name, traits.kind)
            if source not in produced_int8:
                quantize_for[source] = activation_types[source]
            continue
        if options.target in traits.int8_on and name in activation_types:
            if traits.values == "moves":
                if sources and all(source in produced_int8 for source in sources):
                    int8_node(name, traits.kind)
                else:
                    nodes[name] = NodePlan(name, traits.kind, "float")
                continue
            if sources and len(sources) == len(inputs):
                int8_node(name, traits.kind)
                for source in sources:
                    if source not in produced_int8:
                        quantize_for[source] = activation_types[source]
                if traits.kind == "global_avg_pool" and global_average_pool(gm, node):
                    input_type = activation_types[layer_name(node.args[0])]
                    pools[name] = PoolPlan(name, input_type, activation_types[name], _keeps_pooled_dims(node), options.code_rounding)
                continue
        if traits.values == "moves":
            nodes[name] = NodePlan(name, traits.kind, "float")  # a float tensor rearranged: nothing to report
        elif traits.kind == "global_avg_pool" and options.target == "gpu":
            float_node(name, traits.kind, f"global average pooling is not an int8 layer for {library}: computed in float")
        else:
            float_node(name, traits.kind, float_reason(node) or f"{traits.kind} has no int8 implementation for {library}: computed in float")
    quantize_after = {name: activation_types[name] for name in produced_int8}
    return QuantizationPlan(options, types, nodes, layers, quantize_after, quantize_for, pools, sum(p.numel() for p in gm.parameters()))


def corrected_layer_plan(optimized: OptimizedNetwork, plan: QuantizationPlan, name: str, correction: Sequence[float]) -> LayerPlan:
    """Layer ``name`` of ``plan`` with ``correction`` subtracted from its float bias before it is coded: what
    building the whole plan with that correction gives this layer, without coding the other layers again
    (sequential bias correction asks for it once per layer).

    Raises:
        KeyError: ``name`` is not a quantized layer of ``plan``.
        ValueError: ``correction`` does not have one finite value per output channel.
    """
    if name not in plan.layers:
        raise KeyError(f"{name!r} is not a quantized layer of this plan; quantized layers are {list(plan.layers)[:6]}...")
    check_bias_corrections(optimized, [(name, correction)])
    options = dataclasses.replace(plan.options, bias_corrections=((name, tuple(correction)),))
    layer = plan.layers[name]
    module = optimized.module.get_submodule(name).layer
    return _layer_plan(optimized.layers[name], module, layer.input_type, layer.output_type, plan.types, options)


def _keeps_pooled_dims(node: fx.Node) -> bool:
    """Whether a global average pooling node keeps N×C×1×1: ``AdaptiveAvgPool2d`` (module or function)
    always does; ``mean`` only with ``keepdim=True``."""
    if node.op == "call_module" or node.target is F.adaptive_avg_pool2d:
        return True
    return bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))


def _layer_float_reason(layer: OptimizedLayer, module: nn.Module, options: PlanOptions, library: str) -> str:
    if layer.name in options.excluded_layers:
        return "excluded by the user: computed in float"
    if not fused_activation_runs_int8(layer.activation, options.target):
        return f"fused with a {fused_activation_name(layer.activation)}, which is not an int8 layer for {library}: computed in float"  # type: ignore[arg-type]
    if getattr(module, "padding_mode", "zeros") != "zeros":
        return f"padding mode {module.padding_mode!r} has no int8 form: computed in float"
    return ""


def check_bias_corrections(optimized: OptimizedNetwork, corrections: Iterable[tuple[str, Sequence[float]]]) -> None:
    """Raise a ValueError naming the layer when a bias correction names no optimized layer or has
    another number of values than the layer has output channels.

    Example:
        >>> from torch import nn
        >>> from dlqnb.core.graph import optimize_network
        >>> optimized = optimize_network(nn.Sequential(nn.Conv2d(3, 2, 1)).eval())
        >>> check_bias_corrections(optimized, [("0", [0.0])])
        Traceback (most recent call last):
        ...
        ValueError: layer '0' has 2 output channels; its bias correction has 1 values
    """
    for name, values in corrections:
        if name not in optimized.layers:
            raise ValueError(f"bias_corrections name {name!r}, which is not an optimized layer; layers are {list(optimized.layers)[:6]}...")
        channels = optimized.fused(name).layer.weight.shape[0]
        if len(values) != channels:
            raise ValueError(f"layer {name!r} has {channels} output channels; its bias correction has {len(values)} values")


def _code_magnitude_bound(tensor_type: FixedPointType) -> int:
    """The smallest power of two that no code's magnitude exceeds (128 for int8, 256 for uint8)."""
    return 2 ** (tensor_type.word_length - 1 if tensor_type.signed else tensor_type.word_length)


def _layer_plan(
    layer: OptimizedLayer, module: nn.Module, input_type: FixedPointType, output_type: FixedPointType, types: TypeChoice, options: PlanOptions
) -> LayerPlan:
    """The codes of one quantized layer: the one place where weight and bias codes are computed."""
    weight_type = types.weights[layer.name]
    accumulator_type = bias_type(input_type, weight_type)
    rounding = options.code_rounding
    weight_codes = weight_type.quantize(module.weight.detach().double(), rounding).to(torch.int8)
    bias = module.bias.detach().double()
    correction = options.bias_correction(layer.name)
    if correction is not None:  # empirical bias correction: the float bias moves, then it is coded as always
        bias = bias - torch.tensor(correction, dtype=torch.float64)
    if options.target == "gpu":  # TensorRT takes float biases; MATLAB's cuDNN target keeps them in single
        bias_codes, bias_value = None, bias.float()
    else:  # ONNX Runtime's QLinearConv adds int32 bias codes to the accumulator
        bias_codes = accumulator_type.quantize(bias, rounding).to(torch.int32)
        bias_value = accumulator_type.dequantize(bias_codes.double()).float()
    largest_bias = int(bias_codes.abs().max()) if bias_codes is not None else 0
    largest_accumulator = weight_codes[0].numel() * _code_magnitude_bound(input_type) * _code_magnitude_bound(weight_type) + largest_bias
    return LayerPlan(
        name=layer.name,
        members=layer.members,
        input_type=input_type,
        output_type=output_type,
        weight_type=weight_type,
        accumulator_type=accumulator_type,
        weight_codes=weight_codes,
        bias_codes=bias_codes,
        bias=bias_value,
        accumulator_dtype=torch.float64 if largest_accumulator >= _EXACT_FLOAT32 else torch.float32,
        rounding=options.activation_rounding,
    )
