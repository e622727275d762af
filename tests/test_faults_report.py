"""Batch reports under faults: runs that share a folder, a report written twice at once, a batch stopped
by SIGTERM, and parameters files that are missing or malformed.

The command-line cases run ``python -m dlqnb report`` in subprocesses on tiny notebooks (no networks),
as a user would; every wait is bounded and every process a test starts is ended, whatever happens.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import parameterized_notebook
from dlqnb.reports import report
from dlqnb.reports.report import ReportResult, write_index

KERNEL_WAIT = 240.0  # seconds a test waits for a notebook's kernel to start: this machine may be busy


def report_command(*arguments: str | Path) -> list[str]:
    return [sys.executable, "-m", "dlqnb", "report", *map(str, arguments)]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


def finish(process: subprocess.Popen, timeout: float = 300.0) -> int:
    """The command's exit code; it is killed (and the test fails) if it has not ended within ``timeout``."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
        raise AssertionError(f"{process.args} did not end within {timeout:.0f} s") from None


def summary_rows(folder: Path) -> list[dict]:
    return json.loads((folder / "summary.json").read_text())


# -- 1. runs that share an output folder ---------------------------------------------------------------------------


def result_for(folder: Path, name: str, status: str = "ok", **records) -> ReportResult:
    """A finished report's row, with its report file on disk."""
    (folder / f"{name}.html").write_text(f"report {name}")
    return ReportResult(f"{name}.ipynb", f"{name}.html", status, 1.0, {"name": name}, records)


def test_an_index_update_keeps_the_rows_of_other_reports_in_the_folder(tmp_path):
    write_index([result_for(tmp_path, "a", value=1)], tmp_path)
    write_index([result_for(tmp_path, "b", value=2)], tmp_path)
    assert [row["report"] for row in summary_rows(tmp_path)] == ["a.html", "b.html"]
    assert pd.read_csv(tmp_path / "summary.csv")["report"].tolist() == ["a.html", "b.html"]
    index = (tmp_path / "index.html").read_text()
    assert "href='a.html'" in index and "href='b.html'" in index and "2 of 2 notebooks ran" in index

    write_index([result_for(tmp_path, "a", status="failed", value=3)], tmp_path)  # a rerun of a replaces its row
    rows = summary_rows(tmp_path)
    assert [(row["report"], row["status"], row["records"]) for row in rows] == [("b.html", "ok", {"value": 2}), ("a.html", "failed", {"value": 3})]

    (tmp_path / "b.html").unlink()  # a report deleted from the folder leaves the index on the next update
    write_index([result_for(tmp_path, "a")], tmp_path)
    assert [row["report"] for row in summary_rows(tmp_path)] == ["a.html"]


def test_an_unreadable_or_foreign_summary_is_replaced_with_a_warning(tmp_path):
    (tmp_path / "summary.json").write_text('[{"report": "a.html", "sta')  # cut short
    with pytest.warns(UserWarning, match=r"summary\.json cannot be read"):
        write_index([result_for(tmp_path, "b")], tmp_path)
    assert [row["report"] for row in summary_rows(tmp_path)] == ["b.html"]

    secret = tmp_path.parent / f"{tmp_path.name}-secret.png"
    secret.write_bytes(b"not for the index")
    foreign = [
        {"notebook": "x.ipynb", "report": "b.html", "status": "ok", "seconds": 1, "figure": f"../{secret.name}"},  # a path out of the folder
        {"notebook": "y.ipynb", "status": "ok"},  # not a row
        {"notebook": "z.ipynb", "report": "b.html", "status": "ok", "seconds": "12"},  # seconds as text (hand-edited)
        {"notebook": 3, "report": "b.html", "status": "ok", "seconds": 1},
        "text",
    ]
    (tmp_path / "b.html").write_text("a report")  # on disk, so only the row's own fields can exclude it
    (tmp_path / "summary.json").write_text(json.dumps(foreign))
    write_index([result_for(tmp_path, "c")], tmp_path)
    assert [row["report"] for row in summary_rows(tmp_path)] == ["c.html"]
    assert "data:image/png" not in (tmp_path / "index.html").read_text()


def write_rows_repeatedly(folder: str, name: str, start, rounds: int) -> None:
    start.wait(60)
    for round_number in range(rounds):
        write_index([result_for(Path(folder), name, round=round_number)], Path(folder))


def test_index_updates_from_processes_at_once_lose_no_row(tmp_path):
    context = multiprocessing.get_context("fork")  # no re-import of dlqnb per writer
    start = context.Event()
    writers = [context.Process(target=write_rows_repeatedly, args=(str(tmp_path), f"r{i}", start, 12)) for i in range(4)]
    for writer in writers:
        writer.start()
    start.set()
    try:
        for writer in writers:
            writer.join(120)
        assert [writer.exitcode for writer in writers] == [0, 0, 0, 0]
    finally:
        for writer in writers:
            if writer.is_alive():
                writer.kill()
                writer.join(10)
    rows = summary_rows(tmp_path)
    assert sorted(row["report"] for row in rows) == ["r0.html", "r1.html", "r2.html", "r3.html"]
    assert {row["records"]["round"] for row in rows} == {11}  # each writer's last row


def tiny_notebook(folder: Path) -> Path:
    return parameterized_notebook(folder / "tiny.ipynb", "x = 1", "import dlqnb\ndlqnb.record('double', x * 2)")


def test_two_report_commands_with_different_parameters_into_one_folder_at_once_keep_both_rows(tmp_path):
    notebook, out = tiny_notebook(tmp_path), tmp_path / "out"
    errors = [tmp_path / f"run{value}.err" for value in ("1", "2")]
    runs = []
    try:
        for value, error in zip(("1", "2"), errors):
            with error.open("w") as err:
                runs.append(subprocess.Popen(report_command(notebook, "-p", "x", value, "--out", out, "--jobs", "1"), cwd=tmp_path,
                                             stdout=subprocess.DEVNULL, stderr=err))
        codes = [finish(run) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
    assert codes == [0, 0], [error.read_text()[-2000:] for error in errors]
    rows = sorted(summary_rows(out), key=lambda row: row["parameters"]["x"])
    assert [(row["report"], row["status"], row["records"]) for row in rows] == [
        ("tiny-x=1.html", "ok", {"double": 2}), ("tiny-x=2.html", "ok", {"double": 4})]
    assert sorted(pd.read_csv(out / "summary.csv")["x"]) == [1, 2]
    index = (out / "index.html").read_text()
    assert "href='tiny-x=1.html'" in index and "href='tiny-x=2.html'" in index


# -- 2. the same report twice at once ------------------------------------------------------------------------------


def gate_notebook(folder: Path) -> Path:
    """A notebook that logs when it starts and ends, and waits (at most two minutes) for a ``release`` file."""
    return parameterized_notebook(
        folder / "gate.ipynb",
        "",
        "import os, pathlib, time\n"
        "with open('log.txt', 'a') as log:\n    log.write(f'start {os.getpid()}\\n')\n"
        "deadline = time.time() + 120\n"
        "while not pathlib.Path('release').exists() and time.time() < deadline:\n    time.sleep(0.2)\n"
        "with open('log.txt', 'a') as log:\n    log.write(f'end {os.getpid()}\\n')",
    )


def test_the_same_report_twice_at_once_waits_for_the_first_run(tmp_path):
    notebook, out, log = gate_notebook(tmp_path), tmp_path / "out", tmp_path / "log.txt"
    first_err, second_err = tmp_path / "first.err", tmp_path / "second.err"

    def lines() -> list[str]:
        return log.read_text().split() if log.exists() else []

    runs: list[subprocess.Popen] = []
    try:
        with first_err.open("w") as err:
            runs.append(subprocess.Popen(report_command(notebook, "--out", out, "--jobs", "1"), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err))
        wait_for(lambda: lines()[:1] == ["start"], KERNEL_WAIT, "the first run's notebook to start")
        with second_err.open("w") as err:
            runs.append(subprocess.Popen(report_command(notebook, "--out", out, "--jobs", "1"), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err))
        # The second run either says it waits, or (without a lock) starts the same notebook alongside.
        wait_for(lambda: "another run is writing this report" in second_err.read_text() or lines().count("start") > 1,
                 KERNEL_WAIT, "the second run to wait or to start")
        (tmp_path / "release").touch()
        codes = [finish(run) for run in runs]
    finally:
        (tmp_path / "release").touch()
        for run in runs:
            if run.poll() is None:
                run.kill()
    assert codes == [0, 0], (first_err.read_text()[-2000:], second_err.read_text()[-2000:])
    assert lines()[::2] == ["start", "end", "start", "end"], log.read_text()  # one after the other, never both at once
    assert "FileNotFoundError" not in first_err.read_text() + second_err.read_text()
    assert [(row["report"], row["status"]) for row in summary_rows(out)] == [("gate.html", "ok")]
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == [
        "gate.html", "gate.ipynb", "index.html", "summary.csv", "summary.json"]
    assert not list(out.glob(".*.running.ipynb"))  # no temporary copy left


# -- 3. a batch stopped by SIGTERM ---------------------------------------------------------------------------------


def nap_notebook(folder: Path) -> Path:
    """Marks that it started, then sleeps ``seconds``."""
    mark, sleep, record = "import pathlib, time\npathlib.Path(f'started-{seconds}').touch()", "time.sleep(seconds)", "import dlqnb\ndlqnb.record('slept', seconds)"
    return parameterized_notebook(folder / "nap.ipynb", "seconds = 0", mark, sleep, record)


def still_running(process) -> bool:
    """Whether a process runs (a zombie has ended; only its parent's reaping is left)."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def describe(process) -> str:
    import psutil

    try:
        return " ".join(process.cmdline())[:200]
    except psutil.Error:
        return "(ended)"


@pytest.mark.parametrize(
    ("stop", "to_group"),
    [(signal.SIGTERM, False), (signal.SIGINT, True)],  # SIGTERM to the command; Ctrl-C reaches its whole process group
    ids=["sigterm", "ctrl-c"],
)
def test_a_stopped_batch_ends_workers_and_kernels_and_writes_the_index_of_what_finished(tmp_path, stop, to_group):
    psutil = pytest.importorskip("psutil", reason="psutil lists the command's processes, kernels included")
    notebook, out = nap_notebook(tmp_path), tmp_path / "out"
    command = report_command(notebook, "-p", "seconds", "0", "-p", "seconds", "600", "-p", "seconds", "601", "--out", out, "--jobs", "2")
    output = tmp_path / "run.err"
    with output.open("w") as err:  # a file, not a pipe: the progress bar's updates never fill a buffer and block the command
        run = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    tree: list = []
    try:
        # seconds=0 finishes, then both sleepers run at once, each in a worker with its kernel.
        wait_for(lambda: (tmp_path / "started-600").exists() and (tmp_path / "started-601").exists() or run.poll() is not None,
                 2 * KERNEL_WAIT, "both sleeping notebooks to start")
        assert run.poll() is None, output.read_text()[-2000:]
        tree = psutil.Process(run.pid).children(recursive=True)
        assert len(tree) >= 4  # two workers and two kernels, at least
        if to_group:
            os.killpg(run.pid, stop)
        else:
            run.send_signal(stop)
        run.wait(timeout=60)
        deadline = time.monotonic() + 15
        while any(map(still_running, tree)) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = [f"{process.pid} {describe(process)}" for process in tree if still_running(process)]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(30)
        for process in tree:  # whatever outlived the command: kernels have sessions of their own
            try:
                process.kill()
            except psutil.Error:
                pass
    assert survivors == []
    assert run.returncode == 128 + stop
    assert f"stopped by {stop.name}: 1 of 3 reports finished" in output.read_text()
    rows = {row["parameters"]["seconds"]: row for row in summary_rows(out)}
    assert {seconds: row["status"] for seconds, row in rows.items()} == {0: "ok", 600: "interrupted", 601: "interrupted"}
    assert rows[0]["records"] == {"slept": 0} and "stopped by SIG" in rows[600]["error"] and "stopped by SIG" in rows[601]["error"]
    index = (out / "index.html").read_text()
    assert "class='interrupted'" in index and "href='nap-seconds=0.html'" in index and "href='nap-seconds=600.html'" not in index
    assert not (out / "nap-seconds=600.html").exists() and not list(out.glob(".*.running.ipynb"))  # nothing half-written


# -- 4. parameters files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.yaml", None, "no such parameters file"),
        ("bad.yaml", "x: [1, 2\nfail: false\n", "not valid YAML"),
        ("bad.json", '{"x": 1,}', "not valid JSON"),
        ("list.yaml", "- 1\n- 2\n", "expected a mapping of parameter names"),
        ("folder.json", "folder", "cannot read the parameters file"),
    ],
)
def test_a_bad_parameters_file_is_one_line_naming_it(tmp_path, capsys, name, content, message):
    notebook = tiny_notebook(tmp_path)
    params = tmp_path / name
    if content == "folder":
        params.mkdir()
    elif content is not None:
        params.write_text(content)
    code = report.main([str(notebook), "--params-file", str(params), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and str(params) in err and message in err, err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_a_yaml_parameters_file_without_pyyaml_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if PyYAML were not installed
    params = tmp_path / "sweep.yaml"
    params.write_text("x: [1, 2]\n")
    assert report.main([str(tiny_notebook(tmp_path)), "--params-file", str(params), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(params) in err and "pip install pyyaml" in err, err


# -- 4. notebooks that time runtimes run alone ----------------------------------------------------------------------


def test_a_notebook_that_runs_alone_shares_the_cores_with_no_other_notebook(tmp_path):
    """With two workers, the notebook marked ``runs_alone`` starts after the one before it has ended, and the one
    after it starts only once it has ended; the other two would overlap if the mark were ignored."""
    import nbformat

    log = tmp_path / "intervals.jsonl"
    cells = ("import json, time\nstarted = time.time()\ntime.sleep(4)",
             f"with open({str(log)!r}, 'a') as f:\n    f.write(json.dumps([name, started, time.time()]) + '\\n')")
    notebooks = []
    for name in ("a_first", "b_timing", "c_last"):
        path = parameterized_notebook(tmp_path / f"{name}.ipynb", f"name = {name!r}", *cells)
        notebooks.append(path)
    timing = nbformat.read(notebooks[1], as_version=4)
    timing.metadata["dlqnb"] = {"runs_alone": True}
    nbformat.write(timing, notebooks[1])
    assert [report.runs_alone(path) for path in notebooks] == [False, True, False]

    results = report.run_reports([report.ReportJob(path) for path in notebooks], tmp_path / "out", jobs_at_once=2)

    assert [result.status for result in results] == ["ok", "ok", "ok"], [result.error for result in results]
    intervals = {name: (start, end) for name, start, end in map(json.loads, log.read_text().splitlines())}
    timing_start, timing_end = intervals["b_timing"]
    assert intervals["a_first"][1] <= timing_start, "the timing notebook started while another was running"
    assert timing_end <= intervals["c_last"][0], "a notebook started while the timing notebook was running"


def test_runs_alone_is_false_for_an_unreadable_notebook(tmp_path):
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ not json")
    assert report.runs_alone(broken) is False
    assert report.runs_alone(tmp_path / "missing.ipynb") is False
