"""A zoo of torchvision architectures trained here from scratch, for measuring what int8 costs.

The random-weight zoo check (``python -m dlqnb.bench zoo``) proves that 41 architectures deploy; it
cannot say whether they keep their accuracy. These networks can: each is a torchvision architecture
of its own family, randomly initialized and trained on scikit-learn's handwritten digits at 32×32
(:data:`TRAINED_ZOO_RECIPE`), to a held-out float top-1 high enough that a quantization drop shows.
(The 24 generated figures of :mod:`dlqnb.data.synthetic` were tried first: at 32×32 they are too hard
to learn from scratch in a few minutes on 2 shared cores — MobileNetV3-Small reached 17 % after 8
epochs of 4,800 images; dlqnb's SqueezeNet needed 10 epochs of 10,800 images at 112×112 for 90 %.)

* :func:`trained_zoo_names` — the architectures (:data:`ARCHITECTURES`: name, family, epochs, learn rate);
* :func:`trained_network` — one of them, trained once and cached like the examples' networks
  (:mod:`dlqnb.training.zoo`: keyed by everything that produced it, built under a file lock so that
  parallel runs train it once); training runs inside :func:`~dlqnb.training.train.reproducible`
  (seeded, deterministic algorithms, one thread);
* :func:`zoo_data` — the deterministic ``"train"``, ``"calibration"``, ``"selection"`` (the training
  images calibration leaves) and ``"validation"`` images (float N×3×32×32 in [0, 1], with labels);
* :func:`shapes_tensor`, :func:`train_epoch`, :func:`held_out_accuracy`, :func:`warmup_cosine` — the
  rendering and training loop this zoo shares with the shipped SqueezeNet's pretraining
  (:mod:`dlqnb.bench.pretrain`).

Example:
    >>> len(trained_zoo_names()) >= 6
    True
    >>> ARCHITECTURES["resnet18"].family
    'ResNet'
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dlqnb.data.synthetic import SHAPE_CLASSES, render_shape, sample_rng
from dlqnb.models.networks import network_metadata, set_metadata
from dlqnb.training.train import reproducible
from dlqnb.training.zoo import _cached_network

__all__ = [
    "ARCHITECTURES",
    "TRAINED_ZOO_RECIPE",
    "ZooArchitecture",
    "build_network",
    "held_out_accuracy",
    "recipe_of",
    "reestimate_batch_norm",
    "shapes_tensor",
    "train_epoch",
    "trained_network",
    "trained_zoo_names",
    "warmup_cosine",
    "zoo_data",
]

Split = Literal["train", "calibration", "selection", "validation"]
#: The trained zoo's classes: the digits' folder names.
DIGIT_CLASSES = tuple(str(digit) for digit in range(10))

#: How every trained-zoo network is trained (an architecture adds its epochs and learn rate). One
#: thread: it sums gradients in one order, so a machine trains the same network every time (another
#: instruction set may round differently), and on a 2-core machine shared with other work a single
#: busy thread trains faster than two that wait for each other.
TRAINED_ZOO_RECIPE: dict[str, Any] = {
    "data": "digits",
    "input_size": 32,
    "train_fraction": 0.75,
    "calibration_per_class": 10,
    "seed": 0,
    "optimizer": "adamw",
    "weight_decay": 5e-4,
    "label_smoothing": 0.1,
    "batch": 32,
    "schedule": "warmup-cosine",
    "flips": False,
    "batch_norm_images": 1024,
    "threads": 1,
}


@dataclass(frozen=True)
class ZooArchitecture:
    """One trained-zoo network: how it is built and how long it trains.

    Attributes:
        name: The zoo name (torchvision's builder name where it is one).
        family: The architecture family, for tables.
        epochs: Training epochs over the training split.
        lr: Peak learn rate of the warm-up/cosine schedule.
        definition: Keyword arguments of its builder beyond ``num_classes`` (part of the cache key).
    """

    name: str
    family: str
    epochs: int
    lr: float
    definition: dict[str, Any] = field(default_factory=dict)


def _small_vgg(num_classes: int, widths: list[Any]) -> nn.Module:
    """torchvision's VGG with batch norm, narrower, and a global-average-pooled two-layer head."""
    from torchvision.models.vgg import VGG, make_layers

    net = VGG(make_layers(widths, batch_norm=True), num_classes=num_classes, dropout=0.2)
    channels = [w for w in widths if w != "M"][-1]
    # VGG's own head expects 7×7×512 features (102 M weights); a small input needs no such head.
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Sequential(nn.Linear(channels, 256), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.Linear(256, num_classes))
    return net


def _small_convnext(num_classes: int, stages: list[list[int | None]]) -> nn.Module:
    """torchvision's ConvNeXt, with narrower and shallower stages."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(*stage) for stage in stages], stochastic_depth_prob=0.0, num_classes=num_classes)


_CUSTOM_BUILDERS: dict[str, Callable[..., nn.Module]] = {"vgg_small_bn": _small_vgg, "convnext_mini": _small_convnext}

#: The trained zoo, one architecture per family.
ARCHITECTURES: dict[str, ZooArchitecture] = {
    arch.name: arch
    for arch in (
        ZooArchitecture("resnet18", "ResNet", epochs=8, lr=2e-3),
        ZooArchitecture("mobilenet_v2", "MobileNetV2", epochs=10, lr=2e-3),
        ZooArchitecture("mobilenet_v3_small", "MobileNetV3", epochs=12, lr=2e-3),
        # no stochastic depth and less dropout: regularizers for long ImageNet runs slow a short one down
        ZooArchitecture("efficientnet_b0", "EfficientNet", epochs=8, lr=2e-3, definition={"stochastic_depth_prob": 0.0, "dropout": 0.1}),
        ZooArchitecture("shufflenet_v2_x1_0", "ShuffleNetV2", epochs=10, lr=2e-3),
        ZooArchitecture("vgg_small_bn", "VGG", epochs=8, lr=2e-3, definition={"widths": [32, "M", 64, "M", 128, 128, "M", 256, 256, "M"]}),
    )
}


def trained_zoo_names() -> list[str]:
    """The names :func:`trained_network` accepts, one architecture family each.

    Example:
        >>> trained_zoo_names()[:2]
        ['resnet18', 'mobilenet_v2']
    """
    return list(ARCHITECTURES)


def _architecture(name: str) -> ZooArchitecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown trained-zoo network {name!r}; expected one of {trained_zoo_names()}")
    return ARCHITECTURES[name]


def build_network(name: str, num_classes: int = 10) -> nn.Module:
    """The untrained (randomly initialized) network ``name`` of the trained zoo.

    Raises:
        ValueError: ``name`` is not in the zoo.

    Example:
        >>> type(build_network("resnet18")).__name__
        'ResNet'
    """
    import torchvision

    arch = _architecture(name)
    if name in _CUSTOM_BUILDERS:
        return _CUSTOM_BUILDERS[name](num_classes, **arch.definition)
    return getattr(torchvision.models, name)(num_classes=num_classes, **arch.definition)


def recipe_of(name: str) -> dict[str, Any]:
    """Everything that produces the trained network ``name``: the cache key is a hash of it.

    Example:
        >>> recipe_of("resnet18")["epochs"]
        8
    """
    import torchvision

    arch = _architecture(name)
    return {
        "network": f"trained_zoo/{name}",
        "torchvision": torchvision.__version__.split("+")[0],
        "epochs": arch.epochs,
        "lr": arch.lr,
        "definition": arch.definition,
        **TRAINED_ZOO_RECIPE,
    }


# ---------------------------------------------------------------------------------------------- data
def shapes_tensor(per_class: int, size: int, seed: int, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """All generated shape images as a uint8 N×3×size×size tensor, with their labels.

    Example:
        >>> images, labels = shapes_tensor(1, 16, 0, progress=False)
        >>> tuple(images.shape), images.dtype, labels[:3].tolist()
        ((24, 3, 16, 16), torch.uint8, [0, 1, 2])
    """
    images, labels = [], []
    for class_index, name in enumerate(tqdm(SHAPE_CLASSES, desc="Rendering shapes", disable=not progress)):
        for index in range(per_class):
            image = render_shape(name, sample_rng(seed, class_index, index), size=size)
            images.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
            labels.append(class_index)
    return torch.stack(images), torch.tensor(labels)


SPLITS = ("train", "calibration", "selection", "validation")


@functools.lru_cache(maxsize=2)
def _digits(size: int, fraction: float, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The digits as uint8 N×3×size×size (gray repeated in three channels), split per label."""
    from dlqnb.data.datastores import augmented_image_datastore, digits_data_dir, image_datastore, split_each_label

    train, validation = split_each_label(image_datastore(digits_data_dir(size)), fraction, seed=seed)
    splits = {}
    for split, store in (("train", train), ("validation", validation)):
        data = augmented_image_datastore((size, size), store, color_preprocessing="gray2rgb")
        images = torch.stack([data.read_image(i) for i in range(len(data))])
        splits[split] = ((images * 255).round().to(torch.uint8), data.label_tensor())
    return splits


def _first_per_class(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Indices of the first ``per_class`` samples of each label, in label order."""
    return torch.cat([torch.nonzero(labels == label).flatten()[:per_class] for label in labels.unique()])


def zoo_data(split: Split, per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic images of the trained zoo: float N×3×32×32 in [0, 1] and int64 labels.

    The trained zoo learns scikit-learn's handwritten digits (:func:`dlqnb.data.datastores.digits_data_dir`,
    10 classes, at 32×32, gray repeated in three channels), split per label (:data:`TRAINED_ZOO_RECIPE`'s
    ``train_fraction``) into ``"train"`` and ``"validation"``; ``"calibration"`` is the first
    ``calibration_per_class`` training images of each digit, so validation images are never seen before
    they are scored, and ``"selection"`` is the rest of the training images: labelled images that neither
    calibrate nor score, on which a choice between quantized networks can be made without selection bias.

    Args:
        split: ``"train"``, ``"calibration"``, ``"selection"`` or ``"validation"``.
        per_class: At most this many images per class (the first ones of the split); default: all of
            ``"train"``, ``"selection"`` and ``"validation"``, ``calibration_per_class`` for ``"calibration"``.

    Raises:
        ValueError: An unknown split or a ``per_class`` below 1.

    Example:
        >>> images, labels = zoo_data("calibration", per_class=1)
        >>> tuple(images.shape), float(images.max()) <= 1.0, labels.tolist()[:3]
        ((10, 3, 32, 32), True, [0, 1, 2])
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1):
        raise ValueError(f"per_class must be a positive whole number of images per class, got {per_class!r}")
    recipe = TRAINED_ZOO_RECIPE
    images, labels = _digits(recipe["input_size"], recipe["train_fraction"], recipe["seed"])["validation" if split == "validation" else "train"]
    if split == "calibration":
        per_class = min(per_class or recipe["calibration_per_class"], recipe["calibration_per_class"])
    if split == "selection":
        rest = torch.ones(len(labels), dtype=torch.bool)
        rest[_first_per_class(labels, recipe["calibration_per_class"])] = False
        images, labels = images[rest], labels[rest]
    if per_class is not None:
        index = _first_per_class(labels, per_class)
        images, labels = images[index], labels[index]
    return images.float() / 255, labels.clone()


# ---------------------------------------------------------------------------------------------- training loop
def warmup_cosine(step: int, total: int, base: float) -> float:
    """The learn rate at ``step`` of ``total``: linear warm-up over the first 5 %, then cosine decay to 0.

    Example:
        >>> warmup_cosine(0, 100, 1.0), warmup_cosine(100, 100, 1.0)
        (0.2, 0.0)
    """
    warmup = max(1, total // 20)
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _resized(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def train_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Callable[[int, int, float], float],
    images: torch.Tensor,
    labels: torch.Tensor,
    size: int,
    batch: int,
    generator: torch.Generator,
    step0: int,
    total_steps: int,
    base_lr: float,
    label_smoothing: float = 0.1,
    flips: bool = True,
) -> int:
    """One epoch over uint8 ``images`` (shuffled by ``generator``, random horizontal flips unless
    ``flips`` is False, resized to ``size``), the learn rate set by ``schedule`` at every step; returns
    the next step's index."""
    net.train()
    order = torch.randperm(len(labels), generator=generator)
    step = step0
    for start in range(0, len(order) - batch + 1, batch):
        index = order[start : start + batch]
        x = _resized(images[index].float() / 255, size)
        if flips:
            flip = torch.rand(len(index), generator=generator) < 0.5
            x[flip] = x[flip].flip(-1)
        for group in optimizer.param_groups:
            group["lr"] = schedule(step, total_steps, base_lr)
        loss = F.cross_entropy(net(x), labels[index], label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
    return step


def reestimate_batch_norm(net: nn.Module, images: torch.Tensor, size: int, batch: int, generator: torch.Generator, count: int) -> None:
    """Replace every BatchNorm's running statistics by their average over ``count`` shuffled training
    images, computed with the final weights.

    A short training leaves running statistics that lag the weights, and networks built for long
    ImageNet runs (MobileNetV3's BatchNorm momentum is 0.01) barely move them in a few hundred steps,
    so the network in eval mode would score near chance however well it trained.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    net.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
        m.train()
    order = torch.randperm(len(images), generator=generator)[:count]
    with torch.no_grad():
        for start in range(0, len(order) - batch + 1, batch):
            net(_resized(images[order[start : start + batch]].float() / 255, size))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.eval()


def held_out_accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, size: int) -> float:
    """Top-1 accuracy of ``net`` (in eval mode) on uint8 ``images`` resized to ``size``."""
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), 128):
            x = _resized(images[start : start + 128].float() / 255, size)
            correct += int((net(x).argmax(1) == labels[start : start + 128]).sum())
    return correct / len(labels)


# ---------------------------------------------------------------------------------------------- networks
def _train(name: str, progress: bool) -> nn.Module:
    arch, recipe = _architecture(name), TRAINED_ZOO_RECIPE
    size, batch = recipe["input_size"], recipe["batch"]
    images, labels = _digits(size, recipe["train_fraction"], recipe["seed"])["train"]
    with reproducible(recipe["seed"], recipe["threads"]):
        net = build_network(name, num_classes=int(labels.max()) + 1)
        optimizer = torch.optim.AdamW(net.parameters(), lr=arch.lr, weight_decay=recipe["weight_decay"])
        generator = torch.Generator().manual_seed(recipe["seed"])
        total, step = arch.epochs * (len(labels) // batch), 0
        for _ in tqdm(range(arch.epochs), desc=f"Training {name}", disable=not progress):
            step = train_epoch(
                net, optimizer, warmup_cosine, images, labels, size, batch, generator, step, total, arch.lr, recipe["label_smoothing"], recipe["flips"]
            )
        reestimate_batch_norm(net, images, size, batch, generator, recipe["batch_norm_images"])
    return net.eval()


def _encode(net: nn.Module) -> bytes:
    metadata = network_metadata(net)
    payload = {"name": net.zoo_name, "class_names": metadata["class_names"], "input_size": metadata["input_size"], "state_dict": net.state_dict()}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def _decoder(name: str) -> Callable[[bytes, str], nn.Module]:
    def decode(data: bytes, source: str) -> nn.Module:
        try:
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            net = build_network(payload["name"], len(payload["class_names"]))
            net.load_state_dict(payload["state_dict"])
        except Exception as error:  # any unreadable entry is retrained by the cache, which needs a ValueError
            raise ValueError(f"{source!r} is not a trained-zoo {name} network: {error}") from error
        if payload["name"] != name:
            raise ValueError(f"{source!r} holds trained-zoo network {payload['name']!r}, not {name!r}")
        net.zoo_name = name
        return set_metadata(net.eval(), payload["class_names"], payload["input_size"])

    return decode


def trained_network(name: str, progress: bool = True) -> nn.Module:
    """The trained-zoo network ``name``, trained once and cached (a few minutes on 2 cores the first time).

    Args:
        name: One of :func:`trained_zoo_names`.
        progress: Show a progress bar while it trains.

    Returns:
        The network in eval mode; it takes float N×3×32×32 images in [0, 1] and returns logits over
        the ten digits (``class_names`` and ``input_size`` recorded).

    Raises:
        ValueError: ``name`` is not in the zoo.

    Example:
        >>> net = trained_network("mobilenet_v3_small")  # doctest: +SKIP
        >>> net.input_size  # doctest: +SKIP
        (32, 32)
    """
    _architecture(name)

    def train() -> nn.Module:
        net = _train(name, progress)
        net.zoo_name = name
        size = TRAINED_ZOO_RECIPE["input_size"]
        return set_metadata(net, DIGIT_CLASSES, (size, size))

    return _cached_network(f"trained_zoo-{name}", recipe_of(name), train, _encode, _decoder(name))
