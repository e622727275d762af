"""Batch reports: sweeps, failures recorded, hidden code, the index, and the Dask path on a LocalCluster."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from dlqnb import report
from dlqnb.report import ReportJob, expand_jobs, run_reports


def tiny_notebook(folder: Path, name: str = "tiny.ipynb") -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameters = nbformat.v4.new_code_cell("x = 1\nfail = False")
    parameters.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell('import dlqnb\ndlqnb.record("double", x * 2)\nprint("double = 999")  # never read\nassert not fail, "asked to fail"')
    notebook.cells = [parameters, body]
    path = folder / name
    nbformat.write(notebook, path)
    return path


def test_sweep_gives_one_report_per_value_with_recorded_numbers(tmp_path):
    notebook = tiny_notebook(tmp_path)
    jobs = expand_jobs([notebook], {"x": [2, 5]})
    assert [job.stem for job in jobs] == ["tiny-x=2", "tiny-x=5"]
    results = run_reports(jobs, tmp_path / "out", jobs_at_once=2)
    assert [r.records for r in results] == [{"double": 4}, {"double": 10}]
    assert all(r.status == "ok" for r in results)
    index = (tmp_path / "out" / "index.html").read_text()
    assert "tiny-x=2.html" in index and "tiny-x=5.html" in index and "double = 10" in index
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["parameters"] for s in summary] == [{"x": 2}, {"x": 5}]
    assert not list((tmp_path / "out").glob(".*"))  # nothing half-written left


def test_a_failing_notebook_is_recorded_and_the_batch_goes_on(tmp_path):
    notebook = tiny_notebook(tmp_path)
    results = run_reports(expand_jobs([notebook], {"fail": [True, False]}), tmp_path / "out", jobs_at_once=1)
    assert [r.status for r in results] == ["failed", "ok"]
    assert "asked to fail" in results[0].error
    assert (tmp_path / "out" / "tiny-fail=true.html").exists()  # the executed copy shows where it failed
    assert "class='failed'" in (tmp_path / "out" / "index.html").read_text()


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
