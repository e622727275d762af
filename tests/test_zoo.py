"""The networks users bring: every torchvision classifier up to about 30 M parameters, random weights,
small inputs, on both targets (calibrate → quantize → export → ONNX Runtime against the emulation),
and through Taylor pruning (construct → score → prune → extract against the masked network); and,
counted apart, the timm networks torch.fx cannot trace whole, whose untraceable submodules graph
capture keeps whole, as float layers."""

from __future__ import annotations

import pytest

from dlqnb.bench.reach import CAPTURE_FALLBACK_MODELS, check_pruning, check_quantization, classification_models

MODELS = classification_models()

#: Largest difference between ONNX Runtime and the emulation, relative to the largest score, where
#: float ops (SiLU, sigmoid, GELU, LayerNorm, softmax, ...) sit between quantized layers: torch and
#: ONNX Runtime compute those in float with different kernels, and a value that lands on the other
#: side of a rounding boundary at the next quantization point moves by one step there.
RELATIVE_TOLERANCE = 0.1


def test_the_zoo_is_the_one_the_readme_counts():
    assert len(MODELS) == 41
    assert {"squeezenet1_1", "resnet18", "efficientnet_b0", "mobilenet_v3_large", "convnext_tiny", "swin_t", "densenet121"} <= set(MODELS)


@pytest.mark.parametrize("target", ["gpu", "cpu"])
@pytest.mark.parametrize("name", MODELS)
def test_calibrate_quantize_export_onnxruntime(name, target, tmp_path):
    row = check_quantization(name, target, tmp_path)
    assert row["captured_whole"] == [], row  # torch.fx traces every torchvision classifier whole
    _assert_deployment_agrees(row)


#: The submodules graph capture keeps whole (MobileViT blocks: their forward resizes on the input's
#: height and width), by model.
CAPTURED_WHOLE = {"mobilevit_xxs": ["stages_2_1", "stages_3_1", "stages_4_1"]}


@pytest.mark.parametrize("target", ["gpu", "cpu"])
@pytest.mark.parametrize("name", CAPTURE_FALLBACK_MODELS)
def test_capture_fallback_calibrate_quantize_export_onnxruntime(name, target, tmp_path):
    pytest.importorskip("timm", reason="the capture fallback networks come from timm (the test extra installs it)")
    row = check_quantization(name, target, tmp_path)
    assert row["captured_whole"] == CAPTURED_WHOLE[name], row
    assert row["float_layers"] >= len(CAPTURED_WHOLE[name])
    _assert_deployment_agrees(row)


def _assert_deployment_agrees(row):
    assert row["error"] == "", row.get("traceback", row["error"])
    assert row["quantized"] and row["exported"]  # export succeeds whenever quantize does
    assert row["quantized_layers"] > 0
    assert row["top1_agreement_decided"] == 1.0, row
    assert row["relative_difference"] <= RELATIVE_TOLERANCE, row
    if row["float_layers"] == 0:
        # every op is one ONNX Runtime runs in integers: the emulation (rounding ties to even where it
        # quantizes, as ONNX Runtime and TensorRT do) is exact
        assert row["bit_exact"], row


@pytest.mark.parametrize("name", CAPTURE_FALLBACK_MODELS)
def test_capture_fallback_taylor_pruning_constructs(name):
    pytest.importorskip("timm", reason="the capture fallback networks come from timm (the test extra installs it)")
    row = check_pruning(name)
    assert row["error"] == "", row["error"]
    if row["prunable_layers"]:
        assert row["max_difference"] < 1e-5, row


#: Networks whose every convolution is tied to others (depthwise convolutions then permutes and
#: LayerNorm, channel shuffles, windowed attention): they construct with nothing to prune.
ALL_TIED = {"convnext_tiny", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0", "swin_t", "swin_v2_t"}


@pytest.mark.parametrize("name", MODELS)
def test_taylor_pruning_extracts_what_it_masks(name):
    row = check_pruning(name)
    assert row["error"] == "", row["error"]
    if name in ALL_TIED:
        assert row["prunable_layers"] == 0
        return
    assert row["prunable_layers"] > 0 and row["pruned_filters"] == 8
    assert row["max_difference"] < 1e-5, row
