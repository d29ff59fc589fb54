"""Sharing a whole-model tuning budget across tasks by expected gain.

Splitting the budget by each task's share of the work (FLOPs x weight) spends as long on a
kernel whose search has flattened, or on an alternative that can no longer win its node (a
Winograd convolution three times slower than the direct one), as on one still improving. The
allocator instead hands out slices of trials, one at a time, to the task whose next slice is
expected to save the most model latency per second of tuning:

- a task's saving is counted against its node: the node's cost is the best of its
  alternatives (the tasks of one workload, ``group``), times the node's weight; a slice saves
  only what lowers that best, so a dominated alternative is given a slice only when the
  expected speedup could make it the best;
- a slice's expected speedup is the mean of two guesses: the speedup the task's own last
  slice gave (its curve), and ``slice / trials`` (the 1/n flattening of random search, which
  model-based search beats), capped by the task's headroom: how far it is from
  ``HEADROOM`` x the best throughput of its template on any task of the model;
- its cost is the slice's trials at the task's own measured seconds per trial;
- a task whose best moved less than ``FLAT_CHANGE`` over its last ``FLAT_WINDOW`` trials is
  flat, and is given nothing more; once every task is flat, dominated or exhausted, the
  allocator says so (``next_task`` returns None) and the tune ends before its budget.

Every task first gets one trial, its default config (the baseline of every speedup, so even a
budget smaller than the number of tasks has it for the biggest ones), most work first; then
``PROBE`` trials, so that each one has a curve and a cost to estimate from.
"""

import math
from dataclasses import dataclass, field

SLICE = 8
PROBE = 8
FLAT_WINDOW = 32
FLAT_CHANGE = 0.01
HEADROOM = 1.5


@dataclass
class TaskProgress:
    """What the allocator knows of one task: fixed facts, then its measured progress."""

    group: str  # the workload: tasks of one group are alternatives for the same nodes
    weight: int  # how many times the model runs it
    flops: int
    template: str
    trials: int = 0
    seconds: float = 0.0  # spent measuring it in this run
    measured: int = 0  # trials measured in this run (``seconds`` covers these)
    best: float = math.inf
    curve: list[tuple[int, float]] = field(default_factory=list)  # (trials, best) after each
    exhausted: bool = False

    def best_at(self, trials: int) -> float:
        """The best cost after ``trials`` trials."""
        earlier = [best for done, best in self.curve if done <= trials]
        return earlier[-1] if earlier else math.inf

    def gain_over(self, window: int) -> float:
        """Relative speedup of the best over the last ``window`` trials (0: none)."""
        before = self.best_at(self.trials - window)
        if not math.isfinite(self.best):
            return 0.0
        return before / self.best - 1 if math.isfinite(before) else math.inf


class GainAllocator:
    def __init__(self, tasks: list[TaskProgress], slice_trials: int = SLICE):
        self.tasks = tasks
        self.slice = slice_trials

    def update(self, index: int, trials: int, best: float, seconds: float, measured: int):
        """After a slice: the task's trial count and best cost, and the time its measured
        trials took."""
        task = self.tasks[index]
        task.trials, task.best = trials, best
        task.seconds += seconds
        task.measured += measured
        task.curve.append((trials, best))

    def resume(self, index: int, curve: list[tuple[int, float]]) -> None:
        """A task's curve from the log's earlier trials (a resumed run)."""
        task = self.tasks[index]
        task.curve = list(curve)
        if curve:
            task.trials, task.best = curve[-1]

    def slice_for(self, index: int) -> int:
        """Trials in the task's next slice: its default alone first."""
        return 1 if self.tasks[index].trials == 0 else self.slice

    def next_task(self) -> int | None:
        """The task to give the next slice to, or None when no slice is worth giving."""
        live = [i for i, t in enumerate(self.tasks) if not t.exhausted]
        for first in (1, PROBE):
            probing = [i for i in live if self.tasks[i].trials < first]
            if probing:
                return max(probing, key=lambda i: self.tasks[i].flops * self.tasks[i].weight)
        rates = {i: self.rate(i) for i in live}
        best = max(rates, key=rates.get, default=None)
        return best if best is not None and rates[best] > 0 else None

    def is_flat(self, index: int) -> bool:
        task = self.tasks[index]
        return task.trials >= FLAT_WINDOW and task.gain_over(FLAT_WINDOW) < FLAT_CHANGE

    def expected_speedup(self, index: int) -> float:
        """The relative speedup one more slice is expected to give the task (0.1: 10 %)."""
        task = self.tasks[index]
        if self.is_flat(index) or not math.isfinite(task.best):
            return 0.0
        recent = min(task.gain_over(self.slice), 1.0)
        diminishing = self.slice / max(task.trials, 1)
        return 0.5 * recent + 0.5 * min(diminishing, self.headroom(index))

    def headroom(self, index: int) -> float:
        """How far the task's throughput is from HEADROOM x its template's best on this model."""
        task = self.tasks[index]
        peers = [t for t in self.tasks if t.template == task.template and math.isfinite(t.best)]
        peak = HEADROOM * max(t.flops / t.best for t in peers)
        return max(0.0, peak / (task.flops / task.best) - 1)

    def expected_saving(self, index: int) -> float:
        """Model seconds per run that one more slice of the task is expected to save."""
        task = self.tasks[index]
        others = min(
            (t.best for t in self.tasks if t.group == task.group and t is not task),
            default=math.inf,
        )
        now = min(others, task.best)
        after = min(others, task.best / (1 + self.expected_speedup(index)))
        return task.weight * (now - after) if math.isfinite(now) else 0.0

    def seconds_per_trial(self, index: int) -> float:
        task = self.tasks[index]
        if task.measured:
            return task.seconds / task.measured
        timed = [t for t in self.tasks if t.measured]
        return sum(t.seconds for t in timed) / sum(t.measured for t in timed) if timed else 1.0

    def rate(self, index: int) -> float:
        """Expected model seconds saved per second of tuning, for the task's next slice."""
        return self.expected_saving(index) / (self.slice * self.seconds_per_trial(index))

    def contenders(self) -> list[int]:
        """Tasks a build may pick: in each group, those within HEADROOM of its best (the rest
        are not worth verifying)."""
        group_best: dict[str, float] = {}
        for task in self.tasks:
            group_best[task.group] = min(group_best.get(task.group, math.inf), task.best)
        return [
            i
            for i, t in enumerate(self.tasks)
            if math.isfinite(t.best) and t.best <= HEADROOM * group_best[t.group]
        ]


def model_latency(tasks: list[TaskProgress]) -> float:
    """Sum over groups of weight x the best cost among the group's tasks: the model's kernel
    time per run if every node ran its best alternative."""
    group_cost: dict[str, float] = {}
    for task in tasks:
        group_cost[task.group] = min(group_cost.get(task.group, math.inf), task.best * task.weight)
    return sum(group_cost.values())
