"""What ``coretune tune`` shows: per-task state from the log, the live display (rich, on a
terminal; a line per task and one every 30 s otherwise), and the final per-task table."""

import math
import time
from dataclasses import dataclass, field

from .cli_common import console, describe_task_key, fmt, gflops


@dataclass
class TaskState:
    task: object
    share: float
    budget: int | None  # trials (None in time mode)
    default_config: dict
    trials: int = 0  # search records in the log for this device and version
    new: int = 0  # measured in this run
    errors: int = 0
    searched_best: float = math.inf
    searched_default: float | None = None  # cost of the default config; inf when it failed
    verifications: list = field(default_factory=list, repr=False)  # the finalists' records
    started: float | None = field(default=None, repr=False)

    def add(self, record, new: bool = False) -> None:
        from .tuner.records import VERIFY

        if record.strategy == VERIFY:  # a re-measurement, not a trial
            self.verifications.append(record)
            return
        self.trials += 1
        self.new += new
        self.errors += not record.ok
        self.searched_best = min(self.searched_best, record.best_cost)
        if record.config == self.default_config:
            self.searched_default = record.best_cost

    def _verified(self) -> dict:
        from .tuner.records import verified_costs

        return verified_costs(self.verifications)

    @property
    def best(self) -> float:
        """The lowest verified median if the finalists were re-measured, else the lowest cost."""
        verified = self._verified()
        return min(verified.values()) if verified else self.searched_best

    @property
    def default(self) -> float | None:
        from .kernels.space import Config

        return self._verified().get(Config(self.default_config), self.searched_default)

    def gflops(self, cost) -> float | None:
        return None if cost is None else gflops(self.task.flops, cost)

    @property
    def speedup(self) -> float | None:
        if self.default is None or not math.isfinite(self.default) or not math.isfinite(self.best):
            return None
        return self.default / self.best

    def describe(self) -> str:
        return describe_task_key(self.task.key(), 56)

    def line(self, index: int, count: int) -> str:
        return (
            f"task {index + 1}/{count} {self.describe()}: {self.trials} trials "
            f"({self.new} new, {self.errors} failed), best {fmt(self.gflops(self.best))} GFLOP/s "
            f"(default {fmt(self.gflops(self.default))})"
        )


def task_states(tasks, device, log_path) -> tuple[list[TaskState], str]:
    """Per-task state from the log: records of this device and coretune version only; and a
    line naming the log's lines that are not valid records ("" when none), which are skipped."""
    import warnings

    from . import __version__
    from .tuner.records import LogWarning, TuningLog, device_key, task_key

    total = sum(t.flops * t.weight for t in tasks) or 1
    states = [
        TaskState(
            t,
            t.flops * t.weight / total,
            None,
            t.template().default_config(device.limits).to_json(),
        )
        for t in tasks
    ]
    by_key = {task_key(t.key()): s for t, s in zip(tasks, states, strict=True)}
    dev = device_key(device.info.fingerprint())
    log = TuningLog(log_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LogWarning)
        records = log.read()
    for record in records:
        state = by_key.get(task_key(record.task))
        if state and device_key(record.device) == dev and record.coretune_version == __version__:
            state.add(record)
    return states, log.skipped_message() if log.skipped else ""


class PlainDisplay:
    """Lines on stderr, when it is not a terminal: one per task, and one every 30 s."""

    def __init__(self, states, seconds, trials=None):
        self.states, self.seconds, self.trials_total = states, seconds, trials
        self.out = console(stderr=True)
        self.started = time.monotonic()
        self._last = self.started
        self.current = None
        self._announced: set[int] = set()  # a schedule by gain comes back to a task often

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def note(self, text):
        self.out.print(text)

    def task(self, index, seconds):
        self.current = index
        self.states[index].started = time.monotonic()
        if index in self._announced:
            return
        self._announced.add(index)
        state = self.states[index]
        budget = (
            f"{state.budget} trials"
            if state.budget
            else f"{seconds:.0f} s"
            if seconds
            else "by expected gain"
        )
        self.out.print(
            f"task {index + 1}/{len(self.states)} {state.describe()}: {state.share:.0%} of the "
            f"work, budget {budget}, {state.trials} trials in the log"
        )

    def trial(self, index):
        if time.monotonic() - self._last >= 30:
            self._last = time.monotonic()
            state = self.states[index]
            self.out.print(
                f"  {state.trials} trials, best {fmt(state.gflops(state.best))} GFLOP/s, "
                f"elapsed {time.monotonic() - self.started:.0f} s"
            )

    def done(self, index):
        self.out.print(self.states[index].line(index, len(self.states)))

    def tick(self):
        pass


class LiveDisplay(PlainDisplay):
    """A rich progress display: the model's progress, and the task being tuned."""

    def __init__(self, states, seconds, trials=None):
        super().__init__(states, seconds, trials)
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.progress import TimeRemainingColumn as Remaining

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            TextColumn("{task.fields[trials]}"),
            TextColumn("{task.fields[best]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            Remaining(),
            console=self.out,
        )
        budgets = [s.budget for s in states]
        total = seconds or (sum(budgets) if None not in budgets else trials)
        self.overall = self.progress.add_task(
            f"model ({len(states)} tasks)", total=total, trials="", best=""
        )
        self.row = None

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def note(self, text):
        self.progress.console.print(text)

    def task(self, index, seconds):
        self.current = index
        state = self.states[index]
        state.started = time.monotonic()
        if self.row is not None:
            self.progress.remove_task(self.row)
        self.row = self.progress.add_task(
            f"task {index + 1}/{len(self.states)} {state.describe()} ({state.share:.0%})",
            total=state.budget or seconds,
            completed=min(state.trials, state.budget or 0),
            trials="",
            best="",
        )
        self.trial(index)

    def trial(self, index):
        state = self.states[index]
        best = f"best {fmt(state.gflops(state.best))} GFLOP/s"
        if state.budget:
            trials = f"{state.trials}/{state.budget} trials"
            self.progress.update(self.row, completed=min(state.trials, state.budget))
            done = sum(min(s.trials, s.budget) for s in self.states)
            self.progress.update(self.overall, completed=done)
        elif self.trials_total and not self.seconds:  # one budget for the model, by gain
            trials = f"{state.trials} trials"
            done = sum(s.trials for s in self.states)
            self.progress.update(self.overall, completed=min(done, self.trials_total))
        else:
            trials = f"{state.trials} trials"
        self.progress.update(self.row, trials=trials, best=best)
        self.progress.update(self.overall, trials=f"{sum(s.new for s in self.states)} new")

    def done(self, index):
        self.progress.console.print(self.states[index].line(index, len(self.states)))

    def tick(self):
        if self.seconds:
            now = time.monotonic()
            self.progress.update(self.overall, completed=min(now - self.started, self.seconds))
            state = self.states[self.current] if self.current is not None else None
            if state is not None and state.started is not None and self.row is not None:
                self.progress.update(self.row, completed=now - state.started)


def summary_table(states, out) -> None:
    from rich.table import Table

    table = Table(title="tuning summary (this device and coretune version)")
    columns = ("#", "task", "work", "trials", "failed", "default GFLOP/s", "tuned GFLOP/s")
    for column in (*columns, "speedup"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for i, s in enumerate(states):
        table.add_row(
            str(i + 1),
            s.describe() + (f" (x{s.task.weight})" if s.task.weight > 1 else ""),
            f"{s.share:.0%}",
            str(s.trials),
            str(s.errors),
            fmt(s.gflops(s.default)),
            fmt(s.gflops(s.best)),
            "-" if s.speedup is None else f"{s.speedup:.2f}x",
        )
    out.print(table)
