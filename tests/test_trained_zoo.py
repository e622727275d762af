"""The trained zoo (cache keys, architectures, data) and the accuracy benchmark, on tiny untrained networks.

No test here trains a zoo network: training is replaced by a function that returns a fresh network.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from dlqnb.bench import accuracy as bench
from dlqnb.bench.benchmarks import main
from dlqnb.bench.peers import calibration_reader
from dlqnb.training import trained_zoo
from dlqnb.training.trained_zoo import ARCHITECTURES, build_network, trained_network, trained_zoo_names, zoo_data

from conftest import broken_by_quantization


def _counting_trainer(monkeypatch) -> list[str]:
    """Replace training by building the untrained network; returns the list of names trained."""
    trained: list[str] = []

    def fake_train(name: str, progress: bool) -> nn.Module:
        trained.append(name)
        torch.manual_seed(len(trained))
        return build_network(name).eval()

    monkeypatch.setattr(trained_zoo, "_train", fake_train)
    return trained


def test_a_network_is_trained_once_and_again_when_its_recipe_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("DLQNB_CACHE", str(tmp_path))
    trained = _counting_trainer(monkeypatch)
    first = trained_network("vgg_small_bn", progress=False)
    again = trained_network("vgg_small_bn", progress=False)
    assert trained == ["vgg_small_bn"]  # the second call read the cache
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert again.class_names == list(trained_zoo.DIGIT_CLASSES) and again.input_size == (32, 32)

    longer = dataclasses.replace(ARCHITECTURES["vgg_small_bn"], epochs=ARCHITECTURES["vgg_small_bn"].epochs + 1)
    monkeypatch.setitem(ARCHITECTURES, "vgg_small_bn", longer)
    trained_network("vgg_small_bn", progress=False)
    assert trained == ["vgg_small_bn", "vgg_small_bn"]  # another recipe, another entry

    monkeypatch.setitem(trained_zoo.TRAINED_ZOO_RECIPE, "weight_decay", 1e-3)
    trained_network("vgg_small_bn", progress=False)
    assert len(trained) == 3


def test_a_cache_entry_of_another_network_is_refused():
    net = build_network("vgg_small_bn").eval()
    net.zoo_name = "vgg_small_bn"
    data = trained_zoo._encode(trained_zoo.set_metadata(net, trained_zoo.DIGIT_CLASSES, (32, 32)))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(trained_zoo._decoder("vgg_small_bn")(data, "entry")(x), net(x))
    with pytest.raises(ValueError, match="holds trained-zoo network 'vgg_small_bn', not 'resnet18'"):
        trained_zoo._decoder("resnet18")(data, "entry")


def test_the_zoo_has_six_architectures_of_distinct_families():
    names = trained_zoo_names()
    families = {ARCHITECTURES[name].family for name in names}
    classes = {type(build_network(name)).__name__ for name in names}
    assert len(names) >= 6 and len(families) == len(names) and len(classes) == len(names)
    with pytest.raises(ValueError, match="unknown trained-zoo network 'resnet50'"):
        build_network("resnet50")


def test_zoo_data_is_deterministic_balanced_and_validation_is_never_trained_on():
    calibration, labels = zoo_data("calibration")
    again, _ = zoo_data("calibration", per_class=2)
    train, _ = zoo_data("train")
    validation, _ = zoo_data("validation")
    first_two = torch.cat([torch.arange(10 * digit, 10 * digit + 2) for digit in range(10)])
    assert torch.equal(again, calibration[first_two])  # the first images of each class
    assert calibration.shape == (100, 3, 32, 32) and 0 <= float(calibration.min()) and float(calibration.max()) <= 1
    assert torch.bincount(labels).tolist() == [10] * 10
    assert torch.equal(calibration[:, 0], calibration[:, 2])  # gray in three channels
    # every calibration image is a training image; no validation image is
    rows = {image.numpy().tobytes() for image in train}
    assert all(image.numpy().tobytes() in rows for image in calibration)
    assert not any(image.numpy().tobytes() in rows for image in validation)
    # the selection images are the training images calibration leaves: each training image is in exactly one
    selection, selection_labels = zoo_data("selection")
    assert len(selection) + len(calibration) == len(train)
    picked = {image.numpy().tobytes() for image in selection}
    assert picked <= rows and not picked & {image.numpy().tobytes() for image in calibration}
    assert torch.bincount(zoo_data("selection", per_class=3)[1]).tolist() == [3] * 10
    assert set(selection_labels.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="split must be one of"):
        zoo_data("test")
    with pytest.raises(ValueError, match="per_class"):
        zoo_data("validation", per_class=0)


def test_the_calibration_reader_gives_every_image_once_in_order():
    images = torch.rand(19, 3, 4, 4)
    reader = calibration_reader("x", images, batch=8)
    batches = []
    while (batch := reader.get_next()) is not None:
        batches.append(batch["x"])
    assert [len(b) for b in batches] == [8, 8, 3]
    np.testing.assert_array_equal(np.concatenate(batches), images.numpy())


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    # no global pooling: an untrained net that pools predicts one class for every image
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()


@pytest.mark.slow  # exports and quantizes with ONNX Runtime: seconds, minutes on a loaded machine
def test_the_quick_path_on_a_tiny_network_measures_every_column(tmp_path):
    calibration, _ = zoo_data("calibration", per_class=2)
    images, _ = zoo_data("validation", per_class=5)
    net = _tiny_net()
    with torch.no_grad():
        validation = (images, net(images).argmax(1))  # labels the float network gets right: float top-1 is 1
        calibration_labels = (net(calibration).argmax(1) + 1) % 10  # every one wrong: nothing is picked on them
    ties_to_even = next(r for r in bench.RECIPES if r.rounding == "half_even")
    recipes = (*bench.RECIPES[:2], ties_to_even)  # the last is "cpu"'s own rule: not run again
    selection_images, _ = zoo_data("selection", per_class=2)
    with torch.no_grad():
        selection = (selection_images, net(selection_images).argmax(1))
    result = bench.measure_network(
        "tiny", net, calibration, validation, str(tmp_path), targets=("cpu",), recipes=recipes, openvino=False,
        calibration_labels=calibration_labels, selection=selection,
    )
    assert result["float"] == 1.0 and len(set(validation[1].tolist())) > 1
    accuracies = [result["float"], *result["dlqnb"]["cpu"].values(), result["best"]["emulation"], *result["peers"].values()]
    accuracies += [row["accuracy"] for row in result["recipes"]]
    assert all(a is None or 0 <= a <= 1 for a in accuracies) and result["float"] is not None
    assert [(r["recipe"], r["target"], r["status"]) for r in result["recipes"]] == [("default", "cpu", "ok"), ("per-channel", "cpu", "ok")]
    # the deployed recipe is the one the selection images pick, whatever the validation images say
    assert result["best"]["recipe"] == bench.best_on_selection(result["recipes"])["recipe"]
    assert all(0 <= r["selection_accuracy"] <= 1 and r["selection_error"] >= 0 for r in result["recipes"])
    # the selection images' labels are the float network's answers, the calibration images' are all wrong: the
    # int8 networks agree with the float one on most images, so these figures are the selection images'
    assert all(r["selection_accuracy"] > 0.5 for r in result["recipes"])
    # the ORT peer's figure is the top-1 of the file it wrote, run here without dlqnb
    session = ort.InferenceSession(result["files"]["ort_per_tensor"], providers=["CPUExecutionProvider"])
    scores = session.run(None, {session.get_inputs()[0].name: validation[0].numpy()})[0]
    assert result["peers"]["ort_per_tensor"] == float(np.mean(scores.argmax(1) == validation[1].numpy()))
    assert result["peers"]["nncf_openvino"] is None and result["not_measured"]
    table = bench.accuracy_table({"networks": [result]}).splitlines()
    assert len(table) == 3 and table[2].startswith("| tiny | ") and table[2].count("|") == table[0].count("|")


def test_the_float_layers_recipe_runs_on_each_target_choosing_on_the_labelled_calibration_images():
    net, x, y = broken_by_quantization()  # the float network says 1, the int8 one 0
    recipe = next(r for r in bench.RECIPES if r.name == "float layers")
    assert recipe.max_accuracy_drop == bench.MAX_ACCURACY_DROP
    row, q = bench._run_recipe(net, dataclasses.replace(recipe, target="cpu"), x, (x, y), (x, y))
    assert (row["recipe"], row["target"], row["status"]) == ("float layers", "cpu", "ok")
    assert q.execution_environment == "cpu" and row["accuracy"] == 1.0 and row["float_layers"] == list(q.quantizable_layers)
    assert row["selection_accuracy"] == 1.0 and row["selection_error"] == 0.0  # all float: the float scores
    default, _ = bench._run_recipe(net, dataclasses.replace(bench.RECIPES[0], target="cpu"), x, (x, y), (x, y))
    assert default["accuracy"] == 0.0 and default["float_layers"] == []
    assert default["selection_accuracy"] == 0.0 and default["selection_error"] > 0
    # without labels to choose on, the recipe is an error of its own and the table says so
    row, q = bench._run_recipe(net, recipe, x, (x, y))
    assert q is None and row["accuracy"] is None and row["status"].startswith("error: ValueError") and "validation_data" in row["status"]
    result = {"networks": [{"network": "n", "recipes": [row, default]}]}
    assert bench.recipes_table(result).splitlines()[2:] == ["| float layers (gpu) | error |", "| default (cpu) | 0.0 |"]


def test_recipes_are_picked_on_the_selection_images_as_their_deployed_files_round():
    from test_bias_correction import BranchingNet, images

    net = nn.Sequential(BranchingNet(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = images(13, 8)
    with torch.no_grad():
        y = net(x).argmax(1)
        row, q = bench._run_recipe(net, bench.RECIPES[0], x, (x, y), (x, y))  # the "gpu" default: MATLAB's ties away
        deployed, emulated = q.quantize("half_even")(x), q.quantize()(x)
        assert not torch.equal(deployed, emulated)  # ties occur in this network
        assert row["accuracy"] == bench.top1(emulated, y)  # the table's emulation column keeps MATLAB's rule
        assert row["selection_error"] == pytest.approx(bench.relative_score_error(deployed, net(x)), rel=1e-9)
        assert row["selection_accuracy"] == bench.top1(deployed, y)
        # given selection images of their own, the pick's figures are theirs, not the calibration images'
        other = images(7, 1)
        labels = (net(other).argmax(1) + 1) % 3  # every one wrong for the float network
        picked, _ = bench._run_recipe(net, bench.RECIPES[0], x, (x, y), (x, y), selection=(other, labels))
        on_other = q.quantize("half_even")(other)
        assert picked["selection_error"] == pytest.approx(bench.relative_score_error(on_other, net(other)), rel=1e-9)
        assert picked["selection_accuracy"] == bench.top1(on_other, labels) != row["selection_accuracy"]


def test_a_recipe_that_replaces_clipped_relus_is_scored_against_the_users_float_network():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with torch.no_grad():
        net[0].weight.mul_(8.0)  # pre-activations well above 6: the clip matters
    x = torch.rand(24, 3, 8, 8)
    with torch.no_grad():
        y = net(x).argmax(1)
    recipe = next(r for r in bench.RECIPES if r.relu6 == "relu")
    row, q = bench._run_recipe(net, recipe, x, (x, y), (x, y))
    assert row["status"] == "ok" and type(q.network[1]) is nn.ReLU
    with torch.no_grad():
        changed = q.network(x)
        assert not torch.allclose(changed, net(x), rtol=1e-3, atol=1e-3)  # a float network of its own
        assert row["prepared_float_accuracy"] == bench.top1(changed, y)
        deployed = q.quantize("half_even")(x)
        assert row["selection_error"] == pytest.approx(bench.relative_score_error(deployed, net(x)), rel=1e-9)
        assert row["selection_error"] != pytest.approx(bench.relative_score_error(deployed, changed), rel=1e-6)


def test_the_deployed_recipe_is_chosen_on_selection_images_then_by_score_error():
    def row(name, accuracy, selection_accuracy, selection_error):
        return {"recipe": name, "accuracy": accuracy, "selection_accuracy": selection_accuracy, "selection_error": selection_error}

    rows = [row("a", 0.99, 0.90, 0.1), row("b", 0.90, 0.95, 0.3), row("c", 0.95, 0.95, 0.2), row("failed", None, None, None)]
    assert bench.best_on_selection(rows)["recipe"] == "c"  # not "a", the best on the validation images
    assert bench.best_on_selection([row("x", 0.9, 0.9, 0.1), row("y", 0.9, 0.9, 0.1)])["recipe"] == "x"
    # without labelled selection images the validation top-1 decides
    assert bench.best_on_selection([row("a", 0.8, None, None), row("b", 0.9, None, None)])["recipe"] == "b"
    with pytest.raises(ValueError, match="every one failed"):
        bench.best_on_selection([row("failed", None, None, None)])
    assert bench.relative_score_error(np.array([[1.0, -3.0]]), np.array([[2.0, -2.0]])) == pytest.approx(0.5)


def test_the_table_shows_percentages_and_na(capsys):
    row = {
        "network": "net",
        "float": 0.96,
        "dlqnb": {"gpu": {"emulation": 0.95, "onnxruntime": 0.951, "openvino": None}, "cpu": {"emulation": 0.9449, "onnxruntime": 0.94, "openvino": 0.94}},
        "best": {"recipe": "all", "target": "cpu", "emulation": 0.96, "onnxruntime": 0.959},
        "peers": {"ort_per_tensor": 0.9, "ort_per_channel": 0.955, "nncf_openvino": 0.958},
    }
    lines = bench.accuracy_table({"networks": [row]}).splitlines()
    assert lines[2] == "| net | 96.0 | 95.0 / 95.1 / n/a | 94.5 / 94.0 / 94.0 | 96.0 / 95.9 / n/a | all (cpu) | 90.0 | 95.5 | 95.8 |"
    assert main(["accuracy", "--models", "resnet18,nope"]) == 2
    assert "unknown trained-zoo networks ['nope']" in capsys.readouterr().err
    assert main(["accuracy", "--models", "resnet18", "--recipes", "per-channel,nope"]) == 2
    assert "unknown recipes ['nope']" in capsys.readouterr().err
