"""Tuning a whole model's tasks under one budget, slice by slice, by expected gain.

``tune_model`` interleaves the tasks' searches (tuner.driver.TaskTuner) in slices that
tuner.allocation hands out, then verifies the finalists of every task a build may pick. A
time budget keeps back what those verifications are expected to take (from the tasks' own
seconds per trial), so that the tune ends within it. A resumed run rebuilds each task's curve
from the log and goes on where the last one stopped.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from .allocation import GainAllocator, TaskProgress
from .driver import TaskTuner, TuneResult
from .measure import MeasureOptions, Measurer
from .records import VERIFY_ROUNDS, Record, TuningLog
from .task import Task


@dataclass(frozen=True)
class ModelBudget:
    trials: int | None = None  # the model's total, None: unbounded
    seconds: float = math.inf
    verify: int = 0  # finalists re-measured per task after the search (Budget.verify)
    batch: int = 4
    early_stop: int | None = None  # a task is left after this many trials without improvement


def progress_of(tuner: TaskTuner) -> TaskProgress:
    """The allocator's view of a task, with the curve of the trials the log already holds."""
    task = tuner.task
    progress = TaskProgress(task.workload.key_string(), task.weight, task.flops, task.template_name)
    best = math.inf
    for record in sorted(tuner.searched, key=lambda r: r.trial):
        best = min(best, record.best_cost)
        progress.curve.append((record.trial, best))
    if progress.curve:
        progress.trials, progress.best = progress.curve[-1]
    return progress


def tune_model(
    tasks: list[Task],
    log: TuningLog,
    device_spec: str | None = None,
    strategy: str = "tpe",
    budget: ModelBudget = ModelBudget(),
    seed: int = 0,
    options: MeasureOptions | None = None,
    on_trial: Callable[[int, Record], None] | None = None,
    on_slice: Callable[[int], None] | None = None,
) -> list[TuneResult]:
    """Tune ``tasks`` (one model's) by expected gain; one result per task, in order.
    ``on_trial(index, record)`` follows every logged record, ``on_slice(index)`` announces a
    slice; either may raise to stop (the log stays whole)."""
    from coretune.kernels import open_device

    if not tasks:
        return []
    device = open_device(device_spec)
    started = time.monotonic()
    tuners = [
        TaskTuner(
            task,
            log,
            device,
            strategy,
            seed,
            on_trial=(lambda record, i=i: on_trial(i, record)) if on_trial else None,
            default=task.template().default_config(device.limits),
        )
        for i, task in enumerate(tasks)
    ]
    allocator = GainAllocator([progress_of(t) for t in tuners])
    trials_left = budget.trials - sum(t.trial for t in tuners) if budget.trials else math.inf
    # One set of measurement workers for every task: a slice moves them to its task (a switch
    # of inputs, where new workers per task cost ~2 s each, as much as a slice of trials).
    measurer = Measurer(tasks[0], device_spec, options or MeasureOptions(), seed=seed)
    with measurer.start():
        while trials_left > 0:
            left = budget.seconds - (time.monotonic() - started)
            baseline = any(t.trials for t in allocator.tasks)  # even a spent budget gets one
            if baseline and left <= _verification_seconds(allocator, budget.verify):
                break
            index = allocator.next_task()
            if index is None:
                break  # every task is flat, dominated or exhausted: the rest would be waste
            if on_slice:
                on_slice(index)
            tuner, before = tuners[index], tuners[index].trial
            measurer.use(tuner.task)
            slice_started = time.monotonic()
            want = min(allocator.slice_for(index), trials_left)
            while tuner.trial - before < want and not tuner.exhausted:
                if budget.early_stop is not None and tuner.since_best >= budget.early_stop:
                    tuner.exhausted = True  # left, as the in-turn schedule leaves it
                    break
                tuner.step(measurer, min(budget.batch, want - (tuner.trial - before)))
            measured = tuner.trial - before
            trials_left -= measured
            allocator.tasks[index].exhausted = tuner.exhausted
            allocator.update(
                index, tuner.trial, tuner.best_cost, time.monotonic() - slice_started, measured
            )
        if budget.verify:
            for index in allocator.contenders():
                measurer.use(tuners[index].task)
                tuners[index].verify(measurer, budget.verify)
    return [t.result() for t in tuners]


# A finalist's measurement costs far less than a search trial (its kernel comes from the
# driver's binary cache, and no strategy is asked): in a 600 s tune of the CIFAR ResNet-18
# (benchmarks/results/model_tuning.gain.jsonl) 186 verification measurements took 2.4 s,
# 0.013 s each, against 0.27 s per search trial. Twice that ratio, for a margin.
VERIFY_COST = 0.1


def _verification_seconds(allocator: GainAllocator, top: int) -> float:
    """What verifying every contender is expected to take: VERIFY_ROUNDS rounds of its
    finalists and default, at VERIFY_COST of its own seconds per search trial."""
    if not top:
        return 0.0
    return sum(
        VERIFY_COST * VERIFY_ROUNDS * (top + 1) * allocator.seconds_per_trial(i)
        for i in allocator.contenders()
    )
