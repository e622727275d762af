"""Cross-layer equalization (MATLAB's ``equalizeLayers``): the same float network, with weight ranges
that suit one scale per layer.

A layer quantized with one power-of-two scale loses the channels whose weights are much smaller than
its largest: they get few of the 256 codes. Cross-layer equalization (Nagel et al., *Data-Free
Quantization through Weight Equalization and Bias Correction*, 2019) moves range between two
consecutive layers: output channel *i* of the first layer is divided by ``s_i`` and input channel *i* of
the second multiplied by ``s_i``. Through an activation ``f`` with ``f(x / s) = f(x) / s`` for every
``s > 0`` (none, ReLU, leaky ReLU) the network computes the same function. With
``s_i = sqrt(r1_i / r2_i)``, where ``r1_i`` is the largest magnitude of the first layer's output channel
*i* and ``r2_i`` that of the second layer's input channel *i*, both become ``sqrt(r1_i * r2_i)``: the two
layers' per-channel ranges are then equal, so ``r1_i / max(r1) = r2_i / max(r2)``.

Pairs are found on the optimized network (:func:`dlqnb.core.graph.optimize_network`): two conv/linear
layers where the first one's output (after its folded BatchNorm and fused activation, and through any
dropout or identity layers) is the second one's only input and goes nowhere else. Ranges are measured on the folded weights, which are what
dlqnb quantizes. A chain (conv → depthwise conv → conv, as in MobileNet) gives two pairs that share the
depthwise layer; the pairs are equalized in turn until the scales stop changing.

The scales are applied to a copy of the network as it is: a folded BatchNorm's ``weight`` and
``bias`` (gamma and beta) are divided by ``s`` (the BatchNorm then computes its output divided by
``s``, exactly; its running statistics and epsilon are untouched), otherwise the first layer's weights
and bias; the second layer's weights (grouped and depthwise convolutions included) are multiplied by
``s`` per input channel.

A pair is left as it is, and the report says why, where rescaling would change the float output:

* through a clipped ReLU (ReLU6): ``relu6(x / s) * s`` clips at ``6 s``, not at 6. Keeping it exact would
  take a clip at ``6 / s_i`` per channel, which no int8 runtime fuses into a convolution (the layer would
  compute in float). ``relu6="relu"`` does what Nagel et al. did for MobileNetV2: it replaces each such
  clipped ReLU module with a ReLU and equalizes the pair. That changes the float output wherever a value
  exceeded 6, so it is a choice to measure (the report lists every replacement), never a default;
* a convolution feeding a fully connected layer, or the reverse: a convolution's channels are
  dimension 1 of its output, a fully connected layer reads the last dimension;
* a layer or BatchNorm module called more than once (its other call would change too);
* a BatchNorm with no learnable gamma (``affine=False``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    >>> equalized, table = equalize_layers(net, report=True)
    >>> table[["Layer", "Change"]].values.tolist()
    [['0_1 → 2', 'equalized']]
    >>> x = torch.randn(2, 3, 16, 16)
    >>> bool(torch.allclose(equalized(x), net(x), rtol=1e-4, atol=1e-5))
    True
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import pandas as pd
import torch
import torch.fx as fx
from torch import Tensor, nn

from dlqnb.core.capture import CaptureWarning
from dlqnb.core.graph import OptimizedNetwork, layer_name, optimize_network, trace_network
from dlqnb.core.ops import called_module, fused_activation_name, is_batchnorm, op_traits, tensor_args

__all__ = ["CHANGE_COLUMNS", "RELU6_CHOICES", "EqualizationPair", "check_relu6", "equalization_pairs", "equalize_layers", "input_channel_ranges", "module_call_counts", "output_channel_ranges"]

#: The columns of the report of :func:`equalize_layers` and :func:`dlqnb.prepare_network`.
CHANGE_COLUMNS = ["Layer", "Change", "Detail"]
#: Activations through which rescaling is exact: f(x / s) = f(x) / s for every s > 0.
_SCALE_INVARIANT = {None: "no activation", "relu": "ReLU", "leaky_relu": "leaky ReLU"}
#: What :func:`equalize_layers` does with a pair through a clipped ReLU (ReLU6): leave it, or replace the clip with a ReLU.
RELU6_CHOICES = ("keep", "relu")
_KIND_NAMES = {"conv": "convolution", "linear": "fully connected layer"}


@dataclass(frozen=True)
class EqualizationPair:
    """Two consecutive conv/linear layers of the optimized network that can be equalized.

    Attributes:
        first: Optimized layer name of the first layer.
        second: Optimized layer name of the second layer.
        first_path: Module path of the first layer in the network.
        batchnorm_path: Module path of the BatchNorm folded into the first layer, or None.
        second_path: Module path of the second layer.
        through: What lies between them (``"ReLU"``, ``"leaky ReLU"``, ``"no activation"``).
        reason: Why the pair is not equalized ("" when it is).
        clip_path: Module path of the clipped ReLU (ReLU6) between them that ``relu6="relu"`` replaces
            with a ReLU to equalize the pair, or None (none there, or the pair is not equalized).
        clip_layer: That clipped ReLU's network layer name, or None.
    """

    first: str
    second: str
    first_path: str
    batchnorm_path: str | None
    second_path: str
    through: str
    reason: str = ""
    clip_path: str | None = None
    clip_layer: str | None = None

    @property
    def name(self) -> str:
        """How the report names the pair: ``first → second``."""
        return f"{self.first} → {self.second}"


def output_channel_ranges(weight: Tensor) -> Tensor:
    """The largest magnitude of each output channel of a conv/linear weight (dimension 0).

    Example:
        >>> output_channel_ranges(torch.tensor([[1.0, -3.0], [0.5, 0.25]])).tolist()
        [3.0, 0.5]
    """
    return weight.detach().abs().flatten(1).amax(1)


def input_channel_ranges(weight: Tensor, groups: int = 1) -> Tensor:
    """The largest magnitude of each input channel of a conv/linear weight with ``groups`` groups.

    Input channel ``j`` of a grouped convolution is channel ``j % (C_in / groups)`` of the weight's
    dimension 1 for the output channels of group ``j // (C_in / groups)`` only.

    Example:
        >>> depthwise = torch.tensor([[[[2.0]]], [[[-5.0]]]])  # 2 channels, groups=2: weight 2×1×1×1
        >>> input_channel_ranges(depthwise, groups=2).tolist()
        [2.0, 5.0]
    """
    grouped = _by_group(weight.detach().abs(), groups)  # groups × C_out/groups × C_in/groups × ...
    return grouped.transpose(1, 2).flatten(2).amax(2).flatten()


def _by_group(weight: Tensor, groups: int) -> Tensor:
    # a view, so that scaling it in place scales the weight
    return weight.view(groups, weight.shape[0] // groups, *weight.shape[1:])


def _scale_inputs(weight: Tensor, groups: int, scales: Tensor) -> None:
    """Multiply input channel ``j`` of ``weight`` by ``scales[j]``, in place."""
    grouped = _by_group(weight, groups)
    per_group = scales.reshape(groups, 1, -1, *([1] * (weight.dim() - 2)))
    grouped.mul_(per_group.to(weight.dtype))


def _scale_outputs(module: nn.Module, scales: Tensor, names: tuple[str, str]) -> None:
    """Divide output channel ``i`` of ``module``'s parameters ``names`` (weight/bias or gamma/beta) by ``scales[i]``."""
    for name in names:
        parameter = getattr(module, name, None)
        if parameter is not None:
            parameter.div_(scales.reshape(-1, *([1] * (parameter.dim() - 1))).to(parameter.dtype))


def _groups(module: nn.Module) -> int:
    return int(getattr(module, "groups", 1))


def module_call_counts(gm: fx.GraphModule) -> dict[str, int]:
    """How many times the graph calls each module, by module path.

    Example:
        >>> relu = nn.ReLU()
        >>> module_call_counts(fx.symbolic_trace(nn.Sequential(relu, relu)))
        {'0': 2}
    """
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[str(node.target)] = counts.get(str(node.target), 0) + 1
    return counts


def equalization_pairs(net: nn.Module, optimized: OptimizedNetwork | None = None, relu6: str = "keep") -> list[EqualizationPair]:
    """The consecutive conv/linear layers of ``net``, each with why it cannot be equalized ("" if it can).

    Args:
        net: The network (not modified).
        optimized: Its optimized network, when the caller has it already.
        relu6: ``"keep"``: a pair through a clipped ReLU (ReLU6) is not equalized; ``"relu"``: it is,
            once its clipped ReLU module is replaced with a ReLU (``clip_path`` names that module).

    Raises:
        ValueError: ``relu6`` is not ``"keep"`` or ``"relu"``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 4, 1))
        >>> [(pair.name, pair.reason.split(":")[0]) for pair in equalization_pairs(net)]
        [('0_1 → 2', 'through a clipped ReLU (ReLU6)')]
    """
    check_relu6(relu6)
    optimized = optimized or optimize_network(net)
    with warnings.catch_warnings():  # optimize_network has said already which submodules are kept whole
        warnings.simplefilter("ignore", CaptureWarning)
        traced = trace_network(net)
    by_name = {layer_name(node): node for node in traced.graph.nodes}
    calls = module_call_counts(traced)
    pairs = []
    gm = optimized.module
    for node in gm.graph.nodes:
        first = optimized.layers.get(layer_name(node)) if node.op == "call_module" else None
        follower = _only_consumer(node)
        # dropout and identity layers scale with their input (dropout(x / s) = dropout(x) / s)
        while follower is not None and op_traits(gm, follower).kind == "dropout":
            follower = _only_consumer(follower)
        second = optimized.layers.get(layer_name(follower)) if first is not None and follower is not None and follower.op == "call_module" else None
        if second is None:
            continue
        members = [by_name[member] for member in first.members if member in by_name]
        batchnorm = next((member for member in members if is_batchnorm(called_module(traced, member))), None)
        batchnorm_path = str(batchnorm.target) if batchnorm is not None else None
        pair = EqualizationPair(
            first.name, second.name, first.module_path, batchnorm_path, second.module_path, _SCALE_INVARIANT.get(first.activation, "")
        )
        kinds = (first.kind, second.kind)
        if first.activation != "relu6":
            pairs.append(_with_reason(pair, first.activation, kinds, traced, calls))
            continue
        # through a clipped ReLU: equalizable once the clip is a ReLU, where it can be replaced and nothing else stops it
        replaced = _through_replaced_clip(pair, by_name.get(first.network_layer_name), traced, calls)
        if not replaced.reason:
            replaced = _with_reason(replaced, "relu", kinds, traced, calls)
        if relu6 == "relu":
            pairs.append(replaced if not replaced.reason else EqualizationPair(**{**pair.__dict__, "reason": replaced.reason}))
        else:
            pairs.append(_with_reason(pair, first.activation, kinds, traced, calls, replaceable=not replaced.reason))
    return pairs


def _through_replaced_clip(pair: EqualizationPair, activation: fx.Node | None, traced: fx.GraphModule, calls: dict[str, int]) -> EqualizationPair:
    """``pair`` with the clipped ReLU module between its layers as ``clip_path`` and ``clip_layer``, or with
    why that clip cannot be replaced."""
    module = called_module(traced, activation) if activation is not None else None
    if module is None:
        reason = (
            "through a clipped ReLU (ReLU6) called as a function in the network's forward code: only a clipped ReLU "
            "module can be replaced with a ReLU, so rescaling would change the float output"
        )
        return EqualizationPair(**{**pair.__dict__, "reason": reason})
    path = str(activation.target)
    if calls.get(path, 0) > 1:
        reason = f"through clipped ReLU module '{path}', which is called more than once: replacing it with a ReLU would change its other calls"
        return EqualizationPair(**{**pair.__dict__, "reason": reason})
    return EqualizationPair(**{**pair.__dict__, "through": "ReLU", "clip_path": path, "clip_layer": layer_name(activation)})


def _only_consumer(node: fx.Node) -> fx.Node | None:
    """The one node that reads ``node``'s output, when nothing else does and it reads nothing else."""
    users = list(node.users)
    return users[0] if len(users) == 1 and tensor_args(users[0]) == [node] else None


def _with_reason(
    pair: EqualizationPair, activation: str | None, kinds: tuple[str, str], traced: fx.GraphModule, calls: dict[str, int], replaceable: bool = False
) -> EqualizationPair:
    """``pair`` with why it cannot be equalized through ``activation`` ("" if it can); ``replaceable``: its
    clipped ReLU could be replaced with a ReLU to equalize it (the reason then says so)."""
    reason = ""
    if kinds[0] != kinds[1]:
        # a conv's channels are dimension 1, a linear layer's inputs the last dimension: channel i of one is not input i of the other
        reason = (
            f"'{pair.first_path}' is a {_KIND_NAMES[kinds[0]]} and '{pair.second_path}' a {_KIND_NAMES[kinds[1]]}: a convolution's "
            "channels are dimension 1, a fully connected layer's inputs the last dimension, so rescaling would change the float output"
        )
    elif activation not in _SCALE_INVARIANT:
        name = fused_activation_name(activation)  # type: ignore[arg-type]
        reason = f"through a {name}: relu6(x / s) * s clips at 6 s, not at 6, so rescaling would change the float output"
        if replaceable:
            reason += " (relu6='relu' replaces the clip with a ReLU and equalizes the pair)"
    else:
        shared = [path for path in (pair.first_path, pair.batchnorm_path, pair.second_path) if path and calls.get(path, 0) > 1]
        if shared:
            reason = f"module '{shared[0]}' is called more than once: rescaling it would change its other calls"
        elif pair.batchnorm_path is not None and traced.get_submodule(pair.batchnorm_path).weight is None:
            reason = f"BatchNorm '{pair.batchnorm_path}' has no learnable scale (affine=False) to carry the rescaling exactly"
    return EqualizationPair(**{**pair.__dict__, "reason": reason})


def _equalization_scales(optimized: OptimizedNetwork, pairs: list[EqualizationPair], max_iterations: int, tolerance: float) -> dict[EqualizationPair, Tensor]:
    """The total scale of every pair, found by equalizing the optimized network's folded weights pair
    by pair until no scale moves by more than ``tolerance`` (relative)."""
    totals = {
        pair: torch.ones(optimized.fused(pair.first).layer.weight.shape[0], dtype=torch.float64, device=optimized.fused(pair.first).layer.weight.device)
        for pair in pairs
    }
    with torch.no_grad():
        for _ in range(max_iterations):
            largest_step = 0.0
            for pair in pairs:
                first, second = optimized.fused(pair.first).layer, optimized.fused(pair.second).layer
                r1 = output_channel_ranges(first.weight).double()
                r2 = input_channel_ranges(second.weight, _groups(second)).double()
                alive = (r1 > 0) & (r2 > 0)  # a dead channel has nothing to equalize
                scales = torch.where(alive, (r1 / r2.where(alive, torch.ones_like(r2))).sqrt(), torch.ones_like(r1))
                _scale_outputs(first, scales, ("weight", "bias"))
                _scale_inputs(second.weight, _groups(second), scales)
                totals[pair] *= scales
                largest_step = max(largest_step, float(scales.log().abs().max()))
            if largest_step < math.log1p(tolerance):
                break
    return totals


def _equalize(
    net: nn.Module, max_iterations: int = 100, tolerance: float = 1e-4, relu6: str = "keep"
) -> tuple[nn.Module, list[EqualizationPair], dict[EqualizationPair, Tensor]]:
    model = copy.deepcopy(net)
    optimized = optimize_network(model)
    pairs = equalization_pairs(model, optimized, relu6)
    replaced = {pair.first: pair for pair in pairs if pair.clip_path is not None}
    if replaced:
        originals = {pair.first: model.get_submodule(pair.clip_path) for pair in replaced.values()}
        for pair in replaced.values():
            model.set_submodule(pair.clip_path, nn.ReLU(inplace=bool(getattr(originals[pair.first], "inplace", False))))
        optimized = optimize_network(model)  # the layers before the replaced clips fuse a ReLU now
        pairs = []
        for pair in equalization_pairs(model, optimized, relu6):
            before = replaced.get(pair.first)
            if before is not None and pair.reason:  # a replacement that did not make the pair equalizable is undone
                model.set_submodule(before.clip_path, originals[pair.first])
            elif before is not None:
                pair = EqualizationPair(**{**pair.__dict__, "clip_path": before.clip_path, "clip_layer": before.clip_layer})
            pairs.append(pair)
    equalizable = [pair for pair in pairs if not pair.reason]
    totals = _equalization_scales(optimized, equalizable, max_iterations, tolerance)
    with torch.no_grad():
        for pair, scales in totals.items():
            if pair.batchnorm_path is not None:
                _scale_outputs(model.get_submodule(pair.batchnorm_path), scales, ("weight", "bias"))
            else:
                _scale_outputs(model.get_submodule(pair.first_path), scales, ("weight", "bias"))
            second = model.get_submodule(pair.second_path)
            _scale_inputs(second.weight, _groups(second), scales)
    return model, pairs, totals


def check_relu6(relu6: object) -> None:
    """Raise ``ValueError`` unless ``relu6`` is one of :data:`RELU6_CHOICES`.

    Example:
        >>> check_relu6("relu")
    """
    if relu6 not in RELU6_CHOICES:
        raise ValueError(f"relu6 must be 'keep' (leave pairs through a clipped ReLU alone) or 'relu' (replace the clip with a ReLU), got {relu6!r}")


def _report(pairs: list[EqualizationPair], totals: dict[EqualizationPair, Tensor]) -> pd.DataFrame:
    rows = []
    for pair in pairs:
        if pair.reason:
            rows.append((pair.name, "not equalized", pair.reason))
            continue
        scales = totals[pair]
        carrier = f"BatchNorm '{pair.batchnorm_path}'" if pair.batchnorm_path else f"'{pair.first_path}'"
        if pair.clip_path is not None:
            rows.append(
                (
                    pair.clip_layer,
                    "replaced",
                    f"clipped ReLU (ReLU6) '{pair.clip_path}' → ReLU, so that {pair.name} can be equalized: values above 6 are "
                    "no longer clipped, so the float output changes where they occur",
                )
            )
        rows.append(
            (
                pair.name,
                "equalized",
                f"through {pair.through}: {scales.numel()} channels of {carrier} divided and of '{pair.second_path}' "
                f"multiplied by scales from {float(scales.min()):.3g} to {float(scales.max()):.3g}",
            )
        )
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


def equalize_layers(
    net: nn.Module, report: bool = False, max_iterations: int = 100, tolerance: float = 1e-4, relu6: str = "keep"
) -> nn.Module | tuple[nn.Module, pd.DataFrame]:
    """Equalize the weight ranges of consecutive layers (MATLAB's ``equalizeLayers``); the float output
    does not change (unless ``relu6="relu"``).

    Args:
        net: The network (never modified).
        report: Also return what was equalized and what was not, and why.
        max_iterations: Passes over the pairs at the most (chains of pairs need several).
        tolerance: Stop when no scale changes by more than this (relative) in a pass.
        relu6: ``"keep"`` (default): pairs through a clipped ReLU (ReLU6) stay as they are, so the float
            output is unchanged. ``"relu"``: each clipped ReLU module between two layers that could
            otherwise be equalized becomes a ReLU and the pair is equalized; the float output then
            changes wherever a value exceeded 6 (measure the accuracy of the result).

    Returns:
        A copy of ``net`` (the same type) with equalized weights; with ``report=True``, ``(network,
        table)`` where the table has one row per pair of consecutive layers: ``Layer`` (``first →
        second``, optimized layer names), ``Change`` (``"equalized"`` or ``"not equalized"``) and
        ``Detail`` (the scales, or why not); with ``relu6="relu"`` also a ``"replaced"`` row (``Layer``:
        the clipped ReLU's layer name, its module path in ``Detail``) before each pair whose clip was replaced.

    Raises:
        TypeError: ``net`` is not an ``nn.Module``.
        ValueError: ``relu6`` is not ``"keep"`` or ``"relu"``, or a bad ``max_iterations``/``tolerance``.
        NetworkGraphError: The network cannot be traced or holds a layer dlqnb cannot handle.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
        >>> type(equalize_layers(net)).__name__
        'Sequential'
        >>> clipped = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 4, 1))
        >>> replaced, table = equalize_layers(clipped, report=True, relu6="relu")
        >>> table.Change.tolist(), type(replaced[1]).__name__
        (['replaced', 'equalized'], 'ReLU')
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if max_iterations < 1 or tolerance <= 0:
        raise ValueError(f"max_iterations must be >= 1 and tolerance > 0, got {max_iterations} and {tolerance}")
    check_relu6(relu6)
    model, pairs, totals = _equalize(net, max_iterations, tolerance, relu6)
    return (model, _report(pairs, totals)) if report else model
