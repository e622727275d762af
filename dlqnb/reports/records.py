"""Headline numbers and the key figure of a notebook, recorded as machine-readable outputs.

``dlqnb.record("quantized_accuracy", 0.95)`` displays the value as a cell output with the MIME type
:data:`RECORD_MIME_TYPE` (plus a plain-text line for people). The report tool reads these outputs
back from the executed notebook with :func:`read_records`; nothing scrapes printed text.
``dlqnb.record_figure(fig)`` marks the Plotly figure the report index shows as a thumbnail
(:data:`FIGURE_MIME_TYPE`, read back with :func:`read_figures`).

Example:
    >>> record("answer", 42)
    answer = 42
    >>> recorded()["answer"]
    42
"""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any

__all__ = ["FIGURE_MIME_TYPE", "RECORD_MIME_TYPE", "read_figures", "read_records", "record", "record_figure", "recorded"]

RECORD_MIME_TYPE = "application/vnd.dlqnb.record+json"
FIGURE_MIME_TYPE = "application/vnd.dlqnb.figure+json"

_session: dict[str, Any] = {}


def _plain(value: Any) -> Any:
    """A JSON value for numbers, strings, bools, lists and dicts of them (numpy/torch scalars too)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"a recorded number must be finite, got {value}")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    raise TypeError(f"cannot record a {type(value).__name__}; record numbers, strings, lists or dicts")


def record(name: str, value: Any) -> None:
    """Record a headline result of the running notebook.

    Args:
        name: A short identifier, e.g. ``"quantized_accuracy"``.
        value: A number, string, bool, or a list/dict of them.

    Raises:
        ValueError: If the name is empty or the value is not finite.
        TypeError: If the value cannot be written as JSON.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"record needs a non-empty name, got {name!r}")
    plain = _plain(value)
    _session[name] = plain
    _show(RECORD_MIME_TYPE, {"name": name, "value": plain}, f"{name} = {plain!r}")


def record_figure(figure: Any, name: str | None = None) -> Any:
    """Mark a Plotly figure as the notebook's key figure: the report index shows a thumbnail of it.

    The figure is written into the notebook as JSON with the MIME type :data:`FIGURE_MIME_TYPE`; the
    report tool renders it to a small PNG when it writes the report. Returns the figure, so a cell
    ending in this call displays it as usual.

    Args:
        figure: A Plotly figure (``go.Figure`` or ``go.FigureWidget``).
        name: What the figure shows (default: its title).

    Example:
        >>> import plotly.graph_objects as go
        >>> fig = record_figure(go.Figure(go.Bar(y=[1, 2]), layout={"title": "Bars"}))
        key figure: Bars

    Raises:
        TypeError: ``figure`` is not a Plotly figure.
    """
    if not hasattr(figure, "to_json") or not hasattr(figure, "to_plotly_json"):
        raise TypeError(f"record_figure takes a Plotly figure, got {type(figure).__name__}")
    if name is None:
        name = getattr(getattr(figure.layout, "title", None), "text", None) or "key figure"
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"record_figure needs a non-empty name, got {name!r}")
    _show(FIGURE_MIME_TYPE, {"name": name, "figure": json.loads(figure.to_json())}, f"key figure: {name}")
    return figure


def _show(mime_type: str, payload: dict[str, Any], text: str) -> None:
    """Display ``payload`` as a ``mime_type`` output with a plain-text line for people; outside
    IPython, print the line (there is no notebook to write into)."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        get_ipython = None
    if get_ipython is None or get_ipython() is None:
        print(text)
        return
    display({mime_type: payload, "text/plain": text}, raw=True)


def read_figures(notebook: str | os.PathLike[str] | Any) -> dict[str, Any]:
    """The figures a notebook marked with :func:`record_figure`, by name, as Plotly JSON (in order).

    Args:
        notebook: A path to an executed ``.ipynb`` file, or a notebook already read (nbformat).
    """
    return {payload["name"]: payload["figure"] for payload in _payloads(notebook, FIGURE_MIME_TYPE)}


def recorded() -> dict[str, Any]:
    """Everything recorded in this process, by name (a copy)."""
    return dict(_session)


def read_records(notebook: str | os.PathLike[str] | Any) -> dict[str, Any]:
    """The values a notebook recorded, by name (a later record of a name wins).

    Args:
        notebook: A path to an executed ``.ipynb`` file, or a notebook already read (nbformat).
    """
    return {payload["name"]: payload["value"] for payload in _payloads(notebook, RECORD_MIME_TYPE)}


def _payloads(notebook: str | os.PathLike[str] | Any, mime_type: str) -> list[dict[str, Any]]:
    if isinstance(notebook, (str, os.PathLike)):
        with open(notebook, encoding="utf-8") as stream:
            notebook = json.load(stream)
    return [
        output["data"][mime_type]
        for cell in notebook["cells"]
        for output in cell.get("outputs", [])
        if mime_type in output.get("data", {})
    ]
