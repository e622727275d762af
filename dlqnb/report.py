"""Run example notebooks as reports: ``python -m dlqnb report [NOTEBOOK ...] [-p NAME VALUE] [--out DIR]``.

Each notebook is executed by papermill (kernel ``python3``) with its parameters, from its own folder,
and written to ``DIR/<name>.ipynb`` and ``DIR/<name>.html`` (plotly.js embedded: opens offline).
Files are written to a temporary name and renamed, so a rerun never leaves half a report. A failing
notebook is recorded with its error (the executed copy shows where) and the batch goes on; the
command exits non-zero when any notebook failed. Headline numbers come from ``dlqnb.record``
outputs (:func:`dlqnb.records.read_records`), never from printed text. With no notebook named, every
``notebooks/[0-9][0-9]_*.ipynb`` example runs on its defaults (the README's main job).

Example:
    $ python -m dlqnb report notebooks/05_quantization_numerics.ipynb -p seed 1 --out reports/
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlqnb.cache import atomic_write_text
from dlqnb.records import read_records

__all__ = ["ReportResult", "default_notebooks", "run_report", "run_reports"]

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ReportResult:
    """What happened to one notebook."""

    notebook: str
    output: str
    status: str  # "ok" | "failed"
    seconds: float
    parameters: dict[str, Any] = field(default_factory=dict)
    records: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def default_notebooks(folder: Path | None = None) -> list[Path]:
    """The example notebooks, in order."""
    folder = folder or REPO_ROOT / "notebooks"
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _to_html(executed: Path) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    return body


def run_report(notebook: Path, out_dir: Path, parameters: dict[str, Any], cell_timeout: int = 1800) -> ReportResult:
    """Execute one notebook into ``out_dir`` (ipynb and html), recording success or the error."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / notebook.name
    partial = out_dir / f".{notebook.stem}.running.ipynb"
    started = time.time()
    status, error = "ok", ""
    env_before = os.environ.get("DLQNB_STATIC_PLOTS")
    os.environ["DLQNB_STATIC_PLOTS"] = "1"  # reports get static figures, not live widgets
    try:
        papermill.execute_notebook(
            str(notebook),
            str(partial),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(notebook.parent),
            execution_timeout=cell_timeout,
            progress_bar=False,
        )
    except Exception as exc:  # papermill raises PapermillExecutionError and friends; record and go on
        status, error = "failed", f"{type(exc).__name__}: {str(exc).strip()[-2000:]}"
    finally:
        if env_before is None:
            os.environ.pop("DLQNB_STATIC_PLOTS", None)
        else:
            os.environ["DLQNB_STATIC_PLOTS"] = env_before
    records: dict[str, Any] = {}
    if partial.exists():
        records = read_records(partial)
        atomic_write_text(target.with_suffix(".html"), _to_html(partial))
        os.replace(partial, target)
    return ReportResult(str(notebook), str(target), status, round(time.time() - started, 1), parameters, records, error)


def run_reports(notebooks: list[Path], out_dir: Path, parameters: dict[str, Any]) -> list[ReportResult]:
    """Execute notebooks one after another; failures are recorded and the batch goes on."""
    results = []
    for notebook in notebooks:
        print(f"running {notebook.name} ...", flush=True)
        result = run_report(notebook, out_dir, parameters)
        print(f"  {result.status} in {result.seconds:.0f} s  {json.dumps(result.records)}", flush=True)
        if result.error:
            print(f"  {result.error.splitlines()[0] if result.error else ''}", flush=True)
        results.append(result)
    summary = [result.__dict__ for result in results]
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return results


def main(argv: list[str]) -> int:
    """``report`` subcommand."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dlqnb report", description="Execute example notebooks as reports.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: every example)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports")
    args = parser.parse_args(argv)
    notebooks = [path.resolve() for path in args.notebooks] or default_notebooks()
    missing = [str(path) for path in notebooks if not path.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    parameters = {name: _parse_value(value) for name, value in args.parameter}
    results = run_reports(notebooks, args.out.resolve(), parameters)
    failed = [r.notebook for r in results if r.status != "ok"]
    print(f"{len(results) - len(failed)} of {len(results)} notebooks ran; reports in {args.out}")
    return 1 if failed else 0
