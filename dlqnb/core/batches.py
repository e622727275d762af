"""Every form of data dlqnb accepts, read as mini-batches of ``(images, labels)``.

``data`` may be a ``DataLoader``, a map-style ``Dataset`` of ``(image, label)`` samples, any
iterable of ``(images, labels)`` batches (or of image batches), one tensor of images (N×C×H×W), one
``(images, labels)`` pair (images with labels of the same length, read in mini-batches as a tensor of
images is), a NumPy array (float N×C×H×W as given, or uint8/uint16 N×H×W×C images scaled to [0, 1] by
their bit depth as dlqnb's datastores scale them; the network's own normalization then applies), or a
list of PIL images of one size (8- and 16-bit images alike scaled to [0, 1]; RGBA loses its alpha,
palette images become RGB).
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
from dlqnb.errors import DataError

__all__ = ["DEFAULT_MINI_BATCH_SIZE", "DataError", "count_batches", "iter_batches", "pil_pixels", "scaled_pixels"]

#: MATLAB's default ``MiniBatchSize`` for calibrate and validate.
DEFAULT_MINI_BATCH_SIZE = 32

Batch = tuple[Tensor, Tensor | None]



def _is_sample_dataset(data: Any) -> bool:
    return isinstance(data, Dataset) and not isinstance(data, IterableDataset)


def _is_pil_list(data: Any) -> bool:
    if not isinstance(data, (list, tuple)) or not data:
        return False
    from PIL import Image

    return all(isinstance(item, Image.Image) for item in data)


#: The bit depths integer pixels come in: each dtype's largest value is full intensity (1.0).
_FULL_SCALE = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}


def scaled_pixels(pixels: np.ndarray) -> np.ndarray:
    """Pixels as float32 in [0, 1], scaled by their bit depth: uint8 by 255, uint16 (16-bit images)
    by 65535; float pixels (already in [0, 1]) as they are.

    Example:
        >>> scaled_pixels(np.array([0, 255], dtype=np.uint8)).tolist(), scaled_pixels(np.array([65535], dtype=np.uint16)).tolist()
        ([0.0, 1.0], [1.0])
    """
    if np.issubdtype(pixels.dtype, np.floating):
        return np.asarray(pixels, dtype=np.float32)
    full_scale = _FULL_SCALE.get(pixels.dtype)
    if full_scale is None:
        raise DataError(f"expected uint8 or uint16 pixels, got {pixels.dtype}")
    return pixels.astype(np.float32) / np.float32(full_scale)


def _from_array(images: np.ndarray, where: str) -> Tensor:
    """A NumPy image batch as a float N×C×H×W tensor (uint8 or uint16 N×H×W×C is scaled to [0, 1])."""
    if images.dtype in _FULL_SCALE:
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[3] not in (1, 3):
            raise DataError(f"{where}: expected {images.dtype} images N×H×W×C with 1 or 3 channels, got shape {images.shape}")
        return torch.from_numpy(np.ascontiguousarray(scaled_pixels(images))).permute(0, 3, 1, 2)
    if np.issubdtype(images.dtype, np.floating):
        return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    raise DataError(f"{where}: expected float N×C×H×W or uint8/uint16 N×H×W×C images, got a NumPy array of {images.dtype}")


def pil_pixels(image: Any) -> np.ndarray:
    """A PIL image as H×W×C pixels at its own bit depth, as MATLAB's ``imread`` reads it.

    8-bit images give uint8 (gray keeps one channel; every other mode, RGBA, palette, CMYK, ...,
    becomes RGB); 16-bit gray images (PIL's ``I;16`` modes, and ``I`` images such as 16-bit PGM
    files, whose values fit 16 bits) give one uint16 channel; 32-bit float images (``F``) give
    float32, and must hold values in [0, 1]. Pillow reads 16-bit color PNGs as 8-bit RGB itself.
    :func:`scaled_pixels` turns any of them into [0, 1].

    Raises:
        DataError: An integer image with values outside 16 bits, or a float image outside [0, 1].

    Example:
        >>> from PIL import Image
        >>> pil_pixels(Image.fromarray(np.full((2, 2), 32768, dtype=np.uint16))).dtype
        dtype('uint16')
    """
    if image.mode.startswith("I"):
        return _sixteen_bit_gray(np.asarray(image))[:, :, None]
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float32)
        if pixels.size and not (np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1):
            raise DataError(f"a float image must hold values in [0, 1], this one holds [{pixels.min():g}, {pixels.max():g}]")
        return pixels[:, :, None]
    pixels = np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _sixteen_bit_gray(values: np.ndarray) -> np.ndarray:
    """Integer gray pixels (PIL gives 16-bit files as uint16, big-endian uint16 or int32) as native uint16."""
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise DataError(f"an integer image must hold 8- or 16-bit values, this one holds [{values.min()}, {values.max()}]")
    return values.astype(np.uint16)


def _from_pil(images: list[Any] | tuple[Any, ...]) -> Tensor:
    """A list of PIL images of one size as a float N×C×H×W tensor in [0, 1] (each scaled by its own bit depth)."""
    arrays = []
    for index, image in enumerate(images):
        try:
            arrays.append(scaled_pixels(pil_pixels(image)))
        except DataError as error:
            raise DataError(f"PIL image {index}: {error}") from None
        if arrays[-1].shape != arrays[0].shape:
            raise DataError(
                f"PIL image {index} is {arrays[-1].shape[1]}×{arrays[-1].shape[0]} with {arrays[-1].shape[2]} channel(s), image 0 "
                f"{arrays[0].shape[1]}×{arrays[0].shape[0]} with {arrays[0].shape[2]}: give images of one size and mode "
                "(or use augmented_image_datastore, which resizes)"
            )
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def _as_batchable(data: Any) -> Any:
    """NumPy arrays and lists of PIL images as an image tensor; anything else as given."""
    if isinstance(data, np.ndarray):
        return _from_array(data, "the NumPy array")
    if _is_pil_list(data):
        return _from_pil(data)
    return data


def _is_image_batch(images: Any) -> bool:
    """A tensor or NumPy array that can only be a batch of images (N×C×H×W, N×H×W×C integers, or N×C×L signals)."""
    if isinstance(images, np.ndarray) and images.dtype in _FULL_SCALE:
        return images.ndim == 4
    return isinstance(images, (Tensor, np.ndarray)) and images.ndim in (3, 4)


def _single_pair(data: Any) -> tuple[Any, Any] | None:
    """``data`` as one ``(images, labels)`` pair, when it is one: a tuple or list of an image batch and
    1-D labels of the same length (read as two batches, the labels would only be refused)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2 or not _is_image_batch(data[0]):
        return None
    labels = data[1]
    if isinstance(labels, (Tensor, np.ndarray)):
        is_labels = labels.ndim == 1
    else:
        is_labels = isinstance(labels, (list, tuple)) and all(isinstance(label, (int, np.integer)) for label in labels)
    return (data[0], labels) if is_labels and len(labels) == len(data[0]) else None


def _pair_chunks(images: Any, labels: Any, size: int) -> Iterator[tuple[Any, Any]]:
    """One ``(images, labels)`` pair in mini-batches of ``size``, as a tensor of images is read."""
    labels = _as_label_tensor(labels)
    for start in range(0, len(images), size):
        yield images[start : start + size], labels[start : start + size]


def count_batches(data: Any, mini_batch_size: int | None = None) -> int | None:
    """How many batches :func:`iter_batches` will yield, when that is known in advance.

    Example:
        >>> count_batches((torch.zeros(70, 3, 8, 8), torch.zeros(70, dtype=torch.long)))
        3
    """
    size = mini_batch_size or DEFAULT_MINI_BATCH_SIZE
    pair = _single_pair(data)
    if pair is not None:
        return math.ceil(len(pair[0]) / size)
    if isinstance(data, np.ndarray):
        return math.ceil(len(data) / size) if data.ndim == 4 or (data.ndim == 3 and data.dtype not in _FULL_SCALE) else 1
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
    pair = _single_pair(data)
    if pair is not None:
        yield from _pair_chunks(*pair, size)
    elif isinstance(data, Tensor):
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
        data: A DataLoader, Dataset, iterable of batches, tensor of images or one ``(images, labels)``
            pair (see module doc).
        mini_batch_size: Batch size for a tensor, an ``(images, labels)`` pair or a Dataset (default
            32, MATLAB's); batched data keeps its own batches.

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
