"""``coretune bench``: default build vs tuned build vs the peers (onnxruntime, OpenVINO),
interleaved, as ratios."""

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import click

from .cli_common import console, device_line, fmt_seconds, is_ctm, load_graph, open_device

# A runner times ``n`` runs: (median wall seconds, median device seconds or None).
Runner = Callable[[int], tuple[float, float | None]]


def interleaved(runners: dict[str, Runner], repeat: int) -> dict[str, dict]:
    """Medians over ``repeat`` runs of each, one timed run per turn (after the runner's own
    warm-up) in a rotating order, so that a drifting machine (a clock, caches, a neighbour)
    affects all alike, down to the finest grain."""
    names = list(runners)
    walls: dict[str, list[float]] = {n: [] for n in names}
    devices: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, device = runners[name](1)
            walls[name].append(wall)
            if device is not None:
                devices[name].append(device)
    return {
        n: {
            "wall_median_s": statistics.median(walls[n]),
            "device_median_s": statistics.median(devices[n]) if devices[n] else None,
            "runs": repeat,
        }
        for n in names
    }


def module_runner(module, inputs) -> Runner:
    def run(n):  # a warm-up run per turn, as onnxruntime's turns have theirs
        result = module.benchmark(repeat=n, inputs=inputs, warmup=1)
        return result["wall_median"], result["device_median"]

    return run


def onnxruntime_runner(path, inputs, graph_inputs) -> tuple[Runner, str] | None:
    """A runner for onnxruntime's CPU provider with 2 intra-op threads, or None if missing.

    Each turn opens its own session, warms it up, times its runs and closes it. onnxruntime's
    threads spin between runs (its best latency), and kept alive they took the cores from
    whatever ran next: a 3.6 ms coretune run took 6.3-6.7 ms for as long as a session was
    open. Not spinning was no fix either: it cost onnxruntime 2-3x on the small models."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    model = Path(path).read_bytes()

    def session():
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    names = [i.name for i in session().get_inputs()]
    # coretune keeps ONNX input names; fall back to order if an importer ever renames them.
    feeds = (
        {n: inputs[n] for n in names}
        if set(names) == set(inputs)
        else dict(zip(names, (inputs[n] for n in graph_inputs), strict=True))
    )

    def run(n):
        current = session()
        for _ in range(2):
            current.run(None, feeds)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            current.run(None, feeds)
            times.append(time.perf_counter() - start)
        del current  # its threads end with it
        return statistics.median(times), None

    return run, ort.__version__


def openvino_runner(path, inputs) -> tuple[Runner, str] | None:
    """A runner for OpenVINO's CPU runtime (2 inference threads, latency hint, float32), or
    None if it is not installed. Each turn compiles its own model and ends it, as
    onnxruntime's turns open and close a session, so that no peer's threads outlive its turn.
    Precision is pinned to f32: on CPUs with bf16 or AMX, OpenVINO's default would compute in
    bf16 and the comparison would not be of the same arithmetic."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    model = core.read_model(str(path))
    config = {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY"}
    config["INFERENCE_PRECISION_HINT"] = "f32"
    names = {port.get_any_name() for port in model.inputs}
    feeds = {n: a for n, a in inputs.items() if n in names} if names <= set(inputs) else inputs

    def run(n):
        request = core.compile_model(model, "CPU", config).create_infer_request()
        for _ in range(2):
            request.infer(feeds)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            request.infer(feeds)
            times.append(time.perf_counter() - start)
        del request  # its compiled model and threads end with it
        return statistics.median(times), None

    return run, ov.__version__


def versions(device) -> dict:
    import numpy

    from . import __version__

    return {"coretune": __version__, "numpy": numpy.__version__, **device.versions()}


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--log",
    "logs",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Tuning log(s) for the tuned build (repeatable; ONNX models only).",
)
@click.option("--device", "-d", default=None, help="Device: opencl, opencl:N, cuda, a name part.")
@click.option(
    "--repeat", type=click.IntRange(min=1), default=30, show_default=True, help="Timed runs each."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--openvino/--no-openvino",
    "with_openvino",
    default=True,
    show_default=True,
    help="Time OpenVINO's CPU runtime too, when it is installed (ONNX models only).",
)
def bench(model, logs, device, repeat, seed, as_json, with_openvino):
    """Benchmark a model: the default build, the tuned build (with --log) and the peers
    onnxruntime and OpenVINO (each when installed and MODEL is ONNX; 2 threads each), in one
    interleaved run.

    Latencies are medians of wall time per run (inputs up, outputs down, host steps included);
    device time is the sum of the kernels' device events. Ratios are speedups over the first
    row (the default build, or the .ctm as saved).

    \b
    Examples:
      coretune bench model.onnx --log tuning_logs/model.pthread-amd-epyc.jsonl
      coretune bench model.ctm --repeat 100 --json
    """
    import json

    from .graph.random import random_inputs
    from .module import compile as compile_module
    from .module import load

    dev = open_device(device)
    rows = {}
    if is_ctm(model):
        if logs:
            raise click.UsageError("--log applies to ONNX models; a .ctm is already compiled")
        base = load(model, dev)
        rows["ctm"] = base
    else:
        graph = load_graph(model)
        base = rows["default"] = compile_module(graph, dev)
        if logs:
            rows["tuned"] = compile_module(graph, dev, list(logs))
    inputs = random_inputs(base.plan.graph, seed)
    runners = {name: module_runner(m, inputs) for name, m in rows.items()}
    info = versions(dev)
    if not is_ctm(model):
        found = onnxruntime_runner(model, inputs, base.input_names)
        if found:
            runners["onnxruntime"], info["onnxruntime"] = found
        found = openvino_runner(model, inputs) if with_openvino else None
        if found:
            runners["openvino"], info["openvino"] = found
    results = interleaved(runners, repeat)
    first = next(iter(results.values()))["wall_median_s"]
    for name, result in results.items():
        result["speedup"] = first / result["wall_median_s"]
        if name in rows:
            summary = rows[name].summary()
            result["kernels"], result["tuned_kernels"] = summary["kernels"], summary["tuned"]
            result["host_steps"] = len(summary["host_steps"])
    report = {
        "model": str(model),
        "device": dev.info.fingerprint(),
        "versions": info,
        "repeat": repeat,
        "results": results,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    _print_report(report, dev)


def _print_report(report, dev) -> None:
    from rich.table import Table

    out = console()
    out.print(f"device: {device_line(dev)}")
    out.print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    table = Table(title=f"{report['model']}: median of {report['repeat']} runs, interleaved")
    for column in ("build", "wall", "device", "speedup", "kernels (tuned)", "host steps"):
        table.add_column(column, justify="left" if column == "build" else "right")
    for name, r in report["results"].items():
        table.add_row(
            name,
            fmt_seconds(r["wall_median_s"]),
            fmt_seconds(r["device_median_s"]),
            f"{r['speedup']:.2f}x",
            f"{r['kernels']} ({r['tuned_kernels']})" if "kernels" in r else "-",
            str(r.get("host_steps", "-")),
        )
    out.print(table)
