"""Exact emulation of an int8 target: the network ``DLQuantizer.quantize()`` returns.

The emulated network is made from the quantization plan (:mod:`dlqnb.plan.builder`), and from nothing
else: every type, code, rounding rule and accumulator precision is the plan's. It computes, in float
tensors, exactly what the int8 target computes ("scale, saturate and round single data to behave like
int8", as MATLAB's *Emulate Quantized Network Behavior for GPU Target* puts it); it is not smaller
than the original. It is also what :func:`dlqnb.deploy.export_qdq_onnx` exports: each quantization
point and each quantized layer is an ``autograd.Function`` whose ``forward`` computes the integer
arithmetic and whose ``symbolic`` writes the ONNX QuantizeLinear/DequantizeLinear form, while every
float op is exported by torch's own exporter. Emulation and deployment cannot drift apart.

**Quantized conv/linear layers** (BatchNorm folded, activation fused): the input, already on its
int8 grid, is turned into codes; the int8 × int8 products are accumulated exactly (in the precision
the plan chose: float32 where every possible sum stays below 2**24, float64 otherwise). On ``"cpu"`` the int32 bias codes are
added to the accumulator, as ONNX Runtime's QLinearConv does; on ``"gpu"`` the accumulator is scaled
and the float32 bias added, as TensorRT does with a float bias. Then the fused activation, then the
layer's output quantization point.

**Quantization points** round (ties away from zero on ``"gpu"``, MATLAB's rule; ties to even on
``"cpu"``, ONNX's ``QuantizeLinear``) and saturate to int8, or to uint8 on ``"cpu"`` where the
calibrated minimum is ≥ 0. TensorRT's QuantizeLinear also rounds ties to even: on exact ties a TensorRT
deployment of the ``"gpu"`` flavour can differ from the MATLAB-rule emulation by one step.

**Global average pooling** on ``"cpu"`` is computed as ONNX Runtime's QLinearGlobalAveragePool computes
it (int32 sums scaled in float32, rounded by the target's rule), so that the emulation stays exact.

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
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from dlqnb.core.graph import FusedLayer, layer_name, network_summary
from dlqnb.core.numerics import FixedPointType, Rounding, round_and_saturate
from dlqnb.core.ops import called_module, layer_kind, op_traits
from dlqnb.plan.builder import LayerPlan, PoolPlan, QuantizationPlan

__all__ = ["EmulatedLayer", "EmulatedNetwork", "FakeQuantize", "QuantizationDetails", "QuantizedGlobalAveragePool", "build_emulated_network", "quantization_details"]


def _scale_and_zero_point(g: Any, tensor_type: FixedPointType) -> tuple[Any, Any]:
    """ONNX constants of a type's scale(s) and zero point(s): scalars, or 1-D per channel."""
    return g.op("Constant", value_t=tensor_type.scales(torch.float32)), g.op("Constant", value_t=tensor_type.zero_points())


def _dequantize(g: Any, codes: Any, tensor_type: FixedPointType) -> Any:
    scale, zero_point = _scale_and_zero_point(g, tensor_type)
    axis = {"axis_i": tensor_type.axis} if tensor_type.per_channel else {}
    return g.op("DequantizeLinear", codes, scale, zero_point, **axis)


def _quantize_dequantize(g: Any, x: Any, tensor_type: FixedPointType) -> Any:
    scale, zero_point = _scale_and_zero_point(g, tensor_type)
    return g.op("DequantizeLinear", g.op("QuantizeLinear", x, scale, zero_point), scale, zero_point)


class _QuantizeFunction(torch.autograd.Function):
    """Round and saturate to a scaled 8-bit type; exports as QuantizeLinear → DequantizeLinear."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, tensor_type: FixedPointType, rounding: Rounding) -> Tensor:
        return tensor_type.quantize_dequantize(x, rounding)

    @staticmethod
    def symbolic(g: Any, x: Any, tensor_type: FixedPointType, rounding: Rounding) -> Any:
        return _quantize_dequantize(g, x, tensor_type)


class FakeQuantize(nn.Module):
    """A quantization point: a tensor quantized to a scaled 8-bit type and back."""

    network_layers = ()  # not a network layer: network_summary looks through it

    def __init__(self, tensor_type: FixedPointType, rounding: Rounding) -> None:
        super().__init__()
        self.tensor_type = tensor_type
        self.rounding = rounding

    def forward(self, x: Tensor) -> Tensor:
        return _QuantizeFunction.apply(x, self.tensor_type, self.rounding)

    def extra_repr(self) -> str:
        kind = "int8" if self.tensor_type.signed else "uint8"
        return f"{kind}, scale=2^-{self.tensor_type.fraction_length}, rounding={self.rounding}"


class _LayerSpec(NamedTuple):
    """Everything the int8 arithmetic of one layer needs besides its tensors: values that are not
    tensors, as the ``autograd.Function`` arguments torch's exporter hands to ``symbolic``."""

    kind: str  # "conv" or "linear"
    dims: int
    stride: tuple[int, ...]
    padding: Any  # numbers, "valid" or "same"
    dilation: tuple[int, ...]
    groups: int
    kernel: tuple[int, ...]
    input_type: FixedPointType
    weight_type: FixedPointType
    accumulator_type: FixedPointType
    integer_bias: bool  # int32 bias codes ("cpu") or a float32 bias ("gpu")
    rounding: Rounding
    accumulator_dtype: torch.dtype


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


def _channel_axis(spec: _LayerSpec) -> int:
    """The axis of a layer's output that holds its channels."""
    return 1 if spec.kind == "conv" else -1


def _accumulate(spec: _LayerSpec, x: Tensor, weight_codes: Tensor, bias: Tensor) -> Tensor:
    dtype = spec.accumulator_dtype
    codes = spec.input_type.quantize(x.to(dtype), spec.rounding)
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
    real = spec.accumulator_type.dequantize(acc.double(), axis=_channel_axis(spec)).float()  # powers of two: exact up to float32
    if not spec.integer_bias:
        real = real + bias.view(_channel_shape(spec))
    return real.to(x.dtype)


def _layer_onnx(spec: _LayerSpec, g: Any, x: Any, weight_codes: Any, bias: Any) -> Any:
    """The ONNX form of :func:`_layer_compute` (for ``torch.onnx.export``)."""
    weight = _dequantize(g, weight_codes, spec.weight_type)
    if spec.integer_bias:
        bias = _dequantize(g, bias, spec.accumulator_type)
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

    def __init__(self, fused: FusedLayer, plan: LayerPlan) -> None:
        super().__init__()
        layer = fused.layer
        kind = layer_kind(layer)
        dims = layer.weight.dim() - 2
        self.plan = plan
        self.network_layers = tuple(plan.members)  # what network_summary lists in its place
        self.activation = copy.deepcopy(fused.activation)
        self.register_buffer("weight_codes", plan.weight_codes.clone())
        self.register_buffer("bias_codes", plan.bias_codes.clone() if plan.bias_codes is not None else plan.bias.clone())
        conv = layer if kind == "conv" else None
        self.spec = _LayerSpec(
            kind=kind,
            dims=dims,
            stride=_tuple(conv.stride, dims) if conv is not None else (),
            padding=(conv.padding if isinstance(conv.padding, str) else _tuple(conv.padding, dims)) if conv is not None else (),
            dilation=_tuple(conv.dilation, dims) if conv is not None else (),
            groups=int(conv.groups) if conv is not None else 1,
            kernel=tuple(plan.weight_codes.shape[2:]),
            input_type=plan.input_type,
            weight_type=plan.weight_type,
            accumulator_type=plan.accumulator_type,
            integer_bias=plan.integer_bias,
            rounding=plan.rounding,
            accumulator_dtype=plan.accumulator_dtype,
        )

    @property
    def accumulate_dtype(self) -> torch.dtype:
        """float32 where every possible accumulator is a whole number below 2**24, else float64 (the plan's choice)."""
        return self.spec.accumulator_dtype

    def accumulate(self, x: Tensor) -> Tensor:
        """The int32 accumulator (as a float tensor of whole numbers) for a float input, bias codes
        included on ``"cpu"``."""
        return _accumulate(self.spec, x, self.weight_codes, self.bias_codes)

    def forward(self, x: Tensor) -> Tensor:
        y = _LayerFunction.apply(x, self.weight_codes, self.bias_codes, tuple(self.spec))
        return self.activation(y) if self.activation is not None else y

    def extra_repr(self) -> str:
        weights = "per channel" if self.spec.weight_type.per_channel else f"2^-{self.spec.weight_type.fraction_length}"
        bias = "int32" if self.spec.integer_bias else "float32"
        return (
            f"{self.spec.kind}, weights int8 {weights}, bias {bias}, input 2^-{self.spec.input_type.fraction_length}, "
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
    def forward(ctx: Any, x: Tensor, pool: PoolPlan) -> Tensor:
        return _global_average_pool(x, pool)

    @staticmethod
    def symbolic(g: Any, x: Any, pool: PoolPlan) -> Any:
        pooled = _quantize_dequantize(g, g.op("GlobalAveragePool", x), pool.output_type)
        return pooled if pool.keepdim else g.op("Flatten", pooled, axis_i=1)


def _global_average_pool(x: Tensor, pool: PoolPlan) -> Tensor:
    input_type, output_type = pool.input_type, pool.output_type
    codes = input_type.quantize(x.float(), pool.rounding)  # the input is on its grid already: exact
    sums = codes.sum(dim=(-2, -1), keepdim=True)  # whole numbers below 2**24: exact in float32
    pixels = x.shape[-2] * x.shape[-1]
    ratio = torch.tensor(input_type.scale / output_type.scale, dtype=torch.float32)  # a power of two: exact
    scale = ratio / torch.tensor(float(pixels), dtype=torch.float32)  # float32 division, as ONNX Runtime
    out_codes = round_and_saturate(sums * scale, output_type.bounds, pool.rounding)
    out = output_type.dequantize(out_codes).to(x.dtype)
    return out if pool.keepdim else out.flatten(1)


class QuantizedGlobalAveragePool(nn.Module):
    """Global average pooling in int8, as ONNX Runtime's QLinearGlobalAveragePool computes it.

    The int32 sum of the input codes over each image is scaled in float32 by
    ``float32(input_scale / (output_scale * pixels))``, rounded to nearest even and saturated: the
    same float32 operations in the same order, so the emulation is exact. Its output is already
    quantized (no quantization point follows it).

    Attributes:
        pool: Its plan: input and output types, whether it keeps the pooled dimensions, its rounding.
    """

    def __init__(self, pool: PoolPlan) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        return _GlobalAveragePoolFunction.apply(x, self.pool)


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


class EmulatedNetwork(fx.GraphModule):
    """The emulated network: an ``fx.GraphModule`` shown as MATLAB shows ``qNet`` after ``quantize``.

    Its display lists the network's layers and connections as the float network has them
    (:func:`dlqnb.network_summary`; fused and emulated layers count as the layers they stand for,
    quantization points are not layers); ``print(net.modules_repr())`` shows its modules.

    Example:
        >>> import torch
        >>> from dlqnb import DLQuantizer
        >>> from dlqnb.models.networks import DigitsNet
        >>> q = DLQuantizer(DigitsNet().eval())
        >>> _ = q.calibrate(torch.rand(2, 1, 28, 28), progress=False)
        >>> print(repr(q.quantize()).splitlines()[0])
        Quantized DAGNetwork with properties:
    """

    def modules_repr(self) -> str:
        """The module tree, as ``nn.Module`` prints it."""
        return nn.Module.__repr__(self)

    def __repr__(self) -> str:
        summary = network_summary(self)
        return "Quantized DAGNetwork" + repr(summary).split(summary.name, 1)[1]

    __str__ = __repr__  # fx.GraphModule prints its generated code otherwise


def build_emulated_network(optimized: fx.GraphModule, plan: QuantizationPlan, metadata: dict[str, Any]) -> fx.GraphModule:
    """The emulated network of a plan: quantized layers replaced, quantization points inserted.

    Args:
        optimized: The optimized graph (it is copied, not changed).
        plan: The quantization plan (its rounding is how activations are rounded).
        metadata: Class names and the like, carried by the result.
    """
    gm = copy.deepcopy(optimized)
    graph = gm.graph
    rounding = plan.rounding
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
            fused = called_module(gm, node)
            setattr(gm, node.target, EmulatedLayer(fused, layer))
            quantized_names.extend(layer.members)
            kinds.update(_member_kinds(layer.members, fused))
            learnables.append((layer.members[0], "Weights", layer.weight_codes.clone()))
            learnables.append((layer.members[0], "Bias", layer.bias.clone()))
        elif name in plan.pools:
            gm.add_submodule(f"{name}_int8", QuantizedGlobalAveragePool(plan.pools[name]))
            gm.get_submodule(f"{name}_int8").network_layers = (name,)
            with graph.inserting_after(node):
                pooled = graph.call_module(f"{name}_int8", args=(node.args[0],))
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
    gm = EmulatedNetwork(gm, copy.deepcopy(graph), class_name=type(optimized).__name__)
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
    kinds = {members[0]: layer_kind(fused.layer)}
    for index, member in enumerate(members[1:], 1):
        is_activation = fused.activation is not None and index == len(members) - 1
        kinds[member] = f"fused {type(fused.activation).__name__.lower()}" if is_activation else "fused batch_norm"
    return kinds


def _insert_quantization(gm: fx.GraphModule, node: fx.Node, tensor_type: FixedPointType, rounding: Rounding, reads_it: Any) -> None:
    """Insert a quantization point after ``node``, read by the users for which ``reads_it`` is true."""
    name = f"{node.name}_quantize"
    gm.add_submodule(name, FakeQuantize(tensor_type, rounding))
    with gm.graph.inserting_after(node):
        fake = gm.graph.call_module(name, args=(node,))
    node.replace_all_uses_with(fake, delete_user_cb=lambda user: user is not fake and reads_it(user))
