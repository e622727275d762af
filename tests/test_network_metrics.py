"""MATLAB's estimateNetworkMetrics: multiply-accumulates against hand computation
(C_out × C_in/groups × k_h × k_w × H_out × W_out for a convolution, in × out for a fully connected layer),
non-zero learnables and memory counted from the modules' shapes, and the quantized memory column summing
to what validate reports.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import dlqnb
from dlqnb.evaluation.metrics import estimate_network_metrics

MB = 2**20


def _small_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 32×32 out
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4),  # 16×16 out
        nn.BatchNorm2d(8),
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 10),
    )
    with torch.no_grad():
        net[0].weight[0].zero_()  # 27 zero learnables
        net[3].bias.fill_(0.1)  # BatchNorm's beta starts at zero: make every learnable count
    return net.eval()


def test_macs_operations_learnables_and_memory_of_a_small_network_match_hand_computation():
    table = estimate_network_metrics(_small_net(), input_size=(3, 32, 32)).set_index("LayerName")
    assert table.index.tolist() == ["0", "2", "3", "5"]
    assert table.LayerType.tolist() == ["2-D Convolution", "2-D Grouped Convolution", "Batch Normalization", "Fully Connected"]
    macs = {"0": 8 * 3 * 3 * 3 * 32 * 32, "2": 8 * (8 // 4) * 3 * 3 * 16 * 16, "3": 8 * 16 * 16, "5": 8 * 16 * 16 * 10}
    assert table.NumberOfMACs.to_dict() == macs
    assert table.NumberOfOperations.to_dict() == {name: 2 * value for name, value in macs.items()}
    parameters = {"0": 8 * 27 + 8, "2": 8 * 2 * 9 + 8, "3": 16, "5": 2048 * 10 + 10}
    assert table.NumberOfLearnables.to_dict() == {**parameters, "0": parameters["0"] - 27}
    assert table["ParameterMemory (MB)"].to_dict() == {name: 4 * count / MB for name, count in parameters.items()}


def test_arithmetic_intensity_is_operations_per_byte_touched():
    table = estimate_network_metrics(nn.Linear(100, 20), input_size=(100,))
    operations = 2 * 100 * 20
    touched = 4 * (100 * 20 + 20) + 4 * 100 + 4 * 20  # learnables, input, output, each once, in single
    assert table.loc[0, "ArithmeticIntensity (FLOP/B)"] == pytest.approx(operations / touched)


def test_the_float_memory_column_sums_to_validates_floating_point_figure_and_the_network_is_untouched():
    net = torchvision.models.resnet18(num_classes=3).train()
    state = copy.deepcopy(net.state_dict())
    table = estimate_network_metrics(net, input_size=(3, 32, 32))
    assert net.training and all(torch.equal(state[key], value) for key, value in net.state_dict().items())
    assert table["ParameterMemory (MB)"].sum() * MB == 4 * sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_the_quantized_memory_column_sums_to_validates_quantized_figure(target):
    net = _small_net()
    x, y = torch.rand(6, 3, 32, 32), torch.arange(6) % 10
    q = dlqnb.DLQuantizer(net, execution_environment=target)
    q.calibrate(x, progress=False)
    q.exclude("2_3")  # a float layer counts 4 bytes per learnable
    table = estimate_network_metrics(q).set_index("LayerName")
    assert table.index.tolist() == ["0_1", "2_3", "5"]
    memory = q.validate([(x, y)], progress=False).metric_results.set_index("NetworkImplementation")["LearnableParameterMemory(bytes)"]
    assert table["ParameterMemory (MB)"].sum() * MB == memory["Quantized"]
    # int8 weights and 4-byte biases for quantized layers, 4 bytes per folded parameter in float
    assert table["ParameterMemory (MB)"].to_dict() == {"0_1": (8 * 27 + 4 * 8) / MB, "2_3": 4 * (8 * 2 * 9 + 8) / MB, "5": (20480 + 4 * 10) / MB}
    assert table.loc["2_3", "NumberOfMACs"] == 8 * 2 * 9 * 16 * 16  # folding does not change the work
    # the int8 layer reads and writes one byte per value
    touched = 8 * 27 + 4 * 8 + 3 * 32 * 32 + 8 * 32 * 32
    assert table.loc["0_1", "ArithmeticIntensity (FLOP/B)"] == pytest.approx(2 * 8 * 27 * 32 * 32 / touched)


def test_the_default_input_size_comes_from_calibration_or_the_networks_metadata():
    net = dlqnb.models.networks.set_metadata(dlqnb.models.squeezenet(num_classes=3, weights=None), input_size=(227, 227))
    table = estimate_network_metrics(net)  # its data layer takes 3 channels, at the input size recorded
    assert table.loc[0, "NumberOfMACs"] == 64 * 3 * 3 * 3 * 113 * 113  # conv1: 3×3, stride 2, no padding
    any_size = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    q = dlqnb.DLQuantizer(any_size)
    with pytest.raises(dlqnb.NotCalibratedError, match="estimate_network_metrics"):
        estimate_network_metrics(q)
    q.calibrate(torch.rand(2, 3, 40, 24), progress=False)
    assert estimate_network_metrics(q).loc[0, "NumberOfMACs"] == 8 * 27 * 40 * 24


def test_bad_arguments_are_refused_naming_input_size():
    with pytest.raises(ValueError, match="input_size"):
        estimate_network_metrics(_small_net())
    with pytest.raises(ValueError, match="input_size"):
        estimate_network_metrics(_small_net(), input_size=(3, -1, 32))
    with pytest.raises(ValueError, match=r"input_size=\(5, 32, 32\)"):
        estimate_network_metrics(_small_net(), input_size=(5, 32, 32))
    with pytest.raises(TypeError, match="nn.Module or a DLQuantizer"):
        estimate_network_metrics("resnet18")


def test_it_is_a_lazy_attribute_of_dlqnb():
    assert dlqnb.estimate_network_metrics is estimate_network_metrics
