"""Reports and the index in a real browser (Debian's chromium, driven headless by Playwright)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import parameterized_notebook
from dlqnb.reports.report import expand_jobs, run_reports

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT_MS = 30_000  # every wait is bounded: a hang fails fast


def _browser_missing() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; the tests use Debian's chromium, not a downloaded one)"
    if not os.path.exists(CHROMIUM):
        return "Debian's chromium is not installed (apt-get install chromium)"
    return None


pytestmark = pytest.mark.skipif(_browser_missing() is not None, reason=_browser_missing() or "")


@pytest.fixture(scope="module")
def playwright():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as instance:  # one per module: the sync API cannot run two at once
        yield instance


@pytest.fixture(scope="module")
def browser(playwright):
    instance = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        timeout=TIMEOUT_MS,
    )
    yield instance
    instance.close()


def plot_notebook(folder: Path) -> Path:
    return parameterized_notebook(
        folder / "plots.ipynb",
        "seed = 0",
        "import torch, dlqnb\nfrom dlqnb.core.numerics import MSBHistogram\nfrom dlqnb.ui.plotting import msb_heatmap\n"
        "dlqnb.ui.plotting.use_offline_renderer()\n"
        "dlqnb.record_figure(msb_heatmap({'values': MSBHistogram.of(torch.tensor([0.03125, 2.1, 16.25]))}, {'values': 3}))",
        "dlqnb.record('seed_used', seed)",
    )


def open_page(browser, path: Path, fetched: list[str] | None = None):
    """Open a file; ``fetched`` collects every URL the page asks for that is not the file or inline data."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    if fetched is not None:
        page.on("request", lambda request: None if request.url.startswith(("file:", "data:", "blob:")) else fetched.append(request.url))
    page.goto(path.resolve().as_uri(), timeout=TIMEOUT_MS)
    return page, errors


def test_report_and_index_render_without_errors(browser, tmp_path):
    results = run_reports(expand_jobs([plot_notebook(tmp_path)], {"seed": [1, 2]}), tmp_path / "reports", jobs_at_once=1)
    assert [r.status for r in results] == ["ok", "ok"]
    ARTIFACTS.mkdir(exist_ok=True)

    page, errors = open_page(browser, tmp_path / "reports" / "plots-seed=1.html")
    page.wait_for_selector(".plotly .main-svg", timeout=TIMEOUT_MS)
    cells = page.locator(".plotly .heatmaplayer image, .plotly .heatmaplayer .hm")
    assert cells.count() > 0  # the heat map drew its cells: a non-empty SVG
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert errors == []

    page, errors = open_page(browser, tmp_path / "reports" / "index.html")
    links = page.locator("tbody td:first-child a")
    assert sorted(links.all_inner_texts()) == ["plots.ipynb", "plots.ipynb"]
    headers = page.locator("th").all_inner_texts()
    assert headers[:5] == ["notebook", "key figure", "seed", "status", "duration"] and "seed_used" in headers
    thumbnails = page.locator("img.thumbnail")
    # each report's key figure, drawn from the PNG embedded in the page (no file fetched)
    assert thumbnails.count() == 2, [r.figure_note for r in results]
    sizes = thumbnails.evaluate_all("images => images.map(image => [image.complete, image.naturalWidth, image.naturalHeight])")
    assert all(complete and width >= 200 and height >= 100 for complete, width, height in sizes), sizes
    seed_column = headers.index("seed")
    page.locator("th", has_text="seed_used").click(timeout=TIMEOUT_MS)
    page.locator("th", has_text="seed_used").click(timeout=TIMEOUT_MS)  # a second click sorts descending
    first_row = page.locator("tbody tr").first.locator("td").all_inner_texts()
    assert first_row[seed_column] == "2"  # sorted by the recorded value, largest first
    page.screenshot(path=str(ARTIFACTS / "index.png"), full_page=True)
    links.first.click(timeout=TIMEOUT_MS)
    page.wait_for_selector(".plotly .main-svg", timeout=TIMEOUT_MS)
    assert errors == []


def test_the_quantizer_apps_static_view_shows_its_table_and_heat_map_offline(playwright, tmp_path):
    """The app's HTML view (what an exported report shows) in a Chromium that cannot reach any network."""
    import torch
    import torchvision

    from dlqnb.ui.app import QuantizerApp

    torch.manual_seed(0)
    app = QuantizerApp(torchvision.models.squeezenet1_1(num_classes=5).eval(), torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    app.calibrate()
    app.switches["features_0_features_1"].value = False
    path = tmp_path / "app.html"
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{app.to_html()}</body></html>", encoding="utf-8")
    offline = playwright.chromium.launch(
        executable_path=CHROMIUM,
        # no proxy that answers and no name that resolves: anything fetched from a network fails
        args=["--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", "--disable-background-networking"],
        timeout=TIMEOUT_MS,
    )
    try:
        fetched: list[str] = []
        page, errors = open_page(offline, path, fetched)
        page.wait_for_selector(".plotly .main-svg", timeout=TIMEOUT_MS)
        rows = page.locator("tr.dlqnb-layer-row")
        table = app.quantizer.calibration_table
        assert rows.count() == len(table)
        first = rows.first.locator("td").all_inner_texts()
        assert first[1:4] == [table["Optimized Layer Name"][0], table["Network Layer Name"][0], "Weights"]
        assert rows.first.locator("input[type=checkbox]").is_checked() is False  # the switch turned off above
        assert rows.nth(2).locator("input[type=checkbox]").count() == 1  # the layer's Activations row has it too
        assert rows.first.locator("svg rect").count() > 3  # greyed bits, bars and the type's box
        heat_map = page.evaluate("() => { const plot = document.querySelector('.js-plotly-plot'); return [plot.data[0].type, plot.data[0].z.length, plot.layout.yaxis.ticktext]; }")
        assert heat_map == ["heatmap", 3, [f"features_0_features_1_{part}" for part in ("Weights", "Bias", "Activations")]]
        assert page.locator(".plotly .heatmaplayer image, .plotly .heatmaplayer .hm").count() > 0  # drawn, not only data
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "app_static_offline.png"), full_page=True)
        assert errors == [] and fetched == []
    finally:
        offline.close()
