"""Which runtime runs an int8 model: TensorRT on an NVIDIA GPU, otherwise the CPU runtime measured
fastest for this model on this CPU, among those measured to compute its scores exactly.

Which CPU runtime computes a model's scores exactly, and which is faster, both depend on the CPU
(VNNI, AMX or AVX2 alone select different kernels), so ``backend="auto"`` does not guess. On the first
load of a file it measures, and caches what it measured, keyed by the file's hash, the CPU and the
runtimes' versions, so later loads cost nothing:

1. **Agreement** (:func:`score_differences`): each candidate runtime scores a few fixed pseudo-random
   inputs at the model's size, and its scores are compared with ONNX Runtime's, which equal the
   emulation's bit for bit wherever every layer is quantized (tested). A candidate takes part only when
   it agrees as the flavour requires (:func:`allowed_difference`: bit for bit for the int8 flavours
   ``"cpu"`` and ``"gpu"``; within float rounding for float models); otherwise it is left out and
   ``runner.reason`` gives the largest difference measured. OpenVINO on the ``"gpu"`` flavour (float
   biases) has agreed bit for bit on some CPUs and not on others, hence the measurement.
2. **Speed** (:func:`measure_backends`): each runtime that agrees is timed in a block of its own (a
   warm-up, then the median of at least 3 runs and 0.3 s, at batch 1 and batch 32, or at the one batch
   size a model with a fixed batch accepts; two rounds, the faster kept). One runtime is kept when it is
   the fastest at both batches (or nothing beats it by more than 5 %); when one wins single images and
   the other wins batches, both are kept and each call goes to the winner for its batch size (backend
   ``"onnxruntime/openvino"``: small batches / large batches; see :data:`SPLIT_BATCH`).

A damaged or foreign cache entry, or one naming a runtime that is not available, is measured again
with one :class:`~dlqnb.core.cache.CacheWarning`; where the cache cannot be written, ``auto`` measures
without caching.

Example (the verdict on measured seconds per call; ``choose_backend(path)`` measures them):
    >>> decide({"onnxruntime": {1: 0.003, 32: 0.100}, "openvino": {1: 0.004, 32: 0.080}})[0]
    'onnxruntime/openvino'
    >>> decide({"onnxruntime": {1: 0.003, 32: 0.100}, "openvino": {1: 0.0031, 32: 0.090}})[0]
    'openvino'
    >>> allowed_difference("gpu", largest_score=20.0), allowed_difference("float", largest_score=20.0)
    (0.0, 0.00201)
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlqnb.core.cache import bytes_key, cache_dir, discard_entry, read_entry, write_entry
from dlqnb.core.targets import CPU_LIBRARIES, DEPLOYMENT_LIBRARIES, ENVIRONMENTS
from dlqnb.deploy.host import compare_speed, cpu_key, cpu_summary, file_name_safe, installed_version
from dlqnb.deploy.model_file import finite_number, known_input_shape, model_info
from dlqnb.deploy.runners import OnnxRuntimeRunner, OpenVINORunner, Runner

__all__ = [
    "AGREEMENT_INPUTS",
    "BACKENDS",
    "SPLIT_BATCH",
    "TRIAL_BATCHES",
    "UnknownInputSize",
    "agreement_cache_path",
    "allowed_difference",
    "choice_cache_path",
    "choose_backend",
    "cpu_backends",
    "decide",
    "measure_backends",
    "model_input",
    "score_differences",
]

#: What ``backend=`` takes: the deployment libraries, ``"auto"`` first.
BACKENDS = ("auto", *(name for name in DEPLOYMENT_LIBRARIES if name != "auto"))
#: The batch sizes of the trial: one image (latency) and a batch of 32 (throughput).
TRIAL_BATCHES = (1, 32)
#: Where a split choice hands over from the batch-1 winner to the batch-32 winner (their geometric mean).
SPLIT_BATCH = 6
#: How many fixed pseudo-random inputs the agreement check scores (rounded up to whole batches where the
#: batch is fixed). Where a runtime differs, it has differed on a few inputs in a hundred, not on all: a
#: handful of inputs can miss that, 32 seldom do (measured once per file and CPU, then cached).
AGREEMENT_INPUTS = 32
#: Part of every cache key of this module: what was measured with an older check is measured again.
_CHECK_VERSION = "check2"
#: Float models: a candidate agrees when its scores are within this fraction of the largest score of
#: ONNX Runtime's (plus :data:`FLOAT_ABSOLUTE`), the float kernels' rounding the export tests allow.
FLOAT_RELATIVE = 1e-4
FLOAT_ABSOLUTE = 1e-5
#: The reference every candidate is compared with.
REFERENCE = "onnxruntime"
_INSTALL = {
    "openvino": "pip install 'dlqnb[openvino]'",
    "tensorrt": "pip install 'dlqnb[tensorrt]' (NVIDIA GPUs only)",
}


class UnknownInputSize(ValueError):
    """A model whose input size is neither fixed in the file nor recorded in its metadata (nothing to
    measure it with)."""


def cpu_backends(target: str | None) -> tuple[list[str], list[str]]:
    """The installed CPU runtimes ``auto`` may measure for a model, and notes on the others.

    Args:
        target: The model's flavour (kept for callers; which runtimes agree is measured, see
            :func:`score_differences`).

    Returns:
        (names, notes): e.g. ``(["onnxruntime", "openvino"], [])`` or
        ``(["onnxruntime"], ["OpenVINO is not installed (pip install 'dlqnb[openvino]')"])``.
    """
    if installed_version("openvino") is None:
        return [REFERENCE], [f"OpenVINO is not installed ({_INSTALL['openvino']})"]
    return list(CPU_LIBRARIES), []


def allowed_difference(target: str | None, largest_score: float) -> float:
    """The largest difference from ONNX Runtime's scores a candidate runtime may show for a model of
    ``target`` flavour: none for the int8 flavours (ONNX Runtime equals the emulation bit for bit there,
    so must any runtime ``auto`` may swap in), float rounding otherwise.

    Example:
        >>> allowed_difference("cpu", 10.0)
        0.0
    """
    if target in ENVIRONMENTS:  # dlqnb's int8 flavours
        return 0.0
    return FLOAT_RELATIVE * largest_score + FLOAT_ABSOLUTE


def _runner(backend: str, path: str) -> Runner:
    return OnnxRuntimeRunner(path) if backend == "onnxruntime" else OpenVINORunner(path)


def model_input(path: str | os.PathLike[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """One input's shape (C×H×W; C×L for a 1-D signal model, C×D×H×W for a volume) and the batch sizes to try a model at:
    :data:`TRIAL_BATCHES`, or the one batch size a model with a fixed batch accepts.

    Raises:
        UnknownInputSize: The input size is neither fixed in the file nor recorded in its metadata.
    """
    path = os.fspath(path)
    info = model_info(path)
    dims = info["input_dims"]
    shape = known_input_shape(dims, info["preprocessing"]) if len(dims) in (3, 4, 5) else [None]  # N×C×L to N×C×D×H×W
    if None in shape:
        raise UnknownInputSize(f"{path}: the input size is neither fixed nor recorded; export with input_size=(H, W) to measure")
    batches = (dims[0],) if dims[0] > 0 else TRIAL_BATCHES
    return tuple(int(d) for d in shape if d is not None), batches


def measure_backends(path: str | os.PathLike[str], backends: list[str], rounds: int = 2) -> dict[str, dict[int, float]]:
    """Seconds per call of each backend at each batch size of :func:`model_input`, timed by
    :func:`~dlqnb.deploy.host.compare_speed`: each backend in a block of its own, ``rounds`` times in turn,
    the fastest round kept, as the one least disturbed by the rest of the machine.

    Raises:
        UnknownInputSize: The model's input size is neither fixed in the file nor recorded in its metadata.
    """
    path = os.fspath(path)
    shape, batches = model_input(path)
    predictors = {name: _runner(name, path).predict for name in backends}
    milliseconds = compare_speed(predictors, shape, batches, rounds=rounds, min_seconds=0.3)
    return {name: {batch: float(milliseconds.loc[batch, name]) / 1000 for batch in batches} for name in backends}


def _cache_name(onnx_bytes: bytes, kind: str) -> Path:
    versions = file_name_safe(f"ort{installed_version('onnxruntime')}-ov{installed_version('openvino')}-{_CHECK_VERSION}")
    return cache_dir() / "backend_choice" / f"{bytes_key(onnx_bytes)}-{cpu_key()}-{versions}{kind}.json"


def choice_cache_path(onnx_bytes: bytes) -> Path:
    """Where ``auto``'s choice for a model file is kept: one flat file name keyed by the file's hash,
    the CPU and the versions of ONNX Runtime and OpenVINO."""
    return _cache_name(onnx_bytes, "")


def agreement_cache_path(onnx_bytes: bytes) -> Path:
    """Where :func:`score_differences` keeps what it measured for a model file (keyed as
    :func:`choice_cache_path`)."""
    return _cache_name(onnx_bytes, "-agreement")


def _read_json_entry(path: Path, problem: Callable[[Any], str | None]) -> dict[str, Any] | None:
    """A verified JSON cache entry whose content ``problem`` finds nothing wrong with; a malformed one
    is removed with one warning (so it is measured again)."""
    data = read_entry(path)
    if data is None:
        return None
    try:
        saved = json.loads(data)
    except ValueError:
        saved, found = None, "is not JSON"
    else:
        found = problem(saved)
    if found:
        discard_entry(path, found)
        return None
    return saved


def _agreement_problem(saved: Any) -> str | None:
    if not isinstance(saved, dict) or not isinstance(saved.get("differences"), dict) or not finite_number(saved.get("largest_score")):
        return "does not hold measured score differences"
    if not all(isinstance(name, str) and finite_number(value) for name, value in saved["differences"].items()):
        return "does not hold measured score differences"
    return None


def _agreement_inputs(path: str) -> list[np.ndarray]:
    """The agreement check's inputs, in batches the model accepts."""
    shape, batches = model_input(path)
    batch = batches[0] if len(batches) == 1 else AGREEMENT_INPUTS
    count = -(-AGREEMENT_INPUTS // batch) * batch
    # Fixed pseudo-random inputs: the same on every run and host, so the cached result stays valid.
    inputs = np.random.default_rng(0).random((count, *shape), dtype=np.float32)
    return [inputs[start : start + batch] for start in range(0, count, batch)]


def _scores(runner: Any, batches: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(runner.predict(batch)) for batch in batches])


def score_differences(path: str | os.PathLike[str], backends: list[str], runners: dict[str, Any] | None = None) -> dict[str, Any]:
    """The largest difference between each runtime's scores and ONNX Runtime's on
    :data:`AGREEMENT_INPUTS` fixed pseudo-random inputs at the model's size, measured once per file,
    CPU and runtime versions and cached (:func:`agreement_cache_path`).

    Args:
        path: The ONNX file.
        backends: The runtimes to compare (``"onnxruntime"`` itself is the reference).
        runners: Runners already loaded, by backend name (so a runner can check itself as it loads).

    Returns:
        ``{"differences": {backend: largest absolute difference}, "largest_score": largest absolute
        score of ONNX Runtime's, "inputs": how many inputs, "cpu": the CPU, "date": when measured}``.

    Raises:
        UnknownInputSize: The model's input size is neither fixed in the file nor recorded in its metadata.

    Example (an illustration; each CPU measures its own):
        ::

            score_differences("gpu.onnx", ["openvino"])["differences"]  # e.g. {'openvino': 0.0405}
    """
    path = os.fspath(path)
    with open(path, "rb") as stream:
        cache = agreement_cache_path(stream.read())
    saved = _read_json_entry(cache, _agreement_problem)
    candidates = [name for name in backends if name != REFERENCE]
    if saved is not None and all(name in saved["differences"] for name in candidates):
        return saved
    runners = dict(runners or {})
    inputs = _agreement_inputs(path)
    reference = _scores(runners.get(REFERENCE) or _runner(REFERENCE, path), inputs)
    differences = dict(saved["differences"]) if saved else {}
    for name in candidates:
        scores = _scores(runners.get(name) or _runner(name, path), inputs)
        differences[name] = float(np.abs(scores.astype(np.float64) - reference).max())
    result = {
        "differences": differences,
        "largest_score": float(np.abs(reference).max()),
        "inputs": len(reference),
        "cpu": cpu_summary(),
        "date": datetime.date.today().isoformat(),
    }
    write_entry(cache, json.dumps(result, indent=1).encode())
    return result


def _agreeing(path: str, target: str | None, backends: list[str]) -> tuple[list[str], list[str]]:
    """The runtimes among ``backends`` whose scores agree with ONNX Runtime's as ``target`` requires,
    and a note on each one left out, with the difference measured."""
    measured = score_differences(path, backends)
    allowed = allowed_difference(target, measured["largest_score"])
    kept, notes = [], []
    for name in backends:
        difference = measured["differences"].get(name, 0.0)
        if difference <= allowed:
            kept.append(name)
        else:
            requirement = "bit for bit" if allowed == 0 else f"within {allowed:.3g}"
            notes.append(
                f"{name} is left out: on this CPU its scores differ from {REFERENCE}'s by up to {difference:.3g} "
                f"(largest score {measured['largest_score']:.3g}; the {target!r} flavour needs them {requirement})"
            )
    return kept, notes


def _describe(times: dict[str, dict[int, float]]) -> str:
    parts = []
    for name, by_batch in times.items():
        figures = ", ".join(f"{1000 * seconds:.3g} ms at batch {batch}" for batch, seconds in by_batch.items())
        parts.append(f"{name} {figures}")
    return "; ".join(parts)


def decide(times: dict[str, dict[int, float]], margin: float = 0.05) -> tuple[str, str]:
    """The backend to use given measured seconds per call (backend → batch → seconds), and the verdict.

    One backend when it is the fastest at every batch, or when no other wins any batch by more than
    ``margin``; otherwise ``"small/large"``: the winner at the smallest batch for batches below
    :data:`SPLIT_BATCH` and the winner at the largest batch from there on.

    Example:
        >>> decide({"a": {1: 1.0, 32: 10.0}, "b": {1: 1.2, 32: 8.0}})[0]
        'a/b'
    """
    batches = sorted(next(iter(times.values())))
    score = {name: math.exp(sum(math.log(s) for s in by_batch.values()) / len(by_batch)) for name, by_batch in times.items()}
    winners = {batch: min(times, key=lambda name: times[name][batch]) for batch in batches}
    first, last = batches[0], batches[-1]
    small, large = winners[first], winners[last]

    def gain(batch: int, winner: str) -> float:
        return min(times[o][batch] for o in times if o != winner) / times[winner][batch]

    if small != large and min(gain(first, small), gain(last, large)) > 1 + margin:
        return f"{small}/{large}", (
            f"{small} for batches below {SPLIT_BATCH} ({gain(first, small):.2f}× as fast at batch {first}), "
            f"{large} from batch {SPLIT_BATCH} on ({gain(last, large):.2f}× as fast at batch {last})"
        )
    chosen = min(score, key=score.get)  # type: ignore[arg-type]
    others = [name for name in score if name != chosen]
    if not others:
        return chosen, chosen
    return chosen, f"{chosen}, {min(score[o] for o in others) / score[chosen]:.2f}× as fast as {', '.join(others)} (geometric mean over batches)"


def _choice_problem(backends: list[str]) -> Callable[[Any], str | None]:
    def problem(saved: Any) -> str | None:
        if not isinstance(saved, dict) or not all(isinstance(saved.get(key), str) for key in ("backend", "reason", "date")):
            return "does not hold a backend choice"
        parts = saved["backend"].split("/")
        if not set(parts) <= set(backends) or len(parts) > 2 or len(set(parts)) != len(parts):
            return f"names {saved['backend']!r}, not one of the runtimes available for this model here ({', '.join(backends)})"
        return None

    return problem


def _measured_choice(path: str, backends: list[str]) -> tuple[str, str]:
    with open(path, "rb") as stream:
        cache = choice_cache_path(stream.read())
    saved = _read_json_entry(cache, _choice_problem(backends))
    if saved is not None:
        return saved["backend"], f"{saved['reason']} (measured {saved['date']}; cached)"
    times = measure_backends(path, backends)
    chosen, verdict = decide(times)
    reason = f"measured on {cpu_summary()}: {_describe(times)} → {verdict}"
    date = datetime.date.today().isoformat()
    write_entry(cache, json.dumps({"backend": chosen, "reason": reason, "date": date, "seconds": times}, indent=1).encode())
    return chosen, reason


def _check_backend(backend: Any) -> list[str]:
    """The parts of a valid backend name.

    Raises:
        ValueError: Anything but a backend name or a split of the two CPU runtimes.
    """
    parts = backend.split("/") if isinstance(backend, str) else []
    if not isinstance(backend, str) or (backend not in BACKENDS and not (len(parts) == 2 and set(parts) == set(CPU_LIBRARIES))):
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))} or a split of two CPU runtimes "
            f"such as 'onnxruntime/openvino', got {backend!r}"
        )
    return parts


def choose_backend(path: str | os.PathLike[str], backend: str = "auto") -> tuple[str, str]:
    """The backend :func:`~dlqnb.deploy.load.load_int8` uses for a model file, and why.

    A backend name is taken as asked; so is a split ``"small/large"`` of the two CPU runtimes (what
    ``"auto"`` may choose, given again to load a float baseline the same way).

    ``"auto"``: TensorRT where it imports, a CUDA device is present and the model is of the
    ``"gpu"`` flavour; otherwise the CPU runtime measured fastest among those measured to agree with
    ONNX Runtime's scores (see the module's description), or ONNX Runtime where it is the only one.

    Raises:
        ValueError: Unknown backend name.
        RuntimeError: A backend asked for whose package (or, for TensorRT, CUDA device) is missing.

    Example:
        >>> choose_backend("model.onnx", "onnxruntime")
        ('onnxruntime', 'asked for')
    """
    parts = _check_backend(backend)
    if "openvino" in parts and installed_version("openvino") is None:
        raise RuntimeError(f"backend={backend!r} needs the openvino package: {_INSTALL['openvino']}")
    if backend in CPU_LIBRARIES or len(parts) == 2:
        return backend, "asked for"
    has_tensorrt = installed_version("tensorrt") is not None
    has_gpu = torch.cuda.is_available()
    if backend == "tensorrt":
        if not has_tensorrt:
            raise RuntimeError(f"backend='tensorrt' needs the tensorrt package: {_INSTALL['tensorrt']}")
        if not has_gpu:
            raise RuntimeError("backend='tensorrt' needs a CUDA device; none is visible to torch")
        return "tensorrt", "asked for"
    path = os.fspath(path)
    target = model_info(path)["target"]
    if has_tensorrt and has_gpu and target == "gpu":
        return "tensorrt", "TensorRT and a CUDA device are present and the model is of the 'gpu' flavour"
    if not has_tensorrt:
        why_not_tensorrt = "TensorRT is not installed"
    elif not has_gpu:
        why_not_tensorrt = "no CUDA device"
    else:
        why_not_tensorrt = f"the model is of the {target!r} flavour; TensorRT runs the 'gpu' flavour"
    backends, notes = cpu_backends(target)
    notes.insert(0, why_not_tensorrt)
    if len(backends) == 1:
        return backends[0], f"{'; '.join(notes)}: {backends[0]} is the only CPU runtime for this model"
    try:
        backends, left_out = _agreeing(path, target, backends)
        notes += left_out
        if len(backends) == 1:
            return backends[0], f"{'; '.join(notes)}: {backends[0]} is the only CPU runtime that agrees"
        chosen, reason = _measured_choice(path, backends)
    except UnknownInputSize as error:
        return REFERENCE, f"{'; '.join(notes)}; not measured ({error}): {REFERENCE}"
    return chosen, f"{'; '.join(notes)}; {reason}"
