"""Which runtime runs an int8 model: TensorRT on an NVIDIA GPU, otherwise the CPU runtime measured
fastest for this model on this CPU.

Which CPU runtime is faster depends on the model and on the CPU's instruction sets (VNNI, AMX or
AVX2 alone), so ``backend="auto"`` does not guess: on the first load of a file it times each
available CPU runtime in a block of its own (a warm-up, then the median of at least 3 runs and 0.3 s,
at batch 1 and batch 32; two rounds, the faster kept). One runtime is kept when it is the fastest at both batches (or
nothing beats it by more than 5 %); when one wins single images and the other wins batches, both are
kept and each call goes to the winner for its batch size (backend ``"onnxruntime/openvino"``: small
batches / large batches; see :data:`SPLIT_BATCH`). The choice and its figures are cached, keyed by the
file's hash, the CPU and the runtimes' versions, so later loads cost nothing; ``runner.reason`` says
what was measured.

Only runtimes that compute what the emulation computes for the model's flavour take part: ONNX
Runtime for both flavours, OpenVINO for the ``"cpu"`` flavour (its arithmetic on the ``"gpu"``
flavour's float biases differs from the emulation's).

Example (the verdict on measured seconds per call; ``choose_backend(path)`` measures them):
    >>> decide({"onnxruntime": {1: 0.003, 32: 0.100}, "openvino": {1: 0.004, 32: 0.080}})[0]
    'onnxruntime/openvino'
    >>> decide({"onnxruntime": {1: 0.003, 32: 0.100}, "openvino": {1: 0.0031, 32: 0.090}})[0]
    'openvino'

"""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path
from typing import Any

import onnx
import torch

from dlqnb.cache import atomic_write_text, bytes_key, cache_dir
from dlqnb.host import compare_speed, cpu_key, cpu_summary, installed_version

__all__ = ["BACKENDS", "SPLIT_BATCH", "TRIAL_BATCHES", "choice_cache_path", "choose_backend", "cpu_backends", "decide", "measure_backends"]

BACKENDS = ("auto", "tensorrt", "onnxruntime", "openvino")
#: The batch sizes of the trial: one image (latency) and a batch of 32 (throughput).
TRIAL_BATCHES = (1, 32)
#: Where a split choice hands over from the batch-1 winner to the batch-32 winner (their geometric mean).
SPLIT_BATCH = 6
_INSTALL = {
    "openvino": "pip install 'dlqnb[openvino]'",
    "tensorrt": "pip install 'dlqnb[tensorrt]' (NVIDIA GPUs only)",
}


def cpu_backends(target: str | None) -> tuple[list[str], list[str]]:
    """The CPU runtimes ``auto`` may choose for a model of ``target`` flavour, and notes on the others.

    Returns:
        (names, notes): e.g. ``(["onnxruntime", "openvino"], [])`` or
        ``(["onnxruntime"], ["OpenVINO is not installed (pip install 'dlqnb[openvino]')"])``.
    """
    names, notes = ["onnxruntime"], []
    if installed_version("openvino") is None:
        notes.append(f"OpenVINO is not installed ({_INSTALL['openvino']})")
    elif target == "gpu":
        notes.append("OpenVINO is left out for the 'gpu' flavour (its float-bias arithmetic differs from the emulation's)")
    else:
        names.append("openvino")
    return names, notes


def _runner(backend: str, path: str) -> Any:
    from dlqnb.runtime import OnnxRuntimeRunner, OpenVINORunner

    return OnnxRuntimeRunner(path) if backend == "onnxruntime" else OpenVINORunner(path)


def _trial_shape(path: str, info: dict[str, Any]) -> tuple[int, int, int] | None:
    preprocessing = info.get("preprocessing") or {}
    dims = [d.dim_value for d in onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim]
    known = [preprocessing.get("channels")] + list(preprocessing.get("input_size") or [None, None])
    shape = [dim if dim > 0 else known[i] for i, dim in enumerate(dims[1:4])] if len(dims) == 4 else []
    return tuple(int(d) for d in shape) if len(shape) == 3 and all(shape) else None  # type: ignore[return-value]


def measure_backends(path: str | os.PathLike[str], backends: list[str], rounds: int = 2) -> dict[str, dict[int, float]]:
    """Seconds per call of each backend at each of :data:`TRIAL_BATCHES`, timed by
    :func:`~dlqnb.host.compare_speed`: each backend in a block of its own, ``rounds`` times in turn,
    the fastest round kept, as the one least disturbed by the rest of the machine.

    Raises:
        ValueError: The model's input size is neither fixed in the file nor recorded in its metadata.
    """
    from dlqnb.runtime import model_info

    path = os.fspath(path)
    shape = _trial_shape(path, model_info(path))
    if shape is None:
        raise ValueError(f"{path}: the input size is neither fixed nor recorded; export with input_size=(H, W) to measure")
    predictors = {name: _runner(name, path).predict for name in backends}
    milliseconds = compare_speed(predictors, shape, TRIAL_BATCHES, rounds=rounds, min_seconds=0.3)
    return {name: {batch: float(milliseconds.loc[batch, name]) / 1000 for batch in TRIAL_BATCHES} for name in backends}


def choice_cache_path(onnx_bytes: bytes) -> Path:
    """Where ``auto``'s choice for a model file is kept: keyed by the file's hash, the CPU and the
    versions of ONNX Runtime and OpenVINO."""
    digest = bytes_key(onnx_bytes)
    versions = f"ort{installed_version('onnxruntime')}-ov{installed_version('openvino')}"
    return cache_dir() / "backend_choice" / f"{digest}-{cpu_key()}-{versions}.json"


def _describe(times: dict[str, dict[int, float]]) -> str:
    parts = []
    for name, by_batch in times.items():
        figures = ", ".join(f"{1000 * seconds:.3g} ms at batch {batch}" for batch, seconds in by_batch.items())
        parts.append(f"{name} {figures}")
    return "; ".join(parts)


def decide(times: dict[str, dict[int, float]], margin: float = 0.05) -> tuple[str, str]:
    """The backend to use given measured seconds per call (backend → batch → seconds), and the verdict.

    One backend when it is the fastest at every batch, or when no other wins any batch by more than
    ``margin``; otherwise ``"small/large"``: the batch-1 winner for batches below :data:`SPLIT_BATCH`
    and the batch-32 winner from there on.
    """
    score = {name: math.exp(sum(math.log(s) for s in by_batch.values()) / len(by_batch)) for name, by_batch in times.items()}
    winners = {batch: min(times, key=lambda name: times[name][batch]) for batch in TRIAL_BATCHES}
    small, large = winners[TRIAL_BATCHES[0]], winners[TRIAL_BATCHES[-1]]

    def gain(batch: int, winner: str) -> float:
        return min(times[o][batch] for o in times if o != winner) / times[winner][batch]

    if small != large and min(gain(TRIAL_BATCHES[0], small), gain(TRIAL_BATCHES[-1], large)) > 1 + margin:
        return f"{small}/{large}", (
            f"{small} for batches below {SPLIT_BATCH} ({gain(TRIAL_BATCHES[0], small):.2f}× as fast at batch {TRIAL_BATCHES[0]}), "
            f"{large} from batch {SPLIT_BATCH} on ({gain(TRIAL_BATCHES[-1], large):.2f}× as fast at batch {TRIAL_BATCHES[-1]})"
        )
    chosen = min(score, key=score.get)  # type: ignore[arg-type]
    others = [name for name in score if name != chosen]
    if not others:
        return chosen, chosen
    return chosen, f"{chosen}, {min(score[o] for o in others) / score[chosen]:.2f}× as fast as {', '.join(others)} (geometric mean over batches)"


def _measured_choice(path: str, backends: list[str]) -> tuple[str, str]:
    with open(path, "rb") as stream:
        cache = choice_cache_path(stream.read())
    if cache.exists():
        try:
            saved = json.loads(cache.read_text())
            return saved["backend"], f"{saved['reason']} (measured {saved['date']}; cached)"
        except (ValueError, KeyError):
            pass  # a damaged entry: measure again
    times = measure_backends(path, backends)
    chosen, verdict = decide(times)
    reason = f"measured on {cpu_summary()}: {_describe(times)} → {verdict}"
    date = datetime.date.today().isoformat()
    atomic_write_text(cache, json.dumps({"backend": chosen, "reason": reason, "date": date, "seconds": times}, indent=1))
    return chosen, reason


def choose_backend(path: str | os.PathLike[str], backend: str = "auto") -> tuple[str, str]:
    """The backend :func:`~dlqnb.runtime.load_int8` uses for a model file, and why.

    A backend name is taken as asked; so is a split ``"small/large"`` of the two CPU runtimes (what
    ``"auto"`` may choose, given again to load a float baseline the same way).

    ``"auto"``: TensorRT where it imports, a CUDA device is present and the model is of the
    ``"gpu"`` flavour; otherwise the CPU runtime measured fastest (see the module's description),
    or ONNX Runtime where it is the only one that may run the model.

    Raises:
        ValueError: Unknown backend name.
        RuntimeError: A backend asked for whose package (or, for TensorRT, CUDA device) is missing.
    """
    from dlqnb.runtime import model_info

    parts = backend.split("/") if isinstance(backend, str) else [backend]
    if backend not in BACKENDS and not (len(parts) == 2 and set(parts) <= {"onnxruntime", "openvino"}):
        raise ValueError(
            f"backend must be one of {', '.join(map(repr, BACKENDS))} or a split of two CPU runtimes "
            f"such as 'onnxruntime/openvino', got {backend!r}"
        )
    if "openvino" in parts and installed_version("openvino") is None:
        raise RuntimeError(f"backend={backend!r} needs the openvino package: {_INSTALL['openvino']}")
    if backend in ("onnxruntime", "openvino") or len(parts) == 2:
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
        chosen, reason = _measured_choice(path, backends)
    except ValueError as error:  # no fixed input size to measure with
        return "onnxruntime", f"{'; '.join(notes)}; not measured ({error}): onnxruntime"
    return chosen, f"{'; '.join(notes)}; {reason}"
