"""The runners of an int8 ONNX model: ONNX Runtime or OpenVINO on a CPU, a TensorRT engine on an NVIDIA GPU.

Every runner is a :class:`Runner`: ``.backend``, ``.reason``, ``.info`` (what :func:`model_info` read
of the file) and ``.predict(x)``, which checks and preprocesses ``x`` (:meth:`Runner.prepare_input`,
one H×W×3 uint8 image or float NCHW batches; NCL for a 1-D signal model) and scores it
(:meth:`Runner.run`). :class:`OnnxRuntimeRunner` runs a CPU session; :class:`OpenVINORunner` compiles
(and caches) the model for OpenVINO's CPU plugin; :class:`TensorRTRunner` builds (and caches on disk) a
strongly typed TensorRT engine from the ``"gpu"`` flavour and runs it on CUDA; :class:`BatchSplitRunner`
sends each call to one of two CPU runners by its batch size. Compiled models and engines are cached as
verified entries (:mod:`dlqnb.core.cache`): a damaged one is compiled again with one warning, and an
unwritable cache means compiling on every load.

The runners make no decisions: which one runs a file is :mod:`dlqnb.deploy.backend_choice`'s, and
:func:`dlqnb.deploy.load.load_int8` builds the one chosen.

Example:
    >>> import tempfile, torch, torchvision
    >>> from dlqnb import DLQuantizer
    >>> from dlqnb.deploy.export import export_qdq_onnx
    >>> q = DLQuantizer(torchvision.models.squeezenet1_1(num_classes=5), execution_environment="cpu")
    >>> _ = q.calibrate(torch.rand(4, 3, 64, 64), progress=False)
    >>> path = export_qdq_onnx(q, tempfile.mkdtemp() + "/model_int8.onnx")
    >>> runner = OnnxRuntimeRunner(path, threads=1)
    >>> runner.backend, runner.predict(torch.rand(2, 3, 64, 64)).shape
    ('onnxruntime', (2, 5))
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from dlqnb.core.batches import scaled_pixels
from dlqnb.core.cache import bytes_key, cache_dir, discard_entry, read_entry, write_entry
from dlqnb.core.threads import check_threads
from dlqnb.deploy.host import cpu_key, file_name_safe
from dlqnb.deploy.model_file import LAYOUTS, ModelFileError, known_input_shape, model_info

__all__ = [
    "BatchSplitRunner",
    "HINTS",
    "ModelFileError",
    "OnnxRuntimeRunner",
    "OpenVINORunner",
    "Runner",
    "TensorRTRunner",
    "check_settings",
    "convolution_precisions",
    "engine_cache_path",
    "model_info",
    "onnxruntime_ops",
    "openvino_cache_path",
    "openvino_config",
    "openvino_ops",
    "prepare_input",
]

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
    if spatial not in LAYOUTS:
        raise ValueError(f"preprocessing['input_size'] must be [H, W], [L] or [D, H, W], got {size!r}")
    layout, size_name = LAYOUTS[spatial]
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
    image = torch.from_numpy(scaled_pixels(x)).permute(2, 0, 1)[None]  # by the image's bit depth, as the datastores
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
            stacklevel=5,  # past this, prepare_input and a runner's prepare_input and predict: the caller's images
        )


#: OpenVINO's performance hints, as :func:`~dlqnb.deploy.load.load_int8` takes them.
HINTS = ("latency", "throughput")


def check_settings(threads: Any = None, hint: Any = "latency") -> None:
    """Refuse runner settings the runtimes would reject with their own errors.

    Raises:
        ValueError: ``threads`` not None or a positive whole number; ``hint`` not one of :data:`HINTS`.

    Example:
        >>> check_settings(hint="fast")
        Traceback (most recent call last):
        ...
        ValueError: hint must be 'latency' or 'throughput', got 'fast'
    """
    check_threads(threads)
    if hint not in HINTS:
        raise ValueError(f"hint must be 'latency' or 'throughput', got {hint!r}")


class Runner:
    """What every runner is: the model file's ``path`` and ``info`` (:func:`model_info`), its
    ``backend`` name, the ``reason`` it was chosen (set by :func:`~dlqnb.deploy.load.load_int8`; "" when
    built directly), and ``predict`` = :meth:`prepare_input` then :meth:`run`.

    Args:
        path: The ONNX file.

    Raises:
        ModelFileError: The file is not a readable ONNX model, or its metadata is malformed.

    Example:
        >>> class Doubling(Runner):
        ...     backend = "doubling"
        ...     def __init__(self):
        ...         self.path, self.info, self.reason = "none.onnx", {"preprocessing": {"channels": 1, "input_size": [2]}}, ""
        ...     def run(self, batch):
        ...         return 2 * batch.reshape(len(batch), -1)
        >>> Doubling().predict(np.ones((1, 2), np.float32)).tolist()
        [[2.0, 2.0]]
    """

    backend = ""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.info: dict[str, Any] = model_info(path)
        self.reason = ""

    def prepare_input(self, x: Any) -> np.ndarray:
        """``x`` checked and preprocessed as the model's metadata says (see :func:`prepare_input`)."""
        return prepare_input(x, self.info["preprocessing"])

    def predict(self, x: Any) -> np.ndarray:
        """Scores N×C (float32) for the input (see :func:`prepare_input`)."""
        return self.run(self.prepare_input(x))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Scores N×C (float32) of a batch :meth:`prepare_input` has checked."""
        raise NotImplementedError(f"{type(self).__name__} runs no model")

    @property
    def float_precision(self) -> str:
        """The precision the runtime computes the model's float ops in (``"float32"`` unless it downcasts)."""
        return "float32"


class OnnxRuntimeRunner(Runner):
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

        check_threads(threads)
        super().__init__(path)
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


class OpenVINORunner(Runner):
    """Runs a (QDQ) ONNX model with OpenVINO's CPU plugin (oneDNN's int8 kernels on x86).

    OpenVINO reads the QuantizeLinear/DequantizeLinear pairs as its own FakeQuantize and runs the
    convolutions between them in int8. Whether its scores equal ONNX Runtime's (and so the emulation's)
    depends on the CPU and the network, on either flavour (the ``"gpu"`` one, with float biases, has
    differed more often): :func:`~dlqnb.deploy.load.load_int8` compares them once per file and CPU and
    warns with the difference measured where they differ. The compiled model is cached on disk
    (:func:`openvino_cache_path`, verified when read), so a second load skips compilation.

    Args:
        path: The ONNX file.
        threads: Inference threads (default: all cores).
        hint: ``"latency"`` (one request at a time, all cores on it) or ``"throughput"`` (OpenVINO
            splits the cores into parallel streams; pays off with many requests in flight).
    """

    backend = "openvino"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, hint: str = "latency") -> None:
        import openvino as ov

        check_settings(threads, hint)
        super().__init__(path)
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

    @property
    def float_precision(self) -> str:
        """What OpenVINO's CPU plugin computes float ops in, as compiled (it would pick bf16 on CPUs with
        AMX or AVX-512 BF16 by default; dlqnb's runners ask for float32)."""
        name = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}.get(name, name)

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


class TensorRTRunner(Runner):
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

        super().__init__(path)
        self.trt = trt
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

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Scores N×C of a batch :meth:`prepare_input` has checked, computed on the GPU."""
        input_name, output_name = self.input_name, self.output_name
        half = self.trt.DataType.HALF
        input_dtype = torch.float16 if self.engine.get_tensor_dtype(input_name) == half else torch.float32
        output_dtype = torch.float16 if self.engine.get_tensor_dtype(output_name) == half else torch.float32
        device_batch = torch.from_numpy(batch).to("cuda", input_dtype)
        self.context.set_input_shape(input_name, tuple(device_batch.shape))
        output = torch.empty(tuple(self.context.get_tensor_shape(output_name)), dtype=output_dtype, device="cuda")
        self.context.set_tensor_address(input_name, device_batch.data_ptr())
        self.context.set_tensor_address(output_name, output.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return output.float().cpu().numpy()


def _profile_dims(dims: list[int], preprocessing: dict[str, Any], path: str) -> list[int]:
    """C, H, W (C, L for a 1-D signal model; C, D, H, W for a volume) of a TensorRT optimization profile: the model's, with
    dynamic sizes taken from the recorded input size.

    Raises:
        RuntimeError: A dynamic dimension the model's metadata does not give.
    """
    shape = known_input_shape(dims, preprocessing)
    if None in shape:
        raise RuntimeError(
            f"{path}: input dimension {shape.index(None) + 1} is dynamic and the model records no input size; "
            "export it with export_qdq_onnx(..., input_size=(H, W)) (or (L,) for a 1-D signal model)"
        )
    return [int(dim) for dim in shape if dim is not None]


class BatchSplitRunner(Runner):
    """Two CPU runners of one model: calls with fewer than ``split_batch`` images go to ``small``, the
    others to ``large`` (what ``backend="auto"`` builds when one runtime wins single images and the
    other wins batches on this CPU). Both compute the emulation's numbers, so the split changes speed only.

    Args:
        small: The runner of batches below ``split_batch``.
        large: The runner of the others.
        split_batch: The first batch size ``large`` runs.
    """

    def __init__(self, small: Runner, large: Runner, split_batch: int) -> None:
        # the two runners read the same file: its info is theirs, not read a third time
        self.small, self.large, self.split_batch = small, large, split_batch
        self.backend = f"{small.backend}/{large.backend}"
        self.path, self.info = small.path, small.info
        self.reason = ""

    @property
    def float_precision(self) -> str:
        """The float precision of each runner, one name where both agree."""
        precisions = {self.small.float_precision, self.large.float_precision}
        return precisions.pop() if len(precisions) == 1 else f"{self.small.float_precision}/{self.large.float_precision}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Scores N×C (float32) of a checked batch, from the runner for its batch size."""
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
