"""Loading an int8 ONNX model: choose its runtime, build its runner, and MATLAB's ``predict_int8`` entry point.

:func:`load_int8` asks :func:`~dlqnb.deploy.backend_choice.choose_backend` which runtime runs a file
(TensorRT on an NVIDIA GPU for the ``"gpu"`` flavour, else the CPU runtime measured fastest among those
measured to compute its scores exactly) and builds that :class:`~dlqnb.deploy.runners.Runner`, with
``.reason`` saying why. Where it builds an OpenVINO runner for an int8 file of either flavour, it compares
OpenVINO's scores with ONNX Runtime's once per file and CPU (cached) and warns with the difference
measured where they differ. :func:`predict_int8` loads a runner once per file content and reuses it (a
few files' runners at a time), and accepts one H×W×3 uint8 image or float NCHW batches (NCL for a 1-D
signal model).

Example:
    (for a file :func:`~dlqnb.deploy.export.export_qdq_onnx` wrote; :mod:`dlqnb.deploy`'s example makes one)::

        runner = load_int8("model_int8.onnx")   # backend="auto": measured on the first load, then cached
        runner.backend, runner.reason           # e.g. ('openvino', 'TensorRT is not installed; measured on ...')
        predict_int8("model_int8.onnx", image)  # loads once, then reuses the runner
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np

from dlqnb.core.cache import bytes_key
from dlqnb.core.targets import ENVIRONMENTS
from dlqnb.deploy.backend_choice import SPLIT_BATCH, UnknownInputSize, choose_backend, score_differences
from dlqnb.deploy.runners import BatchSplitRunner, OnnxRuntimeRunner, OpenVINORunner, Runner, TensorRTRunner, check_settings

__all__ = ["RUNNERS_KEPT", "SETTLED_NANOSECONDS", "load_int8", "predict_int8"]

_log = logging.getLogger(__name__)


def load_int8(path: str | os.PathLike[str], backend: str = "auto", threads: int | None = None, hint: str = "latency") -> Runner:
    """A runner for an int8 ONNX model: ``.backend``, ``.reason`` and ``.predict(x)``.

    Args:
        path: A QDQ ONNX model written by :func:`~dlqnb.deploy.export.export_qdq_onnx` (others load
            with a warning).
        backend: ``"auto"`` (TensorRT on an NVIDIA GPU, else the CPU runtime measured fastest here:
            see :func:`~dlqnb.deploy.backend_choice.choose_backend`), ``"tensorrt"``, ``"onnxruntime"``,
            ``"openvino"``, or a split of the two CPU runtimes such as ``"onnxruntime/openvino"``.
        threads: CPU threads for ONNX Runtime and OpenVINO (default: all cores).
        hint: OpenVINO's performance hint, ``"latency"`` or ``"throughput"``.

    Returns:
        An :class:`~dlqnb.deploy.runners.OnnxRuntimeRunner`, :class:`~dlqnb.deploy.runners.OpenVINORunner`,
        :class:`~dlqnb.deploy.runners.TensorRTRunner` or :class:`~dlqnb.deploy.runners.BatchSplitRunner`.

    Raises:
        FileNotFoundError: No file at ``path``.
        ModelFileError: The file is not a readable ONNX model, or its metadata is malformed.
        ValueError: An unknown backend or hint, or ``threads`` not a positive whole number.
        RuntimeError: A backend asked for whose package (or, for TensorRT, CUDA device) is missing.

    Example:
        >>> load_int8("model.onnx", threads=0)
        Traceback (most recent call last):
        ...
        ValueError: threads must be a positive whole number of CPU threads (or None for all cores), got 0
    """
    check_settings(threads, hint)
    if not os.path.exists(path):
        raise FileNotFoundError(f"ONNX model {os.fspath(path)!r} does not exist")
    chosen, reason = choose_backend(path, backend)

    def cpu_runner(name: str) -> Runner:
        if name != "openvino":
            return OnnxRuntimeRunner(path, threads)
        runner = OpenVINORunner(path, threads, hint)
        if runner.info.get("target") in ENVIRONMENTS:  # an int8 file of either flavour
            _warn_where_scores_differ(runner, runner.info["target"])
        return runner

    runner: Runner
    if chosen == "tensorrt":
        runner = TensorRTRunner(path)
    elif "/" in chosen:
        small, large = chosen.split("/")
        runner = BatchSplitRunner(cpu_runner(small), cpu_runner(large), SPLIT_BATCH)
    else:
        runner = cpu_runner(chosen)
    runner.reason = reason
    _log.info("dlqnb: running %s with %s (%s)", path, chosen, reason)
    return runner


def _warn_where_scores_differ(runner: OpenVINORunner, flavour: str) -> None:
    """Warn when this CPU's OpenVINO scores an int8 model of ``flavour`` differently from ONNX Runtime (and
    so from the emulation), with the largest difference measured (once per file, CPU and versions; cached)."""
    # stacklevel 4: past this, cpu_runner and load_int8, to the code that loaded the file
    try:
        measured = score_differences(runner.path, ["openvino"], runners={"openvino": runner})
    except UnknownInputSize:
        warnings.warn(f"{runner.path}: OpenVINO's scores on the {flavour!r} flavour were not compared with the emulation's "
                      "(the input size is not recorded); on some CPUs they differ", stacklevel=4)
        return
    difference = measured["differences"]["openvino"]
    if difference > 0:
        # the "cpu" flavour (int32 biases) has agreed where the "gpu" one (float biases) did not, never the reverse
        advice = "export with execution_environment='cpu' for OpenVINO, or run this file on ONNX Runtime" if flavour == "gpu" else "run this file on ONNX Runtime"
        warnings.warn(
            f"{runner.path}: on this CPU OpenVINO's scores on the {flavour!r} flavour differ from ONNX Runtime's (the emulation's "
            f"wherever every layer runs in integers) by up to {difference:.3g} (largest score {measured['largest_score']:.3g}, measured on "
            f"{measured['inputs']} test inputs); {advice}",
            stacklevel=4,
        )


#: How many runners :func:`predict_int8` keeps (the most recently used files').
RUNNERS_KEPT = 4
#: A file's status (size, times, inode) is trusted to tell it unchanged only once its last change is
#: this far in the past: a rewrite within the file system's timestamp granularity of the previous
#: change (``cp -p``, unzip) leaves them all as they were, so until then the bytes are hashed again.
SETTLED_NANOSECONDS = 2_000_000_000
_runners: OrderedDict[str, tuple[str, Runner]] = OrderedDict()  # absolute path → (content hash, runner)
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
