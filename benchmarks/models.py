"""The test models end to end: tune each with the real tuner, then time the default build, the
tuned build and onnxruntime (2 intra-op threads) in one interleaved run per model (medians).

For each model: save it to a temp .onnx, run `coretune tune MODEL.onnx --trials N --log
benchmarks/results/models_<name>.jsonl --no-e2e` (a fresh log each time; N = --trials per
kernel of the model), then compile both builds and time them with coretune.cli_bench's
interleaved runners.

    python benchmarks/models.py [--trials 24] [--repeat 60] [--only cnn ...] [--no-tune]

Writes benchmarks/results/models_<name>.json per model and benchmarks/results/models.md with
every model measured so far, and keeps the tuning logs beside them. Under POCL_DEVICES=basic
(PoCL's single-threaded driver: it runs each command in the calling thread, no hand-off to
worker threads) the results and logs go to models_<name>.basic.json(l), with their own rows.
"""

import argparse
import datetime
import json
import pathlib
import subprocess
import sys
import tempfile

import onnx

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import environment, header  # noqa: E402

import coretune  # noqa: E402
from coretune.cli_bench import interleaved, module_runner, onnxruntime_runner  # noqa: E402
from coretune.kernels import open_device  # noqa: E402
from tests.onnx_models import MODELS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CASES = {
    "mlp_batch1": lambda: MODELS["mlp"](),
    "mlp_batch64": lambda: MODELS["mlp"](batch=64),
    "cnn": MODELS["cnn"],
    # The same network at a ResNet stage's size (32 channels, 64x64): the test-size models
    # above take tens of microseconds, so launch overheads, not kernels, decide their times.
    "cnn_32ch_64x64": lambda: MODELS["cnn"](width=32, size=64),
    "mobilenet_block_bn": lambda: MODELS["mobilenet_block"](batch_norms=True),
    "transformer_layer": MODELS["transformer_layer"],
}


def commit() -> str:
    """The checkout measured (results of several runs end up in one table)."""
    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return found.stdout.strip() or "unknown commit"


def device_tag(device) -> str:
    """'' for PoCL's default pthread driver (and other devices), else the PoCL driver name."""
    name = device.info.name
    return "" if "-" not in name or name.startswith("pthread") else name.split("-")[0]


def tune(path: pathlib.Path, log: pathlib.Path, trials: int) -> None:
    log.unlink(missing_ok=True)
    command = ["coretune", "tune", str(path), "--trials", str(trials), "--log", str(log)]
    subprocess.run([*command, "--no-e2e"], check=True, stdout=subprocess.DEVNULL)


def measure(path: pathlib.Path, inputs: dict, log: pathlib.Path, device, repeat: int) -> dict:
    builds = {
        "default": coretune.compile(str(path), device),
        "tuned": coretune.compile(str(path), device, logs=[str(log)]),
    }
    runners = {name: module_runner(module, inputs) for name, module in builds.items()}
    found = onnxruntime_runner(path, inputs, builds["default"].input_names)
    if found is None:
        raise SystemExit("onnxruntime is not installed")
    runners["onnxruntime"] = found[0]
    times = {k: v["wall_median_s"] for k, v in interleaved(runners, repeat).items()}
    return {
        "times": times,
        "default": builds["default"].summary(),
        "tuned": builds["tuned"].summary(),
    }


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} us"


def row(name: str, r: dict) -> str:
    t, d, tuned = r["times"], r["default"], r["tuned"]
    kernels = f"{tuned['kernels']} ({tuned['tuned']} tuned)"
    if tuned.get("pad_copies"):
        kernels += f" + {tuned['pad_copies']} pad copies"
    if tuned.get("pads_in_place"):
        kernels += f" ({tuned['pads_in_place']} pads in place)"
    memory = f"{tuned['planned_bytes']:,} / {tuned['unshared_bytes']:,}"
    if d["planned_bytes"] != tuned["planned_bytes"]:
        memory += f" (default build {d['planned_bytes']:,})"
    cells = [
        name,
        r.get("device", "pthread-AMD EPYC"),
        kernels,
        memory,
        us(t["default"]),
        us(t["tuned"]),
        us(t["onnxruntime"]),
        f"{t['default'] / t['tuned']:.2f}x",
        f"{t['tuned'] / t['onnxruntime']:.2f}x",
        f"{r.get('measured', '2026-11-24, before verification')}, {r['trials']} trials"
        + (f" (tuned at {r['tuned_at']})" if r.get("tuned_at") else ""),
    ]
    return "| " + " | ".join(cells) + " |"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--trials", type=int, default=24, help="tuning trials per kernel of the model"
    )
    parser.add_argument("--repeat", type=int, default=60, help="timed runs per build")
    parser.add_argument(
        "--no-tune", action="store_true", help="re-measure with the logs already in results/"
    )
    parser.add_argument("--only", nargs="*", choices=list(CASES), help="re-run these models")
    args = parser.parse_args()
    device = open_device(None)
    suffix = f".{device_tag(device)}" if device_tag(device) else ""
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or CASES:
            model, inputs = CASES[name]()
            path = pathlib.Path(tmp) / f"{name}.onnx"
            onnx.save(model, path)
            log = RESULTS / f"models_{name}{suffix}.jsonl"  # tune() starts it afresh
            trials = args.trials * len(coretune.compile(model, device).plan.kernels)
            measured = f"{datetime.date.today()} at {commit()}"
            saved = RESULTS / f"models_{name}{suffix}.json"
            if args.no_tune:  # the log of an earlier run: say which
                earlier = json.loads(saved.read_text()) if saved.exists() else {}
                tuned_at = earlier.get("tuned_at") or earlier.get("measured", "unknown")
            else:
                print(f"{name}: tuning, {trials} trials ...", flush=True)
                tune(path, log, trials)
                tuned_at = None
            result = {
                "trials": trials,
                "device": device.info.name,
                "measured": measured,
                **({"tuned_at": tuned_at} if tuned_at else {}),
                **measure(path, inputs, log, device, args.repeat),
            }
            saved.write_text(json.dumps(result, indent=1))
            print(row(name, result), flush=True)
    # The table holds every model measured so far (--only re-runs some of them), per device.
    results = {
        f"{name}{tag}": json.loads(path.read_text())
        for tag in ("", ".basic")
        for name in CASES
        if (path := RESULTS / f"models_{name}{tag}.json").exists()
    }
    lines = [
        "# Test models: default vs tuned build vs onnxruntime",
        "",
        header(environment(device)),
        "",
        "Tuned with `coretune tune MODEL.onnx --trials N --no-e2e` (N in the last column: "
        "--trials per kernel of the model; bayesian, each task's best 3 and default then "
        "verified in 3 "
        "interleaved rounds; a fresh log per model and device: `models_<name>[.basic].jsonl`). "
        "Latencies are medians of wall time per "
        f"run over {args.repeat} runs each, default / tuned / onnxruntime interleaved run by run "
        "(coretune.cli_bench.interleaved); onnxruntime uses the CPU provider with 2 intra-op "
        "threads. Kernels and memory are the tuned build's (Module.summary()): kernels per run "
        "(and pad copies: device rectangle copies that pad a conv's input each run; pads "
        "in place: written by their producer's own stores or the input's rectangle write, no "
        "command of their own; a residual add reads such a tensor there), planned buffer "
        "bytes vs one buffer per tensor (no reuse). Speedup = "
        "default / tuned; the last column = tuned / onnxruntime (below 1 means coretune is "
        "faster).",
        "",
        "| model | device | kernels | planned / no-reuse bytes | default | tuned | onnxruntime "
        "| tuned/default speedup | tuned vs onnxruntime | measured |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
        *(row(name.split(".")[0], r) for name, r in results.items()),
        "",
        "Commands: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/models.py` "
        "for the pthread rows, the same under `POCL_DEVICES=basic` for the basic rows "
        "(PoCL's single-threaded driver: commands run in the calling thread).",
        "",
    ]
    (RESULTS / "models.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
