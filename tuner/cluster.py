"""The client side of tuning on a Dask cluster: the client searches, the workers measure.

Several searches (a task on a device) run at once. Each pass asks every search's strategy, in
one batched ask, for as many configs as its device has idle workers, submits one Dask task per
config (the device's resource routes it to a worker of that device, tuner.cluster_worker), and
handles results as they arrive: the client alone appends records to the log, naming the worker
that measured each. A worker that dies mid-measurement has its trial re-run by the scheduler on
another worker; a config that keeps killing workers (KilledWorker) is recorded once, as a
runtime error. A record is written only when its Dask task completes, so no trial is lost or
recorded twice. Workers that join mid-run are counted within POLL seconds.
Each worker holds LOOKAHEAD configs beyond the one it measures (Dask keeps them on the worker
until its device's resource is free), so it starts its next trial as soon as it sends a result,
without waiting for the client's round trip; each search records when its configs reached a
worker and when the results left (Search.deliveries), the engine's overhead per trial.
A search whose trials are done verifies its finalists on one worker, in a thread, interleaved
as in a one-process run (tuner.driver._verify), while the other searches go on.
"""

import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from coretune.errors import CoretuneError
from coretune.kernels.space import Config

from .cluster_worker import measure_on_worker, resource_name, worker_device
from .driver import Budget, TuneResult, _checked, _finalists, _history, _record, _verify
from .measure import MeasureOptions
from .records import VERIFY, ErrorKind, TuningLog, verification_rounds, verified_costs
from .strategies import DEFAULT_STRATEGY, make_strategy
from .task import Task

POLL = 0.5  # seconds between looks at the cluster's workers while results are awaited
# Configs queued on each worker slot beyond the one it measures. Without one queued, a slot
# waited a whole client round trip for its next config: a median of 17-22 ms per trial with
# one or two real workers, 79 ms with 64 stand-in workers; 1.4-2.3 and 4.0 ms with one queued
# (benchmarks/cluster_tuning.py). The price is that each ask knows one batch less.
LOOKAHEAD = 1


@dataclass
class Search:
    """One task on one device: its strategy and what the log and this run hold of it."""

    task: Task
    fingerprint: dict
    limits: object  # the device's DeviceLimits, which the config space depends on
    budget: Budget
    default: Config | None = None
    strategy: object = None
    seeds: list = field(default_factory=list)
    origin: dict = field(default_factory=dict)
    searched: list = field(default_factory=list)
    verified_before: list = field(default_factory=list)
    trial: int = 0
    resumed: int = 0
    errors: int = 0
    since_best: int = 0
    best: tuple = (math.inf, None)
    in_flight: int = 0
    started: float = 0.0
    verifying: object = None  # the verification's concurrent future
    result: TuneResult | None = None
    # (worker, when its configs arrived there, when the results left), one per Dask task
    deliveries: list = field(default_factory=list)

    @property
    def resource(self) -> str:
        return resource_name(self.fingerprint)

    def wants(self) -> int:
        """Configs it may still submit now."""
        if self.verifying is not None or self.result is not None:
            return 0
        b = self.budget
        if time.monotonic() - self.started > b.seconds:
            return 0
        if b.early_stop is not None and self.since_best >= b.early_stop:
            return 0
        return max(0, b.trials - self.trial - self.in_flight)


class _RemoteMeasurer:
    """tuner.driver._verify's measurer: every batch measured on one worker, in order."""

    def __init__(self, client, search, options, seed):
        self.client, self.search, self.options, self.seed = client, search, options, seed
        self.worker = None

    def measure(self, configs):
        pinned = {"workers": [self.worker], "allow_other_workers": True} if self.worker else {}
        future = self.client.submit(
            measure_on_worker,
            self.search.task,
            [c.to_json() for c in configs],
            self.options,
            self.seed,
            resources={self.search.resource: 1},
            key=f"coretune-verify-{uuid.uuid4().hex}",
            pure=False,
            **pinned,
        )
        self.worker, results, _, _ = future.result()
        return results


class _WorkerNamingLog:
    """The log _verify writes to: each record names its worker, and is reported."""

    def __init__(self, log, measurer, report):
        self.log, self.measurer, self.report = log, measurer, report

    def append(self, record):
        record = replace(record, worker=self.measurer.worker or "")
        self.log.append(record)
        self.report(record)


def device_workers(client) -> dict[str, dict[str, float]]:
    """Resource name -> {address: units} of the workers that advertise it (a coretune worker
    advertises one unit: one trial at a time)."""
    found: dict[str, dict[str, float]] = {}
    for address, info in client.scheduler_info(n_workers=-1)["workers"].items():
        for name, units in info.get("resources", {}).items():
            if name.startswith("coretune-device-"):
                found.setdefault(name, {})[address] = units
    return found


def cluster_devices(client, timeout: float = 30.0) -> list[tuple[dict, object]]:
    """(fingerprint, limits) of each of the cluster's devices; a CoretuneError when there is
    none within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = [d for d in client.run(worker_device).values() if d]
        unique = {resource_name(d[0]): d for d in found}
        if unique and device_workers(client):
            return list(unique.values())
        if time.monotonic() > deadline:
            raise CoretuneError(
                f"no coretune worker joined the cluster at {client.scheduler.address} within "
                f"{timeout:g} s (start one per device: coretune worker ADDRESS --device D)"
            )
        time.sleep(0.2)


def tune_on_cluster(
    client,
    searches: list[Search],
    log: TuningLog,
    strategy: str = DEFAULT_STRATEGY,
    seed: int = 0,
    options: MeasureOptions | None = None,
    on_trial=None,
    worker_timeout: float = 60.0,
    progress=None,
) -> list[TuneResult]:
    """Tune every search concurrently; their results, in order. ``on_trial(search, record)``
    is called (from one thread at a time) after each record is in the log; ``progress(text)``
    when the client waits for a device's workers."""
    from distributed import wait

    options = options or MeasureOptions()
    report_lock = threading.Lock()

    def report(search, record):
        if on_trial is not None:
            with report_lock:
                on_trial(search, record)

    for search in searches:
        _prepare(search, log, strategy, seed)
    pending: dict = {}  # Dask future -> (search, config)
    verifier = ThreadPoolExecutor(max(1, len(searches)), thread_name_prefix="coretune-verify")
    missing_since: dict[str, float] = {}
    workers, polled = {}, -math.inf
    try:
        while any(s.result is None for s in searches):
            # The workers are looked up every POLL seconds, not on every pass (a pass follows
            # each result): one scheduler round trip less per result took the 64-worker
            # stand-in's median gap from 37-44 ms to 32 ms (benchmarks/cluster_tuning.py).
            # Joins and departures are still seen within POLL.
            if not workers or time.monotonic() - polled >= POLL:
                workers, polled = device_workers(client), time.monotonic()
            _check_workers(searches, workers, missing_since, worker_timeout, progress)
            for resource, units in workers.items():
                active = [s for s in searches if s.resource == resource and s.wants()]
                busy = sum(
                    s.in_flight + (s.verifying is not None)
                    for s in searches
                    if s.resource == resource
                )
                room = int(sum(units.values())) * (1 + LOOKAHEAD) - busy
                for index, search in enumerate(active):
                    share = room // len(active) + (index < room % len(active))
                    for config in _ask(search, min(share, search.wants())):
                        future = client.submit(
                            measure_on_worker,
                            search.task,
                            [config.to_json()],
                            options,
                            seed,
                            resources={resource: 1},
                            key=f"coretune-trial-{uuid.uuid4().hex}",
                            pure=False,
                        )
                        pending[future] = (search, config)
                        search.in_flight += 1
            done = set()
            if pending:
                try:
                    done, _ = wait(list(pending), timeout=POLL, return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished: look at the workers again
                    pass
            else:
                time.sleep(0.05)
            by_search: dict = {}
            for future, (worker, result, arrived, left) in _results(client, done):
                search, config = pending.pop(future)
                search.in_flight -= 1
                if worker:
                    search.deliveries.append((worker, arrived, left))
                by_search.setdefault(id(search), (search, []))[1].append((config, result, worker))
            for search, measured in by_search.values():
                _observe(search, measured, log, strategy, report)
            for search in searches:
                if search.result is None and not search.wants() and not search.in_flight:
                    _finish(search, client, log, options, seed, report, verifier)
        return [s.result for s in searches]
    finally:
        for future in pending:
            future.cancel()
        verifier.shutdown(wait=False, cancel_futures=True)


def _prepare(search: Search, log, strategy, seed) -> None:
    space = search.task.template().space(search.limits)
    search.strategy = make_strategy(strategy, space, seed)
    mine, similar = _history(log, search.task, search.fingerprint)
    search.verified_before = [r for r in mine if r.strategy == VERIFY]
    mine = [r for r in mine if r.strategy != VERIFY]
    if mine:
        configs = [Config(r.config) for r in mine]
        search.strategy.observe(configs, [r.best_cost for r in mine])
        best = min(mine, key=lambda r: r.best_cost)
        search.best = (best.best_cost, Config(best.config))
    search.origin = {c: "transfer" for c in similar}
    if search.default is not None:
        search.origin[search.default] = "default"
        similar = [search.default, *similar]
    search.seeds = list(
        dict.fromkeys(c for c in similar if space.is_valid(c) and c not in search.strategy.seen)
    )
    search.searched = list(mine)
    search.trial = search.resumed = len(mine)
    search.started = time.monotonic()


def _ask(search: Search, n: int) -> list[Config]:
    """Seeds (the default, then similar tasks' best) first, then one batched ask."""
    configs, search.seeds = search.seeds[:n], search.seeds[n:]
    search.strategy.seen.update(configs)
    return configs + (search.strategy.propose(n - len(configs)) if n > len(configs) else [])


def _results(client, done):
    """(future, (worker, result, arrived, left)) of each finished Dask task, fetched in one
    gather (one round trip per pass, not one per result); a task whose workers kept dying
    (KilledWorker) is a runtime error; any other failure is raised."""
    from distributed import KilledWorker

    finished = [f for f in done if f.status == "finished"]
    out = []
    for future, (worker, results, arrived, left) in zip(
        finished, client.gather(finished), strict=True
    ):
        out.append((future, (worker, _checked(results)[0], arrived, left)))
    for future in done:
        if future.status != "finished":
            exc = future.exception()
            if not isinstance(exc, KilledWorker):
                raise exc
            out.append((future, ("", _died(exc), None, None)))
    return out


def _died(exc) -> "object":
    from .measure import MeasureResult

    now = time.time()
    why = f"the workers measuring it died: {exc}"
    return MeasureResult((), ErrorKind.RUNTIME, why[:2000], now, now)


def _observe(search: Search, measured, log, strategy, report) -> None:
    costs = [min(r.costs) if r.ok else math.inf for _, r, _ in measured]
    search.strategy.observe([c for c, _, _ in measured], costs)
    for (config, result, worker), cost in zip(measured, costs, strict=True):
        search.trial += 1
        proposer = search.origin.get(config, strategy)
        record = _record(search.task, config, result, search.fingerprint, proposer, search.trial)
        record = replace(record, worker=worker)
        log.append(record)
        search.searched.append(record)
        search.errors += not result.ok
        if cost < search.best[0]:
            search.best, search.since_best = (cost, config), 0
        else:
            search.since_best += 1
        report(search, record)


def _finish(search, client, log, options, seed, report, verifier) -> None:
    """Verify the finalists (in a thread), or set the result at once."""
    if search.verifying is not None:
        if not search.verifying.done():
            return
        checks = search.verifying.result()  # re-raises what the verification raised
        verified = verified_costs([*search.verified_before, *checks])
        if verified:
            best = min(verified, key=verified.get)
            search.best = (verified[best], best)
    else:
        finalists = _finalists(search.searched, search.budget.verify, search.default)
        if len(finalists) > 1:
            rounds = verification_rounds(search.verified_before)
            done = rounds.get((search.trial, len(finalists)), {})
            measurer = _RemoteMeasurer(client, search, options, seed)
            logged = _WorkerNamingLog(log, measurer, lambda r: report(search, r))
            search.verifying = verifier.submit(
                _verify, search.task, logged, measurer, finalists, search.fingerprint,
                search.trial, seed, None, done,
            )  # fmt: skip
            return
    cost, config = search.best
    search.result = TuneResult(
        search.task, config, cost, search.trial - search.resumed, search.resumed, search.errors
    )


def _check_workers(searches, workers, missing_since, timeout, progress) -> None:
    """A device with no worker left: wait (saying so) up to ``timeout``, then a CoretuneError."""
    now = time.monotonic()
    for search in searches:
        if search.result is not None or workers.get(search.resource):
            missing_since.pop(search.resource, None)
            continue
        first = missing_since.setdefault(search.resource, now)
        if progress is not None and now - first >= 1.0 and int(now - first) % 10 == 0:
            progress(f"waiting for a worker of {search.fingerprint.get('name')} ...")
        if now - first > timeout:
            raise CoretuneError(
                f"no worker of device {search.fingerprint.get('name')!r} in the cluster for "
                f"{timeout:g} s; start one: coretune worker ADDRESS --device D"
            )
