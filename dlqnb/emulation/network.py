"""Exact emulation of an int8 target: the network ``DLQuantizer.quantize()`` returns.

The emulated network is made from the quantization plan (:mod:`dlqnb.plan.builder`) and computes, in float
tensors, exactly what the int8 target computes ("scale, saturate and round single data to behave like
int8", as MATLAB's *Emulate Quantized Network Behavior for GPU Target* puts it); it is not smaller
than the original. It is also what :func:`dlqnb.deploy.export_qdq_onnx` exports: each quantization
point and each quantized layer is an ``autograd.Function`` whose ``forward`` computes the integer
arithmetic and whose ``symbolic`` writes the ONNX QuantizeLinear/DequantizeLinear form, while every
float op is exported by torch's own exporter. Emulation and deployment cannot drift apart.

**Quantized conv/linear layers** (BatchNorm folded, activation fused): the input, already on its
int8 grid, is turned into codes; the int8 × int8 products are accumulated exactly (in float32 where
every possible sum stays below 2**24, in float64 otherwise). On ``"cpu"`` the int32 bias codes are
added to the accumulator, as ONNX Runtime's QLinearConv does; on ``"gpu"`` the accumulator is scaled
and the float32 bias added, as TensorRT does with a float bias. Then the fused activation, then the
layer's output quantization point.

**Quantization points** round (ties away from zero on ``"gpu"``, MATLAB's rule; ties to even on
``"cpu"``, ONNX's ``QuantizeLinear``) and saturate to int8, or to uint8 on ``"cpu"`` where the
calibrated minimum is ≥ 0. TensorRT's QuantizeLinear also rounds ties to even: on exact ties a TensorRT
deployment of the ``"gpu"`` flavour can differ from the MATLAB-rule emulation by one step.

**Global average pooling** on ``"cpu"`` is computed as ONNX Runtime's QLinearGlobalAveragePool computes
it (int32 sums scaled in float32), so that the emulation stays exact.

Example:
    >>> import torch, torchvision
    >>> from dlqnb import DLQuantizer
    >>> q = DLQuantizer(torchvision.models.squeezenet1_1(num_classes=5))
    >>> _ = q.calibrate(torch.rand(4, 3, 64, 64), progress=False)
    >>> qnet = q.quantize()
    >>> quantization_details(qnet).target_library
    'cudnn'
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from dlqnb.core.graph import FusedLayer, layer_name
from dlqnb.core.numerics import Rounding, quantize_fixed, quantize_to_integer
from dlqnb.core.ops import global_average_pool, op_traits
from dlqnb.plan.builder import LayerPlan, QuantizationPlan, TensorType

__all__ = ["EmulatedLayer", "FakeQuantize", "QuantizationDetails", "QuantizedGlobalAveragePool", "build_emulated_network", "quantization_details"]

_EXACT_FLOAT32 = 2**24


def _constant(g: Any, values: list[float] | list[int] | float | int, dtype: torch.dtype) -> Any:
    """An ONNX constant: a scalar, or a 1-D tensor for a list (per-channel scales)."""
    return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))


def _quantize_dequantize(g: Any, x: Any, scale: float, signed: bool) -> Any:
    scale_value = _constant(g, scale, torch.float32)
    zero_point = _constant(g, 0, torch.int8 if signed else torch.uint8)
    return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale_value, zero_point), scale_value, zero_point)


class _QuantizeFunction(torch.autograd.Function):
    """Round and saturate to a scaled 8-bit type; exports as QuantizeLinear → DequantizeLinear."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fraction_length: int, signed: bool, rounding: str) -> Tensor:
        return quantize_fixed(x, fraction_length, rounding=rounding, signed=signed)  # type: ignore[arg-type]

    @staticmethod
    def symbolic(g: Any, x: Any, fraction_length: int, signed: bool, rounding: str) -> Any:
        return _quantize_dequantize(g, x, 2.0**-fraction_length, signed)


class FakeQuantize(nn.Module):
    """A quantization point: a tensor quantized to a scaled 8-bit type and back."""

    def __init__(self, tensor_type: TensorType, rounding: Rounding) -> None:
        super().__init__()
        self.tensor_type = tensor_type
        self.rounding = rounding

    def forward(self, x: Tensor) -> Tensor:
        return _QuantizeFunction.apply(x, self.tensor_type.fraction_length, self.tensor_type.signed, self.rounding)

    def extra_repr(self) -> str:
        kind = "int8" if self.tensor_type.signed else "uint8"
        return f"{kind}, scale=2^-{self.tensor_type.fraction_length}, rounding={self.rounding}"


class _LayerSpec(NamedTuple):
    """Everything the int8 arithmetic of one layer needs besides its tensors: plain values, as
    ``autograd.Function`` arguments must be for torch's exporter."""

    kind: str  # "conv" or "linear"
    dims: int
    stride: tuple[int, ...]
    padding: Any  # numbers, "valid" or "same"
    dilation: tuple[int, ...]
    groups: int
    kernel: tuple[int, ...]
    input_fraction: int
    input_signed: bool
    weight_fractions: tuple[int, ...]  # one, or one per output channel
    per_channel: bool
    integer_bias: bool  # int32 bias codes ("cpu") or a float32 bias ("gpu")
    rounding: str
    accumulate_float64: bool


class _LayerFunction(torch.autograd.Function):
    """The int8 conv/linear arithmetic; exports as DequantizeLinear(weights) [and bias] → Conv/Gemm."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight_codes: Tensor, bias: Tensor, spec: tuple[Any, ...]) -> Tensor:
        return _layer_compute(_LayerSpec(*spec), x, weight_codes, bias)

    @staticmethod
    def symbolic(g: Any, x: Any, weight_codes: Any, bias: Any, spec: tuple[Any, ...]) -> Any:
        return _layer_onnx(_LayerSpec(*spec), g, x, weight_codes, bias)


def _channel_shape(spec: _LayerSpec) -> tuple[int, ...]:
    """Broadcast shape of a per-output-channel vector (channels on axis 1 for conv, last for linear)."""
    return (1, -1) + (1,) * spec.dims if spec.kind == "conv" else (-1,)


def _accumulate(spec: _LayerSpec, x: Tensor, weight_codes: Tensor, bias: Tensor) -> Tensor:
    dtype = torch.float64 if spec.accumulate_float64 else torch.float32
    codes = quantize_to_integer(x.to(dtype), spec.input_fraction, rounding=spec.rounding, signed=spec.input_signed)  # type: ignore[arg-type]
    if spec.kind == "linear":
        acc = F.linear(codes, weight_codes.to(dtype))
    else:
        conv = (F.conv1d, F.conv2d, F.conv3d)[spec.dims - 1]
        acc = conv(codes, weight_codes.to(dtype), stride=spec.stride, padding=spec.padding, dilation=spec.dilation, groups=spec.groups)
    if spec.integer_bias:
        acc = acc + bias.to(dtype).view(_channel_shape(spec))
    return acc


def _layer_compute(spec: _LayerSpec, x: Tensor, weight_codes: Tensor, bias: Tensor) -> Tensor:
    """The layer's output before its activation, in float32 as the target produces it."""
    acc = _accumulate(spec, x, weight_codes, bias)
    shape = _channel_shape(spec)
    fractions = torch.tensor([spec.input_fraction + f for f in spec.weight_fractions], dtype=torch.int32)
    scale = torch.ldexp(torch.ones(len(fractions), dtype=torch.float64), -fractions)
    real = (acc.double() * scale.view(shape)).float()  # powers of two: exact up to float32
    if not spec.integer_bias:
        real = real + bias.view(shape)
    return real.to(x.dtype)


def _layer_onnx(spec: _LayerSpec, g: Any, x: Any, weight_codes: Any, bias: Any) -> Any:
    """The ONNX form of :func:`_layer_compute` (for ``torch.onnx.export``)."""
    scales = [2.0**-f for f in spec.weight_fractions]
    axis = {"axis_i": 0} if spec.per_channel else {}
    weight_scale = _constant(g, scales if spec.per_channel else scales[0], torch.float32)
    weight_zero = _constant(g, [0] * len(scales) if spec.per_channel else 0, torch.int8)
    weight = g.op("DequantizeLinear", weight_codes, weight_scale, weight_zero, **axis)
    if spec.integer_bias:
        bias_scales = [2.0 ** -(spec.input_fraction + f) for f in spec.weight_fractions]
        bias_scale = _constant(g, bias_scales if spec.per_channel else bias_scales[0], torch.float32)
        bias_zero = _constant(g, [0] * len(bias_scales) if spec.per_channel else 0, torch.int32)
        bias = g.op("DequantizeLinear", bias, bias_scale, bias_zero, **axis)
    if spec.kind == "linear":
        rank = x.type().dim() if hasattr(x.type(), "dim") else None
        if rank == 2:
            return g.op("Gemm", x, weight, bias, transB_i=1)
        return g.op("Add", g.op("MatMul", x, g.op("Transpose", weight, perm_i=[1, 0])), bias)
    kernel = list(spec.kernel)
    dilations = list(spec.dilation)
    return g.op(
        "Conv", x, weight, bias,
        kernel_shape_i=kernel,
        strides_i=list(spec.stride),
        pads_i=_pads(spec.padding, kernel, dilations),
        dilations_i=dilations,
        group_i=spec.groups,
    )


class EmulatedLayer(nn.Module):
    """An optimized conv/linear layer computed as the int8 target computes it (without the output
    quantization, which the plan places after it).

    Attributes:
        weight_codes: int8 weight codes (an ``int8`` tensor).
        bias_codes: int32 bias codes (``"cpu"``), or the float32 bias (``"gpu"``).
    """

    def __init__(self, fused: FusedLayer, plan: LayerPlan, rounding: Rounding) -> None:
        super().__init__()
        layer = fused.layer
        kind = "linear" if isinstance(layer, nn.Linear) else "conv"
        dims = layer.weight.dim() - 2
        self.plan = plan
        self.activation = copy.deepcopy(fused.activation)
        self.register_buffer("weight_codes", plan.weight_codes.clone())
        self.register_buffer("bias_codes", plan.bias_codes.clone() if plan.bias_codes is not None else plan.bias.clone())
        fan_in = plan.weight_codes[0].numel()
        largest_input = 2**8 if not plan.input_type.signed else 2**7
        largest_bias = int(plan.bias_codes.abs().max()) if plan.bias_codes is not None else 0
        per_channel = isinstance(plan.weight_fraction, list)
        conv = layer if kind == "conv" else None
        self.spec = _LayerSpec(
            kind=kind,
            dims=dims,
            stride=_tuple(conv.stride, dims) if conv is not None else (),
            padding=(conv.padding if isinstance(conv.padding, str) else _tuple(conv.padding, dims)) if conv is not None else (),
            dilation=_tuple(conv.dilation, dims) if conv is not None else (),
            groups=int(conv.groups) if conv is not None else 1,
            kernel=tuple(plan.weight_codes.shape[2:]),
            input_fraction=plan.input_type.fraction_length,
            input_signed=plan.input_type.signed,
            weight_fractions=tuple(plan.weight_fraction) if per_channel else (plan.weight_fraction,),  # type: ignore[arg-type]
            per_channel=per_channel,
            integer_bias=plan.bias_codes is not None,
            rounding=rounding,
            accumulate_float64=fan_in * largest_input * 128 + largest_bias >= _EXACT_FLOAT32,
        )

    @property
    def accumulate_dtype(self) -> torch.dtype:
        """float32 where every possible accumulator is a whole number below 2**24, else float64."""
        return torch.float64 if self.spec.accumulate_float64 else torch.float32

    def accumulate(self, x: Tensor) -> Tensor:
        """The int32 accumulator (as a float tensor of whole numbers) for a float input, bias codes
        included on ``"cpu"``."""
        return _accumulate(self.spec, x, self.weight_codes, self.bias_codes)

    def forward(self, x: Tensor) -> Tensor:
        y = _LayerFunction.apply(x, self.weight_codes, self.bias_codes, tuple(self.spec))
        return self.activation(y) if self.activation is not None else y

    def extra_repr(self) -> str:
        weights = "per channel" if self.spec.per_channel else f"2^-{self.spec.weight_fractions[0]}"
        bias = "int32" if self.spec.integer_bias else "float32"
        return (
            f"{self.spec.kind}, weights int8 {weights}, bias {bias}, input 2^-{self.spec.input_fraction}, "
            f"accumulate {str(self.accumulate_dtype).split('.')[-1]}"
        )


def _tuple(value: Any, dims: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * dims


def _pads(padding: Any, kernel: list[int], dilations: list[int]) -> list[int]:
    """ONNX pads (begins then ends) of a torch padding: numbers, ``"valid"`` or ``"same"``."""
    if padding == "valid":
        return [0] * (2 * len(kernel))
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilations)]
        return [t // 2 for t in totals] + [t - t // 2 for t in totals]
    pads = list(_tuple(padding, len(kernel)))
    return pads + pads


class _GlobalAveragePoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, types: tuple[int, bool, int, bool], keepdim: bool) -> Tensor:
        return _global_average_pool(x, TensorType(*types[:2]), TensorType(*types[2:]), keepdim)

    @staticmethod
    def symbolic(g: Any, x: Any, types: tuple[int, bool, int, bool], keepdim: bool) -> Any:
        output_type = TensorType(*types[2:])
        pooled = _quantize_dequantize(g, g.op("GlobalAveragePool", x), output_type.scale, output_type.signed)
        return pooled if keepdim else g.op("Flatten", pooled, axis_i=1)


def _global_average_pool(x: Tensor, input_type: TensorType, output_type: TensorType, keepdim: bool) -> Tensor:
    codes = quantize_to_integer(x.float(), input_type.fraction_length, rounding="half_even", signed=input_type.signed)
    sums = codes.sum(dim=(-2, -1), keepdim=True)  # whole numbers below 2**24: exact in float32
    pixels = x.shape[-2] * x.shape[-1]
    ratio = torch.tensor(math.ldexp(1.0, output_type.fraction_length - input_type.fraction_length), dtype=torch.float32)
    scale = ratio / torch.tensor(float(pixels), dtype=torch.float32)  # float32 division, as ONNX Runtime
    low, high = (-128, 127) if output_type.signed else (0, 255)
    out_codes = torch.round(sums * scale).clamp_(low, high)
    out = (out_codes * math.ldexp(1.0, -output_type.fraction_length)).to(x.dtype)
    return out if keepdim else out.flatten(1)


class QuantizedGlobalAveragePool(nn.Module):
    """Global average pooling in int8, as ONNX Runtime's QLinearGlobalAveragePool computes it.

    The int32 sum of the input codes over each image is scaled in float32 by
    ``float32(input_scale / (output_scale * pixels))``, rounded to nearest even and saturated: the
    same float32 operations in the same order, so the emulation is exact. Its output is already
    quantized (no quantization point follows it).
    """

    def __init__(self, input_type: TensorType, output_type: TensorType, keepdim: bool) -> None:
        super().__init__()
        self.input_type = input_type
        self.output_type = output_type
        self.keepdim = keepdim

    def forward(self, x: Tensor) -> Tensor:
        types = (self.input_type.fraction_length, self.input_type.signed, self.output_type.fraction_length, self.output_type.signed)
        return _GlobalAveragePoolFunction.apply(x, types, self.keepdim)


@dataclass
class QuantizationDetails:
    """What :func:`quantization_details` reports (MATLAB's ``quantizationDetails``)."""

    is_quantized: bool = False
    target_library: str = ""
    quantized_layer_names: list[str] = field(default_factory=list)
    quantized_learnables: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["Layer", "Parameter", "Value"]))
    layer_kinds: dict[str, str] = field(default_factory=dict)

    def layer_counts(self) -> pd.Series:
        """How many quantized layer names of each kind (``conv``, ``fused relu``, ``max_pool``, ...),
        in the order they first appear.

        Example:
            >>> QuantizationDetails(quantized_layer_names=["c", "r"], layer_kinds={"c": "conv", "r": "fused relu"}).layer_counts().to_dict()
            {'conv': 1, 'fused relu': 1}
        """
        kinds = [self.layer_kinds.get(name, "other") for name in self.quantized_layer_names]
        return pd.Series(kinds, dtype=object).value_counts(sort=False).rename("layers")

    def learnables_summary(self) -> pd.DataFrame:
        """The learnables table with each value shown as MATLAB displays it: its size in MATLAB's
        layout and its type (``3×3×3×64 int8`` for a convolution's weights, ``1×1×64 single`` for its bias).

        Example:
            >>> import torch
            >>> table = pd.DataFrame({"Layer": ["conv1", "conv1", "fc", "fc"], "Parameter": ["Weights", "Bias"] * 2,
            ...     "Value": [torch.zeros(64, 3, 3, 3, dtype=torch.int8), torch.zeros(64), torch.zeros(10, 980, dtype=torch.int8), torch.zeros(10)]})
            >>> QuantizationDetails(True, "cudnn", [], table).learnables_summary()["Value"].tolist()
            ['3×3×3×64 int8', '1×1×64 single', '10×980 int8', '10×1 single']
        """
        table = self.quantized_learnables
        weight_rank = {layer: value.dim() for layer, part, value in zip(table["Layer"], table["Parameter"], table["Value"]) if part == "Weights"}
        sizes = [
            matlab_size(tuple(value.shape), part, weight_rank.get(layer, 2))
            for layer, part, value in zip(table["Layer"], table["Parameter"], table["Value"])
        ]
        types = [_MATLAB_TYPES.get(str(value.dtype).replace("torch.", ""), str(value.dtype).replace("torch.", "")) for value in table["Value"]]
        return table.assign(Value=[f"{'×'.join(map(str, size))} {kind}" for size, kind in zip(sizes, types)])


#: MATLAB's names of the types learnables are kept in.
_MATLAB_TYPES = {"float32": "single", "float64": "double", "float16": "half"}


def matlab_size(shape: tuple[int, ...], part: str, weight_rank: int) -> tuple[int, ...]:
    """A learnable's size as MATLAB writes it. Convolution weights are stored spatial dims first, then
    input channels, then filters (PyTorch's out×in×kH×kW is MATLAB's kH×kW×in×out); their bias is 1×…×1×out.
    Fully connected weights are out×in in both; their bias is a column, out×1.

    Example:
        >>> matlab_size((64, 3, 3, 3), "Weights", 4), matlab_size((64,), "Bias", 4), matlab_size((10,), "Bias", 2)
        ((3, 3, 3, 64), (1, 1, 64), (10, 1))
    """
    if part == "Weights":
        return shape if len(shape) <= 2 else (*shape[2:], shape[1], shape[0])
    if weight_rank <= 2:
        return (shape[0], 1)
    return (1,) * (weight_rank - 2) + (shape[0],)


def quantization_details(module: nn.Module) -> QuantizationDetails:
    """Quantization details of a network: what is quantized, for which library.

    Args:
        module: A network; :meth:`DLQuantizer.quantize` results carry their details, any other
            module is reported as not quantized.

    Returns:
        ``is_quantized``; ``target_library`` (``"cudnn"`` for the GPU target, ``"onnxruntime"`` for
        the CPU target); ``quantized_layer_names``: network layers that run in int8 (the conv/linear
        layers with the BatchNorm and activation layers fused into them, and the int8 layers that
        compute or pool, such as max pooling and additions; as MATLAB counts them, layers that only move
        values, such as concatenation, dropout and flatten, are not listed); ``quantized_learnables``: a table ``Layer``, ``Parameter``,
        ``Value`` with each quantized layer's int8 weight codes and its bias as the target keeps it
        (float32: the value of the int32 codes on ``"cpu"``, the single-precision bias on ``"gpu"``).
    """
    details = getattr(module, "quantization_details_", None)
    if isinstance(details, QuantizationDetails):
        return details
    return QuantizationDetails()


def build_emulated_network(optimized: fx.GraphModule, plan: QuantizationPlan, metadata: dict[str, Any], rounding: Rounding | None = None) -> fx.GraphModule:
    """The emulated network of a plan: quantized layers replaced, quantization points inserted.

    Args:
        optimized: The optimized graph (it is copied, not changed).
        plan: The quantization plan.
        metadata: Class names and the like, carried by the result.
        rounding: How activations are rounded (the plan's target rule by default).
    """
    gm = copy.deepcopy(optimized)
    graph = gm.graph
    rounding = rounding or plan.rounding
    quantized_names: list[str] = []
    kinds: dict[str, str] = {}
    learnables = []
    self_quantized: set[str] = set()
    int8_consumers = {name for name, node in plan.nodes.items() if node.run == "int8"}
    for node in list(graph.nodes):
        name = layer_name(node)
        node_plan = plan.nodes.get(name)
        if node_plan is None or node_plan.run != "int8":
            continue
        layer = plan.layers.get(name)
        if layer is not None:
            fused = gm.get_submodule(node.target)
            setattr(gm, node.target, EmulatedLayer(fused, layer, rounding))
            quantized_names.extend(layer.members)
            kinds.update(_member_kinds(layer.members, fused))
            learnables.append((layer.members[0], "Weights", layer.weight_codes.clone()))
            learnables.append((layer.members[0], "Bias", layer.bias.clone()))
        elif node_plan.kind == "global_avg_pool" and global_average_pool(gm, node):
            source = node.args[0]
            keepdim = node.op == "call_module" or node.target is F.adaptive_avg_pool2d or bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
            gm.add_submodule(f"{name}_int8", QuantizedGlobalAveragePool(plan.tensor_type(layer_name(source)), plan.tensor_type(name), keepdim))
            with graph.inserting_after(node):
                pooled = graph.call_module(f"{name}_int8", args=(source,))
            node.replace_all_uses_with(pooled)
            graph.erase_node(node)
            self_quantized.add(name)
            int8_consumers.add(layer_name(pooled))
            quantized_names.append(name)
            kinds[name] = "global_avg_pool"
        else:
            traits = op_traits(gm, node)
            if traits.listed_as_quantized:
                quantized_names.append(name)
                kinds[name] = traits.kind
    by_name = {layer_name(node): node for node in graph.nodes}
    for name, tensor_type in plan.quantize_after.items():
        if name not in self_quantized:
            _insert_quantization(gm, by_name[name], tensor_type, rounding, lambda user: True)
    for name, tensor_type in plan.quantize_for.items():
        _insert_quantization(gm, by_name[name], tensor_type, rounding, lambda user: layer_name(user) in int8_consumers)
    graph.lint()
    gm.recompile()
    gm.quantization_details_ = QuantizationDetails(
        is_quantized=bool(quantized_names),
        target_library=plan.target_library,
        quantized_layer_names=quantized_names,
        quantized_learnables=pd.DataFrame(learnables, columns=["Layer", "Parameter", "Value"]),
        layer_kinds=kinds,
    )
    for key, value in metadata.items():
        setattr(gm, key, value)
    return gm.eval()


def _member_kinds(members: list[str], fused: FusedLayer) -> dict[str, str]:
    """Kinds of a fused layer's members: the conv/linear, then BatchNorm, then the activation."""
    kinds = {members[0]: "linear" if isinstance(fused.layer, nn.Linear) else "conv"}
    for index, member in enumerate(members[1:], 1):
        is_activation = fused.activation is not None and index == len(members) - 1
        kinds[member] = f"fused {type(fused.activation).__name__.lower()}" if is_activation else "fused batch_norm"
    return kinds


def _insert_quantization(gm: fx.GraphModule, node: fx.Node, tensor_type: TensorType, rounding: Rounding, reads_it: Any) -> None:
    """Insert a quantization point after ``node``, read by the users for which ``reads_it`` is true."""
    name = f"{node.name}_quantize"
    gm.add_submodule(name, FakeQuantize(tensor_type, rounding))
    with gm.graph.inserting_after(node):
        fake = gm.graph.call_module(name, args=(node,))
    node.replace_all_uses_with(fake, delete_user_cb=lambda user: user is not fake and reads_it(user))
