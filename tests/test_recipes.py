"""Recipes: their checks, the Pareto front and best recipe on hand-made tables, and compare_recipes on tiny
networks whose accuracy and memory are computed here independently (plain PyTorch, hand counts)."""

from __future__ import annotations

import copy

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from dlqnb import DLQuantizer
from dlqnb.recipes import RESULT_COLUMNS, Recipe, as_recipes, best_recipe, compare_recipes, pareto_front, pareto_mask, quantizer_for

from conftest import broken_by_quantization
from test_bias_correction import BranchingNet, images


# ---------------------------------------------------------------------------------------------- Recipe
@pytest.mark.parametrize(
    ("fields", "error", "named"),
    [
        ({"target": "tpu"}, ValueError, "target"),
        ({"target": "GPU"}, ValueError, "target"),
        ({"exponent_scheme": "log"}, ValueError, "exponent_scheme"),
        ({"per_channel": "yes"}, TypeError, "per_channel"),
        ({"equalize": 1}, TypeError, "equalize"),
        ({"bias_correction": None}, TypeError, "bias_correction"),
        ({"max_accuracy_drop": -0.01}, ValueError, "max_accuracy_drop"),
        ({"max_accuracy_drop": 2.0}, ValueError, "max_accuracy_drop"),
        ({"max_accuracy_drop": float("nan")}, ValueError, "max_accuracy_drop"),
        ({"max_accuracy_drop": "0.01"}, TypeError, "max_accuracy_drop"),
        ({"max_accuracy_drop": True}, TypeError, "max_accuracy_drop"),
        ({"rounding": "nearest"}, ValueError, "rounding"),
        ({"rounding": "half_up"}, ValueError, "rounding"),
        ({"relu6": "clip"}, ValueError, "relu6"),
        ({"relu6": "relu"}, ValueError, "relu6='relu'.*equalize=True"),  # replacing clips is a step of equalization
    ],
)
def test_a_recipe_with_a_bad_field_is_refused_naming_the_field_and_the_recipe(fields, error, named):
    with pytest.raises(error, match=named) as raised:
        Recipe("mine", **fields)
    assert "'mine'" in str(raised.value)


@pytest.mark.parametrize("name", ["", "   ", None, 3])
def test_a_recipe_needs_a_name(name):
    with pytest.raises(ValueError, match="name"):
        Recipe(name)


def test_recipes_from_dicts_keep_their_fields_and_refuse_unknown_keys():
    recipe = Recipe.from_dict({"name": "cpu pc", "target": "cpu", "per_channel": True, "max_accuracy_drop": 0})
    assert (recipe.target, recipe.per_channel, recipe.max_accuracy_drop, recipe.exponent_scheme) == ("cpu", True, 0.0, "minmax")
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(ValueError, match="targt") as raised:
        Recipe.from_dict({"name": "typo", "targt": "cpu"})
    assert "target" in str(raised.value)  # the known fields are listed
    with pytest.raises(TypeError, match="dict"):
        Recipe.from_dict(["cpu"])
    unnamed = Recipe.from_dict({"target": "cpu", "bias_correction": True})
    assert "cpu" in unnamed.name and "bias correction" in unnamed.name


def test_as_recipes_takes_one_recipe_or_dict_or_a_list_and_wants_unique_names():
    assert [r.name for r in as_recipes({"name": "one"})] == ["one"]
    assert [r.name for r in as_recipes(Recipe("r"))] == ["r"]
    assert [r.target for r in as_recipes([{"name": "a"}, Recipe("b", target="cpu")])] == ["gpu", "cpu"]
    with pytest.raises(ValueError, match="unique"):
        as_recipes([{"name": "a"}, {"name": "a", "target": "cpu"}])
    with pytest.raises(ValueError, match="empty"):
        as_recipes([])
    with pytest.raises(TypeError):
        as_recipes("gpu")


# ---------------------------------------------------------------------------------------------- Pareto front
def _hand_table() -> pd.DataFrame:
    # A: balanced; B: A but slower (dominated by A); C: least memory; D: most accurate; E: fastest;
    # F: E but slower (dominated by E); G: failed; H: the same as A (neither beats the other).
    return pd.DataFrame(
        {
            "recipe": list("ABCDEFGH"),
            "accuracy": [0.90, 0.90, 0.80, 0.95, 0.80, 0.80, np.nan, 0.90],
            "float_accuracy": [0.95] * 8,
            "memory_bytes": [100, 100, 50, 200, 60, 60, np.nan, 100],
            "latency_ms": [10.0, 12.0, 20.0, 30.0, 5.0, 25.0, np.nan, 10.0],
            "error": ["", "", "", "", "", "", "boom", ""],
        }
    )


def test_the_pareto_front_of_a_hand_made_table():
    table = _hand_table()
    assert list(pareto_front(table)["recipe"]) == ["A", "C", "D", "E", "H"]
    assert pareto_mask(table).tolist() == [True, False, True, True, True, False, False, True]


def test_without_latency_the_front_is_on_accuracy_and_memory():
    table = _hand_table()
    table["latency_ms"] = np.nan  # not measured: B ties A again, E and F lose to C
    assert list(pareto_front(table)["recipe"]) == ["A", "B", "C", "D", "H"]
    assert list(pareto_front(table.drop(columns="latency_ms"))["recipe"]) == ["A", "B", "C", "D", "H"]
    with pytest.raises(ValueError, match="memory_bytes"):
        pareto_front(table.drop(columns="memory_bytes"))


@pytest.mark.parametrize(("drop", "expected"), [(0.0, "D"), (0.05, "A"), (0.2, "C")])
def test_the_best_recipe_is_the_cheapest_within_the_drop_and_on_the_front(drop, expected):
    # within 0.05 of 0.95: A, B, D, H; least memory: A, B, H; fastest: A and H; first of the tie: A
    table = _hand_table()
    best = best_recipe(table, max_accuracy_drop=drop)
    assert best["recipe"] == expected
    assert best["recipe"] in set(pareto_front(table)["recipe"])


def test_with_no_recipe_within_the_drop_the_most_accurate_is_chosen_with_a_warning():
    table = _hand_table()
    table["float_accuracy"] = 1.0
    with pytest.warns(UserWarning, match="most accurate"):
        assert best_recipe(table, 0.01)["recipe"] == "D"
    with pytest.raises(ValueError, match="boom"):
        best_recipe(table[table["recipe"] == "G"])
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        best_recipe(table, -0.1)


# ---------------------------------------------------------------------------------------------- compare_recipes
@pytest.fixture
def tiny():
    """A conv → ReLU → linear network on 6×6 images, and random labels (so accuracy is neither 0 nor 1)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    x = torch.rand(48, 3, 6, 6)
    y = torch.randint(0, 3, (48,))
    return net, x, y


def _top1(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return float((scores.argmax(1) == labels).float().mean())


def test_compare_recipes_gives_one_row_per_recipe_with_independently_checked_accuracy_and_memory(tiny):
    net, x, y = tiny
    recipes = [Recipe("gpu"), {"name": "cpu per-channel", "target": "cpu", "per_channel": True}]
    table = compare_recipes(net, recipes, x, (x, y), measure_latency=False, progress=False)
    assert list(table.columns) == RESULT_COLUMNS
    assert list(table["recipe"]) == ["gpu", "cpu per-channel"] and list(table["target"]) == ["gpu", "cpu"]
    assert table["error"].tolist() == ["", ""]
    with torch.no_grad():
        float_accuracy = _top1(net(x), y)
        for (_, row), (target, per_channel) in zip(table.iterrows(), [("gpu", False), ("cpu", True)]):
            q = DLQuantizer(net, execution_environment=target, per_channel_weights=per_channel)
            q.calibrate(x, progress=False)
            assert row["accuracy"] == pytest.approx(_top1(q.quantize()(x), y), abs=1e-12)
            assert row["float_accuracy"] == pytest.approx(float_accuracy, abs=1e-12)
            assert row["accuracy_drop"] == pytest.approx(float_accuracy - row["accuracy"], abs=1e-12)
    parameters = 3 * 4 * 9 + 4 + 64 * 3 + 3
    assert table["float_memory_bytes"].tolist() == [4 * parameters] * 2
    quantized = (3 * 4 * 9 + 64 * 3) + 4 * (4 + 3)  # 1 byte per int8 weight, 4 per bias
    assert table["memory_bytes"].tolist() == [quantized] * 2
    assert table["memory_reduction"].tolist() == pytest.approx([1 - quantized / (4 * parameters)] * 2)
    assert table["num_float_layers"].tolist() == [0, 0] and table["float_layers"].tolist() == ["", ""]
    assert table["latency_ms"].isna().all()
    assert table["pareto"].tolist() == pareto_mask(table).tolist()


def test_a_failing_recipe_is_recorded_and_the_comparison_goes_on(tiny, monkeypatch):
    net, x, y = tiny

    def broken(self, *args, **kwargs):
        raise RuntimeError("bias correction broke")

    monkeypatch.setattr(DLQuantizer, "correct_bias", broken, raising=False)
    table = compare_recipes(net, [{"name": "broken", "bias_correction": True}, {"name": "plain"}], x, (x, y), measure_latency=False, progress=False)
    broken_row, plain_row = table.iloc[0], table.iloc[1]
    assert broken_row["error"] == "RuntimeError: bias correction broke"
    assert math.isnan(broken_row["accuracy"]) and not broken_row["pareto"]
    assert plain_row["error"] == "" and 0 <= plain_row["accuracy"] <= 1 and plain_row["pareto"]


def test_bad_arguments_are_refused_before_any_work(tiny):
    net, x, y = tiny
    with pytest.raises(TypeError, match="net"):
        compare_recipes("net", [{"name": "a"}], x, (x, y))
    with pytest.raises(ValueError, match="latency_batch"):
        compare_recipes(net, [{"name": "a"}], x, (x, y), latency_batch=0)
    with pytest.raises(ValueError, match="backend"):
        compare_recipes(net, [{"name": "a"}], x, (x, y), backend="cuda")
    with pytest.raises(ValueError, match="unique"):
        compare_recipes(net, [{"name": "a"}, {"name": "a"}], x, (x, y))


def test_latency_is_measured_on_the_deployed_file_with_the_runtime_asked_for(tiny, tmp_path):
    net, x, y = tiny
    table = compare_recipes(net, [{"name": "cpu", "target": "cpu"}], x, (x, y), backend="onnxruntime", latency_batch=4, output_dir=tmp_path, progress=False)
    row = table.iloc[0]
    assert row["error"] == ""
    assert math.isfinite(row["latency_ms"]) and row["latency_ms"] > 0 and row["backend"] == "onnxruntime"
    assert [path.name for path in tmp_path.iterdir()] == ["01-cpu.onnx"]
    assert table.attrs["latency_batch"] == 4 and table.attrs["cpu"]


def test_equalization_and_bias_correction_recipes_match_the_quantizer_used_directly(tiny):
    from dlqnb.preparation import equalize_layers

    net, x, y = tiny
    table = compare_recipes(net, [{"name": "eq", "equalize": True}, {"name": "bc", "bias_correction": True}], x, (x, y), measure_latency=False, progress=False)
    assert table["error"].tolist() == ["", ""]
    with torch.no_grad():
        equalized = DLQuantizer(equalize_layers(net))
        equalized.calibrate(x, progress=False)
        assert table.iloc[0]["accuracy"] == pytest.approx(_top1(equalized.quantize()(x), y), abs=1e-12)
        # equalization keeps the float outputs (to float rounding: an exact tie could still flip a top-1 on another host)
        torch.testing.assert_close(equalize_layers(net)(x), net(x), rtol=1e-4, atol=1e-5)
        assert table.iloc[0]["prepared_float_accuracy"] == pytest.approx(_top1(equalize_layers(net)(x), y), abs=1e-12)
        corrected = DLQuantizer(net)
        corrected.calibrate(x, progress=False)
        corrected.correct_bias(x, progress=False)
        assert table.iloc[1]["accuracy"] == pytest.approx(_top1(corrected.quantize()(x), y), abs=1e-12)


def test_a_recipe_that_replaces_clipped_relus_is_measured_against_the_users_float_network():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU6(), nn.Conv2d(6, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with torch.no_grad():
        net[0].weight.mul_(10.0)  # the clip matters: the float network with ReLUs classifies otherwise
    x = torch.rand(64, 3, 8, 8)
    y = torch.randint(0, 3, (64,))
    replaced = copy.deepcopy(net)
    replaced[1] = nn.ReLU()
    with torch.no_grad():
        own, changed = _top1(net(x), y), _top1(replaced(x), y)
    assert own != changed
    relu = {"name": "relu", "equalize": True, "relu6": "relu"}
    for recipes in ([relu], [{"name": "plain"}, relu]):  # net's float top-1 measured apart, or taken from the plain recipe
        table = compare_recipes(net, recipes, x, (x, y), measure_latency=False, progress=False).set_index("recipe")
        assert table["error"].eq("").all() and table["float_accuracy"].eq(own).all()
        row = table.loc["relu"]
        assert row["relu6"] == "relu" and row["prepared_float_accuracy"] == pytest.approx(changed, abs=1e-12)
        assert row["accuracy_drop"] == pytest.approx(own - row["accuracy"], abs=1e-12)


def test_float_layers_chosen_by_accuracy_keep_the_layer_that_quantization_breaks():
    net, x, y = broken_by_quantization()
    recipes = [{"name": "all int8"}, {"name": "no drop", "max_accuracy_drop": 0.0}]
    table = compare_recipes(net, recipes, x, [(x, y)], measure_latency=False, progress=False).set_index("recipe")
    assert table.loc["all int8", "accuracy"] == 0.0 and table.loc["all int8", "float_accuracy"] == 1.0
    kept = table.loc["no drop"]
    assert kept["accuracy"] == 1.0 and kept["num_float_layers"] == 1
    assert kept["float_layers"] == DLQuantizer(net).quantizable_layers[0]
    assert kept["memory_bytes"] == kept["float_memory_bytes"] == 4 * (8 + 2)  # the one layer stays float
    assert table.loc["all int8", "memory_bytes"] == 8 + 4 * 2  # int8 weights, 32-bit biases
    assert table["pareto"].all()  # one is smaller, the other more accurate


def test_a_recipe_with_the_runtimes_rounding_is_tuned_and_scored_with_it():
    from dlqnb.evaluation.sensitivity import sensitivity_analysis

    net, x = BranchingNet().eval(), images(13, 8)  # ties after its residual addition
    y = torch.randint(0, 3, (13,), generator=torch.Generator().manual_seed(1))
    net = nn.Sequential(net, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    by_hand = {}
    with torch.no_grad():
        for rounding in (None, "half_even"):
            q = DLQuantizer(net)
            q.calibrate(x, progress=False)
            q.correct_bias(x, progress=False, rounding=rounding)
            by_hand[rounding] = q
        # power-of-two scales make ties common: the two rules give other corrections and other scores
        assert by_hand[None].bias_corrections != by_hand["half_even"].bias_corrections
        plain = by_hand["half_even"].with_bias_corrections({})
        assert not torch.equal(plain.quantize("half_even")(x), plain.quantize()(x))
        recipe = Recipe("te", bias_correction=True, rounding="half_even")
        built = quantizer_for(net, recipe, x)
        assert built.bias_corrections == by_hand["half_even"].bias_corrections
        table = compare_recipes(net, [recipe], x, (x, y), measure_latency=False, progress=False)
        assert table.loc[0, "rounding"] == "half_even" and table.loc[0, "error"] == ""
        assert table.loc[0, "accuracy"] == pytest.approx(_top1(by_hand["half_even"].quantize("half_even")(x), y), abs=1e-12)
        validated = plain.validate((x, y), progress=False, rounding="half_even")
        torch.testing.assert_close(torch.as_tensor(validated.quantized_scores), plain.quantize("half_even")(x), rtol=0, atol=0)
        # the sensitivity ranking runs each variant with the rounding asked for
        ranking = sensitivity_analysis(plain, (x, y), progress=False, rounding="half_even").set_index("Layer")
        for layer in plain.quantized_layers():
            others = set(plain.quantized_layers()) - {layer}
            alone = plain.with_excluded(others).quantize("half_even")(x)
            assert ranking.loc[layer, "MetricOutput"] == pytest.approx(_top1(alone, y), abs=1e-12)
            error = float((alone - net(x)).abs().mean() / net(x).abs().mean())
            assert ranking.loc[layer, "OutputError"] == pytest.approx(error, rel=1e-6)


# ---------------------------------------------------------------------------------------------- quantizer_for
def test_quantizer_for_matches_the_quantizer_built_by_hand_and_calibrates_each_network_once(tiny, monkeypatch):
    from dlqnb.preparation import equalize_layers

    net, x, _ = tiny
    calls = []
    calibrate = DLQuantizer.calibrate

    def counting(self, *args, **kwargs):
        calls.append(self)
        return calibrate(self, *args, **kwargs)

    recipes = [
        Recipe("a", target="cpu", exponent_scheme="histogram", per_channel=True, bias_correction=True),
        Recipe("b", target="gpu"),
        Recipe("c", target="cpu", equalize=True),
    ]
    monkeypatch.setattr(DLQuantizer, "calibrate", counting)
    shared = {}
    built = [quantizer_for(net, recipe, x, calibrations=shared) for recipe in recipes]
    assert len(calls) == 2 and sorted(shared) == ["equalized", "plain"]  # the plain network once, the equalized once
    alone = quantizer_for(net, recipes[0], x)
    assert len(calls) == 3  # without a shared dict, it calibrates
    monkeypatch.setattr(DLQuantizer, "calibrate", calibrate)
    by_hand = []
    for network, target, scheme, per_channel in [(net, "cpu", "histogram", True), (net, "gpu", "minmax", False), (equalize_layers(net), "cpu", "minmax", False)]:
        q = DLQuantizer(network, execution_environment=target, exponent_scheme=scheme, per_channel_weights=per_channel)
        q.calibrate(x, progress=False)
        by_hand.append(q)
    by_hand[0].correct_bias(x, progress=False)
    with torch.no_grad():
        for q, reference in zip([*built, alone], [*by_hand, by_hand[0]]):
            assert (q.execution_environment, q.exponent_scheme, q.per_channel_weights) == (
                reference.execution_environment,
                reference.exponent_scheme,
                reference.per_channel_weights,
            )
            torch.testing.assert_close(q.quantize()(x), reference.quantize()(x), rtol=0, atol=0)


def test_a_recipe_with_relu6_relu_quantizes_the_network_with_its_clips_replaced_and_keep_leaves_them():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6(), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    x = torch.rand(16, 3, 6, 6)
    shared = {}
    replaced = quantizer_for(net, Recipe("r", equalize=True, relu6="relu"), x, calibrations=shared)
    kept = quantizer_for(net, Recipe("k", equalize=True), x, calibrations=shared)
    assert sorted(shared) == ["equalized", "equalized, ReLU6 → ReLU"]
    assert type(replaced.network[1]) is nn.ReLU and type(kept.network[1]) is nn.ReLU6 and type(net[1]) is nn.ReLU6
    assert Recipe("r", equalize=True, relu6="relu").describe() == "gpu, minmax, equalized, ReLU6 → ReLU"


def test_quantizer_for_refuses_a_dict_and_float_layers_without_validation_data(tiny):
    net, x, _ = tiny
    with pytest.raises(TypeError, match="recipe must be a dlqnb.recipes.Recipe"):
        quantizer_for(net, {"name": "a"}, x)
    with pytest.raises(TypeError, match="net"):
        quantizer_for("net", Recipe("a"), x)
    with pytest.raises(ValueError, match="'drop'.*validation_data"):
        quantizer_for(net, Recipe("drop", max_accuracy_drop=0.01), x)


# ---------------------------------------------------------------------------------------------- figure
def test_the_pareto_figure_draws_the_recipes_that_ran_and_joins_the_front_in_order():
    from dlqnb.ui.plotting import recipe_pareto_figure

    table = _hand_table()
    table["pareto"] = pareto_mask(table)
    figure = recipe_pareto_figure(table)
    markers, memory_front, latency_markers, latency_front = figure.data
    assert len(markers.x) == 4  # A, B and H share a spot, so do E and F; G failed: one marker per (memory, accuracy)
    assert list(memory_front.x) == pytest.approx([b / 2**20 for b in (50, 60, 100, 100, 200)])  # C E A H D, by memory, in MB of 2^20 bytes
    assert sorted(latency_markers.x) == sorted(table["latency_ms"].dropna())
    assert list(latency_front.x) == sorted(latency_front.x)
    assert "1 failed" in figure.layout.title.text
    with pytest.raises(ValueError, match="pareto"):
        recipe_pareto_figure(table.drop(columns="pareto"))
