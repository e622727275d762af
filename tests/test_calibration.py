"""DLQuantizer.calibrate: the calibration table, its ranges and MSB counts, data forms and bad data."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dlqnb import CalibrationError, DataError, DLQuantizer, NotCalibratedError
from dlqnb.quantizer import CALIBRATION_COLUMNS

from conftest import randomize_batchnorm


def calibrated(net, data, **kwargs):
    quantizer = DLQuantizer(net, **kwargs)
    return quantizer, quantizer.calibrate(data, progress=False)


def test_squeezenet_table_shape(squeezenet, images):
    _, table = calibrated(squeezenet, images)
    assert list(table.columns) == CALIBRATION_COLUMNS
    kinds = table["Learnables / Activations"]
    assert (kinds == "Weights").sum() == 26 and (kinds == "Bias").sum() == 26
    # MATLAB's shape: all learnables first, then activations, each in network order
    assert list(kinds[:52]) == ["Weights", "Bias"] * 26 and set(kinds[52:]) == {"Activations"}
    assert table["Optimized Layer Name"].is_unique
    activations = table.loc[kinds == "Activations", "Network Layer Name"].tolist()
    assert activations[:3] == ["x", "features_1", "features_2"]
    assert {"cat", "cat_7", "classifier_0", "flatten"} <= set(activations)
    row = table.iloc[0].tolist()[:3]
    assert row == ["features_0_features_1_Weights", "features_1", "Weights"]


def test_an_input_layer_stands_for_the_network_input():
    from dlqnb.models.networks import DigitsNet

    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    _, table = calibrated(DigitsNet(mean=0.5).eval(), images)
    activations = table[table["Learnables / Activations"] == "Activations"].set_index("Network Layer Name")
    # MATLAB's table has no row for the image before the input layer: the input layer's row is the first
    assert list(activations.index[:2]) == ["input", "relu1"] and "x" not in activations.index
    # and it holds the normalized image, x − mean
    assert activations.loc["input", "MinValue"] == pytest.approx(float(images.min()) - 0.5)
    assert activations.loc["input", "MaxValue"] == pytest.approx(float(images.max()) - 0.5)


def test_learnable_ranges_are_the_folded_parameters():
    torch.manual_seed(0)
    net = randomize_batchnorm(torchvision.models.resnet18(num_classes=3)).eval()
    _, table = calibrated(net, torch.rand(2, 3, 32, 32))
    rows = table.set_index("Optimized Layer Name")
    # fold conv1 + bn1 by hand: w * gamma / sqrt(var + eps), (0 - mean) * gamma / sqrt(var + eps) + beta
    bn = net.bn1
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight = net.conv1.weight * scale.view(-1, 1, 1, 1)
        bias = -bn.running_mean * scale + bn.bias
    layer = "conv1_bn1_relu"
    assert rows.loc[f"{layer}_Weights", "MinValue"] == pytest.approx(float(weight.min()), rel=1e-6)
    assert rows.loc[f"{layer}_Weights", "MaxValue"] == pytest.approx(float(weight.max()), rel=1e-6)
    assert rows.loc[f"{layer}_Bias", "MinValue"] == pytest.approx(float(bias.min()), rel=1e-5)
    assert rows.loc[f"{layer}_Bias", "MaxValue"] == pytest.approx(float(bias.max()), rel=1e-5)
    assert rows.loc["fc_Weights", "MaxValue"] == float(net.fc.weight.detach().max())


def test_activation_ranges_and_counts_match_hooks(squeezenet, images):
    quantizer, table = calibrated(squeezenet, images)
    seen = {}
    hooks = [
        squeezenet.features[1].register_forward_hook(lambda m, i, o: seen.setdefault("relu1", o.clone())),
        squeezenet.features[3].register_forward_hook(lambda m, i, o: seen.setdefault("fire", o.clone())),
    ]
    with torch.no_grad():
        output = squeezenet(images)
    for hook in hooks:
        hook.remove()
    rows = table.set_index("Optimized Layer Name")
    checks = {
        "features_0_features_1_Activations": seen["relu1"],
        "cat_Activations": seen["fire"],  # a Fire module's output is its concatenation
        "flatten_Activations": output,  # the network output has an Activations row
    }
    for row, tensor in checks.items():
        assert rows.loc[row, "MinValue"] == float(tensor.min())
        assert rows.loc[row, "MaxValue"] == float(tensor.max())
        histogram = quantizer.range_stats(row).histogram
        assert histogram.nonzero_counts() == msb_counts(tensor), row
        assert histogram.zeros == int((tensor.abs() < 2.0**-126).sum()), row  # zeros (and float32 subnormals)


def msb_counts(tensor: torch.Tensor) -> dict[int, int]:
    """``{k: how many values have their most significant bit at 2**k}``, from the definition
    ``2**k <= |v| < 2**(k + 1)``: ``frexp`` writes ``|v| = m · 2**e`` with ``0.5 <= m < 1``, so ``k = e - 1``."""
    values = tensor.detach().double().abs().flatten()
    _, exponent = torch.frexp(values[values >= 2.0**-126])
    bits, counts = torch.unique(exponent - 1, return_counts=True)
    return dict(zip(bits.tolist(), counts.tolist()))


def test_msb_reference_agrees_with_hand_worked_bits():
    assert msb_counts(torch.tensor([0.03125, 2.1, -3.0, 16.25, 31.99, 1.0, 0.0])) == {-5: 1, 1: 2, 4: 2, 0: 1}


def test_in_place_ops_do_not_hide_values():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.conv(x)
            z = y * 2  # a second user of y: the ReLU is not fused, and overwrites y in place
            return self.relu(y) + z

    torch.manual_seed(0)
    net = Shared().eval()
    x = torch.randn(2, 3, 8, 8)
    _, table = calibrated(net, x)
    with torch.no_grad():
        conv_out = net.conv(x)
    conv_row = table.set_index("Optimized Layer Name").loc["conv_Activations"]
    assert conv_row["MinValue"] == float(conv_out.min()) < 0


@pytest.mark.parametrize(
    "make_data",
    [
        lambda x, y: x,
        lambda x, y: TensorDataset(x, y),
        lambda x, y: DataLoader(TensorDataset(x, y), batch_size=4),
        lambda x, y: [(x[:4], y[:4]), (x[4:], y[4:])],
        lambda x, y: [x[:1], x[1:]],
    ],
    ids=["tensor", "dataset", "dataloader", "batches", "image-batches"],
)
def test_every_data_form_gives_the_same_table(squeezenet, images, make_data):
    labels = torch.arange(len(images)) % 5
    quantizer, expected = calibrated(squeezenet, images)
    _, table = calibrated(squeezenet, make_data(images, labels))
    assert table.equals(expected)


def test_calibrating_again_widens_the_ranges(squeezenet, images):
    bright = images * 4
    quantizer = DLQuantizer(squeezenet)
    quantizer.calibrate(images, progress=False)
    first = quantizer.calibration_table
    second = quantizer.calibrate(bright, progress=False)
    _, together = calibrated(squeezenet, torch.cat([images, bright]))
    assert second.equals(together)
    assert (second["MaxValue"] >= first["MaxValue"]).all() and (second["MaxValue"] > first["MaxValue"]).any()
    assert quantizer.num_calibration_samples_ == 2 * len(images)
    row = "features_0_features_1_Activations"
    assert quantizer.range_stats(row).count == 2 * len(images) * 64 * 31 * 31


def test_network_left_unmodified_and_in_its_mode(squeezenet, images):
    squeezenet.train()
    before = copy.deepcopy(squeezenet.state_dict())
    calibrated(squeezenet, images)
    assert squeezenet.training
    assert all(torch.equal(before[k], v) for k, v in squeezenet.state_dict().items())


def test_table_needs_calibration(squeezenet):
    with pytest.raises(NotCalibratedError, match="calibrate"):
        DLQuantizer(squeezenet).calibration_table


@pytest.mark.parametrize(
    "data, error, message",
    [
        (torch.empty(0, 3, 64, 64), DataError, "empty"),
        ([], DataError, "empty"),
        (torch.arange(8), DataError, "labels only"),
        (torch.zeros(2, 3, 64, 64, dtype=torch.uint8), DataError, "float images"),
        (torch.full((2, 3, 64, 64), float("nan")), DataError, "NaN or Inf"),
        (torch.rand(2, 4, 64, 64), CalibrationError, "'features_0_features_1'.*batch 0"),
        (torch.rand(2, 3, 4, 4), CalibrationError, "layer '.*' failed on batch 0 of input shape \\(2, 3, 4, 4\\)"),
    ],
    ids=["empty-tensor", "empty-list", "labels-only", "uint8", "nan", "channels", "too-small"],
)
def test_bad_data_gets_a_clear_error(squeezenet, images, data, error, message):
    quantizer = DLQuantizer(squeezenet)
    quantizer.calibrate(images, progress=False)
    before = quantizer.calibration_table
    with pytest.raises(error, match=message):
        quantizer.calibrate(data, progress=False)
    assert quantizer.calibration_table.equals(before)  # a failed calibration changes nothing


def test_overflowing_activations_name_the_layer():
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Flatten()).eval()
    with torch.no_grad():
        net[0].weight.fill_(1e30)
    with pytest.raises(CalibrationError, match="layer '0' .*NaN or Inf"):
        DLQuantizer(net).calibrate(torch.full((1, 1, 2, 2), 1e30), progress=False)


def test_quantization_types_follow_minmax(squeezenet, images):
    quantizer, table = calibrated(squeezenet, images)
    types = quantizer.quantization_types()
    for _, row in types.iterrows():
        max_abs = max(abs(row["MinValue"]), abs(row["MaxValue"]))
        if max_abs > 0:
            top = math.frexp(max_abs)[1] - 1  # exact floor(log2(max_abs))
            assert row["FractionLength"] == 6 - top and row["MSB"] == top
            assert row["Overflow"] == 0


def test_bad_arguments():
    net = nn.Sequential(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="execution_environment"):
        DLQuantizer(net, execution_environment="fpga")
    with pytest.raises(TypeError, match="nn.Module"):
        DLQuantizer("net")
