"""Killing a tuner by its pid alone (not its process group) leaves nothing behind: its build
workers, its device worker and the session process of ``coretune tune`` die with it, and no
record is appended once it is dead, so a restarted tune never races a ghost of the last one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_cli import ROOT, chain_model

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

MEASURER = """
import time
from coretune.kernels import open_device
from coretune.tuner.measure import Measurer
from tests.test_tuner import small_task

task = small_task()
measurer = Measurer(task)
default = task.template().default_config(open_device().limits)
measurer.measure([default, default])  # two builds at once: both build workers, and the runner
workers = [*measurer._pool._processes.values(), measurer._runner]
print(" ".join(str(p.pid) for p in workers), flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's reaper may be slow, or absent in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _group(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _wait_gone(pids, patience: float = 10.0) -> list[int]:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        alive = [p for p in pids() if _alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


def _kill_all(pids) -> None:
    for pid in pids:  # the test's own descendants, left by a failure
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_measurement_workers_die_with_the_tuner():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tuner = subprocess.Popen(
        [sys.executable, "-c", MEASURER], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    workers = [int(pid) for pid in tuner.stdout.readline().split()]
    assert len(workers) == 3 and all(map(_alive, workers))
    os.kill(tuner.pid, signal.SIGKILL)
    tuner.wait()
    left = _wait_gone(lambda: workers)
    _kill_all(left)
    assert not left, f"{len(left)} of the 3 workers outlived their tuner"


def test_killing_coretune_tune_by_its_pid_stops_every_process_and_append(tmp_path):
    model = chain_model(tmp_path / "chain.onnx")
    log = tmp_path / "log.jsonl"
    command = ["tune", str(model), "--trials", "60", "--strategy", "random", "--no-e2e"]
    tune = subprocess.Popen(
        [sys.executable, "-m", "coretune", *command, "--log", str(log)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own group, so the test can see who is left
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not log.exists() or log.stat().st_size == 0):
            time.sleep(0.01)
        lines = log.read_bytes().count(b"\n")
        while log.read_bytes().count(b"\n") == lines and time.monotonic() < deadline:
            time.sleep(0.005)  # kill just after a record: the next trial is in flight
        os.kill(tune.pid, signal.SIGKILL)  # the command alone, not its group
        tune.wait()
        size = log.stat().st_size
        left = _wait_gone(lambda: _group(tune.pid))
        time.sleep(1.0)
        assert not left, f"{len(left)} process(es) of the killed tune still alive"
        assert log.stat().st_size == size, "a record was appended after the kill"
    finally:
        _kill_all(_group(tune.pid))
