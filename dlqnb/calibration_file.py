"""The calibration file: what code generation reads (the seeds' ``squeezenetQuantObj.mat``).

One safetensors file (no pickle anywhere): the tensors hold every observed tensor's range and its 256
MSB counts; the header's metadata holds a JSON document with the format version, dlqnb's version,
the target, the exponent scheme, the excluded layers, the number of calibration samples, the chosen
type of every row, and a fingerprint of the network it was calibrated on (graph and weights). A
SHA-256 checksum over the JSON and the tensor bytes detects edits; files are written atomically.

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
import os
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from dlqnb.cache import atomic_write_bytes
from dlqnb.numerics import MSBHistogram
from dlqnb.observers import RangeStats

if TYPE_CHECKING:
    from dlqnb.quantizer import DLQuantizer

__all__ = ["FORMAT", "FORMAT_VERSION", "CalibrationFileError", "load_calibration", "network_fingerprint", "save_calibration"]

FORMAT = "dlqnb-calibration"
FORMAT_VERSION = 1


class CalibrationFileError(ValueError):
    """A calibration file that cannot be used; the message names the file and the reason."""


def network_fingerprint(quantizer: DLQuantizer) -> str:
    """SHA-256 of the optimized graph's code and of every parameter and buffer (names, shapes, bytes)."""
    module = quantizer.optimized_.module
    digest = hashlib.sha256(module.code.encode())
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def _checksum(document: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode())
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_calibration(quantizer: DLQuantizer, path: str | os.PathLike[str]) -> None:
    """Write a calibrated quantizer's calibration file atomically."""
    from dlqnb import __version__

    quantizer._require_calibration("save")
    observed = sorted(quantizer._stats)
    tensors = {
        "ranges": torch.tensor([[quantizer._stats[n].min_value, quantizer._stats[n].max_value] for n in observed], dtype=torch.float64),
        "msb_counts": torch.stack([quantizer._stats[n].histogram.counts for n in observed]).to(torch.int64),
    }
    types = quantizer.quantization_types()
    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dlqnb_version": __version__,
        "execution_environment": quantizer.execution_environment,
        "exponent_scheme": quantizer.exponent_scheme,
        "excluded_layers": sorted(quantizer.excluded_layers_),
        "per_channel_weights": quantizer.per_channel_weights,
        "num_calibration_samples": quantizer.num_calibration_samples_,
        "network_fingerprint": network_fingerprint(quantizer),
        "observed_nodes": observed,
        "tensor_nodes": sorted(quantizer._tensor_nodes),
        "types": {row: int(f) for row, f in zip(types["Optimized Layer Name"], types["FractionLength"])},
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


def load_calibration(path: str | os.PathLike[str], net: torch.nn.Module) -> DLQuantizer:
    """A calibrated quantizer for ``net`` from a calibration file.

    Raises:
        CalibrationFileError: Missing, truncated, foreign, newer, edited file, or a different network.
    """
    from dlqnb.quantizer import DLQuantizer

    document, tensors = _read(path)
    quantizer = DLQuantizer(
        net,
        execution_environment=document["execution_environment"],
        exponent_scheme=document["exponent_scheme"],
        excluded_layers=document["excluded_layers"],
        per_channel_weights=document.get("per_channel_weights", False),
    )
    if network_fingerprint(quantizer) != document["network_fingerprint"]:
        raise CalibrationFileError(
            f"{os.fspath(path)!r} was calibrated on a different network (its graph or weights differ from "
            f"the {type(net).__name__} given); calibrate this network instead"
        )
    stats = {}
    for index, node in enumerate(document["observed_nodes"]):
        low, high = tensors["ranges"][index].tolist()
        stats[node] = RangeStats(low, high, MSBHistogram(tensors["msb_counts"][index].clone()))
    quantizer._restore_calibration(stats, set(document["tensor_nodes"]), int(document["num_calibration_samples"]))
    return quantizer
