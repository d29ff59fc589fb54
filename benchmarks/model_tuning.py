"""Whole-model tuning schedules compared: in turn (each task its share of the work) vs by
expected gain (tuner.allocation), on the eval ResNet-18 (CIFAR), from one time budget each.

Each run is a real `coretune tune --time-budget S --schedule X` on a fresh log. From each log,
the model's kernel time as the tune knew it at every moment: per node, the best searched cost
of its alternatives, times its weight (tuner.allocation.model_latency); the first moment the
saving over the defaults reached 95 % of the best 10-minute run's final saving is the
time-to-95 %. Then the end-to-end check of what a user gets: the default build, each run's
build, and builds from the gain run's log cut at each ``--cuts`` second (the records finished
by then), all timed interleaved run by run (medians).

    python benchmarks/model_tuning.py                # 2 x 600 s of tuning, then the builds
    python benchmarks/model_tuning.py --seconds 120 --cuts 30,60 --repeat 50   # a quick look
    POCL_DEVICES=basic python benchmarks/model_tuning.py --out benchmarks/results/pocl_basic

Needs the zoo extra (torch, torchvision) to export the model; writes
benchmarks/results/model_tuning.md and .json, and the logs beside them.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import environment, header

RESULTS = Path(__file__).parent / "results"
SCHEDULES = ("in-turn", "gain")


def export_resnet18_cifar(path: Path) -> Path:
    """torchvision's ResNet-18 for 32x32 inputs (a 3x3 stride-1 stem, no max-pool), 10
    classes, random weights, batch 1."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
    model.eval()
    sample = torch.randn(1, 3, 32, 32)
    torch.onnx.export(model, sample, str(path), input_names=["x"], output_names=["y"], dynamo=False)
    return path


def tune(model: Path, log: Path, schedule: str, seconds: float) -> dict:
    log.unlink(missing_ok=True)
    command = [sys.executable, "-m", "coretune", "tune", str(model), "--log", str(log)]
    command += ["--time-budget", str(seconds), "--schedule", schedule, "--no-e2e"]
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return {"schedule": schedule, "budget_s": seconds, "wall_s": time.monotonic() - started}


def _progress(tasks):
    from coretune.tuner.allocation import TaskProgress

    return [
        TaskProgress(t.workload.key_string(), t.weight, t.flops, t.template_name) for t in tasks
    ]


def kernel_time_curve(tasks, records) -> tuple[float, list[tuple[float, float]], int]:
    """(the defaults' model kernel time, [(seconds into the tune, model kernel time)] at each
    improvement, search trials), from searched costs only, as the tune saw them. A task's cost
    is its default's until the tune found better; a node's default is the faster default of
    its alternatives; tasks whose default was never measured are left out of both."""
    from coretune.tuner.allocation import model_latency
    from coretune.tuner.records import VERIFY, task_key

    index = {task_key(t.key()): i for i, t in enumerate(tasks)}
    searched = sorted((r for r in records if r.strategy != VERIFY), key=lambda r: r.finished)
    start = min(r.started for r in records)
    defaults = _progress(tasks)
    for record in searched:
        if record.strategy == "default" and record.ok and task_key(record.task) in index:
            defaults[index[task_key(record.task)]].best = record.best_cost
    reached = [i for i, t in enumerate(defaults) if math.isfinite(t.best)]
    progress = _progress(tasks)
    for i in reached:
        progress[i].best = defaults[i].best
    default = model_latency([defaults[i] for i in reached])
    curve = [(0.0, default)]
    for record in searched:
        i = index.get(task_key(record.task))
        if i is None or not record.ok or i not in reached:
            continue
        progress[i].best = min(progress[i].best, record.best_cost)
        latency = model_latency([progress[i] for i in reached])
        if latency < curve[-1][1]:
            curve.append((record.finished - start, latency))
    return default, curve, len(searched)


def time_to_fraction(default: float, curve, target_saving: float, fraction=0.95) -> float | None:
    """Seconds until the saving over ``default`` reached ``fraction`` of ``target_saving``."""
    for seconds, latency in curve:
        if math.isfinite(latency) and default - latency >= fraction * target_saving:
            return seconds
    return None


def cut_log(log: Path, seconds: float, out: Path) -> Path:
    """The records of ``log`` that had finished ``seconds`` into its tune."""
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    start = min(json.loads(line)["started"] for line in lines)
    kept = [line for line in lines if json.loads(line)["finished"] - start <= seconds]
    out.write_text("".join(line + "\n" for line in kept))
    return out


def end_to_end(model: Path, logs: dict[str, Path | None], repeat: int) -> dict:
    from coretune.cli_bench import interleaved, module_runner
    from coretune.graph.random import random_inputs
    from coretune.module import compile as compile_module

    modules = {
        name: compile_module(str(model), None, [str(log)] if log else None)
        for name, log in logs.items()
    }
    inputs = random_inputs(next(iter(modules.values())).plan.graph)
    return interleaved({n: module_runner(m, inputs) for n, m in modules.items()}, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600, help="each run's time budget")
    parser.add_argument("--cuts", default="60,120,180", help="seconds at which to cut the gain log")
    parser.add_argument("--repeat", type=int, default=200, help="timed runs per build")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the .md from the .json of a run"
    )
    args = parser.parse_args()
    cuts = [float(c) for c in args.cuts.split(",") if c]
    if args.report_only:
        saved = json.loads((args.out / "model_tuning.json").read_text())
        best_saving = max(r["default_kernel_s"] - r["final_kernel_s"] for r in saved["runs"])
        report(saved["environment"], saved["runs"], saved["end_to_end"], best_saving, args)
        return

    import coretune as ct
    from coretune.kernels import open_device
    from coretune.tuner.records import TuningLog
    from coretune.tuner.task import extract_tasks

    args.out.mkdir(parents=True, exist_ok=True)
    model = export_resnet18_cifar(Path(tempfile.mkdtemp()) / "resnet18_cifar.onnx")  # 45 MB
    tasks = extract_tasks(ct.import_onnx(str(model)))
    info = environment(open_device(None))
    info["POCL_DEVICES"] = os.environ.get("POCL_DEVICES", "(unset)")  # which driver was tuned
    runs, logs = [], {}
    for schedule in SCHEDULES:
        log = args.out / f"model_tuning.{schedule}.jsonl"
        run = tune(model, log, schedule, args.seconds)
        default, curve, run["trials"] = kernel_time_curve(tasks, TuningLog(log).read())
        run.update(default_kernel_s=default, final_kernel_s=curve[-1][1], curve=curve)
        runs.append(run)
        logs[schedule] = log
        print(f"{schedule}: {run['trials']} trials in {run['wall_s']:.0f} s", flush=True)
    best_saving = max(r["default_kernel_s"] - r["final_kernel_s"] for r in runs)
    for run in runs:
        run["time_to_95_s"] = time_to_fraction(run["default_kernel_s"], run["curve"], best_saving)
    builds: dict[str, Path | None] = {"default": None}
    builds.update({f"{s} {args.seconds:g} s": logs[s] for s in SCHEDULES})
    for cut in cuts:  # (the cut logs are left beside the full ones, for a look)
        cut_path = args.out / f"model_tuning.gain.cut{cut:g}.jsonl"
        builds[f"gain cut at {cut:g} s"] = cut_log(logs["gain"], cut, cut_path)
    timed = end_to_end(model, builds, args.repeat)
    report(info, runs, timed, best_saving, args)


def _env_prefix(info) -> str:
    """The environment the command ran under, as a prefix to repeat it."""
    names = ("POCL_DEVICES", "POCL_AFFINITY")
    return "".join(f"{n}={info[n]} " for n in names if info.get(n, "(unset)") != "(unset)")


def report(info, runs, timed, best_saving, args) -> None:
    def ms(seconds):
        return f"{seconds * 1e3:.2f} ms"

    default_wall = timed["default"]["wall_median_s"]
    lines = [
        "# Whole-model tuning: in turn vs by expected gain (CIFAR ResNet-18, batch 1)",
        "",
        header(info),
        "",
        f"Command: `{_env_prefix(info)}python benchmarks/model_tuning.py --seconds "
        f"{args.seconds:g} --cuts {args.cuts} --repeat {args.repeat}"
        f"{'' if args.out == RESULTS else f' --out {args.out}'}`. Each schedule tuned a "
        f"fresh log under `coretune tune --time-budget {args.seconds:g}` (tpe, 3 finalists "
        "verified). Model kernel time = per node, the best searched cost of its alternatives "
        "x its weight, as the tune saw it; time to 95 % = the first moment its saving over "
        "the defaults reached 95 % of the best run's final saving "
        f"({ms(best_saving)}).",
        "",
        "| schedule | budget | wall | search trials | model kernel time: default -> final | "
        "time to 95 % |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in runs:
        t95 = "-" if r["time_to_95_s"] is None else f"{r['time_to_95_s']:.0f} s"
        lines.append(
            f"| {r['schedule']} | {r['budget_s']:g} s | {r['wall_s']:.0f} s | {r['trials']} | "
            f"{ms(r['default_kernel_s'])} -> {ms(r['final_kernel_s'])} "
            f"({r['default_kernel_s'] / r['final_kernel_s']:.3f}x) | {t95} |"
        )
    lines += [
        "",
        f"End to end (wall time per run, medians of {args.repeat} runs each, all builds "
        "interleaved run by run):",
        "",
        "| build | wall | device time | vs default | share of the best full run's saving "
        "(wall / device time) |",
        "|---|---:|---:|---:|---:|",
    ]
    full = [name for name in timed if name.endswith(f" {args.seconds:g} s")]

    def saving(name, key):
        return timed["default"][key] - timed[name][key]

    best = {k: max(saving(n, k) for n in full) for k in ("wall_median_s", "device_median_s")}
    for name, t in timed.items():
        device = "-" if t["device_median_s"] is None else ms(t["device_median_s"])
        shares = " / ".join(
            f"{saving(name, k) / best[k]:.0%}" if best[k] > 0 else "-" for k in best
        )
        lines.append(
            f"| {name} | {ms(t['wall_median_s'])} | {device} | "
            f"{default_wall / t['wall_median_s']:.3f}x | {shares} |"
        )
    text = "\n".join(lines) + "\n"
    (args.out / "model_tuning.md").write_text(text)
    (args.out / "model_tuning.json").write_text(
        json.dumps({"environment": info, "runs": runs, "end_to_end": timed}, indent=1)
    )
    print(text)


if __name__ == "__main__":
    main()
