"""How well each search strategy finds the best config, replayed against measured tables.

Step 1 (--measure): for each task, measure EVERY valid config on the default device, in 15
shuffled passes (min taken: see measure_table), and save the table as CSV under
benchmarks/results/ (~12 min for the three tasks here).
Step 2 (always): replay each strategy against those tables (the objective is the table: cheap
and seedable) with 20+ seeds and budgets 8, 16, 32, 64; report the median and 10th percentile
of exhaustive-best / best-found (1.0 = found the best), and plot convergence curves. The
report also says how reproducible each table's best is: the best config of the even passes
scored in the odd passes, and the other way round (1.0 = the same winner).

Step 3 (always, unless --tables is given empty): the same for tables measured elsewhere,
Kernel Tuner cache files (benchmarks/tables/, README there; outside_tables.py): budgets 16-128,
the methodology score against random, and each table tuned with another GPU's table as prior.

    python benchmarks/tuner_efficiency.py --measure --no-replay   # once, the tables
    OPENBLAS_NUM_THREADS=1 python benchmarks/tuner_efficiency.py   # replay (~15 min)
    python benchmarks/tuner_efficiency.py --tasks --outside-strategies tpe grid random  # outside
"""

import argparse
import csv
import json
import math
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from common import environment, header  # noqa: E402

from coretune.graph import GraphBuilder  # noqa: E402
from coretune.kernels.space import Config  # noqa: E402
from coretune.kernels.templates import templates_for  # noqa: E402
from coretune.kernels.workload import Workload  # noqa: E402
from coretune.tuner.strategies import make_strategy  # noqa: E402
from coretune.tuner.task import Task  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
BUDGETS = (8, 16, 32, 64)
STRATEGIES = ("bayesian", "tpe", "random")
OUTSIDE_BUDGETS = (16, 32, 64, 128)
OUTSIDE_STRATEGIES = ("tpe", "bayesian", "grid", "random")


def _task(graph, template=None):
    workload = Workload.from_graph(graph)
    names = [t.name for t in templates_for(workload)]
    return Task(template or names[0], workload)


def dense_task():
    b = GraphBuilder()
    x = b.input("x", (256, 512))
    w = b.input("w", (256, 512))
    return _task(b.build(b.dense(x, w)))


def conv3x3_task():
    b = GraphBuilder()
    x = b.input("x", (1, 32, 28, 28))
    w = b.input("w", (32, 32, 3, 3))
    return _task(b.build(b.conv2d(x, w, padding=(1, 1, 1, 1))))


def depthwise_task():
    b = GraphBuilder()
    x = b.input("x", (1, 32, 56, 56))
    w = b.input("w", (32, 1, 3, 3))
    return _task(b.build(b.conv2d(x, w, padding=(1, 1, 1, 1), groups=32)))


TASKS = {
    "dense_256x512x256": dense_task,
    "conv3x3_32x28x28": conv3x3_task,
    "depthwise3x3_32x56x56": depthwise_task,
}

# Measuring every config of the full spaces (55k for gemm) would take hours here, so each task
# is tuned over a sub-space: the knobs below keep only these choices (the rest keep all).
# Each sub-space still has >= 300 valid configs; the strategies search exactly that space.
SUBSPACES = {
    "dense_256x512x256": {
        "stage_local": (False,),
        "wg_k": (1,),
        "tile_k": (8,),
        "wg_m": (1, 4, 16),
        "wg_n": (1, 4, 16),
        "unroll_k": (4,),
        "vector": (4, 8),
    },
    "conv3x3_32x28x28": {"wg_x": (1, 4, 16), "wg_y": (1, 4), "wg_z": (1, 2, 8)},
    "depthwise3x3_32x56x56": {"wg_x": (1, 4, 16, 64), "wg_y": (1, 4, 16)},
}


def space_for(name, task, limits):
    from coretune.kernels.space import ConfigSpace, Knob

    template = task.template()
    full = template.space(limits)
    keep = SUBSPACES[name]
    knobs = [
        Knob(k.name, tuple(c for c in k.choices if c in keep.get(k.name, k.choices)))
        for k in full.knobs
    ]
    return ConfigSpace(
        knobs, list(full.restrictions), limits, template.work_group, template.local_mem_bytes
    )


def measure_table(name, task, sweeps, device_spec=None):
    """Every valid config, measured in ``sweeps`` passes over the space, each pass in its own
    shuffled order; a config's cost is the min over its passes of the min over its repeats
    (what the tuner ranks by, Record.best_cost).

    Passes spread over minutes keep a config measured during a disturbance from looking slow,
    and one measured in a lucky moment from standing alone at the top. Every pass's cost is
    kept in the table, for the reproducibility check of the report. (Until the device worker
    was limited to one BLAS thread, OpenBLAS's spinning thread disturbed most measurements:
    only 7-13% of a config's passes came within 10% of its best, and 5 passes gave tables
    whose winners did not reproduce. Since then ~75% do.)"""
    from coretune.kernels import open_device
    from coretune.tuner.measure import MeasureOptions, Measurer

    device = open_device(device_spec)
    space = space_for(name, task, device.limits)
    configs = list(space.all_valid())
    print(f"{name}: {task.template_name}, {len(configs)} valid configs of {space.size}", flush=True)
    path = RESULTS / f"tuner_table_{name}.csv"
    sweep_costs = {c: [] for c in configs}
    errors = {c: "none" for c in configs}
    rng = np.random.default_rng(0)
    with Measurer(task, device_spec, MeasureOptions(number=2, repeat=3, min_repeat_ms=2)) as m:
        for sweep in range(sweeps):
            order = [configs[i] for i in rng.permutation(len(configs))]
            for start in range(0, len(order), 8):
                batch = order[start : start + 8]
                for config, result in zip(batch, m.measure(batch), strict=True):
                    if result.ok:
                        sweep_costs[config].append(min(result.costs))
                    else:
                        errors[config] = result.error.value
                done = sweep * len(order) + start + len(batch)
                print(f"  {done}/{sweeps * len(order)}", end="\r", flush=True)
    rows = [
        {
            "config": c.key(),
            "cost": min(sweep_costs[c]) if e == "none" else math.inf,
            "error": e,
            "sweep_costs": " ".join(f"{cost:.4g}" for cost in sweep_costs[c]),
        }
        for c, e in errors.items()
    ]
    with open(path, "w", newline="") as f:
        about = header(environment(device)).replace("\n- ", "; ")
        f.write(
            f"# task {name}; template {task.template_name}; sweeps {sweeps}, cost = min over "
            f"sweeps of the min over 3 repeats; {about}\n"
        )
        writer = csv.DictWriter(f, ["config", "cost", "error", "sweep_costs"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n  wrote {path}")


def table_rows(name) -> list[dict]:
    """The rows of a measured table (its first line, the provenance comment, skipped)."""
    with open(RESULTS / f"tuner_table_{name}.csv") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def split_half_agreement(name) -> tuple[int, float, float]:
    """The number of passes; the best config of the even passes scored in the odd passes, and
    the other way round: exhaustive-best / its cost there (1.0 = both halves agree)."""
    rows = table_rows(name)
    sweeps = np.array(
        [[float(c) for c in r["sweep_costs"].split()] for r in rows if r["error"] == "none"]
    )
    even, odd = sweeps[:, 0::2].min(axis=1), sweeps[:, 1::2].min(axis=1)
    return (
        sweeps.shape[1],
        float(odd.min() / odd[even.argmin()]),
        float(even.min() / even[odd.argmin()]),
    )


def load_table(name):
    return {Config(json.loads(r["config"])): float(r["cost"]) for r in table_rows(name)}


def replay(name, task, table, strategy, seed, budget, batch=4):
    """Best-so-far cost after each trial of one seeded run against the table."""
    from coretune.kernels import open_device

    space = space_for(name, task, open_device().limits)
    search = make_strategy(strategy, space, seed)
    best, curve = math.inf, []
    while len(curve) < budget:
        configs = search.propose(min(batch, budget - len(curve)))
        if not configs:
            break
        costs = [table.get(c, math.inf) for c in configs]
        search.observe(configs, costs)
        for cost in costs:
            best = min(best, cost)
            curve.append(best)
    return curve


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="measure the full tables first")
    parser.add_argument("--sweeps", type=int, default=15, help="passes over each space (--measure)")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--no-replay", action="store_true", help="only measure the tables")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument(
        "--tables",
        nargs="*",
        type=pathlib.Path,
        help="Kernel Tuner cache files to replay (default: benchmarks/tables/*; none: skip)",
    )
    parser.add_argument("--outside-strategies", nargs="*", default=list(OUTSIDE_STRATEGIES))
    parser.add_argument("--transfer-strategy", default="tpe")
    parser.add_argument("--output", type=pathlib.Path, default=RESULTS / "tuner_efficiency.md")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    tasks = {name: TASKS[name]() for name in args.tasks}
    if args.measure:
        for name, task in tasks.items():
            measure_table(name, task, args.sweeps)
    if args.no_replay:
        return
    load_before = os.getloadavg()[0]
    outside = _outside(args)
    lines = [
        "| task | valid configs | strategy | "
        + " | ".join(f"median@{b} | p10@{b}" for b in BUDGETS)
        + " |",
        "|---|---|---|" + "---|---|" * len(BUDGETS),
    ]
    curves = {}
    for name, task in tasks.items():
        table = load_table(name)
        exhaustive = min(table.values())
        for strategy in STRATEGIES:
            runs = [
                replay(name, task, table, strategy, seed, max(BUDGETS))
                for seed in range(args.seeds)
            ]
            ratios = {b: [exhaustive / run[min(b, len(run)) - 1] for run in runs] for b in BUDGETS}
            curves[(name, strategy)] = np.median(
                [[exhaustive / c for c in run] for run in runs if len(run) == max(BUDGETS)], axis=0
            )
            cells = " | ".join(
                f"{np.median(ratios[b]):.3f} | {np.percentile(ratios[b], 10):.3f}" for b in BUDGETS
            )
            lines.append(f"| {name} | {len(table)} | {strategy} | {cells} |")
            print(lines[-1], flush=True)
    agreement = [
        "| task | passes | best of even passes, in the odd | best of odd passes, in the even |",
        "|---|---:|---:|---:|",
    ]
    for name in tasks:
        passes, even_in_odd, odd_in_even = split_half_agreement(name)
        agreement.append(f"| {name} | {passes} | {even_in_odd:.3f} | {odd_in_even:.3f} |")
    report = (
        "# Tuner efficiency (replayed against measured tables)\n\n"
        + header(environment())
        + f"\n- seeds: {args.seeds}\n- load (1 min) before / after the replay: "
        f"{load_before:.2f} / {os.getloadavg()[0]:.2f}\n\n"
        + outside
        + "## The project's own tables (PoCL, measured here)\n\n"
        "Ratio = exhaustive best cost / best cost found within the budget (1.0 is the "
        "best config of the table).\n\n" + "\n".join(lines) + "\n\n"
        "How reproducible each table's best is (a config's cost is the min over its passes; "
        "1.000 = both halves of the passes pick the same winner):\n\n" + "\n".join(agreement) + "\n"
    )
    args.output.write_text(report)
    if curves:
        _plot(curves, RESULTS / "tuner_efficiency.png")
    print(report)


def _outside(args) -> str:
    """The report's section on Kernel Tuner's tables (see outside_tables.py)."""
    import outside_tables

    if args.tables is not None and not args.tables:
        return ""
    tables = outside_tables.load_all(args.tables)
    lines, slowest = outside_tables.report(
        tables, args.outside_strategies, OUTSIDE_BUDGETS, args.seeds, args.transfer_strategy
    )
    asks = ", ".join(f"{s} {t:.3f} s" for s, t in slowest.items())
    return (
        "## Tables measured elsewhere (Kernel Tuner caches, benchmarks/tables/README.md)\n\n"
        "frac = median over seeds of optimum / best found within the budget; score = "
        "(frac - random) / (1 - random), random being the exact mean of the best of as many "
        "uniform draws from the table (0 = no better than random, 1 = the optimum). Batches of "
        "4 proposals; failed and missing configs are failed trials. '+prior(T)' starts from "
        "table T (the same kernel on another GPU) as the prior: its best configs are proposed "
        "first and measured, never taken as the answer.\n\n"
        f"Slowest propose call (4 configs) at 120-128 observations: {asks}.\n\n"
        + "\n".join(lines)
        + "\n\n"
    )


def _plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({name for name, _ in curves})
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for (task, strategy), curve in curves.items():
            if task == name:
                ax.plot(range(1, len(curve) + 1), curve, label=strategy)
        ax.set_title(name)
        ax.set_xlabel("trials")
        ax.set_ylabel("median exhaustive-best / best-found")
        ax.set_ylim(0, 1.05)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
