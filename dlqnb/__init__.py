"""dlqnb: the MATLAB deep-network quantization workflow in PyTorch and Jupyter.

Example:
    >>> import torch, torchvision, dlqnb
    >>> q = dlqnb.DLQuantizer(torchvision.models.squeezenet1_1(num_classes=5))
    >>> table = q.calibrate(torch.rand(2, 3, 64, 64), progress=False)
    >>> table.shape[1]
    5
"""

from dlqnb import data, models, numerics, plotting, sensitivity, training, zoo
from dlqnb.batches import DataError
from dlqnb.graph import NetworkGraphError, network_summary
from dlqnb.quantizer import CalibrationError, DLQuantizer, NotCalibratedError
from dlqnb.calibration_file import CalibrationFileError
from dlqnb.errors import ScoredOutputError
from dlqnb.emulation import quantization_details
from dlqnb.models import load_network, save_network
from dlqnb.pruning import TaylorPrunableNetwork
from dlqnb.records import read_records, record, record_figure, recorded
from dlqnb.validation import QuantizationOptions, classify

__version__ = "0.1.0"

__all__ = [
    "CalibrationError",
    "CalibrationFileError",
    "QuantizationOptions",
    "ScoredOutputError",
    "TaylorPrunableNetwork",
    "classify",
    "quantization_details",
    "DLQuantizer",
    "DataError",
    "NetworkGraphError",
    "NotCalibratedError",
    "data",
    "load_network",
    "models",
    "network_summary",
    "numerics",
    "plotting",
    "save_network",
    "sensitivity",
    "training",
    "zoo",
    "__version__",
    "read_records",
    "record",
    "record_figure",
    "recorded",
]
