"""The peers dlqnb's int8 is measured against, quantizing the same float model with the same images:
ONNX Runtime's ``quantize_static`` (:func:`peer_onnxruntime`, fed by :func:`calibration_reader`) and
NNCF for OpenVINO (:func:`peer_nncf`, its IR run by :func:`openvino_call`). The deploy benchmark
times them (:mod:`dlqnb.bench.benchmarks`), the accuracy benchmark scores them (:mod:`dlqnb.bench.accuracy`).

Example:
    >>> reader = calibration_reader("input", torch.zeros(10, 3, 4, 4), batch=8)
    >>> [reader.get_next()["input"].shape[0] for _ in range(2)], reader.get_next()
    ([8, 2], None)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["PEER_CALIBRATION_BATCH", "calibration_reader", "openvino_call", "peer_nncf", "peer_onnxruntime"]


#: Images per calibration batch given to the peers (ONNX Runtime's reader, NNCF's dataset).
PEER_CALIBRATION_BATCH = 8


def calibration_reader(input_name: str, calibration: torch.Tensor, batch: int = PEER_CALIBRATION_BATCH) -> Any:
    """An ONNX Runtime ``CalibrationDataReader`` that gives ``calibration`` (N×C×H×W) once, in batches
    of ``batch`` images fed to the input ``input_name``, then None.

    Example:
        >>> reader = calibration_reader("input", torch.zeros(10, 3, 4, 4), batch=8)
        >>> [reader.get_next()["input"].shape[0] for _ in range(2)], reader.get_next()
        ([8, 2], None)
    """
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{input_name: chunk.numpy()} for chunk in calibration.split(batch)])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    return Reader()


def peer_onnxruntime(fp32: str, calibration: torch.Tensor, path: str, per_channel: bool = False) -> str:
    """ONNX Runtime's own static quantization of the float model (QDQ, uint8 activations, int8
    weights, min/max calibration on the same images; one weight scale per tensor, or per output
    channel with ``per_channel``): the peer of dlqnb's ``"cpu"`` file on ONNX Runtime."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]).get_inputs()[0].name
    prepared = os.path.splitext(path)[0] + "_prepared.onnx"
    quant_pre_process(fp32, prepared)
    quantize_static(
        prepared,
        path,
        calibration_reader(name, calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
    )
    return path


def peer_nncf(fp32: str, calibration: torch.Tensor, path: str) -> str:
    """NNCF's post-training quantization of the float model for OpenVINO (its default preset, the
    same calibration images): the x86 peer."""
    import nncf
    import openvino as ov

    chunks = [chunk.numpy() for chunk in calibration.split(PEER_CALIBRATION_BATCH)]
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bar, away from the printed results
        model = nncf.quantize(ov.Core().read_model(fp32), nncf.Dataset(chunks), subset_size=len(chunks))
    ov.save_model(model, path)
    return path


def openvino_call(path: str) -> Callable[[Any], Any]:
    """A model OpenVINO reads itself (NNCF's IR), compiled with the settings of dlqnb's OpenVINO runner
    and given its input through the same checks, so that only the model differs."""
    import openvino as ov

    from dlqnb.deploy.runners import openvino_config, prepare_input

    request = ov.Core().compile_model(path, "CPU", openvino_config(os.cpu_count() or 1)).create_infer_request()
    return lambda x: request.infer({0: prepare_input(x, {})}, share_inputs=True)
