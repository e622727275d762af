"""Graph capture where torch.fx symbolic tracing meets Python control flow in a submodule: that
submodule is kept whole (one float layer running its own forward), the rest is traced, folded,
calibrated, quantized and exported as usual, and one warning names what was kept whole."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
import torchvision
from torch import nn

from dlqnb import DLQuantizer
from dlqnb.bench.reach import check_network
from dlqnb.core.capture import CaptureWarning, capture_network, float_reason
from dlqnb.core.graph import layer_name
from dlqnb.errors import NetworkGraphError

#: Largest difference between the emulation and the float network, relative to the largest score: int8
#: activations and weights of a random network move the scores by a few quantization steps.
RELATIVE_TOLERANCE = 0.1


class PadToEven(nn.Module):
    """Pads the width to an even size: control flow on a tensor size, which torch.fx cannot trace."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1))
        return x


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pad = PadToEven()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pad(F.relu(self.bn(self.conv(x))))


class OddWidthNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = Block()
        self.head = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


class CropBack(nn.Module):
    """Control flow of its own on what a kept-whole child returns: kept whole in turn, with the child."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = PadToEven()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pad(x)
        if y.shape[-1] > x.shape[-1]:
            y = y[..., :-1]
        return self.conv(y)


class RootBranches(nn.Module):
    """Control flow in the network's own forward: nothing to keep whole but the network itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.shape[-1] > 8 else x


def _odd_width_net() -> nn.Module:
    torch.manual_seed(0)
    net = OddWidthNet().eval()
    with torch.no_grad():  # BatchNorm statistics that folding must carry
        for bn in (net.stem[1], net.block.bn):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return net


def _images(width: int, count: int = 16) -> torch.Tensor:
    return torch.rand(count, 3, 15, width, generator=torch.Generator().manual_seed(width))


def _whole_layers(quantizer: DLQuantizer) -> list[str]:
    return [layer_name(node) for node in quantizer.optimized.nodes() if float_reason(node)]


def _quantizer(net: nn.Module, **options) -> tuple[DLQuantizer, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantizer = DLQuantizer(net, **options)
    return quantizer, [w for w in caught if issubclass(w.category, CaptureWarning)]


def test_the_untraceable_submodule_is_kept_whole_with_one_warning_naming_it():
    net = _odd_width_net()
    with pytest.raises(fx.proxy.TraceError):
        fx.symbolic_trace(net)
    quantizer, caught = _quantizer(net)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "'block_pad' (PadToEven)" in message and "`if x.shape[-1] % 2:`" in message, message
    # the innermost module whose forward fails is the one kept whole: its sibling conv is traced and folded
    assert _whole_layers(quantizer) == ["block_pad"]
    assert "block_conv_block_bn_relu" in quantizer.optimized.layers
    assert "PadToEven's forward cannot be traced by torch.fx" in float_reason(next(n for n in quantizer.optimized.nodes() if n.name == "block_pad"))


@pytest.mark.parametrize("width", [15, 16])
def test_the_captured_network_computes_what_the_network_does_at_every_width(width):
    # the whole submodule runs its own forward: it pads odd widths and leaves even ones as they are
    net = _odd_width_net()
    quantizer, _ = _quantizer(net)
    x = _images(width)
    with torch.no_grad():
        assert torch.allclose(quantizer.optimized.module(x), net(x), atol=1e-5)


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_calibrate_and_the_emulation_is_close_to_the_float_network(target):
    net = _odd_width_net()
    quantizer, _ = _quantizer(net, execution_environment=target)
    table = quantizer.calibrate(_images(15), progress=False)
    assert quantizer.num_calibration_samples_ == 16
    # the kept-whole layer's output is calibrated like any float layer's, under its module's name
    assert {"stem_2", "relu", "block_pad", "head_4"} <= set(table["Network Layer Name"])
    assert "block_pad_Activations" in set(table["Optimized Layer Name"])
    plan = quantizer.plan()
    assert {"stem_0_stem_1_stem_2", "block_conv_block_bn_relu", "head_0_head_1", "head_4"} <= set(plan.layers)
    assert "block_pad" in dict(plan.float_layers())
    for width in (15, 16):  # the even width takes the other branch of the kept-whole submodule
        x = _images(width)
        with torch.no_grad():
            expected, emulated = net(x), quantizer.quantize()(x)
        assert float((emulated - expected).abs().max()) <= RELATIVE_TOLERANCE * float(expected.abs().max())


def test_validate_runs_float_and_quantized_networks():
    net = _odd_width_net()
    quantizer, _ = _quantizer(net, execution_environment="cpu")
    x = _images(15)
    quantizer.calibrate(x, progress=False)
    with torch.no_grad():
        labels = net(x).argmax(1)
    result = quantizer.validate([(x, labels)], progress=False)
    assert result.num_samples == 16
    assert result.quantized_scores.shape == (16, 5)


@pytest.mark.parametrize("target", ["gpu", "cpu"])
def test_export_and_onnxruntime_agree_with_the_emulation(target, tmp_path):
    with pytest.warns(CaptureWarning, match="'block_pad'"):
        row = check_network(_odd_width_net(), _images(15), target, tmp_path, name="OddWidthNet")
    assert row["error"] == "", row.get("traceback", row["error"])
    assert row["exported"] and row["captured_whole"] == ["block_pad"]
    assert row["top1_agreement_decided"] == 1.0, row
    assert row["relative_difference"] <= RELATIVE_TOLERANCE, row


def test_a_network_fx_traces_is_captured_as_fx_captures_it_without_a_warning():
    net = torchvision.models.resnet18(num_classes=5).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptureWarning)
        captured = capture_network(net)
    traced = fx.symbolic_trace(net)
    assert [(n.op, n.name, n.target) for n in captured.graph.nodes] == [(n.op, n.name, n.target) for n in traced.graph.nodes]
    assert all(float_reason(node) is None for node in captured.graph.nodes)


def test_a_parent_that_cannot_be_traced_either_is_kept_whole_and_named_alone():
    net = nn.Sequential(nn.Conv2d(3, 3, 1), CropBack(), nn.ReLU()).eval()
    quantizer, caught = _quantizer(net)
    assert _whole_layers(quantizer) == ["1"]
    assert len(caught) == 1 and "'1' (CropBack)" in str(caught[0].message) and "PadToEven" not in str(caught[0].message)
    x = _images(15, 2)
    with torch.no_grad():
        assert torch.allclose(quantizer.optimized.module(x), net(x), atol=1e-6)


def test_control_flow_in_the_networks_own_forward_is_an_error_naming_it():
    with pytest.raises(NetworkGraphError, match=r"torch.fx cannot trace RootBranches: .*own forward"):
        DLQuantizer(RootBranches())


MOBILEVIT_BLOCKS = ["stages_2_1", "stages_3_1", "stages_4_1"]


def _mobilevit() -> nn.Module:
    timm = pytest.importorskip("timm", reason="mobilevit_xxs comes from timm (the test extra installs it)")
    torch.manual_seed(0)
    return timm.create_model("mobilevit_xxs", pretrained=False, num_classes=5).eval()


def test_mobilevit_xxs_keeps_its_mobilevit_blocks_whole_and_quantizes_the_rest():
    net = _mobilevit()
    quantizer, caught = _quantizer(net, execution_environment="cpu")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert all(f"'{name}' (MobileVitBlock)" in message for name in MOBILEVIT_BLOCKS), message
    assert "mobilevit.py" in message
    assert _whole_layers(quantizer) == MOBILEVIT_BLOCKS
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    quantizer.calibrate(x, progress=False)
    plan = quantizer.plan()
    assert set(MOBILEVIT_BLOCKS) <= set(dict(plan.float_layers()))
    assert len(plan.layers) >= 20  # the stem, the inverted residual blocks, the final conv and the classifier
    with torch.no_grad():
        expected, emulated = net(x), quantizer.quantize()(x)
        assert float((emulated - expected).abs().max()) <= 0.2 * float(expected.abs().max())
        # at 96×96 the last block's 3×3 map is resized to whole patches: the branch runs as the network's
        y = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
        assert torch.allclose(quantizer.optimized.module(y), net(y), atol=1e-4)
