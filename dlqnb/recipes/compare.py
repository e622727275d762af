"""Comparing quantization recipes on one network: accuracy, learnable memory and int8 latency side by side.

:func:`compare_recipes` quantizes the network once per :class:`~dlqnb.recipes.recipe.Recipe` and
measures what each costs and gives:

1. **Quantizer.** :func:`~dlqnb.recipes.build.quantizer_for` builds the calibrated quantizer the recipe
   describes (equalization, target, exponent scheme, per-channel weights, bias correction, float layers
   chosen by accuracy on ``validation_data``). Each of the (at most three) networks, plain, equalized, and
   equalized with its clipped ReLUs replaced, is calibrated once and its ranges are shared by the recipes
   that quantize it.
2. **Accuracy and memory.** ``q.validate(validation_data, rounding=recipe.rounding)``: top-1 accuracy of the quantized and float
   networks and their learnable parameter memory, as MATLAB counts it.
3. **Latency.** The deployed file (``export_qdq_onnx``) loaded with ``load_int8`` and timed in a block of
   its own: warm-up calls, then several timed calls on one batch, the median kept. ONNX Runtime's worker
   threads do not spin between calls (dlqnb's runner turns spinning off), and the machine is left to
   settle before each block, so that nothing else competes for the cores while a recipe is timed. Latency
   depends on the CPU: the table's ``attrs["cpu"]`` names it.

A recipe that fails at any step is recorded with its error (``error`` column) and the comparison goes on.
The ``pareto`` column marks the recipes on the Pareto front (:mod:`dlqnb.recipes.pareto`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)).eval()
    >>> x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 2, (8,))
    >>> table = compare_recipes(net, [{"name": "gpu"}, {"name": "cpu", "target": "cpu"}], x, (x, y),
    ...                         measure_latency=False, progress=False)
    >>> list(table["recipe"]), bool(table["error"].eq("").all())
    (['gpu', 'cpu'], True)
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from dlqnb.core.targets import CPU_LIBRARIES
from dlqnb.deploy.backend_choice import BACKENDS, model_input
from dlqnb.deploy.export import export_qdq_onnx
from dlqnb.deploy.host import cpu_summary, file_name_safe, time_block
from dlqnb.deploy.load import load_int8
from dlqnb.quantizer import DLQuantizer
from dlqnb.recipes.build import SharedCalibrations, quantizer_for
from dlqnb.recipes.pareto import pareto_mask
from dlqnb.recipes.recipe import Recipe, as_recipes

__all__ = ["RESULT_COLUMNS", "compare_recipes"]

#: The columns of :func:`compare_recipes`' table, in order.
RESULT_COLUMNS = [
    "recipe",
    "target",
    "exponent_scheme",
    "per_channel",
    "equalize",
    "relu6",
    "bias_correction",
    "max_accuracy_drop",
    "rounding",
    "accuracy",
    "float_accuracy",
    "prepared_float_accuracy",
    "accuracy_drop",
    "memory_bytes",
    "float_memory_bytes",
    "memory_reduction",
    "num_float_layers",
    "float_layers",
    "latency_ms",
    "backend",
    "pareto",
    "error",
]
#: Untimed calls before a latency block, and timed calls in it (their median is the latency).
LATENCY_WARMUPS = 3
LATENCY_RUNS = 7
#: Seconds the machine is left to settle before a latency block: PyTorch's and the last runtime's worker
#: threads keep spinning for a moment after their last call, and would compete with the block.
SETTLE_SECONDS = 0.5


def compare_recipes(
    net: nn.Module,
    recipes: Recipe | Mapping[str, Any] | Iterable[Recipe | Mapping[str, Any]],
    calibration_data: Any,
    validation_data: Any,
    *,
    measure_latency: bool = True,
    latency_batch: int = 8,
    backend: str = "auto",
    output_dir: str | os.PathLike[str] | None = None,
    mini_batch_size: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Quantize ``net`` with each recipe and compare accuracy, learnable memory and int8 latency.

    Args:
        net: The float network (never modified).
        recipes: :class:`~dlqnb.recipes.recipe.Recipe` objects or dicts of their fields (one, or a list).
        calibration_data: Images to calibrate on (and to measure bias corrections on), in any form
            :meth:`~dlqnb.DLQuantizer.calibrate` takes.
        validation_data: Labelled images to validate on (and to choose float layers on).
        measure_latency: Export each recipe's int8 ONNX file and time it (False: ``latency_ms`` is NaN).
        latency_batch: Images per timed call.
        backend: The runtime that runs the files (``load_int8``'s ``backend``): ``"auto"`` (TensorRT on an
            NVIDIA GPU for the ``"gpu"`` flavour, else the CPU runtime measured fastest), ``"onnxruntime"``,
            ``"openvino"``, ``"tensorrt"``.
        output_dir: Where the ONNX files are kept (``01-<recipe name>.onnx``, numbered in the order of
            ``recipes``); None: a temporary folder, removed afterwards.
        mini_batch_size: Batch size for a tensor or Dataset of images.
        progress: Show a progress bar over the recipes.

    Returns:
        One row per recipe, columns :data:`RESULT_COLUMNS`: the recipe's settings; ``accuracy`` (top-1 of
        the quantized network on ``validation_data``), ``float_accuracy`` (of ``net``, the same in every
        row), ``prepared_float_accuracy`` (of the float network the recipe quantizes: ``net``'s, to float
        rounding, unless the recipe replaced clipped ReLUs), ``accuracy_drop`` (``float_accuracy`` − ``accuracy``);
        ``memory_bytes`` and ``float_memory_bytes`` (learnable parameter memory, int8 and float) and
        ``memory_reduction`` (1 − int8 / float); ``num_float_layers`` and ``float_layers`` (the layers the
        accuracy-driven choice keeps in float, comma-separated); ``latency_ms`` (median milliseconds per
        call of ``latency_batch`` images) and ``backend`` (the runtime that ran it); ``pareto``; ``error``
        (empty when the recipe ran). ``attrs`` holds ``cpu`` (the CPU the latencies were measured on),
        ``latency_batch``, ``backend`` and ``num_validation_samples``.

    Raises:
        TypeError: ``net`` is not an ``nn.Module``, or ``recipes`` holds something else than recipes.
        ValueError: A bad recipe, repeated recipe names, a bad ``latency_batch`` or ``backend``.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    chosen = as_recipes(recipes)
    if isinstance(latency_batch, bool) or not isinstance(latency_batch, int) or latency_batch < 1:
        raise ValueError(f"latency_batch must be a positive whole number of images, got {latency_batch!r}")
    _check_backend(backend)
    calibrations: SharedCalibrations = {}  # each network calibrated once, its ranges shared by its recipes
    rows = []
    reference = None  # net's float top-1
    samples = None
    with tempfile.TemporaryDirectory(prefix="dlqnb-recipes-") as scratch:
        folder = Path(output_dir) if output_dir is not None else Path(scratch)
        bar = tqdm(chosen, desc="Recipes", unit="recipe", disable=not progress)
        for number, recipe in enumerate(bar, start=1):
            bar.set_postfix_str(recipe.name)
            row = _settings(recipe)
            try:
                quantizer = quantizer_for(net, recipe, calibration_data, validation_data, mini_batch_size=mini_batch_size, calibrations=calibrations)
                result = quantizer.validate(validation_data, mini_batch_size=mini_batch_size, progress=False, rounding=recipe.rounding)
            except Exception as error:  # a failed recipe is a result of the comparison, not its end
                rows.append({**row, "error": _error_text(error)})
                continue
            samples = result.num_samples
            row.update(_validation_row(result.metric_results, quantizer))
            if recipe.relu6 == "keep" and reference is None:  # net itself, or equalized: net's float outputs
                reference = row["prepared_float_accuracy"]
            if measure_latency:
                try:
                    path = folder / f"{number:02d}-{file_name_safe(recipe.name, keep='._-')}.onnx"
                    row["latency_ms"], row["backend"] = _latency(quantizer, path, backend, latency_batch)
                except Exception as error:
                    row["error"] = f"latency not measured: {_error_text(error)}"
            rows.append(row)
        if reference is None and any(row["error"] == "" for row in rows):  # every recipe changed the float network
            reference = _float_accuracy(net, calibration_data, validation_data, mini_batch_size, calibrations)
    for row in rows:
        if "accuracy" in row:
            row.update(float_accuracy=reference, accuracy_drop=reference - row["accuracy"])
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    for column in ("accuracy", "float_accuracy", "prepared_float_accuracy", "accuracy_drop", "memory_reduction", "latency_ms"):
        table[column] = table[column].astype(float)
    table["pareto"] = pareto_mask(table)
    table.attrs.update(cpu=cpu_summary(), latency_batch=latency_batch, backend=backend, num_validation_samples=samples)
    return table


def _check_backend(backend: Any) -> None:
    parts = backend.split("/") if isinstance(backend, str) else []
    if backend not in BACKENDS and not (len(parts) == 2 and set(parts) == set(CPU_LIBRARIES)):
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))} or a split such as 'onnxruntime/openvino', got {backend!r}")


def _settings(recipe: Recipe) -> dict[str, Any]:
    """A row's recipe columns, with the text columns empty until the recipe has run."""
    settings = recipe.to_dict()
    return {"recipe": settings.pop("name"), **settings, "float_layers": "", "backend": "", "error": ""}


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _float_accuracy(net: nn.Module, calibration_data: Any, validation_data: Any, mini_batch_size: int | None, calibrations: SharedCalibrations) -> float:
    """``net``'s float top-1 on ``validation_data``, where no recipe quantized ``net`` itself."""
    quantizer = quantizer_for(net, Recipe("float reference"), calibration_data, mini_batch_size=mini_batch_size, calibrations=calibrations)
    result = quantizer.validate(validation_data, mini_batch_size=mini_batch_size, progress=False)
    return float(result.metric_results.set_index("NetworkImplementation")["MetricOutput"]["Floating-Point"])


def _validation_row(metrics: pd.DataFrame, quantizer: DLQuantizer) -> dict[str, Any]:
    """Accuracy and memory columns from ``validate``'s ``metric_results``, and the float layers kept."""
    by_implementation = metrics.set_index("NetworkImplementation")
    accuracy, memory = by_implementation["MetricOutput"], by_implementation["LearnableParameterMemory(bytes)"]
    kept = sorted(quantizer.excluded_layers, key=quantizer.quantizable_layers.index)
    return {
        "accuracy": float(accuracy["Quantized"]),
        "prepared_float_accuracy": float(accuracy["Floating-Point"]),
        "memory_bytes": int(memory["Quantized"]),
        "float_memory_bytes": int(memory["Floating-Point"]),
        "memory_reduction": float(1 - memory["Quantized"] / memory["Floating-Point"]),
        "num_float_layers": len(kept),
        "float_layers": ", ".join(kept),
    }


def _latency(quantizer: DLQuantizer, path: Path, backend: str, batch: int) -> tuple[float, str]:
    """Median milliseconds per call of the deployed file on one batch, timed in a block of its own, and
    the runtime that ran it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    export_qdq_onnx(quantizer, path)
    runner = load_int8(path, backend=backend)
    shape, _ = model_input(path)
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    gc.collect()
    time.sleep(SETTLE_SECONDS)
    seconds = statistics.median(time_block(lambda: runner.predict(x), LATENCY_WARMUPS, LATENCY_RUNS))
    name = runner.backend
    del runner  # released before the next recipe runs
    gc.collect()
    return 1000 * seconds, name
