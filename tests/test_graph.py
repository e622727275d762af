"""Tracing, BatchNorm folding and activation fusion (dlqnb.core.graph)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlqnb.core.graph import NetworkGraphError, optimize_network

EXPECTED_LAYERS = {"squeezenet1_1": 26, "resnet18": 21, "mobilenet_v2": 53, "googlenet": 58}


def test_folded_network_computes_the_same(named_network):
    name, net = named_network
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    optimized = optimize_network(net)
    with torch.no_grad():
        expected, actual = net(x), optimized.module(x)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-5), (actual - expected).abs().max()
    assert len(optimized.layers) == EXPECTED_LAYERS[name]


def test_user_network_is_not_modified(named_network):
    _, net = named_network
    net.train()
    before = copy.deepcopy(net.state_dict())
    optimize_network(net)
    assert net.training
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in net.parameters())


def test_names_follow_the_design(named_network):
    name, net = named_network
    layers = optimize_network(net).layers
    if name == "squeezenet1_1":
        first = layers["features_0_features_1"]
        assert (first.members, first.network_layer_name, first.activation) == (("features_0", "features_1"), "features_1", "relu")
        assert layers["classifier_1_classifier_2"].module_path == "classifier.1"
    elif name == "resnet18":
        # one ReLU module called twice per block: two network layers, relu and relu_1
        assert layers["layer1_0_conv1_layer1_0_bn1_layer1_0_relu"].members[-1] == "layer1_0_relu"
        assert "layer1_0_conv2_layer1_0_bn2" in layers  # the residual add sits between bn2 and the second relu
        assert layers["fc"].kind == "linear" and layers["fc"].activation is None
    elif name == "mobilenet_v2":
        assert layers["features_0_0_features_0_1_features_0_2"].activation == "relu6"
    else:  # googlenet calls F.relu inside BasicConv2d
        assert layers["conv1_conv_conv1_bn_relu"].activation == "relu"


def test_every_fused_layer_has_a_bias():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU()).eval()
    layer = optimize_network(net).fused("0_1").layer  # Sequential names its modules "0", "1": fx uses "_0", tables the module names
    assert torch.equal(layer.bias, torch.zeros(4))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.leaky = nn.LeakyReLU(0.2)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        z = F.relu(y) + y.mean()  # conv output used twice: nothing to fuse
        return self.head(self.leaky(z).mean((2, 3)))


def test_no_fusion_when_the_output_is_shared():
    torch.manual_seed(0)
    net = Branchy().eval()
    optimized = optimize_network(net)
    assert set(optimized.layers) == {"conv", "head"}
    assert optimized.layers["conv"].activation is None
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(optimized.module(x), net(x), rtol=1e-6, atol=1e-7)


def test_leaky_relu_is_fused_with_its_slope():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.3)).eval()
    optimized = optimize_network(net)
    assert optimized.layers["0_1_2"].activation == "leaky_relu"
    assert optimized.fused("0_1_2").activation.negative_slope == 0.3


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


def test_untraceable_network_is_named():
    with pytest.raises(NetworkGraphError, match="DataDependent"):
        optimize_network(DataDependent())


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 4)

    def forward(self, x):
        return self.lstm(x)[0]


def test_unsupported_layer_is_named():
    with pytest.raises(NetworkGraphError, match="'lstm'.*recurrent"):
        optimize_network(Recurrent())


def test_batchnorm_without_running_stats_is_named():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(NetworkGraphError, match="'1'.*running statistics"):
        optimize_network(net)
