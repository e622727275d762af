"""Graph capture of what real model zoos write: parameters used in forward, functional pooling, shape
queries, split/chunk/permute, 1-D convolutions, BatchNorm before a convolution, squeeze-and-excitation,
upsampling; each goes calibrate → quantize → export → ONNX Runtime and agrees with the emulation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlqnb import DLQuantizer
from dlqnb.bench.reach import check_network
from dlqnb.deploy import export_qdq_onnx, load_int8


class LayerScale(nn.Module):
    """ConvNeXt's layer scale and a weight-standardized convolution: parameters used directly in forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.ws_weight = nn.Parameter(torch.randn(8, 8, 3, 3))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv(x) * self.gamma
        w = (self.ws_weight - self.ws_weight.mean((1, 2, 3), keepdim=True)) / (self.ws_weight.std((1, 2, 3), keepdim=True) + 1e-5)
        x = F.relu(F.conv2d(x, w, padding=1))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Shapes(nn.Module):
    """Shape queries, view, split/chunk, permute/transpose, functional pooling and interpolation."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
        a, b = x.chunk(2, dim=1)
        x = self.conv2(F.max_pool2d(a, 2)) + F.avg_pool2d(b, 2).repeat(1, 2, 1, 1)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = x.permute(0, 2, 3, 1).mean((1, 2))
        return self.fc(x)


class PreActivation(nn.Module):
    """DenseNet's BatchNorm before its convolution, squeeze-and-excitation, SiLU and Hardswish."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        x = F.silu(self.conv(F.relu(self.bn(x))))
        scale = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(x.mean((2, 3), keepdim=True)))))
        x = F.hardswish(self.conv2(x * scale))
        return self.head(x)


class Signal(nn.Module):
    """1-D convolutions on sequences."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 8, 3, padding="same")
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = F.max_pool1d(F.relu(self.conv1(x.flatten(2))), 2)
        return self.fc(F.relu(self.conv2(x)).mean(-1))


def _randomized(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


#: Networks whose float ops compute exactly on any kernel (nearest upsampling, repeats, means and average
#: pools of a few int8 values by a power of two): on the ``"cpu"`` target ONNX Runtime must equal the
#: emulation bit for bit, as the README says. Elsewhere float kernels may round differently (sigmoid, SiLU,
#: a standardization's square root) and the deployment only has to agree.
EXACT_ON_CPU = (Shapes, Signal)


@pytest.mark.parametrize("target", ["gpu", "cpu"])
@pytest.mark.parametrize("make", [LayerScale, Shapes, PreActivation, Signal], ids=lambda m: m.__name__)
def test_network_goes_through_export_and_agrees_with_the_emulation(make, target, tmp_path):
    torch.manual_seed(1)
    net = _randomized(make())
    images = torch.rand(6, 3, 16, 16)
    row = check_network(net, images, target, tmp_path)
    assert row["error"] == "", row.get("traceback", row["error"])
    assert row["quantized_layers"] >= 2
    if target == "cpu" and make in EXACT_ON_CPU:
        assert row["max_difference"] == 0.0, row  # bit for bit
    else:
        assert row["top1_agreement_decided"] == 1.0 and row["relative_difference"] <= 0.1, row


@pytest.mark.parametrize("make", EXACT_ON_CPU, ids=lambda m: m.__name__)
def test_onnx_runtime_equals_the_cpu_emulation_bit_for_bit(make, tmp_path):
    torch.manual_seed(1)
    net = _randomized(make())
    images = torch.rand(6, 3, 16, 16)
    quantizer = DLQuantizer(net, execution_environment="cpu")
    quantizer.calibrate(images, progress=False)
    with torch.no_grad():
        emulated = quantizer.quantize()(images)
    scores = load_int8(export_qdq_onnx(quantizer, tmp_path / "model.onnx"), backend="onnxruntime").predict(images.numpy())
    assert torch.equal(torch.from_numpy(scores), emulated)


def test_shape_queries_are_not_layers():
    q = DLQuantizer(_randomized(Shapes()))
    table = q.calibrate(torch.rand(2, 3, 16, 16), progress=False)
    names = set(table["Network Layer Name"])
    assert not {"size", "getitem", "getitem_1"} & names  # x.size() and its items are shape queries
    assert "chunk" not in set(q.unsupported_layers()["Layer"])
    assert not [layer for layer in q.unsupported_layers()["Layer"] if layer.startswith(("size", "getitem"))]


def test_parameters_used_in_forward_calibrate_and_stay_float():
    q = DLQuantizer(_randomized(LayerScale()))
    q.calibrate(torch.rand(2, 3, 16, 16), progress=False)
    plan = q.plan()
    assert plan.node("mul").run == "float" and "conv2d" in {name for name, _ in plan.float_layers()}
    assert "conv" in plan.layers and "fc" in plan.layers


def test_batchnorm_before_a_convolution_stays_float_and_feeds_it_quantized():
    q = DLQuantizer(_randomized(PreActivation()), execution_environment="cpu")
    q.calibrate(torch.rand(2, 3, 16, 16), progress=False)
    plan = q.plan()
    assert plan.node("bn").run == "float" and plan.node("relu").run == "int8"
    assert "bn" in plan.quantize_for  # quantized for the int8 ReLU that reads it
    assert plan.node("mean").kind == "global_avg_pool" and plan.node("mean").run == "int8"  # QLinearGlobalAveragePool
