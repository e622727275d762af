"""INT8 deployment: QDQ ONNX export, ONNX Runtime int8 on a CPU, a TensorRT int8 engine on a GPU.

**Export.** :func:`export_qdq_onnx` writes the quantizer's optimized network (BatchNorm folded,
activations fused) as ONNX (opset 19, dynamic batch) with explicit QuantizeLinear/DequantizeLinear
pairs carrying dlqnb's calibrated power-of-two scales, exactly where :mod:`dlqnb.emulation` quantizes:

* every quantized conv/linear layer: int8 weight initializer → DequantizeLinear (scale ``2**-fw``),
  int32 bias initializer → DequantizeLinear (scale ``2**-(fin + fw)``), its input through the Q/DQ
  pair of the tensor that feeds it, its output (after the fused activation) through its own Q/DQ;
* every int8 layer between (max pooling, concatenation, addition, flatten, ReLU): output Q/DQ;
* float layers (input normalization, global average pooling, ...) stay float; a quantized consumer
  quantizes their output through a Q/DQ pair of their calibrated type.

The flavour follows the quantizer's execution environment: ``"gpu"`` → signed int8 everywhere, zero
point 0 (what TensorRT 10/11 accepts for explicit quantization); ``"cpu"`` → uint8 with zero point 0
where the calibrated minimum is >= 0, int8 elsewhere (what ONNX Runtime fuses into QLinearConv on
x86). Layers the quantizer excludes or the target cannot run in int8 are exported in float. The model
carries metadata: dlqnb's version, the target, the calibration fingerprint, class names and the
preprocessing (input size, [0, 1] pixels; mean/std are applied inside the model).

On this project's CPU, ONNX Runtime fuses every quantized convolution whose input is uint8 into a
QLinearConv, and also the first one, whose input (the normalized image) is signed int8; a CPU whose
ONNX Runtime kernels take only uint8 inputs may keep that one convolution unfused. The tests count
the QLinearConv nodes of ONNX Runtime's optimized graph.

**Run.** :func:`load_int8` returns a runner with ``.backend`` and ``.predict(x)``: ``"tensorrt"``
builds (and caches on disk) a strongly typed TensorRT engine from the ``"gpu"`` flavour and runs it
on CUDA; ``"onnxruntime"`` runs a CPU session; ``"auto"`` picks TensorRT when it imports, a CUDA
device is present and the model is of the ``"gpu"`` flavour, and ONNX Runtime otherwise, saying why.
:func:`predict_int8` is the seed's ``predict_int8.m`` entry point: it loads a runner once per file
and reuses it, and accepts one H×W×3 uint8 image or float NCHW batches.

Example:
    >>> import tempfile, torch, torchvision
    >>> from dlqnb import DLQuantizer
    >>> q = DLQuantizer(torchvision.models.squeezenet1_1(num_classes=5), execution_environment="cpu")
    >>> _ = q.calibrate(torch.rand(4, 3, 64, 64), progress=False)
    >>> path = export_qdq_onnx(q, tempfile.mkdtemp() + "/model_int8.onnx")
    >>> runner = load_int8(path, backend="onnxruntime")
    >>> runner.backend, runner.predict(torch.rand(2, 3, 64, 64)).shape
    ('onnxruntime', (2, 5))
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import operator
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
import torch.fx as fx
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from dlqnb.cache import atomic_write_bytes, cache_dir
from dlqnb.emulation import ROUNDING, TensorType, int8_node
from dlqnb.graph import FusedLayer
from dlqnb.models import ImageInput
from dlqnb.numerics import quantize_to_integer

if TYPE_CHECKING:
    from dlqnb.quantizer import DLQuantizer

__all__ = [
    "ExportError",
    "OnnxRuntimeRunner",
    "TensorRTRunner",
    "choose_backend",
    "engine_cache_path",
    "export_float_onnx",
    "export_qdq_onnx",
    "load_int8",
    "onnxruntime_ops",
    "predict_int8",
]

_log = logging.getLogger(__name__)
OPSET = 19
IR_VERSION = 9  # the IR version of opset 19
INPUT_NAME = "input"
OUTPUT_NAME = "scores"


class ExportError(ValueError):
    """A layer the ONNX exporter cannot write; the message names it."""


@dataclass
class _Tensor:
    name: str  # float tensor name in the ONNX graph
    quantized: str | None = None  # name of its DequantizeLinear output, when it has a Q/DQ pair


class _Builder:
    """Accumulates ONNX nodes and initializers with unique names."""

    def __init__(self, target: str, half: bool = False) -> None:
        self.target = target  # the weight and bias codes are rounded as the target's emulation rounds them
        self.half = half  # float constants (weights, mean/std, clip bounds) in float16
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.used: set[str] = set()

    def name(self, base: str) -> str:
        candidate, index = base, 1
        while candidate in self.used:
            candidate = f"{base}_{index}"
            index += 1
        self.used.add(candidate)
        return candidate

    def constant(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        if self.half and array.dtype == np.float32 and not base.endswith("_scale"):
            array = array.astype(np.float16)
        # np.ascontiguousarray would turn a scalar into shape (1,): per-tensor scales must stay scalars
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def node(self, op: str, inputs: list[str], base: str, **attributes: Any) -> str:
        output = self.name(base)
        self.nodes.append(helper.make_node(op, inputs, [output], name=self.name(f"{op}_{base}"), **attributes))
        return output

    def qdq(self, source: str, tensor_type: TensorType, base: str) -> str:
        """QuantizeLinear → DequantizeLinear of a float tensor; returns the DQ output name."""
        scale = self.constant(f"{base}_scale", np.array(math.ldexp(1.0, -tensor_type.fraction_length), dtype=np.float32))
        zero = self.constant(f"{base}_zero_point", np.array(0, dtype=np.int8 if tensor_type.signed else np.uint8))
        quantized = self.node("QuantizeLinear", [source, scale, zero], f"{base}_quantized")
        return self.node("DequantizeLinear", [quantized, scale, zero], f"{base}_dequantized")

    def dequantized_constant(self, base: str, codes: np.ndarray, fraction_length: int | list[int]) -> str:
        """An integer initializer behind a DequantizeLinear (weights int8, biases int32); a list of
        fraction lengths gives per-channel scales along axis 0."""
        values = self.constant(f"{base}_codes", codes)
        if isinstance(fraction_length, list):
            scales = np.array([math.ldexp(1.0, -f) for f in fraction_length], dtype=np.float32)
            scale = self.constant(f"{base}_scale", scales)
            zero = self.constant(f"{base}_zero_point", np.zeros(len(fraction_length), dtype=codes.dtype))
            return self.node("DequantizeLinear", [values, scale, zero], f"{base}_dequantized", axis=0)
        scale = self.constant(f"{base}_scale", np.array(math.ldexp(1.0, -fraction_length), dtype=np.float32))
        zero = self.constant(f"{base}_zero_point", np.zeros((), dtype=codes.dtype))
        return self.node("DequantizeLinear", [values, scale, zero], f"{base}_dequantized")


def _pair(value: Any) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [int(value)] * 2


def _arg(node: fx.Node, index: int, key: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(key, default)


def export_float_onnx(
    quantizer: DLQuantizer, path: str | os.PathLike[str], input_size: tuple[int, int] | None = None, dtype: str = "float32"
) -> Path:
    """Write the quantizer's optimized network in float, with no Q/DQ at all (the baselines).

    Same graph, names and metadata as :func:`export_qdq_onnx` (target ``"float"``). With
    ``dtype="float16"`` weights, input and output are float16: the model a strongly typed TensorRT
    network builds an fp16 engine from.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    return _export(quantizer, path, input_size, quantize=False, half=dtype == "float16")


def export_qdq_onnx(quantizer: DLQuantizer, path: str | os.PathLike[str], input_size: tuple[int, int] | None = None) -> Path:
    """Write the quantizer's network as a QDQ ONNX model in its target's flavour.

    Args:
        quantizer: A calibrated :class:`~dlqnb.DLQuantizer`.
        path: Where to write the ``.onnx`` file (atomically).
        input_size: (H, W) of the model input; default: the network's ``input_size`` when it records
            one, else dynamic.

    Returns:
        The path written.

    Raises:
        NotCalibratedError: Before calibration.
        ExportError: A layer the exporter has no ONNX form for (named).
    """
    return _export(quantizer, path, input_size, quantize=True)


def _export(quantizer: DLQuantizer, path: str | os.PathLike[str], input_size: tuple[int, int] | None, quantize: bool, half: bool = False) -> Path:
    from dlqnb import __version__
    from dlqnb.calibration_file import network_fingerprint
    from dlqnb.models import network_metadata

    quantizer._require_calibration("export")
    gm = quantizer.optimized_.module
    types = quantizer.tensor_types() if quantize else {}
    weights = quantizer.weight_fraction_lengths() if quantize else {}
    quantized_layers = set(quantizer.quantized_layers()) if quantize else set()
    metadata = network_metadata(quantizer.network)
    size = input_size or (tuple(metadata["input_size"]) if metadata["input_size"] else None)
    builder = _Builder(quantizer.execution_environment, half)
    float_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    tensors: dict[str, _Tensor] = {}
    graph_inputs, graph_outputs = [], []
    # Tensors that feed a quantized layer need a Q/DQ pair even when their producer runs in float.
    feeds_quantized = {
        node.args[0].name for node in gm.graph.nodes if node.op == "call_module" and node.target in quantized_layers and isinstance(node.args[0], fx.Node)
    }

    def source(arg: Any, quantized: bool) -> str:
        tensor = tensors[arg.name]
        return tensor.quantized if quantized and tensor.quantized else tensor.name

    def finish(node: fx.Node, output: str, int8: bool) -> None:
        tensor = _Tensor(output)
        if node.name in types and (int8 or node.name in feeds_quantized):
            tensor.quantized = builder.qdq(output, types[node.name], node.name)
            if int8:  # an int8 layer's consumers only ever see its quantized values
                tensor.name = tensor.quantized
        tensors[node.name] = tensor

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if graph_inputs:
                raise ExportError(f"input '{node.name}': dlqnb exports networks with one image input")
            channels = metadata["channels"] or _first_channels(gm)
            dims = ["N", channels, *(size if size else ["H", "W"])]
            graph_inputs.append(helper.make_tensor_value_info(INPUT_NAME, float_type, dims))
            builder.used.add(INPUT_NAME)
            finish(node, INPUT_NAME, int8=False)
        elif node.op == "output":
            result = node.args[0]
            final = builder.node("Identity", [tensors[result.name].name], OUTPUT_NAME)
            graph_outputs.append(helper.make_tensor_value_info(final, float_type, ["N", None]))
        elif node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, FusedLayer):
                quantize = node.target in quantized_layers and node.args[0].name in types
                output = _export_layer(builder, node, module, source(node.args[0], quantize), quantize, weights.get(node.target), types)
                finish(node, output, int8=quantize)
            else:
                output = _export_module(builder, node, module, source(node.args[0], True))
                finish(node, output, int8=quantize and int8_node(gm, node, quantizer.execution_environment))
        elif node.op in ("call_function", "call_method"):
            output = _export_function(builder, node, lambda arg: source(arg, True))
            finish(node, output, int8=quantize and int8_node(gm, node, quantizer.execution_environment))
        else:
            raise ExportError(f"layer '{node.name}' ({node.op} {node.target}): not exportable to ONNX by dlqnb")

    graph = helper.make_graph(builder.nodes, "dlqnb_int8", graph_inputs, graph_outputs, builder.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dlqnb", producer_version=__version__)
    model.ir_version = IR_VERSION  # what ONNX Runtime and TensorRT read (onnx writes its newest by default)
    info = {
        "dlqnb_version": __version__,
        "dlqnb_target": quantizer.execution_environment if quantize else "float",
        "dlqnb_calibration_fingerprint": network_fingerprint(quantizer),
        "dlqnb_class_names": json.dumps(metadata["class_names"]),
        "dlqnb_preprocessing": json.dumps({"input_size": list(size) if size else None, "pixel_range": [0.0, 1.0], "channels": metadata["channels"] or _first_channels(gm), "mean_std": "applied inside the model"}),
        "dlqnb_quantized_layers": json.dumps(sorted(quantized_layers)),
        "dlqnb_per_channel_weights": json.dumps(quantizer.per_channel_weights),
    }
    helper.set_model_props(model, info)
    onnx.checker.check_model(model)
    target = Path(path)
    atomic_write_bytes(target, model.SerializeToString())
    return target


def _first_channels(gm: fx.GraphModule) -> int:
    for module in gm.modules():
        if isinstance(module, FusedLayer):
            return int(module.layer.weight.shape[1])
    raise ExportError("cannot tell the network's input channels")


def _export_layer(
    builder: _Builder, node: fx.Node, fused: FusedLayer, x: str, quantize: bool, weight_fraction: int | list[int] | None, types: dict[str, TensorType]
) -> str:
    layer = fused.layer
    weight = layer.weight.detach().double()
    bias = layer.bias.detach().double()
    if quantize:
        input_fraction = types[node.args[0].name].fraction_length
        rounding = ROUNDING[builder.target]
        per_channel = isinstance(weight_fraction, list)
        fractions = torch.tensor(weight_fraction) if per_channel else weight_fraction
        bias_fraction = [input_fraction + f for f in weight_fraction] if per_channel else input_fraction + weight_fraction
        w_codes = quantize_to_integer(weight, fractions, rounding=rounding).to(torch.int8).numpy()
        b_codes = quantize_to_integer(bias, torch.tensor(bias_fraction) if per_channel else bias_fraction, 32, rounding).to(torch.int32).numpy()
        w = builder.dequantized_constant(f"{node.name}_weight", w_codes, weight_fraction)
        b = builder.dequantized_constant(f"{node.name}_bias", b_codes, bias_fraction)
    else:
        w = builder.constant(f"{node.name}_weight", weight.float().numpy())
        b = builder.constant(f"{node.name}_bias", bias.float().numpy())
    if isinstance(layer, nn.Linear):
        out = builder.node("Gemm", [x, w, b], f"{node.name}_gemm", transB=1)
    elif isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ExportError(f"layer '{node.name}': only explicit zero padding is exportable")
        pads = _pair(layer.padding)
        out = builder.node(
            "Conv", [x, w, b], f"{node.name}_conv",
            kernel_shape=list(layer.kernel_size), strides=_pair(layer.stride), pads=pads + pads, dilations=_pair(layer.dilation), group=layer.groups,
        )
    else:
        raise ExportError(f"layer '{node.name}' ({type(layer).__name__}): dlqnb exports 2-D convolutions and linear layers")
    activation = fused.activation
    if activation is None:
        return out
    if isinstance(activation, nn.ReLU6):
        low = builder.constant(f"{node.name}_clip_min", np.array(0.0, dtype=np.float32))
        high = builder.constant(f"{node.name}_clip_max", np.array(6.0, dtype=np.float32))
        return builder.node("Clip", [out, low, high], node.name)
    if isinstance(activation, nn.LeakyReLU):
        return builder.node("LeakyRelu", [out], node.name, alpha=float(activation.negative_slope))
    return builder.node("Relu", [out], node.name)


def _export_module(builder: _Builder, node: fx.Node, module: nn.Module, x: str) -> str:
    name = node.name
    if isinstance(module, ImageInput):
        mean = builder.constant(f"{name}_mean", module.mean.numpy())
        std = builder.constant(f"{name}_std", module.std.numpy())
        return builder.node("Div", [builder.node("Sub", [x, mean], f"{name}_centered"), std], name)
    if isinstance(module, (nn.ReLU, nn.ReLU6)) and not isinstance(module, nn.ReLU6):
        return builder.node("Relu", [x], name)
    if isinstance(module, nn.MaxPool2d):
        if _pair(module.dilation) != [1, 1]:
            raise ExportError(f"layer '{name}': dilated max pooling is not exportable")
        pads = _pair(module.padding)
        return builder.node("MaxPool", [x], name, kernel_shape=_pair(module.kernel_size), strides=_pair(module.stride or module.kernel_size), pads=pads + pads, ceil_mode=int(module.ceil_mode))
    if isinstance(module, nn.AvgPool2d):
        pads = _pair(module.padding)
        return builder.node("AveragePool", [x], name, kernel_shape=_pair(module.kernel_size), strides=_pair(module.stride or module.kernel_size), pads=pads + pads, ceil_mode=int(module.ceil_mode), count_include_pad=int(module.count_include_pad))
    if isinstance(module, nn.AdaptiveAvgPool2d) and _pair(module.output_size) == [1, 1]:
        return builder.node("GlobalAveragePool", [x], name)
    if isinstance(module, (nn.Dropout, nn.Identity)):
        return builder.node("Identity", [x], name)
    if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
        return builder.node("Flatten", [x], name, axis=1)
    raise ExportError(f"layer '{name}' ({type(module).__name__}): no ONNX form in dlqnb's exporter")


def _export_function(builder: _Builder, node: fx.Node, source: Any) -> str:
    name, target = node.name, node.target
    if target in (torch.cat, torch.concat):
        dim = _arg(node, 1, "dim", 0)
        return builder.node("Concat", [source(arg) for arg in node.args[0]], name, axis=int(dim))
    if target in (operator.add, operator.iadd, torch.add) and all(isinstance(a, fx.Node) for a in node.args[:2]):
        return builder.node("Add", [source(node.args[0]), source(node.args[1])], name)
    flatten = target is torch.flatten or (node.op == "call_method" and target == "flatten")
    if flatten and int(_arg(node, 1, "start_dim", 0)) == 1 and int(_arg(node, 2, "end_dim", -1)) == -1:
        return builder.node("Flatten", [source(node.args[0])], name, axis=1)
    if target in (F.relu, torch.relu) or (node.op == "call_method" and target == "relu"):
        return builder.node("Relu", [source(node.args[0])], name)
    if target is F.adaptive_avg_pool2d and _pair(_arg(node, 1, "output_size", None)) == [1, 1]:
        return builder.node("GlobalAveragePool", [source(node.args[0])], name)
    if node.op == "call_method" and target == "contiguous":
        return builder.node("Identity", [source(node.args[0])], name)
    raise ExportError(f"layer '{name}' ({node.op} {getattr(target, '__name__', target)}): no ONNX form in dlqnb's exporter")


# --------------------------------------------------------------------------------- runners
def _model_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    model = onnx.load(os.fspath(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "dlqnb_target" not in props:
        warnings.warn(f"{os.fspath(path)!r} carries no dlqnb metadata: no class names or preprocessing; inputs are used as given", stacklevel=3)
        return {"target": None, "class_names": None, "preprocessing": {}}
    return {
        "target": props["dlqnb_target"],
        "class_names": json.loads(props.get("dlqnb_class_names", "null")),
        "preprocessing": json.loads(props.get("dlqnb_preprocessing", "{}")),
    }


def prepare_input(x: Any, preprocessing: dict[str, Any]) -> np.ndarray:
    """Check and preprocess runner input: one H×W×3 uint8 image, or float N×C×H×W batches in [0, 1].

    A uint8 image is resized to the model's input size and scaled to [0, 1], as the datastores
    do for calibration and validation.

    Raises:
        ValueError: Wrong rank, channel count, size or dtype, naming what was expected.
    """
    channels = preprocessing.get("channels")
    size = preprocessing.get("input_size")
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == np.uint8:
        if x.ndim != 3 or (channels and x.shape[2] != channels):
            raise ValueError(f"a uint8 image must be H×W×{channels or 'C'}, got shape {x.shape}")
        image = torch.from_numpy(x.copy()).permute(2, 0, 1)[None].float() / 255
        if size and tuple(image.shape[-2:]) != tuple(size):
            image = F.interpolate(image, size=tuple(size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
        return image.numpy()
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected float N×C×H×W images in [0, 1] or one uint8 H×W×C image, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected float images N×C×H×W, got shape {x.shape}")
    if channels and x.shape[1] != channels:
        raise ValueError(f"expected {channels} channels (N×{channels}×H×W), got shape {x.shape}")
    if size and tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(f"expected images of {size[0]}×{size[1]} (the model's input size), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


class OnnxRuntimeRunner:
    """Runs a (QDQ) ONNX model with ONNX Runtime on the CPU.

    Args:
        path: The ONNX file.
        threads: Intra-op threads (default: all cores).
        optimized_model_path: Where ONNX Runtime writes its optimized graph (to inspect fusions).
    """

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, optimized_model_path: str | None = None) -> None:
        import onnxruntime as ort

        self.path = os.fspath(path)
        self.info = _model_info(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimized_model_path:
            options.optimized_model_filepath = optimized_model_path
        # ONNX Runtime would otherwise quantize the float weights of layers dlqnb keeps in float
        # (excluded or unsupported) when they sit between DequantizeLinear and QuantizeLinear.
        self.session = ort.InferenceSession(
            self.path, options, providers=["CPUExecutionProvider"], disabled_optimizers=["WeightBiasQuantization"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.input_dtype = np.float16 if self.session.get_inputs()[0].type == "tensor(float16)" else np.float32
        self.reason = ""

    def predict(self, x: Any) -> np.ndarray:
        """Scores N×C (float32) for the input (see :func:`prepare_input`)."""
        batch = prepare_input(x, self.info["preprocessing"]).astype(self.input_dtype, copy=False)
        return self.session.run(None, {self.input_name: batch})[0].astype(np.float32, copy=False)


def onnxruntime_ops(path: str | os.PathLike[str]) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime actually runs for a model on this CPU (after its
    QDQ fusions), e.g. how many convolutions became ``QLinearConv``."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        optimized = os.path.join(folder, "optimized.onnx")
        OnnxRuntimeRunner(path, threads=1, optimized_model_path=optimized)
        counts: dict[str, int] = {}
        for node in onnx.load(optimized).graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def engine_cache_path(onnx_bytes: bytes, tensorrt_version: str, gpu_name: str) -> Path:
    """Where the serialized engine of a model is cached: keyed by the ONNX file's hash, TensorRT's
    version and the GPU (an engine only runs where it was built)."""
    digest = hashlib.sha256(onnx_bytes).hexdigest()[:20]
    gpu = "".join(c if c.isalnum() else "-" for c in gpu_name)
    return cache_dir() / "tensorrt" / f"{digest}-trt{tensorrt_version}-{gpu}.engine"


class TensorRTRunner:
    """Builds a strongly typed TensorRT engine from a ``"gpu"``-flavour QDQ model and runs it on CUDA.

    TensorRT 10/11 takes its precision from the Q/DQ types of a strongly typed network (no INT8 or
    FP16 builder flags); the serialized engine is cached on disk (:func:`engine_cache_path`).

    Args:
        path: The ONNX file.
        max_batch: Largest batch of the engine's optimization profile.
    """

    backend = "tensorrt"

    def __init__(self, path: str | os.PathLike[str], max_batch: int = 32) -> None:
        import tensorrt as trt

        self.trt = trt
        self.path = os.fspath(path)
        self.info = _model_info(path)
        with open(self.path, "rb") as stream:
            onnx_bytes = stream.read()
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no-gpu"
        self.engine_path = engine_cache_path(onnx_bytes, trt.__version__, gpu)
        self.logger = trt.Logger(trt.Logger.WARNING)
        if self.engine_path.exists():
            serialized = self.engine_path.read_bytes()
        else:
            serialized = self._build(onnx_bytes, max_batch)
            atomic_write_bytes(self.engine_path, serialized)
        runtime = trt.Runtime(self.logger)
        self.engine = runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize the engine {self.engine_path}")
        self.context = self.engine.create_execution_context()
        self.reason = ""

    def _build(self, onnx_bytes: bytes, max_batch: int) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {self.path}: {errors}")
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        dims = list(network.get_input(0).shape)
        shape = lambda batch: tuple([batch] + [int(d) for d in dims[1:]])  # noqa: E731
        profile.set_shape(network.get_input(0).name, shape(1), shape(max_batch), shape(max_batch))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT could not build an engine from {self.path}")
        return bytes(serialized)

    def predict(self, x: Any) -> np.ndarray:
        """Scores N×C for the input (see :func:`prepare_input`), computed on the GPU."""
        input_name, output_name = (self.engine.get_tensor_name(i) for i in range(2))
        half = self.trt.DataType.HALF
        input_dtype = torch.float16 if self.engine.get_tensor_dtype(input_name) == half else torch.float32
        output_dtype = torch.float16 if self.engine.get_tensor_dtype(output_name) == half else torch.float32
        batch = torch.from_numpy(prepare_input(x, self.info["preprocessing"])).to("cuda", input_dtype)
        self.context.set_input_shape(input_name, tuple(batch.shape))
        output = torch.empty(tuple(self.context.get_tensor_shape(output_name)), dtype=output_dtype, device="cuda")
        self.context.set_tensor_address(input_name, batch.data_ptr())
        self.context.set_tensor_address(output_name, output.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return output.float().cpu().numpy()


def choose_backend(path: str | os.PathLike[str], backend: str = "auto") -> tuple[str, str]:
    """The backend :func:`load_int8` uses, and why.

    Raises:
        ValueError: Unknown backend name.
        RuntimeError: ``"tensorrt"`` asked for where TensorRT or a CUDA device is missing.
    """
    if backend not in ("auto", "tensorrt", "onnxruntime"):
        raise ValueError(f"backend must be 'auto', 'tensorrt' or 'onnxruntime', got {backend!r}")
    if backend == "onnxruntime":
        return "onnxruntime", "asked for"
    try:
        import tensorrt  # noqa: F401

        has_tensorrt = True
    except ImportError:
        has_tensorrt = False
    has_gpu = torch.cuda.is_available()
    if backend == "tensorrt":
        if not has_tensorrt:
            raise RuntimeError("backend='tensorrt' needs the tensorrt package: pip install 'dlqnb[tensorrt]' (NVIDIA GPUs only)")
        if not has_gpu:
            raise RuntimeError("backend='tensorrt' needs a CUDA device; none is visible to torch")
        return "tensorrt", "asked for"
    target = _model_info(path)["target"]
    if not has_tensorrt:
        return "onnxruntime", "TensorRT is not installed"
    if not has_gpu:
        return "onnxruntime", "no CUDA device"
    if target != "gpu":
        return "onnxruntime", f"the model is of the {target!r} flavour; TensorRT runs the 'gpu' flavour"
    return "tensorrt", "TensorRT and a CUDA device are present and the model is of the 'gpu' flavour"


def load_int8(path: str | os.PathLike[str], backend: str = "auto", threads: int | None = None) -> OnnxRuntimeRunner | TensorRTRunner:
    """A runner for an int8 ONNX model: ``.backend``, ``.reason`` and ``.predict(x)``.

    Args:
        path: A QDQ ONNX model written by :func:`export_qdq_onnx` (others load with a warning).
        backend: ``"auto"``, ``"tensorrt"`` or ``"onnxruntime"``.
        threads: CPU threads for ONNX Runtime.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"ONNX model {os.fspath(path)!r} does not exist")
    chosen, reason = choose_backend(path, backend)
    runner: OnnxRuntimeRunner | TensorRTRunner = TensorRTRunner(path) if chosen == "tensorrt" else OnnxRuntimeRunner(path, threads)
    runner.reason = reason
    _log.info("dlqnb: running %s with %s (%s)", path, chosen, reason)
    return runner


_runners: dict[tuple[str, float], Any] = {}
_runners_lock = threading.Lock()


def predict_int8(path: str | os.PathLike[str], x: Any) -> np.ndarray:
    """The seed's ``predict_int8`` entry point: scores of ``x`` from the int8 model at ``path``.

    The runner is loaded on the first call for a file and reused afterwards (like the seed's
    persistent ``mynet``); a file rewritten since is loaded again.

    Args:
        path: The int8 ONNX model.
        x: One H×W×3 uint8 image (resized as the model expects) or float N×C×H×W images in [0, 1].
    """
    key = (os.path.abspath(path), os.path.getmtime(path))
    with _runners_lock:
        runner = _runners.get(key)
        if runner is None:
            runner = _runners[key] = load_int8(path)
    return runner.predict(x)
