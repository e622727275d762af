"""QDQ ONNX export, ONNX Runtime int8, predict_int8, and the TensorRT path (with a stand-in module)."""

from __future__ import annotations

import copy
import math
import os
import sys
import types

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import helper, numpy_helper
from torch import nn

from dlqnb.core.cache import read_entry
from dlqnb import DLQuantizer
from dlqnb import deploy
from dlqnb.deploy import backend_choice
from dlqnb.deploy import load as loading
from dlqnb.deploy import ExportError, export_qdq_onnx, load_int8, predict_int8


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """``auto``'s trial, compiled models and engines go to each test's own cache, never the user's."""
    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def calibrated():
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(num_classes=5).eval()
    images = torch.rand(8, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    result = {}
    for env in ("cpu", "gpu"):
        quantizer = DLQuantizer(net, execution_environment=env)
        quantizer.calibrate(images, progress=False)
        result[env] = quantizer
    return net, images, result


def _count(net: nn.Module, kind: type) -> int:
    return sum(isinstance(module, kind) for module in net.modules())


def test_cpu_flavour_equals_the_cpu_emulation_bit_for_bit(calibrated, tmp_path):
    """Every op of SqueezeNet is one ONNX Runtime runs in integers: its scores are the emulation's, exactly."""
    _, images, quantizers = calibrated
    path = export_qdq_onnx(quantizers["cpu"], tmp_path / "cpu.onnx")
    scores = load_int8(path, backend="onnxruntime", threads=1).predict(images)
    with torch.no_grad():
        emulated = quantizers["cpu"].quantize()(images).numpy()
    np.testing.assert_array_equal(scores, emulated)


def test_gpu_flavour_on_onnxruntime_equals_the_gpu_emulation_rounding_ties_to_even_bit_for_bit(calibrated, tmp_path):
    """ONNX Runtime rounds ties to even where it quantizes; with that rounding the "gpu" emulation computes
    what it computes from the file, exactly (the MATLAB-rule emulation differs where ties occur)."""
    _, images, quantizers = calibrated
    path = export_qdq_onnx(quantizers["gpu"], tmp_path / "gpu.onnx")
    scores = load_int8(path, backend="onnxruntime", threads=1).predict(images)
    with torch.no_grad():
        emulated = quantizers["gpu"].quantize(rounding="half_even")(images).numpy()
    np.testing.assert_array_equal(scores, emulated)


def test_every_quantized_convolution_becomes_qlinearconv(calibrated, tmp_path):
    net, _, quantizers = calibrated
    counts = deploy.onnxruntime_ops(export_qdq_onnx(quantizers["cpu"], tmp_path / "cpu.onnx"))
    assert counts.get("QLinearConv") == _count(net, nn.Conv2d)
    assert counts.get("Conv", 0) + counts.get("FusedConv", 0) == 0


def _producers(model):
    return {output: node for node in model.graph.node for output in node.output}


def test_gpu_flavour_is_signed_int8_with_float_biases_as_tensorrt_takes_it(calibrated, tmp_path):
    net, _, quantizers = calibrated
    model = onnx.load(export_qdq_onnx(quantizers["gpu"], tmp_path / "gpu.onnx"))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = _producers(model)
    quantize_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize_nodes
    for node in quantize_nodes:
        zero = initializers[node.input[2]]
        assert zero.dtype == np.int8 and zero == 0
        scale = float(initializers[node.input[1]])
        assert scale == 2.0 ** round(np.log2(scale))  # a power of two
    # TensorRT's parser takes DequantizeLinear only on int8 tensors: activations or int8 weights
    for node in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
        source = node.input[0]
        assert (source in initializers and initializers[source].dtype == np.int8) or producers[source].op_type == "QuantizeLinear"
    assert not [v for v in initializers.values() if v.dtype == np.int32]
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == _count(net, nn.Conv2d)
    for conv in convs:
        assert producers[conv.input[1]].op_type == "DequantizeLinear"
        assert initializers[conv.input[2]].dtype == np.float32  # float bias


def test_cpu_flavour_has_int32_biases_and_uint8_after_relu(calibrated, tmp_path):
    net, _, quantizers = calibrated
    model = onnx.load(export_qdq_onnx(quantizers["cpu"], tmp_path / "cpu.onnx"))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = _producers(model)
    after_relu = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in producers and producers[n.input[0]].op_type == "Relu"]
    assert len(after_relu) == _count(net, nn.ReLU)
    assert all(initializers[n.input[2]].dtype == np.uint8 for n in after_relu)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    bias_sources = [initializers[producers[c.input[2]].input[0]] for c in convs]
    assert all(b.dtype == np.int32 for b in bias_sources)


def test_metadata_round_trip(calibrated, tmp_path):
    _, _, quantizers = calibrated
    model = onnx.load(export_qdq_onnx(quantizers["gpu"], tmp_path / "gpu.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["dlqnb_target"] == "gpu"
    assert props["dlqnb_calibration_fingerprint"] == quantizers["gpu"].network_fingerprint()
    assert model.opset_import[0].version >= 19
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # dynamic batch


def test_excluded_layers_are_exported_in_float(calibrated, tmp_path):
    net, images, _ = calibrated
    quantizer = DLQuantizer(net, execution_environment="cpu", excluded_layers=["features_3_squeeze_features_3_squeeze_activation"])
    quantizer.calibrate(images, progress=False)
    path = export_qdq_onnx(quantizer, tmp_path / "excluded.onnx")
    counts = deploy.onnxruntime_ops(path)
    assert counts["QLinearConv"] == _count(net, nn.Conv2d) - 1 and counts.get("Conv", 0) + counts.get("FusedConv", 0) == 1
    scores = load_int8(path, backend="onnxruntime", threads=1).predict(images)
    with torch.no_grad():
        emulated = quantizer.quantize()(images).numpy()
    _assert_close_to_the_emulation(scores, emulated)


def _assert_close_to_the_emulation(scores, emulated):
    """Where a float layer sits between quantized ones, torch and ONNX Runtime compute it with different
    float kernels, so bit-for-bit equality is not claimed: the zoo's criterion instead (README), a
    difference of at most 0.1 of the largest score and the same top-1 on every sample whose margin
    exceeds twice that difference."""
    difference = float(np.abs(scores - emulated).max())
    assert difference <= 0.1 * float(np.abs(emulated).max()), difference
    top2 = np.sort(emulated, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 2 * difference
    assert decided.any()
    np.testing.assert_array_equal(scores.argmax(1)[decided], emulated.argmax(1)[decided])


class _BesselNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.special.i0(self.conv(x)).mean((2, 3)))


def test_unexportable_op_is_named_and_nothing_is_written(tmp_path, capfd):
    quantizer = DLQuantizer(_BesselNet().eval(), execution_environment="cpu")
    quantizer.calibrate(torch.rand(2, 3, 8, 8), progress=False)
    with pytest.raises(ExportError, match="aten::i0"):
        export_qdq_onnx(quantizer, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    assert "Torch IR graph" not in capfd.readouterr().err  # no exporter dump on the terminal


def test_predict_int8_loads_once_per_file(calibrated, tmp_path, monkeypatch):
    _, images, quantizers = calibrated
    path = export_qdq_onnx(quantizers["cpu"], tmp_path / "model.onnx")
    loads = []
    real = deploy.load_int8
    monkeypatch.setattr(loading, "load_int8", lambda p, *a, **k: loads.append(p) or real(p, *a, **k))
    first = predict_int8(path, images[:2])
    for _ in range(3):
        assert np.array_equal(predict_int8(path, images[:2]), first)
    assert len(loads) == 1
    export_qdq_onnx(quantizers["cpu"], path)
    os.utime(path, (os.path.getatime(path), os.path.getmtime(path) + 5))
    predict_int8(path, images[:2])
    assert len(loads) == 1  # the same content written again: the runner is kept
    export_qdq_onnx(quantizers["gpu"], path)
    predict_int8(path, images[:2])
    assert len(loads) == 2  # another model in the file: loaded again


def test_predict_int8_input_checks(calibrated, tmp_path):
    _, images, quantizers = calibrated
    path = export_qdq_onnx(quantizers["cpu"], tmp_path / "model.onnx", input_size=(96, 96))
    image = (np.random.default_rng(0).random((120, 150, 3)) * 255).astype(np.uint8)
    assert predict_int8(path, image).shape == (1, 5)  # one H×W×3 uint8 image, resized
    with pytest.raises(ValueError, match="H×W×3"):
        predict_int8(path, image[:, :, :2])
    with pytest.raises(ValueError, match="3 channels"):
        predict_int8(path, torch.rand(1, 4, 96, 96))
    with pytest.raises(ValueError, match="96×96"):
        predict_int8(path, torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="dtype int32"):
        predict_int8(path, np.zeros((1, 3, 96, 96), dtype=np.int32))


def test_model_without_dlqnb_metadata_loads_with_a_warning(tmp_path):
    node = helper.make_node("Identity", ["input"], ["scores"])
    graph = helper.make_graph([node], "plain", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    path = tmp_path / "plain.onnx"
    onnx.save(model, path)
    with pytest.warns(UserWarning, match="no dlqnb metadata"):
        runner = load_int8(path, backend="onnxruntime")
    assert runner.backend == "onnxruntime"


# ------------------------------------------------------------------------------- TensorRT
class StandInTensorRT(types.ModuleType):
    """A stand-in for the ``tensorrt`` module (declared as such): records the builder calls."""

    __version__ = "11.0.0-stand-in"

    def __init__(self) -> None:
        super().__init__("tensorrt")
        calls = self.calls = []

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 5

        class Logger:
            WARNING = 2

            def __init__(self, level):
                calls.append(("Logger", level))

        class Input:
            name, shape = "input", (-1, 3, 96, 96)

        class Network:
            def get_input(self, index):
                return Input()

        class Parser:
            num_errors = 0

            def __init__(self, network, logger):
                calls.append(("OnnxParser",))

            def parse(self, data):
                calls.append(("parse", len(data)))
                return True

        class Profile:
            def set_shape(self, name, low, opt, high):
                calls.append(("set_shape", name, low, high))

        class Config:
            def add_optimization_profile(self, profile):
                calls.append(("add_optimization_profile",))

        class Builder:
            def __init__(self, logger):
                calls.append(("Builder",))

            def create_network(self, flags):
                calls.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                calls.append(("build_serialized_network",))
                return b"serialized-engine"

        class TensorIOMode:
            INPUT, OUTPUT = 1, 2

        class Engine:
            num_io_tensors = 2

            def create_execution_context(self):
                return object()

            def get_tensor_name(self, index):
                return ["scores", "input"][index]  # outputs may come first: found by mode, not index

            def get_tensor_mode(self, name):
                return TensorIOMode.INPUT if name == "input" else TensorIOMode.OUTPUT

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                calls.append(("deserialize", data))
                return Engine()

        self.NetworkDefinitionCreationFlag = NetworkDefinitionCreationFlag
        self.TensorIOMode = TensorIOMode
        self.Logger, self.OnnxParser, self.Builder, self.Runtime = Logger, Parser, Builder, Runtime


def test_tensorrt_engine_is_built_strongly_typed_and_cached(calibrated, tmp_path, monkeypatch):
    _, _, quantizers = calibrated
    path = export_qdq_onnx(quantizers["gpu"], tmp_path / "gpu.onnx")
    stand_in = StandInTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Stand-in GPU")
    assert deploy.choose_backend(path) == ("tensorrt", "TensorRT and a CUDA device are present and the model is of the 'gpu' flavour")
    runner = deploy.TensorRTRunner(path, max_batch=8)
    names = [call[0] for call in stand_in.calls]
    assert ("create_network", 1 << 5) in stand_in.calls  # STRONGLY_TYPED: precision from the Q/DQ types
    assert names.index("parse") < names.index("build_serialized_network")
    assert ("set_shape", "input", (1, 3, 96, 96), (8, 3, 96, 96)) in stand_in.calls
    assert read_entry(runner.engine_path) == b"serialized-engine"
    assert "Stand-in-GPU" in runner.engine_path.name and "11.0.0-stand-in" in runner.engine_path.name
    assert (runner.input_name, runner.output_name) == ("input", "scores")
    stand_in.calls.clear()
    deploy.TensorRTRunner(path)
    assert "build_serialized_network" not in [call[0] for call in stand_in.calls]  # loaded from the cache


def test_tensorrt_profile_takes_dynamic_height_and_width_from_the_recorded_size():
    from dlqnb.deploy.runners import _profile_dims

    assert _profile_dims([-1, 3, -1, -1], {"channels": 3, "input_size": [227, 227]}, "m.onnx") == [3, 227, 227]
    with pytest.raises(RuntimeError, match="m.onnx.*input_size"):
        _profile_dims([-1, 3, -1, -1], {"channels": 3}, "m.onnx")


def given_times(monkeypatch, times):
    """Stand in for ``auto``'s timing trial with given seconds per call (backend → batch → seconds);
    returns the list of the runtimes each trial was asked to time."""
    calls = []

    def measure(path, backends, rounds=2):
        calls.append(list(backends))
        return {name: times[name] for name in backends}

    monkeypatch.setattr(backend_choice, "measure_backends", measure)
    return calls


def given_agreement(monkeypatch, difference, largest_score=20.0):
    """Stand in for ``auto``'s score check with a given largest difference of OpenVINO's scores from
    ONNX Runtime's (whether they agree is the host's; tests of the decision must not depend on it);
    returns the list of the runtimes each check was asked to compare."""
    calls = []

    def measure(path, backends, runners=None):
        calls.append(list(backends))
        return {"differences": {"openvino": difference}, "largest_score": largest_score, "inputs": 4, "cpu": "a CPU", "date": "today"}

    monkeypatch.setattr(backend_choice, "score_differences", measure)
    return calls


def test_backend_choice_and_errors(calibrated, tmp_path, monkeypatch):
    _, _, quantizers = calibrated
    gpu = export_qdq_onnx(quantizers["gpu"], tmp_path / "gpu.onnx")
    cpu = export_qdq_onnx(quantizers["cpu"], tmp_path / "cpu.onnx")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, as on this machine
    cpu_runtimes = {"onnxruntime", "openvino"}  # which of them runs a file is measured on this CPU
    backend, reason = deploy.choose_backend(gpu)
    assert set(backend.split("/")) <= cpu_runtimes and reason.startswith("TensorRT is not installed")
    with pytest.raises(RuntimeError, match="pip install 'dlqnb\\[tensorrt\\]'"):
        load_int8(gpu, backend="tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", StandInTensorRT())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    backend, reason = deploy.choose_backend(cpu)  # TensorRT and a GPU, but a CPU-flavour file
    assert "'cpu' flavour" in reason and set(backend.split("/")) <= cpu_runtimes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    backend, reason = deploy.choose_backend(gpu)
    assert set(backend.split("/")) <= cpu_runtimes and reason.startswith("no CUDA device")
    with pytest.raises(ValueError, match="backend"):
        load_int8(gpu, backend="tflite")


def test_engine_cache_key_changes_with_model_version_and_gpu():
    paths = {deploy.engine_cache_path(b"a", "11", "A100"), deploy.engine_cache_path(b"b", "11", "A100"),
             deploy.engine_cache_path(b"a", "10", "A100"), deploy.engine_cache_path(b"a", "11", "L4")}
    assert len(paths) == 4


def _real_tensorrt_reason() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (it cannot be installed on this machine)"
    if not torch.cuda.is_available():
        return "no CUDA device: a TensorRT engine can only be built and run on an NVIDIA GPU"
    return None


@pytest.mark.skipif(_real_tensorrt_reason() is not None, reason=_real_tensorrt_reason() or "")
def test_real_tensorrt_engine_agrees_with_gpu_emulation(calibrated, tmp_path):
    _, images, quantizers = calibrated
    path = export_qdq_onnx(quantizers["gpu"], tmp_path / "gpu.onnx")
    runner = load_int8(path, backend="tensorrt")
    with torch.no_grad():
        emulated = quantizers["gpu"].quantize()(images).numpy()
    assert (runner.predict(images).argmax(1) == emulated.argmax(1)).mean() >= 0.99


def test_per_channel_weights_emulate_and_deploy_alike(calibrated, tmp_path):
    net, images, _ = calibrated
    net = copy.deepcopy(net)
    with torch.no_grad():  # channels of different magnitudes, as trained filters have
        net.features[0].weight.mul_((2.0 ** (torch.arange(64) % 5 - 2)).view(-1, 1, 1, 1))
    quantizer = DLQuantizer(net, execution_environment="cpu", per_channel_weights=True)
    quantizer.calibrate(images, progress=False)
    fractions = quantizer.weight_fraction_lengths()["features_0_features_1"]
    weight = quantizer.optimized.fused("features_0_features_1").layer.weight.detach()
    assert len(fractions) == 64 and len(set(fractions)) > 1
    assert fractions == [6 - math.floor(math.log2(m)) for m in weight.abs().flatten(1).amax(1).tolist()]
    path = export_qdq_onnx(quantizer, tmp_path / "per_channel.onnx")
    model = onnx.load(path)
    initializers = {i.name: i for i in model.graph.initializer}
    first_weight = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers and list(initializers[n.input[0]].dims) == [64, 3, 3, 3])
    assert list(initializers[first_weight.input[1]].dims) == [64]
    scores = load_int8(path, backend="onnxruntime", threads=1).predict(images)
    with torch.no_grad():
        emulated = quantizer.quantize()(images).numpy()
    np.testing.assert_array_equal(scores, emulated)  # every op still one ONNX Runtime runs in integers
    assert deploy.onnxruntime_ops(path)["QLinearConv"] == _count(net, nn.Conv2d)


def test_float_export_computes_the_float_network(calibrated, tmp_path):
    net, images, quantizers = calibrated
    path = deploy.export_float_onnx(quantizers["cpu"], tmp_path / "fp32.onnx")
    model = onnx.load(path)
    assert not [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    scores = load_int8(path, backend="onnxruntime", threads=1).predict(images)
    with torch.no_grad():
        assert np.allclose(scores, net(images).numpy(), rtol=1e-4, atol=1e-5)


def test_float16_export_runs_close_to_float32(calibrated, tmp_path):
    net, images, quantizers = calibrated
    path = deploy.export_float_onnx(quantizers["gpu"], tmp_path / "fp16.onnx", dtype="float16")
    model = onnx.load(path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    runner = load_int8(path, backend="onnxruntime", threads=1)
    scores = runner.predict(images)
    assert scores.dtype == np.float32
    with torch.no_grad():
        reference = net(images).numpy()
    assert np.abs(scores - reference).max() < 0.02 * np.abs(reference).max() + 1e-3
    assert (scores.argmax(1) == reference.argmax(1)).mean() >= 0.75
