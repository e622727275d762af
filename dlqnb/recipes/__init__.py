"""Comparing quantization recipes: which way of quantizing a network keeps its accuracy, and at what cost.

* :class:`Recipe` (from :mod:`dlqnb.recipes.recipe`): a target, an exponent scheme, per-channel weights,
  equalization, bias correction and float layers chosen by accuracy, checked field by field; dicts
  become recipes with :meth:`Recipe.from_dict`.
* :func:`quantizer_for` (from :mod:`dlqnb.recipes.build`): the calibrated :class:`~dlqnb.DLQuantizer` a
  recipe describes (what :func:`compare_recipes` and ``python -m dlqnb.bench accuracy`` quantize with).
* :func:`compare_recipes` (from :mod:`dlqnb.recipes.compare`): one row per recipe with accuracy, learnable
  memory and measured int8 latency, a failed recipe recorded with its error.
* :func:`pareto_front`, :func:`pareto_mask` and :func:`best_recipe` (from :mod:`dlqnb.recipes.pareto`): the
  recipes no other beats on accuracy, memory and latency at once, and the cheapest one that keeps the accuracy.

Example:
    >>> from dlqnb.recipes import Recipe
    >>> Recipe("per-channel", per_channel=True).describe()
    'gpu, minmax, per-channel'
"""

from dlqnb.recipes.build import quantizer_for
from dlqnb.recipes.compare import RESULT_COLUMNS, compare_recipes
from dlqnb.recipes.pareto import best_recipe, pareto_front, pareto_mask
from dlqnb.recipes.recipe import Recipe, as_recipes

__all__ = ["RESULT_COLUMNS", "Recipe", "as_recipes", "best_recipe", "compare_recipes", "pareto_front", "pareto_mask", "quantizer_for"]
