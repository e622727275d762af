"""QDQ ONNX export: the quantization plan's network, written by torch's own ONNX exporter.

:func:`export_qdq_onnx` exports the network :meth:`DLQuantizer.quantize` returns. Its float ops are
written by ``torch.onnx.export``, so every op torch can export is exportable; its quantization points
and quantized layers are ``autograd.Function`` s whose ONNX form is explicit Q/DQ
(:mod:`dlqnb.emulation.network`):

* every quantization point of the plan: QuantizeLinear → DequantizeLinear with the calibrated
  power-of-two scale and zero point 0;
* every quantized conv/linear layer: int8 weight initializer → DequantizeLinear (scale ``2**-fw``, one
  per channel with per-channel weights), and its bias: on ``"cpu"`` an int32 initializer →
  DequantizeLinear (scale ``2**-(fin + fw)``), on ``"gpu"`` a float initializer — TensorRT's ONNX parser
  accepts DequantizeLinear only on int8 tensors and takes float biases. With empirical bias correction
  (:meth:`DLQuantizer.correct_bias`) these are the plan's corrected biases; the metadata entry
  ``dlqnb_bias_corrected_layers`` lists the layers corrected;
* global average pooling on ``"cpu"``: GlobalAveragePool between Q/DQ pairs (QLinearGlobalAveragePool
  in ONNX Runtime);
* float layers between a DequantizeLinear and the next QuantizeLinear, as in the emulation.

The flavour follows the quantizer's execution environment: ``"gpu"`` → signed int8 everywhere, zero
point 0 (TensorRT 10/11's explicit quantization); ``"cpu"`` → uint8 with zero point 0 where the
calibrated minimum is >= 0 (what ONNX Runtime fuses into QLinearConv on x86). The model is opset 19
with a dynamic batch and carries metadata: dlqnb's version, the target, the network fingerprint,
class names and preprocessing.

The input is what calibration saw, channels first: N×C×H×W for images, N×C×L for 1-D signals (Conv1d
networks), N×C×D×H×W for volumes; ``preprocessing["input_size"]`` records the spatial size ([H, W],
[L] or [D, H, W]) and ``preprocessing["channels"]`` C (``pixel_range`` only for images). The model has
one output, ``scores``: a network that returns several is exported with the output its quantizer's
``output`` names (:func:`dlqnb.evaluation.validation.scored_output`).

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
from typing import TYPE_CHECKING, Any

import onnx
import torch
from torch import nn

from dlqnb.core.cache import atomic_write_bytes
from dlqnb.core.ops import called_module, is_convolution
from dlqnb.evaluation.validation import OutputChoice, scored_output
from dlqnb.errors import ExportError

if TYPE_CHECKING:
    from dlqnb.quantizer import DLQuantizer

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "ExportError", "export_float_onnx", "export_qdq_onnx"]

OPSET = 19
IR_VERSION = 9  # the IR version of opset 19, what ONNX Runtime and TensorRT read
INPUT_NAME = "input"
OUTPUT_NAME = "scores"



def export_qdq_onnx(quantizer: DLQuantizer, path: str | os.PathLike[str], input_size: tuple[int, ...] | None = None) -> Path:
    """Write the quantizer's network as a QDQ ONNX model in its target's flavour.

    Args:
        quantizer: A calibrated :class:`~dlqnb.DLQuantizer`.
        path: Where to write the ``.onnx`` file (atomically).
        input_size: Spatial size of the model input, (H, W) for images or (L,) for 1-D signals;
            default: the network's recorded ``input_size``, else the size calibration saw.

    Returns:
        The path written.

    Raises:
        NotCalibratedError: Before calibration.
        ExportError: torch's exporter cannot write a layer (the message names it), or the input size
            is unknown or has another number of dimensions than calibration saw.
        ScoredOutputError: The network returns a dict and the quantizer's ``output`` names none of its keys.
    """
    module = quantizer.quantize()
    return _export(quantizer, module, path, input_size, target=quantizer.execution_environment)


def export_float_onnx(
    quantizer: DLQuantizer, path: str | os.PathLike[str], input_size: tuple[int, ...] | None = None, dtype: str = "float32"
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


def input_shape(quantizer: DLQuantizer, input_size: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """(C, *spatial) of the exported model's input: (C, H, W) for images, (C, L) for 1-D signals.

    The spatial size is ``input_size`` when given, else the network's recorded ``input_size``, else
    the size calibration saw; the channels are the network's input layer's, else calibration's, else
    those of the convolution that reads the input.

    Raises:
        ExportError: When nothing says the size (a calibration file written before dlqnb recorded it),
            or the size has another number of dimensions than the inputs calibration saw.

    Example:
        >>> import torch
        >>> from dlqnb import DLQuantizer
        >>> q = DLQuantizer(torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.Flatten(), torch.nn.Linear(56, 3)))
        >>> _ = q.calibrate(torch.randn(4, 2, 16), progress=False)
        >>> input_shape(q)
        (2, 16)
    """
    from dlqnb.models.networks import network_metadata

    metadata = network_metadata(quantizer.network)
    seen = quantizer.input_shape_
    seen_size = tuple(seen[1:]) if seen else None
    channels = metadata["channels"] or (seen[0] if seen else None) or _first_convolution_channels(quantizer)
    recorded = tuple(metadata["input_size"]) if metadata["input_size"] else None
    if input_size is not None:
        size, source = _spatial_size(input_size), "input_size"
    elif recorded is not None and (seen_size is None or len(recorded) == len(seen_size)):
        size, source = recorded, "the network's recorded input_size"
    else:
        size, source = seen_size, "calibration"
    if channels is None or size is None:
        # only a quantizer restored from such a file gets here: calibrate() records the shape
        raise ExportError(
            f"cannot tell the input size of {type(quantizer.network).__name__}: the network records none and its calibration "
            "was read from a calibration file written before dlqnb recorded the input shape; pass input_size=(H, W) "
            "for images or input_size=(L,) for 1-D signals"
        )
    if not 1 <= len(size) <= 3:
        seen_text = "×".join(str(d) for d in ("N", *seen)) if seen else "unknown"
        raise ExportError(
            f"{source} gives the input size {size}: export writes inputs with 1 to 3 spatial dimensions, N×C×L, N×C×H×W or "
            f"N×C×D×H×W (calibration saw {seen_text})"
        )
    if seen_size is not None and len(size) != len(seen_size):
        raise ExportError(
            f"{source} {tuple(size)} has {len(size)} spatial dimension(s) but calibration saw inputs N×{'×'.join(map(str, seen))} "
            f"({len(seen_size)}); pass input_size with {len(seen_size)} number(s)"
        )
    return (int(channels), *(int(d) for d in size))


def _first_convolution_channels(quantizer: DLQuantizer) -> int | None:
    """Input channels of the convolution that reads the network's input directly, if one does."""
    module = quantizer.optimized.module
    for node in module.graph.nodes:
        if node.op != "placeholder":
            continue
        for user in node.users:
            layer = getattr(called_module(module, user), "layer", None)
            if is_convolution(layer):
                return int(layer.in_channels)
    return None


def _spatial_size(input_size: Any) -> tuple[int, ...]:
    """``input_size`` as a tuple of positive ints, or an ExportError saying what was expected."""
    values = (input_size,) if isinstance(input_size, int) else input_size
    try:
        size = tuple(values)
    except TypeError:
        size = None
    if size is None or not size or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size):
        raise ExportError(f"input_size must be positive whole numbers, (H, W) for images or (L,) for 1-D signals; got {input_size!r}")
    return size


def _scoring(module: nn.Module, example: torch.Tensor, output: OutputChoice) -> nn.Module:
    """``module`` itself when it returns one tensor (the ONNX names stay the module's own), else
    wrapped to return only the output that holds the class scores.

    Raises:
        ExportError: The module cannot run on ``example``.
        ScoredOutputError: A dict output and no ``output``, or an ``output`` the module does not return.
    """
    try:
        with torch.no_grad():
            outputs = module(example)
    except Exception as error:  # the network's own error, e.g. an input_size its layers cannot take
        shape = "×".join(str(d) for d in ("N", *example.shape[1:]))
        raise ExportError(f"the network cannot run on an input of shape {shape}: {error}") from error
    scored_output(outputs, output, "DLQuantizer(net, output={})")  # raises here, not inside the exporter
    return module if isinstance(outputs, torch.Tensor) else _ScoredOutput(module, output).eval()


class _ScoredOutput(nn.Module):
    """The network with only the output that holds the class scores: the exported model's ``scores``."""

    def __init__(self, network: nn.Module, output: OutputChoice) -> None:
        super().__init__()
        self.network = network
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scored_output(self.network(x), self.output, "DLQuantizer(net, output={})")


def _export(
    quantizer: DLQuantizer,
    module: nn.Module,
    path: str | os.PathLike[str],
    input_size: tuple[int, ...] | None,
    target: str,
    dtype: torch.dtype = torch.float32,
) -> Path:
    from dlqnb.core.version import __version__
    from dlqnb.models.networks import network_metadata

    channels, *size = input_shape(quantizer, input_size)
    example = torch.zeros(2, channels, *size, dtype=dtype)
    module = _scoring(module.eval(), example, quantizer.output)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch deprecates its TorchScript exporter; dlqnb uses it on purpose (see the module docstring)
        warnings.simplefilter("ignore")
        set_log = getattr(torch._C, "_jit_set_onnx_log_enabled", None)
        if set_log is not None:
            set_log(False)  # otherwise a failed export prints the whole TorchScript graph
        try:
            torch.onnx.export(
                module,
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
        "dlqnb_preprocessing": json.dumps(_preprocessing(channels, size)),
        "dlqnb_quantized_layers": json.dumps(sorted(plan.layers) if plan else []),
        "dlqnb_per_channel_weights": json.dumps(quantizer.per_channel_weights),
        # the corrected biases are in the initializers already (the plan's); this says which were corrected
        "dlqnb_bias_corrected_layers": json.dumps(sorted(set(plan.layers) & set(quantizer.bias_corrections)) if plan else []),
    }
    onnx.helper.set_model_props(model, info)
    onnx.checker.check_model(model)
    target_path = Path(path)
    atomic_write_bytes(target_path, model.SerializeToString())
    return target_path


def _preprocessing(channels: int, size: list[int]) -> dict[str, Any]:
    """What a runner must give the model: the input's spatial size and channels, and for images
    (two spatial dimensions) the pixel range [0, 1] the datastores produce."""
    info: dict[str, Any] = {"input_size": list(size), "channels": channels}
    if len(size) == 2:
        info["pixel_range"] = [0.0, 1.0]
    info["mean_std"] = "applied inside the model"
    return info


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
