"""A real tuning run (not a replay): dense 1024x1024x1024, 64 trials, on the default device.

Tuned as `coretune tune` does (bayesian, then the best 3 and the default re-measured in 3
interleaved rounds, the lowest median taken). Reports the tuned config's GFLOP/s beside the
default config's and numpy's, measured in the same run (7 interleaved rounds, medians), and
the wall time per trial. Run with OpenBLAS at its
best:  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/tune_dense.py
Writes benchmarks/results/tune_dense.md and the log benchmarks/results/tune_dense.jsonl.
"""

import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from common import environment, header  # noqa: E402
from ops import Kernel, _numpy_seconds  # noqa: E402

from coretune.graph import GraphBuilder  # noqa: E402
from coretune.kernels import open_device  # noqa: E402
from coretune.kernels.workload import Workload  # noqa: E402
from coretune.tuner.driver import Budget, tune  # noqa: E402
from coretune.tuner.records import VERIFY, TuningLog  # noqa: E402
from coretune.tuner.task import Task  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
TRIALS = 64


def main():
    b = GraphBuilder()
    graph = b.build(b.dense(b.input("x", (1024, 1024)), b.input("w", (1024, 1024))))
    task = Task("gemm", Workload.from_graph(graph))
    device = open_device(None)
    log_path = RESULTS / "tune_dense.jsonl"
    log_path.unlink(missing_ok=True)
    log = TuningLog(log_path)
    default = task.template().default_config(device.limits)
    started = time.monotonic()
    result = tune(
        task,
        log,
        strategy="bayesian",
        budget=Budget(trials=TRIALS, batch=4, verify=3),
        default=default,
    )
    wall = time.monotonic() - started
    arrays = task.inputs(0)
    template = task.template()
    kernels = {
        "default": Kernel(device, template, default, arrays),
        "tuned": Kernel(device, template, result.best_config, arrays),
    }
    timers = {
        "numpy": lambda: _numpy_seconds(lambda x, w: x @ w.T, arrays),
        **{name: kernel.seconds for name, kernel in kernels.items()},
    }
    rounds = {name: [] for name in timers}
    for r in range(7):  # interleaved, in an order that rotates round by round
        names = list(timers)[r % 3 :] + list(timers)[: r % 3]
        for name in names:
            rounds[name].append(timers[name]())
    gflops = {k: task.flops / np.median(v) / 1e9 for k, v in rounds.items()}
    records = [r for r in log.read() if r.strategy != VERIFY]
    checks = len(log.read()) - len(records)
    errors = sum(not r.ok for r in records)
    report = (
        "# Real tuning run: dense 1024x1024x1024, bayesian, 64 trials\n\n"
        + header(environment(device))
        + "\n\n"
        + "| | GFLOP/s | / numpy |\n|---|---|---|\n"
        + "".join(f"| {k} | {v:.1f} | {v / gflops['numpy']:.2f} |\n" for k, v in gflops.items())
        + f"\n- trials: {len(records)} ({errors} failed), wall {wall:.0f} s, "
        f"{wall / max(1, len(records)):.2f} s per trial (build in 2 workers, run, check, time; "
        f"the wall time includes the {checks} verification measurements)\n"
        f"- tuned config: `{result.best_config.to_json()}`\n"
        f"- default config: `{default.to_json()}`\n"
    )
    (RESULTS / "tune_dense.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
