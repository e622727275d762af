"""What a dlqnb model file says of itself: the one reader of its metadata and input dimensions.

:func:`model_info` reads an ONNX file's dlqnb metadata (flavour, class names, preprocessing) and its
input's dimensions, and checks that they are well formed and agree with each other, naming the file and
the field that is wrong (:class:`~dlqnb.errors.ModelFileError`). :func:`known_input_shape` fills a graph's
dynamic dimensions from the recorded input size; the runners, ``auto``'s trial and codegen all read a
file through these.

Example:
    >>> known_input_shape([0, 3, 0, 0], {"channels": 3, "input_size": [227, 227]})
    [3, 227, 227]
    >>> known_input_shape([1, 3, 0, 0], {"channels": 3})
    [3, None, None]
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any

import onnx

from dlqnb.errors import ModelFileError

__all__ = [
    "LAYOUTS",
    "TARGETS",
    "ModelFileError",
    "finite_number",
    "known_input_shape",
    "model_info",
]

#: The flavours a dlqnb model file may record in ``dlqnb_target``.
TARGETS = ("cpu", "gpu", "float")

#: The float batch layout and the size's name for each length of ``input_size``.
LAYOUTS = {1: ("N×C×L signals", "signals of length {}"), 2: ("N×C×H×W images", "images of {}×{}"), 3: ("N×C×D×H×W volumes", "volumes of {}×{}×{}")}


def model_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a dlqnb model file says of itself: ``target``, ``class_names``, ``preprocessing`` (input
    size, channels), ``input_name`` and ``input_dims`` (the graph's input dimensions, N first, 0 where
    dynamic); the one reader of its metadata, which it checks.

    ``preprocessing["input_size"]`` is ``[H, W]`` for an image model (input N×C×H×W), ``[L]`` for a
    1-D signal model (input N×C×L) and ``[D, H, W]`` for a volume model (input N×C×D×H×W). A file
    without dlqnb metadata loads with a warning and an empty ``preprocessing``.

    Raises:
        ModelFileError: The file is not a readable ONNX model, or its dlqnb metadata is malformed or
            disagrees with the graph (the message names the file and the field).

    Example:
        (for a file :func:`~dlqnb.deploy.export.export_qdq_onnx` wrote; :mod:`dlqnb.deploy` makes one)::

            model_info("model_int8.onnx")["preprocessing"]
            # {'input_size': [227, 227], 'pixel_range': [0.0, 1.0], 'channels': 3, 'mean_std': 'applied inside the model'}
    """
    name = os.fspath(path)
    try:
        model = onnx.load(name, load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError and others on a foreign or damaged file
        raise ModelFileError(f"{name!r} is not a readable ONNX model (truncated, damaged or another format): {error}") from error
    if not model.graph.node or not model.graph.input:
        raise ModelFileError(f"{name!r} is not a readable ONNX model: it holds no graph (empty, truncated or another format)")
    graph_input = model.graph.input[0]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    props = {p.key: p.value for p in model.metadata_props}
    if "dlqnb_target" not in props:
        # stacklevel: the warning is about the caller's file, not about where it was read
        warnings.warn(f"{name!r} carries no dlqnb metadata: no class names or preprocessing; inputs are used as given", stacklevel=3)
        return {"target": None, "class_names": None, "preprocessing": {}, "input_name": graph_input.name, "input_dims": dims}
    if props["dlqnb_target"] not in TARGETS:
        raise ModelFileError(f"{name!r}: metadata field dlqnb_target is {props['dlqnb_target']!r}; expected one of {', '.join(map(repr, TARGETS))}")
    class_names = _metadata_json(name, props, "dlqnb_class_names", "null")
    if class_names is not None and not (isinstance(class_names, list) and all(isinstance(c, str) for c in class_names)):
        raise ModelFileError(f"{name!r}: metadata field dlqnb_class_names must be a JSON list of class names (or null), got {class_names!r}")
    preprocessing = _metadata_json(name, props, "dlqnb_preprocessing", "{}")
    if not isinstance(preprocessing, dict):
        raise ModelFileError(f"{name!r}: metadata field dlqnb_preprocessing must be a JSON object (input_size, channels, ...), got {preprocessing!r}")
    _check_preprocessing(name, preprocessing, dims)
    return {"input_name": graph_input.name, "target": props["dlqnb_target"], "class_names": class_names, "preprocessing": preprocessing, "input_dims": dims}


def known_input_shape(dims: list[int], preprocessing: dict[str, Any]) -> list[int | None]:
    """One input's shape (C, then H, W; L for a 1-D signal; D, H, W for a volume): the graph's
    dimensions after N, dynamic ones (0 or negative) taken from the recorded channels and input size,
    None where neither gives it.

    Example:
        >>> known_input_shape([-1, 2, -1], {"channels": 2, "input_size": [40]})
        [2, 40]
    """
    recorded = [preprocessing.get("channels"), *(preprocessing.get("input_size") or [])]
    shape: list[int | None] = []
    for index, dim in enumerate(dims[1:]):
        if int(dim) > 0:
            shape.append(int(dim))
        else:
            shape.append(int(recorded[index]) if index < len(recorded) and recorded[index] else None)
    return shape


def finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (a bool is no number here, as it is none in JSON).

    Example:
        >>> finite_number(2.5), finite_number(True), finite_number(float("nan"))
        (True, False, False)
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _metadata_json(path: str, props: dict[str, str], field: str, default: str) -> Any:
    try:
        return json.loads(props.get(field, default))
    except ValueError as error:
        raise ModelFileError(f"{path!r}: metadata field {field} is not valid JSON ({error})") from error


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(map(finite_number, value)) and value[0] < value[1]


def _check_preprocessing(path: str, preprocessing: dict[str, Any], dims: list[int]) -> None:
    """Raise :class:`ModelFileError` where the recorded input size or channels are malformed or
    disagree with the graph's input (dims: N, C, then H, W or L; 0 where dynamic)."""
    size, channels = preprocessing.get("input_size"), preprocessing.get("channels")
    field = "metadata field dlqnb_preprocessing"
    if size is not None and not (isinstance(size, list) and len(size) in LAYOUTS and all(map(_positive_int, size))):
        raise ModelFileError(
            f"{path!r}: {field}: input_size must be [H, W] (images), [L] (1-D signals) or [D, H, W] (volumes) of positive whole numbers, got {size!r}"
        )
    if channels is not None and not _positive_int(channels):
        raise ModelFileError(f"{path!r}: {field}: channels must be a positive whole number, got {channels!r}")
    pixel_range = preprocessing.get("pixel_range")
    if pixel_range is not None and not _number_pair(pixel_range):
        raise ModelFileError(f"{path!r}: {field}: pixel_range must be [low, high], two finite numbers with low < high, got {pixel_range!r}")
    if not dims:  # the graph does not give its input's shape
        return
    if size is not None and len(dims) != 2 + len(size):
        raise ModelFileError(
            f"{path!r}: {field}: input_size {size} is for a {2 + len(size)}-D input, but the graph's input has {len(dims)} dimensions"
        )
    recorded_dims = [(channels, dims[1] if len(dims) > 1 else 0, "channels")]
    recorded_dims += [(recorded, dim, "input_size") for recorded, dim in zip(size or [], dims[2:])]
    for recorded, dim, what in recorded_dims:
        if recorded is not None and dim > 0 and recorded != dim:
            shape = "×".join(str(d) if d > 0 else "?" for d in dims)
            raise ModelFileError(f"{path!r}: {field}: {what} records {recorded} where the graph's input is {shape} (N×C first)")
