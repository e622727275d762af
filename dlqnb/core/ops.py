"""What every operation does: the one table that graph capture, calibration, the quantization plan,
emulation, export and pruning ask.

Each node of a traced network is sorted once, by :func:`op_traits`, into an :class:`OpTraits`:

* **values** — how the op treats values: ``"moves"`` (its output holds some of its inputs' values,
  rearranged, selected or joined: max pooling, flatten, view, reshape, permute, transpose, concatenation,
  split, chunk, getitem, dropout at inference), ``"computes"`` (new values), ``"shape"`` (a shape query
  such as ``size``, ``dim`` or ``shape``: no tensor, not a layer), ``"input"``, ``"constant"`` (a
  parameter used directly in ``forward``) or ``"output"``;
* **channels** — what pruning needs: ``"keeps"`` (per-channel: channel *c* out depends on channel *c*
  in), ``"joins"`` (channel concatenation), ``"ties"`` (element-wise with another tensor: both sides'
  channels must stay aligned), ``"consumes"`` (conv/linear: channels become input channels),
  ``"flattens"`` (flatten into features) or ``"opaque"`` (anything else stops propagation);
* **int8_on** — the targets (``"gpu"``, ``"cpu"``) on which it runs in int8;
* **keeps_type** — whether an int8 op's output keeps its input's type (values that stay on the input's
  grid: max pooling, reshapes, dropout) or is requantized to its own calibrated type.

The table also holds the module kinds the other stages ask about (:data:`QUANTIZABLE_TYPES`,
:data:`BATCHNORM_TYPES` that fold, :func:`unsupported_reason`, :func:`layer_kind`), the activations a
conv/linear layer fuses and the targets on which the fused layer still runs in int8
(:data:`FUSED_ACTIVATIONS`, :func:`fused_activation_runs_int8`), and the one reading of a node's module
(:func:`called_module`) and of concatenation and flatten arguments (:func:`concat_dim`,
:func:`flatten_start_dim`); pruning keys its channel handlers by **channels**
(:mod:`dlqnb.pruning.handlers`).

Example:
    >>> import torch.fx as fx
    >>> from torch import nn
    >>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()))
    >>> [(n.name, op_traits(gm, n).kind) for n in gm.graph.nodes]
    [('input_1', 'input'), ('_0', 'conv'), ('_1', 'relu'), ('_2', 'max_pool'), ('_3', 'flatten'), ('output', 'output')]
    >>> sorted(op_traits(gm, list(gm.graph.nodes)[3]).int8_on)
    ['cpu', 'gpu']
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

#: Per-channel ops that map 0 to something else: a channel zeroed before them is not zero after.
SHIFTS_ZERO = frozenset({"batch_norm", "sigmoid", "add_constant"})

__all__ = [
    "BATCHNORM_TYPES",
    "CONVOLUTION_TYPES",
    "Channels",
    "FUSED_ACTIVATIONS",
    "QUANTIZABLE_TYPES",
    "SHIFTS_ZERO",
    "FusedActivation",
    "OpTraits",
    "activation_kind",
    "called_module",
    "concat_dim",
    "conv_or_linear",
    "flatten_start_dim",
    "fusable_activation",
    "fused_activation_name",
    "fused_activation_runs_int8",
    "global_average_pool",
    "is_batchnorm",
    "is_convolution",
    "layer_kind",
    "mutates_input",
    "op_traits",
    "tensor_args",
    "unsupported_reason",
]

Values = Literal["moves", "computes", "shape", "input", "constant", "output"]
Channels = Literal["keeps", "joins", "ties", "consumes", "flattens", "opaque"]
BOTH = frozenset({"gpu", "cpu"})
NONE: frozenset[str] = frozenset()


@dataclass(frozen=True)
class OpTraits:
    """What one op does (see the module docstring)."""

    kind: str
    values: Values = "computes"
    channels: Channels = "opaque"
    int8_on: frozenset[str] = NONE
    keeps_type: bool = False

    @property
    def listed_as_quantized(self) -> bool:
        """Whether MATLAB's ``quantizationDetails`` lists the op among the quantized layers when it runs
        in int8: ops that compute, and max pooling; not ops that only move values (concatenation,
        dropout, flatten, reshapes)."""
        return self.values == "computes" or self.kind == "max_pool"

    @property
    def is_layer(self) -> bool:
        """Whether the op is a network layer (it produces a tensor: not a shape query, constant or output)."""
        return self.values in ("moves", "computes", "input")


_INPUT = OpTraits("input", "input", "keeps")
_OUTPUT = OpTraits("output", "output", "opaque")
_CONSTANT = OpTraits("constant", "constant", "opaque")
_SHAPE = OpTraits("shape", "shape", "keeps")
_CONV = OpTraits("conv", "computes", "consumes", BOTH)
_LINEAR = OpTraits("linear", "computes", "consumes", BOTH)
_RELU = OpTraits("relu", "computes", "keeps", BOTH)
_MAX_POOL = OpTraits("max_pool", "moves", "keeps", BOTH, keeps_type=True)
_GLOBAL_AVG_POOL = OpTraits("global_avg_pool", "computes", "keeps", frozenset({"cpu"}))
_CONCAT = OpTraits("concat", "moves", "joins", BOTH)
_ADD = OpTraits("add", "computes", "ties", BOTH)
_DROPOUT = OpTraits("dropout", "moves", "keeps", BOTH, keeps_type=True)
_FLATTEN = OpTraits("flatten", "moves", "flattens", BOTH, keeps_type=True)


# The module kinds the rest of dlqnb asks about. Lazy BatchNorm and conv modules become these classes once
# they have seen an input, so they need no entry of their own.
CONVOLUTION_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Layers with weights that dlqnb quantizes (and folds a following BatchNorm into).
QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (*CONVOLUTION_TYPES, nn.Linear)
#: BatchNorm layers that fold into the conv/linear before them. SyncBatchNorm is BatchNorm whose training
#: statistics are gathered across processes; at inference it computes exactly what BatchNorm does.
BATCHNORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# Layers with learnables or state that dlqnb has no int8 model for, and says so (the first match gives the reason).
_UNSUPPORTED: tuple[tuple[type[nn.Module] | tuple[type[nn.Module], ...], str], ...] = (
    (nn.RNNBase, "recurrent layers are not supported"),
    (nn.MultiheadAttention, "attention layers are not supported"),
    (nn.Embedding, "embedding layers are not supported"),
    (nn.EmbeddingBag, "embedding layers are not supported"),
    ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), "transposed convolutions are not supported"),
)


def called_module(gm: fx.GraphModule, node: fx.Node | None) -> nn.Module | None:
    """The module a ``call_module`` node calls; None for any other node (or None).

    Example:
        >>> import torch.fx as fx
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
        >>> [type(called_module(gm, n)).__name__ for n in gm.graph.nodes]
        ['NoneType', 'Conv2d', 'ReLU', 'NoneType']
    """
    return gm.get_submodule(str(node.target)) if node is not None and node.op == "call_module" else None


def is_convolution(module: nn.Module | None) -> bool:
    """Whether a module is a 1-D, 2-D or 3-D convolution (not a transposed one).

    Example:
        >>> is_convolution(nn.Conv1d(2, 3, 1)), is_convolution(nn.Linear(2, 3))
        (True, False)
    """
    return isinstance(module, CONVOLUTION_TYPES)


def is_batchnorm(module: nn.Module | None) -> bool:
    """Whether a module is a BatchNorm layer that folds into the conv/linear before it.

    Example:
        >>> is_batchnorm(nn.BatchNorm3d(4)), is_batchnorm(nn.LayerNorm(4))
        (True, False)
    """
    return isinstance(module, BATCHNORM_TYPES)


def layer_kind(module: nn.Module | None) -> Literal["conv", "linear"] | None:
    """``"conv"`` or ``"linear"`` for a quantizable layer or a fused layer wrapping one, else None.

    Example:
        >>> layer_kind(nn.Conv3d(2, 3, 1)), layer_kind(nn.Linear(2, 3)), layer_kind(nn.ReLU())
        ('conv', 'linear', None)
    """
    traits = conv_or_linear(module)
    return None if traits is None else traits.kind  # type: ignore[return-value]


def unsupported_reason(module: nn.Module | None) -> str | None:
    """Why dlqnb cannot quantize a network holding this module, or None when it can.

    Example:
        >>> unsupported_reason(nn.LSTM(2, 3)), unsupported_reason(nn.Conv2d(2, 3, 1))
        ('recurrent layers are not supported', None)
    """
    return next((reason for kind, reason in _UNSUPPORTED if isinstance(module, kind)), None)


def concat_dim(gm: fx.GraphModule, node: fx.Node) -> int | None:
    """The dimension a concatenation node joins along (as written: it may be negative), else None.

    Example:
        >>> import torch
        >>> gm = fx.symbolic_trace(lambda x: torch.cat([x, x], dim=1))
        >>> [concat_dim(gm, n) for n in gm.graph.nodes]
        [None, 1, None]
    """
    if op_traits(gm, node).kind != "concat":
        return None
    if node.op == "call_module":
        return 1  # dlqnb's depth concatenation layer joins channels
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return int(dim)


def flatten_start_dim(gm: fx.GraphModule, node: fx.Node) -> int | None:
    """The first dimension a flatten node folds into its last (as written), or None when the node is
    not a flatten or stops before the last dimension.

    Example:
        >>> import torch
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.Flatten(), nn.Flatten(0, 1)))
        >>> [flatten_start_dim(gm, n) for n in gm.graph.nodes]
        [None, 1, None, None]
    """
    if op_traits(gm, node).kind != "flatten":
        return None
    module = called_module(gm, node)
    if module is not None:
        start, end = module.start_dim, module.end_dim
    else:
        positional = list(node.args[1:3])
        defaults = (0, -1)  # torch.flatten's and Tensor.flatten's
        start, end = (positional[i] if i < len(positional) else node.kwargs.get(key, defaults[i]) for i, key in enumerate(("start_dim", "end_dim")))
    return int(start) if int(end) == -1 else None


def _moves(kind: str, channels: Channels = "opaque") -> OpTraits:
    return OpTraits(kind, "moves", channels, BOTH, keeps_type=True)


def _float(kind: str, channels: Channels = "opaque") -> OpTraits:
    return OpTraits(kind, "computes", channels)


# Modules, by type (the first match wins: ReLU6 before ReLU, as ReLU6 is not a ReLU subclass in torch
# but Hardtanh is ReLU6's base).
_MODULES: list[tuple[tuple[type[nn.Module], ...], OpTraits]] = [
    (CONVOLUTION_TYPES, _CONV),
    ((nn.Linear,), _LINEAR),
    ((nn.Hardsigmoid, nn.Sigmoid), _float("sigmoid", "keeps")),
    ((nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU, nn.Tanh, nn.ELU, nn.Mish), _float("activation", "keeps")),
    ((nn.ReLU,), _RELU),
    ((nn.modules.batchnorm._BatchNorm,), _float("batch_norm", "keeps")),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d), _MAX_POOL),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d), _float("avg_pool", "keeps")),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity), _DROPOUT),
    ((nn.Flatten,), _FLATTEN),
    ((nn.Unflatten,), _moves("reshape")),
    ((nn.Upsample,), _float("resize", "keeps")),
    ((nn.Softmax, nn.LogSoftmax, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm), _float("normalization")),
]

_FUNCTIONS: dict[Any, OpTraits] = {
    F.relu: _RELU,
    torch.relu: _RELU,
    torch.relu_: _RELU,
    F.max_pool1d: _MAX_POOL,
    F.max_pool2d: _MAX_POOL,
    F.max_pool3d: _MAX_POOL,
    F.adaptive_max_pool2d: _MAX_POOL,
    torch.cat: _CONCAT,
    torch.concat: _CONCAT,
    torch.flatten: _FLATTEN,
    torch.reshape: _moves("reshape"),
    torch.squeeze: _moves("reshape", "keeps"),
    torch.unsqueeze: _moves("reshape", "keeps"),
    torch.permute: _moves("permute"),
    torch.transpose: _moves("permute"),
    torch.split: _moves("split"),
    torch.chunk: _moves("split"),
    torch.narrow: _moves("split"),
    operator.getitem: _moves("getitem"),
    F.dropout: _DROPOUT,
    torch.nn.functional.avg_pool1d: _float("avg_pool", "keeps"),
    torch.nn.functional.avg_pool2d: _float("avg_pool", "keeps"),
    torch.nn.functional.avg_pool3d: _float("avg_pool", "keeps"),
    F.adaptive_avg_pool1d: _float("avg_pool", "keeps"),
    F.adaptive_avg_pool2d: _float("avg_pool", "keeps"),
    F.interpolate: _float("resize", "keeps"),
    F.relu6: _float("activation", "keeps"),
    F.hardtanh: _float("activation", "keeps"),
    F.leaky_relu: _float("activation", "keeps"),
    F.silu: _float("activation", "keeps"),
    F.hardswish: _float("activation", "keeps"),
    F.hardsigmoid: _float("sigmoid", "keeps"),
    F.gelu: _float("activation", "keeps"),
    torch.sigmoid: _float("sigmoid", "keeps"),
    F.sigmoid: _float("sigmoid", "keeps"),
    torch.tanh: _float("activation", "keeps"),
    F.batch_norm: _float("batch_norm", "keeps"),
    getattr: _SHAPE,  # x.shape
}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}

_METHODS: dict[str, OpTraits] = {
    "relu": _RELU,
    "relu_": _RELU,
    "view": _moves("reshape"),
    "reshape": _moves("reshape"),
    "flatten": _FLATTEN,
    "contiguous": _moves("contiguous", "keeps"),
    "squeeze": _moves("reshape", "keeps"),
    "unsqueeze": _moves("reshape", "keeps"),
    "permute": _moves("permute"),
    "transpose": _moves("permute"),
    "split": _moves("split"),
    "chunk": _moves("split"),
    "narrow": _moves("split"),
    "unbind": _moves("split"),
    "size": _SHAPE,
    "dim": _SHAPE,
    "numel": _SHAPE,
    "sigmoid": _float("sigmoid", "keeps"),
    "tanh": _float("activation", "keeps"),
    "add": _ADD,
    "add_": _ADD,
}
_IN_PLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def conv_or_linear(module: nn.Module | None) -> OpTraits | None:
    """The traits of a conv/linear module (including dlqnb's fused layers), else None."""
    layer = getattr(module, "layer", module)
    if is_convolution(layer):
        return _CONV
    if isinstance(layer, nn.Linear):
        return _LINEAR
    return None


def tensor_args(node: fx.Node) -> list[fx.Node]:
    """The nodes among a node's arguments (lists and keyword arguments included), in order."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


def global_average_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether a node averages each channel over all its spatial positions: ``AdaptiveAvgPool2d(1)``
    (module or function) or ``mean`` over the last two dimensions of an N×C×H×W tensor."""
    if node.op == "call_module":
        module = called_module(gm, node)
        return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1), [1, 1])
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    if (node.op == "call_method" and node.target == "mean") or (node.op == "call_function" and node.target is torch.mean):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)
        shape = _shape(node.args[0])
        rank = len(shape) if shape is not None else 4
        return rank == 4 and sorted(d % 4 if isinstance(d, int) else -1 for d in dims) == [2, 3]
    return False


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def op_traits(gm: fx.GraphModule, node: fx.Node) -> OpTraits:
    """The traits of one node of a traced network (see the module docstring)."""
    if node.op == "placeholder":
        return _INPUT
    if node.op == "output":
        return _OUTPUT
    if node.op == "get_attr":
        return _CONSTANT
    if global_average_pool(gm, node):
        return _GLOBAL_AVG_POOL
    if node.op == "call_module":
        module = called_module(gm, node)
        layer = conv_or_linear(module)
        if layer is not None:
            return layer
        if getattr(module, "dlqnb_op", None) == "concat":  # dlqnb's depth concatenation layer
            return _CONCAT
        for types, traits in _MODULES:
            if isinstance(module, types):
                if isinstance(module, nn.Hardtanh) and (module.min_val, module.max_val) == (0.0, 6.0) or isinstance(module, nn.ReLU6):
                    return OpTraits("relu6", "computes", "keeps")
                return traits
        return _float(type(module).__name__)
    tensors = tensor_args(node)
    if node.op == "call_function":
        if node.target in _ADD_FUNCTIONS or node.target in _MUL_FUNCTIONS:
            both_tensors = len([a for a in node.args[:2] if isinstance(a, fx.Node)]) == 2
            if node.target in _ADD_FUNCTIONS:
                return _ADD if both_tensors else _float("add_constant", "keeps")
            return _float("mul", "ties") if both_tensors else _float("mul_constant", "keeps")
        traits = _FUNCTIONS.get(node.target)
        if traits is not None:
            return traits
        return _float(getattr(node.target, "__name__", str(node.target)), "opaque")
    if node.op == "call_method":
        if node.target == "mean":
            return _float("mean")
        traits = _METHODS.get(str(node.target))
        if traits is not None:
            if traits.kind == "add" and len(tensors) < 2:
                return _float("add_constant", "keeps")
            return traits
        if node.target in ("mul", "mul_"):
            return _float("mul", "ties") if len(tensors) == 2 else _float("mul_constant", "keeps")
        return _float(str(node.target))
    return _float(str(node.target))


def fusable_activation(gm: fx.GraphModule, node: fx.Node, source: fx.Node) -> nn.Module | None:
    """The activation ``node`` applies to ``source`` that a conv/linear layer can fuse (ReLU, ReLU6 or
    ``hardtanh(0, 6)``, LeakyReLU; module, function or method form), as a module, or None."""
    if not node.args or node.args[0] is not source:
        return None
    module = called_module(gm, node)
    if module is not None:
        if isinstance(module, nn.ReLU6):
            return nn.ReLU6(inplace=True)
        if isinstance(module, nn.ReLU):
            return nn.ReLU(inplace=True)
        if isinstance(module, nn.LeakyReLU):
            return nn.LeakyReLU(module.negative_slope, inplace=True)
        if isinstance(module, nn.Hardtanh) and (module.min_val, module.max_val) == (0.0, 6.0):
            return nn.ReLU6(inplace=True)
        return None
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu, torch.relu_):
            return nn.ReLU(inplace=True)
        if node.target is F.relu6:
            return nn.ReLU6(inplace=True)
        if node.target is F.leaky_relu:
            slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
            return nn.LeakyReLU(float(slope), inplace=True)
        return None
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return nn.ReLU(inplace=True)
    return None


@dataclass(frozen=True)
class FusedActivation:
    """An activation a conv/linear layer can fuse, and where the fused layer still runs in int8.

    Attributes:
        kind: Its name in :class:`~dlqnb.core.graph.OptimizedLayer` (``"relu"``, ``"relu6"``, ``"leaky_relu"``).
        name: How messages name it (MATLAB's layer names: ``"leaky ReLU"``, ``"clipped ReLU (ReLU6)"``).
        int8_on: The targets on which a layer fused with it runs in int8.
    """

    kind: str
    name: str
    int8_on: frozenset[str]


# cuDNN's int8 convolutions fuse only ReLU: a layer fused with a leaky or clipped ReLU stays float on the GPU.
FUSED_ACTIVATIONS: dict[str, FusedActivation] = {
    "relu": FusedActivation("relu", "ReLU", BOTH),
    "relu6": FusedActivation("relu6", "clipped ReLU (ReLU6)", frozenset({"cpu"})),
    "leaky_relu": FusedActivation("leaky_relu", "leaky ReLU", frozenset({"cpu"})),
}


def fused_activation_runs_int8(activation: str | None, target: str) -> bool:
    """Whether a conv/linear layer fused with ``activation`` (None: no activation) runs in int8 on ``target``.

    Example:
        >>> fused_activation_runs_int8("relu", "gpu"), fused_activation_runs_int8("leaky_relu", "gpu")
        (True, False)
        >>> fused_activation_runs_int8("relu6", "cpu"), fused_activation_runs_int8(None, "gpu")
        (True, True)
    """
    return activation is None or target in FUSED_ACTIVATIONS[activation].int8_on


def fused_activation_name(activation: str) -> str:
    """How messages name a fusable activation.

    Example:
        >>> fused_activation_name("relu6")
        'clipped ReLU (ReLU6)'
    """
    return FUSED_ACTIVATIONS[activation].name


def activation_kind(activation: nn.Module | None) -> str | None:
    """The :data:`FUSED_ACTIVATIONS` key of a module :func:`fusable_activation` returned (None for None).

    Example:
        >>> activation_kind(nn.LeakyReLU(0.1)), activation_kind(nn.ReLU6()), activation_kind(None)
        ('leaky_relu', 'relu6', None)
    """
    if activation is None:
        return None
    if isinstance(activation, nn.ReLU6):
        return "relu6"
    if isinstance(activation, nn.LeakyReLU):
        return "leaky_relu"
    return "relu"


def mutates_input(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` writes into its first input tensor (in-place ops)."""
    if node.op == "call_module":
        return bool(getattr(called_module(gm, node), "inplace", False))
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.target in _IN_PLACE_FUNCTIONS or bool(node.kwargs.get("inplace")) or name.endswith("_")
    if node.op == "call_method":
        return str(node.target).endswith("_")
    return False
