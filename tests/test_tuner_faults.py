"""The tuner under faults: a kernel that kills the device worker, one that hangs, one whose
compile outlasts the build timeout, one whose launch the device refuses. Each costs one error
record and the run finishes; the tuning process's file descriptors and memory stay flat."""

import dataclasses
import gc
import os
import pathlib
import time

import pytest

from coretune.kernels.render import KernelSpec
from coretune.kernels.space import Knob
from coretune.tuner.driver import Budget, tune
from coretune.tuner.measure import MeasureOptions
from coretune.tuner.records import ErrorKind, TuningLog

from .rigged_template import RiggedTemplate
from .test_tuner import small_task

NAME = "tests.test_tuner_faults:FaultyTemplate"
SLOW_STATEMENTS = 400_000  # ~0.2 ms each to compile on PoCL: ~8x BUILD_TIMEOUT
BUILD_TIMEOUT = 10.0  # generous: the first build of a fresh pool also starts the worker
RUN_TIMEOUT = 3.0


class FaultyTemplate(RiggedTemplate):
    """One config per fault (grid order): the tuner must survive each and go on."""

    name = NAME

    def knobs(self):
        return [
            Knob("work_group", (64,)),
            Knob("items", (1,)),
            Knob("lanes", (1,)),
            Knob("fault", ("none", "crash", "hang", "slow_compile", "bad_launch", "wrong")),
        ]

    def spec(self, config):
        fault = config["fault"]
        if fault not in ("slow_compile", "bad_launch"):
            return super().spec(config)
        spec = super().spec({**config, "fault": "none"})
        body, launch = spec.body, spec.launch
        if fault == "slow_compile":
            # Straight-line code the compiler must optimise statement by statement; each
            # statement is distinct so no pass can fold them away cheaply.
            chain = "\n".join(
                f"  acc = acc * 1.0001f + {i % 97}.5f; if (acc > {i}.0f) acc = sin(acc);"
                for i in range(SLOW_STATEMENTS)
            )
            out = spec.buffers[-1].name
            body = f"  float acc = 0.0f;\n{chain}\n{body}\n  if (acc == 12345.0f) {out}[0] = acc;"
        else:
            # A work-group far beyond any device's maximum, as a config that slipped past the
            # space's limits would ask for: the enqueue itself fails on the device.
            launch = dataclasses.replace(launch, groups=(1, 1, 1), local=(1 << 20, 1, 1))
        return KernelSpec(
            spec.name, spec.buffers, body, launch, spec.local_arrays, spec.helpers, spec.tables
        )


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settled_fds(limit: int, patience: float = 10.0) -> int:
    """The fd count once it is at most ``limit``, or after ``patience`` seconds: a killed
    build pool is shut down without waiting, and its manager thread closes its wake-up pipe
    a moment later."""
    deadline = time.monotonic() + patience
    while _open_fds() > limit and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.1)
    return _open_fds()


def _rss_bytes() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
def no_kernel_cache(monkeypatch):
    """A cached binary would make the slow compile instant the second time round."""
    monkeypatch.setenv("POCL_KERNEL_CACHE", "0")
    monkeypatch.setenv("PYOPENCL_NO_CACHE", "1")


def test_each_fault_is_one_error_record_and_the_run_finishes(tmp_path, no_kernel_cache):
    log = TuningLog(tmp_path / "faults.jsonl")
    fds_before = _open_fds()
    options = MeasureOptions(build_timeout=BUILD_TIMEOUT, run_timeout=RUN_TIMEOUT, repeat=1)
    result = tune(
        small_task(NAME),
        log,
        strategy="grid",
        budget=Budget(trials=10, batch=1),
        options=options,
    )
    records = {r.config["fault"]: r for r in log.read()}
    assert len(log.read()) == 6 == result.trials, "one record per config, then the space ends"
    kinds = {fault: r.error for fault, r in records.items()}
    assert kinds == {
        "none": ErrorKind.NONE,
        "crash": ErrorKind.RUNTIME,
        "hang": ErrorKind.TIMEOUT,
        "slow_compile": ErrorKind.COMPILE,
        "bad_launch": ErrorKind.RUNTIME,
        "wrong": ErrorKind.WRONG_RESULT,
    }, {f: (r.error, r.message[:120]) for f, r in records.items()}
    assert "died" in records["crash"].message
    assert "timed out" in records["slow_compile"].message
    assert "INVALID_WORK_GROUP_SIZE" in records["bad_launch"].message
    assert result.errors == 5 and result.best_config["fault"] == "none"
    # The killed and restarted workers leave no pipe behind in the tuning process (one more
    # fd is allowed: multiprocessing starts its resource tracker once, on first use).
    fds_after = _settled_fds(fds_before + 1)
    assert fds_after <= fds_before + 1, f"{fds_after - fds_before} fds leaked by the run"


def test_fds_and_memory_stay_flat_over_many_trials(tmp_path):
    samples = {}

    def on_trial(record):
        if record.trial in (10, 60):
            samples[record.trial] = (_open_fds(), _rss_bytes())

    tune(
        small_task(),
        TuningLog(tmp_path / "flat.jsonl"),
        strategy="random",
        budget=Budget(trials=60, batch=2),
        options=MeasureOptions(repeat=1, number=1),
        on_trial=on_trial,
        seed=3,
    )
    (fds_10, rss_10), (fds_60, rss_60) = samples[10], samples[60]
    assert fds_60 <= fds_10 + 2, f"open fds grew from {fds_10} to {fds_60} over 50 trials"
    # Generous: the strategy's bookkeeping grows a little per trial; a leak of a buffer, a
    # program or a worker per trial would be tens of MB.
    assert rss_60 - rss_10 < 48 << 20, f"RSS grew by {(rss_60 - rss_10) >> 20} MiB"


def test_a_device_out_of_memory_is_one_error_record_per_trial(tmp_path):
    """Device memory is host memory on PoCL, and PoCL allocates lazily: a real out-of-memory
    needs a cap. The device worker gets 16 MiB of address space beyond its start-up size; the
    task's 64 MiB output buffer cannot be allocated when it is first filled on the device, and
    PoCL then kills the worker (as GPU drivers often do). Each trial is one runtime error
    record, and the run ends normally."""
    from coretune.graph import GraphBuilder
    from coretune.kernels.workload import Workload
    from coretune.tuner.task import Task

    b = GraphBuilder()
    x, w = b.input("x", (4096, 8)), b.input("w", (4096, 8))
    task = Task("gemm", Workload.from_graph(b.build(b.dense(x, w))))
    log = TuningLog(tmp_path / "oom.jsonl")
    options = MeasureOptions(repeat=1, run_timeout=RUN_TIMEOUT, device_memory_limit=16 << 20)
    result = tune(task, log, strategy="random", budget=Budget(trials=2, batch=1), options=options)
    records = log.read()
    assert len(records) == 2 == result.trials and result.errors == 2
    for record in records:
        assert record.error is ErrorKind.RUNTIME, (record.error, record.message[:300])
        assert "died" in record.message or "MemoryError" in record.message, record.message
    assert result.best_config is None
