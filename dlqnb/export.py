"""QDQ ONNX export: the quantization plan's network, written by torch's own ONNX exporter.

:func:`export_qdq_onnx` exports the network :meth:`DLQuantizer.quantize` returns. Its float ops are
written by ``torch.onnx.export``, so every op torch can export is exportable; its quantization points
and quantized layers are ``autograd.Function`` s whose ONNX form is explicit Q/DQ
(:mod:`dlqnb.emulation`):

* every quantization point of the plan: QuantizeLinear → DequantizeLinear with the calibrated
  power-of-two scale and zero point 0;
* every quantized conv/linear layer: int8 weight initializer → DequantizeLinear (scale ``2**-fw``, one
  per channel with per-channel weights), and its bias: on ``"cpu"`` an int32 initializer →
  DequantizeLinear (scale ``2**-(fin + fw)``), on ``"gpu"`` a float initializer — TensorRT's ONNX parser
  accepts DequantizeLinear only on int8 tensors and takes float biases;
* global average pooling on ``"cpu"``: GlobalAveragePool between Q/DQ pairs (QLinearGlobalAveragePool
  in ONNX Runtime);
* float layers between a DequantizeLinear and the next QuantizeLinear, as in the emulation.

The flavour follows the quantizer's execution environment: ``"gpu"`` → signed int8 everywhere, zero
point 0 (TensorRT 10/11's explicit quantization); ``"cpu"`` → uint8 with zero point 0 where the
calibrated minimum is >= 0 (what ONNX Runtime fuses into QLinearConv on x86). The model is opset 19
with a dynamic batch and carries metadata: dlqnb's version, the target, the network fingerprint,
class names and preprocessing.

torch's TorchScript-based exporter (``dynamo=False``) is used: it exports ``autograd.Function`` s
through their ``symbolic`` methods, traces in a second where the torch.export-based exporter takes
tens, and handles every torchvision classifier; dlqnb silences its deprecation warning.

Example:
    >>> import tempfile, torch, torchvision
    >>> from dlqnb import DLQuantizer
    >>> q = DLQuantizer(torchvision.models.squeezenet1_1(num_classes=5), execution_environment="cpu")
    >>> _ = q.calibrate(torch.rand(4, 3, 64, 64), progress=False)
    >>> path = export_qdq_onnx(q, tempfile.mkdtemp() + "/model_int8.onnx")
    >>> import onnx
    >>> ops = [node.op_type for node in onnx.load(path).graph.node]
    >>> ops.count("Conv"), ops.count("QuantizeLinear") > 0, ops.count("DequantizeLinear") > 26
    (26, True, True)
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import torch
from torch import nn

from dlqnb.cache import atomic_write_bytes

if TYPE_CHECKING:
    from dlqnb.quantizer import DLQuantizer

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "ExportError", "export_float_onnx", "export_qdq_onnx"]

OPSET = 19
IR_VERSION = 9  # the IR version of opset 19, what ONNX Runtime and TensorRT read
INPUT_NAME = "input"
OUTPUT_NAME = "scores"


class ExportError(ValueError):
    """A network the ONNX exporter cannot write; the message names the layer or the reason."""


def export_qdq_onnx(quantizer: DLQuantizer, path: str | os.PathLike[str], input_size: tuple[int, int] | None = None) -> Path:
    """Write the quantizer's network as a QDQ ONNX model in its target's flavour.

    Args:
        quantizer: A calibrated :class:`~dlqnb.DLQuantizer`.
        path: Where to write the ``.onnx`` file (atomically).
        input_size: (H, W) of the model input; default: the network's recorded ``input_size``, else
            the size calibration saw.

    Returns:
        The path written.

    Raises:
        NotCalibratedError: Before calibration.
        ExportError: torch's exporter cannot write a layer (the message names it).
    """
    module = quantizer.quantize()
    return _export(quantizer, module, path, input_size, target=quantizer.execution_environment)


def export_float_onnx(
    quantizer: DLQuantizer, path: str | os.PathLike[str], input_size: tuple[int, int] | None = None, dtype: str = "float32"
) -> Path:
    """Write the quantizer's optimized network in float, with no Q/DQ at all (the baselines).

    Same input, output and metadata as :func:`export_qdq_onnx` (target ``"float"``). With
    ``dtype="float16"`` weights, input and output are float16: the model a strongly typed TensorRT
    network builds an fp16 engine from.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    quantizer.check_calibrated("export")
    import copy

    module = copy.deepcopy(quantizer.optimized.module)
    if dtype == "float16":
        module = module.half()
    return _export(quantizer, module, path, input_size, target="float", dtype=torch.float16 if dtype == "float16" else torch.float32)


def input_shape(quantizer: DLQuantizer, input_size: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(C, H, W) of the exported model's input: ``input_size`` given, else the network's recorded size,
    else the size calibration saw.

    Raises:
        ExportError: When none of these says the size.
    """
    from dlqnb.models import network_metadata

    metadata = network_metadata(quantizer.network)
    seen = quantizer.input_shape_
    channels = metadata["channels"] or (seen[0] if seen else None)
    size = input_size or (tuple(metadata["input_size"]) if metadata["input_size"] else None) or (tuple(seen[1:]) if seen else None)
    if channels is None or size is None or len(size) != 2:
        raise ExportError(
            "cannot tell the model's input size: the network records none and the calibration file predates "
            "dlqnb recording it; pass input_size=(H, W)"
        )
    return int(channels), int(size[0]), int(size[1])


def _export(
    quantizer: DLQuantizer, module: nn.Module, path: str | os.PathLike[str], input_size: tuple[int, int] | None, target: str, dtype: torch.dtype = torch.float32
) -> Path:
    from dlqnb import __version__
    from dlqnb.models import network_metadata

    channels, height, width = input_shape(quantizer, input_size)
    example = torch.zeros(2, channels, height, width, dtype=dtype)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch deprecates its TorchScript exporter; dlqnb uses it on purpose (see the module docstring)
        warnings.simplefilter("ignore")
        set_log = getattr(torch._C, "_jit_set_onnx_log_enabled", None)
        if set_log is not None:
            set_log(False)  # otherwise a failed export prints the whole TorchScript graph
        try:
            torch.onnx.export(
                module.eval(),
                (example,),
                buffer,
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
                do_constant_folding=True,
            )
        except Exception as error:  # the exporter raises many types; all mean "this layer has no ONNX form"
            raise ExportError(f"torch.onnx.export cannot write {type(quantizer.network).__name__}: {error}") from error
    model = onnx.load_from_string(buffer.getvalue())
    _constants_to_initializers(model)
    model.ir_version = IR_VERSION
    model.producer_name, model.producer_version = "dlqnb", __version__
    metadata = network_metadata(quantizer.network)
    plan = quantizer.plan() if target != "float" else None
    info = {
        "dlqnb_version": __version__,
        "dlqnb_target": target,
        "dlqnb_calibration_fingerprint": quantizer.network_fingerprint(),
        "dlqnb_class_names": json.dumps(metadata["class_names"]),
        "dlqnb_preprocessing": json.dumps(
            {"input_size": [height, width], "pixel_range": [0.0, 1.0], "channels": channels, "mean_std": "applied inside the model"}
        ),
        "dlqnb_quantized_layers": json.dumps(sorted(plan.layers) if plan else []),
        "dlqnb_per_channel_weights": json.dumps(quantizer.per_channel_weights),
    }
    onnx.helper.set_model_props(model, info)
    onnx.checker.check_model(model)
    target_path = Path(path)
    atomic_write_bytes(target_path, model.SerializeToString())
    return target_path


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    """Move the exporter's Constant nodes (scales, zero points) into initializers and read shared
    initializers directly rather than through the exporter's Identity nodes, so that every
    DequantizeLinear reads an initializer, as hand-written QDQ models and TensorRT's tools have them."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    outputs = {output.name for output in graph.output}
    alias: dict[str, str] = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            initializers.add(tensor.name)
        elif node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    for node in kept:
        for index, name in enumerate(node.input):
            if name in alias:
                node.input[index] = alias[name]
    del graph.node[:]
    graph.node.extend(kept)
