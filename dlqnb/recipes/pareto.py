"""The recipes worth choosing from a comparison table: its Pareto front, and the best recipe.

A recipe *dominates* another when it is at least as accurate, needs at most as much learnable memory and
runs at most as slowly, and is strictly better in one of the three. The Pareto front is the recipes no
other recipe dominates: every other recipe gives something up for nothing. Latency counts only where
the table measured it; recipes that failed are on no front.

:func:`best_recipe` picks, among the recipes whose accuracy stays within ``max_accuracy_drop`` of the
float network's, the one that costs least: the smallest memory, then the lowest latency, then the
highest accuracy. That order only ever picks a recipe on the front.

Example:
    >>> import pandas as pd
    >>> table = pd.DataFrame({"recipe": ["a", "b", "c"], "accuracy": [0.9, 0.8, 0.8],
    ...                       "memory_bytes": [100, 50, 60], "latency_ms": [5.0, 5.0, 5.0]})
    >>> list(pareto_front(table)["recipe"])
    ['a', 'b']
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

__all__ = ["OBJECTIVES", "best_recipe", "pareto_front", "pareto_mask"]

#: The columns a recipe is judged on, and whether more (+1) or less (-1) is better.
OBJECTIVES = {"accuracy": 1, "memory_bytes": -1, "latency_ms": -1}


def _objectives(table: pd.DataFrame) -> list[str]:
    """The objective columns the table has, latency only where some recipe measured it."""
    missing = [column for column in ("accuracy", "memory_bytes") if column not in table.columns]
    if missing:
        raise ValueError(f"a recipe table needs the columns {missing} (compare_recipes writes them); it has {list(table.columns)}")
    timed = "latency_ms" in table.columns and table["latency_ms"].notna().any()
    return ["accuracy", "memory_bytes", *(["latency_ms"] if timed else [])]


def pareto_mask(table: pd.DataFrame) -> pd.Series:
    """Whether each row of a recipe table is on its Pareto front (see the module's description).

    Rows with a missing objective (a failed recipe, or one whose latency was not measured where
    others' was) are not on the front and do not dominate.
    """
    columns = _objectives(table)
    values = table[columns].to_numpy(dtype=float) * np.array([OBJECTIVES[c] for c in columns])  # larger is better in every column
    complete = ~np.isnan(values).any(axis=1)
    on_front = complete.copy()
    for i in np.flatnonzero(complete):
        others = values[complete]
        dominated = ((others >= values[i]).all(axis=1) & (others > values[i]).any(axis=1)).any()
        on_front[i] = not dominated
    return pd.Series(on_front, index=table.index, name="pareto")


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a recipe table that no other row dominates in (accuracy ↑, memory ↓, latency ↓), in
    the table's order.

    Args:
        table: A :func:`~dlqnb.recipes.compare.compare_recipes` table, or any table with columns
            ``accuracy`` and ``memory_bytes`` (and optionally ``latency_ms``).

    Raises:
        ValueError: The table lacks ``accuracy`` or ``memory_bytes``.
    """
    return table[pareto_mask(table)]


def best_recipe(table: pd.DataFrame, max_accuracy_drop: float = 0.005) -> pd.Series:
    """The cheapest recipe that keeps the accuracy within ``max_accuracy_drop`` of the float network's.

    Among the recipes whose accuracy is at least the float accuracy (the table's highest
    ``float_accuracy``, or the highest ``accuracy`` where the table has none) minus ``max_accuracy_drop``:
    the smallest learnable memory, then the lowest latency (where measured), then the highest accuracy.
    When no recipe gets there, the most accurate one, with a warning.

    Args:
        table: A :func:`~dlqnb.recipes.compare.compare_recipes` table.
        max_accuracy_drop: The largest acceptable drop (0.005: half a point of accuracy).

    Returns:
        The chosen row (its ``recipe`` names it).

    Raises:
        ValueError: A negative drop, or no recipe with an accuracy (every one failed).

    Example:
        >>> import pandas as pd
        >>> table = pd.DataFrame({"recipe": ["a", "b"], "accuracy": [0.95, 0.90], "float_accuracy": [0.95, 0.95],
        ...                       "memory_bytes": [400, 100]})
        >>> best_recipe(table, 0.01)["recipe"], best_recipe(table, 0.05)["recipe"]
        ('a', 'b')
    """
    if not (isinstance(max_accuracy_drop, (int, float)) and 0 <= max_accuracy_drop < float("inf")):
        raise ValueError(f"max_accuracy_drop must be a number >= 0, got {max_accuracy_drop!r}")
    columns = _objectives(table)
    candidates = table.dropna(subset=columns)
    if candidates.empty:
        failures = [f"{row.get('recipe')}: {row.get('error')}" for _, row in table.iterrows() if row.get("error")]
        raise ValueError("no recipe has results to choose from" + (": " + "; ".join(failures) if failures else ""))
    reference = table["float_accuracy"].max() if "float_accuracy" in table and table["float_accuracy"].notna().any() else candidates["accuracy"].max()
    within = candidates[candidates["accuracy"] >= reference - max_accuracy_drop - 1e-12]  # accuracies are sums of floats
    order = [c for c in ("memory_bytes", "latency_ms") if c in columns] + ["accuracy"]
    if within.empty:
        warnings.warn(
            f"no recipe keeps the accuracy within {max_accuracy_drop:g} of the float accuracy {reference:.4g}: "
            "the most accurate recipe is chosen",
            UserWarning,
            stacklevel=2,
        )
        within, order = candidates, ["accuracy", *order[:-1]]
    ascending = [column != "accuracy" for column in order]
    return within.sort_values(order, ascending=ascending, kind="stable").iloc[0]
