"""Taylor-score filter pruning (MATLAB's ``taylorPrunableNetwork``, ``updateScore``, ``updatePrunables``).

:class:`TaylorPrunableNetwork` works on its own copy of a network, traced with torch.fx. A convolution's
output channels (filters) are **prunable** when removing one can be propagated consistently: through the
BatchNorm, activation, pooling and dropout layers that follow, through channel concatenations
(SqueezeNet's fire modules, with channel offsets), into the input channels of the next convolutions or
the input features of a ``Linear`` after a flatten (:mod:`dlqnb.core.ops` says which ops keep or join
channels). Channels that reach a residual addition, a multiplication (squeeze-and-excitation), the
network output, a depthwise or grouped convolution, a reshape or permute, or a per-channel op that maps
0 to something else (a BatchNorm other than the convolution's own, a sigmoid: a masked channel would
not stay zero through it) are **not prunable**: dlqnb does not couple tied channel groups (ResNet's block
outputs stay whole; the convolutions inside the blocks are prunable). A network whose convolutions are
all tied (ConvNeXt, ShuffleNetV2, Swin) constructs with no prunable filters.

**The rule for** ``num_prunables`` (it reproduces MATLAB's 48 of 60 filters): every prunable layer keeps
at least ``ceil(0.2 × its original filters)``; ``num_prunables`` counts the filters that may still go.

**Scores** are first-order Taylor importances (Molchanov et al., 2017): for each filter the absolute
value of its spatially averaged activation × gradient, averaged over the batch, then over
:meth:`~TaylorPrunableNetwork.update_score` calls. Before ranking filters across layers, each layer's
scores are divided by their L2 norm (Molchanov's layer-wise normalization), so layers of different
scales compete fairly.

**Physical surgery** (:meth:`~TaylorPrunableNetwork.to_module`) is an fx pass of dlqnb's own rather than
Torch-Pruning's dependency graph: dlqnb already traces every network with fx, the channel bookkeeping
needed here (concatenation offsets, flatten blocks) is a single forward pass over that graph, and it
needs no extra dependency; masked and extracted networks compute the same outputs (tested). Which ops
carry, absorb or stop removed channels, and how each shrinks, is :mod:`dlqnb.pruning.handlers`, one
handler per ``OpTraits.channels`` of :mod:`dlqnb.core.ops`; 1-D, 2-D and 3-D convolutions all have
prunable filters.

Example:
    >>> import torch
    >>> from dlqnb.models.networks import digits_net
    >>> pn = TaylorPrunableNetwork(digits_net())
    >>> pn.num_prunables
    48
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from dlqnb.core.graph import layer_name, network_summary, trace_network
from dlqnb.core.ops import QUANTIZABLE_TYPES, called_module, is_convolution
from dlqnb.pruning.handlers import prunable_filters, remove_channels

__all__ = ["MIN_KEEP_FRACTION", "TaylorPrunableNetwork", "conv_layer_table", "count_flops"]

MIN_KEEP_FRACTION = 0.2


@dataclass
class _Layer:
    conv: str  # fx node name of the convolution
    mask_node: str  # node whose output is masked (the BatchNorm after the conv, else the conv)
    filters: int
    min_keep: int
    mask: Tensor = field(repr=False)


class TaylorPrunableNetwork:
    """A network prepared for Taylor-score pruning of its convolution filters.

    Args:
        net: The network (never modified: the object works on a copy).

    Raises:
        ValueError: If the network has no prunable convolution.

    Attributes:
        input_names: Names of the network inputs.
        output_names: Names of the network outputs.
    """

    def __init__(self, net: nn.Module) -> None:
        if not isinstance(net, nn.Module):
            raise TypeError(f"TaylorPrunableNetwork needs an nn.Module, got {type(net).__name__}")
        model = copy.deepcopy(net).eval()
        self.graph_module = trace_network(model)
        self.metadata = {k: getattr(net, k) for k in ("class_names", "input_size") if hasattr(net, k)}
        summary = network_summary(self.graph_module)  # input and output layers as the network lists them
        self.input_names, self.output_names = summary.input_names, summary.output_names
        self.layers: dict[str, _Layer] = {}
        for node, mask_node in prunable_filters(self.graph_module).items():
            filters = called_module(self.graph_module, node).out_channels
            self.layers[layer_name(node)] = _Layer(layer_name(node), layer_name(mask_node), filters, math.ceil(MIN_KEEP_FRACTION * filters), torch.ones(filters, dtype=torch.bool))
        if not self.layers and not any(is_convolution(m) for m in model.modules()):
            raise ValueError(f"{type(net).__name__} has no prunable convolution filters: it has no Conv2d, Conv1d or Conv3d layer")
        self._score_sum = {name: torch.zeros(layer.filters, dtype=torch.float64) for name, layer in self.layers.items()}
        self._score_count = 0
        self._input_shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------------------------ MATLAB views
    @property
    def num_prunables(self) -> int:
        """Filters that may still be pruned (each layer keeps ``ceil(0.2 × filters)``)."""
        return sum(int(layer.mask.sum()) - layer.min_keep for layer in self.layers.values())

    @property
    def learnables(self) -> pd.DataFrame:
        """The learnable parameters as a table ``Layer``, ``Parameter``, ``Value`` (MATLAB's ``Learnables``)."""
        rows = [(name.rpartition(".")[0], name.rpartition(".")[2], p.detach()) for name, p in self.graph_module.named_parameters()]
        return pd.DataFrame(rows, columns=["Layer", "Parameter", "Value"])

    @property
    def state(self) -> pd.DataFrame:
        """The non-learnable state (BatchNorm statistics) as a table ``Layer``, ``Parameter``, ``Value``."""
        rows = [(name.rpartition(".")[0], name.rpartition(".")[2], b) for name, b in self.graph_module.named_buffers() if "running" in name]
        return pd.DataFrame(rows, columns=["Layer", "Parameter", "Value"])

    def filter_counts(self) -> dict[str, int]:
        """Filters each prunable convolution keeps."""
        return {name: int(layer.mask.sum()) for name, layer in self.layers.items()}

    def __repr__(self) -> str:
        """MATLAB's display of a ``TaylorPrunableNetwork``: its properties, ``NumPrunables`` last.

        Example:
            >>> from dlqnb.models.networks import DigitsNet
            >>> print(TaylorPrunableNetwork(DigitsNet()))
              TaylorPrunableNetwork with properties:
            <BLANKLINE>
                  Learnables: [14×3 table]
                       State: [6×3 table]
                  InputNames: {'input'}
                 OutputNames: {'fc'}
                NumPrunables: 48
        """

        def names(values: list[str]) -> str:
            return "{" + ", ".join(f"'{value}'" for value in values) + "}"

        return (
            "  TaylorPrunableNetwork with properties:\n\n"
            f"      Learnables: [{len(self.learnables)}×3 table]\n"
            f"           State: [{len(self.state)}×3 table]\n"
            f"      InputNames: {names(self.input_names)}\n"
            f"     OutputNames: {names(self.output_names)}\n"
            f"    NumPrunables: {self.num_prunables}"
        )

    # ------------------------------------------------------------------------------ forward and scores
    def forward(self, x: Tensor, training: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Network output and the pruning activations (masked outputs of the prunable filters).

        Args:
            x: A batch of network input.
            training: Use batch statistics in BatchNorm (as MATLAB's ``forward``) without changing
                the running statistics; by default BatchNorm uses its running statistics.

        Returns:
            ``(out, pruning_activations)``; the activations are taken after each filter's BatchNorm,
            in the autograd graph, so that ``torch.autograd.grad(loss, pruning_activations)`` works.
        """
        self._input_shape = tuple(x.shape[1:])
        masks = {layer.mask_node: layer.mask for layer in self.layers.values()}
        activations: list[Tensor] = []
        runner = _MaskedRunner(self.graph_module, masks, activations, training)
        out = runner.run(x)
        return out, activations

    def update_score(self, pruning_activations: Sequence[Tensor], pruning_gradients: Sequence[Tensor]) -> TaylorPrunableNetwork:
        """Accumulate first-order Taylor importance scores; returns the updated network object.

        Raises:
            ValueError: If the lists do not match the prunable layers.
        """
        if len(pruning_activations) != len(self.layers) or len(pruning_gradients) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} pruning activations and gradients (one per prunable layer), got {len(pruning_activations)} and {len(pruning_gradients)}")
        updated = copy.copy(self)
        updated._score_sum = dict(self._score_sum)
        for (name, layer), activation, gradient in zip(self.layers.items(), pruning_activations, pruning_gradients):
            positions = tuple(range(2, activation.dim()))  # the spatial dimensions of a 1-D, 2-D or 3-D conv
            taylor = (activation.detach() * gradient.detach()).mean(dim=positions).abs().mean(dim=0)
            updated._score_sum[name] = self._score_sum[name] + taylor.double().cpu()
        updated._score_count = self._score_count + 1
        return updated

    def scores(self) -> dict[str, Tensor]:
        """The accumulated score of every filter (mean over update_score calls), per layer."""
        count = max(self._score_count, 1)
        return {name: total / count for name, total in self._score_sum.items()}

    def update_prunables(self, max_to_prune: int = 8) -> TaylorPrunableNetwork:
        """Remove (mask) the ``max_to_prune`` lowest-scoring filters and reset the scores.

        Raises:
            ValueError: If ``max_to_prune`` is not positive or exceeds :attr:`num_prunables`, or no
                score has been accumulated.
        """
        if not isinstance(max_to_prune, int) or max_to_prune < 1:
            raise ValueError(f"max_to_prune must be a positive integer, got {max_to_prune!r}")
        if max_to_prune > self.num_prunables:
            raise ValueError(f"max_to_prune={max_to_prune} exceeds the {self.num_prunables} filters that can still be pruned")
        if self._score_count == 0:
            raise ValueError("no scores yet: call update_score with pruning activations and gradients first")
        candidates = []
        for name, score in self.scores().items():
            layer = self.layers[name]
            norm = float(score[layer.mask].norm()) or 1.0
            for index in torch.nonzero(layer.mask).flatten().tolist():
                candidates.append((float(score[index]) / norm, name, index))
        candidates.sort()
        updated = copy.copy(self)
        updated.layers = {name: dataclasses.replace(layer, mask=layer.mask.clone()) for name, layer in self.layers.items()}
        removed = 0
        for _, name, index in candidates:
            layer = updated.layers[name]
            if int(layer.mask.sum()) > layer.min_keep:
                layer.mask[index] = False
                removed += 1
                if removed == max_to_prune:
                    break
        updated._score_sum = {name: torch.zeros(layer.filters, dtype=torch.float64) for name, layer in self.layers.items()}
        updated._score_count = 0
        return updated

    # ------------------------------------------------------------------------------ extraction
    def to_module(self) -> nn.Module:
        """A physically smaller network: pruned filters, BatchNorm channels and downstream inputs removed.

        Its outputs equal the masked network's (:meth:`forward`).
        """
        gm = copy.deepcopy(self.graph_module)
        by_name = {layer_name(node): node for node in gm.graph.nodes}
        filters = {by_name[layer.conv]: torch.nonzero(layer.mask).flatten() for layer in self.layers.values()}
        remove_channels(gm, filters, torch.zeros((1, *self._example_shape())))
        for key, value in self.metadata.items():
            setattr(gm, key, value)
        return gm.eval()

    def _example_shape(self) -> tuple[int, ...]:
        if self._input_shape is not None:
            return self._input_shape
        size = self.metadata.get("input_size")
        first = next(m for m in self.graph_module.modules() if is_convolution(m))
        if size is None:
            raise ValueError("call forward once (or record the network's input_size) before to_module")
        return (first.in_channels, *size)


class _MaskedRunner(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, masks: dict[str, Tensor], activations: list[Tensor], training: bool) -> None:
        super().__init__(gm)
        self.masks = masks
        self.activations = activations
        self.training = training

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        module = self.module.get_submodule(target)
        if self.training and isinstance(module, nn.modules.batchnorm._BatchNorm):
            # batch statistics, as in training, but the running statistics stay as they are
            return F.batch_norm(args[0], None, None, module.weight, module.bias, True, 0.0, module.eps)
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        mask = self.masks.get(layer_name(n))
        if mask is not None:
            out = out * mask.to(out.dtype).view(1, -1, *([1] * (out.dim() - 2)))
            self.activations.append(out)
        return out


def count_flops(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of the convolution and linear layers for one input of ``input_shape``."""
    flops = 0

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        nonlocal flops
        if is_convolution(module):
            flops += output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        else:
            flops += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, QUANTIZABLE_TYPES)]
    try:
        with torch.no_grad():
            net(torch.zeros((1, *input_shape)))
    finally:
        for handle in handles:
            handle.remove()
    return flops


def conv_layer_table(net: nn.Module) -> pd.DataFrame:
    """The convolution layers of a network as the *updateScore* example lists them: name, filters, kernel, input
    channels, stride and padding."""
    rows = []
    for name, module in net.named_modules():
        if is_convolution(module):
            rows.append(
                {
                    "Name": name,
                    "Filters": module.out_channels,
                    "Kernel": "×".join(str(k) for k in module.kernel_size),
                    "InputChannels": module.in_channels,
                    "Stride": tuple(module.stride),
                    "Padding": tuple(module.padding) if not isinstance(module.padding, str) else module.padding,
                }
            )
    return pd.DataFrame(rows)
