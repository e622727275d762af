"""INT8 deployment: QDQ ONNX export (:mod:`dlqnb.deploy.export`), the runtimes that run it, and code
generation of a standalone deployable (:mod:`dlqnb.deploy.codegen`).

Modules, each importing only those before it: :mod:`~dlqnb.deploy.host` (the CPU, timing),
:mod:`~dlqnb.deploy.model_file` (the one reader of a model file's metadata), :mod:`~dlqnb.deploy.runners`
(the runner classes, no decisions), :mod:`~dlqnb.deploy.backend_choice` (measures the runners and
decides), :mod:`~dlqnb.deploy.load` (chooses and loads: :func:`load_int8`, :func:`predict_int8`) and
:mod:`~dlqnb.deploy.codegen`. The target libraries' names are :mod:`dlqnb.core.targets`'.

The names users call, in one place: :func:`export_qdq_onnx`, :func:`export_float_onnx`,
:func:`load_int8`, :func:`predict_int8`, :class:`DeploymentConfig` and :func:`codegen`; and what the
CPU runtimes make of a model, :func:`convolution_precisions`.

Example:
    >>> import tempfile, torch, torchvision
    >>> from dlqnb import DLQuantizer
    >>> q = DLQuantizer(torchvision.models.squeezenet1_1(num_classes=5), execution_environment="cpu")
    >>> _ = q.calibrate(torch.rand(4, 3, 64, 64), progress=False)
    >>> path = export_qdq_onnx(q, tempfile.mkdtemp() + "/model_int8.onnx")
    >>> predict_int8(path, torch.rand(1, 3, 64, 64)).shape
    (1, 5)
"""

from __future__ import annotations

from dlqnb.deploy.backend_choice import choose_backend
from dlqnb.deploy.codegen import DeploymentConfig, codegen
from dlqnb.deploy.export import ExportError, export_float_onnx, export_qdq_onnx
from dlqnb.deploy.load import load_int8, predict_int8
from dlqnb.deploy.model_file import ModelFileError, model_info
from dlqnb.deploy.runners import (
    OnnxRuntimeRunner,
    OpenVINORunner,
    Runner,
    TensorRTRunner,
    check_settings,
    convolution_precisions,
    engine_cache_path,
    onnxruntime_ops,
    openvino_cache_path,
    openvino_ops,
    prepare_input,
)

__all__ = [
    "DeploymentConfig",
    "codegen",
    "ExportError",
    "ModelFileError",
    "OnnxRuntimeRunner",
    "OpenVINORunner",
    "Runner",
    "TensorRTRunner",
    "check_settings",
    "choose_backend",
    "convolution_precisions",
    "engine_cache_path",
    "export_float_onnx",
    "export_qdq_onnx",
    "load_int8",
    "model_info",
    "onnxruntime_ops",
    "openvino_cache_path",
    "openvino_ops",
    "predict_int8",
    "prepare_input",
]
