"""The calibrated quantizer a :class:`~dlqnb.recipes.recipe.Recipe` describes.

:func:`quantizer_for` is the one place a recipe becomes a :class:`~dlqnb.DLQuantizer`; notebook 08's
:func:`~dlqnb.recipes.compare.compare_recipes` and ``python -m dlqnb.bench accuracy`` both use it:

1. **Network.** ``net``, or its equalized copy (``dlqnb.equalize_layers``, with the recipe's ``relu6``) for
   a recipe with ``equalize``.
2. **Quantizer.** A :class:`~dlqnb.DLQuantizer` with the recipe's target, exponent scheme and per-channel
   flag, calibrated on ``calibration_data``. Calibration ranges do not depend on the target, the exponent
   scheme or per-channel weights, so recipes on the same network and calibration data can share them
   (the ``calibrations`` argument).
3. **Bias correction.** With ``bias_correction``: ``q.correct_bias(calibration_data, rounding=...)``.
4. **Float layers by accuracy.** With ``max_accuracy_drop``, where the fully quantized network drops more
   than that on ``validation_data``, ``q.choose_float_layers(validation_data, max_accuracy_drop=...)``
   picks the layers and ``q.exclude(*choice.layers)`` keeps them in float (bias corrections are then
   measured again for the layers left quantized).

Steps 3 and 4 run the quantized network with the recipe's ``rounding``; score it with
``q.validate(data, rounding=recipe.rounding)``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from dlqnb.recipes import Recipe
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)).eval()
    >>> q = quantizer_for(net, Recipe("cpu", target="cpu", per_channel=True), torch.rand(8, 3, 8, 8))
    >>> q.execution_environment, q.per_channel_weights
    ('cpu', True)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dlqnb.calibration.file import CalibrationState
from dlqnb.quantizer import DLQuantizer
from dlqnb.recipes.recipe import Recipe

__all__ = ["SharedCalibrations", "network_key", "quantizer_for"]

#: Each network a recipe quantizes (keyed by :func:`network_key`: plain, equalized, or equalized with
#: its clipped ReLUs replaced) and its calibration.
SharedCalibrations = dict[str, tuple[nn.Module, CalibrationState]]


def quantizer_for(
    net: nn.Module,
    recipe: Recipe,
    calibration_data: Any,
    validation_data: Any = None,
    *,
    mini_batch_size: int | None = None,
    calibrations: SharedCalibrations | None = None,
    progress: bool = False,
) -> DLQuantizer:
    """The calibrated quantizer of ``net`` that ``recipe`` describes (equalized, bias corrected and with
    float layers chosen by accuracy where it asks).

    Args:
        net: The float network (never modified: equalization works on a copy).
        recipe: How to quantize.
        calibration_data: Images to calibrate on (and to measure bias corrections on), in any form
            :meth:`~dlqnb.DLQuantizer.calibrate` takes.
        validation_data: Labelled images to choose float layers on; needed only by a recipe with
            ``max_accuracy_drop``.
        mini_batch_size: Batch size for a tensor or Dataset of images.
        calibrations: A dict shared by calls on the same ``net`` and ``calibration_data``: each network
            (:func:`network_key`) is calibrated once, the first time a recipe needs it, and its ranges are
            reused by the later calls. None: calibrate here.
        progress: Show progress bars of the steps.

    Returns:
        The calibrated :class:`~dlqnb.DLQuantizer` (not validated).

    Raises:
        TypeError: ``net`` is not an ``nn.Module`` or ``recipe`` not a :class:`Recipe`.
        ValueError: A recipe with ``max_accuracy_drop`` and no ``validation_data``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
        >>> x = torch.rand(8, 4)
        >>> shared = {}
        >>> a = quantizer_for(net, Recipe("a"), x, calibrations=shared)
        >>> b = quantizer_for(net, Recipe("b", exponent_scheme="histogram"), x, calibrations=shared)
        >>> list(shared), b.exponent_scheme
        (['plain'], 'histogram')
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a dlqnb.recipes.Recipe (Recipe.from_dict makes one from a dict), got {type(recipe).__name__}")
    if recipe.max_accuracy_drop is not None and validation_data is None:
        raise ValueError(f"recipe {recipe.name!r} chooses float layers by accuracy (max_accuracy_drop): give validation_data, labelled images to choose them on")
    shared = {} if calibrations is None else calibrations
    key = network_key(recipe)
    if key not in shared:
        network = _network(net, recipe)
        first = DLQuantizer(network, execution_environment=recipe.target)
        first.calibrate(calibration_data, mini_batch_size=mini_batch_size, progress=progress)
        shared[key] = (network, first.calibration_state())
    network, state = shared[key]
    quantizer = DLQuantizer(network, execution_environment=recipe.target, exponent_scheme=recipe.exponent_scheme, per_channel_weights=recipe.per_channel)
    quantizer.restore_calibration(state)
    if recipe.bias_correction:
        quantizer.correct_bias(calibration_data, mini_batch_size=mini_batch_size, progress=progress, rounding=recipe.rounding)
    if recipe.max_accuracy_drop is not None and _drop(quantizer, validation_data, mini_batch_size, progress, recipe) > recipe.max_accuracy_drop + 1e-12:
        # The choice ranks every layer by sensitivity first; a network already within the drop needs none.
        choice = quantizer.choose_float_layers(
            validation_data, max_accuracy_drop=recipe.max_accuracy_drop, mini_batch_size=mini_batch_size, progress=progress, rounding=recipe.rounding
        )
        quantizer.exclude(*choice.layers)
        if recipe.bias_correction and choice.layers:  # the layers left quantized see other inputs now
            quantizer.correct_bias(calibration_data, mini_batch_size=mini_batch_size, progress=progress, rounding=recipe.rounding)
    return quantizer


def network_key(recipe: Recipe) -> str:
    """Which network ``recipe`` quantizes: ``"plain"``, ``"equalized"`` or ``"equalized, ReLU6 → ReLU"``.

    Example:
        >>> network_key(Recipe("r", equalize=True, relu6="relu"))
        'equalized, ReLU6 → ReLU'
    """
    if not recipe.equalize:
        return "plain"
    return "equalized, ReLU6 → ReLU" if recipe.relu6 == "relu" else "equalized"


def _network(net: nn.Module, recipe: Recipe) -> nn.Module:
    """The network a recipe quantizes: ``net``, or its equalized copy (clipped ReLUs replaced where ``relu6="relu"``)."""
    if not recipe.equalize:
        return net
    from dlqnb.preparation import equalize_layers

    return equalize_layers(net, relu6=recipe.relu6)


def _drop(quantizer: DLQuantizer, validation_data: Any, mini_batch_size: int | None, progress: bool, recipe: Recipe) -> float:
    """Float minus quantized top-1 on ``validation_data``, the quantized network rounding as ``recipe`` says."""
    result = quantizer.validate(validation_data, mini_batch_size=mini_batch_size, progress=progress, rounding=recipe.rounding)
    accuracy = result.metric_results.set_index("NetworkImplementation")["MetricOutput"]
    return float(accuracy["Floating-Point"] - accuracy["Quantized"])
