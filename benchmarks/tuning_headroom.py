"""How much faster tuning could make a model than its default build, from two measurements.

1. Per kernel, from the tuning log benchmarks/models.py made: the median of the default
   config's verification rounds vs the median of the config the tuned build takes (the lowest
   verified median over all templates of the workload). The tuner re-measures each task's
   best configs and its default in the same interleaved rounds, so the two are comparable.
2. Per model, from the default build on this device: the kernels' device time (sum of events)
   vs the wall time of a run. A tuned build can be at most wall / (wall - device time) faster
   end to end even if tuning made every kernel free: the rest is launches, hand-offs to
   PoCL's threads, input writes and output reads.

    python benchmarks/tuning_headroom.py [--only cnn ...] [--repeat 400]

Writes benchmarks/results/tuning_headroom[.basic].md (under POCL_DEVICES=basic the basic
driver's logs and table).
"""

import argparse
import pathlib
import sys
import tempfile

import onnx

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import environment, header  # noqa: E402
from models import CASES, RESULTS, device_tag  # noqa: E402

import coretune  # noqa: E402
from coretune.kernels import open_device  # noqa: E402
from coretune.kernels.space import Config  # noqa: E402
from coretune.tuner.records import TuningLog, task_key, verified_costs  # noqa: E402


def kernel_rows(module, log: pathlib.Path, fingerprint: dict) -> list[dict]:
    """Per kernel of the default build: its default config's verified median and the best
    verified median of its workload (any template), from the log's records of this device."""
    by_task: dict[str, list] = {}
    for record in TuningLog(log):
        if record.device == fingerprint:
            by_task.setdefault(task_key(record.task), []).append(record)
    rows = []
    for step in module.plan.kernels:
        workload = step.task["workload"]
        candidates = [t for t in by_task.values() if t[0].task["workload"] == workload]
        default = verified_costs(by_task.get(task_key(step.task), [])).get(Config(step.config))
        best = min(
            (cost for records in candidates for cost in verified_costs(records).values()),
            default=None,
        )
        rows.append(
            {"kernel": step.group.name, "template": step.template, "default": default, "best": best}
        )
    return rows


def us(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:,.1f} us"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=list(CASES))
    parser.add_argument("--repeat", type=int, default=400, help="runs of the default build")
    args = parser.parse_args()
    device = open_device(None)
    suffix = f".{device_tag(device)}" if device_tag(device) else ""
    lines = [
        "# Tuning headroom: how much faster could a tuned build be than the default build?",
        "",
        header(environment(device)),
        "",
        "Per kernel: medians of the tuner's verification rounds (the default config and the "
        "finalists re-measured in the same interleaved rounds), from the log "
        "benchmarks/models.py tuned (`models_<name>[.basic].jsonl`); 'best' is what the tuned "
        "build takes. Per model: the default build's kernel device time (sum of events) and "
        "wall time per run, medians of --repeat runs; 'bound if kernels took 0 s' = wall / "
        "(wall - device): no choice of kernel configs can speed the run up more.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or ["cnn", "cnn_32ch_64x64"]:
            model, inputs = CASES[name]()
            path = pathlib.Path(tmp) / f"{name}.onnx"
            onnx.save(model, path)
            log = RESULTS / f"models_{name}{suffix}.jsonl"
            module = coretune.compile(str(path), device)
            rows = kernel_rows(module, log, device.info.fingerprint())
            timing = module.benchmark(repeat=args.repeat, inputs=inputs)
            wall, busy = timing["wall_median"], timing["device_median"]
            known = [r for r in rows if r["default"] and r["best"]]
            total_default = sum(r["default"] for r in known)
            total_best = sum(r["best"] for r in known)
            block = [
                f"## {name} ({log.name})",
                "",
                "| kernel | default template | default config | best config (any template) "
                "| default / best |",
                "|---|---|---:|---:|---:|",
            ]
            for r in rows:
                ratio = f"{r['default'] / r['best']:.2f}x" if r in known else "-"
                block.append(
                    f"| {r['kernel']} | {r['template']} | {us(r['default'])} | {us(r['best'])} "
                    f"| {ratio} |"
                )
            block += [
                f"| all kernels | | {us(total_default)} | {us(total_best)} "
                f"| {total_default / total_best:.2f}x |",
                "",
                f"Default build: wall {us(wall)}, kernels {us(busy)} per run ({busy / wall:.0%}"
                f"); bound if kernels took 0 s: {wall / (wall - busy):.2f}x.",
                "",
            ]
            lines += block
            print("\n".join(block), flush=True)
    (RESULTS / f"tuning_headroom{suffix}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
