"""The accuracy-driven choice of float layers keeps the layer that int8 destroys, and no more than it needs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from dlqnb import DLQuantizer
from dlqnb.evaluation.sensitivity import TRADE_OFF_COLUMNS, choose_float_layers
from dlqnb.ui.plotting import float_layer_tradeoff_figure

FRAGILE = "2_3"


def network_and_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Labels are the float network's own predictions (float accuracy 1.0). One weight of the second
    conv is 50: its MinMax type gets fraction length 6 - floor(log2 50) = 1, a step of 0.5, and every
    other weight of the layer (|w| < 0.25 here) rounds to zero."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4)).eval()
    with torch.no_grad():
        net[2].weight.clamp_(-0.2, 0.2)
        net[2].weight[0, 0, 0, 0] = 50.0
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = net(x).argmax(1)
    return net, x, labels


def accuracy(quantizer: DLQuantizer, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Re-validation by the public API, independent of the choice's own bookkeeping."""
    table = quantizer.validate([(x, labels)], progress=False).metric_results
    return float(table.loc[table["NetworkImplementation"] == "Quantized", "MetricOutput"].iloc[0])


def test_choice_keeps_the_destroyed_layer_in_float_and_meets_the_drop():
    net, x, labels = network_and_data()
    quantizer = DLQuantizer(net)
    quantizer.calibrate(x, progress=False)
    max_drop = 0.02
    assert 1.0 - accuracy(quantizer, x, labels) > max_drop  # the case is built so that int8 costs too much
    choice = quantizer.choose_float_layers([(x, labels)], max_accuracy_drop=max_drop, progress=False)
    assert FRAGILE in choice.layers
    assert choice.meets_target and choice.float_accuracy == 1.0
    assert quantizer.excluded_layers == set()  # choosing does not apply
    applied = DLQuantizer(net).exclude(*choice.layers)
    applied.calibrate(x, progress=False)
    verified = accuracy(applied, x, labels)
    assert verified == pytest.approx(choice.accuracy)
    assert 1.0 - verified <= max_drop
    shorter = DLQuantizer(net, excluded_layers=choice.layers[:-1])
    shorter.calibrate(x, progress=False)
    assert 1.0 - accuracy(shorter, x, labels) > max_drop  # the smallest prefix: one fewer misses the target


def test_trade_off_table_counts_memory_as_validate_does():
    net, x, labels = network_and_data()
    quantizer = DLQuantizer(net)
    quantizer.calibrate(x, progress=False)
    choice = choose_float_layers(quantizer, [(x, labels)], max_accuracy_drop=0.0, full_curve=True, progress=False)
    curve = choice.trade_off
    assert list(curve.columns) == TRADE_OFF_COLUMNS
    assert list(curve["num_float_layers"]) == list(range(len(quantizer.quantized_layers()) + 1))  # the full curve
    assert curve["learnable_memory_bytes"].is_monotonic_increasing  # each float layer costs 4 bytes per weight, not 1
    float_bytes = 4 * sum(p.numel() for p in net.parameters())
    for row in curve.itertuples():
        variant = DLQuantizer(net, excluded_layers=row.float_layers)
        variant.calibrate(x, progress=False)
        memory = variant.validate([(x, labels)], progress=False).metric_results["LearnableParameterMemory(bytes)"].tolist()
        assert memory == [float_bytes, row.learnable_memory_bytes]
        assert row.memory_reduction == pytest.approx(1 - row.learnable_memory_bytes / float_bytes)
    figure = float_layer_tradeoff_figure(choice)
    star = figure.data[1]
    assert list(star.x) == [choice.chosen["learnable_memory_bytes"]] and list(star.y) == [choice.accuracy]


def test_a_target_met_without_float_layers_chooses_none():
    net, x, labels = network_and_data()
    with torch.no_grad():
        net[2].weight[0, 0, 0, 0] = 0.1  # nothing fragile left
    labels = net(x).argmax(1).detach()
    quantizer = DLQuantizer(net)
    quantizer.calibrate(x, progress=False)
    choice = quantizer.choose_float_layers([(x, labels)], max_accuracy_drop=1.0, progress=False)
    assert choice.layers == () and len(choice.trade_off) == 1


@pytest.mark.parametrize("bad", [-0.01, math.nan, math.inf])
def test_max_accuracy_drop_is_checked(bad):
    net, x, labels = network_and_data()
    quantizer = DLQuantizer(net)
    quantizer.calibrate(x[:4], progress=False)
    with pytest.raises(ValueError, match="max_accuracy_drop must be a finite number >= 0"):
        quantizer.choose_float_layers([(x, labels)], max_accuracy_drop=bad, progress=False)


def test_max_accuracy_drop_must_be_a_number():
    net, x, labels = network_and_data()
    quantizer = DLQuantizer(net)
    quantizer.calibrate(x[:4], progress=False)
    with pytest.raises(TypeError, match="max_accuracy_drop must be a number"):
        quantizer.choose_float_layers([(x, labels)], max_accuracy_drop="1%", progress=False)
    with pytest.raises(TypeError, match="max_accuracy_drop must be a number"):
        quantizer.choose_float_layers([(x, labels)], max_accuracy_drop=True, progress=False)


def test_a_numpy_drop_is_a_number():
    net, x, labels = network_and_data()
    quantizer = DLQuantizer(net)
    quantizer.calibrate(x, progress=False)
    assert quantizer.choose_float_layers([(x, labels)], max_accuracy_drop=np.float32(1.0), progress=False).layers == ()


def test_a_target_no_ranked_prefix_meets_warns_and_says_so():
    """A ranking without the fragile layer: even with every ranked layer in float the drop is too large."""
    net, x, labels = network_and_data()
    quantizer = DLQuantizer(net)
    quantizer.calibrate(x, progress=False)
    ranking = pd.DataFrame({"Layer": ["0_1", "5"]})
    with pytest.warns(UserWarning, match="even with all 2 ranked layers in float"):
        choice = quantizer.choose_float_layers([(x, labels)], max_accuracy_drop=0.02, ranking=ranking, progress=False)
    assert not choice.meets_target
    assert choice.layers == ("0_1", "5") and list(choice.trade_off["num_float_layers"]) == [0, 1, 2]
    applied = DLQuantizer(net, excluded_layers=choice.layers)
    applied.calibrate(x, progress=False)
    assert choice.accuracy == pytest.approx(accuracy(applied, x, labels))
    assert choice.accuracy_drop > 0.02
