"""Tuning on a Dask cluster (tuner.cluster): what a second worker buys, what the engine costs.

1. The same gemm task, model and budget tuned by the one-process driver (the reference best)
   and by LocalClusters of 1 and 2 workers, every worker on PoCL's ``basic`` driver (one core
   each) with its binary caches off, with no config queued per worker and with
   tuner.cluster.LOOKAHEAD, runs interleaved: trials per minute, time until a run first
   reaches the one-process best (within 5 %), and its own best. The two workers share this
   host's CPU, so their timed runs take turns under the measurement lock; only building,
   compiling and the numpy checks overlap.
2. The engine's overhead per trial: on each worker, the gap between a result leaving it and
   the next config arriving (Search.deliveries), with the random strategy (asks take
   microseconds); and the gap between timed runs, which adds the next config's build.
3. A stand-in device whose "measurement" sleeps: 64 simulated workers (8 processes x 8 slots),
   the fraction of the time they are busy, and the overhead per trial under that load, with
   and without a config queued per slot.
4. The default strategy's ask time against the number of observations.

    python benchmarks/cluster_tuning.py            # ~7 minutes here
    python benchmarks/cluster_tuning.py --quick    # fewer trials and runs

Writes benchmarks/results/cluster_tuning.md.
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

os.environ["POCL_DEVICES"] = "basic"  # before PoCL loads here or in any spawned worker
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import environment, header  # noqa: E402

from coretune.graph import GraphBuilder  # noqa: E402
from coretune.kernels import open_device  # noqa: E402
from coretune.kernels.workload import Workload  # noqa: E402
from coretune.tuner.cluster_worker import DevicePlugin, resource_name  # noqa: E402
from coretune.tuner.measure import MeasureResult  # noqa: E402
from coretune.tuner.records import ErrorKind  # noqa: E402
from coretune.tuner.strategies import DEFAULT_STRATEGY  # noqa: E402
from coretune.tuner.task import Task  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "cluster_tuning.md"
STAND_IN = {"backend": "opencl", "name": "stand-in (sleeps)"}


def p90(values) -> float:
    return sorted(values)[int(0.9 * (len(values) - 1))]


def gemm_task():
    b = GraphBuilder()
    x, w = b.input("x", (96, 128)), b.input("w", (80, 128))
    return Task("gemm", Workload.from_graph(b.build(b.relu(b.dense(x, w)))))


class SleepPlugin(DevicePlugin):
    """A stand-in device: each "measurement" sleeps ``seconds`` and reports a made-up cost."""

    def __init__(self, seconds: float, slots: int):
        super().__init__(None, lock="unused")
        self.seconds, self.slots = seconds, slots

    async def setup(self, worker):
        self.fingerprint = STAND_IN
        self.limits = open_device(None).limits
        self.address = worker.address
        await worker.set_resources(**{resource_name(self.fingerprint): self.slots})

    def measure(self, task, config, options, seed):
        started = time.time()
        time.sleep(self.seconds)
        cost = 1e-4 * (1 + (hash(config) % 1000) / 1000)
        return MeasureResult((cost,), ErrorKind.NONE, "", started, time.time())


def gaps(spans) -> list[float]:
    """Per worker slot: a span's start minus the end of the slot's previous span (seconds), for
    spans (worker, start, end). A worker with several slots runs spans side by side; each is
    put on the slot that freed last before it started (a new slot if none had), which is the
    slot it ran on."""
    by_worker: dict = {}
    for worker, start, end in spans:
        by_worker.setdefault(worker, []).append((start, end))
    out = []
    for worker_spans in by_worker.values():
        slots: list[float] = []  # each slot's last end
        for start, end in sorted(worker_spans):
            free = [i for i, f in enumerate(slots) if f <= start]
            if free:
                i = max(free, key=lambda i: slots[i])
                out.append(start - slots[i])
                slots[i] = end
            else:
                slots.append(end)
    return out


def timed_gaps(records) -> list[float]:
    """A timed run's end to the next timed run's start on the same slot: the engine, the
    client's ask and the next config's build and numpy check on the worker."""
    return gaps((r.worker, r.started, r.finished) for r in records)


def engine_gaps(search) -> list[float]:
    """A result leaving a worker slot to the next config arriving there: the engine's own
    overhead per trial (the issue's definition), whatever the worker does with the config."""
    return gaps(search.deliveries)


def cluster_run(client, task, limits, fingerprint, trials, strategy, log_path):
    from coretune.tuner.cluster import Search, tune_on_cluster
    from coretune.tuner.driver import Budget
    from coretune.tuner.records import TuningLog

    log = TuningLog(log_path)
    default = task.template().default_config(limits)
    search = Search(task, fingerprint, limits, Budget(trials=trials), default=default)
    started = time.time()
    tune_on_cluster(client, [search], log, strategy)
    wall = time.time() - started
    return started, wall, log.read(), search


def reach(records, started, target) -> float | None:
    hits = [r.finished - started for r in records if r.best_cost <= target * 1.05]
    return min(hits) if hits else None


def part_workers(args, tmp, lines):
    from distributed import Client

    from coretune.tune_cluster import local_cluster
    from coretune.tuner import cluster
    from coretune.tuner.cluster import cluster_devices
    from coretune.tuner.driver import Budget, tune
    from coretune.tuner.records import TuningLog

    task, device = gemm_task(), open_device(None)
    default = task.template().default_config(device.limits)
    started = time.time()
    alone = TuningLog(tmp / "alone.jsonl")
    tune(task, alone, strategy=DEFAULT_STRATEGY, budget=Budget(trials=args.trials), default=default)
    alone_wall = time.time() - started
    best = min(r.best_cost for r in alone.read())
    # The workers compile every config afresh (PoCL's and pyopencl's binary caches off for
    # them only): with the caches on, a run's speed depended on which configs earlier runs had
    # compiled (a cold build takes ~0.45 s here, a cached one ~0.05 s), and a real tune meets
    # new configs.
    no_cache = {"POCL_KERNEL_CACHE": "0", "PYOPENCL_NO_CACHE": "1"}
    os.environ.update(no_cache)
    clusters = {n: local_cluster(n, None) for n in (1, 2)}
    for name in no_cache:
        del os.environ[name]
    clients = {n: Client(c) for n, c in clusters.items()}
    shipped = cluster.LOOKAHEAD
    lookaheads = (0, shipped)
    runs: dict = {(a, n): [] for a in lookaheads for n in (1, 2)}
    for client in clients.values():
        client.register_plugin(DevicePlugin(None))
    fingerprint, limits = cluster_devices(clients[1])[0]
    for rep in range(args.reps):
        for lookahead, n in runs:  # interleaved
            cluster.LOOKAHEAD = lookahead
            path = tmp / f"w{n}-{lookahead}-{rep}.jsonl"
            t0, wall, records, _ = cluster_run(
                clients[n], task, limits, fingerprint, args.trials, DEFAULT_STRATEGY, path
            )
            own_best = min(r.best_cost for r in records)
            runs[lookahead, n].append(
                (wall, reach(records, t0, best), own_best, timed_gaps(records))
            )
            print(f"  {n} worker(s), lookahead {lookahead}, run {rep + 1}: {wall:.1f} s")
    random_gaps, random_engine = {}, {}
    for lookahead, n in runs:
        cluster.LOOKAHEAD = lookahead
        path = tmp / f"random{n}-{lookahead}.jsonl"
        _, _, records, search = cluster_run(
            clients[n], task, limits, fingerprint, 24, "random", path
        )
        random_gaps[lookahead, n] = timed_gaps(records)
        random_engine[lookahead, n] = engine_gaps(search)
    cluster.LOOKAHEAD = shipped
    for client in clients.values():
        client.close()
    for local in clusters.values():
        local.close()

    def med(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else float("nan")

    per_min = {key: med([args.trials / r[0] * 60 for r in rs]) for key, rs in runs.items()}
    lines += [
        f"## 1 vs 2 workers ({args.trials} trials of {task.template_name} "
        f"96x80x128 + relu, {DEFAULT_STRATEGY}, {args.reps} runs each, interleaved; medians)",
        "",
        f"One-process driver (2 build processes + the device worker, PoCL's kernel cache on): "
        f"{alone_wall:.1f} s, {args.trials / alone_wall * 60:.0f} trials/min, best "
        f"{best * 1e6:.1f} us. The cluster's workers build every config afresh (binary caches "
        "off), as a real tune meets new configs; configs queued per worker beyond the one it "
        f"measures: 0, and {shipped} (shipped, tuner.cluster.LOOKAHEAD).",
        "",
        "| queued | workers | trials/min | time to the one-process best (within 5 %) "
        "| own best | runs that reached it | timed-run gap/trial (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (lookahead, n), rs in runs.items():
        reached = sum(r[1] is not None for r in rs)
        lines.append(
            f"| {lookahead} | {n} | {per_min[lookahead, n]:.0f} | {med([r[1] for r in rs]):.1f} s "
            f"| {med([r[2] for r in rs]) * 1e6:.1f} us | {reached}/{len(rs)} "
            f"| {med([g for r in rs for g in r[3]]) * 1e3:.1f} ms |"
        )
    lines += [
        "",
        "**2 workers / 1 worker: "
        + ", ".join(
            f"{per_min[a, 2] / per_min[a, 1]:.2f}x trials per minute with {a} queued"
            for a in lookaheads
        )
        + f"** (target >= 1.6x); {shipped} queued / none: "
        + ", ".join(f"{per_min[shipped, n] / per_min[0, n]:.2f}x with {n}" for n in (1, 2))
        + ".",
        "",
        "The engine's overhead per trial (a result leaving a worker to the next config "
        "arriving there) with the random strategy (asks take microseconds): "
        + ", ".join(
            f"{n} worker(s), {a} queued: median {med(random_engine[a, n]) * 1e3:.1f} ms, "
            f"p90 {p90(random_engine[a, n]) * 1e3:.1f} ms"
            for a, n in runs
        )
        + " (target <= 10 ms). From a timed run's end to the next timed run's start (that "
        "adds the next config's build and numpy check on the worker, and the measurement "
        "lock): "
        + ", ".join(
            f"{n} worker(s), {a} queued: median {med(random_gaps[a, n]) * 1e3:.1f} ms"
            for a, n in runs
        )
        + ".",
        "",
    ]


def part_stand_in(args, lines):
    import dask
    from distributed import Client, LocalCluster

    from coretune.tuner import cluster
    from coretune.tuner.cluster import Search, device_workers, tune_on_cluster
    from coretune.tuner.driver import Budget
    from coretune.tuner.records import TuningLog

    processes, slots, seconds = 8, 8, args.sleep
    workers, trials = processes * slots, args.stand_in_trials
    shipped = cluster.LOOKAHEAD
    runs: dict = {0: [], shipped: []}
    dask.config.set({"distributed.worker.daemon": False})
    with (
        LocalCluster(
            n_workers=processes, threads_per_worker=slots, dashboard_address=None
        ) as local,
        Client(local) as client,
        tempfile.TemporaryDirectory() as tmp,
    ):
        client.register_plugin(SleepPlugin(seconds, slots))
        while len(device_workers(client).get(resource_name(STAND_IN), {})) < processes:
            time.sleep(0.1)
        limits = open_device(None).limits
        for rep in range(args.reps):
            for lookahead in runs:  # interleaved: none queued, then the shipped lookahead
                cluster.LOOKAHEAD = lookahead
                log = TuningLog(pathlib.Path(tmp) / f"stand-in-{lookahead}-{rep}.jsonl")
                search = Search(gemm_task(), STAND_IN, limits, Budget(trials=trials))
                started = time.time()
                tune_on_cluster(client, [search], log, "random")
                wall = time.time() - started
                records = log.read()
                busy = sum(r.finished - r.started for r in records) / (workers * wall)
                runs[lookahead].append((wall, busy, len(records) / wall, engine_gaps(search)))
        cluster.LOOKAHEAD = shipped
    lines += [
        f"## A stand-in device: {workers} simulated workers ({processes} processes x {slots} "
        f"slots), each trial sleeps {seconds * 1e3:.0f} ms, {trials} trials, random strategy, "
        f"{args.reps} runs each, interleaved; medians",
        "",
        f"Ideal wall {trials * seconds / workers:.1f} s. The engine's overhead per trial is a "
        "result leaving a slot to the next config arriving there.",
        "",
        "| configs queued per slot | wall | workers busy | trials/s | overhead/trial median "
        "| p90 |",
        "|---|---|---|---|---|---|",
    ]
    for lookahead, rs in runs.items():
        g = [x for r in rs for x in r[3]]
        lines.append(
            f"| {lookahead}{' (shipped)' if lookahead == shipped else ''} "
            f"| {statistics.median(r[0] for r in rs):.1f} s "
            f"| **{statistics.median(r[1] for r in rs) * 100:.0f} %** "
            f"| {statistics.median(r[2] for r in rs):.0f} "
            f"| **{statistics.median(g) * 1e3:.1f} ms** | {p90(g) * 1e3:.1f} ms |"
        )
    lines.append("")


def part_ask(lines):
    import math
    import random

    from coretune.tuner.strategies import make_strategy

    space = gemm_task().template().space(open_device(None).limits)
    search = make_strategy(DEFAULT_STRATEGY, space, 0)
    rng = random.Random(0)
    rows, observed = [], 0
    for target in (8, 32, 64, 128, 256, 400):
        configs = search.propose(target - observed)
        search.observe(configs, [1e-4 * math.exp(rng.random()) for _ in configs])
        observed = target
        timing = {}
        for n in (1, 8):
            t0 = time.perf_counter()
            asked = search.propose(n)
            timing[n] = time.perf_counter() - t0
            t0 = time.perf_counter()
            search.observe(asked, [1e-4 * math.exp(rng.random()) for _ in asked])
            timing[f"tell{n}"] = time.perf_counter() - t0
            observed += len(asked)
        rows.append(
            f"| {target} | {timing[1] * 1e3:.0f} ms | {timing[8] * 1e3:.0f} ms | "
            f"{timing['tell1'] * 1e3:.0f} ms |"
        )
    lines += [
        f"## The default strategy's ({DEFAULT_STRATEGY}) ask (and tell) time vs observations "
        f"(gemm space, {space.size} configs)",
        "",
        "| observations | ask 1 | ask 8 (one batched ask) | tell 1 |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.5)
    parser.add_argument("--stand-in-trials", type=int, default=640)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["workers", "stand-in", "ask"], default=None)
    args = parser.parse_args()
    if args.quick:
        args.trials, args.reps, args.stand_in_trials = 16, 1, 192
    import distributed

    info = environment(open_device(None))
    info["distributed"] = distributed.__version__
    load = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    info["load before"] = load()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "workers"):
            part_workers(args, pathlib.Path(tmp), lines)
        if args.only in (None, "stand-in"):
            part_stand_in(args, lines)
        if args.only in (None, "ask"):
            part_ask(lines)
    info["load after"] = load()
    text = "# Tuning on a Dask cluster\n\n" + header(info) + "\n\n" + "\n".join(lines)
    print(text)
    if args.only is None:
        OUT.write_text(text)


if __name__ == "__main__":
    main()
