"""Batch reports: ``python -m dlqnb report [NOTEBOOK ...] [-p NAME VALUE ...] [--params-file FILE] [--out DIR]``.

Each notebook is executed by papermill (kernel ``python3``, a per-cell timeout) with its parameters,
from its own folder, and written to ``DIR/<name>.ipynb`` and a self-contained ``DIR/<name>.html``
(plotly.js embedded by the notebooks' offline renderer, so it opens without a network; ``--no-code``
hides the code cells). ``DIR/index.html`` lists every report with its notebook, parameters, status,
duration and headline numbers, read from the notebooks' ``dlqnb.record`` outputs, never from text.

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

import html
import itertools
import json
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dlqnb.cache import atomic_write_text
from dlqnb.records import read_records

__all__ = ["ReportJob", "ReportResult", "default_notebooks", "expand_jobs", "run_report", "run_reports", "write_index"]

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
        )
    except Exception as exc:  # papermill raises PapermillExecutionError and friends: record, go on
        status, error = "failed", f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"
    finally:
        if previous is None:
            os.environ.pop("DLQNB_STATIC_PLOTS", None)
        else:
            os.environ["DLQNB_STATIC_PLOTS"] = previous
    records: dict[str, Any] = {}
    if partial.exists():
        records = read_records(partial)
        atomic_write_text(target.with_suffix(".html"), _to_html(partial, show_code))
        os.replace(partial, target)
    return ReportResult(str(job.notebook), target.with_suffix(".html").name, status, round(time.time() - started, 1), job.parameters, records, error)


def write_index(results: list[ReportResult], out_dir: Path) -> Path:
    """Write ``index.html`` (and ``summary.json``) listing every report."""
    rows = []
    for result in results:
        params = "<br>".join(f"{html.escape(k)} = {html.escape(json.dumps(v))}" for k, v in result.parameters.items()) or "defaults"
        records = "<br>".join(f"{html.escape(k)} = {html.escape(json.dumps(v))}" for k, v in result.records.items())
        error = f"<pre>{html.escape(result.error[:600])}</pre>" if result.error else ""
        rows.append(
            f"<tr class='{result.status}'><td><a href='{html.escape(result.report)}'>{html.escape(Path(result.notebook).name)}</a></td>"
            f"<td>{params}</td><td>{result.status}{error}</td><td>{result.seconds:.0f} s</td><td>{records}</td></tr>"
        )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>dlqnb reports</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.4em;vertical-align:top}"
        "tr.failed{background:#fde2e2}tr.ok td:nth-child(3){color:#176117}pre{white-space:pre-wrap;max-width:40em}</style></head><body>"
        f"<h1>dlqnb reports</h1><p>{sum(r.status == 'ok' for r in results)} of {len(results)} notebooks ran.</p>"
        "<table><tr><th>notebook</th><th>parameters</th><th>status</th><th>duration</th><th>headline results</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
    atomic_write_text(out_dir / "summary.json", json.dumps([asdict(r) for r in results], indent=2))
    index = out_dir / "index.html"
    atomic_write_text(index, page)
    return index


def run_reports(jobs: list[ReportJob], out_dir: Path, show_code: bool = True, jobs_at_once: int = 2, scheduler: str | None = None) -> list[ReportResult]:
    """Run every job (process pool, or Dask with ``scheduler``) and write the index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if scheduler:
        from distributed import Client

        with Client(scheduler) as client:
            futures = client.map(run_report, jobs, out_dir=out_dir, show_code=show_code, pure=False)
            results = client.gather(futures)
    elif jobs_at_once <= 1 or len(jobs) == 1:
        results = [run_report(job, out_dir, show_code) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=jobs_at_once) as pool:
            results = list(pool.map(run_report, jobs, [out_dir] * len(jobs), [show_code] * len(jobs)))
    for result in results:
        print(f"{result.status:6} {result.seconds:6.0f} s  {result.report}  {json.dumps(result.records)[:200]}", flush=True)
        if result.error:
            print(f"       {result.error.splitlines()[0][:300]}", flush=True)
    write_index(results, out_dir)
    return results


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
