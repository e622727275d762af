"""The calibration file: what code generation reads (MATLAB's ``squeezenetQuantObj.mat``).

One safetensors file (no pickle anywhere): the tensors hold every observed tensor's range and its 256
MSB counts; the header's metadata holds a JSON document with the format version, dlqnb's version,
the target, the exponent scheme, the excluded layers, the per-channel flag, the number of calibration
samples, the shape of one input channels first ((C, H, W) for images, (C, L) for 1-D signals: what export
takes as the model's input), the empirical bias corrections (``bias_corrections``: per optimized layer, one
value per output channel; files written before dlqnb measured them have none, and read as none), and a
fingerprint of the network it was calibrated on (graph and weights). A
SHA-256 checksum over the JSON and the tensor bytes detects edits; files are written atomically.

The types are not stored: they follow from the statistics and the settings (:mod:`dlqnb.plan.types`),
for whichever target the file is loaded for. Files written by earlier versions hold a ``types`` entry
(one 8-bit fraction length per calibration row); it is covered by their checksum and otherwise ignored.

Loading checks, in order: the file is a readable safetensors file, it is a dlqnb calibration file,
its version is not newer than this dlqnb reads, the checksum matches, and the network given has the
fingerprint recorded. Each failure raises :class:`CalibrationFileError` naming the file and what was
expected.

Example:
    >>> import tempfile, torch, torchvision
    >>> from dlqnb import DLQuantizer
    >>> net = torchvision.models.squeezenet1_1(num_classes=5)
    >>> q = DLQuantizer(net)
    >>> _ = q.calibrate(torch.rand(2, 3, 64, 64), progress=False)
    >>> path = tempfile.mkdtemp() + "/squeezenetQuantObj.safetensors"
    >>> q.save(path)
    >>> DLQuantizer.load(path, net).calibration_table.equals(q.calibration_table)
    True
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from dlqnb.core.cache import atomic_write_bytes
from dlqnb.core.numerics import MSBHistogram
from dlqnb.calibration.observers import RangeStats
from dlqnb.errors import CalibrationFileError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CalibrationFileError",
    "CalibrationState",
    "fingerprint",
    "read_calibration",
    "stored_bias_corrections",
    "write_calibration",
]

FORMAT = "dlqnb-calibration"
FORMAT_VERSION = 1



@dataclass(frozen=True)
class CalibrationState:
    """What calibration recorded.

    Attributes:
        stats: Range and MSB counts of every observed tensor, by node name (nodes derived from their
            inputs' statistics are not observed).
        tensor_nodes: Every node that produced a float tensor (each gets an Activations row but a forward
            argument that only an input layer takes).
        num_samples: Images seen.
        input_shape: Shape of one input seen last, channels first: (C, H, W) for images, (C, L) for
            1-D signals, (C, D, H, W) for volumes (empty when unknown).
    """

    stats: dict[str, RangeStats] = field(default_factory=dict)
    tensor_nodes: frozenset[str] = frozenset()
    num_samples: int = 0
    input_shape: tuple[int, ...] = ()

    @classmethod
    def empty(cls) -> CalibrationState:
        """The state before any calibration."""
        return cls()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensor_nodes", frozenset(self.tensor_nodes))
        object.__setattr__(self, "input_shape", tuple(self.input_shape))


def fingerprint(module: fx.GraphModule) -> str:
    """SHA-256 of a graph module's code and of every parameter and buffer (names, shapes, bytes)."""
    digest = hashlib.sha256(module.code.encode())
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def _checksum(document: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode())
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_calibration(path: str | os.PathLike[str], state: CalibrationState, settings: dict[str, Any]) -> None:
    """Write a calibration state and the quantizer's settings atomically.

    Args:
        path: The file to write.
        state: What calibration recorded.
        settings: The quantizer's settings (target, exponent scheme, exclusions, per-channel flag,
            network fingerprint), stored in the JSON header.
    """
    from dlqnb.core.version import __version__

    observed = sorted(state.stats)
    tensors = {
        "ranges": torch.tensor([[state.stats[n].min_value, state.stats[n].max_value] for n in observed], dtype=torch.float64).reshape(-1, 2),
        "msb_counts": torch.stack([state.stats[n].histogram.counts for n in observed]).to(torch.int64),
    }
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dlqnb_version": __version__,
        **settings,
        "num_calibration_samples": state.num_samples,
        "input_shape": list(state.input_shape),
        "observed_nodes": observed,
        "tensor_nodes": sorted(state.tensor_nodes),
    }
    metadata = {"dlqnb": json.dumps(document, sort_keys=True), "checksum": _checksum(document, tensors)}
    atomic_write_bytes(path, save_safetensors(tensors, metadata=metadata))


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    where = os.fspath(path)
    if not os.path.exists(where):
        raise CalibrationFileError(f"calibration file {where!r} does not exist")
    with open(where, "rb") as stream:
        raw = stream.read()
    try:
        tensors = load_safetensors(raw)
        header_size = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + header_size]).get("__metadata__", {})
    except Exception as error:
        raise CalibrationFileError(f"{where!r} is not a readable calibration file (truncated or not safetensors): {error}") from error
    try:
        document = json.loads(metadata["dlqnb"])
    except (KeyError, json.JSONDecodeError) as error:
        raise CalibrationFileError(f"{where!r} is not a dlqnb calibration file (no dlqnb header)") from error
    if document.get("format") != FORMAT:
        raise CalibrationFileError(f"{where!r} is not a dlqnb calibration file (format {document.get('format')!r})")
    if int(document.get("version", 0)) > FORMAT_VERSION:
        raise CalibrationFileError(
            f"{where!r} has calibration format version {document['version']}; this dlqnb reads up to {FORMAT_VERSION}: upgrade dlqnb"
        )
    if metadata.get("checksum") != _checksum(document, tensors):
        raise CalibrationFileError(f"{where!r} fails its checksum: the file was edited or damaged after it was written")
    return document, tensors


def stored_bias_corrections(path: str | os.PathLike[str], settings: dict[str, Any]) -> dict[str, tuple[float, ...]]:
    """The bias corrections a calibration file's settings hold (none in files that predate them).

    Raises:
        CalibrationFileError: The entry is not a mapping of layer names to lists of numbers.

    Example:
        >>> stored_bias_corrections("q.safetensors", {"bias_corrections": {"conv1": [0.5, -0.25]}}), stored_bias_corrections("old.safetensors", {})
        ({'conv1': (0.5, -0.25)}, {})
    """
    entry = settings.get("bias_corrections", {})
    valid = isinstance(entry, dict) and all(
        isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        for values in entry.values()
    )
    if not valid:
        raise CalibrationFileError(f"{os.fspath(path)!r} has malformed bias_corrections: expected a mapping of layer names to lists of finite numbers")
    return {str(name): tuple(float(v) for v in values) for name, values in entry.items()}


def read_calibration(path: str | os.PathLike[str]) -> tuple[dict[str, Any], CalibrationState]:
    """The settings and the calibration state stored in a calibration file.

    Raises:
        CalibrationFileError: Missing, truncated, foreign, newer or edited file.
    """
    document, tensors = _read(path)
    stats = {}
    for index, node in enumerate(document["observed_nodes"]):
        low, high = tensors["ranges"][index].tolist()
        stats[node] = RangeStats(low, high, MSBHistogram(tensors["msb_counts"][index].clone()))
    state = CalibrationState(stats, frozenset(document["tensor_nodes"]), int(document["num_calibration_samples"]), tuple(document.get("input_shape", ())))
    return document, state
