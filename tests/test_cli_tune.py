"""`coretune tune` and `coretune log`, run as a user would: budgets, resume, Ctrl-C, logs."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import warnings

import pytest

from coretune.tune_session import split_trials, time_weights
from coretune.tuner.records import ErrorKind, Record, TuningLog

from .test_cli import ROOT, chain_model, coretune, one_op_model


def test_the_trial_budget_is_split_by_work_with_a_floor():
    assert split_trials([0.6, 0.4], 6) == [3, 3]  # the floor first: 4 each would exceed 6
    assert split_trials([0.6, 0.4], 100) == [59, 41]  # 4 each, then 92 by share
    assert split_trials([0.98, 0.01, 0.01], 40) == [32, 4, 4]
    assert split_trials([0.5, 0.3, 0.2], 2) == [1, 1, 1]  # one each: at least the default
    for total in (3, 17, 200, 1001):
        assert sum(split_trials([0.7, 0.2, 0.1], total)) == total
    weights = time_weights([0.97, 0.02, 0.01])
    assert weights[0] > weights[1] and min(weights) == pytest.approx(0.25 / 3)


def test_tune_measures_the_default_first_reports_and_resumes(tmp_path):
    model = chain_model(tmp_path / "chain.onnx")
    args = ["tune", str(model), "--trials", "6", "--strategy", "random", "--repeat", "3"]
    args += ["--schedule", "in-turn"]
    result = coretune(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "task 1/2" in result.stderr and "task 2/2" in result.stderr  # progress, on stderr
    assert "tuning summary" in result.stdout and "default GFLOP/s" in result.stdout
    assert "multiply+add+sigmoid" in result.stdout and "multiply+tanh" in result.stdout
    assert "end-to-end latency" in result.stdout

    logs = list((tmp_path / "tuning_logs").glob("chain.*.jsonl"))
    assert len(logs) == 1, "the default log is tuning_logs/<model stem>.<device>.jsonl"
    records = TuningLog(logs[0]).read()
    trials = [r for r in records if r.strategy != "verify"]
    assert len(trials) == 6  # 6 trials: 3 per task, the default config first
    by_task: dict = {}
    for record in trials:
        by_task.setdefault(json.dumps(record.task, sort_keys=True), []).append(record)
    assert len(by_task) == 2
    for task_records in by_task.values():
        assert [r.trial for r in task_records] == [1, 2, 3]
        assert task_records[0].strategy == "default"
        # then the strategy's picks, and the best configs of the similar task ("transfer")
        assert {r.strategy for r in task_records[1:]} <= {"random", "transfer"}
    # then each task's 3 configs (its best 3, the default among them) in 3 rounds
    verified = [r for r in records if r.strategy == "verify"]
    assert len(verified) == 2 * 3 * 3 and records[-1].strategy == "verify"

    before = logs[0].read_bytes()
    again = coretune(*args, "--no-e2e", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "(6 matching trials)" in again.stderr
    assert logs[0].read_bytes() == before, "a finished run measures nothing again"
    more = coretune(*args[:2], "--trials", "8", *args[4:], "--no-e2e", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert len([r for r in TuningLog(logs[0]).read() if r.strategy != "verify"]) == 8

    summary = coretune("log", "summary", str(logs[0]), "--json")
    assert summary.returncode == 0, summary.stderr
    rows = json.loads(summary.stdout)
    assert len(rows) == 2 and all(r["trials"] == 4 and r["best_gflops"] > 0 for r in rows)
    assert {"default", "random", "verify"} <= {s for r in rows for s in r["strategies"]}
    assert all(r["best_verified"] and r["verifications"] >= 18 for r in rows)


def test_the_gain_schedule_measures_every_default_then_shares_the_total(tmp_path):
    model = chain_model(tmp_path / "chain.onnx")
    log = tmp_path / "log.jsonl"
    args = ["tune", str(model), "--trials", "20", "--strategy", "random", "--log", str(log)]
    result = coretune(*args, "--no-e2e", "--verify", "2")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "shared by expected gain" in result.stderr
    assert result.stderr.count("task 1/2 ") == 2  # announced once, reported once at the end
    records = TuningLog(log).read()
    trials = [r for r in records if r.strategy != "verify"]
    assert [r.strategy for r in trials[:2]] == ["default", "default"]  # most work first
    assert len(trials) == 20
    by_task: dict = {}
    for record in trials:
        by_task.setdefault(json.dumps(record.task, sort_keys=True), []).append(record)
    assert sorted(len(v) for v in by_task.values())[0] >= 9  # the default and a probe each
    for task_records in by_task.values():
        assert [r.trial for r in task_records] == list(range(1, len(task_records) + 1))
    verified = [r for r in records if r.strategy == "verify"]
    assert verified and records[-1].strategy == "verify"
    assert {r.finalists for r in verified} <= {
        2,
        3,
    }  # the best 2, and the default if not among them

    before = log.read_bytes()
    again = coretune(*args, "--no-e2e", "--verify", "2")
    assert again.returncode == 0, again.stderr
    assert log.read_bytes() == before, "a finished run measures nothing again"


def test_a_spent_time_budget_ends_the_run(tmp_path):
    model = chain_model(tmp_path / "chain.onnx")
    log = tmp_path / "log.jsonl"
    result = coretune("tune", str(model), "--time-budget", "0.01", "--log", str(log), "--no-e2e")
    assert result.returncode == 0, result.stderr
    assert "budget 0.01 s" in result.stderr and "tuning summary" in result.stdout
    records = TuningLog(log).read()  # the default of the first task, then the time is up
    assert [r.strategy for r in records] == ["default"]


def test_a_model_without_tunable_tasks_says_so(tmp_path):
    import numpy as np

    model = one_op_model(
        tmp_path / "views.onnx", "Reshape", (8, 4), [("shape", np.array([8, 4], np.int64))]
    )
    result = coretune("tune", str(model), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no tunable task" in result.stdout
    assert not (tmp_path / "tuning_logs").exists()


@pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_ctrl_c_stops_cleanly_and_still_prints_the_summary(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it."""
    model = chain_model(tmp_path / "chain.onnx")
    log = tmp_path / "log.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "coretune", "tune", str(model), "--trials", "400"]
        + ["--strategy", "random", "--log", str(log)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            if log.exists() and log.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.2)
        assert process.poll() is None, process.communicate()
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "stopping after the trial in flight" in err
    assert "tuning summary" in out and "interrupted" in out
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a torn record would warn
        records = TuningLog(log).read()
    assert len(records) >= 3 and records[0].strategy == "default"
    deadline = time.monotonic() + 10
    while _alive_in_group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive_in_group(process.pid), "a measurement worker outlived the command"


def _alive_in_group(pgid: int) -> list[str]:
    """Processes of a process group that still run (killed workers may linger as zombies
    until init reaps them)."""
    alive = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            alive.append(stat.parent.name)
    return alive


# ---- coretune log, on a log written here ------------------------------------------------------
def _record(task, config, cost, device="pthread-test", error=ErrorKind.NONE, when=0.0):
    return Record(
        task=task.key(),
        config=config,
        costs=(cost, cost * 1.1) if error is ErrorKind.NONE else (),
        error=error,
        message="" if error is ErrorKind.NONE else error.value,
        device={"backend": "opencl", "name": device, "platform": "test"},
        strategy="random",
        trial=1,
        started=1000.0 + when,
        finished=1000.5 + when,
        coretune_version="0.1.0",
    )


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """Two logs: two tasks on one device, one task (with a failure of each kind) on another,
    an exact duplicate across the files, and a line that is not a record."""
    import coretune as ct
    from coretune.tuner.task import extract_tasks

    folder = tmp_path_factory.mktemp("logs")
    tasks = extract_tasks(ct.import_onnx(str(chain_model(folder / "chain.onnx"))))
    config = {"items": 1, "lanes": 4, "work_group": 256}
    first = [
        _record(tasks[0], config, 2e-4, when=3),
        _record(tasks[0], {**config, "items": 2}, 1e-4, when=1),
        _record(tasks[1], config, 3e-4, when=2),
    ]
    second = [
        first[1],
        _record(tasks[0], config, 5e-5, device="Other GPU", when=4),
        *(
            _record(tasks[0], {**config, "work_group": 16 << i}, 0, "Other GPU", kind, 5 + i)
            for i, kind in enumerate([ErrorKind.COMPILE, ErrorKind.TIMEOUT, ErrorKind.RUNTIME])
        ),
    ]
    a, b = folder / "a.jsonl", folder / "b.jsonl"
    a.write_text("".join(r.to_json() + "\n" for r in first))
    b.write_text("".join(r.to_json() + "\n" for r in second) + "{not a record}\n")
    return a, b, tasks


def test_log_summary_per_task_and_device(logs):
    a, _, tasks = logs
    result = coretune("log", "summary", str(a), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["trials"] for r in rows] == [2, 1]
    assert rows[0]["best_cost_s"] == 1e-4 and rows[0]["best_config"]["items"] == 2
    assert rows[0]["best_gflops"] == pytest.approx(tasks[0].flops / 1e-4 / 1e9)
    table = coretune("log", "summary", str(a))
    assert table.returncode == 0 and "multiply+tanh" in table.stdout


def test_log_merge_keeps_valid_unique_records_sorted_by_time(logs, tmp_path):
    a, b, _ = logs
    merged = tmp_path / "merged.jsonl"
    result = coretune("log", "merge", str(a), str(b), "-o", str(merged))
    assert result.returncode == 0, result.stderr
    assert "7 records" in result.stdout and "1 invalid lines" in result.stdout
    kept = TuningLog(merged).read()
    assert len(kept) == 7 and [r.finished for r in kept] == sorted(r.finished for r in kept)
    rows = json.loads(coretune("log", "summary", str(merged), "--json").stdout)
    other = [r for r in rows if r["device"]["name"] == "Other GPU"]
    assert [r["errors"] for r in other] == [{"compile": 1, "timeout": 1, "runtime": 1}]

    ok_only = tmp_path / "ok.jsonl"
    assert coretune("log", "merge", str(merged), "-o", str(ok_only), "--ok-only").returncode == 0
    assert len(TuningLog(ok_only).read()) == 4


def test_log_best_per_task_and_device(logs, tmp_path):
    a, b, _ = logs
    merged = tmp_path / "merged.jsonl"
    coretune("log", "merge", str(a), str(b), "-o", str(merged))
    result = coretune("log", "best", str(merged), "--json")
    assert result.returncode == 0, result.stderr
    best = [Record.from_json(line) for line in result.stdout.splitlines()]
    winners = {(r.device["name"], r.best_cost) for r in best}
    assert winners == {("pthread-test", 1e-4), ("pthread-test", 3e-4), ("Other GPU", 5e-5)}
    text = coretune("log", "best", str(a))
    assert text.returncode == 0 and '"items": 2' in text.stdout and "GFLOP/s" in text.stdout


def test_log_plot_writes_a_png(logs, tmp_path):
    png = tmp_path / "curve.png"
    result = coretune("log", "plot", str(logs[0]), "-o", str(png))
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_damaged_line_is_skipped_and_named_in_one_line(logs):
    result = coretune("log", "summary", str(logs[1]))
    assert result.returncode == 0 and result.stderr.startswith("warning: skipped 1 line(s)")
    assert f"{logs[1]}:6 (not JSON" in result.stderr and "Traceback" not in result.stderr
