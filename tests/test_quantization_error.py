"""The clipping/rounding split of each tensor's quantization error, against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlqnb import DLQuantizer
from dlqnb.errors import DataError
from dlqnb.ui.plotting import quantization_error_figure

TYPE_COLUMNS = [
    "Optimized Layer Name", "Network Layer Name", "Learnables / Activations", "MinValue", "MaxValue",
    "FractionLength", "MSB", "LSB", "Overflow", "Underflow", "Zeros", "Count",
]
ERROR_COLUMNS = ["SQNR(dB)", "ClippingSQNR(dB)", "RoundingSQNR(dB)", "Dominant", "Quantized"]


def convolution() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(1, 2, 3)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.4 + 0.05)
        net[0].bias.zero_()
    return net


def images(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 1, 10, 10, generator=torch.Generator().manual_seed(seed))


def hand_split(values: torch.Tensor, calibrated_max_abs: float) -> dict[str, float]:
    """MATLAB's MinMax fraction length, int8 with ties away from zero, and the split, written out."""
    fraction = 6 - math.floor(math.log2(calibrated_max_abs))
    x = values.detach().double().flatten()
    scaled = x * 2.0**fraction
    codes = (torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)).clamp(-128, 127)
    error = codes / 2.0**fraction - x
    outside = (scaled > 127) | (scaled < -128)
    signal = float((x**2).sum())
    clipping, rounding = float((error[outside] ** 2).sum()), float((error[~outside] ** 2).sum())

    def sqnr(noise: float) -> float:
        return math.inf if noise == 0 else 10 * math.log10(signal / noise)

    return {
        "SQNR(dB)": sqnr(clipping + rounding),
        "ClippingSQNR(dB)": sqnr(clipping),
        "RoundingSQNR(dB)": sqnr(rounding),
        "clipping": clipping,
        "rounding": rounding,
    }


def row(table, name: str):
    return table.set_index("Optimized Layer Name").loc[name]


def assert_matches(measured, expected: dict[str, float]) -> None:
    for column in ERROR_COLUMNS[:3]:
        assert measured[column] == pytest.approx(expected[column], rel=1e-9), column


def output_split(calibration: torch.Tensor, data: torch.Tensor):
    """The conv output's split on ``data`` after calibrating on ``calibration``: (dlqnb's row, the hand split)."""
    net = convolution()
    quantizer = DLQuantizer(net)
    quantizer.calibrate(calibration, progress=False)
    with torch.no_grad():
        expected = hand_split(net(data), float(net(calibration).abs().max()))
    return row(quantizer.quantization_error(data, progress=False), "0_Activations"), expected


def test_a_range_forced_too_small_shows_clipping_dominant():
    measured, expected = output_split(images(16, 1) * 0.05, images(16, 2))  # calibrated on values 20 times smaller
    assert expected["clipping"] > expected["rounding"]
    assert measured["Dominant"] == "clipping"
    assert_matches(measured, expected)


def test_too_few_fraction_bits_show_rounding_dominant():
    data = images(16, 3)
    outlier = torch.cat([data, data[:1] * 100])  # one image 100 times brighter: about 7 fraction bits fewer
    measured, expected = output_split(outlier, data)
    assert expected["clipping"] == 0
    assert measured["Dominant"] == "rounding"
    assert measured["ClippingSQNR(dB)"] == math.inf
    assert_matches(measured, expected)
    assert measured["SQNR(dB)"] < 30  # a coarse step: far below the ~40 dB an 8-bit type gives a fitted range


def test_one_huge_weight_makes_the_weights_rounding_dominant():
    net = convolution()
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] = 50.0
    quantizer = DLQuantizer(net)
    quantizer.calibrate(images(4, 4), progress=False)
    expected = hand_split(net[0].weight, 50.0)
    measured = row(quantizer.quantization_error(images(4, 4), progress=False), "0_Weights")
    assert measured["Dominant"] == "rounding"
    assert_matches(measured, expected)


def test_quantization_types_gains_the_columns_only_with_data():
    quantizer = DLQuantizer(convolution())
    data = images(8, 5)
    quantizer.calibrate(data, progress=False)
    plain = quantizer.quantization_types()
    assert list(plain.columns) == TYPE_COLUMNS
    with_errors = quantizer.quantization_types(data, progress=False)
    assert list(with_errors.columns) == TYPE_COLUMNS + ERROR_COLUMNS
    assert with_errors[TYPE_COLUMNS].equals(plain)
    bias = with_errors[with_errors["Learnables / Activations"] == "Bias"]
    assert bias["SQNR(dB)"].isna().all() and (bias["Dominant"] == "").all()
    assert set(with_errors.loc[with_errors["Learnables / Activations"] != "Bias", "Dominant"]) <= {"clipping", "rounding", "none"}


def test_rows_of_a_layer_kept_in_float_say_they_are_not_quantized():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 1)).eval()
    quantizer = DLQuantizer(net)
    data = images(8, 7)
    quantizer.calibrate(data, progress=False)
    quantizer.exclude("2")
    table = quantizer.quantization_error(data, progress=False).set_index("Optimized Layer Name")
    # the first conv is int8 and reads a quantized input; the excluded conv's weights and output stay float
    assert table.loc["0_1_Weights", "Quantized"] and table.loc["0_1_Activations", "Quantized"]
    assert not table.loc["2_Weights", "Quantized"] and not table.loc["2_Activations", "Quantized"]


def test_figure_draws_three_groups_and_leaves_infinite_ratios_out():
    quantizer = DLQuantizer(convolution())
    data = images(8, 6)
    quantizer.calibrate(torch.cat([data, data[:1] * 100]), progress=False)
    table = quantizer.quantization_error(data, progress=False)
    figure = quantization_error_figure(table)
    assert [trace.name for trace in figure.data] == ["total", "clipping", "rounding"]
    assert list(figure.data[0].x) == list(table["Optimized Layer Name"])
    assert None in figure.data[1].y  # nothing clips: no bar rather than an infinite one


def test_data_of_the_wrong_shape_is_a_data_error_naming_the_argument():
    quantizer = DLQuantizer(convolution())
    quantizer.calibrate(images(4, 7), progress=False)
    with pytest.raises(DataError, match=r"quantization_error: data batch 0 has shape \(2, 3, 10, 10\); calibration saw inputs of shape \(1, 10, 10\)"):
        quantizer.quantization_error(torch.rand(2, 3, 10, 10), progress=False)
