"""Running an int8 ONNX model: ONNX Runtime or OpenVINO on a CPU, a TensorRT engine on an NVIDIA GPU.

:func:`load_int8` returns a runner with ``.backend``, ``.reason`` and ``.predict(x)``: ``"tensorrt"``
builds (and caches on disk) a strongly typed TensorRT engine from the ``"gpu"`` flavour and runs it
on CUDA; ``"onnxruntime"`` runs a CPU session; ``"openvino"`` compiles (and caches) the model for
OpenVINO's CPU plugin; ``"auto"`` picks TensorRT when it imports, a CUDA device is present and the
model is of the ``"gpu"`` flavour, and otherwise the CPU runtime a short trial measured fastest for
this model on this CPU, among those measured to compute its scores exactly (:mod:`dlqnb.deploy.backend_choice`),
saying why. Compiled models and engines are cached as verified entries (:mod:`dlqnb.core.cache`): a damaged
one is compiled again with one warning, and an unwritable cache means compiling on every load.
:func:`predict_int8` is the ``predict_int8`` entry point of MATLAB's *INT8 Code Generation for Deep
Learning Networks*: it loads a runner once per file content and reuses it (a few files' runners at a
time), and accepts one H×W×3 uint8 image or float NCHW batches (NCL for a 1-D signal model).
:func:`model_info` reads and checks a file's dlqnb metadata, naming the field that is wrong.

Example:
    >>> import tempfile, torch, torchvision
    >>> from dlqnb import DLQuantizer
    >>> from dlqnb.deploy.export import export_qdq_onnx
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
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from dlqnb.deploy.backend_choice import choose_backend
from dlqnb.core.cache import bytes_key, cache_dir, discard_entry, read_entry, write_entry
from dlqnb.deploy.host import file_name_safe
from dlqnb.errors import ModelFileError

__all__ = [
    "BatchSplitRunner",
    "ModelFileError",
    "OnnxRuntimeRunner",
    "OpenVINORunner",
    "TensorRTRunner",
    "check_settings",
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



#: The flavours a dlqnb model file may record in ``dlqnb_target``.
TARGETS = ("cpu", "gpu", "float")


def model_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a dlqnb model file says of itself: ``target``, ``class_names``, ``preprocessing`` (input
    size, channels) and ``input_name``; the one reader of its metadata, which it checks.

    ``preprocessing["input_size"]`` is ``[H, W]`` for an image model (input N×C×H×W), ``[L]`` for a
    1-D signal model (input N×C×L) and ``[D, H, W]`` for a volume model (input N×C×D×H×W).

    Raises:
        ModelFileError: The file is not a readable ONNX model, or its dlqnb metadata is malformed or
            disagrees with the graph (the message names the file and the field).

    Example:
        (for a file :func:`~dlqnb.deploy.export.export_qdq_onnx` wrote; the module example makes one)::

            model_info("model_int8.onnx")["preprocessing"]
            # {'input_size': [227, 227], 'pixel_range': [0.0, 1.0], 'channels': 3, 'mean_std': 'applied inside the model'}
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
    name = os.fspath(path)
    if props["dlqnb_target"] not in TARGETS:
        raise ModelFileError(f"{name!r}: metadata field dlqnb_target is {props['dlqnb_target']!r}; expected one of {', '.join(map(repr, TARGETS))}")
    class_names = _metadata_json(name, props, "dlqnb_class_names", "null")
    if class_names is not None and not (isinstance(class_names, list) and all(isinstance(c, str) for c in class_names)):
        raise ModelFileError(f"{name!r}: metadata field dlqnb_class_names must be a JSON list of class names (or null), got {class_names!r}")
    preprocessing = _metadata_json(name, props, "dlqnb_preprocessing", "{}")
    if not isinstance(preprocessing, dict):
        raise ModelFileError(f"{name!r}: metadata field dlqnb_preprocessing must be a JSON object (input_size, channels, ...), got {preprocessing!r}")
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    _check_preprocessing(name, preprocessing, dims)
    return {"input_name": model.graph.input[0].name, "target": props["dlqnb_target"], "class_names": class_names, "preprocessing": preprocessing}


def _metadata_json(path: str, props: dict[str, str], field: str, default: str) -> Any:
    try:
        return json.loads(props.get(field, default))
    except ValueError as error:
        raise ModelFileError(f"{path!r}: metadata field {field} is not valid JSON ({error})") from error


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_preprocessing(path: str, preprocessing: dict[str, Any], dims: list[int]) -> None:
    """Raise :class:`ModelFileError` where the recorded input size or channels are malformed or
    disagree with the graph's input (dims: N, C, then H, W or L; 0 where dynamic)."""
    size, channels = preprocessing.get("input_size"), preprocessing.get("channels")
    field = "metadata field dlqnb_preprocessing"
    if size is not None and not (isinstance(size, list) and len(size) in _LAYOUTS and all(map(_positive_int, size))):
        raise ModelFileError(
            f"{path!r}: {field}: input_size must be [H, W] (images), [L] (1-D signals) or [D, H, W] (volumes) of positive whole numbers, got {size!r}"
        )
    if channels is not None and not _positive_int(channels):
        raise ModelFileError(f"{path!r}: {field}: channels must be a positive whole number, got {channels!r}")
    pixel_range = preprocessing.get("pixel_range")
    if pixel_range is not None and not _number_pair(pixel_range):
        raise ModelFileError(f"{path!r}: {field}: pixel_range must be [low, high], two finite numbers with low < high, got {pixel_range!r}")
    if not dims:  # the graph does not give its input's shape
        return
    if size is not None and len(dims) != 2 + len(size):
        raise ModelFileError(
            f"{path!r}: {field}: input_size {size} is for a {2 + len(size)}-D input, but the graph's input has {len(dims)} dimensions"
        )
    recorded_dims = [(channels, dims[1] if len(dims) > 1 else 0, "channels")]
    recorded_dims += [(recorded, dim, "input_size") for recorded, dim in zip(size or [], dims[2:])]
    for recorded, dim, what in recorded_dims:
        if recorded is not None and dim > 0 and recorded != dim:
            shape = "×".join(str(d) if d > 0 else "?" for d in dims)
            raise ModelFileError(f"{path!r}: {field}: {what} records {recorded} where the graph's input is {shape} (N×C first)")


def _number_pair(value: Any) -> bool:
    numbers = isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return numbers and all(np.isfinite(value)) and value[0] < value[1]


#: The float batch layout and the size's name for each length of ``input_size``.
_LAYOUTS = {1: ("N×C×L signals", "signals of length {}"), 2: ("N×C×H×W images", "images of {}×{}"), 3: ("N×C×D×H×W volumes", "volumes of {}×{}×{}")}


def prepare_input(x: Any, preprocessing: dict[str, Any]) -> np.ndarray:
    """Check and preprocess runner input: one H×W×3 uint8 (or 16-bit uint16) image, or float N×C×H×W batches in [0, 1];
    for a 1-D signal model (``input_size`` ``[L]``) float N×C×L batches, for a volume model
    (``[D, H, W]``) float N×C×D×H×W batches.

    A uint8 or uint16 image is resized to the model's input size and scaled to [0, 1] by its bit
    depth, as the datastores do for calibration and validation. Float images far beyond the recorded pixel range (0–255
    values given to a model that expects [0, 1]) are scored as given, with a warning.

    Raises:
        ValueError: Wrong rank, channel count, size or dtype, or NaN/Inf values, naming what was expected.

    Example:
        >>> prepare_input(np.zeros((8, 8, 3), np.uint8), {"input_size": [4, 4], "channels": 3}).shape
        (1, 3, 4, 4)
        >>> prepare_input(np.zeros((2, 50), np.float32), {"input_size": [50], "channels": 2}).shape
        (1, 2, 50)
    """
    channels = preprocessing.get("channels")
    size = preprocessing.get("input_size")
    spatial = len(size) if size else 2
    if spatial not in _LAYOUTS:
        raise ValueError(f"preprocessing['input_size'] must be [H, W], [L] or [D, H, W], got {size!r}")
    layout, size_name = _LAYOUTS[spatial]
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype in (np.uint8, np.uint16):
        if spatial != 2:
            raise ValueError(f"this model takes float {layout}; a {x.dtype} H×W×C image is for image models, got shape {x.shape}")
        return _prepare_image(x, channels, size)
    if not np.issubdtype(x.dtype, np.floating):
        what = f"float {layout}" if spatial != 2 else "float N×C×H×W images in [0, 1] or one uint8 H×W×C image"
        raise ValueError(f"expected {what}, got dtype {x.dtype}")
    rank = 2 + spatial
    if x.ndim == rank - 1:
        x = x[None]
    if x.ndim != rank:
        raise ValueError(f"expected float {layout}, got shape {x.shape}")
    if channels and x.shape[1] != channels:
        raise ValueError(f"expected {channels} channels ({layout.split()[0].replace('C', str(channels))}), got shape {x.shape}")
    if size and tuple(x.shape[2:]) != tuple(size):
        raise ValueError(f"expected {size_name.format(*size)} (the model's input size), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"the input holds {int((~np.isfinite(x)).sum())} NaN or Inf values; expected finite values")
    _warn_beyond_pixel_range(x, preprocessing.get("pixel_range"))
    return np.ascontiguousarray(x, dtype=np.float32)


def _prepare_image(x: np.ndarray, channels: int | None, size: list[int] | None) -> np.ndarray:
    if x.ndim != 3 or (channels and x.shape[2] != channels):
        raise ValueError(f"a {x.dtype} image must be H×W×{channels or 'C'}, got shape {x.shape}")
    top = float(np.iinfo(x.dtype).max)  # 255 or 65535: scale by the image's bit depth
    image = torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None] / top
    if size and tuple(image.shape[-2:]) != tuple(size):
        image = F.interpolate(image, size=tuple(size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    return image.numpy()


def _warn_beyond_pixel_range(x: np.ndarray, pixel_range: Any) -> None:
    """Warn when float images lie far beyond the model's recorded pixel range: half the range above
    its top (1.5 for [0, 1]) is no resampling overshoot but images in another scale, such as 0–255."""
    if not (isinstance(pixel_range, list) and len(pixel_range) == 2) or not x.size:
        return
    low, high = (float(v) for v in pixel_range)
    largest = float(x.max())
    if largest > high + 0.5 * (high - low):
        warnings.warn(
            f"the float images reach {largest:.4g}, far beyond the pixel range [{low:g}, {high:g}] the model expects; "
            f"scores are computed as given. Divide 0–255 images by 255 (or pass one uint8 H×W×3 image)",
            UserWarning,
            stacklevel=4,
        )


#: OpenVINO's performance hints, as :func:`load_int8` takes them.
HINTS = ("latency", "throughput")


def check_settings(threads: Any = None, hint: Any = "latency") -> None:
    """Refuse runner settings the runtimes would reject with their own errors.

    Raises:
        ValueError: ``threads`` not None or a positive whole number; ``hint`` not one of :data:`HINTS`.

    Example:
        >>> check_settings(threads=2.5)
        Traceback (most recent call last):
        ...
        ValueError: threads must be a positive whole number of CPU threads (or None for all cores), got 2.5
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"threads must be a positive whole number of CPU threads (or None for all cores), got {threads!r}")
    if hint not in HINTS:
        raise ValueError(f"hint must be 'latency' or 'throughput', got {hint!r}")


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

        check_settings(threads)
        self.path = os.fspath(path)
        self.info = model_info(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or os.cpu_count() or 1)
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
    version = file_name_safe(openvino_version)[:40]
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
    computes, bit for bit (tested). On the ``"gpu"`` flavour (TensorRT's: float biases, int8 after
    ReLU) whether its scores equal ONNX Runtime's (and so the emulation's) depends on the CPU: loading
    one compares them once per file and CPU (:func:`~dlqnb.deploy.backend_choice.score_differences`, cached)
    and warns with the difference measured where they differ. The compiled model is cached on disk
    (:func:`openvino_cache_path`, verified when read), so a second load skips compilation.

    Args:
        path: The ONNX file.
        threads: Inference threads (default: all cores).
        hint: ``"latency"`` (one request at a time, all cores on it) or ``"throughput"`` (OpenVINO
            splits the cores into parallel streams; pays off with many requests in flight).
        check_scores: Compare a ``"gpu"``-flavour model's scores with ONNX Runtime's and warn where they
            differ (``backend="auto"``'s trial, which makes that comparison itself, turns it off).
    """

    backend = "openvino"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, hint: str = "latency", check_scores: bool = True) -> None:
        import openvino as ov

        check_settings(threads, hint)
        from dlqnb.deploy.host import cpu_key

        self.path = os.fspath(path)
        self.info = model_info(path)
        self.threads = int(threads or os.cpu_count() or 1)
        self.hint = hint
        config = openvino_config(self.threads, hint)
        with open(self.path, "rb") as stream:
            onnx_bytes = stream.read()
        self.cache_path = openvino_cache_path(onnx_bytes, ov.__version__, cpu_key(), f"{hint}-{self.threads}t")
        core = ov.Core()
        self.compiled = self._cached(core, config)
        if self.compiled is None:
            try:
                self.compiled = core.compile_model(core.read_model(self.path), "CPU", config)
            except RuntimeError as error:
                raise ModelFileError(f"OpenVINO could not compile {self.path!r}: {error}") from error
            blob = io.BytesIO()
            self.compiled.export_model(blob)
            write_entry(self.cache_path, blob.getvalue())
        self.request = self.compiled.create_infer_request()
        self.input_dtype = np.float16 if self.compiled.input(0).get_element_type() == ov.Type.f16 else np.float32
        self._lock = threading.Lock()  # an infer request runs one call at a time
        self.reason = ""
        if check_scores and self.info.get("target") == "gpu":
            self._warn_where_scores_differ()

    def _cached(self, core: Any, config: dict[str, Any]) -> Any:
        """The compiled model from the cache, or None (absent, damaged or from another build: compile again)."""
        blob = read_entry(self.cache_path)  # verified against its checksum; a damaged one is removed with a warning
        if blob is None:
            return None
        try:
            return core.import_model(blob, "CPU", config)
        except RuntimeError as error:  # intact, but written by a build this one cannot read
            discard_entry(self.cache_path, f"cannot be imported by this OpenVINO ({error})")
            return None

    def _warn_where_scores_differ(self) -> None:
        """Warn when this CPU's OpenVINO scores the model differently from ONNX Runtime (and so from the
        emulation), with the largest difference measured (once per file, CPU and versions; cached)."""
        from dlqnb.deploy.backend_choice import UnknownInputSize, score_differences

        try:
            measured = score_differences(self.path, ["openvino"], runners={"openvino": self})
        except UnknownInputSize:
            warnings.warn(f"{self.path}: OpenVINO's scores on the 'gpu' flavour were not compared with the emulation's "
                          "(the input size is not recorded); on some CPUs they differ", stacklevel=3)
            return
        difference = measured["differences"]["openvino"]
        if difference > 0:
            warnings.warn(
                f"{self.path}: on this CPU OpenVINO's scores on the 'gpu' flavour differ from ONNX Runtime's (the emulation's "
                f"wherever every layer runs in integers) by up to {difference:.3g} (largest score {measured['largest_score']:.3g}, measured on "
                f"{measured['inputs']} test inputs); export with execution_environment='cpu' for OpenVINO, or run this file on ONNX Runtime",
                stacklevel=3,
            )

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
    return cache_dir() / "tensorrt" / f"{digest}-trt{file_name_safe(tensorrt_version)}-{file_name_safe(gpu_name, keep='')}.engine"


class TensorRTRunner:
    """Builds a strongly typed TensorRT engine from a ``"gpu"``-flavour QDQ model and runs it on CUDA.

    TensorRT 10/11 takes its precision from the Q/DQ types of a strongly typed network (no INT8 or
    FP16 builder flags); the serialized engine is cached on disk (:func:`engine_cache_path`), verified
    against its checksum when read (a damaged one is rebuilt, with a warning).

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
        serialized = read_entry(self.engine_path)  # verified against its checksum; a damaged one is removed with a warning
        if serialized is None:
            serialized = self._build(onnx_bytes, max_batch)
            write_entry(self.engine_path, serialized)
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
            see :func:`~dlqnb.deploy.backend_choice.choose_backend`), ``"tensorrt"``, ``"onnxruntime"`` or
            ``"openvino"``.
        threads: CPU threads for ONNX Runtime and OpenVINO (default: all cores).
        hint: OpenVINO's performance hint, ``"latency"`` or ``"throughput"``.

    Raises:
        FileNotFoundError: No file at ``path``.
        ModelFileError: The file is not a readable ONNX model, or its metadata is malformed.
        ValueError: An unknown backend or hint, or ``threads`` not a positive whole number.
    """
    check_settings(threads, hint)
    if not os.path.exists(path):
        raise FileNotFoundError(f"ONNX model {os.fspath(path)!r} does not exist")
    chosen, reason = choose_backend(path, backend)
    def cpu_runner(name: str) -> OnnxRuntimeRunner | OpenVINORunner:
        return OpenVINORunner(path, threads, hint) if name == "openvino" else OnnxRuntimeRunner(path, threads)

    runner: OnnxRuntimeRunner | OpenVINORunner | TensorRTRunner | BatchSplitRunner
    if chosen == "tensorrt":
        runner = TensorRTRunner(path)
    elif "/" in chosen:
        from dlqnb.deploy.backend_choice import SPLIT_BATCH

        small, large = chosen.split("/")
        runner = BatchSplitRunner(cpu_runner(small), cpu_runner(large), SPLIT_BATCH)
    else:
        runner = cpu_runner(chosen)
    runner.reason = reason
    _log.info("dlqnb: running %s with %s (%s)", path, chosen, reason)
    return runner


#: How many runners :func:`predict_int8` keeps (the most recently used files').
RUNNERS_KEPT = 4
#: A file's status (size, times, inode) is trusted to tell it unchanged only once its last change is
#: this far in the past: a rewrite within the file system's timestamp granularity of the previous
#: change (``cp -p``, unzip) leaves them all as they were, so until then the bytes are hashed again.
SETTLED_NANOSECONDS = 2_000_000_000
_runners: OrderedDict[str, tuple[str, Any]] = OrderedDict()  # absolute path → (content hash, runner)
_settled: dict[str, tuple[tuple[int, ...], str]] = {}  # absolute path → (status, content hash)
_runners_lock = threading.Lock()


def _content_hash(path: str) -> str:
    """The hash of a file's bytes, read again unless its status proves it unchanged since last hashed."""
    status = os.stat(path)
    signature = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
    known = _settled.get(path)
    if known is not None and known[0] == signature:
        return known[1]
    with open(path, "rb") as stream:
        digest = bytes_key(stream.read())
    if time.time_ns() - max(status.st_mtime_ns, status.st_ctime_ns) > SETTLED_NANOSECONDS:
        _settled[path] = (signature, digest)
    else:
        _settled.pop(path, None)
    return digest


def predict_int8(path: str | os.PathLike[str], x: Any) -> np.ndarray:
    """The ``predict_int8`` entry point: scores of ``x`` from the int8 model at ``path``.

    The runner is loaded on the first call for a file and reused afterwards (like MATLAB's
    persistent ``mynet``) while the file's content is the same: a file replaced since, even with the
    same modification time, is loaded again and its old runner dropped. Runners of the
    :data:`RUNNERS_KEPT` most recently used files are kept.

    Args:
        path: The int8 ONNX model.
        x: One H×W×3 uint8 image (resized as the model expects) or float N×C×H×W images in [0, 1]
            (float N×C×L for a 1-D signal model).

    Example:
        (for a file :func:`~dlqnb.deploy.export.export_qdq_onnx` wrote; the module example makes one)::

            predict_int8("model_int8.onnx", np.zeros((227, 227, 3), np.uint8)).shape  # (1, 5)
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"ONNX model {os.fspath(path)!r} does not exist")
    key = os.path.abspath(path)
    with _runners_lock:
        digest = _content_hash(key)
        held = _runners.get(key)
        if held is None or held[0] != digest:
            _runners[key] = (digest, load_int8(path))
        _runners.move_to_end(key)
        while len(_runners) > RUNNERS_KEPT:
            dropped, _ = _runners.popitem(last=False)
            _settled.pop(dropped, None)
        runner = _runners[key][1]
    return runner.predict(x)


def _profile_dims(dims: list[int], preprocessing: dict[str, Any], path: str) -> list[int]:
    """C, H, W (C, L for a 1-D signal model; C, D, H, W for a volume) of a TensorRT optimization profile: the model's, with
    dynamic sizes taken from the recorded input size.

    Raises:
        RuntimeError: A dynamic dimension the model's metadata does not give.
    """
    channels_size = [preprocessing.get("channels")] + list(preprocessing.get("input_size") or [])
    result = []
    for index, dim in enumerate(dims[1:]):
        if int(dim) > 0:
            result.append(int(dim))
        elif index < len(channels_size) and channels_size[index]:
            result.append(int(channels_size[index]))
        else:
            raise RuntimeError(
                f"{path}: input dimension {index + 1} is dynamic and the model records no input size; "
                "export it with export_qdq_onnx(..., input_size=(H, W)) (or (L,) for a 1-D signal model)"
            )
    return result
