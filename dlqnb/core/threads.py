"""One check for a CPU thread count, shared by training (torch's intra-op threads) and the CPU runtimes.

Example:
    >>> check_threads(None)
    >>> check_threads(2)
"""

from __future__ import annotations

import numbers
from typing import Any


def check_threads(threads: Any) -> None:
    """Refuse a thread count torch or a CPU runtime would reject with its own error (None: every core).

    Args:
        threads: A positive whole number of CPU threads, or None.

    Raises:
        ValueError: ``threads`` not None or a positive whole number.

    Example:
        >>> check_threads(2.5)
        Traceback (most recent call last):
        ...
        ValueError: threads must be a positive whole number of CPU threads (or None for all cores), got 2.5
    """
    # bool is an Integral, but threads=True is a mistake, not one thread
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1):
        raise ValueError(f"threads must be a positive whole number of CPU threads (or None for all cores), got {threads!r}")
