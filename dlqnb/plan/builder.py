"""The quantization plan: what happens to every node of the optimized network on the chosen target.

Built once from a calibrated :class:`~dlqnb.DLQuantizer` (:meth:`~dlqnb.DLQuantizer.plan`), it is the
only place that decides what runs in int8 and that computes the int8 codes; both the emulated network
(:meth:`~dlqnb.DLQuantizer.quantize`) and the QDQ ONNX file (:func:`dlqnb.deploy.export_qdq_onnx`)
are made from it, so that they compute the same thing.

For every node it records one of:

* a **quantized layer** (an optimized conv/linear layer): its int8 weight codes with their power-of-two
  scale(s), its bias (int32 codes at input scale × weight scale on ``"cpu"``; float32 on ``"gpu"``, as
  TensorRT takes biases and as MATLAB's cuDNN target keeps them), its input and output types;
* an **int8 op** (max pooling, concatenation, addition, ReLU, reshapes, dropout; global average pooling
  on ``"cpu"``; see :mod:`dlqnb.core.ops`) and the type of its output;
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
    >>> len(plan.layers), plan.node("maxpool").run, plan.node("avgpool").run
    (21, 'int8', 'int8')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
import torch.fx as fx
from torch import Tensor, nn

from dlqnb.core.graph import layer_name
from dlqnb.core.numerics import Rounding, quantize_to_integer
from dlqnb.core.ops import op_traits, tensor_args

if TYPE_CHECKING:
    from dlqnb.quantizer import DLQuantizer

__all__ = ["LayerPlan", "NodePlan", "QuantizationPlan", "ROUNDING", "TARGET_LIBRARY", "TensorType", "build_plan"]

TARGET_LIBRARY = {"gpu": "cudnn", "cpu": "onnxruntime"}
ROUNDING: dict[str, Rounding] = {"gpu": "half_away", "cpu": "half_even"}


@dataclass(frozen=True)
class TensorType:
    """A scaled 8-bit type: value = code × 2**-fraction_length, codes signed (int8) or unsigned (uint8)."""

    fraction_length: int
    signed: bool = True

    @property
    def scale(self) -> float:
        """The power-of-two scale ``2**-fraction_length``."""
        return 2.0**-self.fraction_length


@dataclass(frozen=True)
class LayerPlan:
    """A quantized conv/linear layer: its codes and types.

    Attributes:
        name: Optimized layer name.
        members: Network layers folded into it (conv/linear, BatchNorm, activation).
        input_type: Type of the tensor it reads.
        output_type: Type of its output (after the fused activation).
        weight_fraction: Fraction length of the int8 weights (a list: one per output channel).
        weight_codes: int8 weight codes.
        bias_codes: int32 bias codes at ``2**-(input_fraction + weight_fraction)`` (``"cpu"``), else None.
        bias: The float32 bias the target adds (``"gpu"``), or the value of the int32 codes (``"cpu"``).
    """

    name: str
    members: tuple[str, ...]
    input_type: TensorType
    output_type: TensorType
    weight_fraction: int | list[int]
    weight_codes: Tensor = field(repr=False)
    bias_codes: Tensor | None = field(repr=False)
    bias: Tensor = field(repr=False)

    @property
    def weight_scales(self) -> list[float]:
        """One scale per output channel (per-channel weights) or one for the layer."""
        fractions = self.weight_fraction if isinstance(self.weight_fraction, list) else [self.weight_fraction]
        return [2.0**-f for f in fractions]

    @property
    def bias_fractions(self) -> list[int]:
        """Fraction lengths of the int32 bias codes (input fraction + weight fraction)."""
        fractions = self.weight_fraction if isinstance(self.weight_fraction, list) else [self.weight_fraction]
        return [self.input_type.fraction_length + f for f in fractions]


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
    output_type: TensorType | None = None
    reason: str = ""


@dataclass
class QuantizationPlan:
    """What every node does on the target; read by emulation and export alike.

    Attributes:
        target: ``"gpu"`` or ``"cpu"``.
        nodes: Every node's plan, in network order.
        layers: The quantized conv/linear layers, by optimized layer name.
        quantize_after: Int8 nodes whose output is quantized where it is produced, with its type.
        quantize_for: Float nodes whose output is quantized for their int8 consumers only, with its type.
        optimized_parameters: Parameters of the optimized network (BatchNorm folded).
    """

    target: str
    nodes: dict[str, NodePlan]
    layers: dict[str, LayerPlan]
    quantize_after: dict[str, TensorType]
    quantize_for: dict[str, TensorType]
    optimized_parameters: int = 0

    @property
    def rounding(self) -> Rounding:
        """How the target rounds ties (away from zero on ``"gpu"``, to even on ``"cpu"``)."""
        return ROUNDING[self.target]

    @property
    def target_library(self) -> str:
        """``"cudnn"`` (GPU target) or ``"onnxruntime"`` (CPU target)."""
        return TARGET_LIBRARY[self.target]

    def node(self, name: str) -> NodePlan:
        """The plan of one node.

        Raises:
            KeyError: No such node; the message lists some.
        """
        if name not in self.nodes:
            raise KeyError(f"no node named {name!r} in the plan; nodes look like {list(self.nodes)[:6]}")
        return self.nodes[name]

    def tensor_type(self, name: str) -> TensorType:
        """The type a node's output is quantized to (where it is produced, or for its int8 consumers)."""
        return self.quantize_after[name] if name in self.quantize_after else self.quantize_for[name]

    def float_layers(self) -> list[tuple[str, str]]:
        """``(node, reason)`` of every layer that computes in float."""
        return [(name, node.reason) for name, node in self.nodes.items() if node.reason]


def build_plan(quantizer: DLQuantizer) -> QuantizationPlan:
    """The plan of a calibrated quantizer (use :meth:`DLQuantizer.plan`, which caches it)."""
    target = quantizer.execution_environment
    library = TARGET_LIBRARY[target]
    rounding = ROUNDING[target]
    optimized = quantizer.optimized
    gm = optimized.module
    types = quantizer.tensor_types()
    weight_fractions = quantizer.weight_fraction_lengths()
    excluded = set(quantizer.excluded_layers)
    nodes: dict[str, NodePlan] = {}
    layers: dict[str, LayerPlan] = {}
    produced_int8: set[str] = set()
    quantize_for: dict[str, TensorType] = {}

    def float_node(name: str, kind: str, reason: str) -> None:
        nodes[name] = NodePlan(name, kind, "float", reason=reason)

    for node in gm.graph.nodes:
        traits = op_traits(gm, node)
        name = layer_name(node)
        inputs = [layer_name(s) for s in tensor_args(node)]
        sources = [source for source in inputs if source in types]
        if not traits.is_layer or node.op == "placeholder":
            nodes[name] = NodePlan(name, traits.kind, "none", types.get(name) if node.op == "placeholder" else None)
            continue
        layer = optimized.layers.get(name)
        if layer is not None:
            reason = _layer_float_reason(layer, gm.get_submodule(name).layer, target, library, excluded)
            source = layer_name(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
            if not reason and (source is None or source not in types or name not in types):
                reason = "its input has no calibrated type: computed in float"
            if reason:
                float_node(name, traits.kind, reason)
                continue
            assert source is not None
            layers[name] = _layer_plan(name, layer.members, gm.get_submodule(name).layer, types[source], types[name], weight_fractions[name], target, rounding)
            nodes[name] = NodePlan(name, traits.kind, "int8", types[name])
            produced_int8.add(name)
            if source not in produced_int8:
                quantize_for[source] = types[source]
            continue
        if target in traits.int8_on and name in types:
            if traits.values == "moves":
                if sources and all(source in produced_int8 for source in sources):
                    nodes[name] = NodePlan(name, traits.kind, "int8", types[name])
                    produced_int8.add(name)
                else:
                    nodes[name] = NodePlan(name, traits.kind, "float")
                continue
            if sources and len(sources) == len(inputs):
                nodes[name] = NodePlan(name, traits.kind, "int8", types[name])
                produced_int8.add(name)
                for source in sources:
                    if source not in produced_int8:
                        quantize_for[source] = types[source]
                continue
        if traits.values == "moves":
            nodes[name] = NodePlan(name, traits.kind, "float")  # a float tensor rearranged: nothing to report
        elif traits.kind == "global_avg_pool" and target == "gpu":
            float_node(name, traits.kind, f"global average pooling is not an int8 layer for {library}: computed in float")
        else:
            float_node(name, traits.kind, f"{traits.kind} has no int8 implementation for {library}: computed in float")
    quantize_after = {name: types[name] for name in produced_int8}
    return QuantizationPlan(target, nodes, layers, quantize_after, quantize_for, sum(p.numel() for p in gm.parameters()))


def _layer_float_reason(layer: object, module: nn.Module, target: str, library: str, excluded: set[str]) -> str:
    name = layer.name  # type: ignore[attr-defined]
    activation = layer.activation  # type: ignore[attr-defined]
    if name in excluded:
        return "excluded by the user: computed in float"
    if target == "gpu" and activation in ("leaky_relu", "relu6"):
        kind = "leaky ReLU" if activation == "leaky_relu" else "clipped ReLU (ReLU6)"
        return f"fused with a {kind}, which is not an int8 layer for {library}: computed in float"
    if getattr(module, "padding_mode", "zeros") != "zeros":
        return f"padding mode {module.padding_mode!r} has no int8 form: computed in float"
    return ""


def _layer_plan(
    name: str,
    members: tuple[str, ...],
    module: nn.Module,
    input_type: TensorType,
    output_type: TensorType,
    weight_fraction: int | list[int],
    target: str,
    rounding: Rounding,
) -> LayerPlan:
    """The codes of one quantized layer: the one place where weight and bias codes are computed."""
    weight = module.weight.detach().double()
    bias = module.bias.detach().double()
    fractions = torch.tensor(weight_fraction) if isinstance(weight_fraction, list) else weight_fraction
    weight_codes = quantize_to_integer(weight, fractions, rounding=rounding).to(torch.int8)
    if target == "gpu":
        return LayerPlan(name, members, input_type, output_type, weight_fraction, weight_codes, None, bias.float())
    accumulator_fraction = input_type.fraction_length + fractions
    bias_codes = quantize_to_integer(bias, accumulator_fraction, 32, rounding).to(torch.int32)
    exponent = -torch.as_tensor(accumulator_fraction, dtype=torch.int32).expand(bias.shape[0])
    bias_value = (bias_codes.double() * torch.ldexp(torch.ones(bias.shape[0], dtype=torch.float64), exponent)).float()
    return LayerPlan(name, members, input_type, output_type, weight_fraction, weight_codes, bias_codes, bias_value)
