"""The process behind ``coretune tune``: tunes a model's tasks in turn and reports each trial.

It runs with SIGINT ignored, a disposition its measurement workers inherit, so a Ctrl-C at the
terminal reaches only the command. The command then sets ``stop`` (this process stops after
the trial in flight) or, on a second Ctrl-C, sends SIGTERM (SystemExit here, which closes the
measurement workers on the way out). Every record is in the log before it is reported, so the
log stays whole either way.

Budgets: ``--trials N`` is the model's total, split across tasks in proportion to their share
of the work (FLOPs x weight), at least ``TRIALS_FLOOR`` per task (one when N is smaller than
the number of tasks). A task's budget counts the records already in the log, so running the
same command again resumes an interrupted run and measures nothing once it is complete.
``--time-budget S`` is split the same way, task by task, with what a task leaves unused
passed on to the tasks after it.

``schedule`` BY_GAIN (``--schedule gain``) instead interleaves the tasks in slices, given to
the task expected to save the most model latency per second (tuner.allocation), ends once no
slice is worth giving, and verifies the finalists of the tasks a build may pick; ``--trials``
is then the model's total with no per-task split.
"""

import math
import os
import signal
import time
import traceback
import warnings
from dataclasses import dataclass

from .errors import CoretuneError
from .tuner.records import LogWarning, TuningLog

TRIALS_FLOOR = 4
TIME_FLOOR = 0.25  # each task gets at least a quarter of an even split of a time budget
_UNBOUNDED = 1 << 40
IN_TURN = "in-turn"
BY_GAIN = "gain"
SCHEDULES = (BY_GAIN, IN_TURN)


def split_trials(shares: list[float], total: int, floor: int = TRIALS_FLOOR) -> list[int]:
    """Per-task trial budgets summing to ``total`` (when total >= the number of tasks)."""
    n = len(shares)
    if n == 0:
        return []
    base = min(floor, max(1, total // n))
    rest = max(0, total - base * n)
    weight = sum(shares)
    ideal = [rest * s / weight if weight > 0 else rest / n for s in shares]
    extra = [math.floor(v) for v in ideal]
    # Largest remainders first, so the split sums exactly to ``total``.
    for i in sorted(range(n), key=lambda i: extra[i] - ideal[i])[: rest - sum(extra)]:
        extra[i] += 1
    return [base + e for e in extra]


def time_weights(shares: list[float]) -> list[float]:
    """Shares of a time budget: proportional to the work, at least TIME_FLOOR of an even split."""
    n = len(shares)
    total = sum(shares) or 1.0
    return [max(s / total, TIME_FLOOR / n) for s in shares]


@dataclass(frozen=True)
class SessionPlan:
    tasks: list  # Task, most work first
    device: str | None
    log: str
    strategy: str
    trials: list[int] | None  # per task (trials mode)
    seconds: float | None  # whole model (time mode)
    weights: list[float]  # time shares (time mode)
    early_stop: int | None
    seed: int
    verify: int = 0  # finalists re-measured per task (tuner.driver.Budget.verify)
    schedule: str = IN_TURN
    total_trials: int | None = None  # the model's (BY_GAIN with a trial budget)


class _Stopped(Exception):
    """The command asked for a stop; raised from the trial callback, after the log write."""


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def _ignore_sigint() -> None:
    """(Re-)ignore SIGINT before measurement workers are spawned: PoCL's LLVM installs its own
    SIGINT handler when a device opens, and a caught signal is reset to the default in a
    child, which would then die of a terminal's Ctrl-C (an ignored one stays ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _GuardedLog(TuningLog):
    """The session's log: each append first checks that the command is still there, a
    fallback where the parent-death signal is not (not Linux), or has not been set yet."""

    def __init__(self, path, parent: int):
        super().__init__(path)
        self.parent = parent

    def append(self, record) -> None:
        if os.getppid() != self.parent:
            os._exit(1)  # the command is gone: a restarted tune may own this log now
        super().append(record)


def run_session(plan: SessionPlan, conn, stop, parent: int) -> None:
    """Process target: tune every task, sending ("task"|"trial"|"done"|"end"|...) messages.
    ``parent``: the command's pid; this process dies with it."""
    from .tuner.measure import die_with_parent

    die_with_parent(parent)
    signal.signal(signal.SIGTERM, _terminate)
    warnings.simplefilter("ignore", LogWarning)  # the command names the skipped lines once
    try:
        if plan.schedule == BY_GAIN:
            _tune_by_gain(plan, conn, stop, parent)
        else:
            _tune_all(plan, conn, stop, parent)
        conn.send(("end",))
    except _Stopped:
        conn.send(("stopped",))
    except CoretuneError as exc:
        conn.send(("error", True, str(exc), ""))
    except (BrokenPipeError, EOFError):
        pass  # the command is gone: nobody to report to
    except Exception as exc:  # a bug: the command shows the traceback
        conn.send(("error", False, f"{type(exc).__name__}: {exc}", traceback.format_exc()))


def _tune_all(plan: SessionPlan, conn, stop, parent: int) -> None:
    from .kernels import open_device
    from .tuner.measure import Measurer

    device = open_device(plan.device)
    _ignore_sigint()
    # One set of measurement workers, moved from task to task (new ones cost ~2 s a task).
    with Measurer(plan.tasks[0], plan.device, seed=plan.seed) as measurer:
        _tune_in_turn(plan, conn, stop, parent, device, measurer)


def _tune_in_turn(plan: SessionPlan, conn, stop, parent: int, device, measurer) -> None:
    from .tuner.driver import Budget, tune

    log = _GuardedLog(plan.log, parent)
    started = time.monotonic()
    for index, task in enumerate(plan.tasks):
        if stop.is_set():
            raise _Stopped
        task_started = time.monotonic()
        seconds = math.inf
        if plan.seconds is not None:
            remaining = plan.seconds - (task_started - started)
            if remaining <= 0:
                break
            seconds = remaining * plan.weights[index] / sum(plan.weights[index:])
        conn.send(("task", index, None if math.isinf(seconds) else seconds))

        def on_trial(record, index=index):
            conn.send(("trial", index, record.to_json()))
            if stop.is_set():
                raise _Stopped
            _ignore_sigint()  # workers are restarted after a crash or a timeout

        trials = plan.trials[index] if plan.trials is not None else _UNBOUNDED
        budget = Budget(
            trials=trials,
            seconds=max(0.0, seconds - (time.monotonic() - task_started)),
            early_stop=plan.early_stop,
            verify=plan.verify,
        )
        # The default config goes first, so every task's baseline is in the log.
        default = task.template().default_config(device.limits)
        result = tune(
            task,
            log,
            plan.device,
            plan.strategy,
            budget,
            plan.seed,
            on_trial=on_trial,
            default=default,
            measurer=measurer,
        )
        conn.send(("done", index, result.trials, result.resumed))


def _tune_by_gain(plan: SessionPlan, conn, stop, parent: int) -> None:
    from .kernels import open_device
    from .tuner.model_tune import ModelBudget, tune_model

    log = _GuardedLog(plan.log, parent)
    open_device(plan.device)  # PoCL sets its SIGINT handler when a device first opens
    _ignore_sigint()  # so, after that: the measurement workers spawned next inherit this
    touched: set[int] = set()

    def on_slice(index):
        if stop.is_set():
            raise _Stopped
        touched.add(index)
        conn.send(("task", index, None))
        _ignore_sigint()  # workers are restarted after a crash or a timeout

    def on_trial(index, record):
        conn.send(("trial", index, record.to_json()))
        if stop.is_set():
            raise _Stopped
        _ignore_sigint()  # workers are restarted after a crash or a timeout

    budget = ModelBudget(
        trials=plan.total_trials,
        seconds=plan.seconds if plan.seconds is not None else math.inf,
        verify=plan.verify,
        early_stop=plan.early_stop,
    )
    results = tune_model(
        plan.tasks, log, plan.device, plan.strategy, budget, plan.seed, None, on_trial, on_slice
    )
    for index in sorted(touched):
        conn.send(("done", index, results[index].trials, results[index].resumed))
