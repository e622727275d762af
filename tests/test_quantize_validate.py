"""quantize() emulation, validate(), quantization_details, the calibration file, excluded layers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import dlqnb
from dlqnb import CalibrationFileError, DLQuantizer, NotCalibratedError, QuantizationOptions, ValidationError, quantization_details
from dlqnb.emulation.network import EmulatedLayer


def minmax_fraction_length(max_abs: float, word_length: int = 8) -> int:
    """MATLAB's MinMax type, from its definition (*Quantization of Deep Neural Networks*): the type's
    top magnitude bit is the MSB of the largest absolute value, ``2**msb <= max_abs < 2**(msb + 1)``,
    one bit above it holds the sign and the other ``word_length - 2`` bits lie below it, so the
    least significant bit is ``2**(msb - word_length + 2)``."""
    msb = 0
    while 2.0**msb > max_abs:
        msb -= 1
    while 2.0 ** (msb + 1) <= max_abs:
        msb += 1
    return -(msb - word_length + 2)


def test_types_follow_the_msb_of_the_largest_magnitude():
    """Hand-worked: a power of two is its own MSB, so ``7 - ceil(log2(max_abs))`` is one bit too fine there."""
    net = nn.Sequential(nn.Linear(2, 1)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -0.25]]))  # max |w| = 1 = 2**0: LSB 2**-6
        net[0].bias.copy_(torch.tensor([0.88489]))  # 2**-1 <= 0.88489 < 2**0: LSB 2**-7
    x = torch.tensor([[-32.0, 0.1]])  # 32 = 2**5: LSB 2**-1 (codes -64 ... 63.5 hold -32)
    quantizer = DLQuantizer(net)
    quantizer.calibrate(x, progress=False)  # output -32 - 0.025 + 0.88489 = -31.14011: 2**4 <= 31.1 < 2**5, LSB 2**-2
    types = quantizer.quantization_types().set_index("Learnables / Activations")
    assert types.loc["Weights", "FractionLength"] == 6 and types.loc["Bias", "FractionLength"] == 7
    assert types.loc["Activations", "FractionLength"].tolist() == [1, 2]  # input, output (network order)
    assert types.loc["Activations", "MSB"].tolist() == [5, 4] and types.loc["Activations", "LSB"].tolist() == [-1, -2]
    assert [minmax_fraction_length(m) for m in (1.0, 0.88489, 32.0, 31.14011)] == [6, 7, 1, 2]  # the reference agrees


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)  # exact here: x is a ratio of small integers in float64


def integer_conv_reference(x, conv, f_in, f_w, f_out):
    """The GPU target's layer: int8 input × int8 weight → exact integer accumulator, scaled to single
    precision, plus the single-precision bias → ReLU → requantize (ties away from zero, saturate)."""
    x_codes = round_half_away(x.double() * 2.0**f_in).clamp(-128, 127).long()
    w_codes = round_half_away(conv.weight.detach().double() * 2.0**f_w).clamp(-128, 127).long()
    columns = F.unfold(x_codes.double(), conv.kernel_size, padding=conv.padding).long()  # N × (C·k·k) × L
    acc = torch.einsum("ok,nkl->nol", w_codes.view(w_codes.shape[0], -1), columns)
    real = (acc.double() * 2.0 ** -(f_in + f_w)).float() + conv.bias.detach().float().view(1, -1, 1)
    real = real.clamp(min=0)  # fused ReLU
    out = round_half_away(real.double() * 2.0**f_out).clamp(-128, 127)
    side = int(math.isqrt(out.shape[-1]))
    return (out * 2.0**-f_out).view(x.shape[0], -1, side, side)


def integer_conv_reference_cpu(x, conv, f_in, f_w, f_out):
    """The CPU target's layer (ONNX Runtime's QLinearConv): int8 input × int8 weight → int64 accumulate
    + int32 bias → ReLU → requantize (ties to even, saturate to uint8)."""
    x_codes = torch.round(x.double() * 2.0**f_in).clamp(-128, 127).long()
    w_codes = torch.round(conv.weight.detach().double() * 2.0**f_w).clamp(-128, 127).long()
    b_codes = torch.round(conv.bias.detach().double() * 2.0 ** (f_in + f_w)).long()
    columns = F.unfold(x_codes.double(), conv.kernel_size, padding=conv.padding).long()
    acc = (torch.einsum("ok,nkl->nol", w_codes.view(w_codes.shape[0], -1), columns) + b_codes.view(1, -1, 1)).clamp(min=0)
    out = torch.round(acc.double() / 2.0 ** (f_in + f_w - f_out)).clamp(0, 255)  # torch.round: ties to even
    side = int(math.isqrt(out.shape[-1]))
    return (out * 2.0**-f_out).view(x.shape[0], -1, side, side)


def conv_relu_fraction_lengths(net: nn.Sequential, x: torch.Tensor) -> tuple[int, int, int]:
    """MinMax fraction lengths of a conv + ReLU network's input, weights and output, from the float ranges."""
    with torch.no_grad():
        output = net(x)
    return tuple(minmax_fraction_length(float(t.detach().abs().max())) for t in (x, net[0].weight, output))


def test_one_conv_layer_equals_the_integer_reference():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(4, 3, 10, 10) * 3
    quantizer = DLQuantizer(net)
    quantizer.calibrate(x, progress=False)
    f_in, f_w, f_out = conv_relu_fraction_lengths(net, x)
    expected = integer_conv_reference(x, net[0], f_in, f_w, f_out)
    with torch.no_grad():
        actual = quantizer.quantize()(x)
    assert torch.equal(actual.double(), expected)


def test_large_fan_in_accumulates_in_float64():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4096, 3)).eval()
    quantizer = DLQuantizer(net)
    quantizer.calibrate(torch.rand(2, 4096), progress=False)
    layer = next(m for m in quantizer.quantize().modules() if isinstance(m, EmulatedLayer))
    assert layer.accumulate_dtype == torch.float64  # 4096 · 128 · 128 > 2**24


def test_memory_accounting_of_squeezenet(squeezenet, images):
    assert sum(p.numel() for p in squeezenet.parameters()) == 725_061
    quantizer = DLQuantizer(squeezenet)
    quantizer.calibrate(images, progress=False)
    result = quantizer.validate([(images, torch.arange(len(images)) % 5)], progress=False)
    memory = result.metric_results.set_index("NetworkImplementation")["LearnableParameterMemory(bytes)"]
    convs = [m for m in squeezenet.modules() if isinstance(m, nn.Conv2d)]
    expected = sum(c.weight.numel() for c in convs) + 4 * sum(c.bias.numel() for c in convs)
    assert memory["Floating-Point"] == 2_900_244
    assert memory["Quantized"] == expected
    assert 0.74 < 1 - memory["Quantized"] / memory["Floating-Point"] < 0.76  # "about 75 % less"


def test_validate_table_and_metrics(squeezenet, images):
    quantizer = DLQuantizer(squeezenet)
    quantizer.calibrate(images, progress=False)
    labels = torch.arange(len(images)) % 5
    result = quantizer.validate([(images, labels)], progress=False)
    assert result.num_samples == len(images)
    table = result.metric_results
    assert list(table.columns) == ["NetworkImplementation", "MetricOutput", "LearnableParameterMemory(bytes)"]
    assert table["NetworkImplementation"].tolist() == ["Floating-Point", "Quantized"]
    assert table["MetricOutput"].iloc[0] == float((squeezenet(images).argmax(1) == labels).float().mean())

    def mean_score(scores, labels):
        return float(scores.mean())

    two = quantizer.validate([(images, labels)], QuantizationOptions(metric_fcn=[dlqnb.validation.top1_accuracy, mean_score]), progress=False)
    assert two.metric_results["MetricName"].tolist() == ["top1_accuracy"] * 2 + ["mean_score"] * 2


def test_validate_errors(squeezenet, images):
    quantizer = DLQuantizer(squeezenet)
    with pytest.raises(NotCalibratedError, match="calibrate"):
        quantizer.validate(images)
    quantizer.calibrate(images, progress=False)
    with pytest.raises(ValidationError, match="validation batch 0 of shape \\(2, 4, 64, 64\\)"):
        quantizer.validate(torch.rand(2, 4, 64, 64), progress=False)
    with pytest.raises(ValueError, match="needs labels"):
        quantizer.validate(images, progress=False)


def test_float_and_emulated_accuracy_agree_on_a_trained_network():
    net = dlqnb.zoo.digits_custom()
    training, validation = dlqnb.zoo.digits_split()
    quantizer = DLQuantizer(net)
    quantizer.calibrate(training, progress=False)
    result = quantizer.validate(validation, progress=False)
    accuracy = result.metric_results.set_index("NetworkImplementation")["MetricOutput"]
    assert accuracy["Floating-Point"] > 0.95
    assert abs(accuracy["Floating-Point"] - accuracy["Quantized"]) <= 0.01
    agreement = float((result.float_scores.argmax(1) == result.quantized_scores.argmax(1)).float().mean())
    assert agreement >= 0.98


def test_details_of_quantized_and_unquantized_networks(squeezenet, images):
    plain = quantization_details(squeezenet)
    assert (plain.is_quantized, plain.target_library, plain.quantized_layer_names, len(plain.quantized_learnables)) == (False, "", [], 0)
    quantizer = DLQuantizer(squeezenet)
    quantizer.calibrate(images, progress=False)
    details = quantization_details(quantizer.quantize())
    assert details.is_quantized and details.target_library == "cudnn"
    assert {"features_0", "features_1", "features_2"} <= set(details.quantized_layer_names)  # conv, fused ReLU, max pool
    # as MATLAB counts: 26 convolutions, the 26 ReLUs fused with them, 3 max poolings; concatenation
    # and dropout only move values and the global average pooling stays float
    assert len(details.quantized_layer_names) == 26 + 26 + 3
    assert "cat" not in details.quantized_layer_names and "classifier_0" not in details.quantized_layer_names
    assert "classifier_3" not in details.quantized_layer_names  # global average pooling stays float
    learnables = details.quantized_learnables
    assert list(learnables.columns) == ["Layer", "Parameter", "Value"] and len(learnables) == 52
    weights = learnables.iloc[0]
    assert (weights["Layer"], weights["Parameter"], weights["Value"].dtype) == ("features_0", "Weights", torch.int8)
    assert tuple(weights["Value"].shape) == (64, 3, 3, 3)


def test_cpu_target_uses_unsigned_types_and_ties_to_even(squeezenet, images):
    quantizer = DLQuantizer(squeezenet, execution_environment="cpu")
    quantizer.calibrate(images, progress=False)
    types = quantizer.tensor_types()
    assert types["features_0_features_1"].signed is False  # after ReLU: min >= 0
    qnet = quantizer.quantize()
    assert quantization_details(qnet).target_library == "onnxruntime"
    layer = qnet.get_submodule("features_0_features_1")
    assert layer.spec.rounding == "half_even" and layer.spec.integer_bias


def test_one_conv_layer_on_the_cpu_target_equals_the_integer_reference():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(4, 3, 10, 10) * 3
    quantizer = DLQuantizer(net, execution_environment="cpu")
    quantizer.calibrate(x, progress=False)
    expected = integer_conv_reference_cpu(x, net[0], *conv_relu_fraction_lengths(net, x))  # uint8 keeps the signed scale
    with torch.no_grad():
        assert torch.equal(quantizer.quantize()(x).double(), expected)


def test_excluded_layers_stay_float(squeezenet, images):
    quantizer = DLQuantizer(squeezenet, excluded_layers=["features_0_features_1"])
    quantizer.calibrate(images, progress=False)
    qnet = quantizer.quantize()
    assert not isinstance(qnet.get_submodule("features_0_features_1"), EmulatedLayer)
    assert "features_0" not in quantization_details(qnet).quantized_layer_names
    memory = quantizer.validate([(images, torch.arange(len(images)) % 5)], progress=False).metric_results
    memory = memory.set_index("NetworkImplementation")["LearnableParameterMemory(bytes)"]
    convs = [m for m in squeezenet.modules() if isinstance(m, nn.Conv2d)]
    int8_weights = sum(c.weight.numel() for c in convs[1:])  # conv1 stays float: 4 bytes a weight
    assert memory["Quantized"] == 4 * convs[0].weight.numel() + int8_weights + 4 * sum(c.bias.numel() for c in convs)
    quantizer.include("features_0_features_1")
    assert isinstance(quantizer.quantize().get_submodule("features_0_features_1"), EmulatedLayer)
    with pytest.raises(KeyError, match="no optimized layer named \\['conv99'\\]"):
        quantizer.exclude("conv99")


def test_gpu_keeps_leaky_relu_layers_float():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(0.1), nn.Conv2d(4, 4, 3), nn.ReLU()).eval()
    quantizer = DLQuantizer(net)
    quantizer.calibrate(torch.rand(2, 3, 8, 8), progress=False)
    reasons = quantizer.unsupported_layers().set_index("Layer")["Reason"]
    assert "leaky ReLU" in reasons["0_1"] and "cudnn" in reasons["0_1"]
    assert quantizer.quantized_layers() == ["2_3"]
    cpu = DLQuantizer(net, execution_environment="cpu")
    cpu.calibrate(torch.rand(2, 3, 8, 8), progress=False)
    assert cpu.quantized_layers() == ["0_1", "2_3"]


def test_classify_returns_class_names():
    net = dlqnb.zoo.digits_custom()
    _, validation = dlqnb.zoo.digits_split()
    predictions = dlqnb.classify(net, validation)
    assert len(predictions) == len(validation) and set(predictions) <= set(net.class_names)
    assert sum(p == t for p, t in zip(predictions, validation.labels)) / len(predictions) > 0.95
    with pytest.raises(ValueError, match="class names"):
        dlqnb.classify(nn.Sequential(nn.Flatten()), validation)


class TestCalibrationFile:
    @pytest.fixture
    def saved(self, squeezenet, images, tmp_path):
        quantizer = DLQuantizer(squeezenet, excluded_layers=["features_0_features_1"])
        quantizer.calibrate(images, progress=False)
        path = tmp_path / "squeezenetQuantObj.safetensors"
        quantizer.save(path)
        return quantizer, path

    def test_round_trip(self, saved, squeezenet, images):
        quantizer, path = saved
        loaded = DLQuantizer.load(path, squeezenet)
        assert loaded.calibration_table.equals(quantizer.calibration_table)
        assert loaded.quantization_types().equals(quantizer.quantization_types())
        assert loaded.excluded_layers == {"features_0_features_1"}
        with torch.no_grad():
            assert torch.equal(loaded.quantize()(images), quantizer.quantize()(images))
        assert not list(path.parent.glob(".*tmp"))  # nothing half-written left behind

    def test_rejects_a_different_network(self, saved):
        _, path = saved
        torch.manual_seed(1)
        other = torchvision.models.squeezenet1_1(num_classes=5)
        with pytest.raises(CalibrationFileError, match="different network"):
            DLQuantizer.load(path, other)

    def test_rejects_edits_truncation_and_newer_versions(self, saved, squeezenet, tmp_path):
        _, path = saved
        raw = path.read_bytes()
        edited = tmp_path / "edited.safetensors"
        edited.write_bytes(raw[:-8] + bytes(b ^ 0xFF for b in raw[-8:]))
        with pytest.raises(CalibrationFileError, match="checksum"):
            DLQuantizer.load(edited, squeezenet)
        truncated = tmp_path / "truncated.safetensors"
        truncated.write_bytes(raw[: len(raw) // 2])
        with pytest.raises(CalibrationFileError, match="truncated.safetensors.*not a readable"):
            DLQuantizer.load(truncated, squeezenet)
        newer = tmp_path / "newer.safetensors"
        newer.write_bytes(raw.replace(b'\\"version\\": 1}', b'\\"version\\": 9}'))  # the JSON inside the header
        with pytest.raises(CalibrationFileError, match="version 9"):
            DLQuantizer.load(newer, squeezenet)
        with pytest.raises(CalibrationFileError, match="does not exist"):
            DLQuantizer.load(tmp_path / "missing.safetensors", squeezenet)


def test_learnables_are_listed_as_the_emulate_page_lists_them(squeezenet, images):
    """*Emulate Quantized Network Behavior for GPU Target* lists conv1 as ``3×3×3×64 int8`` and its bias as ``1×1×64 single``."""
    q = DLQuantizer(squeezenet, execution_environment="gpu")
    q.calibrate(images, progress=False)
    summary = quantization_details(q.quantize()).learnables_summary()
    first = summary[summary["Layer"] == "features_0"].set_index("Parameter")["Value"]
    assert first["Weights"] == "3×3×3×64 int8" and first["Bias"] == "1×1×64 single"
    classifier = summary[summary["Layer"] == "classifier_1"].set_index("Parameter")["Value"]
    assert classifier["Weights"] == "1×1×512×5 int8"  # squeezenet's classifier is a 1×1 convolution to 5 classes
