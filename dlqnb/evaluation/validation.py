"""Validation of a quantized network against its float original: metrics and learnable memory.

``DLQuantizer.validate`` runs the float network and its int8 emulation on the same data and
compares them with metric functions ``fn(scores, labels) -> float`` (``scores`` are the network's
outputs, N×C logits; ``labels`` class indices, or None when the data has none). The default metric
is top-1 accuracy.

Which output is scored (:func:`scored_output`): a network that returns one tensor is scored on it; one
that returns a tuple or list is scored on its first element unless ``output=`` (on
:class:`~dlqnb.DLQuantizer`, or :func:`classify`) gives another index, and a warning says which was
taken; one that returns a dict must say with ``output=`` which key holds the class scores (the error
lists the keys).

Learnable parameter memory, as MATLAB counts it:

* **Floating-Point**: 4 bytes per learnable parameter of the network as given (BatchNorm's included);
* **Quantized**: counted after folding BatchNorm: 1 byte per int8 weight of a quantized layer, 4 bytes
  per bias (the MATLAB pages keep biases at 32 bits) and 4 bytes per parameter left in float.

For the *dlquantizer* example's SqueezeNet with five classes that is 725,061 parameters, 2,900,244 bytes in float,
about a quarter of that quantized.

Example:
    >>> import torch
    >>> top1_accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))
    0.5
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import pandas as pd
import torch
from torch import Tensor, nn

from dlqnb.core.batches import iter_batches
from dlqnb.emulation.network import EmulatedLayer
from dlqnb.errors import ScoredOutputError, ValidationError

if TYPE_CHECKING:
    from dlqnb.plan.builder import QuantizationPlan

__all__ = [
    "OutputChoice",
    "QuantizationOptions",
    "ValidationResult",
    "check_output_choice",
    "classify",
    "learnable_memory",
    "matlab_short",
    "scored_output",
    "top1_accuracy",
]

Metric = Callable[[Tensor, Tensor | None], float]
#: Which of a network's outputs holds the class scores: an index (tuple/list outputs), a key (dict
#: outputs), or None (the output itself when it is one tensor, else the first element).
OutputChoice = Union[int, str, None]
RESULT_COLUMNS = ["NetworkImplementation", "MetricOutput", "LearnableParameterMemory(bytes)"]


def top1_accuracy(scores: Tensor, labels: Tensor | None) -> float:
    """Share of samples whose highest score is their label (MATLAB's ``hComputeModelAccuracy``)."""
    if labels is None:
        raise ValueError("top-1 accuracy needs labels: give the data as (images, labels), or a metric that needs none")
    return float((scores.argmax(1) == labels).float().mean())


def check_output_choice(output: Any) -> OutputChoice:
    """``output`` if it can name a network output (an int index, a str key, or None), else a TypeError.

    Example:
        >>> check_output_choice("logits"), check_output_choice(0), check_output_choice(None)
        ('logits', 0, None)
    """
    if output is None or isinstance(output, str) or (isinstance(output, int) and not isinstance(output, bool)):
        return output
    raise TypeError(f"output must be the index (int) or key (str) of the network output that holds the class scores, or None; got {output!r}")


def _shape_text(value: Any) -> str:
    return "×".join(str(d) for d in value.shape) if isinstance(value, Tensor) else type(value).__name__


def scored_output(
    outputs: Any, output: OutputChoice = None, how_to_choose: str = "output={}", warn: bool = False, stacklevel: int = 2
) -> Tensor:
    """The output of a network that holds the class scores.

    Args:
        outputs: What the network returned: a tensor, a tuple or list, or a dict of outputs.
        output: The index (tuple/list) or key (dict) of the scores; None: the output itself when it is
            one tensor, the first element of a tuple or list.
        how_to_choose: How the caller chooses another output, with ``{}`` where the choice goes
            (``"DLQuantizer(net, output={})"``); the messages quote it.
        warn: Warn which element is taken when ``output`` is None and the network returns several.
        stacklevel: Which caller the warning points at (2: the caller of this function), so that it
            names the user's line rather than dlqnb's.

    Returns:
        The scores tensor (N×C).

    Raises:
        ScoredOutputError: A dict and no ``output``; an ``output`` the outputs do not have (the
            message lists those there are); an ``output`` given for a network that returns one
            tensor; a chosen output that is not a tensor.

    Example:
        >>> import torch
        >>> scores, features = torch.zeros(2, 3), torch.ones(2, 8)
        >>> scored_output((scores, features)).shape, scored_output({"logits": scores, "f": features}, "logits").shape
        (torch.Size([2, 3]), torch.Size([2, 3]))
    """
    if isinstance(outputs, Tensor):
        if output is not None:
            raise ScoredOutputError(f"output={output!r} was given but the network returns one tensor ({_shape_text(outputs)}): leave output unset")
        return outputs
    if isinstance(outputs, dict):
        keys = list(outputs)
        if output is None or output not in outputs:
            asked = "no output was chosen" if output is None else f"it has no output {output!r}"
            raise ScoredOutputError(
                f"the network returns a dict of outputs {keys} and {asked}: say which holds the class scores "
                f"with {how_to_choose.format('<key>')}"
            )
        chosen = outputs[output]
    elif isinstance(outputs, (tuple, list)):
        count = len(outputs)
        kind = type(outputs).__name__
        if isinstance(output, str) and output in getattr(outputs, "_fields", ()):  # a named tuple
            chosen = getattr(outputs, output)
        elif isinstance(output, str) or (output is not None and not -count <= output < count) or count == 0:
            raise ScoredOutputError(
                f"the network returns a {kind} of {count} outputs ({', '.join(_shape_text(v) for v in outputs)}) and {output!r} is "
                f"not one of them: choose an index from 0 to {count - 1}, e.g. {how_to_choose.format(0)}"
            )
        else:
            chosen = outputs[output or 0]
            if output is None and warn and count > 1:
                warnings.warn(
                    f"the network returns a {kind} of {count} outputs ({', '.join(_shape_text(v) for v in outputs)}); dlqnb scores "
                    f"the first as the class scores. Choose another with {how_to_choose.format(1)}",
                    UserWarning,
                    stacklevel=stacklevel,
                )
    else:
        raise ScoredOutputError(
            f"the network returns a {type(outputs).__name__}; dlqnb scores a tensor, or one element of a tuple, list or dict of tensors"
        )
    if not isinstance(chosen, Tensor):
        raise ScoredOutputError(f"the network's output {output!r} is a {type(chosen).__name__}, not a tensor of class scores")
    return chosen


@dataclass(frozen=True)
class QuantizationOptions:
    """Options of :meth:`DLQuantizer.validate` (MATLAB's ``dlquantizationOptions``).

    Attributes:
        metric_fcn: Metric functions ``fn(scores, labels) -> float``; top-1 accuracy by default.
    """

    metric_fcn: Sequence[Metric] = (top1_accuracy,)

    def __post_init__(self) -> None:
        metrics = self.metric_fcn
        if callable(metrics):
            metrics = (metrics,)
        metrics = tuple(metrics)
        if not metrics or not all(callable(m) for m in metrics):
            raise TypeError("metric_fcn must be a callable or a non-empty list of callables fn(scores, labels) -> float")
        object.__setattr__(self, "metric_fcn", metrics)


@dataclass
class ValidationResult:
    """What :meth:`DLQuantizer.validate` returns (MATLAB's ``valResults``).

    Attributes:
        num_samples: Images validated.
        metric_results: ``NetworkImplementation`` (``Floating-Point`` / ``Quantized``),
            ``MetricOutput``, ``LearnableParameterMemory(bytes)``; one row per implementation and
            metric, with a ``MetricName`` column first when several metrics are given.
        float_scores, quantized_scores: The scored outputs of both networks, N×C (see
            :func:`scored_output`).
        labels: The labels, or None.
    """

    num_samples: int
    metric_results: pd.DataFrame
    float_scores: Tensor = field(repr=False)
    quantized_scores: Tensor = field(repr=False)
    labels: Tensor | None = field(repr=False, default=None)

    def misclassified(self) -> dict[str, int]:
        """Misclassified samples of each implementation (needs labels)."""
        if self.labels is None:
            raise ValueError("misclassified() needs labels")
        return {
            "Floating-Point": int((self.float_scores.argmax(1) != self.labels).sum()),
            "Quantized": int((self.quantized_scores.argmax(1) != self.labels).sum()),
        }


def learnable_memory(network: nn.Module, plan: QuantizationPlan) -> tuple[int, int]:
    """Learnable parameter memory in bytes: (float network as given, quantized network).

    The float network counts 4 bytes per parameter; the quantized network, from the plan, the bytes of
    its weight type per weight of a quantized layer (1 for int8), 4 per bias (int32 or single) and 4 per
    parameter left in float. Folding BatchNorm removes its parameters from the quantized network, as
    MATLAB's optimized network does.
    """
    float_bytes = 4 * sum(p.numel() for p in network.parameters())
    quantized_weights = sum(layer.weight_codes.numel() for layer in plan.layers.values())
    weight_bytes = sum(layer.weight_codes.numel() * layer.weight_type.word_length // 8 for layer in plan.layers.values())
    return float_bytes, weight_bytes + 4 * (plan.optimized_parameters - quantized_weights)


def run_both(
    float_net: nn.Module,
    quantized_net: nn.Module,
    data: Any,
    mini_batch_size: int | None = None,
    progress: bool = True,
    output: OutputChoice = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Scores of the float network and of its emulation on the same data, and the labels.

    Args:
        float_net: The float network.
        quantized_net: Its quantized (emulated) network, e.g. ``DLQuantizer.quantize()``.
        data: Images with labels, as :meth:`DLQuantizer.validate` takes them.
        mini_batch_size: Batch size for a tensor or Dataset (default 32).
        progress: Show a tqdm progress bar.
        output: Which output holds the scores when the networks return several (:func:`scored_output`).

    Returns:
        (float scores N×K, quantized scores N×K, labels or None when the data has none).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 2)
        >>> float_scores, same_scores, labels = run_both(net, net, torch.rand(4, 3), progress=False)
        >>> bool(torch.equal(float_scores, same_scores)), labels
        (True, None)

    Raises:
        ValidationError: A batch cannot pass through either network.
        ScoredOutputError: The networks return a dict and ``output`` does not say which entry to score.
    """
    from tqdm.auto import tqdm

    from dlqnb.core.batches import count_batches

    was_training = float_net.training
    float_scores, quantized_scores, labels = [], [], []
    float_net.eval()
    try:
        with torch.no_grad():
            batches = tqdm(iter_batches(data, mini_batch_size), total=count_batches(data, mini_batch_size), desc="Validating", disable=not progress)
            for index, (images, batch_labels) in enumerate(batches):
                try:
                    float_outputs, quantized_outputs = float_net(images), quantized_net(images)
                except Exception as error:
                    raise ValidationError(f"validation batch {index} of shape {tuple(images.shape)} cannot pass through the network: {error}") from error
                float_scores.append(scored_output(float_outputs, output, "DLQuantizer(net, output={})", warn=index == 0, stacklevel=4))
                quantized_scores.append(scored_output(quantized_outputs, output, "DLQuantizer(net, output={})"))
                labels.append(batch_labels)
    finally:
        float_net.train(was_training)
    all_labels = None if any(label is None for label in labels) else torch.cat(labels)
    return torch.cat(float_scores), torch.cat(quantized_scores), all_labels


def matlab_short(value: float) -> str:
    """A number as MATLAB's ``format short`` shows it in a table: five significant digits, in
    exponent form from 1e5 up.

    Example:
        >>> matlab_short(2900244), matlab_short(733908), matlab_short(0.99375)
        ('2.9002e+06', '7.3391e+05', '0.9938')
    """
    if value != 0 and not 1e-3 <= abs(value) < 1e5:
        return f"{value:.4e}"
    return f"{value:.4f}" if value != int(value) else str(int(value))


def validation_table(
    metrics: Sequence[Metric], float_scores: Tensor, quantized_scores: Tensor, labels: Tensor | None, memory: tuple[int, int]
) -> pd.DataFrame:
    """The ``metric_results`` table."""
    rows = []
    for metric in metrics:
        name = getattr(metric, "__name__", type(metric).__name__)
        for implementation, scores, nbytes in (("Floating-Point", float_scores, memory[0]), ("Quantized", quantized_scores, memory[1])):
            rows.append({"MetricName": name, RESULT_COLUMNS[0]: implementation, RESULT_COLUMNS[1]: float(metric(scores, labels)), RESULT_COLUMNS[2]: nbytes})
    table = pd.DataFrame(rows, columns=["MetricName", *RESULT_COLUMNS])
    return table.drop(columns="MetricName") if len(metrics) == 1 else table


def classify(net: nn.Module, data: Any, mini_batch_size: int | None = None, output: OutputChoice = None) -> list[str]:
    """Predicted class names of ``net`` on ``data`` (MATLAB's ``classify``).

    Args:
        net: A network carrying ``class_names``.
        data: Images in any form :meth:`DLQuantizer.calibrate` takes.
        mini_batch_size: Batch size for a tensor or Dataset (default 32).
        output: Which output holds the class scores when the network returns several: an index of a
            tuple or list (default: the first, with a warning), a key of a dict (required).

    Raises:
        ValueError: If the network carries no class names (set them with
            :func:`dlqnb.models.networks.set_metadata`).
        ScoredOutputError: A dict output and no ``output``, or an ``output`` the network does not return.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2)
        >>> net.class_names = ["no", "yes"]
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.eye(2)), net.bias.zero_()
        >>> classify(net, torch.tensor([[0.0, 1.0], [3.0, 1.0]]))
        ['yes', 'no']
    """
    output = check_output_choice(output)
    names = getattr(net, "class_names", None)
    if not names:
        raise ValueError(f"{type(net).__name__} carries no class names; record them with dlqnb.models.networks.set_metadata(net, class_names=...)")
    was_training = net.training
    net.eval()
    predictions: list[str] = []
    try:
        with torch.no_grad():
            for index, (images, _) in enumerate(iter_batches(data, mini_batch_size)):
                scores = scored_output(net(images), output, "classify(net, data, output={})", warn=index == 0, stacklevel=3)
                predictions.extend(names[i] for i in scores.argmax(1).tolist())
    finally:
        net.train(was_training)
    return predictions


def emulated_layers(module: nn.Module) -> list[str]:
    """Names of the emulated int8 conv/linear layers of a quantized network."""
    return [name for name, child in module.named_modules() if isinstance(child, EmulatedLayer)]
