"""Exact emulation of an int8 target: the network ``DLQuantizer.quantize()`` returns.

The emulated network computes, in float tensors, exactly what the int8 target computes (the seeds:
"scale, saturate and round single data to behave like int8"); it is not smaller than the original.

**Quantized conv/linear layers** (optimized layers: BatchNorm folded, activation fused):

1. the input is quantized to the type calibrated for the tensor that feeds the layer;
2. weights are int8 codes with one power-of-two scale per layer, the bias is int32 codes at the
   product of the input and weight scales;
3. the int8 × int8 products are accumulated exactly (in float32 only where every possible sum stays
   below 2**24, in float64 otherwise) and the bias added, as an int32 accumulator does;
4. the fused activation is applied and the result requantized to the layer's output type.

**Layers between them.** Max pooling, concatenation, residual addition, flatten, dropout and
standalone ReLU run in int8 and their output is quantized to its type. Types are shared as TensorRT
and ONNX Runtime share them (:meth:`DLQuantizer.tensor_types`): max pooling, flatten and dropout keep
their input's type (quantizing again changes nothing), and the layers feeding a concatenation produce
its type directly (its calibrated range is the union of theirs), so concatenation requantizes nothing;
an addition requantizes its sum. Other layers (the input normalization, average and global average
pooling, softmax, ...) compute in float on the dequantized values; the next quantized layer quantizes
their output again.

**Targets** (``shared/DESIGN.md``):

========================  ==============================  ========================================
                          ``"gpu"`` (cuDNN / TensorRT)    ``"cpu"`` (ONNX Runtime)
========================  ==============================  ========================================
activations               int8                            uint8 (same scale) where calibrated min ≥ 0
rounding                  ties away from zero             ties to even
not quantized             layers fused with LeakyReLU or  —
                          ReLU6 (clipped ReLU), global
                          average pooling (seed 001)
========================  ==============================  ========================================

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
import operator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from dlqnb.graph import FusedLayer
from dlqnb.numerics import Rounding, quantize_fixed, quantize_to_integer

__all__ = ["EmulatedLayer", "FakeQuantize", "QuantizationDetails", "TensorType", "int8_node", "quantization_details"]

TARGET_LIBRARY = {"gpu": "cudnn", "cpu": "onnxruntime"}
ROUNDING: dict[str, Rounding] = {"gpu": "half_away", "cpu": "half_even"}
_EXACT_FLOAT32 = 2**24


@dataclass(frozen=True)
class TensorType:
    """A scaled 8-bit type: value = code × 2**-fraction_length, codes signed or unsigned."""

    fraction_length: int
    signed: bool = True


class FakeQuantize(nn.Module):
    """Quantizes a tensor to a scaled 8-bit type and back (an int8 layer's output)."""

    def __init__(self, tensor_type: TensorType, rounding: Rounding) -> None:
        super().__init__()
        self.tensor_type = tensor_type
        self.rounding = rounding

    def forward(self, x: Tensor) -> Tensor:
        return quantize_fixed(x, self.tensor_type.fraction_length, rounding=self.rounding, signed=self.tensor_type.signed)

    def extra_repr(self) -> str:
        kind = "int8" if self.tensor_type.signed else "uint8"
        return f"{kind}, scale=2^-{self.tensor_type.fraction_length}, rounding={self.rounding}"


class EmulatedLayer(nn.Module):
    """An optimized conv/linear layer computed as the int8 target computes it.

    Attributes:
        weight_codes: int8 weight codes (an ``int8`` tensor).
        bias_codes: int32 bias codes at scale ``2**-(input_fraction + weight_fraction)``.
    """

    def __init__(
        self,
        fused: FusedLayer,
        weight_fraction: int | list[int],
        input_type: TensorType,
        output_type: TensorType,
        rounding: Rounding,
    ) -> None:
        super().__init__()
        layer = fused.layer
        self.kind = "linear" if isinstance(layer, nn.Linear) else "conv"
        self.conv_options = {
            key: getattr(layer, key) for key in ("stride", "padding", "dilation", "groups") if hasattr(layer, key)
        }
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and layer.padding_mode != "zeros":
            raise ValueError(f"padding mode {layer.padding_mode!r} is not supported by int8 emulation")
        self.dims = layer.weight.dim() - 2
        self.weight_fraction = weight_fraction
        self.input_type = input_type
        self.output_type = output_type
        self.rounding = rounding
        self.activation = copy.deepcopy(fused.activation)
        weight = layer.weight.detach().double()
        bias = layer.bias.detach().double()
        # one fraction length per layer, or one per output channel (per-channel weights)
        weight_fractions = torch.tensor(weight_fraction) if isinstance(weight_fraction, list) else weight_fraction
        self.register_buffer("weight_codes", quantize_to_integer(weight, weight_fractions, rounding=rounding).to(torch.int8))
        accumulator_fraction = input_type.fraction_length + weight_fractions
        self.register_buffer("bias_codes", quantize_to_integer(bias, accumulator_fraction, 32, rounding).to(torch.int32))
        exponent = -torch.as_tensor(accumulator_fraction, dtype=torch.int32).expand(bias.shape[0])
        self.register_buffer("accumulator_scale", torch.ldexp(torch.ones(bias.shape[0], dtype=torch.float64), exponent))
        fan_in = self.weight_codes[0].numel()
        largest_input = 2**8 if not input_type.signed else 2**7
        bound = fan_in * largest_input * 128 + int(self.bias_codes.abs().max())
        self.accumulate_dtype = torch.float32 if bound < _EXACT_FLOAT32 else torch.float64

    def _linear_op(self, x: Tensor, weight: Tensor) -> Tensor:
        if self.kind == "linear":
            return F.linear(x, weight)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
        return conv(x, weight, **self.conv_options)

    def accumulate(self, x: Tensor) -> Tensor:
        """The int32 accumulator (as a float tensor of whole numbers) for a float input."""
        dtype = self.accumulate_dtype
        codes = quantize_to_integer(x.to(dtype), self.input_type.fraction_length, rounding=self.rounding, signed=self.input_type.signed)
        acc = self._linear_op(codes, self.weight_codes.to(dtype))
        shape = (1, -1) + (1,) * self.dims if self.kind == "conv" else (1, -1)
        return acc + self.bias_codes.to(dtype).view(shape)

    def forward(self, x: Tensor) -> Tensor:
        acc = self.accumulate(x)
        shape = (1, -1) + (1,) * self.dims if self.kind == "conv" else (1, -1)
        real = acc * self.accumulator_scale.to(acc.dtype).view(shape)  # powers of two: exact
        if self.activation is not None:
            real = self.activation(real)
        out = quantize_fixed(real, self.output_type.fraction_length, rounding=self.rounding, signed=self.output_type.signed)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        weights = "per channel" if isinstance(self.weight_fraction, list) else f"2^-{self.weight_fraction}"
        return (
            f"{self.kind}, weights int8 {weights}, input 2^-{self.input_type.fraction_length}, "
            f"output 2^-{self.output_type.fraction_length}, accumulate {str(self.accumulate_dtype).split('.')[-1]}"
        )


class QuantizedGlobalAveragePool(nn.Module):
    """Global average pooling in int8, as ONNX Runtime's QLinearGlobalAveragePool computes it.

    The int32 sum of the input codes over each image is scaled in float32 by
    ``float32(input_scale / (output_scale * pixels))``, rounded to nearest even and saturated: the
    same float32 operations in the same order, so the emulation is exact.
    """

    def __init__(self, input_type: TensorType, output_type: TensorType) -> None:
        super().__init__()
        self.input_type = input_type
        self.output_type = output_type

    def forward(self, x: Tensor) -> Tensor:
        codes = quantize_to_integer(x.float(), self.input_type.fraction_length, rounding="half_even", signed=self.input_type.signed)
        sums = codes.sum(dim=(-2, -1), keepdim=True)  # whole numbers below 2**24: exact in float32
        pixels = x.shape[-2] * x.shape[-1]
        ratio = torch.tensor(math.ldexp(1.0, self.output_type.fraction_length - self.input_type.fraction_length), dtype=torch.float32)
        scale = ratio / torch.tensor(float(pixels), dtype=torch.float32)  # float32 division, as ONNX Runtime
        low, high = (-128, 127) if self.output_type.signed else (0, 255)
        out_codes = torch.round(sums * scale).clamp_(low, high)
        return (out_codes * math.ldexp(1.0, -self.output_type.fraction_length)).to(x.dtype)


_INT8_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.ReLU, nn.Dropout, nn.Identity, nn.Flatten)
_INT8_FUNCTIONS = {torch.cat, torch.concat, operator.add, operator.iadd, torch.add, torch.flatten, torch.reshape, F.relu, torch.relu, F.max_pool2d}
_INT8_METHODS = {"view", "reshape", "flatten", "relu", "contiguous", "squeeze", "unsqueeze"}


def global_average_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether a node is global average pooling (to a 1×1 output)."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    return False


def int8_node(gm: fx.GraphModule, node: fx.Node, target: str = "gpu") -> bool:
    """Whether a node (other than a conv/linear layer) runs in int8 on the target.

    Max pooling, concatenation, addition, flatten, dropout and ReLU do on both targets; global
    average pooling does on ``"cpu"`` (ONNX Runtime's QLinearGlobalAveragePool), not on ``"gpu"``
    (cuDNN, seed 001).
    """
    if target == "cpu" and global_average_pool(gm, node):
        return True
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return isinstance(module, _INT8_MODULES) and not isinstance(module, nn.ReLU6)
    if node.op == "call_function":
        return node.target in _INT8_FUNCTIONS
    if node.op == "call_method":
        return node.target in _INT8_METHODS
    return False


@dataclass
class QuantizationDetails:
    """What :func:`quantization_details` reports (MATLAB's ``quantizationDetails``)."""

    is_quantized: bool = False
    target_library: str = ""
    quantized_layer_names: list[str] = field(default_factory=list)
    quantized_learnables: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["Layer", "Parameter", "Value"]))

    def learnables_summary(self) -> pd.DataFrame:
        """The learnables table with each value shown as its size and type (``64×3×3×3 int8``)."""

        def describe(value: Tensor) -> str:
            return f"{'×'.join(str(d) for d in value.shape)} {str(value.dtype).replace('torch.', '')}"

        return self.quantized_learnables.assign(Value=self.quantized_learnables["Value"].map(describe))


def quantization_details(module: nn.Module) -> QuantizationDetails:
    """Quantization details of a network: what is quantized, for which library.

    Args:
        module: A network; :meth:`DLQuantizer.quantize` results carry their details, any other
            module is reported as not quantized.

    Returns:
        ``is_quantized``; ``target_library`` (``"cudnn"`` for the GPU target, ``"onnxruntime"`` for
        the CPU target); ``quantized_layer_names``: network layers that run in int8 (the conv/linear
        layers with the BatchNorm and activation layers fused into them, and int8 layers such as max
        pooling and concatenation); ``quantized_learnables``: a table ``Layer``, ``Parameter``,
        ``Value`` with each quantized layer's int8 weight codes and its bias (float32 values of the
        int32 codes, as MATLAB shows biases in single).
    """
    details = getattr(module, "quantization_details_", None)
    if isinstance(details, QuantizationDetails):
        return details
    return QuantizationDetails()


def build_emulated_network(
    optimized: fx.GraphModule,
    layer_members: dict[str, tuple[str, ...]],
    quantized_layers: list[str],
    weight_fractions: dict[str, int | list[int]],
    types: dict[str, TensorType],
    target: str,
    metadata: dict[str, Any],
) -> fx.GraphModule:
    """The emulated network: quantized layers replaced, int8 layers followed by fake quantization.

    Args:
        optimized: The optimized graph (it is copied, not changed).
        layer_members: Network layer names of each optimized conv/linear layer.
        quantized_layers: Optimized layers to quantize.
        weight_fractions: Weight fraction length of each quantized layer (a list: one per channel).
        types: The calibrated type of every tensor-producing node.
        target: ``"gpu"`` or ``"cpu"``.
        metadata: Class names and the like, carried by the result.
    """
    rounding = ROUNDING[target]
    gm = copy.deepcopy(optimized)
    graph = gm.graph
    quantized_names: list[str] = []
    learnables = []
    # First replace the quantized layers (their inputs are still the original nodes), then add
    # fake quantization after the int8 layers between them.
    for node in list(graph.nodes):
        if node.op != "call_module" or node.target not in quantized_layers:
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or source.name not in types:
            continue  # an input dlqnb has no type for: the layer stays float
        fused = gm.get_submodule(node.target)
        emulated = EmulatedLayer(fused, weight_fractions[node.target], types[source.name], types[node.name], rounding)
        setattr(gm, node.target, emulated)
        quantized_names.extend(layer_members[node.target])
        conv_name = layer_members[node.target][0]
        learnables.append((conv_name, "Weights", emulated.weight_codes.clone()))
        learnables.append((conv_name, "Bias", (emulated.bias_codes.double() * emulated.accumulator_scale).float()))
    for node in list(graph.nodes):
        if node.op == "output" or node.name not in types or not int8_node(gm, node, target):
            continue
        if global_average_pool(gm, node):
            source = node.args[0]
            if isinstance(source, fx.Node) and source.name in types:
                name = f"{node.name}_int8"
                gm.add_submodule(name, QuantizedGlobalAveragePool(types[source.name], types[node.name]))
                with graph.inserting_after(node):
                    pooled = graph.call_module(name, args=(source,))
                node.replace_all_uses_with(pooled)
                graph.erase_node(node)
                quantized_names.append(node.name)
            continue
        name = f"{node.name}_quantize"
        gm.add_submodule(name, FakeQuantize(types[node.name], rounding))
        with graph.inserting_after(node):
            fake = graph.call_module(name, args=(node,))
        node.replace_all_uses_with(fake, delete_user_cb=lambda user: user is not fake)
        quantized_names.append(node.name)
    graph.lint()
    gm.recompile()
    gm.quantization_details_ = QuantizationDetails(
        is_quantized=bool(quantized_names),
        target_library=TARGET_LIBRARY[target],
        quantized_layer_names=quantized_names,
        quantized_learnables=pd.DataFrame(learnables, columns=["Layer", "Parameter", "Value"]),
    )
    for key, value in metadata.items():
        setattr(gm, key, value)
    return gm.eval()
