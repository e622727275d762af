"""Running an int8 ONNX model: ONNX Runtime or OpenVINO on a CPU, a TensorRT engine on an NVIDIA GPU.

:func:`load_int8` returns a runner with ``.backend``, ``.reason`` and ``.predict(x)``: ``"tensorrt"``
builds (and caches on disk) a strongly typed TensorRT engine from the ``"gpu"`` flavour and runs it
on CUDA; ``"onnxruntime"`` runs a CPU session; ``"openvino"`` compiles (and caches) the model for
OpenVINO's CPU plugin; ``"auto"`` picks TensorRT when it imports, a CUDA device is present and the
model is of the ``"gpu"`` flavour, and otherwise the CPU runtime a short trial measured fastest for
this model on this CPU (:mod:`dlqnb.backend_choice`), saying why.
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

import io
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

from dlqnb.backend_choice import choose_backend
from dlqnb.cache import atomic_write_bytes, bytes_key, cache_dir

__all__ = [
    "BatchSplitRunner",
    "ModelFileError",
    "OnnxRuntimeRunner",
    "OpenVINORunner",
    "TensorRTRunner",
    "choose_backend",
    "convolution_precisions",
    "engine_cache_path",
    "load_int8",
    "model_info",
    "onnxruntime_ops",
    "openvino_cache_path",
    "openvino_config",
    "openvino_ops",
    "predict_int8",
    "prepare_input",
]

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

    Worker threads sleep between runs (no spinning), so several runners in one process do not slow
    each other.

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
        # Spinning worker threads keep a core busy after each run; with a float and an int8 session
        # side by side (or a benchmark's several), an idle session would steal the cores of the busy one.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
        return self.run(prepare_input(x, self.info["preprocessing"]))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Scores of a batch :func:`prepare_input` has checked."""
        batch = batch.astype(self.input_dtype, copy=False)
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


def openvino_cache_path(onnx_bytes: bytes, openvino_version: str, cpu: str, settings: str) -> Path:
    """Where OpenVINO's compiled model of a file is cached: keyed by the ONNX file's hash, OpenVINO's
    version, the CPU (the compiled kernels are chosen for its instruction sets) and the runner's settings."""
    digest = bytes_key(onnx_bytes)
    version = "".join(c if c.isalnum() or c == "." else "-" for c in openvino_version)[:40]
    return cache_dir() / "openvino" / f"{digest}-ov{version}-{cpu}-{settings}.blob"


def openvino_config(threads: int, hint: str = "latency") -> dict[str, Any]:
    """OpenVINO CPU plugin settings of dlqnb's runners: ``threads`` inference threads, the latency or
    throughput hint, and float32 for whatever is not int8 (no bf16/fp16 downcast on CPUs that have it,
    so scores match the emulation)."""
    return {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": hint.upper(), "INFERENCE_PRECISION_HINT": "f32"}


class OpenVINORunner:
    """Runs a (QDQ) ONNX model with OpenVINO's CPU plugin (oneDNN's int8 kernels on x86).

    OpenVINO reads the QuantizeLinear/DequantizeLinear pairs as its own FakeQuantize and runs the
    convolutions between them in int8. On the ``"cpu"`` flavour it computes what the emulation
    computes, bit for bit (tested); on the ``"gpu"`` flavour (TensorRT's: float biases, int8 after
    ReLU) the top class agrees but the scores differ, and loading one warns. The compiled model is cached on disk
    (:func:`openvino_cache_path`), so a second load skips compilation.

    Args:
        path: The ONNX file.
        threads: Inference threads (default: all cores).
        hint: ``"latency"`` (one request at a time, all cores on it) or ``"throughput"`` (OpenVINO
            splits the cores into parallel streams; pays off with many requests in flight).
    """

    backend = "openvino"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, hint: str = "latency") -> None:
        import openvino as ov

        if hint not in ("latency", "throughput"):
            raise ValueError(f"hint must be 'latency' or 'throughput', got {hint!r}")
        from dlqnb.host import cpu_key

        self.path = os.fspath(path)
        self.info = model_info(path)
        self.threads = threads or os.cpu_count() or 1
        self.hint = hint
        config = openvino_config(self.threads, hint)
        with open(self.path, "rb") as stream:
            onnx_bytes = stream.read()
        self.cache_path = openvino_cache_path(onnx_bytes, ov.__version__, cpu_key(), f"{hint}-{self.threads}t")
        core = ov.Core()
        self.compiled = None
        if self.cache_path.exists():
            try:
                self.compiled = core.import_model(self.cache_path.read_bytes(), "CPU", config)
            except RuntimeError as error:  # a blob from a damaged write or another build: compile again
                _log.warning("dlqnb: ignoring OpenVINO's cached model %s (%s)", self.cache_path, error)
        if self.compiled is None:
            try:
                self.compiled = core.compile_model(core.read_model(self.path), "CPU", config)
            except RuntimeError as error:
                raise ModelFileError(f"OpenVINO could not compile {self.path!r}: {error}") from error
            blob = io.BytesIO()
            self.compiled.export_model(blob)
            atomic_write_bytes(self.cache_path, blob.getvalue())
        if self.info.get("target") == "gpu":
            warnings.warn(
                f"{self.path}: OpenVINO's scores on the 'gpu' flavour differ from the emulation's (the top class agrees; "
                "scores may differ by up to half their range); export with execution_environment='cpu' for OpenVINO, "
                "which it computes bit for bit",
                stacklevel=3,
            )
        self.request = self.compiled.create_infer_request()
        self.input_dtype = np.float16 if self.compiled.input(0).get_element_type() == ov.Type.f16 else np.float32
        self._lock = threading.Lock()  # an infer request runs one call at a time
        self.reason = ""

    def predict(self, x: Any) -> np.ndarray:
        """Scores N×C (float32) for the input (see :func:`prepare_input`)."""
        return self.run(prepare_input(x, self.info["preprocessing"]))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Scores of a batch :func:`prepare_input` has checked."""
        batch = batch.astype(self.input_dtype, copy=False)
        with self._lock:
            result = self.request.infer({0: batch}, share_inputs=True)  # no copy of a checked, contiguous batch
            return np.array(result[0], dtype=np.float32)


def engine_cache_path(onnx_bytes: bytes, tensorrt_version: str, gpu_name: str) -> Path:
    """Where the serialized engine of a model is cached: keyed by the ONNX file's hash, TensorRT's
    version and the GPU (an engine only runs where it was built)."""
    digest = bytes_key(onnx_bytes)
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


class BatchSplitRunner:
    """Two CPU runners of one model: calls with fewer than ``split_batch`` images go to ``small``, the
    others to ``large`` (what ``backend="auto"`` builds when one runtime wins single images and the
    other wins batches on this CPU). Both compute the emulation's numbers, so the split changes speed only.
    """

    def __init__(self, small: Any, large: Any, split_batch: int) -> None:
        self.small, self.large, self.split_batch = small, large, split_batch
        self.backend = f"{small.backend}/{large.backend}"
        self.path, self.info = small.path, small.info
        self.reason = ""

    def predict(self, x: Any) -> np.ndarray:
        """Scores N×C (float32) for the input (see :func:`prepare_input`), from the runner for its batch size."""
        batch = prepare_input(x, self.info["preprocessing"])
        return (self.small if len(batch) < self.split_batch else self.large).run(batch)


def openvino_ops(runner: OpenVINORunner) -> dict[str, int]:
    """Layer counts of the model OpenVINO compiled for this CPU, by type and the precision it runs in,
    e.g. ``{"Convolution u8": 26, ...}``: ``u8``/``i8`` convolutions run oneDNN's int8 kernels."""
    counts: dict[str, int] = {}
    for op in runner.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        key = f"{info['layerType'].astype(str)} {info['runtimePrecision'].astype(str)}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def convolution_precisions(runner: Any) -> dict[str, dict[str, int]]:
    """How many convolutions each CPU runtime of a runner runs in int8 and in float, after its own
    fusions: ONNX Runtime's ``QLinearConv`` against ``Conv``/``FusedConv``, OpenVINO's ``u8``/``i8``
    convolutions against the others.

    Returns:
        backend → ``{"int8": n, "float": m}`` (two entries for a runner split by batch size).

    Raises:
        ValueError: A runner of no CPU runtime (TensorRT).
    """
    parts = [runner.small, runner.large] if isinstance(runner, BatchSplitRunner) else [runner]
    result = {}
    for part in parts:
        if isinstance(part, OnnxRuntimeRunner):
            ops = onnxruntime_ops(part.path)
            result[part.backend] = {"int8": ops.get("QLinearConv", 0), "float": ops.get("Conv", 0) + ops.get("FusedConv", 0)}
        elif isinstance(part, OpenVINORunner):
            ops = openvino_ops(part)
            int8 = sum(n for key, n in ops.items() if key in ("Convolution u8", "Convolution i8"))
            result[part.backend] = {"int8": int8, "float": sum(n for key, n in ops.items() if key.startswith("Convolution ")) - int8}
        else:
            raise ValueError(f"convolution_precisions takes a CPU runner (ONNX Runtime or OpenVINO), got {part.backend!r}")
    return result


def load_int8(
    path: str | os.PathLike[str], backend: str = "auto", threads: int | None = None, hint: str = "latency"
) -> OnnxRuntimeRunner | OpenVINORunner | TensorRTRunner | BatchSplitRunner:
    """A runner for an int8 ONNX model: ``.backend``, ``.reason`` and ``.predict(x)``.

    Args:
        path: A QDQ ONNX model written by :func:`export_qdq_onnx` (others load with a warning).
        backend: ``"auto"`` (TensorRT on an NVIDIA GPU, else the CPU runtime measured fastest here:
            see :func:`~dlqnb.backend_choice.choose_backend`), ``"tensorrt"``, ``"onnxruntime"`` or
            ``"openvino"``.
        threads: CPU threads for ONNX Runtime and OpenVINO (default: all cores).
        hint: OpenVINO's performance hint, ``"latency"`` or ``"throughput"``.

    Raises:
        FileNotFoundError: No file at ``path``.
        ModelFileError: The file is not a readable ONNX model.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"ONNX model {os.fspath(path)!r} does not exist")
    chosen, reason = choose_backend(path, backend)
    def cpu_runner(name: str) -> OnnxRuntimeRunner | OpenVINORunner:
        return OpenVINORunner(path, threads, hint) if name == "openvino" else OnnxRuntimeRunner(path, threads)

    runner: OnnxRuntimeRunner | OpenVINORunner | TensorRTRunner | BatchSplitRunner
    if chosen == "tensorrt":
        runner = TensorRTRunner(path)
    elif "/" in chosen:
        from dlqnb.backend_choice import SPLIT_BATCH

        small, large = chosen.split("/")
        runner = BatchSplitRunner(cpu_runner(small), cpu_runner(large), SPLIT_BATCH)
    else:
        runner = cpu_runner(chosen)
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
