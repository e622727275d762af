"""The op-traits table and the quantization plan (the package's import structure: tests/test_import_contract.py)."""

from __future__ import annotations

import onnx
import torch
import torch.fx as fx
import torch.nn.functional as F
import torchvision
from onnx import numpy_helper
from torch import nn

from dlqnb import DLQuantizer
from dlqnb.deploy.export import export_qdq_onnx
from dlqnb.core.ops import global_average_pool, op_traits


class ThreeAveragePools(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(x).flatten(1) + F.adaptive_avg_pool2d(x, (1, 1)).flatten(1) + x.mean((2, 3)) + x.mean(1).sum(1)


def test_global_average_pooling_is_recognised_one_way_for_its_three_spellings():
    gm = fx.symbolic_trace(ThreeAveragePools())
    kinds = {node.name: op_traits(gm, node).kind for node in gm.graph.nodes}
    assert kinds["pool"] == kinds["adaptive_avg_pool2d"] == kinds["mean"] == "global_avg_pool"
    assert kinds["mean_1"] == "mean"  # a mean over channels is not pooling
    assert [n.name for n in gm.graph.nodes if global_average_pool(gm, n)] == ["pool", "adaptive_avg_pool2d", "mean"]


def test_traits_of_values_channels_and_targets():
    class Net(nn.Module):
        def forward(self, x):
            n = x.size(0)
            y = torch.cat([x, x], 1).view(n, -1)
            return F.relu(y) + torch.sigmoid(y)

    gm = fx.symbolic_trace(Net())
    traits = {node.name: op_traits(gm, node) for node in gm.graph.nodes}
    assert traits["size"].values == "shape" and not traits["size"].is_layer
    assert traits["cat"].values == "moves" and traits["cat"].channels == "joins"
    assert traits["view"].keeps_type and traits["view"].int8_on == {"gpu", "cpu"}
    assert traits["relu"].int8_on == {"gpu", "cpu"} and traits["sigmoid"].int8_on == frozenset()
    assert traits["add"].kind == "add" and traits["add"].channels == "ties"


def test_plan_decides_once_what_runs_in_int8_on_each_target():
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(num_classes=5).eval()
    images = torch.rand(4, 3, 64, 64)
    plans = {}
    for target in ("gpu", "cpu"):
        q = DLQuantizer(net, execution_environment=target)
        q.calibrate(images, progress=False)
        plans[target] = q.plan()
        assert q.plan() is plans[target]  # built once per calibration
        assert q.quantized_layers() == list(plans[target].layers)
    assert plans["gpu"].node("classifier_3").run == "float" and "global average pooling" in plans["gpu"].node("classifier_3").reason
    assert plans["cpu"].node("classifier_3").run == "int8"
    assert plans["gpu"].node("features_2").run == plans["cpu"].node("features_2").run == "int8"  # max pooling
    assert plans["gpu"].layers["features_0_features_1"].bias_codes is None  # float bias on the GPU target
    assert plans["cpu"].layers["features_0_features_1"].bias_codes.dtype == torch.int32


def test_codes_are_computed_in_one_place_and_exported_as_planned(tmp_path):
    torch.manual_seed(0)
    q = DLQuantizer(torchvision.models.resnet18(num_classes=3).eval(), execution_environment="cpu")
    q.calibrate(torch.rand(2, 3, 32, 32), progress=False)
    plan = q.plan()
    emulated = q.quantize()
    model = onnx.load(export_qdq_onnx(q, tmp_path / "r18.onnx"))
    int8_initializers = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]
    for name, layer in plan.layers.items():
        assert torch.equal(emulated.get_submodule(name).weight_codes, layer.weight_codes)
        assert any(array.shape == tuple(layer.weight_codes.shape) and (array == layer.weight_codes.numpy()).all() for array in int8_initializers), name
    quantize_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize_nodes) == len(plan.quantize_after) + len(plan.quantize_for)

