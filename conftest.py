"""Test-session set-up shared by the unit tests, the doctests under dlqnb/ and the notebooks (nbval).

Tests never touch the user's cache: before anything is collected, ``DLQNB_CACHE`` points at a
temporary folder of this session (notebook kernels inherit it). Set ``DLQNB_TEST_CACHE`` to a folder
of your own to keep trained networks and the compiled kernel between runs.
"""

from __future__ import annotations

import os
import tempfile


def pytest_configure(config) -> None:
    os.environ["DLQNB_CACHE"] = os.environ.get("DLQNB_TEST_CACHE") or tempfile.mkdtemp(prefix="dlqnb-test-cache-")
