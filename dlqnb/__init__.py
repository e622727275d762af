"""dlqnb: the MATLAB deep-network quantization workflow in PyTorch and Jupyter.

The package is laid out as the pipeline it runs (each subpackage's docstring says what it exports):

* :mod:`dlqnb.core`: numerics, the op table, graph capture, batches, caches;
* :mod:`dlqnb.data` and :mod:`dlqnb.models`: the examples' data stores and networks;
* :mod:`dlqnb.calibration` → :mod:`dlqnb.plan` → :mod:`dlqnb.emulation` → :mod:`dlqnb.evaluation`, driven by
  :class:`DLQuantizer` (:mod:`dlqnb.quantizer`);
* :mod:`dlqnb.deploy` (ONNX export, runtimes, code generation) and :mod:`dlqnb.pruning`;
* :mod:`dlqnb.ui` (Plotly figures, the quantizer app), :mod:`dlqnb.training`, :mod:`dlqnb.reports`;
* :mod:`dlqnb.bench`: developer tools (benchmarks, the zoo check).

``import dlqnb`` loads the quantization workflow only; plotting, the app, training, deployment and the
companions load on first use (``dlqnb.plotting``, ``dlqnb.zoo``, ...).

Example:
    >>> import torch, torchvision, dlqnb
    >>> q = dlqnb.DLQuantizer(torchvision.models.squeezenet1_1(num_classes=5))
    >>> table = q.calibrate(torch.rand(2, 3, 64, 64), progress=False)
    >>> table.shape[1]
    5
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dlqnb.core.graph import network_summary
from dlqnb.core.version import __version__
from dlqnb.emulation.network import quantization_details
from dlqnb.errors import (
    CalibrationError,
    CalibrationFileError,
    DataError,
    DlqnbError,
    ExportError,
    ModelFileError,
    NetworkGraphError,
    NotCalibratedError,
    ScoredOutputError,
    ValidationError,
)
from dlqnb.evaluation.validation import QuantizationOptions, classify
from dlqnb.models.networks import load_network, save_network
from dlqnb.quantizer import DLQuantizer
from dlqnb.reports.records import read_records, record, record_figure, recorded

if TYPE_CHECKING:
    from dlqnb.pruning import TaylorPrunableNetwork

#: Names loaded on first use, so that ``import dlqnb`` needs neither Plotly, ipywidgets nor training code.
_LAZY_MODULES = {
    "numerics": "dlqnb.core.numerics",
    "plotting": "dlqnb.ui.plotting",
    "sensitivity": "dlqnb.evaluation.sensitivity",
    "validation": "dlqnb.evaluation.validation",
    "zoo": "dlqnb.training.zoo",
    "synthetic": "dlqnb.data.synthetic",
    "app": "dlqnb.ui.app",
    "data": "dlqnb.data",
    "models": "dlqnb.models",
    "training": "dlqnb.training",
    "deploy": "dlqnb.deploy",
    "pruning": "dlqnb.pruning",
    "recipes": "dlqnb.recipes",
}
_LAZY_NAMES = {
    "TaylorPrunableNetwork": "dlqnb.pruning",
    "equalize_layers": "dlqnb.preparation",
    "prepare_network": "dlqnb.preparation",
    "estimate_network_metrics": "dlqnb.evaluation.metrics",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        module = importlib.import_module(_LAZY_MODULES[name])
    elif name in _LAZY_NAMES:
        module = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    else:
        raise AttributeError(f"module 'dlqnb' has no attribute {name!r}")
    globals()[name] = module
    return module


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_MODULES) | set(_LAZY_NAMES))


__all__ = [
    "CalibrationError",
    "CalibrationFileError",
    "DLQuantizer",
    "DataError",
    "DlqnbError",
    "ExportError",
    "ModelFileError",
    "NetworkGraphError",
    "NotCalibratedError",
    "QuantizationOptions",
    "ScoredOutputError",
    "TaylorPrunableNetwork",
    "ValidationError",
    "__version__",
    "classify",
    "equalize_layers",
    "estimate_network_metrics",
    "load_network",
    "network_summary",
    "prepare_network",
    "quantization_details",
    "read_records",
    "record",
    "record_figure",
    "recorded",
    "save_network",
    *sorted(_LAZY_MODULES),
]
