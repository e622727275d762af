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

__all__ = ["SHIFTS_ZERO", "OpTraits", "conv_or_linear", "fusable_activation", "global_average_pool", "mutates_input", "op_traits", "tensor_args"]

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


def _moves(kind: str, channels: Channels = "opaque") -> OpTraits:
    return OpTraits(kind, "moves", channels, BOTH, keeps_type=True)


def _float(kind: str, channels: Channels = "opaque") -> OpTraits:
    return OpTraits(kind, "computes", channels)


# Modules, by type (the first match wins: ReLU6 before ReLU, as ReLU6 is not a ReLU subclass in torch
# but Hardtanh is ReLU6's base).
_MODULES: list[tuple[tuple[type[nn.Module], ...], OpTraits]] = [
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), _CONV),
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


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def conv_or_linear(module: nn.Module | None) -> OpTraits | None:
    """The traits of a conv/linear module (including dlqnb's fused layers), else None."""
    layer = getattr(module, "layer", module)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
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
        module = gm.get_submodule(node.target)
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
        module = gm.get_submodule(node.target)
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
    module = _module(gm, node)
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


def mutates_input(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` writes into its first input tensor (in-place ops)."""
    if node.op == "call_module":
        return bool(getattr(_module(gm, node), "inplace", False))
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.target in _IN_PLACE_FUNCTIONS or bool(node.kwargs.get("inplace")) or name.endswith("_")
    if node.op == "call_method":
        return str(node.target).endswith("_")
    return False
