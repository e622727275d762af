"""Fault and bad-input cases of the deployment runtimes (issue 20): damaged and unwritable caches,
edited model metadata, fixed-batch models under ``auto``, bad runner arguments, images in the wrong
scale, a model file replaced behind ``predict_int8``'s back, and 1-D signal models."""

from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from dlqnb import DLQuantizer
from dlqnb.deploy import backend_choice
from dlqnb.deploy import load as loading
from dlqnb.deploy import model_file
from dlqnb.deploy import runners as runtime
from dlqnb.core.cache import CacheWarning, cache_dir, read_entry, write_entry
from dlqnb.deploy import ModelFileError, OpenVINORunner, export_qdq_onnx, load_int8, predict_int8
from test_deploy import StandInTensorRT, given_agreement, given_times

SIZE = 16


class TinyNet(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU())
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def _quantizer(classes: int, env: str, generator_start: int) -> DLQuantizer:
    torch.manual_seed(generator_start)
    quantizer = DLQuantizer(TinyNet(classes).eval(), execution_environment=env)
    quantizer.calibrate(torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(generator_start)), progress=False)
    return quantizer


@pytest.fixture(scope="module")
def quantizers():
    return {"cpu": _quantizer(3, "cpu", 0), "gpu": _quantizer(3, "gpu", 0), "other": _quantizer(3, "cpu", 7)}


@pytest.fixture
def model(quantizers, tmp_path):
    return export_qdq_onnx(quantizers["cpu"], tmp_path / "model.onnx")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test writes its cache entries into its own folder, never the user's cache."""
    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path / "cache"))


def _images(count: int = 3) -> torch.Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))


def _cache_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]


# ------------------------------------------------------------------------------- §2 caches
openvino_installed = pytest.mark.skipif(
    backend_choice.installed_version("openvino") is None, reason="OpenVINO is not installed (pip install 'dlqnb[openvino]')"
)


@openvino_installed
def test_a_compiled_openvino_model_with_1kb_overwritten_is_compiled_again_with_one_warning(model, monkeypatch):
    import openvino

    first = OpenVINORunner(model, threads=1)
    expected = first.predict(_images())
    blob = bytearray(first.cache_path.read_bytes())
    middle = len(blob) // 2
    blob[middle : middle + 1024] = bytes(1024)  # 1 KB of zeros mid-file
    first.cache_path.write_bytes(bytes(blob))
    compiled = []
    real = openvino.Core.compile_model
    monkeypatch.setattr(openvino.Core, "compile_model", lambda self, *a, **k: compiled.append(1) or real(self, *a, **k))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = OpenVINORunner(model, threads=1)
    messages = _cache_warnings(caught)
    assert len(messages) == 1 and first.cache_path.name in messages[0] and "checksum" in messages[0]
    assert compiled == [1]
    assert np.array_equal(again.predict(_images()), expected)
    assert OpenVINORunner(model, threads=1) and compiled == [1]  # the rewritten entry is intact: loaded, not compiled


def test_a_damaged_tensorrt_engine_is_built_again_with_one_warning(quantizers, tmp_path, monkeypatch):
    path = export_qdq_onnx(quantizers["gpu"], tmp_path / "gpu.onnx")
    stand_in = StandInTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Stand-in GPU")
    runner = runtime.TensorRTRunner(path)
    stored = runner.engine_path.read_bytes()
    runner.engine_path.write_bytes(stored[:-1] + b"X")  # the engine's last byte changed
    stand_in.calls.clear()
    with pytest.warns(CacheWarning, match=runner.engine_path.name):
        runtime.TensorRTRunner(path)
    assert ("build_serialized_network",) in stand_in.calls
    assert ("deserialize", b"serialized-engine") in stand_in.calls


@openvino_installed
@pytest.mark.parametrize(
    "entry, problem",
    [
        (["openvino"], "does not hold a backend choice"),  # valid JSON, wrong shape
        ({"backend": "tensorrt", "reason": "r", "date": "d"}, "names 'tensorrt'"),  # a runtime not available here
        ({"backend": "onnxruntime/openvino/x", "reason": "r", "date": "d"}, "names"),
    ],
)
def test_a_malformed_choice_entry_is_measured_again_with_one_warning(model, monkeypatch, entry, problem):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    given_agreement(monkeypatch, 0.0)
    calls = given_times(monkeypatch, {"onnxruntime": {1: 0.004, 32: 0.120}, "openvino": {1: 0.003, 32: 0.090}})
    with open(model, "rb") as stream:
        cache = backend_choice.choice_cache_path(stream.read())
    assert write_entry(cache, json.dumps(entry).encode())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner = load_int8(model)
    messages = _cache_warnings(caught)
    assert len(messages) == 1 and cache.name in messages[0] and problem in messages[0]
    assert runner.backend == "openvino" and calls == [["onnxruntime", "openvino"]]
    assert json.loads(read_entry(cache))["backend"] == "openvino"


def test_the_choice_entry_is_one_flat_file_even_when_a_version_holds_a_slash(monkeypatch):
    real = backend_choice.installed_version
    monkeypatch.setattr(backend_choice, "installed_version", lambda name: "2026.4.1-22982-releases/2026/4" if name == "openvino" else real(name))
    path = backend_choice.choice_cache_path(b"model")
    assert path.parent == cache_dir() / "backend_choice"
    assert "releases-2026-4" in path.name
    assert backend_choice.agreement_cache_path(b"model").parent == path.parent


@openvino_installed
def test_a_read_only_cache_runs_openvino_and_auto_without_caching(model, read_only_folder, monkeypatch):
    monkeypatch.setenv("DLQNB_CACHE", str(read_only_folder / "cache"))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    given_agreement(monkeypatch, 0.0)
    given_times(monkeypatch, {"onnxruntime": {1: 0.004, 32: 0.120}, "openvino": {1: 0.003, 32: 0.090}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = load_int8(model, backend="openvino", threads=1).predict(_images())
        runner = load_int8(model)
    assert _cache_warnings(caught) and all("continuing without caching" in m or "cannot" in m for m in _cache_warnings(caught))
    assert np.array_equal(scores, load_int8(model, backend="onnxruntime", threads=1).predict(_images()))
    assert runner.backend == "openvino"
    assert not list(read_only_folder.iterdir())


# ------------------------------------------------------------------------------- §4 float images in 0–255
def test_float_images_in_0_255_are_scored_with_a_warning(model):
    images = _images()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # images in [0, 1]: no warning
        expected = predict_int8(model, images * 255 / 255)
    with pytest.warns(UserWarning, match=r"reach 25\d.*pixel range \[0, 1\].*255"):
        scores = predict_int8(model, images * 255)
    assert scores.shape == expected.shape
    with pytest.warns(UserWarning, match="pixel range"):
        load_int8(model, backend="onnxruntime").predict((images * 255).numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_int8(model, backend="onnxruntime").predict(images * 1.2)  # a resampling overshoot is no other scale


# ------------------------------------------------------------------------------- §6 model files and runners
def _edited(path, tmp_path, name, **props):
    model = onnx.load(path)
    values = {p.key: p.value for p in model.metadata_props}
    values.update(props)
    onnx.helper.set_model_props(model, values)
    target = tmp_path / name
    onnx.save(model, target)
    return target


@pytest.mark.parametrize(
    "props, field",
    [
        ({"dlqnb_class_names": "[cat, dog"}, "dlqnb_class_names is not valid JSON"),
        ({"dlqnb_class_names": '{"a": 1}'}, "dlqnb_class_names must be a JSON list"),
        ({"dlqnb_preprocessing": "null"}, "dlqnb_preprocessing must be a JSON object"),
        ({"dlqnb_preprocessing": json.dumps({"input_size": [32, 32], "channels": 3})}, "input_size records 32"),
        ({"dlqnb_preprocessing": json.dumps({"input_size": [16, 16], "channels": 1})}, "channels records 1"),
        ({"dlqnb_preprocessing": json.dumps({"input_size": [16], "channels": 3})}, "input_size \\[16\\] is for a 3-D input"),
        ({"dlqnb_target": "tpu"}, "dlqnb_target is 'tpu'"),
        ({"dlqnb_preprocessing": json.dumps({"input_size": [16, 16], "channels": 3, "pixel_range": ["a", "b"]})}, "pixel_range must be"),
        ({"dlqnb_preprocessing": json.dumps({"input_size": [16, 16], "channels": 3, "pixel_range": [1, 0]})}, "pixel_range must be"),
    ],
)
def test_edited_metadata_is_a_model_file_error_naming_file_and_field(model, tmp_path, props, field):
    edited = _edited(model, tmp_path, "edited.onnx", **props)
    with pytest.raises(ModelFileError, match=f"edited.onnx.*{field}"):
        model_file.model_info(edited)
    with pytest.raises(ModelFileError, match=f"edited.onnx.*{field}"):
        load_int8(edited, backend="onnxruntime").predict(_images())


def _fixed_batch_model(path) -> None:
    """A foreign ONNX file (no dlqnb metadata) whose input takes batches of exactly one."""
    torch.manual_seed(0)
    net = TinyNet().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False, input_names=["input"], output_names=["scores"])


def test_auto_tries_a_fixed_batch_model_only_at_the_batch_it_accepts(tmp_path, monkeypatch):
    path = tmp_path / "fixed.onnx"
    _fixed_batch_model(path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.warns(UserWarning, match="no dlqnb metadata"):
        runner = load_int8(path)  # a real trial
    assert runner.backend in ("onnxruntime", "openvino")  # one batch size: nothing to split
    assert "batch 32" not in runner.reason
    assert runner.predict(_images(1)).shape == (1, 3)
    with pytest.warns(UserWarning, match="no dlqnb metadata"):
        assert backend_choice.model_input(path) == ((3, SIZE, SIZE), (1,))


def test_decide_on_one_batch_size_keeps_one_runtime():
    assert backend_choice.decide({"a": {1: 2.0}, "b": {1: 1.0}})[0] == "b"


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"threads": -1}, "threads must be a positive whole number.*got -1"),
        ({"threads": 2.5}, "threads must be a positive whole number.*got 2.5"),
        ({"threads": True}, "threads must be a positive whole number.*got True"),
        ({"hint": "fast"}, "hint must be 'latency' or 'throughput', got 'fast'"),
        ({"backend": "openvino/openvino"}, "backend must be one of.*got 'openvino/openvino'"),
    ],
)
@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=openvino_installed)])
def test_bad_runner_arguments_are_clear_value_errors(model, settings, message, backend):
    arguments = {"backend": backend, **settings}
    with pytest.raises(ValueError, match=message):
        load_int8(model, **arguments)


@openvino_installed
@pytest.mark.parametrize("threads", [-1, 2.5])
def test_the_openvino_runner_checks_threads_itself(model, threads):
    with pytest.raises(ValueError, match="threads must be a positive whole number"):
        OpenVINORunner(model, threads=threads)


def _onnxruntime_scores(path, images):
    return load_int8(path, backend="onnxruntime", threads=1).predict(images)


def test_predict_int8_sees_a_file_replaced_with_the_same_modification_time(quantizers, model, tmp_path):
    other = export_qdq_onnx(quantizers["other"], tmp_path / "other.onnx")
    images = _images()
    first = _onnxruntime_scores(model, images)
    expected = _onnxruntime_scores(other, images)
    assert not np.array_equal(first, expected)  # the two models tell apart
    assert np.array_equal(predict_int8(model, images), first)
    status = os.stat(model)
    model.write_bytes(other.read_bytes())  # cp -p: new content, the old modification time
    os.utime(model, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert os.stat(model).st_mtime_ns == status.st_mtime_ns
    assert np.array_equal(predict_int8(model, images), expected)


def test_predict_int8_keeps_one_runner_per_file_and_a_few_files(quantizers, model, tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "_runners", type(loading._runners)())
    for index in range(5):
        export_qdq_onnx(quantizers["cpu" if index % 2 else "other"], model)
        predict_int8(model, _images(1))
    assert len(loading._runners) == 1  # each rewrite replaced the file's runner
    for index in range(loading.RUNNERS_KEPT + 2):
        path = export_qdq_onnx(quantizers["cpu"], tmp_path / f"copy{index}.onnx")
        predict_int8(path, _images(1))
    assert len(loading._runners) == loading.RUNNERS_KEPT
    assert str(path.resolve()) in loading._runners and str(model.resolve()) not in loading._runners  # the least recently used went


# ------------------------------------------------------------------------------- 1-D signal models
class SignalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 5)
        self.norm = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.norm(self.conv(x))).mean(2))


LENGTH = 40


@pytest.fixture
def signal_model(tmp_path):
    """A 1-D signal model as export_qdq_onnx records one: input N×C×L, ``input_size`` [L] and ``channels`` C."""
    torch.manual_seed(0)
    net = SignalNet().eval()
    path = tmp_path / "signal.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, 2, LENGTH),), str(path), dynamo=False, input_names=["input"], output_names=["scores"],
                          dynamic_axes={"input": {0: "N"}, "scores": {0: "N"}})
    model = onnx.load(path)
    onnx.helper.set_model_props(model, {
        "dlqnb_target": "float",
        "dlqnb_class_names": json.dumps(["a", "b", "c"]),
        "dlqnb_preprocessing": json.dumps({"input_size": [LENGTH], "channels": 2}),
    })
    onnx.save(model, path)
    with torch.no_grad():
        signals = torch.randn(3, 2, LENGTH, generator=torch.Generator().manual_seed(3))
        return path, signals, net(signals).numpy()


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=openvino_installed)])
def test_a_1d_signal_model_runs_on_float_n_c_l_batches(signal_model, backend):
    path, signals, expected = signal_model
    runner = load_int8(path, backend=backend, threads=1)
    assert np.allclose(runner.predict(signals), expected, rtol=1e-4, atol=1e-5)
    assert np.allclose(runner.predict(signals[0]), expected[:1], rtol=1e-4, atol=1e-5)  # one C×L signal
    with pytest.raises(ValueError, match="signals of length 40"):
        runner.predict(signals[:, :, :30])
    with pytest.raises(ValueError, match="float N×C×L signals.*uint8 H×W×C image is for image models"):
        runner.predict(np.zeros((40, 40, 3), np.uint8))


def test_a_1d_signal_model_is_measured_and_profiled_at_its_length(signal_model, monkeypatch):
    path, _, _ = signal_model
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    backend, reason = backend_choice.choose_backend(path)
    assert backend and "not measured" not in reason  # the trial ran at the signals' shape
    assert backend_choice.model_input(path) == ((2, LENGTH), backend_choice.TRIAL_BATCHES)
    from dlqnb.deploy.runners import _profile_dims

    assert _profile_dims([-1, 2, -1], {"channels": 2, "input_size": [LENGTH]}, "signal.onnx") == [2, LENGTH]


def test_a_volume_model_runs_on_float_n_c_d_h_w_batches(tmp_path):
    """A model of 3-D inputs as export_qdq_onnx records one: ``input_size`` [D, H, W], input N×C×D×H×W."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 3)).eval()
    path = tmp_path / "volume.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, 1, 4, 8, 8),), str(path), dynamo=False, input_names=["input"], output_names=["scores"],
                          dynamic_axes={"input": {0: "N"}, "scores": {0: "N"}})
    model = onnx.load(path)
    onnx.helper.set_model_props(model, {"dlqnb_target": "float", "dlqnb_preprocessing": json.dumps({"input_size": [4, 8, 8], "channels": 1})})
    onnx.save(model, path)
    volumes = torch.rand(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = net(volumes).numpy()
    assert model_file.model_info(path)["preprocessing"]["input_size"] == [4, 8, 8]
    assert np.allclose(load_int8(path, backend="onnxruntime", threads=1).predict(volumes), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="volumes of 4×8×8"):
        load_int8(path, backend="onnxruntime").predict(volumes[:, :, :3])
    assert backend_choice.model_input(path) == ((1, 4, 8, 8), backend_choice.TRIAL_BATCHES)


def test_a_16_bit_image_scores_as_its_8_bit_twin(model):
    """One H×W×3 image given in 16 bits is scaled by 65535, not 255 (a mid-gray 16-bit image is 0.5, not 128)."""
    rng = np.random.default_rng(4)
    image8 = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    image16 = image8.astype(np.uint16) * 257  # the same picture: 257 × v / 65535 == v / 255
    runner = load_int8(model, backend="onnxruntime")
    np.testing.assert_array_equal(runner.predict(image16), runner.predict(image8))
