"""Trained networks the examples start from, trained once and cached (MATLAB's ``load ...mat``).

* :func:`digits_custom` — the *updateScore* example's ``digitsCustom.mat``: the 12-layer digits network trained on
  scikit-learn's handwritten digits (90 % of them; :func:`digits_split` gives the same split).
* :func:`squeezenet_merch` — the ``squeezenetmerch`` of MATLAB's *dlquantizer* and *Emulate Quantized Network Behavior for GPU Target* examples: dlqnb's SqueezeNet transferred to
  the MerchData-like set with the *INT8 Code Generation for Deep Learning Networks* example's recipe (:data:`MERCH_RECIPE`), exactly as notebook 01 does
  on its defaults.

Each network is stored in dlqnb's cache folder under a key made of everything that produced it
(dlqnb's version, the recipe with its training thread count, the data's file list and sizes, the
starting weights), built under a file lock so that notebooks running in parallel train it once, and
loaded with ``torch.load(weights_only=True)``. Training is reproducible
(:func:`dlqnb.training.train.reproducible`: starting weights and training seeded, deterministic
algorithms, a fixed thread count), so the same key means the same network on one kind of CPU.

Entries are verified (:func:`dlqnb.core.cache.read_entry`): a network file that does not match its
checksum, or has none (not written by this dlqnb), is retrained with one
:class:`~dlqnb.core.cache.CacheWarning` naming the file. Where the cache folder cannot be written, the
network is trained and returned without being cached (one warning).

Example:
    >>> net = digits_custom()
    >>> net.class_names[:3], tuple(net.input_size)
    (['0', '1', '2'], (28, 28))
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlqnb.core.cache import cache_dir, cache_lock, content_key, discard_entry, read_entry, write_entry
from dlqnb.data.datastores import (
    AugmentedImageDatastore,
    augmented_image_datastore,
    digits_data_dir,
    image_data_augmenter,
    image_datastore,
    merch_data_dir,
    split_each_label,
)
from dlqnb.models.networks import digits_net, network_bytes, network_from_bytes, replace_classifier, set_metadata, squeezenet
from dlqnb.training.train import TRAINING_THREADS, reproducible, train_network, training_options

__all__ = ["DIGITS_RECIPE", "MERCH_RECIPE", "digits_custom", "digits_split", "merch_split", "squeezenet_merch", "train_merch"]

#: How :func:`digits_custom` is trained.
DIGITS_RECIPE: dict[str, Any] = {
    "split": 0.9,
    "seed": 0,
    "solver": "adam",
    "initial_learn_rate": 1e-3,
    "mini_batch_size": 64,
    "max_epochs": 6,
    "threads": TRAINING_THREADS,
}

#: the *INT8 Code Generation for Deep Learning Networks* example's transfer-learning recipe, the defaults of notebook 01.
MERCH_RECIPE: dict[str, Any] = {
    "split": 0.7,
    "seed": 0,
    "input_size": [227, 227],
    "translation": 30,
    "learn_rate_factor": 10.0,
    "new_layer_name": "new_conv",
    "solver": "sgdm",
    "mini_batch_size": 11,
    "max_epochs": 7,
    "initial_learn_rate": 2e-4,
    "shuffle": "every-epoch",
    "validation_frequency": 3,
    "threads": TRAINING_THREADS,
}


def _folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def _file_fingerprint(path: str) -> str:
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()[:16]


def _cached_network(
    name: str,
    recipe: dict[str, Any],
    train: Callable[[], nn.Module],
    encode: Callable[[nn.Module], bytes] = network_bytes,
    decode: Callable[[bytes, str], nn.Module] = network_from_bytes,
) -> nn.Module:
    """The network ``train`` makes from ``recipe``: from the cache when a verified entry is there,
    else trained (once across processes, under the cache lock) and stored with its checksum.
    ``encode``/``decode`` write and read the entry's bytes (dlqnb's network file by default)."""
    from dlqnb.core.version import __version__

    key = content_key({"dlqnb": __version__, "torch": torch.__version__.split("+")[0], **recipe})
    path = cache_dir() / "networks" / f"{name}-{key}.pt"
    # Read under the lock too: an entry and its checksum are two renames, and a reader between them
    # would take a network being written for a damaged one.
    with cache_lock(f"network-{name}-{key}"):
        cached = _read_cached_network(path, decode)
        if cached is not None:
            return cached
        data = encode(train())
        write_entry(path, data)  # False (one warning) when the cache cannot be written: not cached
    # Returned as loaded from its bytes, so a freshly trained network is the same object as a cached one.
    return decode(data, str(path))


def _read_cached_network(path: Path, decode: Callable[[bytes, str], nn.Module] = network_from_bytes) -> nn.Module | None:
    """The verified network at ``path``; None when absent or damaged (then removed, one warning)."""
    data = read_entry(path)
    if data is None:
        return None
    try:
        return decode(data, str(path))
    except ValueError as error:  # a checksummed entry that is no network file: not one of ours
        discard_entry(path, f"is not a readable network file ({error})")
        return None


def digits_split(data_dir: str | os.PathLike[str] | None = None, seed: int = 0, split: float = 0.9) -> tuple[AugmentedImageDatastore, AugmentedImageDatastore]:
    """The digits at 28×28, split per label into training (``split``) and validation data."""
    store = image_datastore(data_dir or digits_data_dir())
    train, validation = split_each_label(store, split, seed=seed)
    return augmented_image_datastore((28, 28), train), augmented_image_datastore((28, 28), validation)


def digits_custom(data_dir: str | os.PathLike[str] | None = None) -> nn.Module:
    """The digits network of the *updateScore* example, trained on the digits by :data:`DIGITS_RECIPE` (cached)."""
    folder = Path(data_dir or digits_data_dir())
    recipe = {"network": "digits", **DIGITS_RECIPE, "data": _folder_fingerprint(folder)}
    return _cached_network("digits", recipe, lambda: _train_digits(folder, DIGITS_RECIPE))


def _train_digits(folder: Path, recipe: dict[str, Any]) -> nn.Module:
    training, _ = digits_split(folder, recipe["seed"], recipe["split"])
    mean = float(torch.stack([training[i][0] for i in range(len(training))]).mean())
    with reproducible(recipe["seed"], recipe["threads"]):  # starting weights that do not depend on what ran before
        start = digits_net(len(training.class_names), mean)
    options = training_options(
        recipe["solver"],
        initial_learn_rate=recipe["initial_learn_rate"],
        mini_batch_size=recipe["mini_batch_size"],
        max_epochs=recipe["max_epochs"],
        shuffle="every-epoch",
        seed=recipe["seed"],
        threads=recipe["threads"],
        verbose=False,
    )
    net, _ = train_network(training, start, options)
    return set_metadata(net, training.class_names, (28, 28))


def merch_split(data_dir: str | os.PathLike[str] | None = None, seed: int = 0, split: float = 0.7) -> tuple[Any, Any]:
    """MerchData (or the generated set) split 70/30 per label, as *INT8 Code Generation for Deep Learning Networks* and notebook 01 do."""
    store = image_datastore(data_dir or merch_data_dir())
    return split_each_label(store, split, seed=seed)


def train_merch(data_dir: str | os.PathLike[str] | None = None, recipe: dict[str, Any] | None = None) -> tuple[nn.Module, Any]:
    """the *INT8 Code Generation for Deep Learning Networks* example's transfer learning, uncached: returns the trained network and its training info.

    Raises:
        ValueError: If ``recipe`` names an entry :data:`MERCH_RECIPE` does not have.
    """
    unknown = sorted(set(recipe or {}) - set(MERCH_RECIPE))
    if unknown:
        raise ValueError(f"train_merch: unknown recipe entries {unknown}; known: {sorted(MERCH_RECIPE)}")
    recipe = {**MERCH_RECIPE, **(recipe or {})}
    train_store, validation_store = merch_split(data_dir, recipe["seed"], recipe["split"])
    size = tuple(recipe["input_size"])
    shift = (-recipe["translation"], recipe["translation"])
    augmenter = image_data_augmenter(rand_x_reflection=True, rand_x_translation=shift, rand_y_translation=shift)
    training = augmented_image_datastore(size, train_store, data_augmentation=augmenter, seed=recipe["seed"])
    validation = augmented_image_datastore(size, validation_store)
    net = squeezenet(weights="shapes")
    replace_classifier(
        net, len(train_store.class_names), train_store.class_names, recipe["learn_rate_factor"], seed=recipe["seed"], name=recipe["new_layer_name"]
    )
    options = training_options(
        recipe["solver"],
        mini_batch_size=recipe["mini_batch_size"],
        max_epochs=recipe["max_epochs"],
        initial_learn_rate=recipe["initial_learn_rate"],
        shuffle=recipe["shuffle"],
        validation_data=validation,
        validation_frequency=recipe["validation_frequency"],
        verbose=False,
        seed=recipe["seed"],
        threads=recipe["threads"],
    )
    trained, info = train_network(training, net, options)
    return set_metadata(trained, train_store.class_names, size), info


def squeezenet_merch(data_dir: str | os.PathLike[str] | None = None) -> nn.Module:
    """The transferred merch SqueezeNet of notebook 01's defaults, trained once and cached."""
    from dlqnb.models.networks import _SHIPPED_WEIGHTS

    folder = Path(data_dir or merch_data_dir())
    recipe = {"network": "squeezenet_merch", **MERCH_RECIPE, "data": _folder_fingerprint(folder), "weights": _file_fingerprint(_SHIPPED_WEIGHTS)}
    return _cached_network("squeezenet_merch", recipe, lambda: train_merch(folder)[0])
