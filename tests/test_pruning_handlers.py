"""Channel handlers of pruning: 1-D and 3-D convolution networks get prunable filters, extraction matches
masking, and the counts are the ones worked out by hand from each network's layers."""

from __future__ import annotations

import math
import typing

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from dlqnb.core.ops import Channels, concat_dim, flatten_start_dim
from dlqnb.models.networks import squeezenet
from dlqnb.pruning.handlers import HANDLERS, channels_propagate
from dlqnb.pruning.taylor import TaylorPrunableNetwork

from conftest import randomize_batchnorm


class Net1d(nn.Module):
    """A 1-D signal network: BatchNorm, a concatenation and a flatten into a linear layer (input N×2×16)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(2, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.a = nn.Conv1d(8, 4, 1)
        self.b = nn.Conv1d(8, 6, 3, padding=1)
        self.pool = nn.MaxPool1d(2)
        self.head = nn.Conv1d(10, 5, 3)
        self.fc = nn.Linear(5 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = self.pool(F.relu(torch.cat([self.a(x), self.b(x)], 1)))  # 10 channels × 8
        x = F.relu(self.head(x))  # 5 channels × 6
        return self.fc(torch.flatten(x, 1))


class Net3d(nn.Module):
    """A 3-D volume network: BatchNorm, a residual addition, a depthwise convolution and a flatten of
    2×2×2 positions per channel into a linear layer (input N×1×4×4×4)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm3d(6)
        self.a = nn.Conv3d(6, 4, 1)
        self.b = nn.Conv3d(6, 4, 3, padding=1)
        self.depthwise = nn.Conv3d(4, 4, 3, padding=1, groups=4)
        self.head = nn.Conv3d(4, 5, 2, stride=2)
        self.fc = nn.Linear(5 * 2 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.a(x) + self.b(x))  # the addition ties a's and b's filters
        x = self.depthwise(x)  # grouped: its filters belong to its groups
        x = F.relu(self.head(x))
        return self.fc(x.flatten(1))


def net3d_parameters(stem: int, head: int) -> int:
    """Net3d's parameters when ``stem`` and ``head`` filters are kept, counted layer by layer."""
    return (
        stem * 1 * 27 + stem  # stem
        + 2 * stem  # bn
        + 4 * stem * 1 + 4  # a
        + 4 * stem * 27 + 4  # b
        + 4 * 1 * 27 + 4  # depthwise
        + head * 4 * 8 + head  # head
        + 3 * head * 8 + 3  # fc
    )


def scored(pn: TaylorPrunableNetwork, x: torch.Tensor) -> TaylorPrunableNetwork:
    out, activations = pn.forward(x)
    return pn.update_score(activations, torch.autograd.grad(out.logsumexp(1).sum(), activations))


def relative_difference(pn: TaylorPrunableNetwork, small: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        masked, _ = pn.forward(x)
        return float((small(x) - masked).abs().max() / masked.abs().max())


def test_every_channel_trait_has_a_handler():
    assert set(HANDLERS) == set(typing.get_args(Channels))


def test_conv1d_network_gets_prunable_filters():
    pn = TaylorPrunableNetwork(Net1d())
    assert {name: layer.mask_node for name, layer in pn.layers.items()} == {"stem": "bn", "a": "a", "b": "b", "head": "head"}
    # each layer keeps ceil(0.2 × filters): 8 keeps 2, 4 keeps 1, 6 keeps 2, 5 keeps 1
    assert pn.num_prunables == (8 - 2) + (4 - 1) + (6 - 2) + (5 - 1)


def test_conv3d_network_prunes_only_untied_filters():
    pn = TaylorPrunableNetwork(Net3d())
    assert {name: layer.mask_node for name, layer in pn.layers.items()} == {"stem": "bn", "head": "head"}
    assert pn.num_prunables == (6 - 2) + (5 - 1)


@pytest.mark.parametrize(("net", "shape"), [(Net1d, (2, 16)), (Net3d, (1, 4, 4, 4))])
def test_extracted_network_computes_what_the_masked_one_does(net, shape):
    torch.manual_seed(0)
    x = torch.randn(6, *shape)
    pn = TaylorPrunableNetwork(randomize_batchnorm(net()).eval())
    total = sum(layer.filters for layer in pn.layers.values())
    pn = scored(pn, x).update_prunables(5)
    assert sum(pn.filter_counts().values()) == total - 5
    small = pn.to_module()
    assert relative_difference(pn, small, x) < 1e-5


def test_conv1d_extraction_at_the_least_filters():
    torch.manual_seed(0)
    x = torch.randn(6, 2, 16)
    pn = TaylorPrunableNetwork(randomize_batchnorm(Net1d()).eval())
    pn = scored(pn, x).update_prunables(pn.num_prunables)
    assert pn.filter_counts() == {"stem": 2, "a": 1, "b": 2, "head": 1}
    small = pn.to_module()
    assert (small.stem.out_channels, small.bn.num_features, small.a.in_channels, small.b.in_channels) == (2, 2, 2, 2)
    assert (small.head.in_channels, small.head.out_channels) == (1 + 2, 1)
    assert small.fc.in_features == 1 * 6  # one channel of 6 positions
    assert relative_difference(pn, small, x) < 1e-5


def test_conv3d_extraction_parameters():
    torch.manual_seed(0)
    x = torch.randn(6, 1, 4, 4, 4)
    net = randomize_batchnorm(Net3d()).eval()
    assert sum(p.numel() for p in net.parameters()) == net3d_parameters(6, 5)
    pn = scored(TaylorPrunableNetwork(net), x).update_prunables(6)
    counts = pn.filter_counts()
    small = pn.to_module()
    assert sum(p.numel() for p in small.parameters()) == net3d_parameters(counts["stem"], counts["head"])
    assert small.depthwise.weight.shape == (4, 1, 3, 3, 3)
    assert relative_difference(pn, small, x) < 1e-5


def test_squeezenet_depth_concatenation_layers_carry_channels():
    torch.manual_seed(0)
    pn = TaylorPrunableNetwork(squeezenet(num_classes=5, weights=None))
    # conv1 and every fire module's three convolutions; conv10's scores are the network output
    assert len(pn.layers) == 1 + 8 * 3 and "conv10" not in pn.layers
    fires = {16: 64, 32: 128, 48: 192, 64: 256}  # squeeze filters: each expand's filters (two fire modules each)
    keep = lambda filters: filters - math.ceil(0.2 * filters)  # noqa: E731
    assert pn.num_prunables == keep(64) + 2 * sum(keep(s) + 2 * keep(e) for s, e in fires.items())
    x = torch.rand(2, 3, 64, 64)
    pn = scored(pn, x).update_prunables(8)
    assert relative_difference(pn, pn.to_module(), x) < 1e-5


def test_concatenation_and_flatten_arguments():
    gm = fx.symbolic_trace(lambda x: torch.flatten(torch.cat((x, x), dim=-1), 2))
    cat, flatten = list(gm.graph.nodes)[1:3]
    assert (concat_dim(gm, cat), flatten_start_dim(gm, flatten), flatten_start_dim(gm, cat)) == (-1, 2, None)


def test_flatten_past_the_channels_stops_pruning():
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(2), nn.Flatten(), nn.Linear(4 * 4, 2))
    gm = fx.symbolic_trace(net)
    assert not channels_propagate(gm, list(gm.graph.nodes)[1])
