"""SqueezeNet under MATLAB's layer names: the network, its files, its tables and its summary."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from dlqnb import DLQuantizer
from dlqnb.deploy import export_qdq_onnx, load_int8
from dlqnb.core.graph import layer_name, network_summary, trace_network
from dlqnb.models.networks import SqueezeNet, load_network, replace_classifier, save_network, squeezenet, torchvision_state_dict

# MATLAB's squeezenet, layer by layer as its Layers array lists them (68 layers, 75 connections).
MATLAB_FIRE_PARTS = ("squeeze1x1", "relu_squeeze1x1", "expand1x1", "relu_expand1x1", "expand3x3", "relu_expand3x3", "concat")
MATLAB_LAYERS = (
    ["data", "conv1", "relu_conv1", "pool1"]
    + [f"fire{n}-{part}" for n in (2, 3) for part in MATLAB_FIRE_PARTS]
    + ["pool3"]
    + [f"fire{n}-{part}" for n in (4, 5) for part in MATLAB_FIRE_PARTS]
    + ["pool5"]
    + [f"fire{n}-{part}" for n in (6, 7, 8, 9) for part in MATLAB_FIRE_PARTS]
    + ["drop9", "conv10", "relu_conv10", "pool10", "prob", "ClassificationLayer_predictions"]
)
MATLAB_CONNECTIONS = 75


@pytest.fixture(scope="module")
def transferred():
    torch.manual_seed(0)
    return replace_classifier(SqueezeNet(num_classes=12).eval(), 5, list("abcde"), name="new_conv").eval()


@pytest.fixture(scope="module")
def calibrated(transferred):
    quantizer = DLQuantizer(transferred, execution_environment="gpu")
    quantizer.calibrate(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)), progress=False)
    return quantizer


def test_layers_carry_matlabs_names_in_matlabs_order():
    assert len(MATLAB_LAYERS) == 68
    summary = network_summary(SqueezeNet(num_classes=5))
    # dlqnb's networks return scores before softmax: no prob and classification layers; a flatten instead
    assert summary.layers == MATLAB_LAYERS[:-2] + ["flatten"]
    assert summary.input_names == ["data"] and summary.output_names == ["flatten"]
    # two connections fewer (pool10 -> prob -> classification) and one more (pool10 -> flatten)
    assert len(summary.connections) == MATLAB_CONNECTIONS - 2 + 1
    fire2_concat = summary.connections[summary.connections["Destination"] == "fire2-concat"]
    assert sorted(fire2_concat["Source"]) == ["fire2-relu_expand1x1", "fire2-relu_expand3x3"]
    assert "SqueezeNet with properties" in repr(summary) and "{'data'}" in repr(summary)


def test_same_arithmetic_as_torchvision_squeezenet1_1():
    reference = torchvision.models.squeezenet1_1(num_classes=7).eval()
    net = SqueezeNet(num_classes=7).eval()
    net.load_state_dict({**net.state_dict(), **torchvision_state_dict(reference.state_dict())})
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference((images - net.data.mean) / net.data.std)
        assert torch.equal(net(images), expected)


def test_version_1_network_files_with_torchvision_keys_still_load(tmp_path):
    reference = torchvision.models.squeezenet1_1(num_classes=3).eval()
    net = SqueezeNet(num_classes=3)
    state = {"data.mean": net.data.mean, "data.std": net.data.std, **reference.state_dict()}
    payload = {
        "format": "dlqnb-network",
        "version": 1,
        "architecture": "squeezenet1_1",
        "num_classes": 3,
        "class_names": ["a", "b", "c"],
        "input_size": [96, 96],
        "mean": net.data.mean.flatten().tolist(),
        "std": net.data.std.flatten().tolist(),
        "state_dict": state,
    }
    path = tmp_path / "old.pt"
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    loaded = load_network(path)
    assert torch.equal(loaded.conv1.weight, reference.features[0].weight)
    assert torch.equal(loaded.get_submodule("fire9-expand3x3").bias, reference.features[12].expand3x3.bias)
    assert torch.equal(loaded.conv10.weight, reference.classifier[1].weight)


def test_renamed_classifier_survives_a_network_file(transferred, tmp_path):
    save_network(transferred, tmp_path / "net.pt")
    loaded = load_network(tmp_path / "net.pt")
    assert loaded.classifier_name == "new_conv" and not hasattr(loaded, "conv10")
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images), transferred(images))


def test_renaming_needs_a_network_that_can_rename():
    with pytest.raises(ValueError, match="cannot name the new layer 'new_conv'.*'classifier.1'"):
        replace_classifier(torchvision.models.squeezenet1_1(num_classes=3), 5, name="new_conv")
    with pytest.raises(ValueError, match="'fire2-concat' is taken|is taken"):
        squeezenet(weights=None).replace_layer("conv10", "fire2-concat", nn.Conv2d(512, 5, 1))


def test_calibration_table_names_read_like_matlabs(calibrated):
    table = calibrated.calibration_table
    first = table.iloc[0]
    assert (first["Optimized Layer Name"], first["Network Layer Name"]) == ("conv1_relu_conv1_Weights", "relu_conv1")
    rows = dict(zip(table["Optimized Layer Name"], table["Network Layer Name"]))
    assert rows["fire2-squeeze1x1_fire2-relu_squeeze1x1_Bias"] == "fire2-relu_squeeze1x1"
    assert rows["fire2-expand3x3_fire2-relu_expand3x3_Weights"] == "fire2-relu_expand3x3"
    assert rows["new_conv_relu_conv10_Weights"] == "relu_conv10"
    assert rows["fire5-concat_Activations"] == "fire5-concat"
    assert not any("fire2_squeeze1x1" in name for name in rows)  # fx's identifier never shows


def test_quantization_details_and_exclusion_use_matlabs_names(calibrated):
    details = calibrated.quantize().quantization_details_
    assert details.quantized_layer_names[:4] == ["conv1", "relu_conv1", "pool1", "fire2-squeeze1x1"]
    assert len(details.quantized_layer_names) == 55  # the count MATLAB's example prints
    learnables = details.quantized_learnables
    assert list(learnables["Layer"][:4]) == ["conv1", "conv1", "fire2-squeeze1x1", "fire2-squeeze1x1"]
    calibrated.exclude("fire2-squeeze1x1_fire2-relu_squeeze1x1")
    try:
        names = calibrated.quantize().quantization_details_.quantized_layer_names
        assert "fire2-squeeze1x1" not in names and "fire2-expand1x1" in names
    finally:
        calibrated.include("fire2-squeeze1x1_fire2-relu_squeeze1x1")


def test_names_change_no_number_from_calibration_to_deployment(transferred, tmp_path):
    class TorchvisionLayout(nn.Module):  # the same network under torchvision's module names
        def __init__(self) -> None:
            super().__init__()
            self.data = transferred.data
            self.net = torchvision.models.squeezenet1_1(num_classes=5).eval()
            ours = transferred.state_dict()
            renamed = torchvision_state_dict(self.net.state_dict(), transferred.classifier_name)
            self.net.load_state_dict({key: ours[new] for key, new in zip(self.net.state_dict(), renamed)})

        def forward(self, x):
            return self.net(self.data(x))

    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    results = []
    for index, network in enumerate((transferred, TorchvisionLayout().eval())):
        quantizer = DLQuantizer(network, execution_environment="cpu")
        quantizer.calibrate(images, progress=False)
        path = export_qdq_onnx(quantizer, tmp_path / f"layout{index}.onnx")
        with torch.no_grad():
            emulated = quantizer.quantize()(images).numpy()
        deployed = load_int8(path, backend="onnxruntime", threads=1).predict(images)
        results.append((quantizer.calibration_table[["MinValue", "MaxValue"]].to_numpy(), emulated, deployed))
    for ours, theirs in zip(*results):
        assert np.array_equal(ours, theirs)


def test_layer_name_keeps_a_module_name_and_numbers_repeated_calls():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.add_module("fire2-relu", nn.ReLU())
            self.add_module("Mixed_5b", nn.Identity())
            self.add_module("layer1A", nn.Identity())  # a capital after a digit: fx adds no "_" there
            self.add_module("ALL_CAPS", nn.Identity())

        def forward(self, x):
            relu = self.get_submodule("fire2-relu")
            x = self.get_submodule("Mixed_5b")(relu(relu(x)))
            return self.get_submodule("ALL_CAPS")(self.get_submodule("layer1A")(x))

    names = [layer_name(node) for node in trace_network(Twice()).graph.nodes if node.op == "call_module"]
    assert names == ["fire2-relu", "fire2-relu_1", "Mixed_5b", "layer1A", "ALL_CAPS"]
