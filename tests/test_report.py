"""Batch reports: sweeps, failures recorded, hidden code, the index, and the Dask path on a LocalCluster."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import parameterized_notebook
from dlqnb.reports import report
from dlqnb.reports.report import ReportJob, expand_jobs, run_reports


def tiny_notebook(folder: Path, name: str = "tiny.ipynb") -> Path:
    body = 'import dlqnb\ndlqnb.record("double", x * 2)\nprint("double = 999")  # never read\nassert not fail, "asked to fail"'
    return parameterized_notebook(folder / name, "x = 1\nfail = False", body)


def test_sweep_gives_one_report_per_value_with_recorded_numbers(tmp_path):
    notebook = tiny_notebook(tmp_path)
    jobs = expand_jobs([notebook], {"x": [2, 5]})
    assert [job.stem for job in jobs] == ["tiny-x=2", "tiny-x=5"]
    results = run_reports(jobs, tmp_path / "out", jobs_at_once=2)
    assert [r.records for r in results] == [{"double": 4}, {"double": 10}]
    assert all(r.status == "ok" for r in results)
    index = (tmp_path / "out" / "index.html").read_text()
    assert "tiny-x=2.html" in index and "tiny-x=5.html" in index
    assert "<th title='click to sort'>x</th>" in index and "<th title='click to sort'>double</th>" in index  # columns
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["parameters"] for s in summary] == [{"x": 2}, {"x": 5}]
    table = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(table["x"]) == [2, 5] and list(table["double"]) == [4, 10] and list(table["status"]) == ["ok", "ok"]
    assert [path.name for path in (tmp_path / "out").glob(".*")] == [".locks"]  # nothing half-written left, only the locks folder


def test_a_failing_notebook_is_recorded_and_the_batch_goes_on(tmp_path):
    notebook = tiny_notebook(tmp_path)
    results = run_reports(expand_jobs([notebook], {"fail": [True, False]}), tmp_path / "out", jobs_at_once=1)
    assert [r.status for r in results] == ["failed", "ok"]
    assert "asked to fail" in results[0].error
    assert (tmp_path / "out" / "tiny-fail=true.html").exists()  # the executed copy shows where it failed
    index = (tmp_path / "out" / "index.html").read_text()
    assert "class='failed'" in index and "asked to fail" in index  # the failed row keeps its error
    table = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert table["status"].tolist() == ["failed", "ok"] and "asked to fail" in table["error"][0]


def test_command_line_exit_code_params_file_and_hidden_code(tmp_path):
    notebook = tiny_notebook(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("x: [3]\nfail: false\n")
    code = report.main([str(notebook), "--params-file", str(params), "--out", str(tmp_path / "out"), "--no-code", "--jobs", "1"])
    assert code == 0
    page = (tmp_path / "out" / "tiny-fail=false-x=3.html").read_text()  # unswept parameters name it, sorted
    assert "dlqnb.record(" not in page  # code hidden
    assert report.main([str(notebook), "-p", "fail", "true", "--out", str(tmp_path / "out2"), "--jobs", "1"]) == 1


def test_dask_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed", reason="the Dask extra (pip install 'dlqnb[dask]') is not installed")
    notebook = tiny_notebook(tmp_path)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None, processes=True) as cluster:
        results = run_reports(expand_jobs([notebook], {"x": [7, 8]}), tmp_path / "out", scheduler=cluster.scheduler_address)
    assert [r.records for r in results] == [{"double": 14}, {"double": 16}]


def test_job_stem_for_defaults():
    assert ReportJob(Path("notebooks/05_x.ipynb")).stem == "05_x"


def test_batch_shows_progress_without_kernel_noise(tmp_path, capfd):
    notebook = tiny_notebook(tmp_path)
    assert report.main([str(notebook), "-p", "x", "1", "-p", "x", "2", "--out", str(tmp_path / "out"), "--jobs", "2"]) == 0
    out, err = capfd.readouterr()
    assert out.splitlines()[0].startswith("Running 2 notebooks (2 at a time)")  # the first line, before any kernel starts
    assert "notebooks: 100%" in err and "2/2" in err  # the overall bar reached the end
    assert "without encryption" not in out + err  # the kernels' TCP warning stays out of the terminal


def test_running_notebooks_show_the_cell_they_are_on(tmp_path):
    job = ReportJob(tmp_path / "05_x.ipynb")
    cells = [{"metadata": {"papermill": {"status": s}}} for s in ("completed", "running", "pending")]
    partial = report._partial_path(tmp_path, job.stem)
    partial.write_text(json.dumps({"cells": cells}))
    assert report._running_cells([job], tmp_path) == "05_x: cell 2/3"
    partial.write_text('{"cells": [')  # caught mid-write: skipped
    assert report._running_cells([job], tmp_path) == ""


def test_index_formats_numbers_for_reading(tmp_path):
    result = report.ReportResult(
        "n.ipynb", "n.html", "ok", 12.3, {"seed": 0},
        {"float_accuracy": 0.949999988079071, "memory_reduction": 0.7469495670019488, "float_memory_bytes": 2900292,
         "loss": 0.123456789, "filters": [17, 18, 17, 16, 15, 14]},
    )
    index = report.write_index([result], tmp_path).read_text()
    for shown in (">95 %<", ">74.69 %<", ">2,900,292 B<", ">0.1235<", ">[17, 18, 17, 16, … (6 items)]<"):
        assert shown in index, shown
    cells = table_cells(index)
    assert all("0.949999988079071" not in text for text, _ in cells)  # nobody reads the raw float
    assert ("95 %", "0.949999988079071") in cells  # ... but the column sorts by the exact value


def table_cells(page: str) -> list[tuple[str, str]]:
    """``(visible text, data-sort)`` of every body cell of the index's tables."""
    from html.parser import HTMLParser

    class Cells(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.cells: list[tuple[str, str]] = []
            self.open: list[str] | None = None
            self.sort = ""

        def handle_starttag(self, tag, attrs):
            if tag == "td":
                self.open, self.sort = [], dict(attrs).get("data-sort") or ""

        def handle_endtag(self, tag):
            if tag == "td" and self.open is not None:
                self.cells.append(("".join(self.open), self.sort))
                self.open = None

        def handle_data(self, data):
            if self.open is not None:
                self.open.append(data)

    parser = Cells()
    parser.feed(page)
    return parser.cells


def _static_export_missing() -> str | None:
    import shutil

    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "kaleido is not installed (pip install kaleido): Plotly's static export draws the thumbnails"
    if not (shutil.which("chromium") or shutil.which("google-chrome")):
        return "no Chromium for kaleido to drive (apt-get install chromium)"
    return None


def figure_notebook(folder: Path) -> Path:
    return parameterized_notebook(
        folder / "figure.ipynb",
        "height = 3",
        "import dlqnb, plotly.graph_objects as go\ngo.Figure(go.Bar(y=[9, 9]), layout={'title': 'not the key figure'})",
        "dlqnb.record_figure(go.Figure(go.Bar(y=[1, height]), layout={'title': 'Bars'}))",
    )


@pytest.mark.skipif(_static_export_missing() is not None, reason=_static_export_missing() or "")
def test_the_key_figure_becomes_a_thumbnail_embedded_in_the_index(tmp_path):
    import base64
    import io

    from PIL import Image

    (result,) = run_reports(expand_jobs([figure_notebook(tmp_path)], {}), tmp_path / "out", jobs_at_once=1)
    assert result.status == "ok" and result.figure == "figure.png" and result.figure_note == ""
    png = (tmp_path / "out" / "figure.png").read_bytes()
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (480, 300)
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 2  # something is drawn, not a blank page
    index = (tmp_path / "out" / "index.html").read_text()
    assert f"src='data:image/png;base64,{base64.b64encode(png).decode()}'" in index  # embedded: one file, offline
    assert "<th title='click to sort'>key figure</th>" in index
    assert pd.read_csv(tmp_path / "out" / "summary.csv")["figure"].tolist() == ["figure.png"]


def test_a_thumbnail_whose_browser_fails_once_is_drawn_on_the_second_try(tmp_path, monkeypatch):
    import plotly.io

    calls = []

    def flaky_browser(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("browser did not start in time")
        return b"\x89PNG fake"

    monkeypatch.setattr(plotly.io, "to_image", flaky_browser)
    assert report.render_thumbnail({"data": [], "layout": {}}, tmp_path / "t.png") == ("t.png", "")
    assert len(calls) == 2 and (tmp_path / "t.png").read_bytes() == b"\x89PNG fake"


def test_a_figure_that_cannot_be_drawn_leaves_a_note_not_a_failure(tmp_path, monkeypatch):
    import plotly.io

    def no_browser(*args, **kwargs):
        raise RuntimeError("Chrome not found")

    monkeypatch.setattr(plotly.io, "to_image", no_browser)
    assert report.render_thumbnail({"data": [], "layout": {}}, tmp_path / "t.png") == ("", "no thumbnail: RuntimeError: Chrome not found")
    assert not (tmp_path / "t.png").exists()
    missing = report.ReportResult("n.ipynb", "n.html", "ok", 1.0, figure_note="no thumbnail: RuntimeError: Chrome not found")
    none = report.ReportResult("m.ipynb", "m.html", "ok", 1.0, figure_note="no key figure recorded")
    index = report.write_index([missing, none], tmp_path).read_text()
    assert "no thumbnail: RuntimeError: Chrome not found" in index and "no key figure recorded" in index
    assert "<img" not in index


def test_read_figures_returns_the_marked_figures_in_order(tmp_path):
    from dlqnb.reports.records import FIGURE_MIME_TYPE, read_figures

    def output(name: str) -> dict:
        return {"output_type": "display_data", "metadata": {}, "data": {FIGURE_MIME_TYPE: {"name": name, "figure": {"data": [], "layout": {"title": name}}}}}

    notebook = {"cells": [{"cell_type": "code", "outputs": [output("first")]}, {"cell_type": "code", "outputs": [output("second")]}]}
    figures = read_figures(notebook)
    assert list(figures) == ["first", "second"] and figures["second"]["layout"]["title"] == "second"


def test_every_example_notebook_marks_a_key_figure_for_its_thumbnail():
    import nbformat

    notebooks = report.default_notebooks()
    assert len(notebooks) >= 7
    unmarked = [
        path.name for path in notebooks
        if not any(cell.cell_type == "code" and "dlqnb.record_figure(" in cell.source for cell in nbformat.read(path, as_version=4).cells)
    ]
    assert unmarked == [], f"these example notebooks would show 'no key figure recorded' in the index: {unmarked}"


def test_the_index_has_one_table_per_notebook_with_its_own_columns(tmp_path):
    results = [
        report.ReportResult("a.ipynb", "a-x=1.html", "ok", 1.0, {"x": 1}, {"accuracy": 0.5}),
        report.ReportResult("a.ipynb", "a-x=2.html", "ok", 1.0, {"x": 2}, {"accuracy": 0.75}),
        report.ReportResult("b.ipynb", "b.html", "ok", 2.0, {"seed": 3}, {"filters": 40}),
    ]
    for result in results:
        (tmp_path / result.report).write_text("a report")
    index = report.write_index(results, tmp_path).read_text()
    sections = index.split("<section class='notebook'>")[1:]
    assert [section.split("</h2>")[0] for section in sections] == ["<h2>a.ipynb", "<h2>b.ipynb"]
    first, second = sections
    assert first.count("<tr class=") == 2 and second.count("<tr class=") == 1
    assert ">x</th>" in first and ">accuracy</th>" in first and ">seed</th>" not in first and ">filters</th>" not in first
    assert ">seed</th>" in second and ">filters</th>" in second and ">x</th>" not in second
    table = pd.read_csv(tmp_path / "summary.csv")  # still one row per report, every column
    assert len(table) == 3 and {"x", "seed", "accuracy", "filters"} <= set(table.columns)


def test_widget_outputs_show_their_static_html_in_the_report_without_the_cdn(tmp_path):
    """A widget needs a widget manager from a CDN: the report shows the output's own HTML instead
    (the quantizer app's static view), so it opens offline; the executed notebook keeps the state."""
    shown = (
        "import ipywidgets\n"
        "class Shown:\n"
        "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
        "        bundle = ipywidgets.IntSlider(3)._repr_mimebundle_()\n"
        "        bundle['text/html'] = '<p id=\"static-view\">the static view</p>'\n"
        "        return bundle\n"
        "Shown()"
    )
    notebook = parameterized_notebook(tmp_path / "widget.ipynb", "x = 1", shown)
    [result] = run_reports(expand_jobs([notebook], {}), tmp_path / "out", jobs_at_once=1)
    assert result.status == "ok", result.error
    executed = json.loads((tmp_path / "out" / "widget.ipynb").read_text())
    assert "application/vnd.jupyter.widget-state+json" in executed["metadata"]["widgets"]  # the state was there to drop
    page = (tmp_path / "out" / "widget.html").read_text()
    assert '<p id="static-view">the static view</p>' in page
    assert "widget-view+json" not in page and "widget-state+json" not in page
    assert "embed-amd.js" not in page and "unpkg.com" not in page
