"""OpenVINO's runner against the emulation, its compiled-model cache, and ``backend="auto"``'s measured choice."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torchvision

from dlqnb import DLQuantizer, backend_choice, host
from dlqnb.deploy import OpenVINORunner, export_qdq_onnx, load_int8, openvino_cache_path

openvino = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'dlqnb[openvino]')")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(num_classes=5).eval()
    images = torch.rand(12, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    folder = tmp_path_factory.mktemp("models")
    result = {}
    for env in ("cpu", "gpu"):
        quantizer = DLQuantizer(net, execution_environment=env)
        quantizer.calibrate(images[:8], progress=False)
        with torch.no_grad():
            emulated = quantizer.quantize(rounding="half_even")(images).numpy()
        result[env] = (export_qdq_onnx(quantizer, folder / f"{env}.onnx"), emulated)
    return images, result


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path / "cache"))


def test_openvino_computes_the_cpu_flavour_bit_for_bit_like_the_emulation(files):
    images, models = files
    path, emulated = models["cpu"]
    runner = load_int8(path, backend="openvino", threads=1)
    assert runner.backend == "openvino" and runner.reason == "asked for"
    assert np.array_equal(runner.predict(images), emulated)


def test_openvino_on_the_gpu_flavour_warns_and_agrees_on_the_top_class(files):
    images, models = files
    path, emulated = models["gpu"]
    with pytest.warns(UserWarning, match="gpu.onnx.*'gpu' flavour.*execution_environment='cpu'"):
        scores = load_int8(path, backend="openvino").predict(images)
    assert (scores.argmax(1) == emulated.argmax(1)).mean() >= 0.9


@pytest.fixture(scope="module")
def merch(tmp_path_factory):
    """The merch SqueezeNet of the examples (from dlqnb's cache, shared with the notebooks), its
    validation images and both flavours' files with their emulated scores."""
    from dlqnb import zoo
    from dlqnb.data import augmented_image_datastore, image_datastore, merch_data_dir, split_each_label

    net = zoo.squeezenet_merch()
    train, validation = split_each_label(image_datastore(merch_data_dir()), 0.7, randomized=True, seed=0)
    validation = augmented_image_datastore(net.input_size, validation)
    images = torch.stack([validation[i][0] for i in range(len(validation))])
    folder = tmp_path_factory.mktemp("merch")
    result = {}
    for env in ("cpu", "gpu"):
        quantizer = DLQuantizer(net, execution_environment=env)
        quantizer.calibrate(augmented_image_datastore(net.input_size, train), progress=False)
        with torch.no_grad():
            emulated = quantizer.quantize()(images).numpy()
        result[env] = (export_qdq_onnx(quantizer, folder / f"{env}.onnx"), emulated)
    return images, result


def test_openvino_on_the_merch_validation_images(merch):
    images, models = merch
    cpu_path, cpu_emulated = models["cpu"]
    assert np.array_equal(load_int8(cpu_path, backend="openvino").predict(images), cpu_emulated)
    gpu_path, gpu_emulated = models["gpu"]
    with pytest.warns(UserWarning, match="'gpu' flavour"):
        scores = load_int8(gpu_path, backend="openvino").predict(images)
    assert (scores.argmax(1) == gpu_emulated.argmax(1)).mean() >= 0.99
    assert not np.array_equal(scores, gpu_emulated)  # what the warning says: the scores themselves differ


def test_compiled_model_is_cached_and_reloaded_without_compiling(files, monkeypatch):
    images, models = files
    path, _ = models["cpu"]
    first = OpenVINORunner(path, threads=1)
    assert first.cache_path.is_file()

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled again although a cached model exists")

    monkeypatch.setattr(openvino.Core, "compile_model", no_compiling)
    second = OpenVINORunner(path, threads=1)
    assert np.array_equal(second.predict(images), first.predict(images))


def test_a_damaged_cached_model_is_compiled_again(files, caplog):
    images, models = files
    path, emulated = models["cpu"]
    runner = OpenVINORunner(path, threads=1)
    runner.cache_path.write_bytes(b"not a compiled model")
    again = OpenVINORunner(path, threads=1)
    assert "ignoring OpenVINO's cached model" in caplog.text
    assert np.array_equal(again.predict(images), emulated)
    assert runner.cache_path.read_bytes() != b"not a compiled model"


def test_openvino_cache_key_changes_with_model_version_cpu_and_settings():
    keys = {
        openvino_cache_path(b"a", "2026.4", "cpu1", "latency-2t"),
        openvino_cache_path(b"b", "2026.4", "cpu1", "latency-2t"),
        openvino_cache_path(b"a", "2026.3", "cpu1", "latency-2t"),
        openvino_cache_path(b"a", "2026.4", "cpu2", "latency-2t"),
        openvino_cache_path(b"a", "2026.4", "cpu1", "throughput-2t"),
    }
    assert len(keys) == 5


def test_openvino_rejects_an_unknown_hint_and_a_damaged_file(files, tmp_path):
    path, _ = files[1]["cpu"]
    with pytest.raises(ValueError, match="hint"):
        OpenVINORunner(path, hint="fast")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ValueError, match="broken.onnx"):
        load_int8(broken, backend="openvino")


def _fake_times(monkeypatch, times):
    calls = []

    def measure(path, backends, rounds=2):
        calls.append(list(backends))
        return {name: times[name] for name in backends}

    monkeypatch.setattr(backend_choice, "measure_backends", measure)
    return calls


def test_auto_takes_the_measured_faster_runtime_says_why_and_caches_it(files, monkeypatch):
    path, _ = files[1]["cpu"]
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    calls = _fake_times(monkeypatch, {"onnxruntime": {1: 0.004, 32: 0.120}, "openvino": {1: 0.003, 32: 0.090}})
    runner = load_int8(path)
    assert runner.backend == "openvino"
    assert calls == [["onnxruntime", "openvino"]]
    assert "TensorRT is not installed" in runner.reason
    assert host.cpu_summary() in runner.reason
    assert "onnxruntime 4 ms at batch 1, 120 ms at batch 32" in runner.reason
    assert "openvino, 1.33× as fast as onnxruntime" in runner.reason
    again = load_int8(path)
    assert again.backend == "openvino" and calls == [["onnxruntime", "openvino"]]  # read from the cache
    assert again.reason.endswith("cached)")
    with open(path, "rb") as stream:
        saved = json.loads(backend_choice.choice_cache_path(stream.read()).read_text())
    assert saved["backend"] == "openvino"


def test_auto_splits_by_batch_size_when_each_runtime_wins_one(files, monkeypatch):
    images, models = files
    path, emulated = models["cpu"]
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    _fake_times(monkeypatch, {"onnxruntime": {1: 0.003, 32: 0.120}, "openvino": {1: 0.004, 32: 0.090}})
    runner = load_int8(path)
    assert runner.backend == "onnxruntime/openvino"
    assert f"onnxruntime for batches below {backend_choice.SPLIT_BATCH}" in runner.reason
    used = []
    for part in (runner.small, runner.large):
        run = part.run
        monkeypatch.setattr(part, "run", lambda x, run=run, name=part.backend: used.append(name) or run(x))
    assert np.array_equal(runner.predict(images[:1]), emulated[:1])
    assert np.array_equal(runner.predict(images[: backend_choice.SPLIT_BATCH]), emulated[: backend_choice.SPLIT_BATCH])
    assert used == ["onnxruntime", "openvino"]


def test_decide_keeps_one_runtime_unless_each_wins_its_batch_clearly():
    assert backend_choice.decide({"a": {1: 1.0, 32: 10.0}, "b": {1: 2.0, 32: 20.0}})[0] == "a"
    assert backend_choice.decide({"a": {1: 1.0, 32: 10.0}, "b": {1: 1.2, 32: 8.0}})[0] == "a/b"
    assert backend_choice.decide({"a": {1: 1.0, 32: 10.0}, "b": {1: 1.02, 32: 8.0}})[0] == "b"  # a's lead at batch 1 is noise


def test_auto_without_openvino_says_why(files, monkeypatch):
    path, _ = files[1]["cpu"]
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    _fake_times(monkeypatch, {})
    backend, reason = backend_choice.choose_backend(path)
    assert backend == "onnxruntime"
    assert "OpenVINO is not installed (pip install 'dlqnb[openvino]')" in reason
    with pytest.raises(RuntimeError, match=r"pip install 'dlqnb\[openvino\]'"):
        load_int8(path, backend="openvino")


def test_auto_runs_the_gpu_flavour_on_onnxruntime_on_a_cpu(files, monkeypatch):
    path, _ = files[1]["gpu"]
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    calls = _fake_times(monkeypatch, {})
    backend, reason = backend_choice.choose_backend(path)
    assert backend == "onnxruntime" and "'gpu' flavour" in reason and calls == []


def test_real_trial_measures_every_cpu_runtime_at_both_batches(files):
    path, _ = files[1]["cpu"]
    times = backend_choice.measure_backends(path, ["onnxruntime", "openvino"], rounds=1)
    assert set(times) == {"onnxruntime", "openvino"}
    for by_batch in times.values():
        assert set(by_batch) == set(backend_choice.TRIAL_BATCHES)
        assert 0 < by_batch[1] < by_batch[32]  # 32 images take longer than one


def test_onnxruntime_sessions_do_not_spin(files):
    runner = load_int8(files[1]["cpu"][0], backend="onnxruntime")
    assert runner.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_cpu_info_reads_the_instruction_sets():
    text = "processor\t: 0\nmodel name\t: Example CPU\ncpu family\t: 6\nmodel\t\t: 143\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_int8\n\nprocessor\t: 1\n"
    info = host.cpu_info(text)
    assert info["model"] == "Example CPU"
    assert info["instruction_sets"] == {"AVX2": True, "AVX-512": True, "VNNI": True, "AMX": True}
    assert host.cpu_summary(info).startswith("Example CPU (family 6, model 143)")
    client = host.cpu_info("model name\t: Laptop\nflags\t\t: avx2 avx_vnni\n")["instruction_sets"]
    assert client == {"AVX2": True, "AVX-512": False, "VNNI": True, "AMX": False}
    assert set(host.cpu_info("")["instruction_sets"].values()) == {None}
