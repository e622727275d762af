"""OpenVINO's runner against the emulation, its compiled-model cache, and ``backend="auto"``'s measured choice.

Whether OpenVINO computes dlqnb's int8 files bit for bit differs between CPUs, networks and inputs (the
``"gpu"`` flavour differed on an AMD Zen 1 and on Intel Xeons with AMX, on some inputs and not others; the
``"cpu"`` flavour agreed on SqueezeNets everywhere but differed on a trained MobileNetV2 on such a Xeon),
so these tests assert that the warning and ``auto``'s decision follow what was measured on this CPU, and
that the top classes agree, never bit-for-bit agreement itself.

Tests that run OpenVINO skip where it is not installed; ``auto``'s decisions on given measurements run
everywhere (OpenVINO's presence is simulated, or its absence, by making its import fail)."""

from __future__ import annotations

import json
import math
import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision

from dlqnb import DLQuantizer
from dlqnb.deploy import backend_choice, host
from dlqnb.core.cache import CacheWarning, read_entry, write_entry
from dlqnb.deploy import OpenVINORunner, export_qdq_onnx, load_int8, openvino_cache_path
from test_deploy import given_agreement, given_times

needs_openvino = pytest.mark.skipif(
    host.installed_version("openvino") is None, reason="OpenVINO is not installed (pip install 'dlqnb[openvino]'): this test runs it"
)


def given_openvino_installed(monkeypatch):
    """``auto`` sees OpenVINO installed (the tests of its decision measure nothing, so need no OpenVINO)."""
    real = backend_choice.installed_version
    monkeypatch.setattr(backend_choice, "installed_version", lambda name: "2026.0-given" if name == "openvino" else real(name))


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


def _load_recording_warnings(path, **settings):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner = load_int8(path, **settings)
    return runner, [str(w.message) for w in caught if "flavour" in str(w.message)]


def _assert_warning_follows_the_measurement(path, messages, flavour="gpu"):
    """One warning with the measured figure where this CPU's OpenVINO differs from ONNX Runtime, none where it agrees."""
    difference = backend_choice.score_differences(path, ["openvino"])["differences"]["openvino"]  # as cached by the load
    if difference > 0:
        assert len(messages) == 1 and f"by up to {difference:.3g}" in messages[0] and "on this CPU" in messages[0], messages
        assert path.name in messages[0] and f"on the {flavour!r} flavour" in messages[0]
        # only a "gpu" file is told to export the other flavour
        assert ("execution_environment='cpu'" in messages[0]) == (flavour == "gpu")
    else:
        assert messages == []
    return difference


@needs_openvino
def test_openvino_on_the_cpu_flavour_warns_as_measured_and_agrees_on_the_top_class(files):
    images, models = files
    path, emulated = models["cpu"]
    runner, messages = _load_recording_warnings(path, backend="openvino", threads=1)
    assert runner.backend == "openvino" and runner.reason == "asked for"
    _assert_warning_follows_the_measurement(path, messages, "cpu")
    np.testing.assert_array_equal(load_int8(path, backend="onnxruntime").predict(images), emulated)
    assert (runner.predict(images).argmax(1) == emulated.argmax(1)).mean() >= 0.9


@needs_openvino
@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_loading_either_flavour_on_openvino_warns_with_a_measured_difference(files, monkeypatch, flavour):
    from dlqnb.deploy import load

    path, _ = files[1][flavour]
    measured = {"differences": {"openvino": 0.25}, "largest_score": 8.0, "inputs": 32, "cpu": "a CPU", "date": "today"}
    monkeypatch.setattr(load, "score_differences", lambda *args, **kwargs: measured)
    _, messages = _load_recording_warnings(path, backend="openvino")
    assert len(messages) == 1 and "by up to 0.25 (largest score 8, measured on 32 test inputs)" in messages[0]
    assert f"on the {flavour!r} flavour" in messages[0]
    assert ("execution_environment='cpu'" in messages[0]) == (flavour == "gpu")


@needs_openvino
def test_openvino_on_the_gpu_flavour_warns_as_measured_and_agrees_on_the_top_class(files):
    images, models = files
    path, emulated = models["gpu"]
    runner, messages = _load_recording_warnings(path, backend="openvino")
    difference = _assert_warning_follows_the_measurement(path, messages)
    scores = runner.predict(images)
    # ONNX Runtime equals the emulation bit for bit (every op of the model runs in integers there)
    np.testing.assert_array_equal(load_int8(path, backend="onnxruntime").predict(images), emulated)
    # OpenVINO: no check on finitely many inputs proves it agrees on others (on some CPUs it differs on a
    # few inputs in a hundred), so only what holds on every CPU is asserted: the same top class, nearly always
    assert (scores.argmax(1) == emulated.argmax(1)).mean() >= 0.9
    assert difference >= 0


@pytest.fixture(scope="module")
def merch(tmp_path_factory):
    """The merch SqueezeNet of the examples (from dlqnb's cache, shared with the notebooks), its
    validation images and both flavours' files with their emulated scores."""
    from dlqnb.training import zoo
    from dlqnb.data.datastores import augmented_image_datastore, image_datastore, merch_data_dir, split_each_label

    net = zoo.squeezenet_merch()
    train, validation = split_each_label(image_datastore(merch_data_dir()), 0.7, randomized=True, seed=0)
    validation = augmented_image_datastore(net.input_size, validation)
    images = torch.stack([validation[i][0] for i in range(len(validation))])
    folder = tmp_path_factory.mktemp("merch")
    result = {}
    for env in ("cpu", "gpu"):
        quantizer = DLQuantizer(net, execution_environment=env)
        quantizer.calibrate(augmented_image_datastore(net.input_size, train), progress=False)
        with torch.no_grad():  # ties rounded to even, as the runtimes round them
            emulated = quantizer.quantize(rounding="half_even")(images).numpy()
        result[env] = (export_qdq_onnx(quantizer, folder / f"{env}.onnx"), emulated)
    return images, result


@needs_openvino
def test_openvino_on_the_merch_validation_images(merch, monkeypatch):
    images, models = merch
    cpu_path, cpu_emulated = models["cpu"]
    cpu_runner, cpu_messages = _load_recording_warnings(cpu_path, backend="openvino")
    _assert_warning_follows_the_measurement(cpu_path, cpu_messages, "cpu")
    assert (cpu_runner.predict(images).argmax(1) == cpu_emulated.argmax(1)).mean() >= 0.99
    gpu_path, gpu_emulated = models["gpu"]
    np.testing.assert_array_equal(load_int8(gpu_path, backend="onnxruntime").predict(images), gpu_emulated)
    runner, messages = _load_recording_warnings(gpu_path, backend="openvino")
    difference = _assert_warning_follows_the_measurement(gpu_path, messages)
    scores = runner.predict(images)
    assert (scores.argmax(1) == gpu_emulated.argmax(1)).mean() >= 0.99  # bit for bit is the CPU's (see above)
    print(f"merch 'gpu' flavour on {host.cpu_summary()}: OpenVINO against the emulation, largest difference "
          f"{np.abs(scores - gpu_emulated).max():.3g} (largest score {np.abs(gpu_emulated).max():.3g}); test inputs: {difference:.3g}")
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    calls = given_times(monkeypatch, {"onnxruntime": {1: 0.004, 32: 0.120}, "openvino": {1: 0.003, 32: 0.090}})
    backend, reason = backend_choice.choose_backend(gpu_path)
    if difference > 0:  # auto follows the measurement: left out, with the figure
        assert backend == "onnxruntime" and calls == []
        assert f"openvino is left out: on this CPU its scores differ from onnxruntime's by up to {difference:.3g}" in reason
    else:
        assert backend == "openvino" and calls == [["onnxruntime", "openvino"]]


@needs_openvino
def test_compiled_model_is_cached_and_reloaded_without_compiling(files, monkeypatch):
    images, models = files
    path, _ = models["cpu"]
    import openvino

    first = OpenVINORunner(path, threads=1)
    assert first.cache_path.is_file()

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled again although a cached model exists")

    monkeypatch.setattr(openvino.Core, "compile_model", no_compiling)
    second = OpenVINORunner(path, threads=1)
    assert np.array_equal(second.predict(images), first.predict(images))


@needs_openvino
def test_float_ops_run_in_float32_compiled_or_read_from_the_cache(files):
    # OpenVINO would downcast float ops to bf16 on CPUs with AMX by default; dlqnb's runners ask for float32,
    # and notebook 04 states the precision its float baseline ran in from this property
    path, _ = files[1]["cpu"]
    compiled = OpenVINORunner(path, threads=1)
    cached = OpenVINORunner(path, threads=1)
    assert compiled.float_precision == cached.float_precision == "float32"


@needs_openvino
@pytest.mark.parametrize("checksum", ["stale", "matching"])
def test_a_damaged_or_foreign_cached_model_is_compiled_again(files, checksum):
    images, models = files
    path, emulated = models["cpu"]
    runner = OpenVINORunner(path, threads=1)
    if checksum == "matching":  # an intact entry OpenVINO cannot import (another build's)
        write_entry(runner.cache_path, b"not a compiled model")
    else:
        runner.cache_path.write_bytes(b"not a compiled model")
    with pytest.warns(CacheWarning, match=runner.cache_path.name):
        again = OpenVINORunner(path, threads=1)
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


@needs_openvino
def test_openvino_rejects_an_unknown_hint_and_a_damaged_file(files, tmp_path):
    path, _ = files[1]["cpu"]
    with pytest.raises(ValueError, match="hint"):
        OpenVINORunner(path, hint="fast")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ValueError, match="broken.onnx"):
        load_int8(broken, backend="openvino")


@needs_openvino
def test_auto_takes_the_measured_faster_runtime_says_why_and_caches_it(files, monkeypatch):
    path, _ = files[1]["cpu"]
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    given_agreement(monkeypatch, 0.0)
    calls = given_times(monkeypatch, {"onnxruntime": {1: 0.004, 32: 0.120}, "openvino": {1: 0.003, 32: 0.090}})
    runner = load_int8(path)
    assert runner.backend == "openvino"
    assert calls == [["onnxruntime", "openvino"]]
    assert "TensorRT is not installed" in runner.reason
    assert host.cpu_summary() in runner.reason
    assert "onnxruntime 4 ms at batch 1, 120 ms at batch 32" in runner.reason
    speedup = math.sqrt((0.004 * 0.120) / (0.003 * 0.090))  # geometric means over the two batches
    assert f"openvino, {speedup:.2f}× as fast as onnxruntime" in runner.reason
    again = load_int8(path)
    assert again.backend == "openvino" and calls == [["onnxruntime", "openvino"]]  # read from the cache
    assert again.reason.endswith("cached)")
    with open(path, "rb") as stream:
        saved = json.loads(read_entry(backend_choice.choice_cache_path(stream.read())))
    assert saved["backend"] == "openvino"


@needs_openvino
def test_auto_splits_by_batch_size_when_each_runtime_wins_one(files, monkeypatch):
    images, models = files
    path, emulated = models["cpu"]
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    given_agreement(monkeypatch, 0.0)
    given_times(monkeypatch, {"onnxruntime": {1: 0.003, 32: 0.120}, "openvino": {1: 0.004, 32: 0.090}})
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
    assert backend_choice.decide({"a": {1: 2.0, 32: 20.0}, "b": {1: 1.0, 32: 10.0}})[0] == "b"
    assert backend_choice.decide({"a": {1: 1.0, 32: 10.0}, "b": {1: 0.9, 32: 11.0}})[0] == "b/a"
    assert backend_choice.decide({"a": {1: 1.0, 32: 10.0}, "b": {1: 1.2, 32: 8.0}})[0] == "a/b"
    assert backend_choice.decide({"a": {1: 1.0, 32: 10.0}, "b": {1: 1.02, 32: 8.0}})[0] == "b"  # a's lead at batch 1 is noise


def test_auto_without_openvino_says_why(files, monkeypatch):
    path, _ = files[1]["cpu"]
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino fails, as where it is not installed
    compared = given_agreement(monkeypatch, 0.0)
    timed = given_times(monkeypatch, {})
    backend, reason = backend_choice.choose_backend(path)
    assert backend == "onnxruntime" and compared == [] and timed == []
    assert "OpenVINO is not installed (pip install 'dlqnb[openvino]')" in reason
    assert load_int8(path).backend == "onnxruntime"
    for asked in ("openvino", "onnxruntime/openvino"):
        with pytest.raises(RuntimeError, match=r"pip install 'dlqnb\[openvino\]'"):
            load_int8(path, backend=asked)


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_auto_leaves_out_a_runtime_measured_to_differ_with_the_figure(files, monkeypatch, flavour):
    path, _ = files[1][flavour]
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    given_openvino_installed(monkeypatch)
    compared = given_agreement(monkeypatch, 0.0391)
    timed = given_times(monkeypatch, {})
    backend, reason = backend_choice.choose_backend(path)
    assert backend == "onnxruntime" and timed == [] and compared == [["onnxruntime", "openvino"]]
    assert "openvino is left out: on this CPU its scores differ from onnxruntime's by up to 0.0391" in reason
    assert f"(largest score 20; the {flavour!r} flavour needs them bit for bit)" in reason


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_auto_times_a_runtime_measured_to_agree_bit_for_bit(files, monkeypatch, flavour):
    path, _ = files[1][flavour]
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    given_openvino_installed(monkeypatch)
    given_agreement(monkeypatch, 0.0)
    timed = given_times(monkeypatch, {"onnxruntime": {1: 0.004, 32: 0.120}, "openvino": {1: 0.003, 32: 0.090}})
    backend, reason = backend_choice.choose_backend(path)
    assert backend == "openvino" and timed == [["onnxruntime", "openvino"]] and "left out" not in reason


def test_the_agreement_check_scores_at_least_agreement_inputs_in_batches_the_model_accepts(monkeypatch):
    monkeypatch.setattr(backend_choice, "model_input", lambda path: ((3, 4, 4), (5,)))  # a fixed batch of 5
    fixed = backend_choice._agreement_inputs("model.onnx")
    assert {len(batch) for batch in fixed} == {5} and len(fixed) * 5 >= backend_choice.AGREEMENT_INPUTS > (len(fixed) - 1) * 5
    monkeypatch.setattr(backend_choice, "model_input", lambda path: ((3, 4, 4), backend_choice.TRIAL_BATCHES))
    dynamic = backend_choice._agreement_inputs("model.onnx")
    assert [len(batch) for batch in dynamic] == [backend_choice.AGREEMENT_INPUTS] and backend_choice.AGREEMENT_INPUTS >= 32
    np.testing.assert_array_equal(np.concatenate(fixed)[:32], dynamic[0][:32])  # the same fixed inputs either way


def test_a_float_model_needs_agreement_within_float_rounding_only():
    assert backend_choice.allowed_difference("float", 20.0) > 0
    assert backend_choice.allowed_difference(None, 20.0) == backend_choice.allowed_difference("float", 20.0)
    assert backend_choice.allowed_difference("gpu", 20.0) == backend_choice.allowed_difference("cpu", 20.0) == 0


@needs_openvino
def test_the_real_agreement_check_is_cached_and_decides_as_measured(files, monkeypatch):
    path, _ = files[1]["gpu"]
    measured = backend_choice.score_differences(path, ["onnxruntime", "openvino"])
    assert measured["inputs"] == backend_choice.AGREEMENT_INPUTS and measured["largest_score"] > 0
    difference = measured["differences"]["openvino"]
    assert difference >= 0
    with open(path, "rb") as stream:
        assert json.loads(read_entry(backend_choice.agreement_cache_path(stream.read())))["differences"]["openvino"] == difference
    monkeypatch.setattr(OpenVINORunner, "predict", lambda *a: pytest.fail("measured again although cached"))
    assert backend_choice.score_differences(path, ["openvino"]) == measured
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    given_times(monkeypatch, {"onnxruntime": {1: 0.004, 32: 0.120}, "openvino": {1: 0.003, 32: 0.090}})
    backend, reason = backend_choice.choose_backend(path)
    assert (backend == "openvino") == (difference == 0)
    assert ("left out" in reason) == (difference > 0)


@needs_openvino
def test_real_trial_measures_every_cpu_runtime_at_both_batches(files):
    path, _ = files[1]["cpu"]
    times = backend_choice.measure_backends(path, ["onnxruntime", "openvino"], rounds=1)
    assert set(times) == {"onnxruntime", "openvino"}
    for by_batch in times.values():
        assert set(by_batch) == set(backend_choice.TRIAL_BATCHES)
        assert all(0 < seconds < float("inf") for seconds in by_batch.values())  # which is faster is the host's


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
