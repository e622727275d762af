"""Empirical bias correction: restore each quantized layer's mean output per channel (AIMET's recipe).

Rounding weights and activations to 8 bits shifts the mean of a layer's output when the rounding errors
do not cancel (weights that all round the same way, inputs that are all positive). For every quantized
conv/linear layer :func:`empirical_bias_corrections` runs the float network and the emulated int8
network (:meth:`DLQuantizer.quantize`) on the same data and takes, per output channel, the mean of
(quantized − float) of the layer's **pre-activation** output (before its fused ReLU), over the images
and every spatial position. That mean is the correction: the plan subtracts it from the layer's float
bias before coding it (:class:`dlqnb.plan.types.PlanOptions`), so the emulation and the exported model
both add the corrected bias.

**Order.** With ``sequential=True`` (the default) the layers are corrected one at a time in network
order, and each layer is measured on the emulated network that already carries the corrections of the
layers before it: a layer then only makes up for its own bias, not for one its inputs no longer have.
That costs about two runs of the emulated network, not one per layer: the network is run node by node
over all the data at once (:func:`_corrected_layer_by_layer`), each quantized layer once with its
uncorrected bias to measure it and once corrected to feed the layers after it. The price is memory: the
activations of all the images at the network's widest point are held at once (a few hundred images are
plenty for a mean). With ``sequential=False`` every layer is measured in one ordinary pass over the
uncorrected network (later layers' corrections then also include the shift of earlier layers that their
own corrections remove).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from dlqnb import DLQuantizer
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 1)).eval()
    >>> q = DLQuantizer(net)
    >>> x = torch.rand(4, 1, 8, 8)
    >>> _ = q.calibrate(x, progress=False)
    >>> corrections = empirical_bias_corrections(q, x, progress=False)
    >>> sorted(corrections), len(corrections["0_1"])
    (['0_1', '2'], 2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from tqdm.auto import tqdm

from dlqnb.core.batches import iter_batches
from dlqnb.emulation.network import EmulatedLayer
from dlqnb.errors import DataError
from dlqnb.plan.builder import QuantizationPlan, corrected_layer_plan

if TYPE_CHECKING:
    from dlqnb.core.numerics import Rounding
    from dlqnb.quantizer import DLQuantizer

__all__ = ["empirical_bias_corrections", "run_on_data"]

Corrections = dict[str, tuple[float, ...]]


class _Measured(Exception):
    """Raised by a hook once the only layer measured has its output: the rest of the network is not needed."""


class _ChannelMeans:
    """Streaming per-channel means of the pre-activation outputs of some layers, read by hooks."""

    def __init__(self, stop: bool = False) -> None:
        self.stop = stop
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.handles: list[Any] = []

    def add(self, name: str, y: Tensor, channel_axis: int) -> None:
        # reduced at once: a fused in-place ReLU overwrites the tensor right after
        channels = y.movedim(channel_axis, 0).reshape(y.shape[channel_axis], -1)
        total = channels.sum(1, dtype=torch.float64)
        self.sums[name] = self.sums[name] + total if name in self.sums else total
        self.counts[name] = self.counts.get(name, 0) + channels.shape[1]
        if self.stop:
            raise _Measured

    def watch_output(self, module: nn.Module, name: str, channel_axis: int) -> None:
        self.handles.append(module.register_forward_hook(lambda _m, _args, y: self.add(name, y, channel_axis)))

    def watch_input(self, module: nn.Module, name: str, channel_axis: int) -> None:
        self.handles.append(module.register_forward_pre_hook(lambda _m, args: self.add(name, args[0], channel_axis)))

    def means(self) -> dict[str, Tensor]:
        for handle in self.handles:
            handle.remove()
        return {name: total / self.counts[name] for name, total in self.sums.items()}


def run_on_data(run: Callable[[Tensor], Any], batch: Tensor, index: int, what: str, input_shape: tuple[int, ...] | None) -> Any:
    """``run(batch)``, with a failure of the network on a batch of another shape than calibration saw
    reported as bad ``data`` (its shape beside that one) rather than as torch's message from deep inside
    a layer; on a batch of the calibration's shape the error is the network's own, raised as it is.

    Raises:
        DataError: The network cannot run on the batch; the message names ``what`` and the batch.

    Example:
        >>> run_on_data(nn.Linear(2, 1), torch.ones(1, 3), 0, "correct_bias", (2,))
        Traceback (most recent call last):
        ...
        dlqnb.errors.DataError: correct_bias: data batch 0 has shape (1, 3); calibration saw inputs of shape (2,) ...
    """
    try:
        return run(batch)
    except RuntimeError as error:
        same_shape = input_shape is not None and tuple(batch.shape[1:]) == tuple(input_shape)
        if same_shape or isinstance(error, getattr(torch, "OutOfMemoryError", ())):
            raise  # the data has the calibration's shape: its failure is something else (e.g. memory)
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"{what}: data batch {index} has shape {tuple(batch.shape)}; calibration saw inputs of shape {input_shape} "
            f"(one input, channels first) and the network fails on it: {first_line}"
        ) from error


def _run(network: nn.Module, images: list[Tensor], input_shape: tuple[int, ...] | None) -> None:
    with torch.no_grad():
        for index, batch in enumerate(images):
            try:
                run_on_data(network, batch, index, "correct_bias", input_shape)
            except _Measured:
                pass


def _float_means(quantizer: DLQuantizer, layers: Iterable[str], images: list[Tensor]) -> dict[str, Tensor]:
    """Per-channel means of the float pre-activation output (the conv/linear before its fused activation)."""
    means = _ChannelMeans()
    for name in layers:
        means.watch_output(quantizer.optimized.fused(name).layer, name, 1 if quantizer.optimized.layers[name].kind == "conv" else -1)
    _run(quantizer.optimized.module, images, quantizer.input_shape_)
    return means.means()


def _emulated_means(network: nn.Module, layers: set[str], images: list[Tensor], input_shape: tuple[int, ...] | None) -> dict[str, Tensor]:
    """Per-channel means of the emulated pre-activation output: the input of the fused activation, or
    the layer's output where none is fused. With one layer, each batch runs only up to it."""
    means = _ChannelMeans(stop=len(layers) == 1)
    for module in network.modules():
        if isinstance(module, EmulatedLayer) and module.plan.name in layers:
            _watch_pre_activation(means, module)
    _run(network, images, input_shape)
    return means.means()


def _watch_pre_activation(means: _ChannelMeans, module: EmulatedLayer) -> None:
    """Record the layer's output before its fused activation: the activation's input, or the output where none is fused."""
    axis = 1 if module.spec.kind == "conv" else -1
    if module.activation is not None:
        means.watch_input(module.activation, module.plan.name, axis)
    else:
        means.watch_output(module, module.plan.name, axis)


def empirical_bias_corrections(
    quantizer: DLQuantizer,
    data: Any,
    mini_batch_size: int | None = None,
    sequential: bool = True,
    progress: bool = True,
    rounding: Rounding | None = None,
) -> Corrections:
    """The empirical bias correction of every quantized layer (see the module docstring).

    The quantizer's current corrections are ignored: every correction is measured afresh.

    Args:
        quantizer: A calibrated :class:`~dlqnb.DLQuantizer` (its exclusions are respected).
        data: Images in any form :meth:`DLQuantizer.calibrate` takes (labels are not needed).
        mini_batch_size: Batch size for a tensor or Dataset.
        sequential: Correct the layers one at a time in network order (True), or all from one pass.
        progress: Show a progress bar.
        rounding: The activation rounding of the emulated network measured (:meth:`DLQuantizer.quantize`;
            None: the target's rule).

    Returns:
        For every quantized layer, one value per output channel: the mean of (quantized − float)
        pre-activation output, which the plan subtracts from the layer's bias.

    Raises:
        NotCalibratedError: Before :meth:`DLQuantizer.calibrate`.
        DataError: Empty data, a batch that is not a finite float image batch, or one the network
            cannot run on (wrong shape).
    """
    quantizer.check_calibrated("correct_bias")
    images = [batch for batch, _labels in iter_batches(data, mini_batch_size)]
    uncorrected = quantizer.with_bias_corrections({})
    layers = list(uncorrected.plan().layers)
    reference = _float_means(quantizer, layers, images)
    if not sequential:
        measured = _emulated_means(uncorrected.quantize(rounding), set(layers), images, quantizer.input_shape_)
        return {name: tuple((measured[name] - reference[name]).tolist()) for name in layers}
    return _corrected_layer_by_layer(quantizer, uncorrected.quantize(rounding), uncorrected.plan(rounding), reference, images, progress)


def _corrected_layer_by_layer(
    quantizer: DLQuantizer, network: nn.Module, plan: QuantizationPlan, reference: dict[str, Tensor], images: list[Tensor], progress: bool
) -> Corrections:
    """The sequential corrections, from one node-by-node run of the emulated ``network`` (built from the
    uncorrected ``plan``) over all ``images``.

    Every node computes its output for every batch before the next node runs, so when a quantized layer
    is reached its inputs already carry the corrections of the layers before it: the layer is measured
    (uncorrected), its bias codes are replaced by those of its corrected plan, and it runs again to give
    the layers after it their corrected input. Outputs are dropped once their last reader has run.
    """
    assert isinstance(network, fx.GraphModule)
    corrections: Corrections = {}
    interpreters = [fx.Interpreter(network, garbage_collect_values=False) for _ in images]
    for interpreter, batch in zip(interpreters, images):
        interpreter.args_iter = iter([batch])
    last_reader = {}
    for node in network.graph.nodes:
        for source in node.all_input_nodes:
            last_reader[source] = node
    bar = tqdm(total=len(reference), desc="Correcting bias", unit="layer", disable=not progress)
    with torch.no_grad():
        for node in network.graph.nodes:
            if node.op == "output":
                break
            module = network.get_submodule(str(node.target)) if node.op == "call_module" else None
            if isinstance(module, EmulatedLayer) and module.plan.name in reference and module.plan.name not in corrections:
                name = module.plan.name
                means = _ChannelMeans()
                _watch_pre_activation(means, module)
                _run_node(interpreters, node, images, quantizer.input_shape_)  # uncorrected: measured, then run again below
                measured = means.means()
                corrections[name] = tuple((measured[name] - reference[name]).tolist())
                corrected = corrected_layer_plan(quantizer.optimized, plan, name, corrections[name])
                module.bias_codes.copy_(corrected.bias_codes if corrected.bias_codes is not None else corrected.bias)
                bar.update()
            _run_node(interpreters, node, images, quantizer.input_shape_)
            for source in node.all_input_nodes:
                if last_reader[source] is node:
                    for interpreter in interpreters:
                        del interpreter.env[source]
    bar.close()
    return corrections


def _run_node(interpreters: list[fx.Interpreter], node: fx.Node, images: list[Tensor], input_shape: tuple[int, ...] | None) -> None:
    """Run one node on every batch (each batch's values live in its own interpreter)."""
    for index, (interpreter, batch) in enumerate(zip(interpreters, images)):
        interpreter.env[node] = run_on_data(lambda _batch: interpreter.run_node(node), batch, index, "correct_bias", input_shape)
