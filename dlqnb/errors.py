"""dlqnb's errors that several stages raise (kept apart so that no stage imports another for them)."""

from __future__ import annotations

__all__ = ["CalibrationError", "NotCalibratedError", "ScoredOutputError"]


class CalibrationError(RuntimeError):
    """Calibration or validation failed on a layer or batch; the message names it."""


class NotCalibratedError(RuntimeError):
    """A step that needs calibration ranges was called before :meth:`DLQuantizer.calibrate`."""


class ScoredOutputError(ValueError):
    """A network's outputs do not say which one holds the class scores (a dict with no ``output=``
    chosen, or an ``output=`` that is not there); the message names the outputs there are."""
