"""Replay the strategies on exhaustive tables measured elsewhere (Kernel Tuner cache files).

A Kernel Tuner cache (JSON, optionally gzipped) holds every config of a kernel's space that
passes the kernel's restrictions, each with its time or a failure ("CompilationFailedConfig",
"RuntimeFailedConfig", ...). The space built here has the cache's knobs, and one restriction:
the config is in the cache (Kernel Tuner only caches configs that pass the kernel's
restrictions, so this is the same predicate, taken from the table). A failed or missing
config is a failed trial (cost inf). Strategies run through make_strategy's ask/tell exactly
as the driver runs them on a device.
"""

import gzip
import json
import math
import pathlib
import time
from math import comb

import numpy as np

from coretune.kernels.device import DeviceLimits
from coretune.kernels.space import Config, ConfigSpace, Knob, Restriction
from coretune.tuner.strategies import make_strategy

TABLES = pathlib.Path(__file__).resolve().parent / "tables"
UNLIMITED = DeviceLimits(2**31, (2**31,) * 3, 2**40)


class OutsideTable:
    def __init__(self, path: pathlib.Path):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            data = json.load(f)
        self.name = path.name.split(".")[0]
        self.kernel = data.get("kernel_name", "")
        self.device = data.get("device_name", "")
        params = data["tune_params"]
        self.costs: dict[Config, float] = {}
        for entry in data["cache"].values():
            cost = entry.get(data.get("objective", "time"))
            ok = isinstance(cost, int | float) and math.isfinite(cost) and cost > 0
            self.costs[Config({k: entry[k] for k in params})] = float(cost) if ok else math.inf
        listed = frozenset(self.costs)
        self.space = ConfigSpace(
            [Knob(k, tuple(v)) for k, v in params.items()],
            [Restriction("not in the table (breaks the kernel's restrictions)", _member(listed))],
            UNLIMITED,
            work_group=lambda c: (1,),
        )
        self.optimum = min(self.costs.values())
        self.valid = sum(math.isfinite(c) for c in self.costs.values())
        self.product = self.space.size

    def cost(self, config: Config) -> float:
        return self.costs.get(config, math.inf)

    def expected_random(self, budget: int) -> float:
        """Exact mean fraction of the optimum of the best of ``budget`` distinct uniform draws
        from the table (the methodology score's baseline, free of seed noise)."""
        values = sorted(self.costs.values())
        n, total = len(values), comb(len(values), budget)
        return sum(
            comb(n - k - 1, budget - 1) / total * (self.optimum / v)
            for k, v in enumerate(values)
            if math.isfinite(v) and n - k - 1 >= budget - 1
        )


def _member(listed):
    return lambda config, limits: config in listed


def replay(table, strategy, seed, budget, batch=4, prior=()):
    """Best-so-far cost after each trial, and the strategy's seconds per propose call."""
    search = make_strategy(strategy, table.space, seed, prior=prior)
    best, curve, asks = math.inf, [], []
    while len(curve) < budget:
        started = time.perf_counter()
        configs = search.propose(min(batch, budget - len(curve)))
        asks.append((len(curve), time.perf_counter() - started))
        if not configs:
            break
        costs = [table.cost(c) for c in configs]
        search.observe(configs, costs)
        for cost in costs:
            best = min(best, cost)
            curve.append(best)
    return curve, asks


def load_all(paths=None) -> list[OutsideTable]:
    return [OutsideTable(p) for p in (paths or sorted(TABLES.glob("*.json*")))]


def report(tables, strategies, budgets, seeds, transfer_strategy):
    """Markdown rows: per table, strategy and budget the median fraction of the optimum and
    the methodology score; then the same with another GPU's table of the kernel as prior."""
    lines = [
        "| table | valid / listed / product | strategy | "
        + " | ".join(f"@{b} frac / score" for b in budgets)
        + " |",
        "|---|---|---|" + "---|" * len(budgets),
    ]
    slowest = {}
    top = max(budgets)
    for table in tables:
        random_mean = {b: table.expected_random(b) for b in budgets}
        others = [t for t in tables if t.kernel == table.kernel and t is not table]
        runs_of = {}
        for strategy in strategies:
            runs_of[strategy] = [replay(table, strategy, s, top) for s in range(seeds)]
        if others:  # leave-one-table-out: the next GPU's table of the same kernel as prior
            prior = list(others[0].costs.items())
            runs_of[f"{transfer_strategy}+prior({others[0].name})"] = [
                replay(table, transfer_strategy, s, top, prior=prior) for s in range(seeds)
            ]
        for label, runs in runs_of.items():
            cells = []
            for b in budgets:
                frac = float(np.median([table.optimum / r[0][min(b, len(r[0])) - 1] for r in runs]))
                score = (frac - random_mean[b]) / (1 - random_mean[b])
                cells.append(f"{frac:.3f} / {score:+.2f}")
            at = [t for r in runs for n, t in r[1] if n >= top - 8]  # asks at ~128 observations
            slowest[label.split("+")[0]] = max(slowest.get(label.split("+")[0], 0), max(at))
            sizes = f"{table.valid} / {len(table.costs)} / {table.product}"
            lines.append(f"| {table.name} | {sizes} | {label} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        cells = " | ".join(f"{random_mean[b]:.3f} / +0.00" for b in budgets)
        lines.append(f"| {table.name} | | random (exact mean) | {cells} |")
    return lines, slowest
