"""The accuracy benchmark: ``python -m dlqnb.bench accuracy``.

For every network of the trained zoo (:mod:`dlqnb.training.trained_zoo`), on the same calibration,
selection and validation images, in one run:

* **float** top-1 of the network;
* **dlqnb's defaults** (MATLAB's: MinMax power-of-two types, one weight scale per layer) for the
  ``"gpu"`` and ``"cpu"`` targets: the emulation's accuracy (``q.validate``) and the deployed QDQ ONNX
  file's on ONNX Runtime and on OpenVINO (``export_qdq_onnx`` → ``load_int8(path, backend=...)``);
* **dlqnb's recovery recipes** (:data:`RECIPES`, :class:`dlqnb.recipes.Recipe` values quantized by
  :func:`dlqnb.recipes.quantizer_for`): per-channel weights, the histogram exponent scheme, cross-layer
  equalization (``equalize_layers``; also with its clipped ReLUs replaced by ReLUs), empirical bias
  correction (``q.correct_bias``) and float layers chosen by accuracy (``q.choose_float_layers`` on the
  labelled calibration images, then ``q.exclude``), alone and combined, on both targets, scored by the emulation (a recipe with ``rounding="half_even"``
  is tuned and scored as the runtimes compute its ``"gpu"`` file; it is not run on ``"cpu"``, whose own
  rule that is). The best of them (defaults included) is chosen on labelled selection images that
  neither calibrate nor score (the trained zoo's ``"selection"`` split: the training images calibration
  leaves), as its deployed file computes them (ties to even, see :data:`DEPLOYED_ROUNDING`): the highest
  top-1 there, then the scores closest to the float network's. Choosing on the calibration images would
  favour the recipes fitted to them (bias corrections, float layers); choosing on the validation images
  would flatter the pick. It is deployed and run on ONNX Runtime and OpenVINO;
* **the peers**: ONNX Runtime's ``quantize_static`` (QDQ, uint8 activations, int8 weights, per tensor
  and per channel) and NNCF's ``nncf.quantize`` on the OpenVINO model, both calibrated with the same
  images through :func:`dlqnb.bench.peers.calibration_reader` and its NNCF twin.

A recipe that fails is "error" in the recipes table, with its error in its ``status``; a runtime whose
package is missing is named in ``not_measured``.

Example:
    $ python -m dlqnb.bench accuracy --models resnet18,mobilenet_v2 --json accuracy.json
    $ python -m dlqnb.bench accuracy --quick
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dlqnb.bench.peers import openvino_call, peer_nncf, peer_onnxruntime
from dlqnb.evaluation.sensitivity import relative_score_error
from dlqnb.plan.types import TARGET_ROUNDING
from dlqnb.recipes import Recipe, quantizer_for
from dlqnb.recipes.build import SharedCalibrations

__all__ = ["RECIPES", "accuracy_table", "bench_accuracy", "best_on_selection", "measure_network"]

#: The largest accuracy drop the "float layers" recipes accept when they choose layers.
MAX_ACCURACY_DROP = 0.005
#: How the runtimes that run the exported files (TensorRT, ONNX Runtime, OpenVINO: ONNX's QuantizeLinear)
#: round ties, on both targets: recipes are picked for deployment by what their files compute.
DEPLOYED_ROUNDING = "half_even"


#: The recipes measured on every network, each on every target (``dataclasses.replace(recipe, target=...)``);
#: the first is MATLAB's defaults.
RECIPES: tuple[Recipe, ...] = (
    Recipe("default"),
    Recipe("per-channel", per_channel=True),
    Recipe("histogram", exponent_scheme="histogram"),
    Recipe("per-channel + histogram", per_channel=True, exponent_scheme="histogram"),
    Recipe("equalized", equalize=True),
    Recipe("equalized (ReLU6 → ReLU)", equalize=True, relu6="relu"),
    Recipe("bias correction", bias_correction=True),
    Recipe("equalized + per-channel + bias correction", per_channel=True, equalize=True, bias_correction=True),
    Recipe("float layers", max_accuracy_drop=MAX_ACCURACY_DROP),
    Recipe("histogram + bias correction", exponent_scheme="histogram", bias_correction=True),
    Recipe("histogram + bias correction (ties to even)", exponent_scheme="histogram", bias_correction=True, rounding="half_even"),
    Recipe("all", per_channel=True, exponent_scheme="histogram", equalize=True, bias_correction=True, max_accuracy_drop=MAX_ACCURACY_DROP),
    Recipe("all (ties to even)", per_channel=True, exponent_scheme="histogram", equalize=True, bias_correction=True, max_accuracy_drop=MAX_ACCURACY_DROP, rounding="half_even"),
)


def top1(scores: Any, labels: torch.Tensor) -> float:
    """Share of rows of ``scores`` (N×C, numpy or torch) whose largest entry is the label."""
    return float((torch.as_tensor(np.asarray(scores)).argmax(1) == labels).double().mean())


def _batched(call: Callable[[np.ndarray], Any], images: torch.Tensor, batch: int = 256) -> np.ndarray:
    return np.concatenate([np.array(call(chunk.numpy())) for chunk in images.split(batch)])


def _scores(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(chunk) for chunk in images.split(256)])


def _float_accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return top1(_scores(net, images), labels)


def _deployed(path: str, images: torch.Tensor, labels: torch.Tensor, backend: str) -> float:
    """Top-1 of a dlqnb QDQ file on ``backend`` (``"onnxruntime"`` or ``"openvino"``)."""
    from dlqnb.deploy.load import load_int8

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # where OpenVINO's scores differ from the emulation is measured here
        runner = load_int8(path, backend=backend)
        return top1(_batched(runner.predict, images), labels)


def _run_recipe(
    net: nn.Module,
    recipe: Recipe,
    calibration: torch.Tensor,
    validation: tuple[torch.Tensor, torch.Tensor],
    labelled_calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
    calibrations: SharedCalibrations | None = None,
    selection: tuple[torch.Tensor, torch.Tensor] | None = None,
    selection_scores: torch.Tensor | None = None,
) -> tuple[dict[str, Any], Any]:
    """One recipe's row (and its quantizer, None where it failed); ``selection_scores``: the user's float
    network's scores of the selection images, where the caller has them."""
    row: dict[str, Any] = {
        "recipe": recipe.name,
        "target": recipe.target,
        "accuracy": None,
        "prepared_float_accuracy": None,
        "selection_accuracy": None,
        "selection_error": None,
        "status": "ok",
        "float_layers": [],
    }
    try:
        # float layers are chosen on the calibration images, the recipe to deploy is picked on the selection
        # images (default: the calibration images): the validation images only score
        q = quantizer_for(net, recipe, calibration, labelled_calibration, calibrations=calibrations)
        result = q.validate(validation, progress=False, rounding=recipe.rounding)
        selection = labelled_calibration if selection is None else selection
        if selection is not None:
            on_selection = q.validate(selection, progress=False, rounding=DEPLOYED_ROUNDING)
            row["selection_accuracy"] = top1(on_selection.quantized_scores, selection[1])
            # against the user's network: a recipe that replaces clipped ReLUs quantizes another float network
            if q.network is net:
                reference = on_selection.float_scores
            else:
                reference = _scores(net, selection[0]) if selection_scores is None else selection_scores
            row["selection_error"] = relative_score_error(on_selection.quantized_scores, reference)
    except Exception as error:  # one recipe failing is a result of the benchmark, not the end of it
        row["status"] = f"error: {type(error).__name__}: {error}"
        return row, None
    row["accuracy"] = top1(result.quantized_scores, validation[1])
    row["prepared_float_accuracy"] = top1(result.float_scores, validation[1])  # of the network the recipe quantized
    row["float_layers"] = sorted(q.excluded_layers)
    return row, q


def best_on_selection(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The recipe row the benchmark deploys: the highest top-1 on the labelled selection images, then
    the smallest relative score error there (scores closest to the float network's); the first of equals.

    Rows without selection figures (no labelled images to select on) fall back to their validation top-1.

    Raises:
        ValueError: No row was measured.

    Example:
        >>> rows = [{"recipe": "a", "accuracy": 0.9, "selection_accuracy": 0.95, "selection_error": 0.2},
        ...         {"recipe": "b", "accuracy": 0.8, "selection_accuracy": 0.95, "selection_error": 0.1}]
        >>> best_on_selection(rows)["recipe"]
        'b'
    """
    measured = [row for row in rows if row["accuracy"] is not None]
    if not measured:
        raise ValueError("no recipe was measured: every one failed (see the recipes' status)")
    if all(row.get("selection_accuracy") is not None for row in measured):
        return min(measured, key=lambda row: (-row["selection_accuracy"], row["selection_error"]))
    return max(measured, key=lambda row: row["accuracy"])


def _peers(
    q: Any, calibration: torch.Tensor, validation: tuple[torch.Tensor, torch.Tensor], folder: str, name: str, openvino: bool
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The peers' accuracies, their files and what could not be measured (NNCF only with ``openvino``)."""
    from dlqnb.deploy import OnnxRuntimeRunner, export_float_onnx

    images, labels = validation
    fp32 = str(export_float_onnx(q, os.path.join(folder, f"{name}_fp32.onnx")))
    files, accuracy, not_measured = {"fp32": fp32}, {}, []
    for key, per_channel in (("ort_per_tensor", False), ("ort_per_channel", True)):
        files[key] = peer_onnxruntime(fp32, calibration, os.path.join(folder, f"{name}_{key}.onnx"), per_channel=per_channel)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the peers' files carry no dlqnb metadata
            accuracy[key] = top1(_batched(OnnxRuntimeRunner(files[key]).predict, images), labels)
    if not openvino:
        accuracy["nncf_openvino"] = None
        return accuracy, files, ["NNCF + OpenVINO: not asked for"]
    try:
        files["nncf_openvino"] = peer_nncf(fp32, calibration, os.path.join(folder, f"{name}_nncf.xml"))
        call = openvino_call(files["nncf_openvino"])
        accuracy["nncf_openvino"] = top1(_batched(lambda x: call(x)[0].copy(), images), labels)
    except ImportError as error:
        accuracy["nncf_openvino"] = None
        not_measured.append(f"NNCF + OpenVINO: {error.name} is not installed (pip install 'dlqnb[bench]')")
    return accuracy, files, not_measured


def measure_network(
    name: str,
    net: nn.Module,
    calibration: torch.Tensor,
    validation: tuple[torch.Tensor, torch.Tensor],
    folder: str,
    targets: tuple[str, ...] = ("gpu", "cpu"),
    recipes: tuple[Recipe, ...] = RECIPES,
    openvino: bool = True,
    calibration_labels: torch.Tensor | None = None,
    selection: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Every accuracy of the benchmark for one network (see the module's description).

    Args:
        name: The network's name in the results.
        net: The float network (eval mode).
        calibration: The calibration images (N×C×H×W), the same for dlqnb and the peers.
        validation: ``(images, labels)`` every accuracy is measured on.
        folder: Where the exported files are written (``files`` in the result).
        targets: dlqnb's targets to measure; each recipe runs on each of them (its own ``target`` is
            replaced).
        recipes: The recipes, :data:`RECIPES` by default; the first should be ``"default"``.
        openvino: Run the deployed files on OpenVINO and measure NNCF + OpenVINO (where installed).
        calibration_labels: The calibration images' labels, which the recipes with float layers choose
            them by; None: those recipes are reported as errors.
        selection: ``(images, labels)`` the deployed recipe is picked on, neither calibration nor
            validation images (default: the labelled calibration images; without those either, the
            validation images pick).
        progress: Show a progress bar over the recipes.

    Returns:
        ``network``, ``float``, ``dlqnb`` (per target: ``emulation``, ``onnxruntime``, ``openvino``),
        ``recipes`` (rows: ``recipe``, ``target``, ``accuracy``, ``prepared_float_accuracy`` (of the float network
        the recipe quantized: the network's own, unless its clipped ReLUs were replaced), ``selection_accuracy`` and
        ``selection_error`` (as the deployed file computes the selection images), ``status``,
        ``float_layers``), ``best`` (the recipe
        :func:`best_on_selection` picks, with its deployed accuracies), ``peers``, ``files``, ``not_measured``
        and ``seconds``. Accuracies are shares in [0, 1]; None where not measured.
    """
    from dlqnb.deploy import export_qdq_onnx

    started = time.time()
    images, labels = validation
    backends = ["onnxruntime"] + (["openvino"] if openvino and importlib.util.find_spec("openvino") else [])
    result: dict[str, Any] = {"network": name, "float": _float_accuracy(net, images, labels), "dlqnb": {}, "recipes": [], "not_measured": []}
    if openvino and "openvino" not in backends:
        result["not_measured"].append("dlqnb's files on OpenVINO: openvino is not installed")
    files: dict[str, str] = {}
    quantizers: dict[tuple[str, str], Any] = {}
    labelled = None if calibration_labels is None else (calibration, calibration_labels)
    calibrations: SharedCalibrations = {}  # calibration ranges depend on neither the target nor the recipe's types
    picked_on = selection or labelled
    selection_scores = None if picked_on is None else _scores(net, picked_on[0])
    # a recipe asking for the target's own rounding is the same recipe without it
    runs_of = {target: [r for r in recipes if r.rounding is None or r.rounding != TARGET_ROUNDING[target]] for target in targets}
    bar = tqdm(total=sum(map(len, runs_of.values())), desc=f"{name}: recipes", unit="recipe", leave=False, disable=not progress)
    for target in targets:
        runs = runs_of[target]
        for recipe in runs:
            bar.set_postfix_str(f"{recipe.name} ({target})")
            row, q = _run_recipe(net, dataclasses.replace(recipe, target=target), calibration, validation, labelled, calibrations, selection, selection_scores)
            result["recipes"].append(row)
            quantizers[(recipe.name, target)] = q
            bar.update()
        default = quantizers.get((recipes[0].name, target))
        if default is None:
            raise RuntimeError(f"{name}: dlqnb's {target!r} defaults failed: {result['recipes'][-len(runs)]['status']}")
        files[f"dlqnb_{target}"] = str(export_qdq_onnx(default, os.path.join(folder, f"{name}_dlqnb_{target}.onnx")))
        result["dlqnb"][target] = {"emulation": result["recipes"][-len(runs)]["accuracy"]}
        result["dlqnb"][target].update({backend: _deployed(files[f"dlqnb_{target}"], images, labels, backend) for backend in backends})
    bar.close()
    best = best_on_selection(result["recipes"])
    result["best"] = {key: best[key] for key in ("recipe", "target", "selection_accuracy", "float_layers")}
    result["best"]["emulation"] = best["accuracy"]
    files["dlqnb_best"] = str(export_qdq_onnx(quantizers[(best["recipe"], best["target"])], os.path.join(folder, f"{name}_dlqnb_best.onnx")))
    result["best"].update({backend: _deployed(files["dlqnb_best"], images, labels, backend) for backend in backends})
    peers, peer_files, not_measured = _peers(quantizers[(recipes[0].name, targets[0])], calibration, validation, folder, name, openvino)
    result.update(peers=peers, files={**files, **peer_files}, seconds=round(time.time() - started, 1))
    result["not_measured"] += not_measured
    return result


def bench_accuracy(
    models: list[str] | None = None, quick: bool = False, folder: str | None = None, progress: bool = True, recipes: list[str] | None = None
) -> dict[str, Any]:
    """The accuracy benchmark over the trained zoo (networks trained first where not cached).

    Args:
        models: Trained-zoo names (default: all of them; with ``quick``, the first).
        quick: A tiny run: 2 calibration, 2 selection and 5 validation images per class, the ``"cpu"`` target only,
            the defaults and per-channel recipes only.
        folder: Where the exported files go (default: a new temporary folder).
        progress: Show a progress bar over the networks.
        recipes: Names of :data:`RECIPES` to measure (default: all); ``"default"`` is always measured.

    Returns:
        ``cpu`` (the CPU model and int8 instruction sets), ``versions``, ``images`` (calibration,
        selection and validation counts) and ``networks`` (one :func:`measure_network` result each).

    Raises:
        ValueError: An unknown model or recipe name (the message lists the known ones).
    """
    from dlqnb.deploy.host import cpu_summary, installed_version
    from dlqnb.training.trained_zoo import ARCHITECTURES, trained_network, trained_zoo_names, zoo_data

    names = models or (trained_zoo_names()[:1] if quick else trained_zoo_names())
    unknown = [name for name in names if name not in ARCHITECTURES]
    if unknown:
        raise ValueError(f"unknown trained-zoo networks {unknown}; expected some of {trained_zoo_names()}")
    known = [recipe.name for recipe in RECIPES]
    if recipes is not None and set(recipes) - set(known):
        raise ValueError(f"unknown recipes {sorted(set(recipes) - set(known))}; expected some of {known}")
    chosen = tuple(r for r in RECIPES if recipes is None or r.name in recipes or r is RECIPES[0])
    calibration, calibration_labels = zoo_data("calibration", per_class=2 if quick else None)
    selection = zoo_data("selection", per_class=2 if quick else None)
    validation = zoo_data("validation", per_class=5 if quick else None)
    folder = folder or tempfile.mkdtemp(prefix="dlqnb-accuracy-")
    options: dict[str, Any] = {"targets": ("cpu",), "recipes": chosen[:2]} if quick else {"recipes": chosen}
    options.update(calibration_labels=calibration_labels, selection=selection)
    networks = []
    for name in tqdm(names, desc="accuracy benchmark", unit="network", disable=not progress):
        row = measure_network(name, trained_network(name, progress=progress), calibration, validation, folder, progress=progress, **options)
        row["family"] = ARCHITECTURES[name].family
        networks.append(row)
        # each network's row as soon as it is measured: a long run shows its results as it goes
        tqdm.write(accuracy_table({"networks": [row]}).splitlines()[-1], file=sys.stderr)
    return {
        "benchmark": "accuracy",
        "cpu": cpu_summary(),
        "versions": {module: installed_version(module) for module in ("torch", "torchvision", "onnxruntime", "openvino", "nncf")},
        "images": {"calibration": len(calibration), "selection": len(selection[1]), "validation": len(validation[1])},
        "max_accuracy_drop": MAX_ACCURACY_DROP,
        "networks": networks,
    }


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _deployments(cell: dict[str, Any]) -> str:
    """``emulation / ONNX Runtime / OpenVINO`` accuracies of one dlqnb model, in percent."""
    return " / ".join(_percent(cell.get(key)) for key in ("emulation", "onnxruntime", "openvino"))


def accuracy_table(result: dict[str, Any]) -> str:
    """The benchmark's results as a Markdown table, one row per network (top-1 in percent).

    Example:
        >>> row = {"network": "net", "float": 0.9, "dlqnb": {"gpu": {"emulation": 0.8, "onnxruntime": 0.8}},
        ...        "best": {"recipe": "per-channel", "target": "gpu", "emulation": 0.89},
        ...        "peers": {"ort_per_tensor": 0.85, "ort_per_channel": 0.88, "nncf_openvino": None}}
        >>> print(accuracy_table({"networks": [row]}).splitlines()[2])
        | net | 90.0 | 80.0 / 80.0 / n/a | n/a | 89.0 / n/a / n/a | per-channel (gpu) | 85.0 | 88.0 | n/a |
    """
    lines = [
        "| network | float | gpu default | cpu default | best dlqnb | best recipe | ORT per-tensor | ORT per-channel | NNCF + OpenVINO |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["networks"]:
        dlqnb, best, peers = row["dlqnb"], row["best"], row["peers"]
        cells = [
            row["network"],
            _percent(row["float"]),
            _deployments(dlqnb["gpu"]) if "gpu" in dlqnb else "n/a",
            _deployments(dlqnb["cpu"]) if "cpu" in dlqnb else "n/a",
            _deployments(best),
            f"{best['recipe']} ({best['target']})",
            _percent(peers.get("ort_per_tensor")),
            _percent(peers.get("ort_per_channel")),
            _percent(peers.get("nncf_openvino")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recipes_table(result: dict[str, Any]) -> str:
    """Every recipe's emulated top-1 (percent; "error" where it failed, "n/a" where not measured), one row
    per recipe and target, one column per network; the recipe each network deploys is marked with ``*``.

    Example:
        >>> rows = [{"recipe": "default", "target": "gpu", "accuracy": 0.9}, {"recipe": "bc", "target": "gpu", "accuracy": None}]
        >>> print(recipes_table({"networks": [{"network": "n", "recipes": rows, "best": {"recipe": "default", "target": "gpu"}}]}))
        | recipe | n |
        |---|---|
        | default (gpu) | 90.0* |
        | bc (gpu) | error |
    """
    networks = result["networks"]
    keys = list(dict.fromkeys((r["recipe"], r["target"]) for row in networks for r in row["recipes"]))
    lines = ["| recipe | " + " | ".join(row["network"] for row in networks) + " |", "|---|" + "---|" * len(networks)]
    by_key = [{(r["recipe"], r["target"]): r for r in row["recipes"]} for row in networks]
    picked = [(row.get("best", {}).get("recipe"), row.get("best", {}).get("target")) for row in networks]
    for key in keys:
        cells = []
        for recipes, pick in zip(by_key, picked):
            recipe = recipes.get(key)
            mark = "*" if pick == key else ""
            if recipe is None:
                cells.append("n/a")
            else:
                cells.append("error" if recipe["accuracy"] is None else _percent(recipe["accuracy"]) + mark)
        lines.append(f"| {key[0]} ({key[1]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)
