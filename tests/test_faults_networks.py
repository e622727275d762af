"""Networks as users bring them: several outputs, weights on the meta device, 1-D signal CNNs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from dlqnb import DLQuantizer, classify
from dlqnb.calibration.file import CalibrationState
from dlqnb.errors import ScoredOutputError
from dlqnb.deploy.export import ExportError, export_qdq_onnx
from dlqnb.core.graph import NetworkGraphError
from dlqnb.evaluation.validation import top1_accuracy


class _TupleNet(nn.Module):
    """Returns (class scores N×3, features N×4), as detection or embedding networks do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean((2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.fc(features), features


class _DictNet(_TupleNet):
    """Returns {"features": N×4, "logits": N×3}: the scores are not the first entry."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        features = self.features(x)
        return {"features": features, "logits": self.fc(features)}


def _images_and_labels() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.rand(16, 3, 8, 8, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def _calibrated(net: nn.Module, images: torch.Tensor, **options) -> DLQuantizer:
    quantizer = DLQuantizer(net.eval(), **options)
    quantizer.calibrate(images, progress=False)
    return quantizer


def _by_hand(quantizer: DLQuantizer, images: torch.Tensor, labels: torch.Tensor, pick) -> tuple[float, float]:
    """Top-1 accuracy of the float and of the emulated network, scoring ``pick(outputs)``."""
    with torch.no_grad():
        return top1_accuracy(pick(quantizer.network(images)), labels), top1_accuracy(pick(quantizer.quantize()(images)), labels)


def _run_onnx(path, batch: torch.Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    # as dlqnb's runners and generated code run it: ONNX Runtime's WeightBiasQuantization would otherwise
    # quantize the float biases of the "gpu" flavour (TensorRT's) to int32 and compute something else
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=["WeightBiasQuantization"])
    return session.run(None, {"input": batch.numpy()})[0]


def _metric(result) -> tuple[float, float]:
    return tuple(result.metric_results["MetricOutput"].tolist())


# ---------------------------------------------------------------- several outputs
def test_a_tuple_network_is_scored_on_its_first_output_with_a_warning_saying_so():
    torch.manual_seed(0)
    images, labels = _images_and_labels()
    quantizer = _calibrated(_TupleNet(), images)
    with pytest.warns(UserWarning, match=r"tuple of 2 outputs \(16×3, 16×4\).*scores the first.*output=1"):
        result = quantizer.validate([(images, labels)], progress=False)
    assert _metric(result) == _by_hand(quantizer, images, labels, lambda outputs: outputs[0])
    assert tuple(result.float_scores.shape) == (16, 3)


def test_output_chooses_another_element_of_a_tuple_without_a_warning():
    torch.manual_seed(0)
    images, labels = _images_and_labels()
    quantizer = _calibrated(_TupleNet(), images, output=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = quantizer.validate([(images, labels)], progress=False)
    assert tuple(result.quantized_scores.shape) == (16, 4)
    assert _metric(result) == _by_hand(quantizer, images, labels, lambda outputs: outputs[1])


def test_a_dict_network_needs_output_and_the_error_lists_its_keys():
    torch.manual_seed(0)
    images, labels = _images_and_labels()
    quantizer = _calibrated(_DictNet(), images)
    with pytest.raises(ScoredOutputError, match=r"dict of outputs \['features', 'logits'\].*DLQuantizer\(net, output=<key>\)"):
        quantizer.validate([(images, labels)], progress=False)
    chosen = _calibrated(_DictNet(), images, output="logits")
    result = chosen.validate([(images, labels)], progress=False)
    assert _metric(result) == _by_hand(chosen, images, labels, lambda outputs: outputs["logits"])


def test_an_output_the_network_does_not_have_is_named_with_those_it_has():
    torch.manual_seed(0)
    images, labels = _images_and_labels()
    with pytest.raises(ScoredOutputError, match=r"dict of outputs \['features', 'logits'\] and it has no output 'scores'"):
        _calibrated(_DictNet(), images, output="scores").validate([(images, labels)], progress=False)
    with pytest.raises(ScoredOutputError, match=r"tuple of 2 outputs .* 5 is not one of them: choose an index from 0 to 1"):
        _calibrated(_TupleNet(), images, output=5).validate([(images, labels)], progress=False)
    single = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Flatten(1), nn.Linear(108, 3))
    with pytest.raises(ScoredOutputError, match=r"returns one tensor \(16×3\): leave output unset"):
        _calibrated(single, images, output=0).validate([(images, labels)], progress=False)
    with pytest.raises(TypeError, match="index \\(int\\) or key \\(str\\)"):
        DLQuantizer(_TupleNet(), output=1.5)


def test_classify_takes_the_scored_output():
    torch.manual_seed(0)
    images, _ = _images_and_labels()
    net = _DictNet().eval()
    net.class_names = ["circle", "square", "star"]
    with pytest.raises(ScoredOutputError, match=r"classify\(net, data, output=<key>\)"):
        classify(net, images)
    with torch.no_grad():
        expected = [net.class_names[i] for i in net(images)["logits"].argmax(1).tolist()]
    assert classify(net, images, output="logits") == expected


def test_export_writes_the_scored_output_of_a_dict_network(tmp_path):
    torch.manual_seed(0)
    images, _ = _images_and_labels()
    quantizer = _calibrated(_DictNet(), images, execution_environment="cpu", output="logits")
    path = export_qdq_onnx(quantizer, tmp_path / "dict.onnx")
    assert [output.name for output in onnx.load(path).graph.output] == ["scores"]
    scores = _run_onnx(path, images)
    with torch.no_grad():
        emulated = quantizer.quantize()(images)["logits"].numpy()
    assert np.array_equal(scores, emulated)
    with pytest.raises(ScoredOutputError, match=r"\['features', 'logits'\]"):
        export_qdq_onnx(_calibrated(_DictNet(), images, execution_environment="cpu"), tmp_path / "unsaid.onnx")
    assert not (tmp_path / "unsaid.onnx").exists()


# ---------------------------------------------------------------- meta device
def test_a_network_on_the_meta_device_is_refused_naming_the_tensor():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).to("meta")
    with pytest.raises(NetworkGraphError, match=r"parameter '0\.weight' of Sequential is on the meta device"):
        DLQuantizer(net)


def test_a_buffer_left_on_the_meta_device_is_refused_too():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    net[1].register_buffer("running_mean", torch.empty(4, device="meta"))
    with pytest.raises(NetworkGraphError, match=r"buffer '1\.running_mean' of Sequential is on the meta device"):
        DLQuantizer(net)


# ---------------------------------------------------------------- 1-D signal CNNs
def _signal_net() -> nn.Module:
    """Conv1d + BatchNorm1d + ReLU + Linear over 2-channel signals of length 16."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3))
    with torch.no_grad():  # running statistics that make folding matter
        net[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        net[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.5, 0.8]))
    return net.eval()


def _signals(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 2, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_a_1d_signal_cnn_exports_an_n_c_l_model_that_records_its_length(target, tmp_path):
    quantizer = _calibrated(_signal_net(), _signals(16, 2), execution_environment=target)
    assert quantizer.input_shape_ == (2, 16)
    path = export_qdq_onnx(quantizer, tmp_path / f"signal_{target}.onnx")
    model = onnx.load(path)
    dims = [dim.dim_param or dim.dim_value for dim in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 2, 16]  # dynamic batch, C×L
    preprocessing = json.loads({prop.key: prop.value for prop in model.metadata_props}["dlqnb_preprocessing"])
    assert preprocessing["input_size"] == [16] and preprocessing["channels"] == 2
    batch = _signals(5, 7)  # a batch size calibration never saw
    scores = _run_onnx(path, batch)
    with torch.no_grad():
        emulated = quantizer.quantize()(batch).numpy()
    assert scores.shape == (5, 3)
    if target == "cpu":
        assert np.array_equal(scores, emulated)  # what tests/test_deploy.py asserts for images
    else:
        # ONNX Runtime runs the TensorRT flavour with its own rounding (see dlqnb.emulation.network): close, not equal
        assert np.abs(scores - emulated).max() <= 0.05 * np.abs(emulated).max()


def test_a_1d_calibration_file_carries_the_signal_length_to_export(tmp_path):
    net = _signal_net()
    _calibrated(net, _signals(8, 2), execution_environment="cpu").save(tmp_path / "signal.safetensors")
    loaded = DLQuantizer.load(tmp_path / "signal.safetensors", net)
    assert loaded.input_shape_ == (2, 16)
    batch = _signals(3, 9)
    with torch.no_grad():
        emulated = loaded.quantize()(batch).numpy()
    assert np.array_equal(_run_onnx(export_qdq_onnx(loaded, tmp_path / "signal.onnx"), batch), emulated)


def test_only_a_calibration_without_the_input_shape_is_blamed_for_it(tmp_path):
    quantizer = _calibrated(_signal_net(), _signals(8, 2), execution_environment="cpu")
    expected = r"input_size \(16, 16\) has 2 spatial dimension\(s\) but calibration saw inputs N×2×16 \(1\)"
    with pytest.raises(ExportError, match=expected) as wrong_rank:
        export_qdq_onnx(quantizer, tmp_path / "wrong.onnx", input_size=(16, 16))
    assert "calibration file" not in str(wrong_rank.value)
    state = quantizer.calibration_state()
    quantizer.restore_calibration(CalibrationState(state.stats, state.tensor_nodes, state.num_samples, ()))  # as an old file reads
    with pytest.raises(ExportError, match="calibration file written before dlqnb recorded the input shape.*input_size=\\(L,\\)"):
        export_qdq_onnx(quantizer, tmp_path / "old.onnx")
    path = export_qdq_onnx(quantizer, tmp_path / "given.onnx", input_size=(16,))
    assert [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim][1:] == [2, 16]


def test_sensitivity_analysis_scores_the_chosen_output_of_a_dict_network():
    from dlqnb.evaluation.sensitivity import sensitivity_analysis

    torch.manual_seed(0)
    images, labels = _images_and_labels()
    quantizer = _calibrated(_DictNet(), images, output="logits")
    table = sensitivity_analysis(quantizer, [(images, labels)], progress=False)
    only_fc = quantizer.with_excluded(set(quantizer.quantized_layers()) - {"fc"}).quantize()
    with torch.no_grad():
        expected = top1_accuracy(only_fc(images)["logits"], labels)
    assert table.set_index("Layer").loc["fc", "MetricOutput"] == pytest.approx(expected)


def test_codegen_of_a_1d_network_is_refused_clearly_and_writes_nothing(tmp_path):
    from dlqnb.deploy.codegen import DeploymentConfig, codegen

    net = _signal_net()
    _calibrated(net, _signals(8, 2), execution_environment="cpu").save(tmp_path / "signal.safetensors")
    cfg = DeploymentConfig(target_library="onnxruntime", data_type="int8", calibration_result_file=str(tmp_path / "signal.safetensors"))
    with pytest.raises(ValueError, match=r"1-D \(size \[16\]\).*export_qdq_onnx"):
        codegen(cfg, net, output_dir=tmp_path / "out", verbose=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
