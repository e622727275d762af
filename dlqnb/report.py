"""Batch reports: ``python -m dlqnb report [NOTEBOOK ...] [-p NAME VALUE ...] [--params-file FILE] [--out DIR]``.

Each notebook is executed by papermill (kernel ``python3``, a per-cell timeout) with its parameters,
from its own folder, and written to ``DIR/<name>.ipynb`` and a self-contained ``DIR/<name>.html``
(plotly.js embedded by the notebooks' offline renderer, so it opens without a network; ``--no-code``
hides the code cells). ``DIR/index.html`` lists every report with its notebook, a thumbnail of its key
figure, parameters (one column each), status, duration and headline numbers formatted for reading,
read from the notebooks' ``dlqnb.record`` and ``dlqnb.record_figure`` outputs, never from text; its
columns sort on a click. The thumbnail is rendered when the report is written, by Plotly's static
export (kaleido driving a headless Chromium), saved as ``DIR/<name>.png`` and embedded in the index,
which stays one file that opens offline; without kaleido or Chromium the row says so instead. ``summary.json`` and
``summary.csv`` hold the same results for programs (``pandas.read_csv``). A progress bar counts the
notebooks done and names the cell each running one is on.

* **Sweeps.** A parameter given several values (``-p seed 0 -p seed 1``, or a list in the parameters
  file) runs once per value, one report each; several swept parameters run their product.
* **Failures.** A failing notebook is recorded with its error (its executed copy shows where) and
  the batch goes on; the command exits non-zero if any failed.
* **No half-written reports.** Every file is written to a temporary name and renamed.
* **Where it runs.** A local process pool (``--jobs``, default 2; dlqnb's cache lock keeps parallel
  notebooks from training the same network twice), or a Dask distributed cluster with
  ``--scheduler ADDRESS`` (``pip install 'dlqnb[dask]'``).

With no notebook named, every ``notebooks/[0-9][0-9]_*.ipynb`` example runs on its defaults: this is
the README's main job.

Example:
    >>> job = ReportJob(Path("notebooks/05_quantization_numerics.ipynb"), {"seed": 1})
    >>> job.stem
    '05_quantization_numerics-seed=1'
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dlqnb.cache import atomic_write_bytes, atomic_write_text
from dlqnb.records import read_figures, read_records

__all__ = ["ReportJob", "ReportResult", "default_notebooks", "expand_jobs", "render_thumbnail", "run_report", "run_reports", "write_index"]

REPO_ROOT = Path(__file__).resolve().parent.parent
CELL_TIMEOUT = 1800
_EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>", re.IGNORECASE)


@dataclass(frozen=True)
class ReportJob:
    """One notebook with one set of parameters."""

    notebook: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    swept: tuple[str, ...] = ()

    @property
    def stem(self) -> str:
        """The report's file name: the notebook's, plus the swept parameters' values."""
        parts = [f"{name}={_slug(self.parameters[name])}" for name in (self.swept or tuple(sorted(self.parameters)))]
        return "-".join([self.notebook.stem, *parts])


@dataclass
class ReportResult:
    """What happened to one report."""

    notebook: str
    report: str
    status: str  # "ok" | "failed"
    seconds: float
    parameters: dict[str, Any] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    figure: str = ""  # the key figure's thumbnail (a PNG beside the report), or "" when there is none
    figure_note: str = ""  # why there is no thumbnail


def _slug(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", json.dumps(value) if not isinstance(value, str) else value)[:40]


def default_notebooks(folder: Path | None = None) -> list[Path]:
    """The example notebooks, in order."""
    folder = folder or REPO_ROOT / "notebooks"
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def expand_jobs(notebooks: list[Path], parameters: dict[str, list[Any]]) -> list[ReportJob]:
    """One job per notebook and combination of the swept values (parameters with several values)."""
    swept = tuple(name for name, values in parameters.items() if len(values) > 1)
    fixed = {name: values[0] for name, values in parameters.items() if len(values) == 1}
    combinations = itertools.product(*(parameters[name] for name in swept)) if swept else [()]
    jobs = []
    for combination in combinations:
        values = {**fixed, **dict(zip(swept, combination))}
        jobs.extend(ReportJob(notebook, values, swept) for notebook in notebooks)
    return jobs


def _to_html(executed: Path, show_code: bool) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=not show_code, exclude_input_prompt=not show_code)
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    # A report must open offline: drop the template's CDN scripts (require.js, MathJax); Plotly figures
    # carry plotly.js themselves and the notebooks use no LaTeX.
    return _EXTERNAL_SCRIPT.sub("", body)


def run_report(job: ReportJob, out_dir: Path, show_code: bool = True, cell_timeout: int = CELL_TIMEOUT) -> ReportResult:
    """Execute one job into ``out_dir`` (ipynb and html), recording success or the error."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{job.stem}.ipynb"
    partial = out_dir / f".{job.stem}.running.ipynb"
    started = time.time()
    status, error = "ok", ""
    previous = os.environ.get("DLQNB_STATIC_PLOTS")
    os.environ["DLQNB_STATIC_PLOTS"] = "1"  # the kernel inherits it: reports get static figures, not live widgets
    try:
        papermill.execute_notebook(
            str(job.notebook),
            str(partial),
            parameters=job.parameters,
            kernel_name="python3",
            cwd=str(job.notebook.parent),
            execution_timeout=cell_timeout,
            progress_bar=False,
            # Kernel log lines are noise here: its "running over TCP without encryption" warning (a loopback
            # kernel), and the "KeyboardInterrupt caught in kernel" error logged when jupyter_client's
            # interrupt-before-shutdown lands in a message handler. A cell's error reaches the report
            # through the executed notebook, not through this log.
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )
    except Exception as exc:  # papermill raises PapermillExecutionError and friends: record, go on
        status, error = "failed", f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"
    finally:
        if previous is None:
            os.environ.pop("DLQNB_STATIC_PLOTS", None)
        else:
            os.environ["DLQNB_STATIC_PLOTS"] = previous
    records: dict[str, Any] = {}
    figure, figure_note = "", "no key figure recorded"
    if partial.exists():
        records = read_records(partial)
        figures = read_figures(partial)
        if figures:
            figure, figure_note = render_thumbnail(next(iter(figures.values())), target.with_suffix(".png"))
        atomic_write_text(target.with_suffix(".html"), _to_html(partial, show_code))
        os.replace(partial, target)
    seconds = round(time.time() - started, 1)
    return ReportResult(str(job.notebook), target.with_suffix(".html").name, status, seconds, job.parameters, records, error, figure, figure_note)


def render_thumbnail(figure: dict[str, Any], path: Path, width: int = 480, height: int = 300) -> tuple[str, str]:
    """Render a figure's Plotly JSON to a PNG thumbnail with Plotly's static export (kaleido drives a
    headless Chromium).

    The figure is laid out at one and a half times the thumbnail's size with tight margins, then drawn
    at two thirds scale: titles and tick labels keep room to be read instead of being cut at 480 pixels.

    Returns:
        (file name, "") when written, or ("", why not): a missing kaleido or Chromium leaves the
        report without a thumbnail, never without its row.
    """
    try:
        import plotly.io as pio

        drawing = pio.from_json(json.dumps(figure))
        drawing.update_layout(margin={"l": 10, "r": 10, "t": 50, "b": 10}, title={"x": 0.01, "xanchor": "left"}, height=None, width=None)
        drawing.update_xaxes(automargin=True)
        drawing.update_yaxes(automargin=True)
        png = pio.to_image(drawing, format="png", width=round(width * 1.5), height=round(height * 1.5), scale=1 / 1.5)
    except Exception as exc:  # kaleido missing, no Chromium, a figure it cannot draw: report it, go on
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return "", f"no thumbnail: {type(exc).__name__}: {first_line[:200]}"
    atomic_write_bytes(path, png)
    return path.name, ""


def write_index(results: list[ReportResult], out_dir: Path) -> Path:
    """Write ``index.html``, ``summary.json`` and ``summary.csv`` listing every report.

    The index is one self-contained page (no network): a table with one row per report (a failed one
    keeps its row, with its error), its parameters as columns (so a sweep reads as a table), status,
    duration and the recorded numbers formatted for reading; click a column header to sort by it.
    """
    parameter_names = sorted({name for result in results for name in result.parameters})
    record_names = list(dict.fromkeys(name for result in results for name in result.records))
    header = ["notebook", "key figure", *parameter_names, "status", "duration", *record_names]
    rows = []
    for result in results:
        cells = [_cell(Path(result.notebook).name, f"<a href='{html.escape(result.report)}'>{html.escape(Path(result.notebook).name)}</a>")]
        cells.append(_thumbnail_cell(result, out_dir))
        cells += [_value_cell(result.parameters, name, "default") for name in parameter_names]
        error = f"<pre>{html.escape(result.error[:600])}</pre>" if result.error else ""
        cells.append(_cell(result.status, f"{result.status}{error}"))
        cells.append(_cell(result.seconds, f"{result.seconds:,.0f} s"))
        cells += [_value_cell(result.records, name, "") for name in record_names]
        rows.append(f"<tr class='{result.status}'>{''.join(cells)}</tr>")
    head = "".join(f"<th title='click to sort'>{html.escape(name)}</th>" for name in header)
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>dlqnb reports</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.4em;vertical-align:top}"
        "th{cursor:pointer;background:#f4f4f4;position:sticky;top:0}td.num{text-align:right;font-variant-numeric:tabular-nums}"
        "tr.failed{background:#fde2e2}pre{white-space:pre-wrap;max-width:40em;margin:.3em 0}"
        "img.thumbnail{width:240px;height:auto;display:block}.note{color:#777;font-size:.85em}</style></head><body>"
        f"<h1>dlqnb reports</h1><p>{sum(r.status == 'ok' for r in results)} of {len(results)} notebooks ran.</p>"
        f"<table id='reports'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<script>{_SORT_SCRIPT}</script></body></html>"
    )
    atomic_write_text(out_dir / "summary.json", json.dumps([asdict(r) for r in results], indent=2))
    atomic_write_text(out_dir / "summary.csv", _summary_csv(results, parameter_names, record_names))
    index = out_dir / "index.html"
    atomic_write_text(index, page)
    return index


# Sorts the index by a clicked column (numbers by value, text alphabetically; a second click reverses).
_SORT_SCRIPT = """
document.querySelectorAll('#reports th').forEach((th, column) => th.addEventListener('click', () => {
  const body = document.querySelector('#reports tbody');
  const ascending = th.dataset.order !== 'asc';
  document.querySelectorAll('#reports th').forEach(other => delete other.dataset.order);
  th.dataset.order = ascending ? 'asc' : 'desc';
  const key = row => row.children[column].dataset.sort;
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
    const order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
    return ascending ? order : -order;
  });
  rows.forEach(row => body.appendChild(row));
}));
"""

_SHARE_WORDS = ("accuracy", "ccr", "reduction", "fraction", "share", "rate", "agreement")


def _thumbnail_cell(result: ReportResult, out_dir: Path) -> str:
    """The key figure's thumbnail, embedded (the index stays one file that opens offline) and linked to the report."""
    png = out_dir / result.figure if result.figure else None
    if png is None or not png.is_file():
        return _cell("", f"<span class='note'>{html.escape(result.figure_note or 'no thumbnail')}</span>")
    data = base64.b64encode(png.read_bytes()).decode()
    image = f"<img class='thumbnail' src='data:image/png;base64,{data}' alt='key figure of {html.escape(result.report)}'>"
    return _cell(result.figure, f"<a href='{html.escape(result.report)}'>{image}</a>")


def _cell(sort_value: Any, shown: str) -> str:
    numeric = isinstance(sort_value, (int, float)) and not isinstance(sort_value, bool)
    key = repr(float(sort_value)) if numeric else json.dumps(sort_value) if not isinstance(sort_value, str) else sort_value
    return f"<td data-sort='{html.escape(key)}'{' class=num' if numeric else ''}>{shown}</td>"


def _value_cell(values: dict[str, Any], name: str, missing: str) -> str:
    """The cell of a parameter or record: formatted for reading, sorted by its raw value."""
    return _cell(values.get(name), html.escape(_format_value(name, values[name])) if name in values else missing)


def _format_value(name: str, value: Any) -> str:
    """A recorded value as people read it: 3-4 significant digits, shares as percentages, byte counts
    and other integers with separators, long lists shortened.

    Example:
        >>> _format_value("memory_reduction", 0.7469495670019488), _format_value("float_memory_bytes", 2900292)
        ('74.69 %', '2,900,292 B')
        >>> _format_value("float_accuracy", 0.949999988079071), _format_value("ratio", 1.23456), _format_value("seed", 3)
        ('95 %', '1.235', '3')
    """
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,} B" if "bytes" in name else f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if any(word in name.lower() for word in _SHARE_WORDS) and 0.0 <= value <= 1.0:
            return f"{100 * value:.4g} %"
        return f"{value:,.0f} B" if "bytes" in name else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(_format_value(name, item) for item in value[:4])
        return f"[{shown}{f', … ({len(value)} items)' if len(value) > 4 else ''}]"
    if isinstance(value, dict):
        return ", ".join(f"{key}: {_format_value(str(key), item)}" for key, item in list(value.items())[:4]) + (" …" if len(value) > 4 else "")
    return str(value)


def _summary_csv(results: list[ReportResult], parameter_names: list[str], record_names: list[str]) -> str:
    """One row per report for pandas: parameters and records as columns (lists and mappings as JSON)."""
    import csv
    import io

    stream = io.StringIO()
    writer = csv.writer(stream)
    writer.writerow(["notebook", "report", "figure", "status", "seconds", *parameter_names, *record_names, "error"])
    def plain(value: Any) -> Any:
        return json.dumps(value) if isinstance(value, (list, dict)) else value

    for result in results:
        writer.writerow(
            [Path(result.notebook).name, result.report, result.figure, result.status, result.seconds]
            + [plain(result.parameters.get(name, "")) for name in parameter_names]
            + [plain(result.records.get(name, "")) for name in record_names]
            + [_error_summary(result.error)]
        )
    return stream.getvalue()


def run_reports(jobs: list[ReportJob], out_dir: Path, show_code: bool = True, jobs_at_once: int = 2, scheduler: str | None = None) -> list[ReportResult]:
    """Run every job (process pool, or Dask with ``scheduler``) and write the index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if scheduler:
        from distributed import Client

        with Client(scheduler) as client:
            futures = client.map(run_report, jobs, out_dir=out_dir, show_code=show_code, pure=False)
            results = client.gather(futures)
        for result in results:
            print(_result_line(result), flush=True)
    else:
        results = _run_local(jobs, out_dir, show_code, jobs_at_once)
    write_index(results, out_dir)
    return results


def _run_local(jobs: list[ReportJob], out_dir: Path, show_code: bool, jobs_at_once: int) -> list[ReportResult]:
    """Run the jobs in a local pool with a progress bar: notebooks done, and the cell each running one is on."""
    from tqdm.auto import tqdm

    parallel = jobs_at_once > 1 and len(jobs) > 1
    print(f"Running {len(jobs)} notebook{'s' * (len(jobs) != 1)} ({jobs_at_once if parallel else 1} at a time) into {out_dir}", flush=True)
    # One process per notebook in parallel; one thread otherwise, so the bar keeps moving while it runs.
    pool = ProcessPoolExecutor(max_workers=jobs_at_once) if parallel else ThreadPoolExecutor(max_workers=1)
    results: dict[int, ReportResult] = {}
    with pool, tqdm(total=len(jobs), desc="notebooks", unit="nb", dynamic_ncols=True) as bar:
        futures: dict[Future[ReportResult], int] = {pool.submit(run_report, job, out_dir, show_code): i for i, job in enumerate(jobs)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                results[futures[future]] = result
                bar.update(1)
                tqdm.write(_result_line(result))
            bar.set_postfix_str(_running_cells([jobs[futures[f]] for f in pending], out_dir), refresh=True)
    return [results[i] for i in range(len(jobs))]


def _running_cells(jobs: list[ReportJob], out_dir: Path) -> str:
    """``stem: cell i/n`` for each running notebook, read from the partial notebook papermill saves as
    each cell starts (a file caught mid-write is skipped)."""
    parts = []
    for job in jobs:
        partial = out_dir / f".{job.stem}.running.ipynb"
        try:
            cells = json.loads(partial.read_text(encoding="utf-8"))["cells"]
        except (OSError, ValueError, KeyError):
            continue
        running = [i for i, cell in enumerate(cells) if cell.get("metadata", {}).get("papermill", {}).get("status") == "running"]
        if running:
            parts.append(f"{job.stem}: cell {running[0] + 1}/{len(cells)}")
    return "; ".join(parts)


def _result_line(result: ReportResult) -> str:
    line = f"{result.status:6} {result.seconds:6.0f} s  {result.report}  {json.dumps(result.records)[:200]}"
    return line + (f"\n       {_error_summary(result.error)[:300]}" if result.error else "")


def _error_summary(error: str) -> str:
    """The line of an error that says what went wrong (papermill's message ends with the exception's line)."""
    lines = [line.strip() for line in error.splitlines() if line.strip() and not set(line.strip()) <= set("-=^~ ")]
    return next((line for line in reversed(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", line)), lines[-1] if lines else "")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _read_params_file(path: Path) -> dict[str, list[Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of parameter names to values (or lists of values to sweep)")
    return {name: value if isinstance(value, list) else [value] for name, value in data.items()}


def main(argv: list[str]) -> int:
    """``report`` subcommand."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dlqnb report", description="Execute notebooks as reports.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: every example)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="repeat a name to sweep its values")
    parser.add_argument("--params-file", type=Path, help="JSON or YAML mapping of parameters (lists are swept)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports")
    parser.add_argument("--no-code", action="store_true", help="hide code cells in the HTML reports")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks run at once in the local process pool")
    parser.add_argument("--scheduler", help="Dask scheduler address (runs on a Dask cluster instead)")
    args = parser.parse_args(argv)
    notebooks = [path.resolve() for path in args.notebooks] or default_notebooks()
    missing = [str(path) for path in notebooks if not path.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    parameters: dict[str, list[Any]] = _read_params_file(args.params_file) if args.params_file else {}
    given: dict[str, list[Any]] = {}
    for name, value in args.parameter:
        given.setdefault(name, []).append(_parse_value(value))
    parameters.update(given)  # the command line overrides the file
    results = run_reports(expand_jobs(notebooks, parameters), args.out.resolve(), not args.no_code, args.jobs, args.scheduler)
    failed = [r for r in results if r.status != "ok"]
    print(f"{len(results) - len(failed)} of {len(results)} reports ran; index: {args.out / 'index.html'}")
    return 1 if failed else 0
