"""Displays shaped like MATLAB's: the quantized network, network_summary of it, learnables sizes and the
prunable network's property block. Expected values are counted by hand from the networks' definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dlqnb
from dlqnb import DLQuantizer, TaylorPrunableNetwork, quantization_details
from dlqnb.models.networks import DigitsNet, squeezenet

# DigitsNet, layer by layer: the input layer, three conv-BN-ReLU blocks, the flatten and the fully connected layer
DIGITS_LAYERS = ["input", "conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3", "relu3", "flatten", "fc"]


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    net = DigitsNet().eval()
    quantizer = DLQuantizer(net)
    quantizer.calibrate(torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(2)), progress=False)
    return net, quantizer


def test_the_quantized_network_displays_as_matlabs_qnet(digits):
    _, quantizer = digits
    shown = repr(quantizer.quantize())
    assert shown == (
        "Quantized DAGNetwork with properties:\n\n"
        "         Layers: [12×1 layers]\n"
        "    Connections: [11×2 table]\n"  # a chain: one connection fewer than layers
        "     InputNames: {'input'}\n"
        "    OutputNames: {'fc'}"
    )
    assert str(quantizer.quantize()) == shown  # print() too, not fx's generated code


def test_network_summary_of_the_quantized_network_lists_the_float_networks_layers(digits):
    _, quantizer = digits
    summary = dlqnb.network_summary(quantizer.quantize())
    assert summary.layers == DIGITS_LAYERS  # the quantization points are not layers; fused layers are their members
    assert list(map(tuple, summary.connections.to_numpy())) == list(zip(DIGITS_LAYERS, DIGITS_LAYERS[1:]))
    assert (summary.input_names, summary.output_names) == (["input"], ["fc"])


@pytest.mark.parametrize("environment", ["gpu", "cpu"])
def test_quantized_squeezenet_keeps_its_layers_and_connections(environment):
    torch.manual_seed(0)
    net = squeezenet(num_classes=5, weights=None).eval()
    quantizer = DLQuantizer(net, execution_environment=environment)
    quantizer.calibrate(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), progress=False)
    float_summary, quantized_summary = dlqnb.network_summary(net), dlqnb.network_summary(quantizer.quantize())
    assert quantized_summary.layers == float_summary.layers
    assert quantized_summary.connections.equals(float_summary.connections)
    assert quantized_summary.output_names == float_summary.output_names


def test_learnables_sizes_are_written_as_matlab_writes_them(digits):
    _, quantizer = digits
    values = quantization_details(quantizer.quantize()).learnables_summary().set_index(["Layer", "Parameter"])["Value"]
    # conv1: 20 filters of 5×5×1, MATLAB's height×width×channels×filters; fc: 10 × (20·24·24) features
    assert values["conv1", "Weights"] == "5×5×1×20 int8"
    assert values["conv1", "Bias"] == "1×1×20 single"
    assert values["conv2", "Weights"] == "3×3×20×20 int8"
    assert values["fc", "Weights"] == "10×11520 int8"
    assert values["fc", "Bias"] == "10×1 single"


def test_layer_array_lists_the_digits_network_layer_by_layer(digits):
    net, _ = digits
    array = dlqnb.network_summary(net).layer_array()
    assert list(array.index) == list(range(1, 13))
    assert list(array["Name"]) == DIGITS_LAYERS
    assert list(array["Type"][:4]) == ["ImageInput", "Conv2d", "BatchNorm2d", "ReLU"]


def test_the_prunable_network_displays_its_property_block(digits):
    net, _ = digits
    pn = TaylorPrunableNetwork(net)
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    out, activations = pn.forward(x, training=True)
    gradients = torch.autograd.grad(F.cross_entropy(out, torch.arange(16) % 10), activations)
    pn = pn.update_score(activations, gradients).update_prunables(8)
    # 3 convs + 3 BatchNorms + fc, a weight and a bias each; 3 BatchNorms × (mean, variance);
    # 3 layers × (20 filters − the ceil(0.2 × 20) = 4 each keeps) − the 8 pruned
    assert repr(pn) == (
        "  TaylorPrunableNetwork with properties:\n\n"
        "      Learnables: [14×3 table]\n"
        "           State: [6×3 table]\n"
        "      InputNames: {'input'}\n"
        "     OutputNames: {'fc'}\n"
        "    NumPrunables: 40"
    )
