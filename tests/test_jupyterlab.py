"""The quantizer app in a real JupyterLab on loopback, driven in Chromium by Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
LAYER = "fire2-squeeze1x1_fire2-relu_squeeze1x1"
ROWS = ".dlqnb-layer-table .dlqnb-layer-row"
# SqueezeNet's table: a Weights and a Bias row for each of its 26 convolutions, and 41 Activations rows (the input
# layer, 26 convolutions with their ReLUs fused, 3 max poolings, 8 concatenations, the dropout, the pooling and the flatten)
TABLE_ROWS = 2 * 26 + 41


def _missing() -> str | None:
    for module, hint in (("playwright", "pip install playwright"), ("jupyterlab", "pip install jupyterlab")):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed ({hint})"
    if not os.path.exists(CHROMIUM):
        return "Debian's chromium is not installed (apt-get install chromium)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Lab:
    url: str
    log: Path


@pytest.fixture
def jupyterlab(tmp_path):
    root = tmp_path / "lab"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "notebooks" / "07_quantizer_app.ipynb", root / "notebooks")  # autosave writes here, not in the repo
    port, token = free_port(), "dlqnb-test"
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.news_url="]
    log = open(tmp_path / "lab.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield Lab(f"http://127.0.0.1:{port}/lab/tree/notebooks/07_quantizer_app.ipynb?token={token}", tmp_path / "lab.log")
    server.terminate()
    server.wait(timeout=20)
    log.close()


def run_all_cells(page) -> None:
    """Run > Run All Cells once the kernel is idle. A click before the kernel session exists is lost, so
    confirm that a cell started (prompt [*] or [n], or the kernel busy) and try again only if nothing did:
    running the notebook twice would leave the test clicking an app that is no longer shown."""
    page.locator(".jp-StatusBar-TextItem", has_text="Idle").first.wait_for(timeout=120_000)
    started = (
        "() => Array.from(document.querySelectorAll('.jp-InputPrompt')).some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"
        " || Array.from(document.querySelectorAll('.jp-StatusBar-TextItem')).some(t => /Busy/.test(t.textContent))"
    )
    for _ in range(3):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click(timeout=30_000)
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click(timeout=30_000)
        try:
            page.wait_for_function(started, timeout=60_000)
            return
        except Exception:  # playwright's TimeoutError: nothing ran yet
            page.keyboard.press("Escape")
    raise AssertionError("JupyterLab did not start running the notebook's cells")


def wait_until_all_cells_ran(page, timeout: float) -> None:
    """Every code cell has its execution count and the kernel is idle."""
    page.wait_for_function(
        "() => { const prompts = Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputPrompt'));"
        " return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent)); }",
        timeout=timeout,
    )
    page.locator(".jp-StatusBar-TextItem", has_text="Idle").first.wait_for(timeout=timeout)


def what_the_page_shows(page, lab: Lab) -> str:
    """The app's status, the notebook's outputs (a traceback, if any) and the end of JupyterLab's log,
    for a failure message that says why."""
    try:
        outputs = "\n".join(text[-1500:] for text in page.locator(".jp-OutputArea-output").all_inner_texts())
    except Exception as exc:  # the page itself is gone
        outputs = f"(could not read the outputs: {exc})"
    log = lab.log.read_text(errors="replace")[-1500:] if lab.log.exists() else "(no log)"
    return f"notebook outputs:\n{outputs[-4000:]}\n\nJupyterLab log:\n{log}"


def test_app_calibrates_and_shows_the_selected_layers_heat_map(jupyterlab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, timeout=30_000,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            page.goto(jupyterlab.url, timeout=60_000)
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            run_all_cells(page)
            # the notebook calibrates, validates and ranks sensitivity, then its last cell shows the app (the kernel
            # starts, loads the merch network, trains it first where the cache is new): a bound, not a speed target
            page.wait_for_function(f"() => document.querySelectorAll('{ROWS}').length >= {TABLE_ROWS}", timeout=900_000)
            wait_until_all_cells_ran(page, timeout=120_000)
            assert page.locator(".widget-html", has_text="Calibrated on 55 images").count() == 1
            # Calibrate in the browser: the table is built anew and the same 55 images are counted once
            page.evaluate(f"() => document.querySelectorAll('{ROWS}').forEach(r => r.dataset.before = '1')")
            page.locator("button.jupyter-button", has_text="Calibrate").click(timeout=30_000)
            page.wait_for_function(f"() => document.querySelectorAll('{ROWS}:not([data-before])').length >= {TABLE_ROWS}", timeout=300_000)
            page.wait_for_selector(".widget-html:has-text('Calibrated on 55 images')", timeout=60_000)
            rows = page.locator(f"{ROWS}:not([data-before])")
            name = page.locator(".dlqnb-layer-table button", has_text=f"{LAYER}_Bias")
            name.click(timeout=30_000)
            page.wait_for_function(
                f"() => Array.from(document.querySelectorAll('.plotly .ytick text')).some(t => t.textContent.startsWith('{LAYER}_Weights'))",
                timeout=60_000,
            )
            # the name is shown in full, not cut off
            assert name.evaluate("b => b.scrollWidth <= b.clientWidth")
            check = rows.locator("input[type=checkbox]").nth(1)  # a Quantize box (every row of a layer shows its one box)
            check.click(timeout=30_000)
            page.wait_for_selector(".widget-html:has-text('1 kept in float')", timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab_app.png"))
        except Exception as exc:
            page.screenshot(path=str(ARTIFACTS / "jupyterlab_app_failure.png"))  # what the browser showed
            raise AssertionError(f"{type(exc).__name__}: {str(exc)[:500]}\n\n{what_the_page_shows(page, jupyterlab)}") from exc
        finally:
            browser.close()
