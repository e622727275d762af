"""dlqnb.core.numerics against MATLAB's worked example and against exact reference arithmetic."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dlqnb.calibration import kernel as _kernel
from dlqnb.core.numerics import (
    ZERO_BIN,
    MSBHistogram,
    bit_table,
    choose_fraction_length,
    describe_quantization,
    exponent_field_counts,
    fraction_length,
    msb_bin,
    quantize_fixed,
    quantize_to_integer,
    representable_bits,
    representable_range,
)

finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=32, min_value=-1e6, max_value=1e6)


def reference_floor_log2(value: float) -> int:
    """floor(log2(value)) by exact rational comparison."""
    exact = Fraction(value)
    k = 0
    while Fraction(2) ** k > exact:
        k -= 1
    while Fraction(2) ** (k + 1) <= exact:
        k += 1
    return k


def reference_quantize(value: float, f: int, word_length: int = 8, rounding: str = "half_away") -> Fraction:
    scaled = Fraction(value) * Fraction(2) ** f
    floor = math.floor(scaled)
    remainder = scaled - floor
    if remainder > Fraction(1, 2):
        code = floor + 1
    elif remainder < Fraction(1, 2):
        code = floor
    elif rounding == "half_away":
        code = floor + 1 if scaled > 0 else floor
    else:
        code = floor if floor % 2 == 0 else floor + 1
    code = max(-(2 ** (word_length - 1)), min(2 ** (word_length - 1) - 1, code))
    return Fraction(code) / Fraction(2) ** f


class TestQuantizationPageExample:
    """*Quantization of Deep Neural Networks*: bits 2^3 … 2^-3 plus sign."""

    def test_worked_values(self):
        result = quantize_fixed(torch.tensor([0.03125, 2.1, 16.25]), 3)
        assert result.tolist() == [0.0, 2.125, 15.875]

    def test_type_bits_and_range(self):
        assert representable_bits(3) == (3, -3)
        assert representable_range(3) == (-16.0, 15.875)

    def test_minmax_would_choose_fraction_length_2(self):
        assert fraction_length(16.25) == 2

    def test_effects_table(self):
        effects = describe_quantization([0.03125, 2.1, 16.25], 3)["Effect"].tolist()
        assert effects == ["underflow", "precision loss", "overflow"]

    def test_dlquantizer_page_weight_range(self):
        # conv1 weights of *dlquantizer* span [-0.91985, 0.88489]: MSB 2^-1, so 7 fraction bits
        assert fraction_length(max(abs(-0.91985), 0.88489)) == 7


class TestFractionLength:
    @given(st.floats(min_value=1e-30, max_value=1e30, allow_nan=False))
    def test_matches_exact_rule(self, max_abs):
        assert fraction_length(max_abs) == 6 - reference_floor_log2(max_abs)

    @pytest.mark.parametrize("word_length", [4, 8, 16])
    def test_word_length(self, word_length):
        assert fraction_length(3.0, word_length) == word_length - 2 - 1

    def test_exact_at_powers_of_two(self):
        below_one = float(np.nextafter(np.float32(1.0), np.float32(0.0)))
        assert fraction_length(1.0) == 6
        assert fraction_length(below_one) == 7  # log2 would round this up to 0

    def test_zero_range_falls_back(self):
        assert fraction_length(0.0) == 6
        assert fraction_length(torch.tensor(0.0)) == 6

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
    def test_bad_input(self, bad):
        with pytest.raises(ValueError, match="max_abs"):
            fraction_length(bad)

    def test_bad_word_length(self):
        with pytest.raises(ValueError, match="word_length"):
            fraction_length(1.0, word_length=1)


class TestQuantizeFixed:
    @settings(max_examples=300)
    @given(arrays(np.float32, st.integers(1, 40), elements=finite_floats), st.integers(-4, 10), st.sampled_from(["half_away", "half_even"]))
    def test_matches_exact_reference(self, values, f, rounding):
        result = quantize_fixed(torch.from_numpy(values), f, rounding=rounding).tolist()
        expected = [float(reference_quantize(float(v), f, rounding=rounding)) for v in values]
        assert result == expected

    def test_ties(self):
        ties = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
        assert quantize_fixed(ties, 0, rounding="half_away").tolist() == [1, 2, 3, -1, -2, -3]
        assert quantize_fixed(ties, 0, rounding="half_even").tolist() == [0, 2, 2, -0.0, -2, -2]

    def test_largest_float_below_half_rounds_down(self):
        # floor(|x| + 0.5) would give 1: 0.49999997 + 0.5 rounds to 1.0 in float32
        just_below = torch.tensor([np.nextafter(np.float32(0.5), np.float32(0.0))])
        assert quantize_fixed(just_below, 0).item() == 0.0

    def test_saturation_and_unsigned(self):
        assert quantize_to_integer(torch.tensor([1000.0, -1000.0]), 0).tolist() == [127, -128]
        assert quantize_to_integer(torch.tensor([1000.0, -3.0]), 0, signed=False).tolist() == [255, 0]

    def test_rejects_unknown_rounding(self):
        with pytest.raises(ValueError, match="rounding"):
            quantize_fixed(torch.tensor([1.0]), 0, rounding="up")


class TestMSB:
    @given(arrays(np.float32, st.integers(1, 50), elements=finite_floats))
    def test_msb_bin_is_exact(self, values):
        bins = msb_bin(torch.from_numpy(values)).tolist()
        expected = [ZERO_BIN if v == 0 else reference_floor_log2(abs(float(v))) for v in values]
        assert bins == expected

    @given(arrays(np.float32, st.integers(0, 200), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)))
    def test_exponent_counts_are_exact(self, values):
        counts = exponent_field_counts(torch.from_numpy(values))
        expected = np.zeros(256, dtype=np.int64)
        for v in values:
            v = abs(float(v))
            field = 0 if v < 2.0**-126 else reference_floor_log2(v) + 127
            expected[field] += 1
        assert counts.tolist() == expected.tolist()

    def test_nonfinite_and_subnormal_bins(self):
        histogram = MSBHistogram.of(torch.tensor([float("inf"), float("nan"), 1e-40, 0.0, -0.0, 3.0]))
        assert (histogram.nonfinite, histogram.zeros, histogram.nonzero_counts()) == (2, 3, {1: 1})

    @settings(max_examples=200)
    @given(arrays(np.float32, st.integers(1, 60), elements=finite_floats), st.integers(-3, 9))
    def test_histogram_underflow_and_overflow_agree_with_quantization(self, values, f):
        x = torch.from_numpy(values)
        histogram = MSBHistogram.of(x)
        quantized = quantize_fixed(x, f)
        # subnormals (|x| < 2**-126) are counted with the zeros, as documented
        underflows = int(((x.abs() >= 2.0**-126) & (quantized == 0)).sum())
        assert histogram.underflow(f) == underflows
        msb, _ = representable_bits(f)
        assert histogram.overflow(f) == int((x.abs() >= 2.0 ** (msb + 1)).sum())


class TestExponentScheme:
    @given(arrays(np.float32, st.integers(1, 100), elements=finite_floats), st.floats(0, 0.5))
    def test_histogram_scheme_bounds(self, values, overflow_fraction):
        x = torch.from_numpy(values)
        histogram = MSBHistogram.of(x)
        low, high = float(x.min()), float(x.max())
        minmax = choose_fraction_length(low, high, histogram, "minmax")
        chosen = choose_fraction_length(low, high, histogram, "histogram", overflow_fraction=overflow_fraction)
        assert chosen >= minmax
        nonzero = histogram.total - histogram.zeros
        assert histogram.overflow(chosen) <= overflow_fraction * nonzero + 1e-9
        if chosen > minmax:  # one bit wider would also have fit the budget otherwise
            assert histogram.overflow(chosen + 1) > overflow_fraction * nonzero

    def test_histogram_needs_counts(self):
        with pytest.raises(ValueError, match="histogram"):
            choose_fraction_length(0.0, 1.0, None, "histogram")


def test_bit_table_digits():
    row = bit_table([2.1, 0.0], 2, -5)
    assert [int(d) for d in row.iloc[0].drop(["Value", "MSB"])] == [0, 1, 0, 0, 0, 0, 1, 1]
    assert row["MSB"].tolist()[0] == 1 and row["MSB"].isna().tolist()[1]


@pytest.mark.skipif(_kernel.kernel_name() != "cpp", reason="the C++ calibration kernel could not be built here")
@pytest.mark.parametrize("n", [1, 7, 4095, 4096, 4097, 300_001])
def test_cpp_kernel_equals_torch(n):
    generator = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=generator) * 100
    x[: min(n, 3)] = torch.tensor([0.0, -0.0, 1e-40])[: min(n, 3)]
    if n > 10:
        x[5], x[6] = float("inf"), float("-inf")
    low, high, counts = _kernel.minmax_exponent_counts(x)
    ref_low, ref_high, ref_counts = _kernel.torch_minmax_exponent_counts(x)
    assert (low, high) == (ref_low, ref_high)
    assert torch.equal(counts, ref_counts)


@pytest.mark.skipif(_kernel.kernel_name() != "cpp", reason="the C++ calibration kernel could not be built here")
def test_cpp_kernel_reports_nan():
    x = torch.randn(10_000)
    x[1234] = float("nan")
    low, high, counts = _kernel.minmax_exponent_counts(x)
    assert math.isnan(low) and math.isnan(high) and counts[255] == 1


def test_fallback_is_used_when_forced(monkeypatch):
    monkeypatch.setenv("DLQNB_KERNEL", "torch")
    assert _kernel.kernel_name() == "torch"
