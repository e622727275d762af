"""The statistics recorder: runs the optimized graph over calibration data and records, for every
node that computes, the range and MSB counts of its output.

Each computing layer's output is read once, by one C++ pass on all cores
(:mod:`dlqnb.calibration.kernel`), before the next layer runs (so in-place ops cannot overwrite it);
layers that only rearrange or join values (concatenation, flatten, reshape, dropout at inference) get
the union of their inputs' statistics (:func:`derivable_sources`) without reading their outputs at all.

Example:
    >>> import torch, torch.nn as nn
    >>> from dlqnb.core.graph import optimize_network
    >>> module = optimize_network(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())).module
    >>> stats = {}
    >>> recorder = StatsRecorder(module, derivable_sources(module), stats)
    >>> _ = recorder.run(torch.rand(2, 1, 5, 5))
    >>> sorted(stats), sorted(recorder.tensor_nodes)
    (['0', 'input_1'], ['0', '1', 'input_1'])
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch import Tensor

from dlqnb.calibration.observers import RangeStats
from dlqnb.core.graph import layer_name
from dlqnb.core.ops import mutates_input, op_traits, tensor_args
from dlqnb.errors import CalibrationError

__all__ = ["StatsRecorder", "derivable_sources"]


class StatsRecorder(fx.Interpreter):
    """Runs the optimized graph, recording each computing node's output as soon as it exists.

    A node that only moves values (:mod:`dlqnb.core.ops`) and whose tensor inputs are all recorded
    activations is not read at all: its statistics are the union of its inputs'. A candidate whose
    inputs turn out not to be activations (a tuple, a parameter) is recorded like any other node.

    Args:
        module: The optimized graph.
        candidates: Nodes whose statistics may be derived, with their sources (:func:`derivable_sources`).
        stats: Where the statistics go, by node name (updated in place, batch after batch).

    Attributes:
        tensor_nodes: Every node that produced a float tensor.
        batch_index: The batch being run (error messages name it).
        batch_shape: Its shape.
    """

    def __init__(self, module: fx.GraphModule, candidates: dict[str, list[str]], stats: dict[str, RangeStats]) -> None:
        super().__init__(module, garbage_collect_values=True)
        self.candidates = candidates
        self.stats = stats
        self.tensor_nodes: set[str] = set()
        self.batch_index = 0
        self.batch_shape: tuple[int, ...] = ()

    def run_node(self, n: fx.Node) -> Any:
        name = layer_name(n)
        try:
            out = super().run_node(n)
        except CalibrationError:
            raise
        except Exception as error:
            raise CalibrationError(
                f"layer '{name}' failed on batch {self.batch_index} of input shape {self.batch_shape}: {error}"
            ) from error
        if n.op in ("output", "get_attr") or not isinstance(out, Tensor) or not out.is_floating_point():
            return out
        self.tensor_nodes.add(name)
        sources = self.candidates.get(name)
        if sources and all(source in self.tensor_nodes for source in sources):
            return out  # derived from its sources' statistics
        stats = self.stats.setdefault(name, RangeStats.empty())
        stats.update(out)
        if stats.histogram.nonfinite:
            raise CalibrationError(
                f"layer '{name}' produced NaN or Inf activations on batch {self.batch_index}; "
                "the network overflows float32 on this data"
            )
        return out


def derivable_sources(module: fx.GraphModule) -> dict[str, list[str]]:
    """Nodes that only move values (by :mod:`dlqnb.core.ops`) with the tensor inputs whose statistics they
    may be derived from, in network order; inputs that an in-place op overwrites are not usable.

    Example:
        >>> import torch.nn as nn
        >>> from dlqnb.core.graph import optimize_network
        >>> derivable_sources(optimize_network(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())).module)
        {'1': ['0']}
    """
    mutated = {
        layer_name(n.args[0]) for n in module.graph.nodes if n.args and isinstance(n.args[0], fx.Node) and mutates_input(module, n)
    }
    derivable: dict[str, list[str]] = {}
    for node in module.graph.nodes:
        if op_traits(module, node).values != "moves":
            continue
        sources = [s for s in tensor_args(node) if op_traits(module, s).is_layer]
        if sources and not any(layer_name(source) in mutated for source in sources):
            derivable[layer_name(node)] = [layer_name(source) for source in sources]
    return derivable
