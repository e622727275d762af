"""FixedPointType: one scaled integer type for activations, per-channel weights and int32 biases."""

from __future__ import annotations

import pytest
import torch

from dlqnb.core.numerics import FixedPointType, bias_type, quantize_fixed, quantize_to_integer
from dlqnb.plan import TensorType


def test_per_tensor_type_matches_the_scalar_functions():
    x = torch.randn(1000) * 7
    for signed in (True, False):
        t = FixedPointType(4, signed=signed)
        for rounding in ("half_away", "half_even"):
            codes = t.quantize(x, rounding)
            assert torch.equal(codes, quantize_to_integer(x, 4, rounding=rounding, signed=signed))
            assert torch.equal(t.quantize_dequantize(x, rounding), quantize_fixed(x, 4, rounding=rounding, signed=signed))
    assert FixedPointType(4).scale == 2.0**-4 and FixedPointType(4, signed=False).bounds == (0, 255)


def test_per_channel_type_quantizes_each_slice_in_its_own_scale():
    weight = torch.randn(3, 2, 5).double()
    t = FixedPointType((5, 7, 9), axis=0)
    codes = t.quantize(weight)
    for channel, fraction in enumerate((5, 7, 9)):
        assert torch.equal(codes[channel], quantize_to_integer(weight[channel], fraction))
        assert torch.equal(t.dequantize(codes)[channel], codes[channel] * 2.0**-fraction)
    assert t.per_channel and t.scales().tolist() == [2.0**-5, 2.0**-7, 2.0**-9]
    # an accumulator holds the channels on axis 1 of N×C×H×W
    accumulator = torch.ones(2, 3, 4, 4)
    assert t.dequantize(accumulator, axis=1)[0, :, 0, 0].tolist() == [2.0**-5, 2.0**-7, 2.0**-9]


def test_onnx_scales_and_zero_points_have_the_shapes_quantize_linear_takes():
    assert FixedPointType(3).scales(torch.float32).shape == () and FixedPointType(3).zero_points().dtype == torch.int8
    assert FixedPointType(3, signed=False).zero_points().dtype == torch.uint8
    per_channel = bias_type(FixedPointType(2), FixedPointType((1, 2, 3, 4), axis=0))
    assert per_channel.zero_points().dtype == torch.int32 and per_channel.zero_points().shape == (4,)


def test_bias_type_adds_the_fraction_lengths_in_32_bits():
    t = bias_type(FixedPointType(5, signed=False), FixedPointType(8))
    assert (t.fraction_length, t.word_length, t.signed, t.axis) == (13, 32, True, None)
    assert t.bounds == (-(2**31), 2**31 - 1)
    per_channel = bias_type(FixedPointType(5), FixedPointType((6, 7), axis=0))
    assert per_channel.fraction_lengths == (11, 12) and per_channel.axis == 0


def test_invalid_types_are_refused():
    with pytest.raises(ValueError, match="one fraction length"):
        FixedPointType((1, 2))
    with pytest.raises(ValueError, match="one fraction length"):
        FixedPointType((), axis=0)
    with pytest.raises(ValueError, match="word_length"):
        FixedPointType(3, word_length=64)
    with pytest.raises(ValueError, match="fraction_lengths"):
        FixedPointType((1, 2), axis=0).fraction_length


def test_types_are_values_and_the_old_name_still_works():
    assert FixedPointType(3) == FixedPointType((3,)) == TensorType(3)
    assert hash(FixedPointType([4, 5], axis=0)) == hash(FixedPointType((4, 5), axis=0))
