"""Empirical bias correction: measured against plain PyTorch, applied by the plan, saved, exported."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from dlqnb import DLQuantizer, NotCalibratedError
from dlqnb.errors import DataError
from dlqnb.calibration.file import write_calibration
from dlqnb.deploy import export_qdq_onnx, load_int8

#: Weight fraction length of the biased layers: every weight is below 0.5 and at least 0.25, so MATLAB's
#: MinMax rule gives 6 - floor(log2(max|w|)) = 6 - (-2) = 8.
WEIGHT_FRACTION = 8


def biased_weights(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Weights 0.4 of a step above a grid point of 2**-8: every one rounds down by the same amount,
    so with positive inputs the quantized layer's output is shifted down in every channel."""
    codes = torch.randint(64, 128, shape, generator=generator).double()
    return ((codes + 0.4) / 2**WEIGHT_FRACTION).float()


def biased_network() -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    with torch.no_grad():
        for conv in (net[0], net[2]):
            conv.weight.copy_(biased_weights(tuple(conv.weight.shape), generator))
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
    return net


def images(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 8, 8, 8, generator=torch.Generator().manual_seed(seed)) * 0.9


def output_bias(quantizer: DLQuantizer, x: torch.Tensor) -> torch.Tensor:
    """Mean per channel of (emulated - float) network output, over images and positions."""
    with torch.no_grad():
        return (quantizer.quantize()(x) - quantizer.network(x)).mean(dim=(0, 2, 3))


@pytest.mark.parametrize("environment", ["gpu", "cpu"])
def test_correction_removes_the_mean_output_error_on_new_images(environment):
    quantizer = DLQuantizer(biased_network(), execution_environment=environment)
    calibration = images(32, 1)
    quantizer.calibrate(calibration, progress=False)
    held_out = images(32, 2)
    before = output_bias(quantizer, held_out)
    assert quantizer.correct_bias(calibration, progress=False) is quantizer
    after = output_bias(quantizer, held_out)
    assert before.abs().min() > 0.05  # the rounding really is biased in every channel
    assert after.abs().max() < 0.1 * before.abs().min()


def _round_half_away(values: torch.Tensor) -> torch.Tensor:
    return torch.sign(values) * torch.floor(values.abs() + 0.5)


def test_single_layer_correction_equals_a_plain_pytorch_reference():
    """One conv, "gpu": input in [0, 0.9) gets MinMax fraction length 7 (6 - floor(log2 0.9)), the
    weights 8; the correction is the mean of conv(q(x), q(w)) - conv(x, w) per channel."""
    generator = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Conv2d(8, 4, 3)).eval()
    with torch.no_grad():
        net[0].weight.copy_(biased_weights((4, 8, 3, 3), generator))
    x = images(16, 4)
    quantizer = DLQuantizer(net)
    quantizer.calibrate(x, progress=False)
    quantizer.correct_bias(x, mini_batch_size=5, progress=False)
    x64, w64 = x.double(), net[0].weight.detach().double()
    qx = _round_half_away(x64 * 2**7).clamp(-128, 127) / 2**7
    qw = _round_half_away(w64 * 2**WEIGHT_FRACTION).clamp(-128, 127) / 2**WEIGHT_FRACTION
    expected = (F.conv2d(qx, qw) - F.conv2d(x64, w64)).mean(dim=(0, 2, 3))
    (name,) = quantizer.bias_corrections
    torch.testing.assert_close(torch.tensor(quantizer.bias_corrections[name], dtype=torch.float64), expected, atol=2e-6, rtol=0)
    corrected = quantizer.plan().layers[name].bias.double()
    torch.testing.assert_close(corrected, net[0].bias.detach().double() - expected, atol=2e-6, rtol=0)


def test_one_pass_and_sequential_differ_only_downstream():
    """The first layer sees no earlier correction: both orders measure it alike; the second differs."""
    x = images(16, 5)
    one_pass = DLQuantizer(biased_network())
    one_pass.calibrate(x, progress=False)
    sequential = DLQuantizer(biased_network())
    sequential.calibrate(x, progress=False)
    one_pass.correct_bias(x, sequential=False, progress=False)
    sequential.correct_bias(x, progress=False)
    assert one_pass.bias_corrections["0_1"] == pytest.approx(sequential.bias_corrections["0_1"], abs=1e-9)
    assert one_pass.bias_corrections["2"] != pytest.approx(sequential.bias_corrections["2"], abs=1e-6)


class BranchingNet(nn.Module):
    """Two branches that meet in an addition, and a layer after them: later layers read corrected earlier ones."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.stem, self.left, self.right, self.head = nn.Conv2d(8, 6, 3), nn.Conv2d(6, 6, 1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 3, 1)
        with torch.no_grad():
            for conv in (self.stem, self.left, self.right, self.head):
                conv.weight.copy_(biased_weights(tuple(conv.weight.shape), generator))

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return self.head(torch.relu(self.left(y) + self.right(y)))


def _sequential_reference(quantizer: DLQuantizer, x: torch.Tensor, batch: int, rounding=None) -> dict[str, list[float]]:
    """The definition, computed the plain way: for each layer in network order, a fresh network carrying
    the corrections before it, run batch by batch; the layer's mean pre-activation output minus the float one."""
    from dlqnb.emulation.network import EmulatedLayer

    corrections: dict[str, list[float]] = {}
    for name in quantizer.with_bias_corrections({}).plan().layers:
        network = quantizer.with_bias_corrections(corrections).quantize(rounding)
        (emulated,) = [m for m in network.modules() if isinstance(m, EmulatedLayer) and m.plan.name == name]
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}

        def add(key: str, y: torch.Tensor) -> None:
            sums[key] = sums.get(key, 0) + y.double().sum(dim=(0, 2, 3))
            counts[key] = counts.get(key, 0) + y.numel() // y.shape[1]

        hooks = [quantizer.optimized.fused(name).layer.register_forward_hook(lambda _m, _a, y: add("float", y))]
        if emulated.activation is None:
            hooks.append(emulated.register_forward_hook(lambda _m, _a, y: add("int8", y)))
        else:
            hooks.append(emulated.activation.register_forward_pre_hook(lambda _m, a: add("int8", a[0])))
        with torch.no_grad():
            for start in range(0, len(x), batch):
                quantizer.optimized.module(x[start:start + batch])
                network(x[start:start + batch])
        for hook in hooks:
            hook.remove()
        corrections[name] = (sums["int8"] / counts["int8"] - sums["float"] / counts["float"]).tolist()
    return corrections


@pytest.mark.parametrize("environment, rounding", [("gpu", None), ("cpu", None), ("gpu", "half_even")])
def test_sequential_corrections_follow_their_definition_on_a_branching_network(environment, rounding):
    x = images(13, 8)
    quantizer = DLQuantizer(BranchingNet().eval(), execution_environment=environment)
    quantizer.calibrate(x, progress=False)
    expected = _sequential_reference(quantizer, x, batch=5, rounding=rounding)
    assert len(expected) == 4
    quantizer.correct_bias(x, mini_batch_size=5, progress=False, rounding=rounding)
    assert list(quantizer.bias_corrections) == list(expected)
    for name, values in expected.items():
        assert quantizer.bias_corrections[name] == pytest.approx(values, abs=1e-9), name
    one_pass = quantizer.with_bias_corrections({})
    one_pass.correct_bias(x, mini_batch_size=5, sequential=False, progress=False, rounding=rounding)
    last = list(expected)[-1]  # after three corrected layers, measuring on the uncorrected network differs
    assert one_pass.bias_corrections[last] != pytest.approx(expected[last], abs=1e-6)
    if rounding is not None:  # power-of-two scales make ties common: the rule changes what is measured
        assert expected != _sequential_reference(quantizer, x, batch=5)


def test_cpu_bias_codes_are_the_corrected_bias_at_input_times_weight_scale():
    quantizer = DLQuantizer(biased_network(), execution_environment="cpu")
    x = images(16, 6)
    quantizer.calibrate(x, progress=False)
    uncorrected = quantizer.plan().layers["2"]
    quantizer.correct_bias(x, progress=False)
    layer = quantizer.plan().layers["2"]
    fraction = layer.input_type.fraction_length + layer.weight_type.fraction_length
    corrected = quantizer.optimized.fused("2").layer.bias.detach().double() - torch.tensor(quantizer.bias_corrections["2"], dtype=torch.float64)
    expected = torch.round(corrected * 2**fraction)  # ties to even, the "cpu" rule (no tie here)
    assert layer.bias_codes.dtype == torch.int32
    assert torch.equal(layer.bias_codes.double(), expected)
    assert not torch.equal(layer.bias_codes, uncorrected.bias_codes)
    assert torch.equal(layer.weight_codes, uncorrected.weight_codes)


@pytest.mark.parametrize("setting, value", [("per_channel_weights", True), ("exponent_scheme", "histogram"), ("execution_environment", "cpu")])
def test_changing_a_setting_the_corrections_depend_on_clears_them(setting, value, tmp_path):
    quantizer = DLQuantizer(biased_network())
    x = images(16, 9)
    quantizer.calibrate(x, progress=False)
    quantizer.correct_bias(x, progress=False)
    assert quantizer.bias_corrections
    setattr(quantizer, setting, value)
    with pytest.warns(UserWarning, match=f"measured with .*'{setting}'.*correct_bias"):
        plan = quantizer.plan()
    assert quantizer.bias_corrections == {}
    layer, fused_bias = plan.layers["2"], quantizer.optimized.fused("2").layer.bias.detach().double()
    if layer.bias_codes is None:  # "gpu": the float bias itself
        assert torch.equal(layer.bias.double(), fused_bias)
    else:  # "cpu": the uncorrected bias coded at the input scale times the weight scale
        scale = 2.0 ** -(layer.input_type.fraction_length + layer.weight_type.fraction_length)
        assert torch.equal(layer.bias_codes.double(), torch.round(fused_bias / scale))
    quantizer.save(tmp_path / "q.safetensors")
    assert DLQuantizer.load(tmp_path / "q.safetensors", quantizer.network).bias_corrections == {}


def test_corrections_survive_save_and_load_and_older_files_load(tmp_path):
    net = biased_network()
    x = images(16, 7)
    quantizer = DLQuantizer(net, execution_environment="cpu")
    quantizer.calibrate(x, progress=False)
    quantizer.correct_bias(x, progress=False)
    quantizer.save(tmp_path / "q.safetensors")
    loaded = DLQuantizer.load(tmp_path / "q.safetensors", net)
    assert loaded.bias_corrections == quantizer.bias_corrections  # floats round-trip exactly through JSON
    with torch.no_grad():
        assert torch.equal(loaded.quantize()(x), quantizer.quantize()(x))
    settings = {
        "execution_environment": "cpu",
        "exponent_scheme": "minmax",
        "excluded_layers": [],
        "network_fingerprint": quantizer.network_fingerprint(),
    }  # what files written before bias correction hold
    write_calibration(tmp_path / "old.safetensors", quantizer.calibration_state(), settings)
    old = DLQuantizer.load(tmp_path / "old.safetensors", net)
    assert old.bias_corrections == {}
    fresh = DLQuantizer(net, execution_environment="cpu")
    fresh.calibrate(x, progress=False)
    assert torch.equal(old.plan().layers["2"].bias_codes, fresh.plan().layers["2"].bias_codes)


@pytest.mark.parametrize("corrections, message", [
    ({"2": [float("nan"), 0.0, 0.0]}, "malformed bias_corrections"),
    ({"nope": [0.0, 0.0, 0.0]}, "do not fit this network.*nope"),
    ({"2": [0.0, 0.0]}, "do not fit this network.*'2' has 3 output channels"),
])
def test_a_file_with_bad_bias_corrections_is_an_error_naming_the_file(corrections, message, tmp_path):
    from dlqnb.calibration.file import CalibrationFileError

    net = biased_network()
    quantizer = DLQuantizer(net, execution_environment="cpu")
    quantizer.calibrate(images(8, 3), progress=False)
    settings = {"execution_environment": "cpu", "exponent_scheme": "minmax", "per_channel_weights": False, "excluded_layers": [],
                "network_fingerprint": quantizer.network_fingerprint(), "bias_corrections": corrections}
    write_calibration(tmp_path / "bad.safetensors", quantizer.calibration_state(), settings)
    with pytest.raises(CalibrationFileError, match=f"bad.safetensors.*{message}"):
        DLQuantizer.load(tmp_path / "bad.safetensors", net)


def test_exported_model_carries_the_corrected_bias_and_runs_like_the_emulation(tmp_path):
    x = images(8, 8)
    quantizer = DLQuantizer(biased_network(), execution_environment="cpu")
    quantizer.calibrate(x, progress=False)
    quantizer.correct_bias(x, progress=False)
    path = export_qdq_onnx(quantizer, tmp_path / "corrected.onnx")
    model = onnx.load(path)
    int32 = [numpy_helper.to_array(init) for init in model.graph.initializer if init.data_type == onnx.TensorProto.INT32]
    for name, layer in quantizer.plan().layers.items():
        assert any(array.shape == tuple(layer.bias_codes.shape) and np.array_equal(array, layer.bias_codes.numpy()) for array in int32), name
    props = {prop.key: prop.value for prop in model.metadata_props}
    assert props["dlqnb_bias_corrected_layers"] == '["0_1", "2"]'
    scores = load_int8(path, backend="onnxruntime", threads=1).predict(x)
    with torch.no_grad():
        emulated = quantizer.quantize()(x).numpy()
    step = quantizer.plan().quantize_after["2"].scale
    np.testing.assert_allclose(scores, emulated, rtol=0, atol=step * 1.001)  # a runtime may round a tie the other way: one step


def test_exclude_include_keep_corrections_and_recalibration_clears_them():
    x = images(16, 9)
    quantizer = DLQuantizer(biased_network())
    quantizer.calibrate(x, progress=False)
    quantizer.correct_bias(x, progress=False)
    corrections = quantizer.bias_corrections
    corrected_bias = quantizer.plan().layers["2"].bias.clone()
    quantizer.exclude("0_1")
    assert quantizer.bias_corrections == corrections
    assert "0_1" not in quantizer.plan().layers
    assert torch.equal(quantizer.plan().layers["2"].bias, corrected_bias)  # the quantized layer keeps its correction
    quantizer.include("0_1")
    assert torch.equal(quantizer.plan().layers["2"].bias, corrected_bias)
    with pytest.warns(UserWarning, match="bias corrections .* cleared"):
        quantizer.calibrate(images(4, 10), progress=False)
    assert quantizer.bias_corrections == {}
    uncorrected = quantizer.with_bias_corrections({}).plan().layers["2"].bias
    assert torch.equal(quantizer.plan().layers["2"].bias, uncorrected)


def test_bad_corrections_and_order_errors():
    quantizer = DLQuantizer(biased_network())
    with pytest.raises(NotCalibratedError, match="correct_bias"):
        quantizer.correct_bias(images(2, 0), progress=False)
    quantizer.calibrate(images(4, 0), progress=False)
    with pytest.raises(ValueError, match="layer '2' has 3 output channels; its bias correction has 2 values"):
        quantizer.with_bias_corrections({"2": [0.1, 0.2]})  # refused when given, not when first used
    with pytest.raises(KeyError, match="no optimized layer named"):
        quantizer.with_bias_corrections({"conv9": [0.1]})
    with pytest.raises(ValueError, match="finite"):
        quantizer.with_bias_corrections({"2": [0.1, float("nan"), 0.0]}).plan()


def test_data_of_the_wrong_shape_is_a_data_error_naming_the_argument():
    quantizer = DLQuantizer(biased_network())
    quantizer.calibrate(images(4, 11), progress=False)
    with pytest.raises(DataError, match=r"correct_bias: data batch 0 has shape \(2, 3, 8, 8\); calibration saw inputs of shape \(8, 8, 8\)"):
        quantizer.correct_bias(torch.rand(2, 3, 8, 8), progress=False)


def test_a_failure_on_data_of_the_calibrations_shape_is_raised_as_it_is():
    from dlqnb.evaluation.bias_correction import run_on_data

    def out_of_memory(_batch):
        raise RuntimeError("DefaultCPUAllocator: not enough memory")

    with pytest.raises(RuntimeError, match="not enough memory") as raised:
        run_on_data(out_of_memory, torch.zeros(2, 8, 8, 8), 0, "correct_bias", (8, 8, 8))
    assert not isinstance(raised.value, DataError)
    with pytest.raises(DataError, match="batch 3 has shape"):
        run_on_data(out_of_memory, torch.zeros(2, 3, 8, 8), 3, "correct_bias", (8, 8, 8))


def test_cpu_corrected_bias_codes_saturate_at_the_int32_bounds():
    quantizer = DLQuantizer(biased_network(), execution_environment="cpu")
    quantizer.calibrate(images(4, 12), progress=False)
    layer = quantizer.with_bias_corrections({"2": [1e9, -1e9, 0.0]}).plan().layers["2"]
    assert layer.bias_codes.tolist()[:2] == [-(2**31), 2**31 - 1]  # bias - 1e9 and bias + 1e9, far beyond 2**31 steps
