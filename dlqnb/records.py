"""Headline numbers of a notebook, recorded as machine-readable outputs.

``dlqnb.record("quantized_accuracy", 0.95)`` displays the value as a cell output with the MIME type
:data:`RECORD_MIME_TYPE` (plus a plain-text line for people). The report tool reads these outputs
back from the executed notebook with :func:`read_records`; nothing scrapes printed text.

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

__all__ = ["RECORD_MIME_TYPE", "read_records", "record", "recorded"]

RECORD_MIME_TYPE = "application/vnd.dlqnb.record+json"

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
    text = f"{name} = {plain!r}"
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # plain Python: the text line is all there is
        print(text)
        return
    if get_ipython() is None:
        print(text)
        return
    display({RECORD_MIME_TYPE: {"name": name, "value": plain}, "text/plain": text}, raw=True)


def recorded() -> dict[str, Any]:
    """Everything recorded in this process, by name (a copy)."""
    return dict(_session)


def read_records(notebook: str | os.PathLike[str] | Any) -> dict[str, Any]:
    """The values a notebook recorded, by name (a later record of a name wins).

    Args:
        notebook: A path to an executed ``.ipynb`` file, or a notebook already read (nbformat).
    """
    if isinstance(notebook, (str, os.PathLike)):
        with open(notebook, encoding="utf-8") as stream:
            notebook = json.load(stream)
    values: dict[str, Any] = {}
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            payload = output.get("data", {}).get(RECORD_MIME_TYPE)
            if payload is not None:
                values[payload["name"]] = payload["value"]
    return values
