"""The tuning loop, once: propose, measure, log, observe, until the budget or early stop.

Warm start: the log's records for the same task on the same device are fed to the strategy
first and never measured again (a killed run resumes where it stopped); the best configs of
similar tasks (same template, other shapes) are proposed first.

Verification: a config's cost in the search is the min of a few repeats taken within
milliseconds, and a device's speed changes over seconds (on a shared machine, by up to 2x), so
the search's best is often a config that ran in a fast moment. With ``Budget.verify`` > 0 the
run ends by re-measuring its best few configs and the default in interleaved rounds; those
records (strategy "verify", with their round) are what the tuning database ranks by (see
verified_costs). A run killed during its verification is completed by the next: the same
finalists (the same trials rank the same), only the measurements the log lacks.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from coretune.kernels.space import Config

from .measure import MeasureOptions, Measurer, MeasureResult
from .records import (
    MAX_COST,
    MIN_COST,
    VERIFY,
    VERIFY_ROUNDS,
    ErrorKind,
    Record,
    TuningLog,
    device_key,
    task_key,
    verification_rounds,
    verified_costs,
)
from .strategies import DEFAULT_STRATEGY, make_strategy
from .task import Task


@dataclass
class TuneResult:
    task: Task
    best_config: Config | None
    best_cost: float
    trials: int  # measured in this run
    resumed: int  # taken from the log
    errors: int


@dataclass(frozen=True)
class Budget:
    trials: int = 64
    seconds: float = math.inf
    early_stop: int | None = None  # stop after this many trials without improvement
    batch: int = 4  # configs built in parallel before they run
    verify: int = 0  # best configs re-measured after the budget, with the default (_verify)


def _version() -> str:
    import coretune

    return coretune.__version__


def tune(
    task: Task,
    log: TuningLog,
    device_spec: str | None = None,
    strategy: str = DEFAULT_STRATEGY,
    budget: Budget = Budget(),
    seed: int = 0,
    options: MeasureOptions | None = None,
    on_trial: Callable[[Record], None] | None = None,
    default: Config | None = None,
    transfer: bool = True,
    measurer: Measurer | None = None,
) -> TuneResult:
    """Tune one task. ``default`` (the template's default config, the baseline of every
    speedup) is measured before anything else, unless the log has it; configs that did best on
    similar tasks come next; then the strategy's proposals, the first of them the best configs
    of this task on other devices (``transfer``). Each record says which it was.
    ``measurer``: the caller's, moved to this task and left open (a model's tasks share one:
    new measurement workers per task cost seconds); else one of this call's own."""
    from contextlib import nullcontext

    from coretune.kernels import open_device

    device = open_device(device_spec)
    tuner = TaskTuner(task, log, device, strategy, seed, on_trial, default, transfer)
    started = time.monotonic()
    if measurer is not None:
        measurer.use(task)
        owned = nullcontext(measurer)
    else:
        owned = Measurer(task, device_spec, options or MeasureOptions(), seed=seed)
    with owned as measurer:
        while tuner.trial < budget.trials and time.monotonic() - started < budget.seconds:
            if budget.early_stop is not None and tuner.since_best >= budget.early_stop:
                break
            if not tuner.step(measurer, min(budget.batch, budget.trials - tuner.trial)):
                break  # the space is exhausted
        tuner.verify(measurer, budget.verify)
    return tuner.result()


class TaskTuner:
    """One task's search on one device, advanced a batch at a time: ``tune`` runs it to a
    budget, and a whole-model schedule (tuner.model_tune) interleaves several tasks' searches."""

    def __init__(
        self, task, log, device, strategy, seed, on_trial=None, default=None, transfer=True
    ):
        self.task, self.log, self.strategy, self.seed = task, log, strategy, seed
        self.on_trial, self.default = on_trial, default
        self.fingerprint = device.info.fingerprint()
        space = task.template().space(device.limits)
        # The same task tuned on another device: a prior whose best configs are measured first
        # here (never taken as this device's answer) and that a model may warm-start from.
        prior = _other_devices(log, task, self.fingerprint) if transfer else []
        self.search = make_strategy(strategy, space, seed, prior=prior)
        mine, similar = _history(log, task, self.fingerprint)
        self.verified_before = [r for r in mine if r.strategy == VERIFY]
        mine = [r for r in mine if r.strategy != VERIFY]  # re-measurements, not trials
        self.best_config, self.best_cost = None, math.inf
        if mine:
            configs = [Config(r.config) for r in mine]
            self.search.observe(configs, [r.best_cost for r in mine])
            for record, config in zip(mine, configs, strict=True):
                if record.best_cost < self.best_cost:
                    self.best_config, self.best_cost = config, record.best_cost
        self.origin = {c: "transfer" for c in similar}
        if default is not None:
            self.origin[default] = "default"
            similar = [default, *similar]
        seen = self.search.seen
        self.seeds = list(dict.fromkeys(c for c in similar if space.is_valid(c) and c not in seen))
        self.searched = list(mine)  # this task's trials on this device, this run's included
        self.resumed = len(mine)
        self.trial, self.errors, self.since_best = len(mine), 0, 0
        self.exhausted = False

    def step(self, measurer: Measurer, want: int) -> bool:
        """Measure up to ``want`` configs (the default alone first, so even a tiny budget has
        it), log and observe them; False, measuring nothing, once the space is exhausted."""
        if self.seeds and self.origin.get(self.seeds[0]) == "default":
            want = 1
        configs, self.seeds = self.seeds[:want], self.seeds[want:]
        self.search.seen.update(configs)
        configs += self.search.propose(want - len(configs))
        if not configs:
            self.exhausted = True
            return False
        results = _checked(measurer.measure(configs))
        costs = [min(r.costs) if r.ok else math.inf for r in results]
        self.search.observe(configs, costs)
        for config, result, cost in zip(configs, results, costs, strict=True):
            self.trial += 1
            proposer = self.origin.get(config, self.strategy)
            record = _record(self.task, config, result, self.fingerprint, proposer, self.trial)
            self.log.append(record)
            self.searched.append(record)
            self.errors += not result.ok
            if cost < self.best_cost:
                self.best_config, self.best_cost, self.since_best = config, cost, 0
            else:
                self.since_best += 1
            if self.on_trial:
                self.on_trial(record)
        return True

    def finalists(self, top: int) -> list[Config]:
        return _finalists(self.searched, top, self.default)

    def verify(self, measurer: Measurer, top: int) -> None:
        """Re-measure the ``top`` best configs and the default (see _verify); the best is then
        the lowest verified median."""
        finalists = self.finalists(top)
        if len(finalists) <= 1:
            return
        done = verification_rounds(self.verified_before).get((self.trial, len(finalists)), {})
        checks = _verify(
            self.task,
            self.log,
            measurer,
            finalists,
            self.fingerprint,
            self.trial,
            self.seed,
            self.on_trial,
            done,
        )
        verified = verified_costs([*self.verified_before, *checks])
        if verified:
            self.best_config = min(verified, key=verified.get)
            self.best_cost = verified[self.best_config]

    def result(self) -> TuneResult:
        measured = self.trial - self.resumed
        return TuneResult(
            self.task, self.best_config, self.best_cost, measured, self.resumed, self.errors
        )


def _finalists(searched: list[Record], top: int, default: Config | None) -> list[Config]:
    """The ``top`` best configs of the trials, and the default if it ran."""
    ranked = sorted((r for r in searched if r.ok), key=lambda r: r.best_cost)
    finalists = list(dict.fromkeys(Config(r.config) for r in ranked))[:top]
    if top and default is not None and any(Config(r.config) == default for r in ranked):
        finalists = list(dict.fromkeys([*finalists, default]))
    return finalists


def _verify(task, log, measurer, finalists, fingerprint, trial, seed, on_trial, done):
    """VERIFY_ROUNDS rounds, each measuring every finalist once in its own shuffled order,
    back to back; every measurement is logged with its round. ``done`` ({round: {config:
    records}}) is what the log already has of this verification (a killed run): only the rest
    is measured, in the uninterrupted run's order. Returns the new records."""
    import random

    order = random.Random(seed)
    rounds = [order.sample(finalists, len(finalists)) for _ in range(VERIFY_ROUNDS)]
    records = []
    for number, batch in enumerate(rounds, start=1):
        batch = [c for c in batch if c not in done.get(number, {})]
        if not batch:
            continue
        for config, result in zip(batch, _checked(measurer.measure(batch)), strict=True):
            record = _record(task, config, result, fingerprint, VERIFY, trial)
            record = replace(record, round=number, finalists=len(finalists))
            log.append(record)
            records.append(record)
            if on_trial:
                on_trial(record)
    return records


def _checked(results: list[MeasureResult]) -> list[MeasureResult]:
    """A timing no run can take (a broken device timer) is a runtime error, not a record that
    every reader would skip: the trial stays counted and is never measured again."""
    checked = []
    for result in results:
        if result.ok and not (
            result.costs and all(MIN_COST <= c <= MAX_COST for c in result.costs)
        ):
            message = f"impossible timings {result.costs} s"
            result = replace(result, costs=(), error=ErrorKind.RUNTIME, message=message)
        checked.append(result)
    return checked


def _history(log: TuningLog, task: Task, fingerprint: dict):
    """Records of this task on this device, and the best configs of its similar tasks."""
    key, device = task_key(task.key()), device_key(fingerprint)
    mine, best_of_similar = [], {}
    version = _version()
    for record in log.read() if log.path.exists() else []:
        if device_key(record.device) != device or record.coretune_version != version:
            continue  # other devices' and versions' timings say nothing about this one
        if task_key(record.task) == key:
            mine.append(record)
        elif record.task.get("template") == task.template_name and record.ok:
            other = task_key(record.task)
            if other not in best_of_similar or record.best_cost < best_of_similar[other].best_cost:
                best_of_similar[other] = record
    similar = [
        Config(r.config) for r in sorted(best_of_similar.values(), key=lambda r: r.best_cost)
    ]
    return mine, list(dict.fromkeys(similar))


def _other_devices(log: TuningLog, task: Task, fingerprint: dict) -> list[tuple[Config, float]]:
    """(config, best cost) of this task's successful trials on other devices: a prior."""
    key, device = task_key(task.key()), device_key(fingerprint)
    best: dict[Config, float] = {}
    for record in log.read() if log.path.exists() else []:
        if record.ok and device_key(record.device) != device and task_key(record.task) == key:
            config = Config(record.config)
            best[config] = min(best.get(config, math.inf), record.best_cost)
    return list(best.items())


def _record(task, config, result: MeasureResult, fingerprint, strategy, trial) -> Record:
    return Record(
        task=task.key(),
        config=config.to_json(),
        costs=result.costs,
        error=result.error,
        message=result.message[:2000],
        device=fingerprint,
        dialect=fingerprint.get("backend", "opencl"),  # the device's own kernel language
        strategy=strategy,
        trial=trial,
        started=result.started,
        finished=result.finished,
        coretune_version=_version(),
    )
