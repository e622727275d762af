"""Code generation: a standalone int8 deployable from a network and its calibration result file.

The counterpart of the second half of MATLAB's *INT8 Code Generation for Deep Learning Networks*:
``coder.gpuConfig`` with ``coder.DeepLearningConfig('cudnn')``, ``DataType = 'int8'`` and
``CalibrationResultFile``, then ``codegen`` of the ``predict_int8`` entry point. Here the configuration is
a :class:`DeploymentConfig` and :func:`codegen` writes a folder that runs where neither torch nor dlqnb is
installed:

* ``model_int8.onnx``: the QDQ model (:func:`dlqnb.export.export_qdq_onnx`) with the file's scales;
* ``predict_int8.py``: ``predict_int8(image)`` takes one H×W×C uint8 image, resizes it as calibration
  did, and returns the class scores; the runtime session lives in a module-level variable that the
  first call creates (MATLAB's ``persistent mynet``). ``python predict_int8.py a.png b.jpg`` prints
  one JSON list of scores per image;
* ``requirements.txt`` (the runtime, numpy, pillow) and ``README.md``.

The generated code imports only its runtime, numpy and pillow. It resizes with pillow's bilinear
filter in float, which matches the antialiased bilinear resize of :func:`dlqnb.deploy.prepare_input`
to a few float32 roundings; an image already of the input size is read identically.

Example:
    >>> import tempfile, torch, torchvision
    >>> from dlqnb import DLQuantizer
    >>> net = torchvision.models.squeezenet1_1(num_classes=3)
    >>> q = DLQuantizer(net, execution_environment="cpu")
    >>> _ = q.calibrate(torch.rand(2, 3, 64, 64), progress=False)
    >>> folder = tempfile.mkdtemp()
    >>> q.save(folder + "/quantObj.safetensors")
    >>> cfg = DeploymentConfig(target_library="onnxruntime", calibration_result_file=folder + "/quantObj.safetensors")
    >>> out = codegen(cfg, net, output_dir=folder + "/codegen", verbose=False)
    >>> sorted(p.name for p in out.iterdir())
    ['README.md', 'model_int8.onnx', 'predict_int8.py', 'requirements.txt']
"""

from __future__ import annotations

from dataclasses import dataclass
import json
import keyword
import os
from pathlib import Path
import shutil
import tempfile
import subprocess
import sys
from typing import Any

import numpy as np
from torch import nn

__all__ = ["TARGET_LIBRARIES", "DeploymentConfig", "codegen", "entry_point_source", "library_available", "run_entry_point"]

#: The execution environment (quantization target) each target library deploys.
TARGET_LIBRARIES = {"tensorrt": "gpu", "onnxruntime": "cpu"}

#: What ``pip install -r requirements.txt`` needs for each library's generated code.
_REQUIREMENTS = {"tensorrt": ["onnxruntime-gpu>=1.18", "tensorrt>=10", "numpy", "pillow"], "onnxruntime": ["onnxruntime>=1.17", "numpy", "pillow"]}


@dataclass
class DeploymentConfig:
    """What :func:`codegen` generates, shaped like MATLAB's ``coder.gpuConfig`` with its
    ``coder.DeepLearningConfig``.

    Attributes:
        target_library: ``"tensorrt"`` (NVIDIA GPUs: the ``"gpu"`` flavour, through ONNX Runtime's
            TensorRT execution provider) or ``"onnxruntime"`` (CPUs: the ``"cpu"`` flavour).
        data_type: ``"int8"``, the precision of the layers that support it (as MATLAB's ``DataType``).
        calibration_result_file: The file :meth:`dlqnb.DLQuantizer.save` wrote (MATLAB's
            ``CalibrationResultFile``).
        auto_tuning: Let the library search for the fastest kernels while it builds (MATLAB's
            ``AutoTuning``): TensorRT's builder optimization level 5 instead of 3; ONNX Runtime's
            every graph optimization instead of the basic ones.
        hardware_compatible: TensorRT only: build an engine that runs on every Ampere-or-newer GPU
            rather than only the GPU that built it. TensorRT builds for the GPU it runs on, so
            there is no compute capability to give (MATLAB's ``ComputeCapability``).
        threads: ONNX Runtime only: intra-op threads (``None``: every core).

    Example:
        >>> DeploymentConfig(target_library="onnxruntime", calibration_result_file="q.safetensors").execution_environment
        'cpu'
    """

    target_library: str = "tensorrt"
    data_type: str = "int8"
    calibration_result_file: str | os.PathLike[str] | None = None
    auto_tuning: bool = True
    hardware_compatible: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.target_library not in TARGET_LIBRARIES:
            raise ValueError(f"target_library must be one of {sorted(TARGET_LIBRARIES)}, got {self.target_library!r}")
        if self.data_type != "int8":
            raise ValueError(f"data_type must be 'int8' (the float network needs no calibration file), got {self.data_type!r}")
        if self.hardware_compatible and self.target_library != "tensorrt":
            raise ValueError("hardware_compatible is a TensorRT setting; target_library is 'onnxruntime'")
        if self.threads is not None and (self.target_library != "onnxruntime" or not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive int and is an ONNX Runtime setting; got threads={self.threads!r} for {self.target_library!r}")

    @property
    def execution_environment(self) -> str:
        """The quantization target the library runs: ``"gpu"`` or ``"cpu"``."""
        return TARGET_LIBRARIES[self.target_library]


def codegen(
    cfg: DeploymentConfig,
    network: nn.Module | str | os.PathLike[str],
    entry_point: str = "predict_int8",
    output_dir: str | os.PathLike[str] = "codegen",
    verbose: bool = True,
) -> Path:
    """Generate the standalone deployable folder (see the module docstring).

    The calibration result file may come from either target: its ranges are re-typed for the
    library's target. An existing ``output_dir`` is replaced only once the new folder is complete.

    Args:
        cfg: The configuration; its ``calibration_result_file`` is required.
        network: The float network the file was calibrated on, or a file :func:`dlqnb.save_network` wrote.
        entry_point: The name of the generated module and its function.
        output_dir: The folder to write.
        verbose: Print "Code generation successful" and where.

    Returns:
        The folder.

    Raises:
        ValueError: No calibration result file, or an entry point that is not a Python identifier.
        dlqnb.calibration_file.CalibrationFileError: The file is damaged or from another network.
    """
    from dlqnb.export import export_qdq_onnx
    from dlqnb.models import load_network
    from dlqnb.quantizer import DLQuantizer

    if cfg.calibration_result_file is None:
        raise ValueError("cfg.calibration_result_file is required for data_type='int8': save a calibrated DLQuantizer with .save(path) first")
    if not entry_point.isidentifier() or keyword.iskeyword(entry_point):
        raise ValueError(f"entry_point must be a Python identifier (it names the generated module and function), got {entry_point!r}")
    net = load_network(network) if isinstance(network, (str, os.PathLike)) else network
    quantizer = DLQuantizer.load(os.fspath(cfg.calibration_result_file), net, execution_environment=cfg.execution_environment)
    output = Path(output_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        model_file = export_qdq_onnx(quantizer, staging / "model_int8.onnx")
        info = _model_facts(model_file)
        (staging / f"{entry_point}.py").write_text(entry_point_source(cfg, entry_point, info), encoding="utf-8")
        (staging / "requirements.txt").write_text("\n".join(_REQUIREMENTS[cfg.target_library]) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(_readme(cfg, entry_point, info), encoding="utf-8")
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if verbose:
        print(f"Code generation successful: {output}/{entry_point}.py ({cfg.target_library}, {cfg.data_type})")
    return output


def library_available(target_library: str) -> bool:
    """Whether this machine can run code generated for ``target_library`` (TensorRT: ONNX Runtime's
    TensorRT execution provider is installed)."""
    import onnxruntime

    if target_library not in TARGET_LIBRARIES:
        raise ValueError(f"target_library must be one of {sorted(TARGET_LIBRARIES)}, got {target_library!r}")
    return target_library == "onnxruntime" or "TensorrtExecutionProvider" in onnxruntime.get_available_providers()


def run_entry_point(folder: str | os.PathLike[str], image: np.ndarray, entry_point: str = "predict_int8") -> np.ndarray:
    """Run a generated entry point as its users do: ``python -I <entry_point>.py image.png`` in a
    clean interpreter (no torch, no dlqnb), on one H×W×C uint8 image.

    Returns:
        The class scores it printed.

    Raises:
        RuntimeError: The entry point failed; the message holds the end of its error output.
    """
    from PIL import Image

    script = Path(folder) / f"{entry_point}.py"
    if not script.exists():
        raise FileNotFoundError(f"{os.fspath(script)!r} does not exist: generate it with codegen(..., entry_point={entry_point!r})")
    pixels = np.asarray(image)
    with tempfile.TemporaryDirectory() as where:
        path = Path(where) / "image.png"
        Image.fromarray(pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels).save(path)
        result = subprocess.run([sys.executable, "-I", os.fspath(script), os.fspath(path)], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{os.fspath(script)} failed: {result.stderr.strip()[-1500:]}")
    return np.asarray(json.loads(result.stdout.splitlines()[0]), dtype=np.float32)


def _model_facts(path: Path) -> dict[str, Any]:
    """Input name, size and channels, class names and target from the model's metadata."""
    from dlqnb.runtime import model_info

    info = model_info(path)
    preprocessing = info["preprocessing"]
    return {**info, "input_size": list(preprocessing["input_size"]), "channels": int(preprocessing["channels"])}


def entry_point_source(cfg: DeploymentConfig, entry_point: str, info: dict[str, Any]) -> str:
    """The generated entry point's Python source (imports: its runtime, numpy, pillow)."""
    height, width = info["input_size"]
    if cfg.target_library == "tensorrt":
        shapes = lambda batch: f"{info['input_name']}:{batch}x{info['channels']}x{height}x{width}"  # noqa: E731
        trt_options = {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": "ENGINE_CACHE",
            "trt_builder_optimization_level": "5" if cfg.auto_tuning else "3",
            "trt_profile_min_shapes": shapes(1),
            "trt_profile_opt_shapes": shapes(1),
            "trt_profile_max_shapes": shapes(32),
        }
        if cfg.hardware_compatible:
            trt_options["trt_engine_hw_compatible"] = "True"
        options = json.dumps(trt_options, indent=4).replace('"ENGINE_CACHE"', 'os.path.join(HERE, "engines")').replace("\n", "\n    ")
        session = f'''def _session():
    """TensorRT builds its int8 engine from the Q/DQ model on the first call (then reads it from engines/)."""
    import onnxruntime

    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        raise RuntimeError("the TensorRT execution provider is not available: pip install -r requirements.txt "
                           "on a machine with an NVIDIA GPU, CUDA and TensorRT")
    options = onnxruntime.SessionOptions()
    trt_options = {options}
    return onnxruntime.InferenceSession(MODEL_FILE, options, providers=[("TensorrtExecutionProvider", trt_options), "CUDAExecutionProvider"])'''
    else:
        level = "ORT_ENABLE_ALL" if cfg.auto_tuning else "ORT_ENABLE_BASIC"
        session = f'''def _session():
    """ONNX Runtime fuses each DequantizeLinear → Conv → QuantizeLinear into an int8 QLinearConv."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = {cfg.threads or 0}  # 0: every core
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.{level}
    # layers kept in float stay float: ONNX Runtime would otherwise quantize their weights itself
    return onnxruntime.InferenceSession(MODEL_FILE, options, providers=["CPUExecutionProvider"], disabled_optimizers=["WeightBiasQuantization"])'''
    class_names = repr(info["class_names"])
    return f'''"""{entry_point}: int8 inference with {cfg.target_library} (generated by dlqnb's codegen).

    from {entry_point} import {entry_point}
    scores = {entry_point}(image)   # image: H×W×{info["channels"]} uint8; scores: one per class

    python {entry_point}.py image1.png image2.jpg   # one JSON list of scores per image
"""

import json
import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_FILE = os.path.join(HERE, "model_int8.onnx")
INPUT_SIZE = ({height}, {width})  # H, W the network was calibrated at
CHANNELS = {info["channels"]}
CLASS_NAMES = {class_names}

_session_cache = None  # the persistent runtime session, created by the first call


{session}


def _prepare(image):
    """One H×W×C uint8 image → a 1×C×H×W float32 batch in [0, 1], resized (bilinear) to INPUT_SIZE."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != CHANNELS:
        raise ValueError(f"{entry_point} takes one H×W×{{CHANNELS}} uint8 image, got dtype {{image.dtype}} and shape {{image.shape}}")
    planes = image.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    if planes.shape[1:] != INPUT_SIZE:
        planes = np.stack([np.asarray(Image.fromarray(plane).resize(INPUT_SIZE[::-1], Image.Resampling.BILINEAR)) for plane in planes])
        planes = np.clip(planes, 0, 1)
    return np.ascontiguousarray(planes[None], dtype=np.float32)


def {entry_point}(image):
    """Class scores (float32, one per class) of one H×W×{info["channels"]} uint8 image."""
    global _session_cache
    if _session_cache is None:
        _session_cache = _session()
    name = _session_cache.get_inputs()[0].name
    return _session_cache.run(None, {{name: _prepare(image)}})[0][0].astype(np.float32)


def _read(path):
    """An image file as H×W×C uint8 pixels."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB" if CHANNELS == 3 else "L"))
    return pixels if pixels.ndim == 3 else pixels[:, :, None]


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: python {entry_point}.py IMAGE [IMAGE ...]")
    for path in sys.argv[1:]:
        print(json.dumps([float(score) for score in {entry_point}(_read(path))]))
'''


def _readme(cfg: DeploymentConfig, entry_point: str, info: dict[str, Any]) -> str:
    height, width = info["input_size"]
    device = "an NVIDIA GPU with CUDA and TensorRT" if cfg.target_library == "tensorrt" else "any CPU"
    classes = ", ".join(info["class_names"]) if info["class_names"] else "(not recorded)"
    return f"""# {entry_point}: int8 {info['target']} deployable ({cfg.target_library})

Generated by dlqnb's `codegen`. Runs on {device}; needs neither PyTorch nor dlqnb.

    pip install -r requirements.txt
    python {entry_point}.py image.png         # prints one JSON list of class scores per image

From Python:

    from {entry_point} import {entry_point}
    scores = {entry_point}(image)             # image: H×W×{info['channels']} uint8 (resized to {height}×{width})

Files: `model_int8.onnx` (QuantizeLinear/DequantizeLinear pairs with power-of-two scales, int8 weights),
`{entry_point}.py` (the entry point), `requirements.txt`.

Classes, in score order: {classes}.
"""
