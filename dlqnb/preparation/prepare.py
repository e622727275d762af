"""Prepare a network for quantization (MATLAB's ``prepareNetwork``): the same float function in a form
that quantizes better, and a table of what changed.

:func:`prepare_network` makes, from a traced copy of the network:

1. **BatchNorm folding.** A BatchNorm that follows a convolution or fully connected layer (and is that
   layer's only consumer) is folded into it: the layer takes the folded weights and bias that the
   optimized network computes (:func:`dlqnb.core.graph.optimize_network`, the one place dlqnb folds
   BatchNorm) and the BatchNorm layer is removed.
2. **Replacement of layers with no int8 form.** A BatchNorm2d/3d that follows no convolution computes
   in float on every target (:mod:`dlqnb.core.ops`); it is replaced by its exact equivalent, a 1×1
   depthwise convolution with the BatchNorm's per-channel scale and shift, which runs in int8.
   A BatchNorm1d is kept (its input may be N×C, which a convolution does not take). Nothing else in the
   op table has an exact int8 equivalent: a clipped ReLU (ReLU6) clips where a ReLU does not (``relu6="relu"``
   replaces one anyway where that lets a pair be equalized, changing the float output), average
   pooling's 1/k² weights are not powers of two in general, and global average pooling on the GPU target
   has no int8 layer at all, so they stay as they are.
3. **Equalization** of consecutive layers (:func:`~dlqnb.preparation.equalization.equalize_layers`).

The float output does not change (beyond float rounding; unless ``relu6="relu"``), and the prepared network quantizes with
:class:`~dlqnb.DLQuantizer` like any other. Layers keep their names (``conv1`` stays ``conv1``; a
replaced BatchNorm keeps its name), so the optimized layers of the prepared network read like the
original's without the folded BatchNorms. The class names and input size recorded on the network carry
over.

Example:
    >>> import torch, torchvision
    >>> net = torchvision.models.resnet18(num_classes=3).eval()
    >>> prepared, changes = prepare_network(net, report=True)
    >>> changes.Change.value_counts().to_dict()
    {'folded': 20, 'equalized': 8}
    >>> x = torch.randn(1, 3, 32, 32)
    >>> bool(torch.allclose(prepared(x), net(x), rtol=1e-4, atol=1e-4))
    True
"""

from __future__ import annotations

import copy
import warnings

import pandas as pd
import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from dlqnb.core.capture import CaptureWarning
from dlqnb.core.graph import check_materialized, layer_name, optimize_network, trace_network
from dlqnb.core.ops import called_module, is_batchnorm
from dlqnb.models.networks import network_metadata, set_metadata
from dlqnb.preparation.equalization import CHANGE_COLUMNS, check_relu6, equalize_layers, module_call_counts

__all__ = ["prepare_network"]

# Batch norms a depthwise convolution of the same rank replaces (BatchNorm1d's input may be N×C).
_DEPTHWISE = {nn.BatchNorm2d: nn.Conv2d, nn.BatchNorm3d: nn.Conv3d}


def _fold_batchnorms(gm: fx.GraphModule) -> list[tuple[str, str, str]]:
    """Fold every BatchNorm that the optimized network folds, in place; the changes made."""
    optimized = optimize_network(gm)
    by_name = {layer_name(node): node for node in gm.graph.nodes}
    calls = module_call_counts(gm)
    changes = []
    for layer in optimized.layers.values():
        members = [by_name[member] for member in layer.members]
        batchnorm = next((member for member in members[1:] if is_batchnorm(called_module(gm, member))), None)
        if batchnorm is None:
            continue
        source = members[0]
        if calls[str(source.target)] > 1:  # its other calls have no BatchNorm after them
            changes.append((layer_name(batchnorm), "not folded", f"'{layer_name(source)}' is called more than once"))
            continue
        folded = copy.deepcopy(optimized.fused(layer.name).layer)
        folded.requires_grad_(True)
        gm.set_submodule(str(source.target), folded)
        batchnorm.replace_all_uses_with(source)
        gm.graph.erase_node(batchnorm)
        changes.append((layer_name(batchnorm), "folded", f"into '{layer_name(source)}' ({type(folded).__name__}): weights and bias scaled and shifted by its running statistics"))
    return changes


def _replace_batchnorms(gm: fx.GraphModule) -> list[tuple[str, str, str]]:
    """Replace each BatchNorm left by a 1×1 depthwise convolution, in place; the changes made."""
    changes = []
    replaced: set[str] = set()
    for node in gm.graph.nodes:
        module = called_module(gm, node)
        if not is_batchnorm(module) or str(node.target) in replaced:
            continue
        conv_type = next((conv for bn, conv in _DEPTHWISE.items() if isinstance(module, bn)), None)
        if conv_type is None or module.running_mean is None:
            why = "it has no running statistics" if conv_type is not None else f"{type(module).__name__}'s input may be N×C, which a convolution does not take"
            changes.append((layer_name(node), "kept", f"computes in float: {why}"))
            continue
        channels = module.num_features
        # the BatchNorm's dtype: fuse_conv_bn_eval gives the fused layer the convolution's
        identity = conv_type(channels, channels, 1, groups=channels, bias=False).to(module.running_mean.device, module.running_mean.dtype)
        with torch.no_grad():
            identity.weight.fill_(1.0)
        depthwise = fuse_conv_bn_eval(identity.eval(), module.eval())
        depthwise.requires_grad_(True)
        gm.set_submodule(str(node.target), depthwise)
        replaced.add(str(node.target))
        changes.append(
            (layer_name(node), "replaced", f"{type(module).__name__} (float on every target) → 1×1 depthwise {conv_type.__name__} with its scale and shift (int8)")
        )
    return changes


def prepare_network(net: nn.Module, report: bool = False, relu6: str = "keep") -> nn.Module | tuple[nn.Module, pd.DataFrame]:
    """Fold batch norms, replace layers with no int8 form, equalize (MATLAB's ``prepareNetwork``).

    Args:
        net: The network (never modified).
        report: Also return the table of changes.
        relu6: What equalization does with a pair through a clipped ReLU (ReLU6)
            (:func:`~dlqnb.preparation.equalization.equalize_layers`): ``"keep"`` it (the prepared
            network computes what ``net`` computes) or replace the clip with a ``"relu"`` (it then does
            not where a value exceeded 6).

    Returns:
        The prepared network (a ``torch.fx.GraphModule`` in eval mode that computes what ``net``
        computes, with ``relu6="keep"``); with ``report=True``, ``(network, changes)`` where ``changes`` has one row per change:
        ``Layer`` (a network layer, or ``first → second`` optimized layers for equalization),
        ``Change`` (``"folded"``, ``"replaced"`` (a BatchNorm by a depthwise convolution, or with
        ``relu6="relu"`` a clipped ReLU by a ReLU), ``"equalized"``; ``"not folded"``, ``"kept"``,
        ``"not equalized"`` where a step was left out) and ``Detail`` (what, or why not).

    Raises:
        TypeError: ``net`` is not an ``nn.Module``.
        ValueError: ``relu6`` is not ``"keep"`` or ``"relu"``.
        NetworkGraphError: The network cannot be traced, holds a layer dlqnb cannot handle or has
            parameters on the meta device.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> prepared, changes = prepare_network(net, report=True)
        >>> changes.values.tolist()[0][:2], [type(m).__name__ for m in prepared.children()]
        (['1', 'folded'], ['Conv2d', 'ReLU'])
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    check_relu6(relu6)
    check_materialized(net)
    gm = trace_network(copy.deepcopy(net).eval())
    with warnings.catch_warnings():  # trace_network has said already which submodules are kept whole
        warnings.simplefilter("ignore", CaptureWarning)
        changes = _fold_batchnorms(gm)
        changes += _replace_batchnorms(gm)
        gm.delete_all_unused_submodules()
        gm.graph.lint()
        gm.recompile()
        prepared, equalized = equalize_layers(gm, report=True, relu6=relu6)
    metadata = network_metadata(net)
    set_metadata(prepared, metadata["class_names"], metadata["input_size"])
    table = pd.concat([pd.DataFrame(changes, columns=CHANGE_COLUMNS), equalized], ignore_index=True)
    return (prepared.eval(), table) if report else prepared.eval()
