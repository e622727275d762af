"""Every error dlqnb raises, under one base class :class:`DlqnbError`.

Each error also subclasses the built-in exception it has always been (``ValueError`` or ``RuntimeError``),
so ``except ValueError`` in user code keeps catching it. Kept apart from the stages so that no stage
imports another for its errors.

Example:
    >>> from dlqnb.errors import DataError, DlqnbError
    >>> issubclass(DataError, DlqnbError) and issubclass(DataError, ValueError)
    True
"""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "CalibrationFileError",
    "DataError",
    "DlqnbError",
    "ExportError",
    "ModelFileError",
    "NetworkGraphError",
    "NotCalibratedError",
    "ScoredOutputError",
    "ValidationError",
]


class DlqnbError(Exception):
    """The base of every error dlqnb raises; its message names the file, layer, batch or argument."""


class DataError(DlqnbError, ValueError):
    """Data that dlqnb cannot feed to a network; the message says which batch or file and why."""


class NetworkGraphError(DlqnbError, ValueError):
    """The network cannot be traced, or holds a layer dlqnb cannot handle; the message names it."""


class CalibrationError(DlqnbError, RuntimeError):
    """Calibration failed on a layer or batch; the message names it."""


class NotCalibratedError(DlqnbError, RuntimeError):
    """A step that needs calibration ranges was called before :meth:`DLQuantizer.calibrate`."""


class ValidationError(DlqnbError, RuntimeError):
    """Validation (or classification) failed on a batch; the message names it and the cause."""


class CalibrationFileError(DlqnbError, ValueError):
    """A calibration file that cannot be used; the message names the file and the reason."""


class ScoredOutputError(DlqnbError, ValueError):
    """A network's outputs do not say which one holds the class scores (a dict with no ``output=``
    chosen, or an ``output=`` that is not there); the message names the outputs there are."""


class ExportError(DlqnbError, ValueError):
    """A network the ONNX exporter cannot write; the message names the layer or the reason."""


class ModelFileError(DlqnbError, ValueError):
    """A model file that cannot be run; the message names the file and the reason."""
