"""Batch reports: ``python -m dlqnb report [NOTEBOOK ...] [-p NAME VALUE ...] [--params-file FILE] [--out DIR]``.

Each notebook is executed by papermill (kernel ``python3``, a per-cell timeout) with its parameters,
from its own folder, and written to ``DIR/<name>.ipynb`` and a self-contained ``DIR/<name>.html``
(plotly.js embedded by the notebooks' offline renderer, so it opens without a network; ``--no-code``
hides the code cells). ``DIR/index.html`` lists every report, in one table per notebook, with a thumbnail of its key
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
* **No half-written reports.** Every file is written to a temporary name (unique to the run) and renamed.
* **Runs that share a folder.** The index is updated under a file lock (``DIR/.locks/index.lock``) and
  merged: rows of this run replace the rows of the same reports, rows of other reports are kept while
  their report file is in the folder, so two batches writing into one folder at once both appear. A
  report being written by another run (same notebook and parameters) is waited for, with a message,
  never written twice at once (``DIR/.locks/<name>.lock``).
* **Stopping.** SIGTERM or SIGINT (Ctrl-C) stops the running notebooks and their kernels within
  seconds, writes the index of what finished (the stopped reports recorded as ``interrupted``, their
  previous report files untouched) and exits with 128 + the signal's number.
* **Where it runs.** A local process pool (``--jobs``, default 2; dlqnb's cache lock keeps parallel
  notebooks from training the same network twice), or a Dask distributed cluster with
  ``--scheduler ADDRESS`` (``pip install 'dlqnb[dask]'``; there a stop cancels the reports not yet
  started and the index lists what finished).
* **Parameters files.** JSON, or YAML (``.yaml``/``.yml``, needs PyYAML); a missing or malformed file
  is one line on stderr naming it, exit code 2.

With no notebook named, every ``notebooks/[0-9][0-9]_*.ipynb`` example runs on its defaults: this is
the README's main job.

Example:
    >>> job = ReportJob(Path("notebooks/05_quantization_numerics.ipynb"), {"seed": 1})
    >>> job.stem
    '05_quantization_numerics-seed=1'
"""

from __future__ import annotations

import base64
import contextlib
import html
import itertools
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from dlqnb.core.cache import atomic_write_bytes, atomic_write_text
from dlqnb.reports.records import read_figures, read_records

__all__ = [
    "BatchStopped",
    "ParamsFileError",
    "ReportJob",
    "ReportResult",
    "default_notebooks",
    "expand_jobs",
    "render_thumbnail",
    "run_report",
    "run_reports",
    "runs_alone",
    "write_index",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
CELL_TIMEOUT = 1800
#: Seconds the stopped notebooks get to end (their kernels are stopped first) before what is left is killed.
STOP_GRACE = 20.0
#: Seconds a run waits for another run's update of the same folder's index (it takes milliseconds).
INDEX_LOCK_TIMEOUT = 120.0
LOCKS_FOLDER = ".locks"
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
    """What happened to one report (one row of the index)."""

    notebook: str
    report: str
    status: str  # "ok" | "failed" | "interrupted"
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
    notebook = nbformat.read(executed, as_version=4)
    # Widgets need a widget manager loaded from a CDN (the template adds it when the notebook carries
    # widget state): without the state, nbconvert shows each widget output's static alternative instead
    # (the quantizer app's HTML view, a progress bar's text). The executed .ipynb keeps the state.
    notebook.metadata.pop("widgets", None)
    body, _ = exporter.from_notebook_node(notebook)
    # A report must open offline: drop the template's CDN scripts (require.js, MathJax); Plotly figures
    # carry plotly.js themselves and the notebooks use no LaTeX.
    return _EXTERNAL_SCRIPT.sub("", body)


def run_report(job: ReportJob, out_dir: Path, show_code: bool = True, cell_timeout: int = CELL_TIMEOUT) -> ReportResult:
    """Execute one job into ``out_dir`` (ipynb and html), recording success or the error.

    A run of the same report by another process (same notebook and parameters into the same folder)
    is waited for, with a message on stderr: the two never write one report at once. In a worker of
    :func:`run_reports` told to stop (SIGTERM or SIGINT), the notebook's kernel is stopped and the result is
    ``"interrupted"``; nothing is written and a previous report of the same name stays as it was.

    Example:
        (runs a notebook, so shown rather than run as a doctest)::

            result = run_report(ReportJob(Path("notebooks/05_quantization_numerics.ipynb")), Path("reports"))
            result.status, result.report  # ('ok', '05_quantization_numerics.html')
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if _worker_stop_signal is not None:
        return _not_started(job, started)
    try:
        with _report_lock(job, out_dir):
            return _execute(job, out_dir, show_code, cell_timeout, started)
    except _StoppedWhileWaiting:
        return _interrupted(job, started, f"not started: stopped by {_signal_name(_worker_stop_signal)} while another run wrote this report")


def _execute(job: ReportJob, out_dir: Path, show_code: bool, cell_timeout: int, started: float) -> ReportResult:
    """Run the notebook into a temporary copy of this run's own, then write the report from it."""
    import papermill

    if _worker_stop_signal is not None:  # told to stop while papermill was imported: start no kernel
        return _not_started(job, started)
    target = out_dir / f"{job.stem}.ipynb"
    partial = _partial_path(out_dir, job.stem)
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
    try:
        if _worker_stop_signal is not None:  # the kernel was stopped under it: this copy is not a report
            where = _cell_position(partial, last_started=True)
            return _interrupted(job, started, f"stopped by {_signal_name(_worker_stop_signal)}{f' at {where}' if where else ''}")
        records: dict[str, Any] = {}
        figure, figure_note = "", "no key figure recorded"
        if partial.exists():
            records = read_records(partial)
            figures = read_figures(partial)
            if figures:
                figure, figure_note = render_thumbnail(next(iter(figures.values())), target.with_suffix(".png"))
            atomic_write_text(target.with_suffix(".html"), _to_html(partial, show_code))
            os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()  # nothing half-written is left behind, whatever happened
    seconds = round(time.time() - started, 1)
    return ReportResult(str(job.notebook), target.with_suffix(".html").name, status, seconds, job.parameters, records, error, figure, figure_note)


def _interrupted(job: ReportJob, started: float, why: str) -> ReportResult:
    return ReportResult(str(job.notebook), f"{job.stem}.html", "interrupted", round(time.time() - started, 1), job.parameters, error=why)


def _not_started(job: ReportJob, started: float, signum: int | None = None) -> ReportResult:
    """The row of a job a stop came before: ``signum``, or the signal this worker was told to stop by."""
    return _interrupted(job, started, f"not started: the batch was stopped by {_signal_name(signum or _worker_stop_signal)}")


def _signal_name(signum: int | None) -> str:
    try:
        return signal.Signals(signum).name if signum is not None else "a signal"
    except ValueError:
        return f"signal {signum}"


def _partial_path(out_dir: Path, stem: str) -> Path:
    """A temporary name for the notebook being executed, unique to this run (process id and a random
    token): two runs writing the same report never share it."""
    return out_dir / f".{stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.running.ipynb"


def _partials(out_dir: Path, stem: str, pid: int | None = None) -> list[Path]:
    """The temporary notebooks of report ``stem`` (of process ``pid`` only, when given), newest first."""
    owner = str(pid) if pid is not None else r"\d+"
    pattern = re.compile(rf"\.{re.escape(stem)}\.{owner}-[0-9a-f]{{8}}\.running\.ipynb")
    found = [path for path in out_dir.glob(".*.running.ipynb") if pattern.fullmatch(path.name)]

    def modified(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0

    return sorted(found, key=modified, reverse=True)


def _lock_path(out_dir: Path, name: str) -> Path:
    folder = out_dir / LOCKS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.lock"


class _StoppedWhileWaiting(Exception):
    """The worker was told to stop while it waited for another run's lock."""


@contextlib.contextmanager
def _report_lock(job: ReportJob, out_dir: Path) -> Iterator[None]:
    """Hold the lock of one report: a second run of the same report into the same folder waits (and
    says so), checking once a second whether it was told to stop meanwhile."""
    lock = FileLock(str(_lock_path(out_dir, job.stem)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"{job.stem}: another run is writing this report into {out_dir}; waiting for it to finish", file=sys.stderr, flush=True)
        while True:
            if _worker_stop_signal is not None:
                raise _StoppedWhileWaiting from None
            try:
                lock.acquire(timeout=1)
                break
            except Timeout:
                continue
    try:
        yield
    finally:
        lock.release()


def render_thumbnail(figure: dict[str, Any], path: Path, width: int = 480, height: int = 300) -> tuple[str, str]:
    """Render a figure's Plotly JSON to a PNG thumbnail with Plotly's static export (kaleido drives a
    headless Chromium).

    The figure is laid out at one and a half times the thumbnail's size with tight margins, then drawn
    at two thirds scale: titles and tick labels keep room to be read instead of being cut at 480 pixels.

    Returns:
        (file name, "") when written, or ("", why not): a missing kaleido or Chromium leaves the
        report without a thumbnail, never without its row. A drawing that fails is tried once more
        (a headless Chromium can fail to start on a loaded machine).
    """
    try:
        import plotly.io as pio

        drawing = pio.from_json(json.dumps(figure))
        drawing.update_layout(margin={"l": 10, "r": 10, "t": 50, "b": 10}, title={"x": 0.01, "xanchor": "left"}, height=None, width=None)
        drawing.update_xaxes(automargin=True)
        drawing.update_yaxes(automargin=True)
    except Exception as exc:  # plotly missing, or a figure it cannot read: report it, go on
        return "", _no_thumbnail(exc)
    for attempt in range(2):
        try:
            png = pio.to_image(drawing, format="png", width=round(width * 1.5), height=round(height * 1.5), scale=1 / 1.5)
            break
        except ImportError as exc:  # kaleido missing: trying again changes nothing
            return "", _no_thumbnail(exc)
        except Exception as exc:  # no Chromium, a browser that did not start in time, a figure it cannot draw
            if attempt == 1:
                return "", _no_thumbnail(exc)
    atomic_write_bytes(path, png)
    return path.name, ""


def _no_thumbnail(exc: Exception) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"no thumbnail: {type(exc).__name__}: {first_line[:200]}"


def write_index(results: list[ReportResult], out_dir: Path) -> Path:
    """Write ``index.html``, ``summary.json`` and ``summary.csv`` listing every report in ``out_dir``.

    The index is one self-contained page (no network) with a section per notebook: a table with one
    row per report (a failed or interrupted one keeps its row, with its error), that notebook's
    parameters as columns (so a sweep reads as a table), status, duration and the numbers it recorded,
    formatted for reading; click a column header to sort by it. ``summary.csv`` stays one row per report.

    Runs that share the folder do not erase each other's rows: under the folder's index lock, the rows
    already in ``summary.json`` are read back, those of the same reports are replaced by ``results``,
    and the others are kept while their report file is still in the folder (a deleted report leaves
    the index on the next update). Rows already listed come first, then this run's, in its order.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.html").write_text("a report")
        >>> _ = write_index([ReportResult("a.ipynb", "a.html", "ok", 1.0)], folder)
        >>> _ = write_index([ReportResult("b.ipynb", "b.html", "failed", 2.0)], folder)
        >>> [row["report"] for row in json.loads((folder / "summary.json").read_text())]
        ['a.html', 'b.html']

    Raises:
        TimeoutError: Another run held the folder's index lock for :data:`INDEX_LOCK_TIMEOUT` seconds.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    lock_path = _lock_path(out_dir, "index")
    try:
        with FileLock(str(lock_path), timeout=INDEX_LOCK_TIMEOUT):
            rows = _merged_rows(_previous_rows(out_dir), results, out_dir)
            return _write_index_files(rows, out_dir)
    except Timeout:
        raise TimeoutError(f"{lock_path}: another run has been updating the index of {out_dir} for {INDEX_LOCK_TIMEOUT:.0f} s; is it stuck?") from None


def _previous_rows(out_dir: Path) -> list[ReportResult]:
    """The rows ``summary.json`` holds, if it is readable; an unreadable one is replaced, with a warning."""
    path = out_dir / "summary.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        warnings.warn(f"{path} cannot be read ({error}); the index is rewritten with this run's reports only", stacklevel=3)
        return []
    if not isinstance(rows, list):
        warnings.warn(f"{path} does not hold a list of rows; the index is rewritten with this run's reports only", stacklevel=3)
        return []
    return [result for result in map(_row_to_result, rows) if result is not None]


def _row_to_result(row: Any) -> ReportResult | None:
    """A row of ``summary.json`` as a result, or None if it is not one (its file names must be plain
    names inside the folder: the index embeds the thumbnail it names)."""
    names = {item.name for item in fields(ReportResult)}
    if not isinstance(row, dict) or not {"notebook", "report", "status", "seconds"} <= row.keys():
        return None
    try:
        result = ReportResult(**{name: value for name, value in row.items() if name in names})
    except TypeError:
        return None
    texts = (result.notebook, result.report, result.status, result.error, result.figure, result.figure_note)
    typed = all(isinstance(text, str) for text in texts) and isinstance(result.seconds, (int, float)) and not isinstance(result.seconds, bool)
    if not typed or not (isinstance(result.parameters, dict) and isinstance(result.records, dict)):
        return None
    plain = all(name == Path(name).name and not name.startswith(".") for name in (result.report, result.figure or "x"))
    return result if plain else None


def _merged_rows(previous: list[ReportResult], results: list[ReportResult], out_dir: Path) -> list[ReportResult]:
    """Rows of other reports still on disk, then this run's rows (one per report; the last wins)."""
    current = {result.report: result for result in results}
    kept = [row for row in previous if row.report not in current and (out_dir / row.report).is_file()]
    return kept + list(current.values())


def _write_index_files(results: list[ReportResult], out_dir: Path) -> Path:
    groups: dict[str, list[ReportResult]] = {}
    for result in results:
        groups.setdefault(Path(result.notebook).name, []).append(result)
    sections = "".join(_notebook_section(name, group, out_dir) for name, group in groups.items())
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>dlqnb reports</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.4em;vertical-align:top}"
        "th{cursor:pointer;background:#f4f4f4;position:sticky;top:0}td.num{text-align:right;font-variant-numeric:tabular-nums}"
        "tr.failed{background:#fde2e2}tr.interrupted{background:#fff3cd}pre{white-space:pre-wrap;max-width:40em;margin:.3em 0}"
        "img.thumbnail{width:240px;height:auto;display:block}.note{color:#777;font-size:.85em}h2{margin-top:1.5em}</style></head><body>"
        f"<h1>dlqnb reports</h1><p>{sum(r.status == 'ok' for r in results)} of {len(results)} notebooks ran.</p>"
        f"{sections}<script>{_SORT_SCRIPT}</script></body></html>"
    )
    parameter_names = sorted({name for result in results for name in result.parameters})
    record_names = list(dict.fromkeys(name for result in results for name in result.records))
    atomic_write_text(out_dir / "summary.json", json.dumps([asdict(r) for r in results], indent=2))
    atomic_write_text(out_dir / "summary.csv", _summary_csv(results, parameter_names, record_names))
    index = out_dir / "index.html"
    atomic_write_text(index, page)
    return index


def _notebook_section(notebook: str, results: list[ReportResult], out_dir: Path) -> str:
    """One notebook's reports as a table of their own: its parameters and records are its columns only,
    so one notebook's sweep reads as a table and other notebooks do not widen it."""
    parameter_names = sorted({name for result in results for name in result.parameters})
    record_names = list(dict.fromkeys(name for result in results for name in result.records))
    header = ["notebook", "key figure", *parameter_names, "status", "duration", *record_names]
    rows = []
    for result in results:
        name = html.escape(notebook)
        # An interrupted run wrote no report: a link would open an older one, or nothing.
        link = name if result.status == "interrupted" else f"<a href='{html.escape(result.report)}'>{name}</a>"
        cells = [_cell(notebook, link)]
        cells.append(_thumbnail_cell(result, out_dir))
        cells += [_value_cell(result.parameters, name, "default") for name in parameter_names]
        error = f"<pre>{html.escape(result.error[:600])}</pre>" if result.error else ""
        cells.append(_cell(result.status, f"{result.status}{error}"))
        cells.append(_cell(result.seconds, f"{result.seconds:,.0f} s"))
        cells += [_value_cell(result.records, name, "") for name in record_names]
        rows.append(f"<tr class='{result.status}'>{''.join(cells)}</tr>")
    head = "".join(f"<th title='click to sort'>{html.escape(name)}</th>" for name in header)
    ran = f"{sum(r.status == 'ok' for r in results)} of {len(results)} ran"
    return (
        f"<section class='notebook'><h2>{html.escape(notebook)}</h2><p class='note'>{ran}</p>"
        f"<table class='reports'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


# Sorts a notebook's table by a clicked column (numbers by value, text alphabetically; a second click reverses).
_SORT_SCRIPT = """
document.querySelectorAll('table.reports').forEach(table => {
  const headers = table.querySelectorAll('th');
  headers.forEach((th, column) => th.addEventListener('click', () => {
    const body = table.tBodies[0];
    const ascending = th.dataset.order !== 'asc';
    headers.forEach(other => delete other.dataset.order);
    th.dataset.order = ascending ? 'asc' : 'desc';
    const key = row => row.children[column].dataset.sort;
    const rows = Array.from(body.rows).sort((a, b) => {
      const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
      const order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(row => body.appendChild(row));
  }));
});
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


class BatchStopped(Exception):
    """SIGTERM or SIGINT stopped :func:`run_reports`; the index of what finished was written.

    Attributes:
        signum: The signal's number.
        results: Every job's result, those stopped or never started as ``"interrupted"``.
    """

    def __init__(self, signum: int, results: list[ReportResult]) -> None:
        self.signum = signum
        self.results = results
        finished = sum(result.status != "interrupted" for result in results)
        super().__init__(f"stopped by {_signal_name(signum)}: {finished} of {len(results)} reports finished")


def run_reports(jobs: list[ReportJob], out_dir: Path, show_code: bool = True, jobs_at_once: int = 2, scheduler: str | None = None) -> list[ReportResult]:
    """Run every job (process pool, or Dask with ``scheduler``) and write the index.

    Called from the main thread, SIGTERM and SIGINT (Ctrl-C) stop the batch instead of killing this
    process: the running notebooks and their kernels are stopped (killed if they have not ended
    within :data:`STOP_GRACE` seconds), no further notebook starts, the index of what finished is
    written, and :class:`BatchStopped` is raised.

    Example:
        (runs notebooks, so shown rather than run as a doctest)::

            jobs = expand_jobs([Path("notebooks/05_quantization_numerics.ipynb")], {"seed": [0, 1]})
            [r.status for r in run_reports(jobs, Path("reports"))]  # ['ok', 'ok']

    Raises:
        BatchStopped: SIGTERM or SIGINT arrived (after the index was written).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with _stop_requests() as stop:
        if scheduler:
            results = _run_dask(jobs, out_dir, show_code, scheduler, stop)
        else:
            results = _run_local(jobs, out_dir, show_code, jobs_at_once, stop)
        write_index(results, out_dir)  # a second signal meanwhile only repeats the request: the index is written whole
    if stop.signum is not None:
        raise BatchStopped(stop.signum, results)
    return results


@dataclass
class _StopRequest:
    signum: int | None = None


@contextlib.contextmanager
def _stop_requests() -> Iterator[_StopRequest]:
    """While inside, SIGTERM and SIGINT set ``signum`` on what this yields instead of ending the
    process. Signal handlers can only be set from the main thread: elsewhere signals keep their effect."""
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum: int, frame: Any) -> None:
        if stop.signum is None:
            stop.signum = signum

    previous = {number: signal.signal(number, request) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def runs_alone(notebook: Path) -> bool:
    """Whether a notebook asks to run with no other notebook beside it.

    A notebook that times runtimes says so in its metadata (``"dlqnb": {"runs_alone": true}``): with
    another notebook computing on the same cores its speed figures would measure the load, not the runtimes.

    Example:
        >>> runs_alone(REPO_ROOT / "notebooks" / "04_int8_deployment.ipynb")
        True
    """
    try:
        settings = json.loads(Path(notebook).read_text(encoding="utf-8")).get("metadata", {}).get("dlqnb", {})
    except (OSError, ValueError, AttributeError):  # an unreadable notebook fails in its own report, with the reason
        return False
    return bool(isinstance(settings, dict) and settings.get("runs_alone"))


def _run_local(jobs: list[ReportJob], out_dir: Path, show_code: bool, jobs_at_once: int, stop: _StopRequest) -> list[ReportResult]:
    """Run the jobs in a local pool with a progress bar: notebooks done, and the cell each running one is on.

    Jobs start in order, as workers come free; a notebook that :func:`runs_alone` starts once the others
    running have finished, and no other starts until it has finished.
    """
    from tqdm.auto import tqdm

    workers = jobs_at_once if jobs_at_once > 1 and len(jobs) > 1 else 1
    alone = {i for i, job in enumerate(jobs) if runs_alone(job.notebook)}
    print(f"Running {len(jobs)} notebook{'s' * (len(jobs) != 1)} ({workers} at a time"
          f"{f'; {len(alone)} timing alone' if alone and workers > 1 else ''}) into {out_dir}", flush=True)
    # Every notebook runs in a worker process, even one at a time: a stop can then end a notebook and its
    # kernel without ending this process, which writes the index. The main thread keeps the bar moving.
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker)
    started = time.time()
    results: dict[int, ReportResult] = {}
    waiting = list(range(len(jobs)))
    futures: dict[Future[ReportResult], int] = {}
    pending: set[Future[ReportResult]] = set()

    def start_ready() -> None:
        while waiting and len(pending) < workers:
            if pending and (waiting[0] in alone or any(futures[future] in alone for future in pending)):
                return
            i = waiting.pop(0)
            future = pool.submit(run_report, jobs[i], out_dir, show_code)
            futures[future] = i
            pending.add(future)

    try:
        with tqdm(total=len(jobs), desc="notebooks", unit="nb", dynamic_ncols=True) as bar:
            start_ready()
            while pending and stop.signum is None:
                done, still_running = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                pending.intersection_update(still_running)
                for future in done:
                    results[futures[future]] = result = _outcome(future, jobs[futures[future]])
                    bar.update(1)
                    tqdm.write(_result_line(result))
                start_ready()
                bar.set_postfix_str(_running_cells([jobs[futures[f]] for f in pending], out_dir), refresh=True)
            if stop.signum is not None and (pending or waiting):
                tqdm.write(f"{_signal_name(stop.signum)}: stopping the running notebooks and their kernels, then writing the index")
                for i, result in _stop_pool(pool, {future: futures[future] for future in pending}, jobs, out_dir, stop.signum, started).items():
                    results[i] = result
                    tqdm.write(_result_line(result))
                for i in waiting:
                    results[i] = _not_started(jobs[i], time.time(), stop.signum)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [results[i] for i in range(len(jobs))]


def _outcome(future: Any, job: ReportJob) -> ReportResult:
    """A job's result; a worker that died under it (killed, out of memory) makes it a failed report."""
    try:
        return future.result()
    except Exception as error:
        return ReportResult(str(job.notebook), f"{job.stem}.html", "failed", 0.0, job.parameters, error=f"{type(error).__name__}: {error}")


def _stop_pool(
    pool: ProcessPoolExecutor, pending: dict[Future[ReportResult], int], jobs: list[ReportJob], out_dir: Path, signum: int, started: float
) -> dict[int, ReportResult]:
    """Stop a pool's running notebooks and their kernels, and let nothing else start.

    Each worker is sent SIGTERM: it stops its kernel and returns its job as interrupted (see
    :func:`_stop_this_worker`). Whatever is still running after :data:`STOP_GRACE` seconds (a worker
    or kernel that did not end, anything a notebook started) is killed.

    Returns:
        A result for every pending job, by job index: what its worker returned, else interrupted.
    """
    for future in pending:
        future.cancel()  # not started yet: never starts
    workers = list(getattr(pool, "_processes", None) or {})  # the pool's worker process ids
    tree = [process for pid in workers for process in _process_and_descendants(pid)]  # workers and kernels, seen now
    for pid in workers:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    running = [future for future in pending if not future.cancelled()]
    done, _ = wait(running, timeout=STOP_GRACE)
    outcomes = {pending[future]: _outcome(future, jobs[pending[future]]) for future in done}
    pool.shutdown(wait=False, cancel_futures=True)  # idle workers exit
    if not _wait_ended(tree, STOP_GRACE / 4):
        # Look again: a kernel that was being started when the signal came is not in the first list.
        tree += [process for pid in workers for process in _process_and_descendants(pid)]
        _end_processes([process for process in tree if _running(process)])
    for i in {pending[future] for future in running} - outcomes.keys():  # its worker was killed: remove its temporary copy
        for partial in [path for pid in workers for path in _partials(out_dir, jobs[i].stem, pid)]:
            with contextlib.suppress(OSError):
                partial.unlink()
        outcomes[i] = _interrupted(jobs[i], started, f"stopped by {_signal_name(signum)}; its worker did not end and was killed")
    for i in sorted(set(pending.values()) - outcomes.keys()):
        outcomes[i] = _not_started(jobs[i], time.time(), signum)
    return outcomes


def _run_dask(jobs: list[ReportJob], out_dir: Path, show_code: bool, scheduler: str, stop: _StopRequest) -> list[ReportResult]:
    """Run the jobs on a Dask cluster, printing each result as it comes; a stop cancels what has not finished."""
    from distributed import Client

    started = time.time()
    results: dict[int, ReportResult] = {}
    with Client(scheduler) as client:
        pending = dict(enumerate(client.map(run_report, jobs, out_dir=out_dir, show_code=show_code, pure=False)))
        while pending and stop.signum is None:
            for i in [i for i, future in pending.items() if future.done()]:
                results[i] = _outcome(pending.pop(i), jobs[i])
                print(_result_line(results[i]), flush=True)
            if pending:
                time.sleep(0.2)
        if pending:
            client.cancel(list(pending.values()))
    why = f"stopped by {_signal_name(stop.signum)} before it finished"
    return [results.get(i) or _interrupted(job, started, why) for i, job in enumerate(jobs)]


# The signal that told this pool worker to stop (None: keep going). Set only in workers of _run_local.
_worker_stop_signal: int | None = None


def _init_worker() -> None:
    """Set up a pool worker: SIGTERM or SIGINT stops the notebook it runs (see :func:`_stop_this_worker`)."""
    global _worker_stop_signal
    _worker_stop_signal = None
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, _stop_this_worker)


def _stop_this_worker(signum: int, frame: Any) -> None:
    """End the kernel (and whatever it started) of the notebook this worker runs. nbclient then ends
    the run (the kernel died) within a second or two, and :func:`run_report` records it as interrupted;
    the worker starts no other notebook."""
    global _worker_stop_signal
    if _worker_stop_signal is None:
        _worker_stop_signal = signum
    _end_processes(_process_and_descendants(os.getpid())[1:])


def _process_and_descendants(pid: int) -> list[Any]:
    """``pid``'s process (psutil), then all its descendants; [] if it has ended."""
    import psutil

    try:
        process = psutil.Process(pid)
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return []


def _running(process: Any) -> bool:
    """Whether a process still runs (a zombie has ended: only its parent's reaping is left)."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_ended(processes: list[Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_running(process) for process in processes):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _end_processes(processes: list[Any], grace: float = 3.0) -> None:
    """Terminate processes, then kill those still running after ``grace`` seconds."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    if _wait_ended(processes, grace):
        return
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if _running(process):
                process.kill()
    _wait_ended(processes, grace)


def _running_cells(jobs: list[ReportJob], out_dir: Path) -> str:
    """``stem: cell i/n`` for each running notebook, read from the temporary notebook papermill saves as
    each cell starts (a file caught mid-write is skipped)."""
    parts = []
    for job in jobs:
        partials = _partials(out_dir, job.stem)
        where = _cell_position(partials[0]) if partials else None
        if where:
            parts.append(f"{job.stem}: {where}")
    return "; ".join(parts)


def _cell_position(partial: Path, last_started: bool = False) -> str | None:
    """``cell i/n`` for the cell a temporary notebook is running (or, with ``last_started``, the last
    cell that started: where a stopped run was), or None (no file, caught mid-write, no such cell)."""
    try:
        cells = json.loads(partial.read_text(encoding="utf-8"))["cells"]
        marks = [cell.get("metadata", {}).get("papermill", {}) for cell in cells]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if last_started:
        found = [i for i, mark in enumerate(marks) if mark.get("start_time")][-1:]
    else:
        found = [i for i, mark in enumerate(marks) if mark.get("status") == "running"][:1]
    return f"cell {found[0] + 1}/{len(cells)}" if found else None


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


class ParamsFileError(ValueError):
    """A parameters file that is missing, unreadable, malformed or not a mapping (the message names it)."""


def _read_params_file(path: Path) -> dict[str, list[Any]]:
    """The parameters a JSON or YAML file holds, each as the list of its values (lists are swept).

    Raises:
        ParamsFileError: naming the file and what is wrong with it (one line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsFileError(f"{path}: no such parameters file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ParamsFileError(f"{path}: cannot read the parameters file ({type(error).__name__}: {error})") from None
    data = _parse_yaml(path, text) if path.suffix.lower() in (".yaml", ".yml") else _parse_json(path, text)
    if not isinstance(data, dict):
        raise ParamsFileError(f"{path}: expected a mapping of parameter names to values (or lists of values to sweep), got {type(data).__name__}")
    return {str(name): value if isinstance(value, list) else [value] for name, value in data.items()}


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ParamsFileError(f"{path}: not valid JSON: {error.msg} at line {error.lineno}, column {error.colno} (YAML files end in .yaml or .yml)") from None


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ParamsFileError(f"{path}: reading a YAML parameters file needs PyYAML (pip install pyyaml), or write it as JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ParamsFileError(f"{path}: not valid YAML: {problem}{where}") from None


def main(argv: list[str]) -> int:
    """``report`` subcommand.

    Returns:
        0 when every report ran; 1 when one failed; 2 for a usage error (a bad parameters file is one
        line on stderr naming it); 128 + the signal's number when SIGTERM or SIGINT stopped the batch
        (the index of what finished is written).
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dlqnb report", description="Execute notebooks as reports.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: every example)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"), help="repeat a name to sweep its values")
    parser.add_argument("--params-file", type=Path, help="JSON or YAML mapping of parameters (lists are swept)")
    parser.add_argument("--out", "--output-dir", dest="out", type=Path, default=REPO_ROOT / "reports", help="folder of the reports and their index")
    parser.add_argument("--no-code", action="store_true", help="hide code cells in the HTML reports")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks run at once in the local process pool")
    parser.add_argument("--scheduler", help="Dask scheduler address (runs on a Dask cluster instead)")
    args = parser.parse_args(argv)
    notebooks = [path.resolve() for path in args.notebooks] or default_notebooks()
    missing = [str(path) for path in notebooks if not path.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    try:
        parameters: dict[str, list[Any]] = _read_params_file(args.params_file) if args.params_file else {}
    except ParamsFileError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    given: dict[str, list[Any]] = {}
    for name, value in args.parameter:
        given.setdefault(name, []).append(_parse_value(value))
    parameters.update(given)  # the command line overrides the file
    index = args.out / "index.html"
    try:
        results = run_reports(expand_jobs(notebooks, parameters), args.out.resolve(), not args.no_code, args.jobs, args.scheduler)
    except BatchStopped as stopped:
        print(f"{stopped}; index: {index}", file=sys.stderr)
        return 128 + stopped.signum
    failed = [r for r in results if r.status != "ok"]
    print(f"{len(results) - len(failed)} of {len(results)} reports ran; index: {index}")
    return 1 if failed else 0
