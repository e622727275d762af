"""Per-layer sensitivity analysis ranks the layer that really hurts first."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlqnb import DLQuantizer, NotCalibratedError
from dlqnb.ui.plotting import sensitivity_figure
from dlqnb.evaluation.sensitivity import sensitivity_analysis


def network_with_a_fragile_layer() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4)).eval()
    with torch.no_grad():
        net[2].weight[0, 0, 0, 0] = 50.0  # one huge weight: the layer's 8-bit type loses every small weight
    return net, torch.rand(16, 3, 8, 8)


@pytest.mark.parametrize("mode", ["only", "all_but"])
def test_the_fragile_layer_ranks_first(mode):
    net, x = network_with_a_fragile_layer()
    quantizer = DLQuantizer(net)
    quantizer.calibrate(x, progress=False)
    with torch.no_grad():
        labels = net(x).argmax(1)
    table = sensitivity_analysis(quantizer, [(x, labels)], mode=mode, progress=False)
    assert table["Layer"].iloc[0] == "2_3"
    assert set(table["Layer"]) == set(quantizer.quantized_layers())
    assert (table["OutputError"] >= 0).all()
    figure = sensitivity_figure(table)
    assert list(figure.data[0].y)[-1] == "2_3"  # drawn at the top


def test_sensitivity_before_calibration_says_to_calibrate():
    net, x = network_with_a_fragile_layer()
    with pytest.raises(NotCalibratedError, match="sensitivity_analysis needs calibration ranges: call calibrate"):
        sensitivity_analysis(DLQuantizer(net), x)
