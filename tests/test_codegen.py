"""Code generation: the standalone folder runs in a clean interpreter without torch or dlqnb and agrees
with dlqnb's own ``predict_int8``."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import torchvision
from PIL import Image

from dlqnb import DLQuantizer
from dlqnb.calibration.file import CalibrationFileError
from dlqnb.deploy.codegen import DeploymentConfig, codegen, generated_library, library_available, run_entry_point
from dlqnb.deploy import predict_int8


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A SqueezeNet calibrated for the GPU target at 64×64, its calibration file and two test images
    (one of the input size, one that must be resized)."""
    folder = tmp_path_factory.mktemp("codegen")
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(num_classes=4).eval()
    quantizer = DLQuantizer(net, execution_environment="gpu")
    quantizer.calibrate(torch.rand(6, 3, 64, 64), progress=False)
    quantizer.save(folder / "quantObj.safetensors")
    rng = np.random.default_rng(1)
    images = []
    for shape in [(64, 64, 3), (80, 100, 3)]:
        path = folder / f"image_{shape[0]}x{shape[1]}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        images.append(path)
    return net, folder, images


def _run_clean(code: str) -> str:
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_generated_entry_point_runs_without_torch_and_agrees(calibrated, tmp_path):
    net, folder, images = calibrated
    cfg = DeploymentConfig(target_library="onnxruntime", data_type="int8", calibration_result_file=folder / "quantObj.safetensors")
    out = codegen(cfg, net, output_dir=tmp_path / "codegen", verbose=False)
    assert {p.name for p in out.iterdir()} == {"model_int8.onnx", "predict_int8.py", "requirements.txt", "README.md", "codegen_manifest.json"}
    code = (
        f"import json, sys; sys.path.insert(0, {str(out)!r})\n"
        "import numpy as np; from PIL import Image\n"
        "from predict_int8 import predict_int8\n"
        f"scores = [predict_int8(np.asarray(Image.open(p))).tolist() for p in {[str(p) for p in images]!r}]\n"
        "print(json.dumps({'scores': scores, 'torch': 'torch' in sys.modules, 'dlqnb': 'dlqnb' in sys.modules}))"
    )
    report = json.loads(_run_clean(code))
    assert not report["torch"] and not report["dlqnb"]
    expected = [predict_int8(out / "model_int8.onnx", np.asarray(Image.open(p)))[0] for p in images]
    # the image of the input size is read identically: the scores are the same, bit for bit
    np.testing.assert_array_equal(np.float32(report["scores"][0]), expected[0])
    # the other is resized by pillow instead of torch (equal up to float32 roundings of the resize)
    np.testing.assert_allclose(np.float32(report["scores"][1]), expected[1], atol=0.05 * float(np.abs(expected[1]).max()) + 1e-6)
    assert int(np.argmax(report["scores"][1])) == int(np.argmax(expected[1]))


def test_generated_main_prints_one_json_list_per_image(calibrated, tmp_path):
    net, folder, images = calibrated
    cfg = DeploymentConfig(target_library="onnxruntime", calibration_result_file=folder / "quantObj.safetensors")
    out = codegen(cfg, net, entry_point="classify", output_dir=tmp_path / "cli", verbose=False)
    result = subprocess.run([sys.executable, "-I", str(out / "classify.py"), *map(str, images)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    first = np.float32(json.loads(lines[0]))
    np.testing.assert_array_equal(first, predict_int8(out / "model_int8.onnx", np.asarray(Image.open(images[0])))[0])
    np.testing.assert_array_equal(run_entry_point(out, np.asarray(Image.open(images[0])), entry_point="classify"), first)
    with pytest.raises(FileNotFoundError, match="predict_int8.py"):
        run_entry_point(out, np.asarray(Image.open(images[0])))


def test_library_available_knows_the_libraries():
    assert library_available("onnxruntime")
    with pytest.raises(ValueError, match="target_library must be one of"):
        library_available("cudnn")


def test_a_gpu_calibration_file_deploys_on_either_library(calibrated, tmp_path):
    net, folder, _ = calibrated
    for library, target in [("onnxruntime", "cpu"), ("tensorrt", "gpu")]:
        cfg = DeploymentConfig(target_library=library, calibration_result_file=folder / "quantObj.safetensors")
        out = codegen(cfg, net, output_dir=tmp_path / library, verbose=False)
        props = {p.key: p.value for p in onnx.load(out / "model_int8.onnx").metadata_props}
        assert props["dlqnb_target"] == target
        assert "onnxruntime-gpu" in (out / "requirements.txt").read_text() if library == "tensorrt" else "onnxruntime" in (out / "requirements.txt").read_text()


def test_tensorrt_entry_point_gives_concrete_profile_and_a_clear_error_without_it(calibrated, tmp_path):
    net, folder, images = calibrated
    cfg = DeploymentConfig(target_library="tensorrt", calibration_result_file=folder / "quantObj.safetensors", auto_tuning=False)
    out = codegen(cfg, net, output_dir=tmp_path / "trt", verbose=False)
    source = (out / "predict_int8.py").read_text()
    compile(source, "predict_int8.py", "exec")
    assert '"trt_profile_min_shapes": "input:1x3x64x64"' in source and '"trt_builder_optimization_level": "3"' in source
    import onnxruntime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("TensorRT is available here: the missing-provider error cannot be provoked")
    result = subprocess.run([sys.executable, "-I", str(out / "predict_int8.py"), str(images[0])], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "TensorRT execution provider is not available" in result.stderr


def test_codegen_prints_success_and_replaces_a_folder_only_when_complete(calibrated, tmp_path, capsys):
    net, folder, _ = calibrated
    cfg = DeploymentConfig(target_library="onnxruntime", calibration_result_file=folder / "quantObj.safetensors")
    out = codegen(cfg, net, output_dir=tmp_path / "out")
    assert "Code generation successful" in capsys.readouterr().out
    other = torchvision.models.squeezenet1_1(num_classes=4)  # other weights: not the calibrated network
    with pytest.raises(CalibrationFileError, match="different network"):
        codegen(cfg, other, output_dir=out, verbose=False)
    assert (out / "predict_int8.py").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_library": "cudnn"}, "target_library must be one of"),
        ({"data_type": "fp16"}, "data_type must be 'int8'"),
        ({"target_library": "onnxruntime", "hardware_compatible": True}, "hardware_compatible is a TensorRT setting"),
        ({"target_library": "tensorrt", "threads": 2}, "threads must be None: it is a CPU library setting"),
        ({"target_library": "onnxruntime", "threads": 0}, "threads must be a positive whole number"),
        ({"target_library": "openvino", "threads": True}, "threads must be a positive whole number"),
    ],
)
def test_config_rejects_what_the_library_does_not_have(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeploymentConfig(**kwargs)


def test_one_vocabulary_of_target_libraries():
    """codegen's libraries, the plan's and MATLAB's names come from one table (dlqnb.core.targets)."""
    from dlqnb.core import targets
    from dlqnb.deploy.codegen import CPU_LIBRARIES, TARGET_LIBRARIES

    assert list(TARGET_LIBRARIES) == list(targets.DEPLOYMENT_LIBRARIES)
    for library, environment in TARGET_LIBRARIES.items():
        assert DeploymentConfig(target_library=library).execution_environment == environment == targets.environment_of(library)
    assert set(CPU_LIBRARIES) == {name for name, env in TARGET_LIBRARIES.items() if env == "cpu"} - {"auto"}
    # the plan types and emulates for MATLAB's cuDNN target on "gpu", for ONNX Runtime on "cpu"
    assert {env: targets.plan_library(env) for env in targets.ENVIRONMENTS} == {"gpu": "cudnn", "cpu": "onnxruntime"}
    assert targets.library("cudnn").matlab_name == "cudnn" and targets.library("openvino").matlab_name == "mkldnn"
    with pytest.raises(ValueError, match="target_library must be one of .* got 'cudnn'"):
        DeploymentConfig(target_library="cudnn")  # a plan library, not one code is generated for


def test_codegen_needs_a_calibration_file_and_an_identifier(calibrated, tmp_path):
    net, folder, _ = calibrated
    with pytest.raises(ValueError, match="calibration_result_file is required"):
        codegen(DeploymentConfig(target_library="onnxruntime"), net, output_dir=tmp_path / "a")
    cfg = DeploymentConfig(target_library="onnxruntime", calibration_result_file=folder / "quantObj.safetensors")
    with pytest.raises(ValueError, match="Python identifier"):
        codegen(cfg, net, entry_point="predict-int8", output_dir=tmp_path / "b")
    assert not Path(tmp_path / "a").exists() and not Path(tmp_path / "b").exists()


def _openvino_missing() -> str | None:
    return None if library_available("openvino") else "OpenVINO is not installed (pip install 'dlqnb[openvino]')"


@pytest.mark.skipif(_openvino_missing() is not None, reason=str(_openvino_missing()))
def test_openvino_entry_point_runs_without_torch_and_equals_dlqnbs_openvino_runner(calibrated, tmp_path):
    """MATLAB's int8 code for Intel CPUs goes through oneDNN ('mkldnn'); dlqnb's goes through OpenVINO."""
    from dlqnb.deploy import load_int8

    net, folder, images = calibrated
    cfg = DeploymentConfig(target_library="openvino", calibration_result_file=folder / "quantObj.safetensors", threads=1)
    out = codegen(cfg, net, output_dir=tmp_path / "ov", verbose=False)
    assert (out / "requirements.txt").read_text().split() == ["openvino>=2024.4", "numpy", "pillow"]
    props = {p.key: p.value for p in onnx.load(out / "model_int8.onnx").metadata_props}
    assert props["dlqnb_target"] == "cpu"
    code = (
        f"import json, sys; sys.path.insert(0, {str(out)!r})\n"
        "import numpy as np; from PIL import Image\n"
        "from predict_int8 import predict_int8\n"
        f"scores = predict_int8(np.asarray(Image.open({str(images[0])!r}))).tolist()\n"
        "print(json.dumps({'scores': scores, 'torch': 'torch' in sys.modules, 'dlqnb': 'dlqnb' in sys.modules, "
        "'onnxruntime': 'onnxruntime' in sys.modules}))"
    )
    report = json.loads(_run_clean(code))
    assert not report["torch"] and not report["dlqnb"] and not report["onnxruntime"]
    assert any((out / "openvino_cache").iterdir())  # the compiled model is cached beside the code
    # the image of the input size is read identically, and the same runtime computes: equal bit for bit
    expected = load_int8(out / "model_int8.onnx", backend="openvino", threads=1).predict(np.asarray(Image.open(images[0])))[0]
    np.testing.assert_array_equal(np.float32(report["scores"]), expected)


def test_auto_generates_code_for_the_runtime_the_trial_chose(calibrated, tmp_path, monkeypatch, capsys):
    from dlqnb.deploy import backend_choice

    net, folder, _ = calibrated
    asked = []

    def choose(path, backend="auto"):
        asked.append(backend)
        return chosen, "a measured reason"

    monkeypatch.setattr(backend_choice, "choose_backend", choose)
    for chosen, library in [("onnxruntime", "onnxruntime"), ("openvino", "openvino"), ("openvino/onnxruntime", "openvino")]:
        cfg = DeploymentConfig(target_library="auto", calibration_result_file=folder / "quantObj.safetensors")
        out = codegen(cfg, net, output_dir=tmp_path / chosen.replace("/", "-"))
        printed = capsys.readouterr().out
        assert f"({library}, int8; chosen by 'auto': a measured reason)" in printed
        source = (out / "predict_int8.py").read_text()
        assert f"int8 inference with {library}" in source and ("import openvino" in source) == (library == "openvino")
        assert "a measured reason" in (out / "README.md").read_text()
        assert generated_library(out) == library
    assert asked == ["auto"] * 3
