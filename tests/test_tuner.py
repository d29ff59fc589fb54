"""The tuner end to end on the default device: records, resume after SIGKILL, failure kinds."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from coretune.graph import GraphBuilder
from coretune.kernels.space import Config
from coretune.kernels.workload import Workload
from coretune.tuner.driver import Budget, tune
from coretune.tuner.measure import MeasureOptions
from coretune.tuner.records import ErrorKind, TuningLog
from coretune.tuner.task import Task

from .rigged_template import NAME as RIGGED


def small_task(template="injective", n=4096):
    b = GraphBuilder()
    x, y = b.input("x", (n // 64, 64)), b.input("y", (64,))
    return Task(template, Workload.from_graph(b.build(b.sigmoid(x * y + 1.0))))


def small_dense_task():
    b = GraphBuilder()
    x, w = b.input("x", (33, 64)), b.input("w", (13, 64))
    return Task("gemm", Workload.from_graph(b.build(b.relu(b.dense(x, w)))))


def small_conv2d_task(template="conv2d_direct"):
    b = GraphBuilder()
    x, w = b.input("x", (1, 7, 13, 13)), b.input("w", (8, 7, 3, 3))
    graph = b.build(b.relu(b.conv2d(x, w, padding=(1, 1, 1, 1))))
    return Task(template, Workload.from_graph(graph))


@pytest.mark.parametrize(
    "make_task, strategy",
    [
        (small_task, "random"),
        (small_dense_task, "bayesian"),
        (small_conv2d_task, "bayesian"),
        (lambda: small_conv2d_task("conv2d_winograd"), "random"),
    ],
    ids=["injective", "dense", "conv2d_direct", "conv2d_winograd"],
)
def test_a_short_run_writes_valid_records(tmp_path, device, make_task, strategy):
    task = make_task()
    log = TuningLog(tmp_path / "log.jsonl")
    result = tune(task, log, budget=Budget(trials=6, batch=3), strategy=strategy)
    records = log.read()
    assert len(records) == 6 and result.trials == 6 and result.best_config is not None
    assert len({json.dumps(r.config, sort_keys=True) for r in records}) == 6
    space = task.template().space(device.limits)
    for record in records:
        assert space.is_valid(Config(record.config))
        assert record.ok and len(record.costs) == 3 and all(c > 0 for c in record.costs)
        assert record.task == task.key() and record.device["name"]
        assert record.strategy == strategy and record.trial in range(1, 7)
        assert record.started <= record.finished and record.coretune_version
    assert result.best_cost == min(min(r.costs) for r in records)


def test_each_failure_kind_is_recorded_and_the_run_goes_on(tmp_path):
    log = TuningLog(tmp_path / "log.jsonl")
    task = small_task(RIGGED)
    from coretune.tuner.measure import Measurer

    base = {"work_group": 64, "items": 1, "lanes": 1}
    configs = [Config({**base, "fault": f}) for f in ("compile", "hang", "wrong", "crash", "none")]
    configs.append(Config({**base, "lanes": 3, "fault": "none"}))
    with Measurer(task, options=MeasureOptions(run_timeout=5)) as measurer:
        results = measurer.measure(configs)
    kinds = [r.error for r in results]
    assert kinds == [
        ErrorKind.COMPILE,
        ErrorKind.TIMEOUT,
        ErrorKind.WRONG_RESULT,
        ErrorKind.RUNTIME,
        ErrorKind.NONE,
        ErrorKind.INVALID,
    ], [(k, r.message[:100]) for k, r in zip(kinds, results, strict=True)]
    assert "this is not C" in results[0].message or "error" in results[0].message.lower()
    assert results[4].costs and all(c > 0 for c in results[4].costs)
    del log


RESUMABLE_RUN = textwrap.dedent("""
    import sys
    from tests import test_tuner
    from coretune.tuner.driver import Budget, tune
    from coretune.tuner.records import TuningLog
    if __name__ == "__main__":
        task = getattr(test_tuner, sys.argv[2])()
        tune(task, TuningLog(sys.argv[1]), strategy=sys.argv[3],
             budget=Budget(trials=12, batch=1), seed=5)
""")


@pytest.mark.parametrize(
    "task, strategy",
    [("small_task", "random"), ("small_dense_task", "bayesian"), ("small_conv2d_task", "random")],
)
def test_sigkill_then_rerun_resumes_without_remeasuring(tmp_path, task, strategy):
    path = tmp_path / "log.jsonl"
    script = tmp_path / "run.py"
    script.write_text(RESUMABLE_RUN)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    command = [sys.executable, str(script), str(path), task, strategy]
    first = subprocess.Popen(command, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= 4:
            break
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the tuner and its workers, mid-run
    first.wait()
    done_before = len(TuningLog(path).read())
    assert 4 <= done_before < 12
    subprocess.run(command, env=env, check=True, timeout=300)
    records = TuningLog(path).read()
    configs = [json.dumps(r.config, sort_keys=True) for r in records]
    assert len(records) == 12, "the rerun should finish the budget of 12 trials"
    assert len(set(configs)) == 12, "a config was measured twice"


def test_torn_last_line_is_tolerated(tmp_path):
    log = TuningLog(tmp_path / "log.jsonl")
    tune(small_task(), log, budget=Budget(trials=2, batch=2), strategy="random")
    with open(log.path, "ab") as f:
        f.write(b'{"task": {"template": "inj')
    with pytest.warns(UserWarning, match="torn last record"):
        assert len(log.read()) == 2
    tune(small_task(), log, budget=Budget(trials=3, batch=1), strategy="random")
    with pytest.warns(UserWarning, match="torn record"):
        assert len(log.read()) == 3  # the next append started a fresh line
