"""dlqnb's errors that several stages raise (kept apart so that no stage imports another for them)."""

from __future__ import annotations

__all__ = ["CalibrationError", "NotCalibratedError"]


class CalibrationError(RuntimeError):
    """Calibration or validation failed on a layer or batch; the message names it."""


class NotCalibratedError(RuntimeError):
    """A step that needs calibration ranges was called before :meth:`DLQuantizer.calibrate`."""
