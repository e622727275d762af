"""MATLAB's equalizeLayers and prepareNetwork: the float output is unchanged, the per-channel ranges of
equalized pairs become proportional (as cross-layer equalization predicts), pairs that cannot stay
exact are left alone with a reason, and the prepared network still quantizes.

References are independent of dlqnb: BatchNorm folding and channel ranges are recomputed here from the
weights, and outputs are compared with the untouched float network.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import dlqnb
from conftest import randomize_batchnorm
from dlqnb.preparation import equalize_layers, prepare_network

RTOL = 1e-4


def _randomized(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, and conv/linear weights spread over channels
    (a few channels 20× larger), so that equalization has work to do."""
    randomize_batchnorm(net, seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                spread = torch.ones(module.weight.shape[0])
                spread[:: max(1, module.weight.shape[0] // 3)] = 20.0
                module.weight.mul_(spread.reshape(-1, *([1] * (module.weight.dim() - 1))))
    return net.eval()


def _folded_weight(conv: nn.Module, bn: nn.Module | None) -> torch.Tensor:
    """The weight a BatchNorm folds into: W * gamma / sqrt(var + eps) per output channel."""
    weight = conv.weight.detach().double()
    if bn is None:
        return weight
    factor = bn.weight.detach().double() / (bn.running_var.double() + bn.eps).sqrt()
    return weight * factor.reshape(-1, *([1] * (weight.dim() - 1)))


def _out_ranges(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs().flatten(1).amax(1)


def _in_ranges(weight: torch.Tensor, groups: int) -> torch.Tensor:
    out_per_group, in_per_group = weight.shape[0] // groups, weight.shape[1]
    ranges = []
    for channel in range(groups * in_per_group):
        group, local = divmod(channel, in_per_group)
        ranges.append(weight[group * out_per_group : (group + 1) * out_per_group, local].abs().max())
    return torch.stack(ranges)


def _proportional(r1: torch.Tensor, r2: torch.Tensor, rtol: float = 2e-3) -> bool:
    return bool(torch.allclose(r1 / r1.max(), r2 / r2.max(), rtol=rtol, atol=1e-6))


def _same_output(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    scale = float(yb.abs().max())
    torch.testing.assert_close(ya, yb, rtol=RTOL, atol=RTOL * scale)


def _chain(activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """conv → BN → act → depthwise conv → BN → act → conv: the MobileNet chain, with a plain ReLU."""
    torch.manual_seed(0)
    return _randomized(
        nn.Sequential(
            nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), activation(),
            nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.BatchNorm2d(12), activation(),
            nn.Conv2d(12, 5, 1),
        )
    )


def test_a_conv_relu_conv_net_computes_the_same_and_is_not_modified():
    torch.manual_seed(1)
    net = _randomized(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 28 * 28, 4)))
    before = copy.deepcopy(net.state_dict())
    equalized = equalize_layers(net)
    assert type(equalized) is nn.Sequential
    _same_output(equalized, net, torch.randn(2, 3, 32, 32))
    assert all(torch.equal(before[key], value) for key, value in net.state_dict().items())
    assert not torch.equal(equalized[0].weight, net[0].weight)  # it did rescale
    assert _proportional(_out_ranges(_folded_weight(equalized[0], None)), _in_ranges(_folded_weight(equalized[2], None), 1))


def test_a_chain_through_a_depthwise_convolution_is_equalized_on_both_sides_with_batchnorm_between():
    net = _chain()
    first, dw, last = _folded_weight(net[0], net[1]), _folded_weight(net[3], net[4]), _folded_weight(net[6], None)
    assert not _proportional(_out_ranges(first), _in_ranges(dw, 12))  # there is something to equalize

    equalized, table = equalize_layers(net, report=True)
    assert table.Change.tolist() == ["equalized", "equalized"]
    _same_output(equalized, net, torch.randn(2, 3, 16, 16))
    first, dw, last = _folded_weight(equalized[0], equalized[1]), _folded_weight(equalized[3], equalized[4]), _folded_weight(equalized[6], None)
    assert _proportional(_out_ranges(first), _in_ranges(dw, 12))
    assert _proportional(_out_ranges(dw), _in_ranges(last, 1))
    # the scale went into the BatchNorm's gamma, not into the convolution before it
    assert torch.equal(equalized[0].weight, net[0].weight)
    assert not torch.equal(equalized[1].weight, net[1].weight)


def test_relu6_pairs_are_skipped_with_the_reason_and_left_untouched():
    net = _chain(nn.ReLU6)
    equalized, table = equalize_layers(net, report=True)
    assert table.Change.tolist() == ["not equalized", "not equalized"]
    assert table.Detail.str.contains("ReLU6").all() and table.Detail.str.contains("clips").all()
    assert all(torch.equal(a, b) for a, b in zip(equalized.state_dict().values(), net.state_dict().values()))


def _relu6_as_relu(net: nn.Module, keep: tuple[str, ...] = ()) -> nn.Module:
    """The reference for relu6="relu": a copy of ``net`` with every ReLU6 module but ``keep`` a ReLU, nothing rescaled."""
    reference = copy.deepcopy(net)
    for name, module in list(reference.named_modules()):
        if isinstance(module, nn.ReLU6) and name not in keep:
            reference.set_submodule(name, nn.ReLU())
    return reference


def test_relu6_relu_replaces_the_clips_equalizes_the_pairs_and_computes_what_relu_computes():
    net = _chain(nn.ReLU6)
    before = copy.deepcopy(net.state_dict())
    equalized, table = equalize_layers(net, report=True, relu6="relu")
    assert table.Change.tolist() == ["replaced", "equalized", "replaced", "equalized"]
    assert table[table.Change == "replaced"].Layer.tolist() == ["2", "5"]
    assert [type(m) for m in equalized if isinstance(m, (nn.ReLU, nn.ReLU6))] == [nn.ReLU, nn.ReLU]
    x = 4 * torch.randn(2, 3, 16, 16)
    _same_output(equalized, _relu6_as_relu(net), x)
    with torch.no_grad():  # the clip mattered on these inputs: the float output did change, as the report says
        assert not torch.allclose(_relu6_as_relu(net)(x), net(x), rtol=RTOL, atol=RTOL * float(net(x).abs().max()))
    first, dw, last = _folded_weight(equalized[0], equalized[1]), _folded_weight(equalized[3], equalized[4]), _folded_weight(equalized[6], None)
    assert _proportional(_out_ranges(first), _in_ranges(dw, 12))
    assert _proportional(_out_ranges(dw), _in_ranges(last, 1))
    assert all(torch.equal(before[key], value) for key, value in net.state_dict().items())
    assert all(isinstance(net[i], nn.ReLU6) for i in (2, 5))  # the caller's network keeps its clips


def test_relu6_relu_leaves_a_functional_or_shared_clip_alone_with_the_reason():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(torch.nn.functional.relu6(self.a(x)))

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.clip = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1), nn.ReLU6()

        def forward(self, x):
            return self.c(self.clip(self.b(self.clip(self.a(x)))))

    for net, words in ((Functional().eval(), "function"), (Shared().eval(), "called more than once")):
        equalized, table = equalize_layers(net, report=True, relu6="relu")
        assert set(table.Change) == {"not equalized"} and table.Detail.str.contains(words).all(), table.Detail.tolist()
        assert all(torch.equal(a, b) for a, b in zip(equalized.state_dict().values(), net.state_dict().values()))


def test_relu6_relu_replaces_a_module_clip_and_keeps_the_reason_of_a_functional_one_in_the_same_network():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.clip, self.b, self.c = nn.Conv2d(3, 8, 3), nn.Hardtanh(0.0, 6.0), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c(torch.nn.functional.relu6(self.b(self.clip(self.a(x)))))

    torch.manual_seed(3)
    net = Mixed().eval()
    _, kept = equalize_layers(net, report=True)
    assert kept.Change.tolist() == ["not equalized", "not equalized"]
    hints = kept.Detail.str.contains("relu6='relu'").tolist()
    assert hints == [True, False]  # only the module clip could be replaced
    equalized, table = equalize_layers(net, report=True, relu6="relu")
    assert table.Change.tolist() == ["replaced", "equalized", "not equalized"]
    assert table.Layer.tolist()[0] == "clip" and "'clip'" in table.Detail.iloc[0]
    assert "function" in table.Detail.iloc[2] and "relu6='relu'" not in table.Detail.iloc[2]
    assert type(equalized.clip) is nn.ReLU and type(net.clip) is nn.Hardtanh
    reference = copy.deepcopy(net)
    reference.clip = nn.ReLU()
    _same_output(equalized, reference, 4 * torch.randn(2, 3, 12, 12))


def test_relu6_must_be_keep_or_relu():
    for call in (equalize_layers, prepare_network):
        with pytest.raises(ValueError, match="relu6 must be 'keep'.*'relu'.*got 'ReLU'"):
            call(_chain(nn.ReLU6), relu6="ReLU")


@pytest.mark.parametrize("activation", [nn.LeakyReLU(0.1), nn.Identity()], ids=["leaky_relu", "identity"])
def test_linear_layers_through_leaky_relu_or_nothing_are_equalized_exactly(activation):
    torch.manual_seed(2)
    net = _randomized(nn.Sequential(nn.Linear(10, 16), activation, nn.Linear(16, 3)))
    equalized, table = equalize_layers(net, report=True)
    assert table.Change.tolist() == ["equalized"]
    _same_output(equalized, net, torch.randn(8, 10))
    assert _proportional(_out_ranges(_folded_weight(equalized[0], None)), _in_ranges(_folded_weight(equalized[2], None), 1))


def test_a_module_called_twice_or_a_batchnorm_without_gamma_is_not_rescaled():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.a(torch.relu(self.a(x))) + self.b(x)

    net = _randomized(Twice())
    equalized, table = equalize_layers(net, report=True)
    assert "called more than once" in " ".join(table.Detail)
    assert torch.equal(equalized.a.weight, net.a.weight)

    no_gamma = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, affine=False), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    equalized, table = equalize_layers(no_gamma, report=True)
    assert table.Change.tolist() == ["not equalized"] and "affine=False" in table.Detail[0]
    _same_output(equalized, no_gamma, torch.randn(1, 3, 8, 8))


class _FanOut(nn.Module):
    """conv1 → ReLU → (conv2, conv3) → add: conv1's output channels reach two layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        return self.conv2(y) + self.conv3(y)


class _PreActivationAdd(nn.Module):
    """conv1's output goes through ReLU to conv2 and, unactivated, to an add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 1)

    def forward(self, x):
        y = self.conv1(x)
        return self.conv2(torch.relu(y)) + y


class _Residual(nn.Module):
    """conv1 → ReLU → conv2, then + x: the rescaled channels stay between conv1 and conv2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x))) + x


@pytest.mark.parametrize("net_type", [_FanOut, _PreActivationAdd], ids=["two_consumers", "output_to_an_add"])
def test_a_layer_whose_output_goes_to_two_places_is_not_rescaled(net_type):
    torch.manual_seed(6)
    net = _randomized(net_type())
    equalized, table = equalize_layers(net, report=True)
    assert not (table.Change == "equalized").any()
    assert all(torch.equal(a, b) for a, b in zip(equalized.state_dict().values(), net.state_dict().values()))
    _same_output(equalized, net, torch.randn(2, net.conv1.in_channels, 8, 8))


def test_a_residual_block_is_equalized_inside_and_computes_the_same():
    torch.manual_seed(7)
    net = _randomized(_Residual())
    equalized, table = equalize_layers(net, report=True)
    assert table.Change.tolist() == ["equalized"]
    _same_output(equalized, net, torch.randn(2, 6, 8, 8))
    assert _proportional(_out_ranges(_folded_weight(equalized.conv1, None)), _in_ranges(_folded_weight(equalized.conv2, None), 1))


def test_dead_channels_keep_a_scale_of_one_and_give_no_nan():
    torch.manual_seed(10)
    net = _randomized(nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 4, 1)))
    with torch.no_grad():
        net[0].weight[1].zero_()  # output channel 1 of the first layer: range 0
        net[2].weight[:, 4].zero_()  # input channel 4 of the second: range 0
    equalized = equalize_layers(net)
    assert all(torch.isfinite(p).all() for p in equalized.parameters())
    for channel in (1, 4):
        assert torch.equal(equalized[0].weight[channel], net[0].weight[channel]) and torch.equal(equalized[0].bias[channel], net[0].bias[channel])
        assert torch.equal(equalized[2].weight[:, channel], net[2].weight[:, channel])
    _same_output(equalized, net, torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize(
    "net, x",
    [
        (nn.Sequential(nn.Conv1d(4, 6, 3), nn.ReLU(), nn.Linear(6, 2)), torch.randn(2, 4, 8)),  # 6 channels, 6 features
        (nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Linear(6, 5)), torch.randn(2, 3, 8, 8)),  # 8 channels, 6 features
    ],
    ids=["same_count", "other_count"],
)
def test_a_convolution_feeding_a_fully_connected_layer_directly_is_not_rescaled(net, x):
    # Linear reads the last dimension (the convolution's width), not its channels (dimension 1)
    torch.manual_seed(8)
    net = _randomized(net)
    equalized, table = equalize_layers(net, report=True)
    assert table.Change.tolist() == ["not equalized"] and "last dimension" in table.Detail[0]
    assert all(torch.equal(a, b) for a, b in zip(equalized.state_dict().values(), net.state_dict().values()))
    _same_output(equalized, net, x)


def test_a_lone_batchnorm_of_a_double_network_becomes_a_double_convolution():
    torch.manual_seed(9)
    net = _randomized(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1))).double()
    prepared, changes = prepare_network(net, report=True)
    assert changes.Change.tolist()[0] == "replaced" and prepared.get_submodule("0").weight.dtype == torch.float64
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), net(x), rtol=1e-12, atol=1e-12)


def _resnet18() -> nn.Module:
    torch.manual_seed(3)
    return _randomized(torchvision.models.resnet18(num_classes=5))


def _mobilenet_v2() -> nn.Module:
    torch.manual_seed(4)
    return _randomized(torchvision.models.mobilenet_v2(num_classes=5))


def test_resnet18_blocks_are_equalized_through_their_batchnorm_and_compute_the_same():
    net = _resnet18()
    equalized = equalize_layers(net)
    _same_output(equalized, net, torch.randn(2, 3, 32, 32))
    blocks = [block for layer in (equalized.layer1, equalized.layer2, equalized.layer3, equalized.layer4) for block in layer]
    for block in blocks:  # conv1 → bn1 → relu → conv2 in every BasicBlock
        assert _proportional(_out_ranges(_folded_weight(block.conv1, block.bn1)), _in_ranges(_folded_weight(block.conv2, block.bn2), 1))
    original = net.layer1[0]
    assert not _proportional(_out_ranges(_folded_weight(original.conv1, original.bn1)), _in_ranges(_folded_weight(original.conv2, original.bn2), 1))


def test_mobilenet_v2_computes_the_same_its_relu6_pairs_stay_and_its_linear_bottlenecks_are_equalized():
    net = _mobilenet_v2()
    equalized, table = equalize_layers(net, report=True)
    _same_output(equalized, net, torch.randn(2, 3, 32, 32))
    skipped = table[table.Change == "not equalized"]
    assert len(skipped) > 0 and skipped.Detail.str.contains("ReLU6").all()
    assert (table.Change == "equalized").any()
    # features.0 feeds features.1 through a ReLU6 only: untouched
    assert torch.equal(equalized.features[0][0].weight, net.features[0][0].weight)
    assert torch.equal(equalized.features[0][1].weight, net.features[0][1].weight)
    # features.1 (no activation after its projection) feeds features.2's expansion: equalized
    project, project_bn = equalized.features[1].conv[1], equalized.features[1].conv[2]
    expand, expand_bn = equalized.features[2].conv[0][0], equalized.features[2].conv[0][1]
    assert _proportional(_out_ranges(_folded_weight(project, project_bn)), _in_ranges(_folded_weight(expand, expand_bn), 1))


def test_mobilenet_v2_with_relu6_relu_equalizes_every_pair_its_clips_held_back():
    net = _mobilenet_v2()
    _, kept = equalize_layers(net, report=True)
    held_back = kept[kept.Detail.str.contains("ReLU6")].Layer.tolist()
    equalized, table = equalize_layers(net, report=True, relu6="relu")
    assert sorted(table[table.Change == "equalized"].Layer) == sorted([*held_back, *kept[kept.Change == "equalized"].Layer])
    assert (table.Change == "replaced").sum() == len(held_back) > 0
    # the last clip feeds the pooling, not a layer: it is no pair's, so it stays
    assert isinstance(equalized.features[18][2], nn.ReLU6)
    reference = _relu6_as_relu(net, keep=("features.18.2",))
    _same_output(equalized, reference, 4 * torch.randn(2, 3, 32, 32))
    prepared, changes = prepare_network(net, report=True, relu6="relu")
    assert (changes.Change == "replaced").sum() == len(held_back)  # MobileNetV2 has no BatchNorm to replace
    _same_output(prepared, reference, torch.randn(2, 3, 32, 32))


def test_prepare_network_folds_replaces_and_equalizes_and_computes_the_same():
    torch.manual_seed(5)
    net = _randomized(
        nn.Sequential(
            nn.BatchNorm2d(3),  # follows no convolution: float on every target
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
        )
    )
    dlqnb.models.networks.set_metadata(net, class_names=list("abcd"), input_size=(16, 16))
    before = copy.deepcopy(net.state_dict())
    prepared, changes = prepare_network(net, report=True)
    assert list(changes.columns) == ["Layer", "Change", "Detail"]
    assert sorted(changes[changes.Change == "folded"].Layer) == ["2", "5"]
    assert changes[changes.Change == "replaced"].Layer.tolist() == ["0"]
    assert changes[changes.Change == "equalized"].Layer.tolist() == ["0 → 1_3", "1_3 → 4_6"]  # the replaced BatchNorm too
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    assert prepared.class_names == list("abcd") and prepared.input_size == (16, 16)
    _same_output(prepared, net, torch.randn(3, 3, 16, 16))
    assert all(torch.equal(before[key], value) for key, value in net.state_dict().items())

    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    q = dlqnb.DLQuantizer(prepared)
    q.calibrate(x, progress=False)
    assert "0" in q.quantized_layers()  # the replaced BatchNorm is an int8 layer now
    original = dlqnb.DLQuantizer(net)
    original.calibrate(x, progress=False)
    assert "0" in original.unsupported_layers().Layer.tolist()  # it was a float layer before
    result = q.validate([(x, y)], progress=False)
    memory = result.metric_results.set_index("NetworkImplementation")["LearnableParameterMemory(bytes)"]
    assert result.num_samples == 8 and memory["Quantized"] < memory["Floating-Point"]


def test_prepare_network_on_resnet18_computes_the_same_and_reports_every_fold():
    net = _resnet18()
    prepared, changes = prepare_network(net, report=True)
    _same_output(prepared, net, torch.randn(2, 3, 32, 32))
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert (changes.Change == "folded").sum() == batchnorms  # every BatchNorm of ResNet follows a conv
    assert (changes.Change == "replaced").sum() == 0  # nothing else to replace: reported as no rows
    q = dlqnb.DLQuantizer(prepared)
    q.calibrate(torch.rand(2, 3, 32, 32), progress=False)
    assert len(q.quantized_layers()) == 21


def test_bad_networks_are_refused_with_the_argument_named():
    with pytest.raises(TypeError, match="net must be a torch.nn.Module"):
        equalize_layers("resnet18")
    with pytest.raises(TypeError, match="net must be a torch.nn.Module"):
        prepare_network(42)
    with pytest.raises(ValueError, match="max_iterations"):
        equalize_layers(nn.Linear(2, 2), max_iterations=0)


def test_the_public_names_are_lazy_attributes_of_dlqnb():
    assert dlqnb.prepare_network is prepare_network and dlqnb.equalize_layers is equalize_layers
