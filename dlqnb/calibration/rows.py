"""The calibration table: one row per weights, bias and activations tensor, named as MATLAB names them.

A row is a :class:`CalibrationRow`, an optimized layer and the part of it the row describes; its
``Optimized Layer Name`` is ``<layer>_<part>`` (``conv1_Weights``, ``fire2-squeeze1x1_Activations``),
written by :attr:`CalibrationRow.name` and read back by :meth:`CalibrationRow.parse` only.

The table is shaped like MATLAB's: the Weights and Bias rows of every conv/linear layer first, then
the Activations rows, each part in network order (:func:`calibration_rows`). The statistics of the
learnables are computed from the folded weights; those of layers that only move values are the union
of their inputs' (:func:`row_statistics`).

Example:
    >>> row = CalibrationRow.parse("fire2-squeeze1x1_Activations")
    >>> row.layer, row.part, row.name
    ('fire2-squeeze1x1', 'Activations', 'fire2-squeeze1x1_Activations')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import pandas as pd

from dlqnb.calibration.file import CalibrationState
from dlqnb.calibration.observers import RangeStats
from dlqnb.core.graph import OptimizedNetwork, feeds_input_layers_only, layer_name

__all__ = ["CALIBRATION_COLUMNS", "PARTS", "CalibrationRow", "Part", "calibration_rows", "calibration_table", "row_statistics"]

#: The calibration table's columns, exactly MATLAB's.
CALIBRATION_COLUMNS = [
    "Optimized Layer Name",
    "Network Layer Name",
    "Learnables / Activations",
    "MinValue",
    "MaxValue",
]
Part = Literal["Weights", "Bias", "Activations"]
#: The parts a row describes, in the order a layer's rows are listed.
PARTS: tuple[Part, ...] = get_args(Part)


@dataclass(frozen=True)
class CalibrationRow:
    """One row of the calibration table: an optimized layer's weights, bias or activations.

    Attributes:
        layer: The optimized layer (a node of the optimized graph).
        part: ``"Weights"``, ``"Bias"`` or ``"Activations"``.

    Example:
        >>> CalibrationRow("conv1", "Weights").name
        'conv1_Weights'
        >>> [row.name for row in CalibrationRow.of_layer("fc")]
        ['fc_Weights', 'fc_Bias', 'fc_Activations']
    """

    layer: str
    part: Part

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise ValueError(f"a calibration row describes one of {list(PARTS)}, got {self.part!r}")

    @property
    def name(self) -> str:
        """The row's ``Optimized Layer Name``: ``<layer>_<part>``."""
        return f"{self.layer}_{self.part}"

    @classmethod
    def parse(cls, name: str) -> CalibrationRow:
        """The row an ``Optimized Layer Name`` names (layer names may hold underscores themselves).

        Raises:
            ValueError: The name does not end in ``_Weights``, ``_Bias`` or ``_Activations``.

        Example:
            >>> CalibrationRow.parse("features_0_features_1_Bias")
            CalibrationRow(layer='features_0_features_1', part='Bias')
        """
        layer, separator, part = name.rpartition("_")
        if not separator or not layer or part not in PARTS:
            raise ValueError(f"{name!r} is not a calibration row name (<layer>_Weights, <layer>_Bias or <layer>_Activations)")
        return cls(layer, part)  # type: ignore[arg-type]

    @classmethod
    def of_layer(cls, layer: str) -> list[CalibrationRow]:
        """The rows a layer can have, in table order (a layer without learnables has only the last)."""
        return [cls(layer, part) for part in PARTS]


def calibration_rows(optimized: OptimizedNetwork, tensor_nodes: frozenset[str] | set[str]) -> dict[CalibrationRow, str]:
    """Every row of the table, in table order, with its ``Network Layer Name``.

    Args:
        optimized: The optimized network.
        tensor_nodes: The nodes calibration saw produce a float tensor (each gets an Activations row,
            except a forward argument that only an input layer takes: the input layer's row stands for it,
            as MATLAB's table has no row for the image before its input layer).

    Example:
        >>> import torch, torch.nn as nn
        >>> from dlqnb.core.graph import optimize_network
        >>> optimized = optimize_network(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
        >>> [(row.name, layer) for row, layer in calibration_rows(optimized, {"input_1", "0_1"}).items()]
        [('0_1_Weights', '1'), ('0_1_Bias', '1'), ('input_1_Activations', 'input_1'), ('0_1_Activations', '1')]
    """
    learnables: dict[CalibrationRow, str] = {}
    activations: dict[CalibrationRow, str] = {}
    for node in optimized.nodes():
        if feeds_input_layers_only(optimized.module, node):
            continue
        name = layer_name(node)
        layer = optimized.layers.get(name)
        if layer is not None:
            learnables[CalibrationRow(name, "Weights")] = layer.network_layer_name
            learnables[CalibrationRow(name, "Bias")] = layer.network_layer_name
        if name in tensor_nodes:
            activations[CalibrationRow(name, "Activations")] = layer.network_layer_name if layer is not None else name
    return learnables | activations


def row_statistics(
    optimized: OptimizedNetwork, state: CalibrationState, derivable: Mapping[str, list[str]], rows: Mapping[CalibrationRow, str]
) -> dict[CalibrationRow, RangeStats]:
    """The statistics of every row: learnables read from the folded weights and bias, activations as
    calibration recorded them, and those of layers that only move values derived from their sources.

    Args:
        optimized: The optimized network.
        state: What calibration recorded.
        derivable: Nodes whose statistics are the union of their sources', in network order
            (:func:`dlqnb.calibration.recorder.derivable_sources`).
        rows: The rows (:func:`calibration_rows`).
    """
    by_node = dict(state.stats)
    for name, sources in derivable.items():  # in network order: sources come first
        if name in state.tensor_nodes and name not in by_node:
            by_node[name] = RangeStats.union(by_node[source] for source in sources)
    result: dict[CalibrationRow, RangeStats] = {}
    for row in rows:
        if row.part == "Activations":
            result[row] = by_node[row.layer]
        else:
            fused = optimized.fused(row.layer)
            tensor = fused.layer.weight if row.part == "Weights" else fused.layer.bias
            result[row] = RangeStats.of(tensor.detach())
    return result


def calibration_table(rows: Mapping[CalibrationRow, str], statistics: Mapping[CalibrationRow, RangeStats]) -> pd.DataFrame:
    """The table itself: :data:`CALIBRATION_COLUMNS`, one line per row, in the order of ``rows``.

    Example:
        >>> import torch
        >>> row = CalibrationRow("fc", "Bias")
        >>> table = calibration_table({row: "fc"}, {row: RangeStats.of(torch.tensor([-1.0, 2.0]))})
        >>> table.to_dict("records")[0]
        {'Optimized Layer Name': 'fc_Bias', 'Network Layer Name': 'fc', 'Learnables / Activations': 'Bias', 'MinValue': -1.0, 'MaxValue': 2.0}
    """
    records = [
        (row.name, network_layer, row.part, statistics[row].min_value, statistics[row].max_value) for row, network_layer in rows.items()
    ]
    return pd.DataFrame.from_records(records, columns=CALIBRATION_COLUMNS)
