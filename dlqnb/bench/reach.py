"""The standing check that dlqnb handles the networks users bring: torchvision's classification zoo,
and networks torch.fx cannot trace whole (:func:`capture_fallback_models`, from timm).

:func:`check_quantization` takes one classifier (random weights, small inputs) through
calibrate → quantize → export → ONNX Runtime on one target and compares ONNX Runtime's scores with
the emulation's; :func:`check_pruning` constructs a :class:`~dlqnb.TaylorPrunableNetwork`, scores,
prunes and extracts it, and compares the extracted network with the masked one. The test suite runs
both on every model; ``python -m dlqnb.bench.benchmarks zoo`` prints them as a table.

Example:
    >>> row = check_quantization("squeezenet1_1", "cpu")
    >>> row["exported"], row["top1_agreement"], row["bit_exact"]
    (True, 1.0, True)
"""

from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

__all__ = [
    "INPUT_SIZES",
    "MAX_PARAMETERS",
    "capture_fallback_models",
    "check_network",
    "check_pruning",
    "check_quantization",
    "classification_models",
    "make_model",
]

#: "Up to about 30 M parameters": every torchvision classifier up to EfficientNet-B5's 30.4 M.
MAX_PARAMETERS = 30_500_000
#: Inputs small enough for seconds per model; Inception-v3 needs 75×75 at least.
INPUT_SIZES = {"inception_v3": 75}
DEFAULT_SIZE = 64
CALIBRATION_IMAGES = 8
#: timm classifiers whose forward torch.fx cannot trace whole (control flow on tensor sizes in a
#: submodule): dlqnb captures those submodules whole, as float layers (:mod:`dlqnb.core.capture`).
CAPTURE_FALLBACK_MODELS = ("mobilevit_xxs",)


def classification_models(max_parameters: int = MAX_PARAMETERS) -> list[str]:
    """torchvision's classification models with at most ``max_parameters`` parameters, by name."""
    models = torchvision.models
    names = []
    for name in sorted(models.list_models(module=models)):
        weights = list(models.get_model_weights(name))
        if weights and weights[0].meta.get("num_params", max_parameters + 1) <= max_parameters:
            names.append(name)
    return names


def capture_fallback_models() -> list[str]:
    """The timm classifiers that need graph capture's fallback (some submodules kept whole), by name;
    empty where timm is not installed.

    Example:
        >>> set(capture_fallback_models()) <= set(CAPTURE_FALLBACK_MODELS)
        True
    """
    try:
        import timm  # noqa: F401  (an optional dependency: the test extra installs it)
    except ImportError:
        return []
    return list(CAPTURE_FALLBACK_MODELS)


def make_model(name: str, num_classes: int = 10, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A torchvision classifier, or a timm one of :data:`CAPTURE_FALLBACK_MODELS`, with random weights
    (random BatchNorm statistics too, so that folding is exercised) and calibration images of a size
    it takes."""
    torch.manual_seed(seed)
    if name in CAPTURE_FALLBACK_MODELS:
        import timm

        net = timm.create_model(name, pretrained=False, num_classes=num_classes).eval()
    else:
        extra = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.normal_(0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    size = INPUT_SIZES.get(name, DEFAULT_SIZE)
    images = torch.rand(CALIBRATION_IMAGES, 3, size, size, generator=generator)
    return net, images


def check_quantization(name: str, target: str, folder: str | Path | None = None) -> dict[str, Any]:
    """calibrate → quantize → export → ONNX Runtime for one model of :func:`make_model` on one target (see
    :func:`check_network`)."""
    try:
        net, images = make_model(name)
    except Exception as error:
        return {"model": name, "target": target, "exported": False, "error": f"build: {type(error).__name__}: {error}"}
    return check_network(net, images, target, folder, name=name)


def check_network(net: nn.Module, images: torch.Tensor, target: str, folder: str | Path | None = None, name: str = "") -> dict[str, Any]:
    """calibrate → quantize → export → ONNX Runtime for one network on one target.

    Returns:
        A row: ``model``, ``target``, ``parameters``, ``quantized_layers``, ``float_layers``,
        ``quantized`` / ``exported`` (bool), ``top1_agreement``, ``max_difference`` and
        ``relative_difference`` (to the largest score) of ONNX Runtime against the emulation,
        ``bit_exact``, ``captured_whole`` (the layers graph capture kept whole, computed in float:
        :mod:`dlqnb.core.capture`), ``target_rule_difference`` (relative, against the emulation that rounds ties
        as the target's MATLAB rule does: away from zero on ``"gpu"``), ``top1_agreement_decided`` (over the ``decided_samples`` whose top-1 margin
        exceeds twice the largest difference), ``seconds``, and ``error`` (the stage and message where
        it stopped, else "").
    """
    from dlqnb.core.capture import float_reason
    from dlqnb.core.graph import layer_name
    from dlqnb.deploy.export import export_qdq_onnx
    from dlqnb.quantizer import DLQuantizer
    from dlqnb.deploy import load_int8

    start = time.perf_counter()
    row: dict[str, Any] = {"model": name or type(net).__name__, "target": target, "parameters": None, "quantized_layers": None, "float_layers": None,
                           "quantized": False, "exported": False, "top1_agreement": None, "max_difference": None, "relative_difference": None,
                           "bit_exact": None, "captured_whole": None, "target_rule_difference": None, "decided_samples": None, "top1_agreement_decided": None,
                           "seconds": None, "error": ""}
    stage = "calibrate"
    try:
        row["parameters"] = sum(p.numel() for p in net.parameters())
        quantizer = DLQuantizer(net, execution_environment=target)
        quantizer.calibrate(images, progress=False)
        stage = "quantize"
        # what the deployment computes: TensorRT and ONNX Runtime round ties to even where they quantize
        with torch.no_grad():
            expected = quantizer.quantize(rounding="half_even")(images).numpy()
            target_rule = quantizer.quantize()(images).numpy() if target == "gpu" else expected
        plan = quantizer.plan()
        row["quantized_layers"], row["float_layers"] = len(plan.layers), len(plan.float_layers())
        row["quantized"] = True
        row["captured_whole"] = [layer_name(node) for node in quantizer.optimized.nodes() if float_reason(node)]
        stage = "export"
        with tempfile.TemporaryDirectory(dir=folder) as where:
            path = export_qdq_onnx(quantizer, Path(where) / f"model_{target}.onnx")
            row["exported"] = True
            stage = "onnxruntime"
            scores = load_int8(path, backend="onnxruntime").predict(images.numpy())
        row["top1_agreement"] = float((scores.argmax(1) == expected.argmax(1)).mean())
        row["max_difference"] = float(np.abs(scores - expected).max())
        row["relative_difference"] = row["max_difference"] / max(float(np.abs(expected).max()), 1e-12)
        row["bit_exact"] = bool(np.array_equal(scores, expected))
        row["target_rule_difference"] = float(np.abs(scores - target_rule).max()) / max(float(np.abs(target_rule).max()), 1e-12)
        # random weights give near-ties: only a sample whose top-1 margin exceeds twice the largest
        # difference has a top-1 the deployment must reproduce
        top2 = np.sort(expected, axis=1)[:, -2:]
        decided = (top2[:, 1] - top2[:, 0]) > 2 * row["max_difference"]
        row["decided_samples"] = int(decided.sum())
        row["top1_agreement_decided"] = float((scores.argmax(1) == expected.argmax(1))[decided].mean()) if decided.any() else 1.0
    except Exception as error:  # the row records where and why; the zoo goes on
        row["error"] = f"{stage}: {type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        row["traceback"] = traceback.format_exc(limit=3)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def check_pruning(name: str) -> dict[str, Any]:
    """Taylor pruning of one model: construct, score one batch, prune, extract, compare.

    Returns:
        A row: ``model``, ``prunable_layers``, ``pruned_filters``, ``max_difference`` between the
        extracted and the masked network (relative to the largest score), ``seconds``, ``error``.
    """
    from dlqnb.pruning.taylor import TaylorPrunableNetwork

    start = time.perf_counter()
    row: dict[str, Any] = {"model": name, "prunable_layers": None, "pruned_filters": None, "max_difference": None, "seconds": None, "error": ""}
    stage = "build"
    try:
        net, images = make_model(name)
        stage = "construct"
        pn = TaylorPrunableNetwork(net)
        row["prunable_layers"] = len(pn.layers)
        before = pn.num_prunables
        if before == 0:  # every convolution's channels are tied: nothing to prune, nothing to compare
            row["pruned_filters"] = 0
            row["seconds"] = round(time.perf_counter() - start, 2)
            return row
        stage = "update_score"
        out, activations = pn.forward(images)
        gradients = torch.autograd.grad(out.logsumexp(1).sum(), activations)
        pn = pn.update_score(activations, gradients)
        stage = "update_prunables"
        pn = pn.update_prunables(max_to_prune=8)
        row["pruned_filters"] = before - pn.num_prunables
        stage = "to_module"
        small = pn.to_module()
        with torch.no_grad():
            masked, _ = pn.forward(images)
            extracted = small(images)
        scale = float(masked.abs().max()) or 1.0
        row["max_difference"] = float((extracted - masked).abs().max()) / scale
    except Exception as error:
        row["error"] = f"{stage}: {type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row
