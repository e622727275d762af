"""Streaming range statistics: what calibration records of one tensor.

An observer only records while data flows (minimum, maximum, MSB counts) and never keeps the
values, so calibration memory does not grow with the data; types are chosen afterwards from what
it recorded (:func:`dlqnb.core.numerics.choose_fraction_length`).

Example:
    >>> import torch
    >>> stats = RangeStats.empty()
    >>> stats.update(torch.tensor([0.5, -2.0]))
    >>> stats.update(torch.tensor([3.0]))
    >>> stats.min_value, stats.max_value, stats.histogram.nonzero_counts()
    (-2.0, 3.0, {-1: 1, 1: 2})
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor

from dlqnb.calibration.kernel import minmax_exponent_counts
from dlqnb.core.numerics import MSBHistogram

__all__ = ["RangeStats"]


@dataclass
class RangeStats:
    """Minimum, maximum and MSB histogram of every value logged for one tensor.

    Attributes:
        min_value: Smallest value seen (``inf`` before any).
        max_value: Largest value seen (``-inf`` before any).
        histogram: MSB counts of all values seen.
    """

    min_value: float
    max_value: float
    histogram: MSBHistogram

    @classmethod
    def empty(cls) -> RangeStats:
        """Statistics of no values."""
        return cls(math.inf, -math.inf, MSBHistogram.empty())

    @classmethod
    def of(cls, x: Tensor) -> RangeStats:
        """Statistics of one tensor's values."""
        stats = cls.empty()
        stats.update(x)
        return stats

    @classmethod
    def union(cls, parts: Iterable[RangeStats]) -> RangeStats:
        """Statistics of all the values of several tensors together."""
        total = cls.empty()
        for part in parts:
            total.merge_in(part)
        return total

    @property
    def count(self) -> int:
        """Number of values seen."""
        return self.histogram.total

    @property
    def max_abs(self) -> float:
        """Largest absolute value seen."""
        return max(abs(self.min_value), abs(self.max_value))

    def update(self, x: Tensor) -> None:
        """Record the values of ``x``. NaNs make the range NaN (and are counted as non-finite)."""
        if x.numel() == 0:
            return
        low, high, counts = minmax_exponent_counts(x)
        self.min_value = _min(self.min_value, low)
        self.max_value = _max(self.max_value, high)
        self.histogram.counts += counts

    def merge_in(self, other: RangeStats) -> None:
        """Record everything ``other`` has seen."""
        self.min_value = _min(self.min_value, other.min_value)
        self.max_value = _max(self.max_value, other.max_value)
        self.histogram.counts += other.histogram.counts


def _min(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


def _max(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)
