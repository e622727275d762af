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
from torch import nn

from dlqnb.core.cache import atomic_write_bytes

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DepthConcatenation",
    "DigitsNet",
    "ImageInput",
    "SqueezeNet",
    "digits_net",
    "find_layers_to_replace",
    "input_layer",
    "load_network",
    "network_bytes",
    "network_from_bytes",
    "network_metadata",
    "replace_classifier",
    "save_network",
    "set_metadata",
    "squeezenet",
    "torchvision_state_dict",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NETWORK_FILE_FORMAT = "dlqnb-network"
# 2: SqueezeNet layers under MATLAB's names; 3: the digits network's input layer named ``input`` as in
# MATLAB (older files are renamed on load)
NETWORK_FILE_VERSION = 3
_SHIPPED_WEIGHTS = os.path.join(os.path.dirname(__file__), "weights", "squeezenet1_1_shapes.pt")


class ImageInput(nn.Module):
    """Normalizes [0, 1] images: ``(x - mean) / std`` per channel (MATLAB's image input layer).

    Args:
        mean: Per-channel mean (one value per channel).
        std: Per-channel standard deviation.
    """

    dlqnb_leaf = True  # one network layer ("data", "input") in dlqnb's graphs, as in MATLAB
    dlqnb_op = "input"  # the input layer in network summaries

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


class DepthConcatenation(nn.Module):
    """Concatenates its inputs along the channels (MATLAB's depth concatenation layer).

    A module rather than a ``torch.cat`` call so that the layer carries a name (``fire2-concat``).
    """

    dlqnb_leaf = True  # one network layer in dlqnb's graphs
    dlqnb_op = "concat"  # what dlqnb.core.ops treats it as

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat(inputs, 1)


# SqueezeNet v1.1's fire modules: (number, squeeze filters, expand filters of each branch).
_FIRES = ((2, 16, 64), (3, 16, 64), (4, 32, 128), (5, 32, 128), (6, 48, 192), (7, 48, 192), (8, 64, 256), (9, 64, 256))
_POOL_AFTER_FIRE = {3: "pool3", 5: "pool5"}


class SqueezeNet(nn.Module):
    """SqueezeNet v1.1 with the layer names of MATLAB's ``squeezenet``.

    The layers, in order: ``data`` (:class:`ImageInput`), ``conv1``, ``relu_conv1``, ``pool1``,
    for each fire module N = 2..9 ``fireN-squeeze1x1``, ``fireN-relu_squeeze1x1``,
    ``fireN-expand1x1``, ``fireN-relu_expand1x1``, ``fireN-expand3x3``, ``fireN-relu_expand3x3``,
    ``fireN-concat`` (with ``pool3`` after fire 3 and ``pool5`` after fire 5), then ``drop9``,
    ``conv10`` (``new_conv`` after transfer learning), ``relu_conv10``, ``pool10``. The network
    returns the scores before softmax, so MATLAB's ``prob`` and classification layers have no
    counterpart; a ``flatten`` turns ``pool10``'s N×C×1×1 output into N×C. Same arithmetic as
    torchvision's squeezenet1_1 (:func:`torchvision_state_dict` maps the weights).

    Example:
        >>> net = SqueezeNet(num_classes=5)
        >>> [name for name, _ in net.named_children()][:6]
        ['data', 'conv1', 'relu_conv1', 'pool1', 'fire2-squeeze1x1', 'fire2-relu_squeeze1x1']
    """

    architecture = "squeezenet1_1"

    def __init__(
        self,
        num_classes: int = 1000,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        classifier_name: str = "conv10",
    ) -> None:
        super().__init__()
        self.data = ImageInput(mean, std)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2)
        self.relu_conv1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        channels = 64
        for number, squeeze, expand in _FIRES:
            self.add_module(f"fire{number}-squeeze1x1", nn.Conv2d(channels, squeeze, kernel_size=1))
            self.add_module(f"fire{number}-relu_squeeze1x1", nn.ReLU())
            self.add_module(f"fire{number}-expand1x1", nn.Conv2d(squeeze, expand, kernel_size=1))
            self.add_module(f"fire{number}-relu_expand1x1", nn.ReLU())
            self.add_module(f"fire{number}-expand3x3", nn.Conv2d(squeeze, expand, kernel_size=3, padding=1))
            self.add_module(f"fire{number}-relu_expand3x3", nn.ReLU())
            self.add_module(f"fire{number}-concat", DepthConcatenation())
            if number in _POOL_AFTER_FIRE:
                self.add_module(_POOL_AFTER_FIRE[number], nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
            channels = 2 * expand
        self.drop9 = nn.Dropout(p=0.5)
        self.classifier_name = classifier_name
        self.add_module(classifier_name, nn.Conv2d(channels, num_classes, kernel_size=1))
        self.relu_conv10 = nn.ReLU()
        self.pool10 = nn.AdaptiveAvgPool2d((1, 1))
        self._init_like_torchvision()

    def _init_like_torchvision(self) -> None:
        for name, module in self.named_children():
            if isinstance(module, nn.Conv2d):
                if name == self.classifier_name:
                    nn.init.normal_(module.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(module.weight)
                nn.init.constant_(module.bias, 0)

    @property
    def classifier(self) -> nn.Conv2d:
        """The classifier convolution (``conv10``, or the layer that replaced it)."""
        return self.get_submodule(self.classifier_name)

    @property
    def num_classes(self) -> int:
        """Number of outputs of the classifier convolution."""
        return self.classifier.out_channels

    def replace_layer(self, name: str, new_name: str, layer: nn.Module) -> None:
        """Put ``layer`` where ``name`` was, under ``new_name`` (MATLAB's ``replaceLayer``).

        Only the classifier can be replaced: the rest of the network is fixed by its architecture.

        Raises:
            ValueError: If ``name`` is not the classifier, or ``new_name`` is taken or not a name.
        """
        if name != self.classifier_name:
            raise ValueError(f"only the classifier layer {self.classifier_name!r} of SqueezeNet can be replaced, not {name!r}")
        if new_name != name and (new_name in self._modules or not new_name or "." in new_name):
            raise ValueError(f"cannot name the new layer {new_name!r}: the name is empty, has a '.' or is taken")
        self._modules = type(self._modules)((new_name if key == name else key, layer if key == name else module) for key, module in self._modules.items())
        self.classifier_name = new_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu_conv1(self.conv1(self.data(x))))
        for number, _, _ in _FIRES:
            x = self._fire(number, x)
            if number in _POOL_AFTER_FIRE:
                x = self.get_submodule(_POOL_AFTER_FIRE[number])(x)
        x = self.pool10(self.relu_conv10(self.classifier(self.drop9(x))))
        return torch.flatten(x, 1)

    def _fire(self, number: int, x: torch.Tensor) -> torch.Tensor:
        def layer(part: str) -> nn.Module:
            return self.get_submodule(f"fire{number}-{part}")

        squeezed = layer("relu_squeeze1x1")(layer("squeeze1x1")(x))
        left = layer("relu_expand1x1")(layer("expand1x1")(squeezed))
        right = layer("relu_expand3x3")(layer("expand3x3")(squeezed))
        return layer("concat")(left, right)


def torchvision_state_dict(state: dict[str, torch.Tensor], classifier_name: str = "conv10") -> dict[str, torch.Tensor]:
    """torchvision squeezenet1_1 weights (``features.0.weight``, ...) under MATLAB's layer names.

    Keys already named as :class:`SqueezeNet` names them pass unchanged (``data.mean``, say), so the
    function also reads network files saved before dlqnb named the layers as MATLAB does.

    Example:
        >>> import torchvision
        >>> keys = list(torchvision_state_dict(torchvision.models.squeezenet1_1().state_dict()))
        >>> keys[:3], keys[-1]
        (['conv1.weight', 'conv1.bias', 'fire2-squeeze1x1.weight'], 'conv10.bias')
    """
    renames = {"features.0": "conv1", "classifier.1": classifier_name}
    fire_index = (3, 4, 6, 7, 9, 10, 11, 12)
    for (number, _, _), index in zip(_FIRES, fire_index):
        for part, matlab in (("squeeze", "squeeze1x1"), ("expand1x1", "expand1x1"), ("expand3x3", "expand3x3")):
            renames[f"features.{index}.{part}"] = f"fire{number}-{matlab}"
    result = {}
    for key, value in state.items():
        module, _, parameter = key.rpartition(".")
        result[f"{renames.get(module, module)}.{parameter}"] = value
    return result


class DigitsNet(nn.Module):
    """The digits network of *updateScore*: three conv-BN-ReLU blocks of 20 filters and a fc.

    Input 28×28×1 with 'zerocenter' normalization (the input layer ``input``, as MATLAB names it);
    conv1 is 5×5 without padding, conv2 and conv3 3×3 with padding 1. The network returns the scores
    before softmax, so MATLAB's ``softmax`` and classification layers have no counterpart.

    Example:
        >>> [name for name, _ in DigitsNet().named_children()][:4]
        ['input', 'conv1', 'bn1', 'relu1']
    """

    architecture = "digits"

    def __init__(self, num_classes: int = 10, mean: float = 0.0, filters: int = 20) -> None:
        super().__init__()
        self.input = ImageInput((mean,), (1.0,))
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
        x = self.relu1(self.bn1(self.conv1(self.input(x))))
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


def input_layer(net: nn.Module) -> tuple[str, ImageInput] | None:
    """The name and module of a network's input layer (an :class:`ImageInput` child), or None.

    Example:
        >>> input_layer(DigitsNet())[0], input_layer(SqueezeNet(num_classes=2))[0]
        ('input', 'data')
    """
    return next(((name, child) for name, child in net.named_children() if isinstance(child, ImageInput)), None)


def network_metadata(net: nn.Module) -> dict[str, Any]:
    """What a network expects and gives: class names, input size, channels, scaling, mean/std.

    Values a network does not record are None (a torchvision network made elsewhere, say).
    """
    found = input_layer(net)
    input_name, image_input = found if found is not None else (None, None)
    return {
        "class_names": list(getattr(net, "class_names", []) or []) or None,
        "input_size": list(getattr(net, "input_size", ()) or ()) or None,
        "channels": image_input.channels if image_input is not None else None,
        "pixel_range": [0.0, 1.0] if image_input is not None else None,
        "mean": image_input.mean.flatten().tolist() if image_input is not None else None,
        "std": image_input.std.flatten().tolist() if image_input is not None else None,
        "normalization_layer": input_name,
    }


def squeezenet(num_classes: int | None = None, weights: str | None = "shapes") -> SqueezeNet:
    """MATLAB's ``squeezenet``: SqueezeNet v1.1 with MATLAB's layer names (see :class:`SqueezeNet`).

    Args:
        num_classes: Outputs of the classifier (``conv10``); None: as many as the weights were
            trained for (24 generated shapes, 1000 ImageNet classes), with their class names.
        weights: ``"shapes"`` (the default, offline): the checkpoint dlqnb ships, pretrained by
            :mod:`dlqnb.bench.pretrain` on its generated shapes (features only when ``num_classes`` differs
            from its classes); ``"imagenet"``: torchvision's ImageNet weights, from the torch hub
            cache or downloaded (features only unless ``num_classes == 1000``); None: random.

    Raises:
        RuntimeError: If ImageNet weights are asked for and can be neither found nor downloaded.
    """
    if weights == "imagenet":
        import torchvision  # only here: importing it costs about a second that ``import dlqnb`` need not pay

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
        _load_matching(net, torchvision_state_dict(state), num_classes == 1000)
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


def _load_matching(net: SqueezeNet, state: dict[str, torch.Tensor], include_classifier: bool) -> None:
    own = net.state_dict()
    classifier = f"{net.classifier_name}."
    chosen = {k: v for k, v in state.items() if k in own and (include_classifier or not k.startswith(classifier))}
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
        The module path of the learnable layer (``"conv10"`` for SqueezeNet) and the module.

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
    name: str | None = None,
) -> nn.Module:
    """Swap the last learnable layer for a new one with ``num_classes`` outputs (in place).

    As in *Train Deep Learning Network to Classify New Images*, the new layer's weights and bias
    learn ``learn_rate_factor`` times faster (:func:`dlqnb.training.train.train_network` honours
    ``weight_learn_rate_factor`` and ``bias_learn_rate_factor`` attributes of a module).

    Args:
        net: The network (changed in place).
        num_classes: Outputs of the new layer.
        class_names: The new classes' names, recorded on the network.
        learn_rate_factor: Learning-rate multiplier of the new layer's weights and bias.
        seed: Seed of the new layer's Glorot initialization.
        name: Name of the new layer (the example calls it ``new_conv``); None keeps the old
            layer's name. Renaming needs a network with a ``replace_layer`` method (dlqnb's SqueezeNet).

    Returns:
        The network, with its class names recorded.

    Raises:
        ValueError: If the network cannot rename the layer, or the class names do not fit.

    Example:
        >>> net = replace_classifier(squeezenet(weights=None), 5, list("abcde"), name="new_conv")
        >>> net.classifier_name, net.num_classes
        ('new_conv', 5)
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
    parent_path, _, old_name = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    if name is None or name == old_name:
        setattr(parent, old_name, new)
    elif hasattr(parent, "replace_layer"):
        parent.replace_layer(old_name, name, new)
    else:
        raise ValueError(
            f"cannot name the new layer {name!r}: {type(net).__name__} reaches layer {path!r} by that name in its "
            "forward; pass name=None to keep it"
        )
    if class_names is not None:
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        net.class_names = [str(c) for c in class_names]
    return net


# --------------------------------------------------------------------------- network files
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    SqueezeNet.architecture: lambda num_classes, mean, std, classifier: SqueezeNet(num_classes, mean, std, classifier or "conv10"),
    DigitsNet.architecture: lambda num_classes, mean, std, classifier: DigitsNet(num_classes, mean[0]),
}


def network_bytes(net: nn.Module) -> bytes:
    """A dlqnb network as the bytes of a network file (what :func:`save_network` writes).

    Raises:
        ValueError: If the network is not one dlqnb can rebuild (no ``architecture``).

    Example:
        >>> data = network_bytes(digits_net())
        >>> type(network_from_bytes(data)).__name__
        'DigitsNet'
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
        "classifier_name": getattr(net, "classifier_name", None),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_network(net: nn.Module, path: str | os.PathLike[str]) -> None:
    """Save a dlqnb network (architecture name, metadata, weights) atomically.

    Raises:
        ValueError: If the network is not one dlqnb can rebuild (no ``architecture``).
    """
    atomic_write_bytes(path, network_bytes(net))


def load_network(path: str | os.PathLike[str]) -> nn.Module:
    """Load a network file written by :func:`save_network` (``weights_only=True``: nothing unpickled).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is not a dlqnb network file, is of a newer version, or is damaged.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"network file {os.fspath(path)!r} does not exist")
    with open(path, "rb") as stream:
        data = stream.read()
    return network_from_bytes(data, os.fspath(path))


def network_from_bytes(data: bytes, source: str = "network bytes") -> nn.Module:
    """The network in the bytes of a network file (``weights_only=True``: nothing unpickled).

    Args:
        data: What :func:`network_bytes` gave, or a network file's content.
        source: Where the bytes came from, for error messages (a file name).

    Raises:
        ValueError: If the bytes are not a dlqnb network file, are of a newer version, or are
            damaged; the message names ``source``.

    Example:
        >>> network_from_bytes(network_bytes(digits_net(num_classes=3))).num_classes
        3
    """
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{source!r} is not a readable dlqnb network file: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != NETWORK_FILE_FORMAT:
        raise ValueError(f"{source!r} is not a dlqnb network file (no '{NETWORK_FILE_FORMAT}' header)")
    if payload.get("version", 0) > NETWORK_FILE_VERSION:
        raise ValueError(
            f"{source!r} has network file version {payload['version']}; this dlqnb reads up to "
            f"{NETWORK_FILE_VERSION}: upgrade dlqnb"
        )
    architecture = payload.get("architecture")
    builder = _BUILDERS.get(architecture) if isinstance(architecture, str) else None
    if builder is None:
        raise ValueError(f"{source!r}: unknown architecture {architecture!r}")
    try:
        net = builder(payload["num_classes"], payload["mean"], payload["std"], payload.get("classifier_name"))
        state = payload["state_dict"]
        if isinstance(net, SqueezeNet):
            state = torchvision_state_dict(state, net.classifier_name)
        elif isinstance(net, DigitsNet) and payload.get("version", 0) < 3:
            state = {("input." + key[len("data."):] if key.startswith("data.") else key): value for key, value in state.items()}
        net.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as error:
        raise ValueError(f"{source!r}: weights do not fit the {architecture} architecture: {error}") from error
    set_metadata(net, payload.get("class_names"), payload.get("input_size"))
    return net.eval()
