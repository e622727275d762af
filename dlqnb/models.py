"""Networks dlqnb builds, what they carry, and how they are saved and loaded safely.

Every network here starts with an :class:`ImageInput` layer named ``data`` (MATLAB's image input
layer): it takes float NCHW images scaled to [0, 1] and applies the mean/std normalization itself,
so data stores, calibration, validation and deployment all feed the same [0, 1] images. The network
also carries its class names and input size (:func:`network_metadata`); saved network files keep
them. Networks return logits (softmax is for display).

Network files are a dict of plain values and tensors written with ``torch.save`` and read with
``torch.load(weights_only=True)``: the architecture is rebuilt from its name, never unpickled.

Example:
    >>> net = squeezenet(num_classes=5)
    >>> _ = set_metadata(net, class_names=["a", "b", "c", "d", "e"], input_size=(227, 227))
    >>> network_metadata(net)["class_names"][:2]
    ['a', 'b']
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torchvision
from torch import nn

from dlqnb.cache import atomic_write_bytes

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DigitsNet",
    "ImageInput",
    "SqueezeNet",
    "digits_net",
    "find_layers_to_replace",
    "load_network",
    "network_metadata",
    "replace_classifier",
    "save_network",
    "set_metadata",
    "squeezenet",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NETWORK_FILE_FORMAT = "dlqnb-network"
NETWORK_FILE_VERSION = 1
_SHIPPED_WEIGHTS = os.path.join(os.path.dirname(__file__), "weights", "squeezenet1_1_shapes.pt")


class ImageInput(nn.Module):
    """Normalizes [0, 1] images: ``(x - mean) / std`` per channel (MATLAB's image input layer).

    Args:
        mean: Per-channel mean (one value per channel).
        std: Per-channel standard deviation.
    """

    dlqnb_leaf = True  # one network layer ("data") in dlqnb's graphs, as in MATLAB

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def channels(self) -> int:
        """Number of image channels."""
        return self.mean.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SqueezeNet(nn.Module):
    """torchvision's squeezenet1_1 (MATLAB's ``squeezenet``) behind an :class:`ImageInput` layer.

    Layer names follow torchvision (``features.0`` is MATLAB's ``conv1``, ``classifier.1`` its
    ``conv10``); fx names them ``features_0``, ``classifier_1``.
    """

    architecture = "squeezenet1_1"

    def __init__(self, num_classes: int = 1000, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        base = torchvision.models.squeezenet1_1(num_classes=num_classes)
        self.data = ImageInput(mean, std)
        self.features = base.features
        self.classifier = base.classifier

    @property
    def num_classes(self) -> int:
        """Number of outputs of the classifier convolution."""
        return self.classifier[1].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(self.data(x))), 1)


class DigitsNet(nn.Module):
    """The 12-layer digits network of *updateScore*: three conv-BN-ReLU blocks of 20 filters and a fc.

    Input 28×28×1 with 'zerocenter' normalization; conv1 is 5×5 without padding, conv2 and conv3
    3×3 with padding 1.
    """

    architecture = "digits"

    def __init__(self, num_classes: int = 10, mean: float = 0.0, filters: int = 20) -> None:
        super().__init__()
        self.data = ImageInput((mean,), (1.0,))
        self.conv1 = nn.Conv2d(1, filters, 5)
        self.bn1 = nn.BatchNorm2d(filters)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(filters, filters, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(filters)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(filters, filters, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(filters)
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(filters * 24 * 24, num_classes)

    @property
    def num_classes(self) -> int:
        """Number of outputs of the fully connected layer."""
        return self.fc.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(self.data(x))))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(x, 1))


def set_metadata(net: nn.Module, class_names: Sequence[str] | None = None, input_size: tuple[int, int] | None = None) -> nn.Module:
    """Record the class names and input size (H, W) a network expects; returns the network."""
    if class_names is not None:
        net.class_names = [str(name) for name in class_names]
    if input_size is not None:
        net.input_size = (int(input_size[0]), int(input_size[1]))
    return net


def network_metadata(net: nn.Module) -> dict[str, Any]:
    """What a network expects and gives: class names, input size, channels, scaling, mean/std.

    Values a network does not record are None (a torchvision network made elsewhere, say).
    """
    data = getattr(net, "data", None)
    image_input = data if isinstance(data, ImageInput) else None
    return {
        "class_names": list(getattr(net, "class_names", []) or []) or None,
        "input_size": list(getattr(net, "input_size", ()) or ()) or None,
        "channels": image_input.channels if image_input is not None else None,
        "pixel_range": [0.0, 1.0] if image_input is not None else None,
        "mean": image_input.mean.flatten().tolist() if image_input is not None else None,
        "std": image_input.std.flatten().tolist() if image_input is not None else None,
        "normalization_layer": "data" if image_input is not None else None,
    }


def squeezenet(num_classes: int | None = None, weights: str | None = "shapes") -> SqueezeNet:
    """MATLAB's ``squeezenet``: torchvision's squeezenet1_1 behind a normalizing ``data`` layer.

    Args:
        num_classes: Outputs of the classifier (``conv10``); None: as many as the weights were
            trained for (24 generated shapes, 1000 ImageNet classes), with their class names.
        weights: ``"shapes"`` (the default, offline): the checkpoint dlqnb ships, pretrained by
            :mod:`dlqnb.pretrain` on its generated shapes (features only when ``num_classes`` differs
            from its classes); ``"imagenet"``: torchvision's ImageNet weights, from the torch hub
            cache or downloaded (features only unless ``num_classes == 1000``); None: random.

    Raises:
        RuntimeError: If ImageNet weights are asked for and can be neither found nor downloaded.
    """
    if weights == "imagenet":
        num_classes = num_classes or 1000
        net = SqueezeNet(num_classes, IMAGENET_MEAN, IMAGENET_STD)
        try:
            state = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as error:
            raise RuntimeError(
                "torchvision's ImageNet weights for squeezenet1_1 are not in the torch hub cache "
                f"({torch.hub.get_dir()}) and could not be downloaded ({error}). Use weights='shapes' "
                "(dlqnb's offline checkpoint) or copy squeezenet1_1-b8a52dc0.pth into that folder."
            ) from error
        _load_matching(net, {f"{k}": v for k, v in state.items()}, num_classes == 1000)
        if num_classes == 1000:
            net.class_names = list(torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["categories"])
        return net
    if weights == "shapes":
        shipped = load_network(_SHIPPED_WEIGHTS)
        num_classes = num_classes or shipped.num_classes
        net = SqueezeNet(num_classes, shipped.data.mean.flatten().tolist(), shipped.data.std.flatten().tolist())
        _load_matching(net, shipped.state_dict(), num_classes == shipped.num_classes)
        if num_classes == shipped.num_classes:
            set_metadata(net, getattr(shipped, "class_names", None), getattr(shipped, "input_size", None))
        return net
    if weights is None:
        return SqueezeNet(num_classes or 1000)
    raise ValueError(f"weights must be 'shapes', 'imagenet' or None, got {weights!r}")


def _load_matching(net: nn.Module, state: dict[str, torch.Tensor], include_classifier: bool) -> None:
    own = net.state_dict()
    chosen = {k: v for k, v in state.items() if k in own and (include_classifier or not k.startswith("classifier."))}
    net.load_state_dict(chosen, strict=False)


def digits_net(num_classes: int = 10, mean: float = 0.0) -> DigitsNet:
    """The digits network of the *updateScore* example (random weights); see :class:`DigitsNet`."""
    return DigitsNet(num_classes, mean)


# --------------------------------------------------------------------------- surgery (*INT8 Code Generation for Deep Learning Networks*)
def find_layers_to_replace(net: nn.Module) -> tuple[str, nn.Module]:
    """The last learnable layer before the network's output (MATLAB's ``findLayersToReplace``).

    Walks back from the output through layers with a single input until it reaches a convolution
    or fully connected layer. PyTorch networks end in logits, so MATLAB's classification layer
    is the network output itself.

    Returns:
        The module path of the learnable layer (``"classifier.1"`` for SqueezeNet) and the module.

    Raises:
        TypeError: ``Argument must be a torch.nn.Module.``
        ValueError: ``Layer graph must have a single learnable layer preceding the classification layer.``
    """
    if not isinstance(net, nn.Module):
        raise TypeError("Argument must be a torch.nn.Module.")
    gm = fx.symbolic_trace(net)
    output = next(node for node in gm.graph.nodes if node.op == "output")
    node = output.args[0]
    while True:
        if not isinstance(node, fx.Node):
            raise ValueError("Layer graph must have a single learnable layer preceding the classification layer.")
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                return str(node.target), net.get_submodule(str(node.target))
        inputs = [arg for arg in node.all_input_nodes if arg.op != "get_attr"]
        if len(inputs) != 1:
            raise ValueError("Layer graph must have a single learnable layer preceding the classification layer.")
        node = inputs[0]


def replace_classifier(
    net: nn.Module,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    learn_rate_factor: float = 10.0,
    seed: int = 0,
) -> nn.Module:
    """Swap the last learnable layer for a new one with ``num_classes`` outputs (in place).

    As in the seed, the new layer's weights and bias learn ``learn_rate_factor`` times faster
    (:func:`dlqnb.training.train_network` honours ``weight_learn_rate_factor`` and
    ``bias_learn_rate_factor`` attributes of a module).

    Returns:
        The network, with its class names recorded.
    """
    path, old = find_layers_to_replace(net)
    generator = torch.Generator().manual_seed(seed)
    if isinstance(old, nn.Conv2d):
        new: nn.Module = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    else:
        new = nn.Linear(old.in_features, num_classes)
    with torch.no_grad():  # MATLAB's default initializer: Glorot
        fan_in = new.weight[0].numel()
        fan_out = num_classes * (new.weight[0, 0].numel() if new.weight.dim() > 2 else 1)
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        new.weight.uniform_(-bound, bound, generator=generator)
        new.bias.zero_()
    new.weight_learn_rate_factor = learn_rate_factor
    new.bias_learn_rate_factor = learn_rate_factor
    parent_path, _, name = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    setattr(parent, name, new)
    if class_names is not None:
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        net.class_names = [str(c) for c in class_names]
    return net


# --------------------------------------------------------------------------- network files
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    SqueezeNet.architecture: lambda num_classes, mean, std: SqueezeNet(num_classes, mean, std),
    DigitsNet.architecture: lambda num_classes, mean, std: DigitsNet(num_classes, mean[0]),
}


def save_network(net: nn.Module, path: str | os.PathLike[str]) -> None:
    """Save a dlqnb network (architecture name, metadata, weights) atomically.

    Raises:
        ValueError: If the network is not one dlqnb can rebuild (no ``architecture``).
    """
    architecture = getattr(net, "architecture", None)
    if architecture not in _BUILDERS:
        raise ValueError(
            f"cannot save a {type(net).__name__}: dlqnb saves the networks it builds ({sorted(_BUILDERS)}); "
            "save others with torch.save(net.state_dict(), path)"
        )
    metadata = network_metadata(net)
    payload = {
        "format": NETWORK_FILE_FORMAT,
        "version": NETWORK_FILE_VERSION,
        "architecture": architecture,
        "num_classes": int(net.num_classes),
        "class_names": metadata["class_names"],
        "input_size": metadata["input_size"],
        "mean": metadata["mean"],
        "std": metadata["std"],
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_network(path: str | os.PathLike[str]) -> nn.Module:
    """Load a network file written by :func:`save_network` (``weights_only=True``: nothing unpickled).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not a dlqnb network file, is of a newer version, or is damaged.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"network file {os.fspath(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{os.fspath(path)!r} is not a readable dlqnb network file: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != NETWORK_FILE_FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a dlqnb network file (no '{NETWORK_FILE_FORMAT}' header)")
    if payload.get("version", 0) > NETWORK_FILE_VERSION:
        raise ValueError(
            f"{os.fspath(path)!r} has network file version {payload['version']}; this dlqnb reads up to "
            f"{NETWORK_FILE_VERSION}: upgrade dlqnb"
        )
    builder = _BUILDERS.get(payload["architecture"])
    if builder is None:
        raise ValueError(f"{os.fspath(path)!r}: unknown architecture {payload['architecture']!r}")
    net = builder(payload["num_classes"], payload["mean"], payload["std"])
    try:
        net.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"{os.fspath(path)!r}: weights do not fit the {payload['architecture']} architecture: {error}") from error
    set_metadata(net, payload.get("class_names"), payload.get("input_size"))
    return net.eval()
