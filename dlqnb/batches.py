"""Every form of data dlqnb accepts, read as mini-batches of ``(images, labels)``.

``data`` may be a ``DataLoader``, a map-style ``Dataset`` of ``(image, label)`` samples, any
iterable of ``(images, labels)`` batches (or of image batches), one tensor of images (N×C×H×W), a
NumPy array (float N×C×H×W as given, or uint8 N×H×W×C images scaled to [0, 1] as dlqnb's datastores
scale them; the network's own normalization then applies), or a list of PIL images of one size
(converted like uint8 arrays; RGBA loses its alpha, palette images become RGB).
Labels are ``None`` where the data has none. Batches are checked as they are read: they must be
floating-point tensors with a batch dimension and finite values, and a bad batch gets an error that
says which batch and what was expected.

Example:
    >>> import torch
    >>> batches = list(iter_batches(torch.zeros(5, 3, 8, 8), mini_batch_size=2))
    >>> [tuple(images.shape) for images, _ in batches]
    [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

__all__ = ["DEFAULT_MINI_BATCH_SIZE", "DataError", "count_batches", "iter_batches", "pil_pixels"]

#: MATLAB's default ``MiniBatchSize`` for calibrate and validate.
DEFAULT_MINI_BATCH_SIZE = 32

Batch = tuple[Tensor, Tensor | None]


class DataError(ValueError):
    """Data that dlqnb cannot feed to a network; the message says which batch and why."""


def _is_sample_dataset(data: Any) -> bool:
    return isinstance(data, Dataset) and not isinstance(data, IterableDataset)


def _is_pil_list(data: Any) -> bool:
    if not isinstance(data, (list, tuple)) or not data:
        return False
    from PIL import Image

    return all(isinstance(item, Image.Image) for item in data)


def _from_array(images: np.ndarray, where: str) -> Tensor:
    """A NumPy image batch as a float N×C×H×W tensor (uint8 N×H×W×C is scaled to [0, 1])."""
    if images.dtype == np.uint8:
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[3] not in (1, 3):
            raise DataError(f"{where}: expected uint8 images N×H×W×C with 1 or 3 channels, got shape {images.shape}")
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    if np.issubdtype(images.dtype, np.floating):
        return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    raise DataError(f"{where}: expected float N×C×H×W or uint8 N×H×W×C images, got a NumPy array of {images.dtype}")


def pil_pixels(image: Any) -> np.ndarray:
    """A PIL image as H×W×C uint8 pixels: gray keeps one channel, every other mode (RGBA, palette,
    CMYK, ...) becomes RGB."""
    pixels = np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _from_pil(images: list[Any] | tuple[Any, ...]) -> Tensor:
    """A list of PIL images of one size as a float N×C×H×W tensor in [0, 1]."""
    arrays = []
    for index, image in enumerate(images):
        arrays.append(pil_pixels(image))
        if arrays[-1].shape != arrays[0].shape:
            raise DataError(
                f"PIL image {index} is {arrays[-1].shape[1]}×{arrays[-1].shape[0]} with {arrays[-1].shape[2]} channel(s), image 0 "
                f"{arrays[0].shape[1]}×{arrays[0].shape[0]} with {arrays[0].shape[2]}: give images of one size and mode "
                "(or use augmented_image_datastore, which resizes)"
            )
    return _from_array(np.stack(arrays), "the PIL images")


def _as_batchable(data: Any) -> Any:
    """NumPy arrays and lists of PIL images as an image tensor; anything else as given."""
    if isinstance(data, np.ndarray):
        return _from_array(data, "the NumPy array")
    if _is_pil_list(data):
        return _from_pil(data)
    return data


def count_batches(data: Any, mini_batch_size: int | None = None) -> int | None:
    """How many batches :func:`iter_batches` will yield, when that is known in advance."""
    size = mini_batch_size or DEFAULT_MINI_BATCH_SIZE
    if isinstance(data, np.ndarray):
        return math.ceil(len(data) / size) if data.ndim == 4 or (data.ndim == 3 and data.dtype != np.uint8) else 1
    if _is_pil_list(data):
        return math.ceil(len(data) / size)
    if isinstance(data, Tensor):
        return math.ceil(data.shape[0] / size) if data.ndim else None
    if _is_sample_dataset(data):
        return math.ceil(len(data) / size)
    try:
        return len(data)
    except TypeError:
        return None


def _split_item(item: Any) -> tuple[Any, Any]:
    if isinstance(item, (tuple, list)):
        if not item:
            return None, None
        return item[0], (item[1] if len(item) > 1 else None)
    if isinstance(item, dict):
        images = item.get("image", item.get("images", item.get("input")))
        return images, item.get("label", item.get("labels", item.get("response")))
    return item, None


def _as_label_tensor(labels: Any) -> Tensor | None:
    if labels is None:
        return None
    if isinstance(labels, Tensor):
        return labels
    return torch.as_tensor(labels)


def _check_batch(images: Any, index: int) -> Tensor:
    where = f"batch {index}"
    if images is None:
        raise DataError(f"{where} holds no images; expected (images, labels) or an image tensor")
    if isinstance(images, np.ndarray):
        images = _from_array(images, where)
    if not isinstance(images, Tensor):
        raise DataError(f"{where}: expected images as a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        if images.ndim <= 1:
            raise DataError(
                f"{where} is a {images.dtype} tensor of shape {tuple(images.shape)}: it looks like labels only; "
                "expected float images shaped N×C×H×W (pass (images, labels) pairs)"
            )
        raise DataError(
            f"{where}: expected float images (scaled as the network expects), got {images.dtype}; "
            "convert them first, e.g. images.float() / 255"
        )
    if images.ndim < 2:
        raise DataError(f"{where}: expected a batch of images N×C×H×W, got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise DataError(f"{where} is empty (0 images)")
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).sum())
        raise DataError(f"{where} holds {bad} NaN or Inf values; calibration and validation need finite inputs")
    return images


def _raw_batches(data: Any, size: int) -> Iterator[tuple[Any, Any]]:
    if isinstance(data, Tensor):
        if data.ndim < 2:
            yield data, None
            return
        yield from ((chunk, None) for chunk in data.split(size))
    elif _is_sample_dataset(data):
        loader = DataLoader(data, batch_size=size, shuffle=False)
        yield from (_split_item(item) for item in loader)
    elif isinstance(data, (DataLoader, IterableDataset)) or hasattr(data, "__iter__"):
        yield from (_split_item(item) for item in data)
    else:
        raise DataError(
            f"cannot read data of type {type(data).__name__}; expected a DataLoader, a Dataset of "
            "(image, label), an iterable of (images, labels) batches, an image tensor, a NumPy array or a list of PIL images"
        )


def iter_batches(data: Any, mini_batch_size: int | None = None) -> Iterator[Batch]:
    """Yield checked ``(images, labels)`` mini-batches from any supported form of data.

    Args:
        data: A DataLoader, Dataset, iterable of batches or tensor of images (see module doc).
        mini_batch_size: Batch size for a tensor or a Dataset (default 32, MATLAB's); batched data
            keeps its own batches.

    Raises:
        DataError: If the data is empty or a batch is not a finite float image batch.
    """
    size = mini_batch_size or DEFAULT_MINI_BATCH_SIZE
    if not isinstance(size, int) or size < 1:
        raise DataError(f"mini_batch_size must be a positive integer, got {mini_batch_size!r}")
    count = 0
    for index, (images, labels) in enumerate(_raw_batches(_as_batchable(data), size)):
        yield _check_batch(images, index), _as_label_tensor(labels)
        count += 1
    if count == 0:
        raise DataError("the data is empty: no batch of images was read")
