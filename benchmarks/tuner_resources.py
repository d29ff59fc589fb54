"""Does a long tuning run stay flat? 500 trials of the default (bayesian) tuner on a gemm task
whose template is rigged so that a few configs in every hundred crash the device worker, hang,
fail to compile or compute a wrong result, sampling the tuning process after every trial.

Sampled per trial: open file descriptors (/proc/self/fd), resident memory (VmRSS), threads,
the live child processes (the build pool and the device worker, restarted after each crash or
hang), and with --tracemalloc the Python heap. Flat means: once the bayesian model has
reached its bounded size (300 trials), fds, threads and children do not grow and RSS grows by
less than 8 MiB over the last 200 trials.

    python benchmarks/tuner_resources.py                 # 500 trials: ~15 minutes here
    python benchmarks/tuner_resources.py --trials 120    # a quick look
    python benchmarks/tuner_resources.py --strategy random   # without the model's own state

Writes benchmarks/results/tuner_resources.md; exits 1 when a check fails.
"""

import argparse
import hashlib
import os
import pathlib
import sys
import tempfile
import time
import tracemalloc
from collections import Counter

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import environment, header  # noqa: E402

from coretune.graph import GraphBuilder  # noqa: E402
from coretune.kernels.space import Config  # noqa: E402
from coretune.kernels.templates.gemm import GemmTemplate  # noqa: E402
from coretune.kernels.workload import Workload  # noqa: E402
from tests.rigged_template import with_fault  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TEMPLATE = "tuner_resources:FaultyGemm"
# The bayesian model grows until it holds MODEL_POINTS (256) observations, then stays that size
# (tuner/strategies.py): flat is judged from here on.
WARMUP_TRIALS = 300
RSS_GROWTH_LIMIT = 8 << 20  # over the last 200 trials; a leak of 40 KiB per trial is more


def fault_of(config) -> str:
    """A fixed few configs in every hundred fail, chosen by a hash of the config."""
    bucket = int(hashlib.sha256(config.key().encode()).hexdigest(), 16) % 100
    if bucket < 3:
        return "crash"
    if bucket < 4:
        return "hang"
    if bucket < 7:
        return "compile"
    if bucket < 10:
        return "wrong"
    return "none"


class FaultyGemm(GemmTemplate):
    name = TEMPLATE

    def spec(self, config):
        return with_fault(super().spec(config), fault_of(config))


def gemm_task():
    from coretune.tuner.task import Task

    b = GraphBuilder()
    x, w = b.input("x", (64, 128)), b.input("w", (96, 128))
    return Task(TEMPLATE, Workload.from_graph(b.build(b.dense(x, w))))


def sample() -> dict:
    status = pathlib.Path("/proc/self/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    me = str(os.getpid())
    children = 0
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            parts = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        children += parts[1] == me and parts[0] != "Z"
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "rss": int(fields["VmRSS"].split()[0]) * 1024,
        "threads": int(fields["Threads"]),
        "children": children,
    }


def main():
    from coretune.kernels import open_device
    from coretune.tuner.driver import Budget, tune
    from coretune.tuner.measure import MeasureOptions
    from coretune.tuner.records import TuningLog

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--strategy", default="bayesian", help="bayesian, random or grid")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace the Python heap too (slower, and its traces add to RSS)",
    )
    args = parser.parse_args()
    samples: dict[int, dict] = {}
    errors: Counter = Counter()
    faults: Counter = Counter()

    def on_trial(record):
        samples[record.trial] = {**sample(), "traced": tracemalloc.get_traced_memory()[0]}
        if record.trial == WARMUP_TRIALS and args.tracemalloc:
            tracemalloc.take_snapshot().dump(str(snapshot_path))  # not kept: it adds to RSS
        errors[record.error.value] += 1
        faults[fault_of(Config(record.config))] += 1
        if record.trial % 25 == 0:
            s = samples[record.trial]
            print(
                f"  trial {record.trial}: fds {s['fds']}, rss {s['rss'] >> 20} MiB, "
                f"threads {s['threads']}, children {s['children']}",
                flush=True,
            )

    scratch = tempfile.TemporaryDirectory()
    snapshot_path = pathlib.Path(scratch.name) / "heap.snapshot"
    if args.tracemalloc:
        tracemalloc.start()
    started = time.monotonic()
    with scratch:
        result = tune(
            gemm_task(),
            TuningLog(pathlib.Path(scratch.name) / "resources.jsonl"),
            strategy=args.strategy,
            budget=Budget(trials=args.trials),
            options=MeasureOptions(repeat=1, number=1, build_timeout=30.0, run_timeout=2.0),
            on_trial=on_trial,
            seed=1,
        )
        wall = time.monotonic() - started
        heap_report = ["Python heap not traced (run with --tracemalloc).", ""]
        if args.tracemalloc and snapshot_path.exists():
            before = tracemalloc.Snapshot.load(str(snapshot_path))
            stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
            heap_report = [
                f"Largest Python heap growths from trial {WARMUP_TRIALS} to the end:",
                "",
                *(f"- {stat}" for stat in stats[:5]),
                "",
            ]
            tracemalloc.stop()

    def heap(s):
        return f"{s['traced'] / (1 << 20):.1f}" if args.tracemalloc else "-"

    first, last = min(samples), max(samples)
    base = samples[min(WARMUP_TRIALS, last)]
    end = samples[last]
    peak = {k: max(s[k] for t, s in samples.items() if t >= min(WARMUP_TRIALS, last)) for k in end}
    checks = {
        "every trial recorded": result.trials == args.trials == len(samples),
        "open fds flat": peak["fds"] <= base["fds"] + 2,
        "threads flat": peak["threads"] <= base["threads"] + 2,
        "children flat": peak["children"] <= base["children"],
        f"RSS grows < {RSS_GROWTH_LIMIT >> 20} MiB": end["rss"] - base["rss"] < RSS_GROWTH_LIMIT,
        "each fault kind was hit": all(
            errors[k] for k in ("runtime", "timeout", "compile", "wrong_result")
        ),
    }
    rows = [
        f"| {t} | {s['fds']} | {s['rss'] / (1 << 20):.1f} | {heap(s)} | "
        f"{s['threads']} | {s['children']} |"
        for t, s in sorted(samples.items())
        if t in (first, last) or t % 50 == 0
    ]
    lines = [
        "# A long tuning run with faults: resources of the tuning process",
        "",
        header(environment(open_device(None))),
        "",
        f"`tune()` ({args.strategy}, batch 4, seed 1) for {args.trials} trials of a dense "
        f"64x128x96 task on `{TEMPLATE}`: the gemm template with ~3% of configs crashing the "
        "device worker, ~1% hanging (2 s run timeout), ~3% failing to compile, ~3% giving a wrong "
        f"result. Wall time {wall:.0f} s ({wall / max(1, result.trials):.2f} s per trial).",
        "",
        "Configs measured per injected fault: "
        + ", ".join(f"{kind} {n}" for kind, n in sorted(faults.items()))
        + ". Error records: "
        + ", ".join(f"{kind} {n}" for kind, n in sorted(errors.items()))
        + f" (best config found: {result.best_cost * 1e6:.1f} us).",
        "",
        "| trial | open fds | RSS MiB | Python heap MiB | threads | child processes |",
        "|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"From trial {min(WARMUP_TRIALS, last)} to {last}: fds {base['fds']} -> {end['fds']} "
        f"(peak {peak['fds']}), RSS {base['rss'] / (1 << 20):.1f} -> "
        f"{end['rss'] / (1 << 20):.1f} MiB, threads {base['threads']} -> {end['threads']}, "
        f"children {base['children']} -> {end['children']} (peak {peak['children']})"
        + (f", Python heap {heap(base)} -> {heap(end)} MiB." if args.tracemalloc else "."),
        "",
        *heap_report,
        "| check | held |",
        "|---|---|",
        *(f"| {name} | {'yes' if ok else 'NO'} |" for name, ok in checks.items()),
        "",
        "Command: `python benchmarks/tuner_resources.py"
        + (f" --trials {args.trials}" if args.trials != 500 else "")
        + (f" --strategy {args.strategy}" if args.strategy != "bayesian" else "")
        + (" --tracemalloc" if args.tracemalloc else "")
        + "`",
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tuner_resources.md").write_text("\n".join(lines))
    print("\n".join(lines))
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
