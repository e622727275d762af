"""Scaled 8-bit integer numerics, bit for bit as the MATLAB quantization pages define them.

A scaled integer type here is a word of ``word_length`` bits with a power-of-two scale
``2**-fraction_length``: the stored integer ``q`` stands for ``q * 2**-fraction_length``. MATLAB's
rules, reproduced exactly:

* **Type choice (MinMax).** The type must avoid overflow, cover the range and allow underflow: its
  most significant magnitude bit is the MSB of the largest absolute value, one more bit holds the
  sign, so ``fraction_length = word_length - 2 - floor(log2(max_abs))``.
* **Rounding.** To nearest; ties go away from zero (MATLAB's ``round``). ``"half_even"`` gives
  ONNX ``QuantizeLinear``'s ties-to-even for the CPU target.
* **Saturation.** Codes outside ``[-2**(wl-1), 2**(wl-1) - 1]`` saturate; values below half a
  least significant bit underflow to zero.
* **MSB histograms.** Every logged value counts once in the bin of its most significant bit,
  ``floor(log2(|x|))``; zeros are counted apart. Counting reads the float32 exponent field, so it is
  exact for every normal float32; subnormals (``|x| < 2**-126``, which every 8-bit type underflows)
  are counted with the zeros.

Example:
    >>> import torch
    >>> from dlqnb.core.numerics import fraction_length, quantize_fixed
    >>> fraction_length(16.25)
    2
    >>> quantize_fixed(torch.tensor([0.03125, 2.1, 16.25]), 3).tolist()
    [0.0, 2.125, 15.875]
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from torch import Tensor

__all__ = [
    "ZERO_BIN",
    "FixedPointType",
    "bias_type",
    "bit_table",
    "describe_quantization",
    "ExponentScheme",
    "MSBHistogram",
    "Rounding",
    "choose_fraction_length",
    "exponent_field_counts",
    "fraction_length",
    "integer_range",
    "msb_bin",
    "quantize_fixed",
    "quantize_to_integer",
    "representable_bits",
    "representable_range",
    "round_and_saturate",
]

Rounding = Literal["half_away", "half_even"]
ExponentScheme = Literal["minmax", "histogram"]

#: ``msb_bin`` of an exact zero: zeros have no most significant bit and are counted apart.
ZERO_BIN = -(2**31)

#: Default share of nonzero values the ``"histogram"`` scheme lets overflow.
HISTOGRAM_OVERFLOW_FRACTION = 1e-4

_FLOAT32_EXPONENT_BIAS = 127
_EXPONENT_FIELD_SIZE = 256  # float32 exponent field: 0 zero/subnormal, 255 inf/nan


def _check_word_length(word_length: int) -> None:
    if not isinstance(word_length, int) or not 2 <= word_length <= 32:
        raise ValueError(f"word_length must be an integer from 2 to 32, got {word_length!r}")


def _floor_log2(value: float) -> int:
    """Exact ``floor(log2(value))`` for a positive finite float (``math.log2`` can round up)."""
    mantissa, exponent = math.frexp(value)  # value = mantissa * 2**exponent, 0.5 <= mantissa < 1
    del mantissa
    return exponent - 1


def fraction_length(max_abs: float | Tensor, word_length: int = 8) -> int:
    """Fraction length of the signed type that MinMax calibration assigns to a range.

    The type avoids overflow, covers the range and allows underflow:
    ``word_length - 2 - floor(log2(max_abs))`` (MATLAB's exponent is the negative of this).

    An all-zero range (``max_abs == 0``, a zero bias say) has no most significant bit; it gets the
    type of ``max_abs == 1`` (``word_length - 2``), which stores zeros exactly, so calibration never
    stops on one.

    Args:
        max_abs: The largest absolute value the type must hold; a number or a one-element tensor.
        word_length: Bits in the word, sign included.

    Returns:
        The fraction length: the stored integer ``q`` means ``q * 2**-fraction_length``.

    Raises:
        ValueError: If ``max_abs`` is negative, NaN or infinite, or ``word_length`` is out of range.

    Example:
        >>> fraction_length(0.88489)   # the *dlquantizer* example's conv1 weights: 2**-1 <= 0.88 < 2**0
        7
        >>> fraction_length(16.25)
        2
    """
    _check_word_length(word_length)
    if isinstance(max_abs, Tensor):
        if max_abs.numel() != 1:
            raise ValueError(f"max_abs must be a single value, got a tensor of shape {tuple(max_abs.shape)}")
        max_abs = float(max_abs.item())
    max_abs = float(max_abs)
    if not math.isfinite(max_abs):
        raise ValueError(f"max_abs must be finite to choose a scaled type, got {max_abs}")
    if max_abs < 0:
        raise ValueError(f"max_abs must be >= 0 (an absolute value), got {max_abs}")
    if max_abs == 0:
        return word_length - 2
    return word_length - 2 - _floor_log2(max_abs)


def integer_range(word_length: int = 8, signed: bool = True) -> tuple[int, int]:
    """Smallest and largest stored integer of a word.

    Example:
        >>> integer_range(8), integer_range(8, signed=False)
        ((-128, 127), (0, 255))
    """
    _check_word_length(word_length)
    if signed:
        return -(2 ** (word_length - 1)), 2 ** (word_length - 1) - 1
    return 0, 2**word_length - 1


def representable_bits(fraction_length: int, word_length: int = 8) -> tuple[int, int]:
    """Bit positions ``(msb, lsb)`` of a signed type's magnitude bits, as ``2**msb ... 2**lsb``.

    The sign takes one more bit, so ``msb - lsb + 2 == word_length``.

    Example:
        >>> representable_bits(3)   # MATLAB's type: bits 2^3 ... 2^-3 plus sign
        (3, -3)
    """
    _check_word_length(word_length)
    return word_length - 2 - fraction_length, -fraction_length


def representable_range(fraction_length: int, word_length: int = 8, signed: bool = True) -> tuple[float, float]:
    """Smallest and largest real value of a scaled type.

    Example:
        >>> representable_range(3)
        (-16.0, 15.875)
    """
    low, high = integer_range(word_length, signed)
    return math.ldexp(low, -fraction_length), math.ldexp(high, -fraction_length)


def round_and_saturate(scaled: Tensor, bounds: tuple[int, int], rounding: Rounding = "half_away") -> Tensor:
    """Values already scaled to codes, rounded to whole numbers and saturated to ``bounds`` (in place
    where the rounding made a new tensor).

    Example:
        >>> round_and_saturate(torch.tensor([2.5, -2.5, 300.0]), (-128, 127)).tolist()
        [3.0, -3.0, 127.0]
        >>> round_and_saturate(torch.tensor([2.5, -2.5]), (0, 255), "half_even").tolist()
        [2.0, 0.0]
    """
    return _round(scaled, rounding).clamp_(*bounds)


def _round(scaled: Tensor, rounding: Rounding) -> Tensor:
    if rounding == "half_even":
        return torch.round(scaled)
    if rounding == "half_away":
        # floor(|y| + 0.5) would be wrong for 0.49999997 (the sum rounds up to 1.0 in float32);
        # the fractional part y - trunc(y) is exact, so compare it instead.
        whole = torch.trunc(scaled)
        fraction = scaled - whole
        return whole + torch.where(fraction.abs() >= 0.5, torch.sign(scaled), torch.zeros_like(scaled))
    raise ValueError(f"rounding must be 'half_away' or 'half_even', got {rounding!r}")


def quantize_to_integer(
    x: Tensor,
    fraction_length: int | Tensor,
    word_length: int = 8,
    rounding: Rounding = "half_away",
    signed: bool = True,
    axis: int = 0,
) -> Tensor:
    """Stored integers of ``x`` in a scaled type: scale by ``2**fraction_length``, round, saturate.

    Returns the codes as a tensor of ``x``'s floating dtype holding whole numbers (exact up to 2**24
    in float32), so that emulation can keep computing in float.

    Args:
        x: Values to quantize.
        fraction_length: One fraction length, or a 1-D integer tensor of one per slice along
            ``axis`` (per-channel weights).
        word_length: Bits in the word, sign included when ``signed``.
        rounding: ``"half_away"`` or ``"half_even"``.
        signed: Signed or unsigned codes.
        axis: The axis a per-slice ``fraction_length`` runs along.

    Example:
        >>> quantize_to_integer(torch.tensor([2.1, -0.0625, 16.25]), 3).tolist()
        [17.0, -1.0, 127.0]
        >>> quantize_to_integer(torch.tensor([[0.5, 0.25], [0.5, 0.25]]), torch.tensor([1, 3])).tolist()
        [[1.0, 1.0], [4.0, 2.0]]
    """
    low, high = integer_range(word_length, signed)
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if isinstance(fraction_length, Tensor):
        if fraction_length.dim() != 1 or fraction_length.numel() != x.shape[axis] or fraction_length.is_floating_point():
            raise ValueError(f"a per-slice fraction_length must be 1-D integers of length {x.shape[axis]}, got {tuple(fraction_length.shape)}")
        shape = [1] * x.dim()
        shape[axis] = -1
        ones = torch.ones(fraction_length.shape, dtype=x.dtype)
        scale = torch.ldexp(ones, fraction_length.to(torch.int32)).view(shape)  # powers of two: exact
        scaled = x * scale
    elif isinstance(fraction_length, int):
        scaled = x * math.ldexp(1.0, fraction_length)  # a power of two: exact
    else:
        raise TypeError(f"fraction_length must be an int or an integer tensor, got {type(fraction_length).__name__}")
    return round_and_saturate(scaled, (low, high), rounding)


def quantize_fixed(
    x: Tensor,
    fraction_length: int,
    word_length: int = 8,
    rounding: Rounding = "half_away",
    signed: bool = True,
) -> Tensor:
    """The value ``x`` takes in a scaled integer type: scale, round, saturate, scale back.

    Args:
        x: Values to quantize (any floating dtype; integers are taken as float32).
        fraction_length: The type's fraction length (scale ``2**-fraction_length``).
        word_length: Bits in the word, sign included when ``signed``.
        rounding: ``"half_away"`` (ties away from zero, the MATLAB pages) or ``"half_even"`` (ONNX).
        signed: Signed codes ``[-2**(wl-1), 2**(wl-1)-1]``, or unsigned ``[0, 2**wl - 1]``.

    Returns:
        A tensor like ``x`` holding the emulated values.

    Example:
        >>> quantize_fixed(torch.tensor([0.03125, 2.1, 16.25]), 3).tolist()   # *Quantization of Deep Neural Networks*
        [0.0, 2.125, 15.875]
    """
    codes = quantize_to_integer(x, fraction_length, word_length, rounding, signed)
    return codes * math.ldexp(1.0, -fraction_length)


@dataclass(frozen=True)
class FixedPointType:
    """A scaled integer type: the code ``q`` stands for ``q * 2**-fraction_length``.

    One fraction length for the whole tensor (``axis=None``), or one per slice along ``axis`` (per-channel
    weights: one per output channel, ``axis=0``). Activations are 8-bit, signed (int8) or unsigned
    (uint8, zero point 0); the accumulator and the bias codes of a quantized layer are signed 32-bit
    (:func:`bias_type`).

    Args:
        fraction_lengths: The fraction length(s); an int is taken as one.
        axis: The axis the fraction lengths run along, or None for one per tensor.
        signed: Signed or unsigned codes.
        word_length: Bits in the word, sign included when ``signed``.

    Raises:
        ValueError: No fraction length, several without an axis, or a word length out of range.

    Example:
        >>> t = FixedPointType(3)
        >>> t.fraction_length, t.scale, t.bounds
        (3, 0.125, (-128, 127))
        >>> codes = t.quantize(torch.tensor([0.03125, 2.1, 16.25]))
        >>> codes.tolist(), t.dequantize(codes).tolist()
        ([0.0, 17.0, 127.0], [0.0, 2.125, 15.875])
        >>> FixedPointType((1, 3), axis=0).quantize(torch.tensor([[0.5, 0.25], [0.5, 0.25]])).tolist()
        [[1.0, 1.0], [4.0, 2.0]]
    """

    fraction_lengths: tuple[int, ...]
    axis: int | None = None
    signed: bool = True
    word_length: int = 8

    def __post_init__(self) -> None:
        values = self.fraction_lengths
        fractions = tuple(operator.index(f) for f in values) if isinstance(values, (tuple, list)) else (operator.index(values),)
        if not fractions or (self.axis is None and len(fractions) != 1):
            raise ValueError(f"a fixed-point type needs one fraction length, or one per slice along an axis; got {values!r} with axis={self.axis}")
        _check_word_length(self.word_length)
        object.__setattr__(self, "fraction_lengths", fractions)
        object.__setattr__(self, "signed", bool(self.signed))

    @property
    def per_channel(self) -> bool:
        """Whether the fraction lengths run along an axis (one per channel)."""
        return self.axis is not None

    @property
    def fraction_length(self) -> int:
        """The one fraction length of a per-tensor type.

        Raises:
            ValueError: For a per-channel type (use :attr:`fraction_lengths`).
        """
        if self.per_channel:
            raise ValueError(f"a per-channel type has {len(self.fraction_lengths)} fraction lengths: read fraction_lengths")
        return self.fraction_lengths[0]

    @property
    def scale(self) -> float:
        """The power-of-two scale ``2**-fraction_length`` of a per-tensor type (see :meth:`scales`)."""
        return math.ldexp(1.0, -self.fraction_length)

    def scales(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The scale(s) as a tensor: a scalar for a per-tensor type, one per channel otherwise (the
        shapes ONNX QuantizeLinear/DequantizeLinear take)."""
        exponents = -torch.tensor(self.fraction_lengths if self.per_channel else self.fraction_lengths[0], dtype=torch.int32)
        return torch.ldexp(torch.ones(exponents.shape, dtype=torch.float64), exponents).to(dtype)  # powers of two: exact

    def zero_points(self) -> Tensor:
        """The zero point(s), all 0, in the code dtype and the shape of :meth:`scales`."""
        dtype = {8: torch.int8 if self.signed else torch.uint8, 32: torch.int32}.get(self.word_length)
        if dtype is None:
            raise ValueError(f"ONNX has no {self.word_length}-bit {'signed' if self.signed else 'unsigned'} code type")
        return torch.zeros(self.scales().shape, dtype=dtype)

    @property
    def bounds(self) -> tuple[int, int]:
        """Smallest and largest code."""
        return integer_range(self.word_length, self.signed)

    def _fractions(self) -> int | Tensor:
        return torch.tensor(self.fraction_lengths) if self.per_channel else self.fraction_lengths[0]

    def quantize(self, x: Tensor, rounding: Rounding = "half_away", axis: int | None = None) -> Tensor:
        """The codes of ``x`` (whole numbers in ``x``'s floating dtype): scale, round, saturate.

        Args:
            x: Values to quantize.
            rounding: ``"half_away"`` or ``"half_even"``.
            axis: Where the channels of a per-channel type run in ``x`` when not on :attr:`axis`
                (an accumulator's channels are on axis 1 of a convolution's output).
        """
        return quantize_to_integer(x, self._fractions(), self.word_length, rounding, self.signed, self._axis(axis))

    def dequantize(self, codes: Tensor, axis: int | None = None) -> Tensor:
        """The values codes stand for, in the codes' dtype (exact: the scales are powers of two)."""
        if not self.per_channel:
            return codes * self.scale
        shape = [1] * codes.dim()
        shape[self._axis(axis)] = -1
        return codes * self.scales(codes.dtype).view(shape)

    def quantize_dequantize(self, x: Tensor, rounding: Rounding = "half_away") -> Tensor:
        """The value ``x`` takes in the type: what a quantization point computes."""
        return self.dequantize(self.quantize(x, rounding))

    def _axis(self, axis: int | None) -> int:
        return axis if axis is not None else (self.axis or 0)


def bias_type(input_type: FixedPointType, weight_type: FixedPointType) -> FixedPointType:
    """The signed 32-bit type of a layer's accumulator and integer bias: fraction length input +
    weight, per channel where the weights are (what ONNX Runtime's QLinearConv adds its bias codes in).

    Example:
        >>> t = bias_type(FixedPointType(5, signed=False), FixedPointType((7, 8), axis=0))
        >>> t.fraction_lengths, t.axis, t.word_length, t.bounds
        ((12, 13), 0, 32, (-2147483648, 2147483647))
    """
    fractions = tuple(input_type.fraction_length + f for f in weight_type.fraction_lengths)
    return FixedPointType(fractions, axis=weight_type.axis, signed=True, word_length=32)


def msb_bin(x: Tensor) -> Tensor:
    """Most significant bit of each value, ``floor(log2(|x|))``, exactly; zeros give ``ZERO_BIN``.

    Example:
        >>> msb_bin(torch.tensor([0.03125, 2.1, 16.25, 0.0])).tolist()[:3]
        [-5, 1, 4]
    """
    if not x.is_floating_point():
        x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("msb_bin needs finite values; found NaN or Inf")
    _, exponent = torch.frexp(x)
    bins = exponent.to(torch.int64) - 1
    return torch.where(x == 0, torch.full_like(bins, ZERO_BIN), bins)


def exponent_field_counts(x: Tensor) -> Tensor:
    """Counts of the float32 exponent field of ``x``: 256 bins, exact.

    Bin ``e`` holds the values with ``floor(log2|x|) == e - 127``; bin 0 holds zeros and
    subnormals, bin 255 infinities and NaNs. Reading the exponent bits costs one integer pass and a
    bincount, several times cheaper than ``log2`` or ``frexp``, and never misbins a value just
    below a power of two.

    Example:
        >>> counts = exponent_field_counts(torch.tensor([1.0, 1.5, -3.0, 0.0]))
        >>> int(counts[127]), int(counts[128]), int(counts[0])
        (2, 1, 1)
    """
    if x.dtype != torch.float32:
        x = x.to(torch.float32)
    bits = x.detach().contiguous().view(torch.int32)
    # Shifting by 23 leaves sign and exponent; masking the sign folds -x onto x.
    field = torch.bitwise_and(torch.bitwise_right_shift(bits.reshape(-1), 23), 0xFF)
    return torch.bincount(field, minlength=_EXPONENT_FIELD_SIZE)


@dataclass
class MSBHistogram:
    """Streaming MSB counts of a tensor: how many logged values have their MSB at each bit.

    ``counts`` is indexed by the float32 exponent field (see :func:`exponent_field_counts`);
    the properties give MATLAB's view: ``bins`` (bit positions ``k`` of ``2**k``), ``zeros``
    and ``nonfinite`` counted apart.

    Example:
        >>> h = MSBHistogram.of(torch.tensor([0.03125, 2.1, 16.25]))
        >>> h.nonzero_counts()
        {-5: 1, 1: 1, 4: 1}
        >>> h.overflow(fraction_length=3), h.underflow(fraction_length=3)
        (1, 1)
    """

    counts: Tensor

    @classmethod
    def empty(cls) -> MSBHistogram:
        """A histogram with no values logged."""
        return cls(torch.zeros(_EXPONENT_FIELD_SIZE, dtype=torch.int64))

    @classmethod
    def of(cls, x: Tensor) -> MSBHistogram:
        """The histogram of one tensor's values."""
        return cls(exponent_field_counts(x))

    def update(self, x: Tensor) -> None:
        """Add the values of ``x``."""
        self.counts += exponent_field_counts(x)

    def merge(self, other: MSBHistogram) -> MSBHistogram:
        """The histogram of the values of both."""
        return MSBHistogram(self.counts + other.counts)

    @property
    def zeros(self) -> int:
        """Values that are zero (or float32 subnormals, below 2**-126)."""
        return int(self.counts[0])

    @property
    def nonfinite(self) -> int:
        """Values that are infinite or NaN."""
        return int(self.counts[-1])

    @property
    def total(self) -> int:
        """All values logged."""
        return int(self.counts.sum())

    @property
    def bins(self) -> list[int]:
        """The bit position ``k`` of each finite nonzero bin, from 2**-126 to 2**127."""
        return list(range(1 - _FLOAT32_EXPONENT_BIAS, _EXPONENT_FIELD_SIZE - 1 - _FLOAT32_EXPONENT_BIAS))

    def bin_counts(self) -> Tensor:
        """Counts aligned with :attr:`bins`."""
        return self.counts[1:-1]

    def nonzero_counts(self) -> dict[int, int]:
        """``{k: count}`` for the bits that hold at least one MSB, lowest first."""
        counts = self.bin_counts()
        return {k: int(c) for k, c in zip(self.bins, counts.tolist()) if c}

    def max_bin(self) -> int | None:
        """Highest bit holding an MSB, or None when every value is zero."""
        present = self.nonzero_counts()
        return max(present) if present else None

    def overflow(self, fraction_length: int, word_length: int = 8) -> int:
        """Values whose MSB lies above the type's top magnitude bit (they saturate)."""
        msb, _ = representable_bits(fraction_length, word_length)
        return sum(c for k, c in self.nonzero_counts().items() if k > msb)

    def underflow(self, fraction_length: int, word_length: int = 8, rounding: bool = True) -> int:
        """Nonzero values that become zero in the type.

        With rounding (the default, as quantization does) a value needs to be below half an LSB to
        vanish; with ``rounding=False`` every MSB below the LSB counts (MATLAB's "bits removed").
        """
        _, lsb = representable_bits(fraction_length, word_length)
        limit = lsb - 1 if rounding else lsb
        return sum(c for k, c in self.nonzero_counts().items() if k < limit)


def choose_fraction_length(
    min_value: float,
    max_value: float,
    histogram: MSBHistogram | None = None,
    scheme: ExponentScheme = "minmax",
    word_length: int = 8,
    overflow_fraction: float = HISTOGRAM_OVERFLOW_FRACTION,
) -> int:
    """Fraction length for a calibrated range, by the chosen exponent scheme.

    * ``"minmax"`` (default, the MATLAB pages): :func:`fraction_length` of ``max(|min|, |max|)``.
    * ``"histogram"``: the smallest top bit that leaves at most ``overflow_fraction`` of the
      nonzero values above it, i.e. buys precision by letting rare large values saturate. It never
      picks a type wider than MinMax would.

    Example:
        >>> h = MSBHistogram.of(torch.tensor([0.03125, 2.1, 9.0, 12.5, 16.25]))
        >>> choose_fraction_length(0.03125, 16.25, h)
        2
        >>> choose_fraction_length(0.03125, 16.25, h, "histogram", overflow_fraction=0.2)
        3
    """
    minmax = fraction_length(max(abs(min_value), abs(max_value)), word_length)
    if scheme == "minmax":
        return minmax
    if scheme != "histogram":
        raise ValueError(f"exponent scheme must be 'minmax' or 'histogram', got {scheme!r}")
    if histogram is None:
        raise ValueError("the 'histogram' exponent scheme needs the MSB histogram of the values")
    if not 0 <= overflow_fraction < 1:
        raise ValueError(f"overflow_fraction must be in [0, 1), got {overflow_fraction}")
    counts = histogram.nonzero_counts()
    nonzero = sum(counts.values())
    if nonzero == 0:
        return minmax
    allowed = overflow_fraction * nonzero
    above = 0
    top = max(counts)
    # Walk down from the largest MSB while the values left above the top bit stay within budget.
    for k in sorted(counts, reverse=True):
        if above + counts[k] > allowed:
            top = k
            break
        above += counts[k]
    return max(minmax, word_length - 2 - top)


def bit_table(values: Sequence[float], high_bit: int, low_bit: int) -> pd.DataFrame:
    """The ideal binary words of values, one column per bit ``2**high_bit … 2**low_bit`` (*Quantization of Deep Neural Networks*).

    Digits are of ``|value|`` (exact: float binary expansions are finite), truncated below
    ``2**low_bit``; column ``"MSB"`` holds each value's most significant bit.

    Example:
        >>> row = bit_table([2.1], 2, -5).iloc[0]   # 2.1 = 10.00011...b
        >>> [int(d) for d in row.drop(["Value", "MSB"])], int(row["MSB"])
        ([0, 1, 0, 0, 0, 0, 1, 1], 1)
    """
    if high_bit < low_bit:
        raise ValueError(f"high_bit ({high_bit}) must not be below low_bit ({low_bit})")
    bits = list(range(high_bit, low_bit - 1, -1))
    rows = []
    for value in values:
        magnitude = abs(float(value))
        # floor(|v| / 2**k) mod 2, exactly, via integer arithmetic on the scaled value
        scaled = int(math.ldexp(magnitude, -low_bit))
        rows.append([float(value), *((scaled >> (k - low_bit)) & 1 for k in bits)])
    table = pd.DataFrame(rows, columns=["Value", *(f"2^{k}" for k in bits)])
    msb = msb_bin(torch.tensor([float(v) for v in values], dtype=torch.float64)).tolist()
    table["MSB"] = [None if k == ZERO_BIN else k for k in msb]
    return table


def describe_quantization(
    values: Sequence[float],
    fraction_length: int,
    word_length: int = 8,
    rounding: Rounding = "half_away",
) -> pd.DataFrame:
    """What a scaled type does to each value: MATLAB's precision-loss / underflow / overflow table.

    Columns: ``Value``, ``StoredInteger``, ``Word`` (the two's complement bits), ``Quantized``,
    ``Error``, ``Effect`` (``exact``, ``precision loss``, ``underflow``, ``overflow``) and
    ``BitsRemoved``, the value that merely dropping the bits outside the type would give: it differs
    from rounding for a value in ``[LSB/2, LSB)``, which rounds to one LSB instead of vanishing.

    Example:
        >>> t = describe_quantization([0.03125, 2.1, 16.25], 3)
        >>> t[["Quantized", "Effect"]].values.tolist()
        [[0.0, 'underflow'], [2.125, 'precision loss'], [15.875, 'overflow']]
    """
    x = torch.tensor([float(v) for v in values], dtype=torch.float64)
    codes = quantize_to_integer(x, fraction_length, word_length, rounding)
    quantized = codes * math.ldexp(1.0, -fraction_length)
    low, high = representable_range(fraction_length, word_length)
    scale = math.ldexp(1.0, fraction_length)
    code_low, code_high = integer_range(word_length)
    truncated = torch.trunc(x * scale).clamp(code_low, code_high) * math.ldexp(1.0, -fraction_length)
    effects = []
    for value, result in zip(x.tolist(), quantized.tolist()):
        if value > high or value < low:
            effects.append("overflow")
        elif value != 0 and result == 0:
            effects.append("underflow")
        elif value != result:
            effects.append("precision loss")
        else:
            effects.append("exact")
    mask = (1 << word_length) - 1
    words = [format(int(code) & mask, f"0{word_length}b") for code in codes.tolist()]
    return pd.DataFrame(
        {
            "Value": x.tolist(),
            "StoredInteger": [int(c) for c in codes.tolist()],
            "Word": words,
            "Quantized": quantized.tolist(),
            "Error": (quantized - x).tolist(),
            "Effect": effects,
            "BitsRemoved": truncated.tolist(),
        }
    )
