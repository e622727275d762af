"""A quantization recipe: the choices that decide how a network is quantized, as one small value.

A :class:`Recipe` names a target (``"gpu"`` or ``"cpu"``), an exponent scheme, per-channel weights,
and the recovery steps applied around :class:`~dlqnb.DLQuantizer`: cross-layer equalization of the float
network first (MATLAB's ``equalizeLayers``), empirical bias correction after calibration, and float
layers chosen by accuracy; and the activation rounding the recipe is judged by (the target's rule, or
the rule of the runtime that will run the exported file). Every field is checked when the recipe is made, so a typo in a notebook's
parameters fails at once with the field's name. Recipes written as dicts (papermill parameters, JSON or
YAML sweep files) become recipes with :meth:`Recipe.from_dict`; :func:`as_recipes` takes a recipe, a
dict, or a list of either.

Example:
    >>> Recipe.from_dict({"name": "cpu per-channel", "target": "cpu", "per_channel": True}).per_channel
    True
    >>> Recipe("bad", target="tpu")
    Traceback (most recent call last):
    ...
    ValueError: Recipe 'bad': target must be 'gpu' or 'cpu', got 'tpu'
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, get_args

from dlqnb.core.numerics import Rounding
from dlqnb.preparation.equalization import RELU6_CHOICES

__all__ = ["EXPONENT_SCHEMES", "ROUNDINGS", "TARGETS", "Recipe", "as_recipes"]

#: The execution environments a recipe may target (:class:`~dlqnb.DLQuantizer`'s).
TARGETS = ("gpu", "cpu")
#: How a recipe chooses the 8-bit types from the calibrated ranges.
EXPONENT_SCHEMES = ("minmax", "histogram")
#: The activation roundings a recipe may be judged by (None: the target's own rule).
ROUNDINGS: tuple[str, ...] = get_args(Rounding)
_FLAGS = ("per_channel", "equalize", "bias_correction")


@dataclass(frozen=True)
class Recipe:
    """How to quantize a network: a target, a type-choice rule, and optional recovery steps.

    Attributes:
        name: What the comparison table calls the recipe (unique within a comparison).
        target: ``DLQuantizer``'s ``execution_environment``: ``"gpu"`` or ``"cpu"``.
        exponent_scheme: ``"minmax"`` (MATLAB's default) or ``"histogram"``.
        per_channel: One power-of-two weight scale per output channel (``per_channel_weights``).
        equalize: Equalize consecutive layers (``dlqnb.equalize_layers``) before quantizing.
        relu6: With ``equalize``, what equalization does with a pair through a clipped ReLU (ReLU6):
            ``"keep"`` it (the float network is unchanged) or replace the clip with a ``"relu"`` and
            equalize the pair (the float network changes where a value exceeded 6: its float top-1 is
            the comparison's ``prepared_float_accuracy``, and bias corrections and float layers are
            measured against it, while ``accuracy_drop`` is measured against the user's network).
        bias_correction: Empirical bias correction on the calibration data (``q.correct_bias``).
        max_accuracy_drop: Keep in float the fewest layers that hold the accuracy drop to at most this
            (``q.choose_float_layers``, then ``q.exclude``); None: quantize every layer the target can.
        rounding: How the quantized network's activations round ties when the recipe measures bias
            corrections, chooses float layers and is scored (``q.quantize(rounding)``). None: the
            target's rule (MATLAB's: away from zero on ``"gpu"``). ``"half_even"`` on ``"gpu"`` is what
            TensorRT and ONNX Runtime compute from the exported file, so the recipe is tuned and scored
            for that deployment. The exported file is the same either way except for bias corrections.

    Raises:
        ValueError: A field outside its allowed values (the message names the field).
        TypeError: A field of the wrong type (e.g. ``per_channel="yes"``).

    Example:
        >>> Recipe("histogram", exponent_scheme="histogram").describe()
        'gpu, histogram'
    """

    name: str
    target: str = "gpu"
    exponent_scheme: str = "minmax"
    per_channel: bool = False
    equalize: bool = False
    relu6: str = "keep"
    bias_correction: bool = False
    max_accuracy_drop: float | None = None
    rounding: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Recipe name must be a non-empty string, got {self.name!r}")
        where = f"Recipe {self.name!r}"
        if self.target not in TARGETS:
            raise ValueError(f"{where}: target must be 'gpu' or 'cpu', got {self.target!r}")
        if self.exponent_scheme not in EXPONENT_SCHEMES:
            raise ValueError(f"{where}: exponent_scheme must be 'minmax' or 'histogram', got {self.exponent_scheme!r}")
        for flag in _FLAGS:
            value = getattr(self, flag)
            if not isinstance(value, bool):  # "false" from a command line would otherwise read as True
                raise TypeError(f"{where}: {flag} must be True or False, got {value!r}")
        if self.relu6 not in RELU6_CHOICES:
            raise ValueError(f"{where}: relu6 must be 'keep' or 'relu' (replace clipped ReLUs to equalize through them), got {self.relu6!r}")
        if self.relu6 == "relu" and not self.equalize:
            raise ValueError(f"{where}: relu6='relu' replaces clipped ReLUs for equalization: it needs equalize=True")
        if self.rounding is not None and self.rounding not in ROUNDINGS:
            raise ValueError(f"{where}: rounding must be None (the target's rule), 'half_away' or 'half_even', got {self.rounding!r}")
        drop = self.max_accuracy_drop
        if drop is not None:
            if isinstance(drop, bool) or not isinstance(drop, numbers.Real):
                raise TypeError(f"{where}: max_accuracy_drop must be a number (a share of accuracy, 0.01 = one point) or None, got {drop!r}")
            if not (math.isfinite(drop) and 0 <= drop <= 1):
                raise ValueError(f"{where}: max_accuracy_drop must be between 0 and 1 (0.01 = one point of accuracy), got {drop!r}")
            object.__setattr__(self, "max_accuracy_drop", float(drop))

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> Recipe:
        """A recipe from a mapping of its fields (papermill parameters, JSON, YAML).

        Without a ``name``, the recipe is named by :meth:`describe`.

        Raises:
            TypeError: ``settings`` is not a mapping.
            ValueError: An unknown key (the message lists the known ones), or a field's value (as
                :class:`Recipe` checks it).

        Example:
            >>> Recipe.from_dict({"target": "cpu", "exponent_scheme": "histogram"}).name
            'cpu, histogram'
        """
        if not isinstance(settings, Mapping):
            raise TypeError(f"a recipe must be a Recipe or a dict of its fields, got {type(settings).__name__}: {settings!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(key) for key in settings if key not in known)
        if unknown:
            raise ValueError(f"unknown recipe field(s) {unknown} in {dict(settings)!r}; a recipe has {known}")
        values = dict(settings)
        if "name" not in values:
            values["name"] = cls(name="unnamed", **values).describe()
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The recipe's fields as a plain dict (what :meth:`from_dict` reads back)."""
        return asdict(self)

    def describe(self) -> str:
        """A short label of what the recipe does, e.g. ``"cpu, histogram, per-channel, bias correction"``.

        Example:
            >>> Recipe("r", bias_correction=True, rounding="half_even").describe()
            'gpu, minmax, bias correction, ties to even'
        """
        parts = [self.target, self.exponent_scheme]
        parts += [label for flag, label in zip(_FLAGS, ("per-channel", "equalized", "bias correction")) if getattr(self, flag)]
        if self.relu6 == "relu":
            parts.append("ReLU6 → ReLU")
        if self.max_accuracy_drop is not None:
            parts.append(f"float layers for a drop ≤ {self.max_accuracy_drop:g}")
        if self.rounding is not None:
            parts.append({"half_away": "ties away from zero", "half_even": "ties to even"}[self.rounding])
        return ", ".join(parts)


def as_recipes(recipes: Recipe | Mapping[str, Any] | Iterable[Recipe | Mapping[str, Any]]) -> list[Recipe]:
    """Recipes from a recipe, a dict, or a list of either (what a notebook's parameters hold).

    A single dict is one recipe: a sweep over a list of recipe dicts gives each run one of them.

    Raises:
        TypeError: Something else than recipes or dicts.
        ValueError: No recipe, a bad field, or two recipes with the same name.

    Example:
        >>> [r.name for r in as_recipes([{"name": "a"}, Recipe("b", target="cpu")])]
        ['a', 'b']
    """
    if isinstance(recipes, (Recipe, Mapping)):
        recipes = [recipes]
    if isinstance(recipes, (str, bytes)) or not isinstance(recipes, Iterable):
        raise TypeError(f"recipes must be a Recipe, a dict of its fields, or a list of them, got {type(recipes).__name__}")
    result = [item if isinstance(item, Recipe) else Recipe.from_dict(item) for item in recipes]
    if not result:
        raise ValueError("recipes is empty: give at least one recipe")
    names = [recipe.name for recipe in result]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"recipe names must be unique (they label the table's rows); repeated: {repeated}")
    return result
