"""The optimized network: a torch.fx graph with BatchNorm folded and activations fused.

This is the graph that calibration, emulation and export all read, the counterpart of the
"optimized network" of the MATLAB pages. :func:`optimize_network` traces a copy of the network with
torch.fx and, for every convolution or fully connected layer:

* folds a following ``BatchNorm`` into its weights and bias (with the running statistics);
* fuses a following ``ReLU``, ``ReLU6`` (or ``hardtanh(0, 6)``) or ``LeakyReLU`` (module, function
  or method form) into one *optimized layer*;
* gives it a bias (zeros where the layer had none), since every deployed int8 layer has an int32 bias.

Naming (``docs/design.md``): a network layer is an fx node, named after its module path
(``features.0`` → ``features_0``; a module called twice gives ``relu`` and ``relu_1``); an
optimized layer joins its members' names with ``_`` (``conv1`` + ``relu_conv1`` →
``conv1_relu_conv1``), and its network layer name is its last member.

Folding only happens where it cannot change the result: the conv's output feeds the BatchNorm alone,
and the BatchNorm's (or conv's) output feeds the activation alone.

A network whose parameters or buffers are on the ``meta`` device (shapes without values, as
``torch.device("meta")`` or ``init_empty_weights`` make them) is refused with an error naming the first
such tensor: calibrating it would read uninitialized memory.

Example:
    >>> import torch, torchvision
    >>> net = torchvision.models.resnet18(num_classes=5).eval()
    >>> opt = optimize_network(net)
    >>> opt.layers["conv1_bn1_relu"].members
    ('conv1', 'bn1', 'relu')
    >>> x = torch.randn(2, 3, 64, 64)
    >>> bool(torch.allclose(opt.module(x), net(x), atol=1e-5))
    True
"""

from __future__ import annotations

import builtins
import copy
import keyword
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from dlqnb.core.capture import capture_network
from dlqnb.core.ops import QUANTIZABLE_TYPES, activation_kind, called_module, fusable_activation, is_batchnorm, layer_kind, op_traits, tensor_args, unsupported_reason
from dlqnb.errors import NetworkGraphError

__all__ = [
    "FusedLayer",
    "NetworkGraphError",
    "OptimizedLayer",
    "OptimizedNetwork",
    "NetworkSummary",
    "check_materialized",
    "feeds_input_layers_only",
    "is_input_layer",
    "layer_name",
    "network_summary",
    "optimize_network",
    "trace_network",
]

def layer_name(node: fx.Node) -> str:
    """The name users see for a network layer: its module's own name, hyphens and capitals kept.

    fx names a node after a Python identifier (``fire2-squeeze1x1`` becomes ``fire2_squeeze1x1``,
    ``features.3`` becomes ``features_3``); the tables show the module's name with ``.`` written
    ``_`` and nothing else changed, plus fx's ``_1`` suffix when a module is called again. Nodes of
    functions keep fx's name (``cat``, ``add_1``).

    Example:
        >>> import torch.fx as fx
        >>> from torch import nn
        >>> net = nn.Sequential()
        >>> net.add_module("fire2-squeeze1x1", nn.Conv2d(3, 4, 1))
        >>> [layer_name(n) for n in fx.symbolic_trace(net).graph.nodes if n.op == "call_module"]
        ['fire2-squeeze1x1']
        >>> class Digits(nn.Module):  # fx names a module called ``input``, a Python builtin, ``input_1``
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.input = nn.Identity()
        ...     def forward(self, x):
        ...         return self.input(self.input(x))
        >>> [layer_name(n) for n in fx.symbolic_trace(Digits()).graph.nodes]
        ['x', 'input', 'input_1', 'output']
    """
    name = node.name
    if node.op != "call_module":
        return name
    own = str(node.target).replace(".", "_")
    identifier = _snake_identifier(own)
    suffix = name[len(identifier):]
    if not name.startswith(identifier) or not (not suffix or re.fullmatch(r"_\d+", suffix)):
        return name
    if _shadows_a_builtin(identifier) and suffix:  # fx numbers such a name from its first call: input_1, input_2, …
        calls = int(suffix[1:])
        shown = own + (f"_{calls - 1}" if calls > 1 else "")
        # unless another node shows that name (the calls of this module are renamed alike, so they do not count)
        if not any(other.name == shown and not (other.op == "call_module" and other.target == node.target) for other in node.graph.nodes):
            return shown
    return own + suffix


def _shadows_a_builtin(identifier: str) -> bool:
    """Whether fx refuses ``identifier`` as a node name (a keyword, a builtin such as ``input``, or a name
    its generated code imports) and numbers it from ``_1``."""
    illegal = getattr(fx.graph, "_illegal_names", None)
    if isinstance(illegal, dict):
        return identifier in illegal
    return keyword.iskeyword(identifier) or hasattr(builtins, identifier)


def is_input_layer(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` calls an input layer (:class:`dlqnb.models.networks.ImageInput`): MATLAB's input layer.

    Example:
        >>> from dlqnb.models.networks import DigitsNet
        >>> gm = optimize_network(DigitsNet()).module
        >>> [layer_name(node) for node in gm.graph.nodes if is_input_layer(gm, node)]
        ['input']
    """
    return getattr(called_module(gm, node), "dlqnb_op", None) == "input"


def feeds_input_layers_only(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` is the forward argument of a network whose input layers take it: the input
    layer then stands for the network's input (MATLAB has no separate row or layer for it).

    Example:
        >>> from dlqnb.models.networks import DigitsNet
        >>> gm = optimize_network(DigitsNet()).module
        >>> [layer_name(node) for node in gm.graph.nodes if feeds_input_layers_only(gm, node)]
        ['x']
    """
    return node.op == "placeholder" and bool(node.users) and all(is_input_layer(gm, user) for user in node.users)


def _snake_identifier(text: str) -> str:
    """The identifier fx derives from a module name: torch.fx's own rules (``_`` before a capital that
    follows a lowercase letter, all lowered, other characters ``_``, a leading digit prefixed)."""
    snake = re.sub(r"(?<=[a-z])([A-Z])", r"_\1", text).lower()
    snake = re.sub(r"[^0-9a-zA-Z_]+", "_", snake)
    return f"_{snake}" if snake[:1].isdigit() else snake



class FusedLayer(nn.Module):
    """A convolution or fully connected layer with folded BatchNorm and a fused activation.

    Attributes:
        layer: The conv/linear module holding the folded weights and a bias.
        activation: The fused activation module, or None.
        network_layers: The network layers it stands for (conv/linear, BatchNorm, activation), which
            :func:`network_summary` lists in its place.
    """

    def __init__(self, layer: nn.Module, activation: nn.Module | None, network_layers: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.layer = layer
        self.activation = activation
        self.network_layers = tuple(network_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        return self.activation(y) if self.activation is not None else y


@dataclass(frozen=True)
class OptimizedLayer:
    """One conv/linear layer of the optimized network.

    Attributes:
        name: Optimized layer name (member names joined with ``_``).
        members: Network layer names folded into it: the conv/linear, then BatchNorm, activation.
        module_path: Dotted path of the conv/linear module in the user's network.
        kind: ``"conv"`` or ``"linear"``.
        activation: ``"relu"``, ``"relu6"``, ``"leaky_relu"`` or None.
    """

    name: str
    members: tuple[str, ...]
    module_path: str
    kind: str
    activation: str | None

    @property
    def network_layer_name(self) -> str:
        """The last network layer of the group (the activation when one is fused)."""
        return self.members[-1]


@dataclass
class OptimizedNetwork:
    """A traced, folded and fused copy of a network.

    Attributes:
        module: The optimized ``fx.GraphModule`` (eval mode); computes what the network does.
        layers: The optimized conv/linear layers by name, in network order.
    """

    module: fx.GraphModule
    layers: dict[str, OptimizedLayer]

    def nodes(self) -> Iterator[fx.Node]:
        """The graph's nodes in execution order."""
        return iter(self.module.graph.nodes)

    def fused(self, name: str) -> FusedLayer:
        """The fused module of an optimized layer."""
        module = self.module.get_submodule(name)
        assert isinstance(module, FusedLayer)
        return module


def trace_network(net: nn.Module) -> fx.GraphModule:
    """Trace a network with torch.fx (dlqnb's input layer kept whole; a submodule fx cannot trace kept
    whole too, with a warning: :func:`dlqnb.core.capture.capture_network`).

    Raises:
        NetworkGraphError: If fx cannot trace the network's own forward; the message says why.
    """
    return _trace(net)


def _trace(net: nn.Module) -> fx.GraphModule:
    return capture_network(net)


def _sole_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _fold_batchnorm(layer: nn.Module, bn: nn.Module, bn_name: str) -> nn.Module:
    if bn.running_mean is None or bn.running_var is None:
        raise NetworkGraphError(
            f"BatchNorm layer '{bn_name}' has no running statistics (track_running_stats=False); "
            "dlqnb folds BatchNorm into the preceding layer with its running statistics"
        )
    if layer_kind(layer) == "linear":
        return fuse_linear_bn_eval(layer, bn)
    return fuse_conv_bn_eval(layer, bn)


def _with_bias(layer: nn.Module) -> nn.Module:
    if layer.bias is None:
        out_features = layer.weight.shape[0]
        layer.bias = nn.Parameter(torch.zeros(out_features, dtype=layer.weight.dtype, device=layer.weight.device))
    return layer


def _check_supported(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        module = called_module(gm, node)
        reason = unsupported_reason(module)
        if reason is not None:
            raise NetworkGraphError(f"layer '{layer_name(node)}' ({type(module).__name__}): {reason} by dlqnb quantization")


def check_materialized(net: nn.Module) -> None:
    """Refuse a network whose parameters or buffers hold no values (the ``meta`` device).

    A meta tensor has a shape and no storage; once copied to a real device it holds whatever memory
    it lands on, so ranges calibrated from it would change from run to run.

    Raises:
        NetworkGraphError: Naming the first parameter or buffer on the meta device.

    Example:
        >>> from torch import nn
        >>> check_materialized(nn.Linear(2, 3))  # real weights: nothing to say
        >>> try:
        ...     check_materialized(nn.Linear(2, 3, device="meta"))
        ... except NetworkGraphError as error:
        ...     print(str(error).split(" (")[0])
        parameter 'weight' of Linear is on the meta device
    """
    tensors = [("parameter", name, t) for name, t in net.named_parameters()] + [("buffer", name, t) for name, t in net.named_buffers()]
    for kind, name, tensor in tensors:
        if tensor.is_meta:
            raise NetworkGraphError(
                f"{kind} '{name}' of {type(net).__name__} is on the meta device (a shape without values): load its "
                'weights first, e.g. net.to_empty(device="cpu") then net.load_state_dict(state)'
            )


def optimize_network(net: nn.Module) -> OptimizedNetwork:
    """Trace a copy of ``net`` and fold and fuse it into the optimized network.

    Args:
        net: A CNN built from torch modules and functions (the user's network is not modified).

    Returns:
        The optimized network, in eval mode, with gradients off.

    Raises:
        NetworkGraphError: If fx cannot trace the network, a layer cannot be handled, or a parameter
            or buffer is on the meta device; the message names the layer or tensor and the reason.

    Example:
        >>> import torchvision
        >>> opt = optimize_network(torchvision.models.squeezenet1_1())
        >>> list(opt.layers)[:2]
        ['features_0_features_1', 'features_3_squeeze_features_3_squeeze_activation']
    """
    check_materialized(net)
    model = copy.deepcopy(net).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    gm = _trace(model)
    _check_supported(gm)
    layers: dict[str, OptimizedLayer] = {}
    members_of: dict[fx.Node, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        module = called_module(gm, node)
        if not isinstance(module, QUANTIZABLE_TYPES):
            continue
        layer = copy.deepcopy(module)
        members = [node]
        follower = _sole_user(node)
        bn = called_module(gm, follower)
        if is_batchnorm(bn) and follower.args and follower.args[0] is node:
            layer = _fold_batchnorm(layer, bn, layer_name(follower))
            members.append(follower)
        follower = _sole_user(members[-1])
        activation = fusable_activation(gm, follower, members[-1]) if follower is not None else None
        if activation is not None:
            members.append(follower)
        name = "_".join(layer_name(member) for member in members)
        gm.add_submodule(name, FusedLayer(_with_bias(layer), activation, tuple(layer_name(member) for member in members)))
        members_of[node] = members
        layers[name] = OptimizedLayer(
            name=name,
            members=tuple(layer_name(member) for member in members),
            module_path=str(node.target),
            kind=layer_kind(layer),
            activation=activation_kind(activation),
        )
    return OptimizedNetwork(module=_rebuild(gm, members_of), layers=layers)


def _rebuild(gm: fx.GraphModule, members_of: dict[fx.Node, list[fx.Node]]) -> fx.GraphModule:
    """A new graph with each group of members replaced by one call of its fused module.

    Built anew rather than edited, because fx never frees an erased node's name and the fused
    layer may take it (a Linear ``fc`` with nothing to fuse stays ``fc``).
    """
    graph = fx.Graph()
    new_node: dict[fx.Node, fx.Node] = {}
    absorbed = {member for members in members_of.values() for member in members[1:]}
    for node in gm.graph.nodes:
        if node in absorbed:
            continue
        if node in members_of:
            members = members_of[node]
            name = "_".join(layer_name(member) for member in members)
            fused = graph.create_node(
                "call_module",
                name,
                args=fx.map_arg(node.args, new_node.__getitem__),
                kwargs=fx.map_arg(node.kwargs, new_node.__getitem__),
                name=_snake_identifier(name),
            )
            if layer_name(fused) != name:
                raise NetworkGraphError(f"optimized layer name '{name}' clashes with another layer of the network")
            for member in members:
                new_node[member] = fused
        else:
            new_node[node] = graph.node_copy(node, new_node.__getitem__)
    graph.lint()
    return fx.GraphModule(gm, graph, class_name=type(gm).__name__).eval()


@dataclass(frozen=True)
class NetworkSummary:
    """What MATLAB's ``DAGNetwork`` display shows: the layers, their connections, inputs and outputs.

    Attributes:
        name: The network's class name.
        layers: Layer names in network order (the input layer first; shape queries are not layers).
        connections: One row per connection, columns ``Source`` and ``Destination``.
        input_names: The input layers (dlqnb's ``data`` layer, or the forward's argument).
        output_names: The layers whose outputs the network returns.
        layer_types: Each layer's type (its module's class, or the function), in the order of ``layers``.
    """

    name: str
    layers: list[str]
    connections: pd.DataFrame
    input_names: list[str]
    output_names: list[str]
    layer_types: list[str] = field(default_factory=list)

    def layer_array(self) -> pd.DataFrame:
        """The layers one per row, numbered from 1 as MATLAB's ``net.Layers`` lists them: ``Name`` and ``Type``.

        Example:
            >>> from dlqnb.models.networks import DigitsNet
            >>> network_summary(DigitsNet()).layer_array().head(3)
                Name         Type
            1  input   ImageInput
            2  conv1       Conv2d
            3    bn1  BatchNorm2d
        """
        types = self.layer_types or [""] * len(self.layers)
        return pd.DataFrame({"Name": self.layers, "Type": types}, index=range(1, len(self.layers) + 1))

    def __repr__(self) -> str:
        def names(values: list[str]) -> str:
            return "{" + ", ".join(f"'{value}'" for value in values) + "}"

        return (
            f"  {self.name} with properties:\n\n"
            f"         Layers: [{len(self.layers)}×1 layers]\n"
            f"    Connections: [{len(self.connections)}×2 table]\n"
            f"     InputNames: {names(self.input_names)}\n"
            f"    OutputNames: {names(self.output_names)}"
        )


def network_summary(net: nn.Module) -> NetworkSummary:
    """The layers and connections of a network, counted from its traced graph.

    A layer is a node that produces a tensor (:mod:`dlqnb.core.ops`): modules, and functions such as
    ``cat`` or ``flatten``; the forward's argument counts as the input layer only when no input
    layer (dlqnb's ``data``, normalizing the images) takes it. A graph dlqnb made (the optimized
    network, the emulated network ``DLQuantizer.quantize`` returns) is read as it is, not traced again:
    each fused or emulated layer is listed as the network layers it stands for, and quantization
    points, which are not layers, are left out, so a quantized network lists the float network's layers.

    Example:
        >>> from dlqnb.models.networks import squeezenet
        >>> summary = network_summary(squeezenet(weights=None))
        >>> summary.input_names, summary.layers[:3], len(summary.layers)
        (['data'], ['data', 'conv1', 'relu_conv1'], 67)
    """
    if _stands_for_network_layers(net):
        return _summary_of_own_graph(net)
    gm = _trace(net)

    def is_layer(node: fx.Node) -> bool:
        if node.op == "placeholder":
            return not feeds_input_layers_only(gm, node)
        return op_traits(gm, node).is_layer

    layers = [node for node in gm.graph.nodes if is_layer(node)]
    layer_set = set(layers)
    connections = [(layer_name(source), layer_name(node)) for node in layers for source in tensor_args(node) if source in layer_set]
    inputs = [node for node in layers if node.op == "placeholder" or is_input_layer(gm, node)]
    output = next(node for node in gm.graph.nodes if node.op == "output")
    return NetworkSummary(
        name=type(net).__name__,
        layers=[layer_name(node) for node in layers],
        connections=pd.DataFrame(connections, columns=["Source", "Destination"]),
        input_names=[layer_name(node) for node in inputs],
        output_names=[layer_name(node) for node in tensor_args(output)],
        layer_types=[_layer_type(gm, node) for node in layers],
    )



def _network_layers(gm: fx.GraphModule, node: fx.Node) -> tuple[str, ...] | None:
    """The network layers a dlqnb module stands for (``()`` for a quantization point), or None for any other node."""
    module = called_module(gm, node)
    layers = getattr(module, "network_layers", None) if module is not None else None
    return tuple(layers) if layers is not None else None


def _stands_for_network_layers(net: nn.Module) -> bool:
    return isinstance(net, fx.GraphModule) and any(
        node.op == "call_module" and _network_layers(net, node) is not None for node in net.graph.nodes
    )


def _summary_of_own_graph(gm: fx.GraphModule) -> NetworkSummary:
    """:func:`network_summary` of a graph dlqnb built, read node by node (tracing it again would keep
    the emulated layers whole and list every quantization point)."""

    layers: list[str] = []
    types: list[str] = []
    connections: list[tuple[str, str]] = []
    inputs: list[str] = []
    last: dict[fx.Node, list[str]] = {}  # node -> the layers its output comes from
    for node in gm.graph.nodes:
        sources = [layer for arg in tensor_args(node) for layer in last.get(arg, [])]
        if node.op == "output":
            outputs = sources
            continue
        stands_for = _network_layers(gm, node) if node.op == "call_module" else None
        if stands_for == ():  # a quantization point: its output is its input's
            last[node] = sources
            continue
        if stands_for is None:
            if node.op == "placeholder":
                if feeds_input_layers_only(gm, node):
                    last[node] = []
                    continue
            elif not op_traits(gm, node).is_layer:
                last[node] = sources
                continue
            stands_for = (layer_name(node),)
        layers.extend(stands_for)
        types.extend([_layer_type(gm, node)] * len(stands_for))
        connections.extend((source, stands_for[0]) for source in sources)
        connections.extend(zip(stands_for, stands_for[1:]))
        if node.op == "placeholder" or is_input_layer(gm, node):
            inputs.append(stands_for[0])
        last[node] = [stands_for[-1]]
    return NetworkSummary(
        name=type(gm).__name__,
        layers=layers,
        connections=pd.DataFrame(connections, columns=["Source", "Destination"]),
        input_names=inputs,
        output_names=list(dict.fromkeys(outputs)),
        layer_types=types,
    )


def _layer_type(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "placeholder":
        return "input"
    module = called_module(gm, node)
    if module is not None:
        return type(module).__name__
    return getattr(node.target, "__name__", str(node.target))
