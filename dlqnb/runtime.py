"""Running an int8 ONNX model: ONNX Runtime on a CPU, a TensorRT engine on an NVIDIA GPU.

:func:`load_int8` returns a runner with ``.backend``, ``.reason`` and ``.predict(x)``: ``"tensorrt"``
builds (and caches on disk) a strongly typed TensorRT engine from the ``"gpu"`` flavour and runs it
on CUDA; ``"onnxruntime"`` runs a CPU session; ``"auto"`` picks TensorRT when it imports, a CUDA
device is present and the model is of the ``"gpu"`` flavour, and ONNX Runtime otherwise, saying why.
:func:`predict_int8` is the ``predict_int8`` entry point of MATLAB's *INT8 Code Generation for Deep
Learning Networks*: it loads a runner once per file and reuses it, and accepts one H×W×3 uint8 image
or float NCHW batches.

Example:
    >>> import tempfile, torch, torchvision
    >>> from dlqnb import DLQuantizer
    >>> from dlqnb.export import export_qdq_onnx
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
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from dlqnb.cache import atomic_write_bytes, cache_dir

__all__ = ["ModelFileError", "OnnxRuntimeRunner", "TensorRTRunner", "choose_backend", "engine_cache_path", "load_int8", "model_info", "onnxruntime_ops", "predict_int8", "prepare_input"]

_log = logging.getLogger(__name__)


class ModelFileError(ValueError):
    """A model file that cannot be run; the message names the file and the reason."""


def model_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a dlqnb model file says of itself: ``target``, ``class_names``, ``preprocessing`` (input
    size, channels) and ``input_name``.

    Raises:
        ModelFileError: The file is not a readable ONNX model.
    """
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError and others on a foreign or damaged file
        raise ModelFileError(f"{os.fspath(path)!r} is not a readable ONNX model (truncated, damaged or another format): {error}") from error
    if not model.graph.node or not model.graph.input:
        raise ModelFileError(f"{os.fspath(path)!r} is not a readable ONNX model: it holds no graph (empty, truncated or another format)")
    props = {p.key: p.value for p in model.metadata_props}
    if "dlqnb_target" not in props:
        warnings.warn(f"{os.fspath(path)!r} carries no dlqnb metadata: no class names or preprocessing; inputs are used as given", stacklevel=3)
        return {"target": None, "class_names": None, "preprocessing": {}, "input_name": model.graph.input[0].name}
    return {
        "input_name": model.graph.input[0].name,
        "target": props["dlqnb_target"],
        "class_names": json.loads(props.get("dlqnb_class_names", "null")),
        "preprocessing": json.loads(props.get("dlqnb_preprocessing", "{}")),
    }


def prepare_input(x: Any, preprocessing: dict[str, Any]) -> np.ndarray:
    """Check and preprocess runner input: one H×W×3 uint8 image, or float N×C×H×W batches in [0, 1].

    A uint8 image is resized to the model's input size and scaled to [0, 1], as the datastores
    do for calibration and validation.

    Raises:
        ValueError: Wrong rank, channel count, size or dtype, or NaN/Inf pixels, naming what was expected.
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
    if not np.isfinite(x).all():
        raise ValueError(f"the input holds {int((~np.isfinite(x)).sum())} NaN or Inf values; expected finite pixels in [0, 1]")
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
        self.info = model_info(path)
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
        self.info = model_info(path)
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
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeError(f"{self.path}: dlqnb runs models with one input and one output; the engine has inputs {inputs} and outputs {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
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
        dims = _profile_dims(list(network.get_input(0).shape), self.info["preprocessing"], self.path)
        shape = lambda batch: tuple([batch] + dims)  # noqa: E731
        profile.set_shape(network.get_input(0).name, shape(1), shape(max_batch), shape(max_batch))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT could not build an engine from {self.path}")
        return bytes(serialized)

    def predict(self, x: Any) -> np.ndarray:
        """Scores N×C for the input (see :func:`prepare_input`), computed on the GPU."""
        input_name, output_name = self.input_name, self.output_name
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
    target = model_info(path)["target"]
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
    """The ``predict_int8`` entry point: scores of ``x`` from the int8 model at ``path``.

    The runner is loaded on the first call for a file and reused afterwards (like MATLAB's
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


def _profile_dims(dims: list[int], preprocessing: dict[str, Any], path: str) -> list[int]:
    """C, H, W of a TensorRT optimization profile: the model's, with dynamic H and W taken from the
    recorded input size.

    Raises:
        RuntimeError: A dynamic dimension the model's metadata does not give.
    """
    channels_size = [preprocessing.get("channels")] + list(preprocessing.get("input_size") or [None, None])
    result = []
    for index, dim in enumerate(dims[1:]):
        if int(dim) > 0:
            result.append(int(dim))
        elif index < len(channels_size) and channels_size[index]:
            result.append(int(channels_size[index]))
        else:
            raise RuntimeError(
                f"{path}: input dimension {index + 1} is dynamic and the model records no input size; "
                "export it with export_qdq_onnx(..., input_size=(H, W))"
            )
    return result
