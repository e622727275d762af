"""Channel propagation for filter pruning: one handler per way an op treats channels.

:func:`dlqnb.core.ops.op_traits` sorts every op by what it does to channels (``OpTraits.channels``); this
module keys one :class:`ChannelHandler` by each of those values, as Torch-Pruning keys its handlers by op
type. A handler answers the two questions pruning asks of an op:

* **analysis** (:meth:`ChannelHandler.follows`): when filters of a convolution upstream are removed, is the
  removal carried on through the op (``"follow"``), absorbed by it (``"end"``: its weights drop the
  matching input channels), or not representable (``"stop"``: the filters stay whole)?
* **extraction** (:meth:`ChannelHandler.extract`): knowing which channels of its input survive, shrink
  the op's own learnables and say which channels of its output survive.

=============  ==================================================  =======================================
channels       ops                                                 handler
=============  ==================================================  =======================================
``keeps``      BatchNorm, activations, pooling, dropout, resize    :class:`FollowsChannels`
``joins``      concatenation                                       :class:`ConcatenatesChannels`
``flattens``   flatten into features                               :class:`FlattensChannels`
``consumes``   convolution, linear                                 :class:`ConsumesChannels` (a prunable
                                                                   convolution also *produces* channels)
``ties``       addition, multiplication of two tensors             :class:`ChannelHandler` (stops)
``opaque``     everything else, the network output                 :class:`ChannelHandler` (stops)
=============  ==================================================  =======================================

Example:
    >>> import torch.fx as fx
    >>> from torch import nn
    >>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Conv1d(4, 3, 1)))
    >>> {conv.name: mask.name for conv, mask in prunable_filters(gm).items()}
    {'_0': '_1'}
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from dlqnb.core.ops import SHIFTS_ZERO, Channels, called_module, concat_dim, flatten_start_dim, is_batchnorm, is_convolution, layer_kind, op_traits, tensor_args

__all__ = [
    "HANDLERS",
    "ChannelHandler",
    "ConcatenatesChannels",
    "ConsumesChannels",
    "FlattensChannels",
    "FollowsChannels",
    "Verdict",
    "channels_propagate",
    "handler",
    "own_batchnorm",
    "prunable_filters",
    "remove_channels",
]

Verdict = Literal["follow", "end", "stop"]


class ChannelHandler:
    """How removed channels pass through one kind of op; this base stops them (ties, opaque ops).

    Example:
        >>> ChannelHandler().follows(None, None, None, None)
        'stop'
    """

    def follows(self, gm: fx.GraphModule, node: fx.Node, source: fx.Node, start: fx.Node) -> Verdict:
        """Whether channels removed from ``source``'s output (filters of the convolution ``start``) pass
        through ``node``, a user of ``source``: ``"follow"``, ``"end"`` or ``"stop"``."""
        return "stop"

    def extract(self, gm: fx.GraphModule, node: fx.Node, kept: dict[fx.Node, Tensor], filters: dict[fx.Node, Tensor]) -> Tensor | None:
        """Shrink ``node``'s learnables to the channels that survive upstream and return the indices of
        its output channels that survive, or None when all do.

        Args:
            gm: The graph, shapes propagated (``tensor_meta``).
            node: The op.
            kept: Surviving output channels of the nodes before it that lost some.
            filters: Surviving filters of each pruned convolution.
        """
        return None


def _incoming(node: fx.Node, kept: dict[fx.Node, Tensor]) -> Tensor | None:
    source = node.args[0] if node.args else None
    return kept.get(source) if isinstance(source, fx.Node) else None


def _shrink(module: nn.Module, names: tuple[str, ...], index: Tensor, dim: int = 0) -> None:
    """Keep only ``index`` along ``dim`` of a module's named parameters and buffers (absent ones skipped)."""
    for name in names:
        value = getattr(module, name)
        if value is None:
            continue
        smaller = value.detach().index_select(dim, index).clone()
        setattr(module, name, nn.Parameter(smaller) if isinstance(value, nn.Parameter) else smaller)


class FollowsChannels(ChannelHandler):
    """Per-channel ops (``keeps``): channel *c* out depends on channel *c* in alone.

    Removal is followed, except through an op that maps 0 to something else (a BatchNorm other than the
    convolution's own, a sigmoid, adding a constant: a masked channel would not stay zero through it) and
    shape queries. Extraction shrinks a BatchNorm's parameters and statistics.

    Example:
        >>> import torch.fx as fx
        >>> from torch import nn
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Sigmoid()))
        >>> _, conv, relu, sigmoid, _ = gm.graph.nodes
        >>> FollowsChannels().follows(gm, relu, conv, conv), FollowsChannels().follows(gm, sigmoid, relu, conv)
        ('follow', 'stop')
    """

    def follows(self, gm: fx.GraphModule, node: fx.Node, source: fx.Node, start: fx.Node) -> Verdict:
        traits = op_traits(gm, node)
        if traits.kind in SHIFTS_ZERO and node is not own_batchnorm(gm, start):
            return "stop"
        if traits.values == "shape" or not node.args or node.args[0] is not source:
            return "stop"
        return "follow"

    def extract(self, gm: fx.GraphModule, node: fx.Node, kept: dict[fx.Node, Tensor], filters: dict[fx.Node, Tensor]) -> Tensor | None:
        incoming = _incoming(node, kept)
        module = called_module(gm, node)
        if incoming is not None and op_traits(gm, node).kind == "batch_norm" and module is not None:
            _shrink(module, ("weight", "bias", "running_mean", "running_var"), incoming)
            module.num_features = len(incoming)
        return incoming


class ConcatenatesChannels(ChannelHandler):
    """Channel concatenation (``joins``): each input's surviving channels, offset by the channels before it.

    Example:
        >>> import torch, torch.fx as fx
        >>> gm = fx.symbolic_trace(lambda x: torch.cat([x, x], 1))
        >>> _, cat, _ = gm.graph.nodes
        >>> ConcatenatesChannels().follows(gm, cat, cat.args[0][0], cat.args[0][0])
        'follow'
    """

    def follows(self, gm: fx.GraphModule, node: fx.Node, source: fx.Node, start: fx.Node) -> Verdict:
        return "follow" if concat_dim(gm, node) == 1 else "stop"

    def extract(self, gm: fx.GraphModule, node: fx.Node, kept: dict[fx.Node, Tensor], filters: dict[fx.Node, Tensor]) -> Tensor | None:
        inputs = tensor_args(node)
        if not any(source in kept for source in inputs):
            return None
        parts, offset = [], 0
        for source in inputs:
            channels = source.meta["tensor_meta"].shape[1]
            parts.append(kept.get(source, torch.arange(channels)) + offset)
            offset += channels
        return torch.cat(parts)


class FlattensChannels(ChannelHandler):
    """Flatten into features (``flattens``), read by linear layers: channel *c* becomes the block of
    features ``c × positions … (c + 1) × positions − 1``.

    Example:
        >>> import torch.fx as fx
        >>> from torch import nn
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4, 2)))
        >>> _, conv, flatten, _, _ = gm.graph.nodes
        >>> FlattensChannels().follows(gm, flatten, conv, conv)
        'end'
    """

    def follows(self, gm: fx.GraphModule, node: fx.Node, source: fx.Node, start: fx.Node) -> Verdict:
        if flatten_start_dim(gm, node) != 1 or node.args[0] is not source:
            return "stop"
        return "end" if all(layer_kind(called_module(gm, user)) == "linear" for user in node.users) else "stop"

    def extract(self, gm: fx.GraphModule, node: fx.Node, kept: dict[fx.Node, Tensor], filters: dict[fx.Node, Tensor]) -> Tensor | None:
        incoming = _incoming(node, kept)
        if incoming is None:
            return None
        positions = math.prod(node.args[0].meta["tensor_meta"].shape[2:])
        return (incoming[:, None] * positions + torch.arange(positions)[None, :]).flatten()


class ConsumesChannels(ChannelHandler):
    """Convolutions and linear layers (``consumes``): their weights drop the input channels removed
    upstream; a prunable convolution also *produces* channels, dropping its removed filters.

    A depthwise or grouped convolution ties its channels to its groups, and a linear layer reached
    without a flatten reads the last dimension rather than channels: both stop the removal.

    Example:
        >>> import torch.fx as fx
        >>> from torch import nn
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv3d(2, 4, 1), nn.Conv3d(4, 4, 1, groups=2)))
        >>> _, conv, grouped, _ = gm.graph.nodes
        >>> ConsumesChannels().follows(gm, grouped, conv, conv), ConsumesChannels.produces(gm, grouped)
        ('stop', False)
    """

    @staticmethod
    def produces(gm: fx.GraphModule, node: fx.Node) -> bool:
        """Whether ``node`` is a convolution whose filters can be removed one by one (not grouped)."""
        module = called_module(gm, node)
        return is_convolution(module) and module.groups == 1

    def follows(self, gm: fx.GraphModule, node: fx.Node, source: fx.Node, start: fx.Node) -> Verdict:
        return "end" if self.produces(gm, node) and node.args[0] is source else "stop"

    def extract(self, gm: fx.GraphModule, node: fx.Node, kept: dict[fx.Node, Tensor], filters: dict[fx.Node, Tensor]) -> Tensor | None:
        module = called_module(gm, node)
        incoming = _incoming(node, kept)
        if incoming is not None:
            _shrink(module, ("weight",), incoming, dim=1)
            setattr(module, "in_channels" if is_convolution(module) else "in_features", len(incoming))
        surviving = filters.get(node)
        if surviving is not None:
            _shrink(module, ("weight", "bias"), surviving)
            module.out_channels = len(surviving)
        return surviving


#: The handler for each value of ``OpTraits.channels``.
HANDLERS: dict[Channels, ChannelHandler] = {
    "keeps": FollowsChannels(),
    "joins": ConcatenatesChannels(),
    "flattens": FlattensChannels(),
    "consumes": ConsumesChannels(),
    "ties": ChannelHandler(),
    "opaque": ChannelHandler(),
}


def handler(gm: fx.GraphModule, node: fx.Node) -> ChannelHandler:
    """The handler of a node's op, by its ``OpTraits.channels``.

    Example:
        >>> import torch.fx as fx
        >>> from torch import nn
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU()))
        >>> [type(handler(gm, n)).__name__ for n in gm.graph.nodes]
        ['FollowsChannels', 'ConsumesChannels', 'FollowsChannels', 'ChannelHandler']
    """
    return HANDLERS[op_traits(gm, node).channels]


def own_batchnorm(gm: fx.GraphModule, conv: fx.Node) -> fx.Node | None:
    """The BatchNorm that alone reads a convolution's output (masking after it keeps removed channels at
    0), or None.

    Example:
        >>> import torch.fx as fx
        >>> from torch import nn
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4)))
        >>> own_batchnorm(gm, list(gm.graph.nodes)[1]).name
        '_1'
    """
    users = list(conv.users)
    if len(users) == 1 and is_batchnorm(called_module(gm, users[0])) and users[0].args[0] is conv:
        return users[0]
    return None


def channels_propagate(gm: fx.GraphModule, start: fx.Node) -> bool:
    """Whether removing filters of the convolution ``start`` reaches, on every path, only ops that absorb
    it (convolutions, or linear layers after a flatten), through ops that carry it.

    Example:
        >>> import torch.fx as fx
        >>> from torch import nn
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 2, 1)))
        >>> [channels_propagate(gm, n) for n in list(gm.graph.nodes)[1:4:2]]  # the last one reaches the output
        [True, False]
    """
    pending, seen = [start], set()
    while pending:
        node = pending.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            verdict = handler(gm, user).follows(gm, user, node, start)
            if verdict == "stop":
                return False
            if verdict == "follow":
                pending.append(user)
    return True


def prunable_filters(gm: fx.GraphModule) -> dict[fx.Node, fx.Node]:
    """The convolutions whose filters can be pruned, each with the node whose output is masked (its own
    BatchNorm, else the convolution), in network order.

    Example:
        >>> import torch.fx as fx
        >>> from torch import nn
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4, 2)))
        >>> [(conv.name, mask.name) for conv, mask in prunable_filters(gm).items()]
        [('_0', '_0')]
    """
    return {
        node: own_batchnorm(gm, node) or node
        for node in gm.graph.nodes
        if ConsumesChannels.produces(gm, node) and channels_propagate(gm, node)
    }


def remove_channels(gm: fx.GraphModule, filters: dict[fx.Node, Tensor], example: Tensor) -> fx.GraphModule:
    """Physically remove pruned filters and every channel they feed, in place.

    Args:
        gm: The network's graph (only convolutions :func:`prunable_filters` lists may lose filters).
        filters: Surviving filter indices of each pruned convolution node.
        example: An input of the network's shape (concatenations and flattens need the shapes).

    Returns:
        ``gm``, recompiled.

    Example:
        >>> import torch, torch.fx as fx
        >>> from torch import nn
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv1d(2, 4, 1), nn.Flatten(), nn.Linear(12, 2)))
        >>> small = remove_channels(gm, {list(gm.graph.nodes)[1]: torch.tensor([0, 3])}, torch.zeros(1, 2, 3))
        >>> small.get_submodule("0").weight.shape, small.get_submodule("2").weight.shape
        (torch.Size([2, 2, 1]), torch.Size([2, 6]))
    """
    ShapeProp(gm).propagate(example)
    kept: dict[fx.Node, Tensor] = {}
    for node in gm.graph.nodes:
        surviving = handler(gm, node).extract(gm, node, kept, filters)
        if surviving is not None:
            kept[node] = surviving
    gm.recompile()
    return gm
