"""A zoo of real architectures, exported from torchvision and transformers with random weights
(no downloads), through coretune: import, compile, run, tune and time each against
onnxruntime and OpenVINO.

Each model is exported with both of torch's exporters where each works (TorchScript,
`torch.onnx.export(..., dynamo=False)`, and `dynamo=True`), at the opsets they produce, batch 1,
static shapes, eval mode (benchmarks/zoo_models.py). The .onnx files are cached in
benchmarks/.zoo_cache/ (git-ignored), so that a re-run skips the export. Then, per model and
exporter, in a subprocess of its own with a time limit (one failing or slow model does not stop
the others; benchmarks/zoo_worker.py):

- `coretune.import_onnx` (on failure: the error and the unsupported op types with counts);
- `coretune.compile` on the default device (seconds, kernels, host steps, build seconds);
- one run against onnxruntime on the same random inputs: rel err = max |got - ref| / max |ref|
  over the outputs (float32);
- with --tune S: `coretune tune --time-budget S` into tuning_logs/zoo/, and the tuned build;
- the default build, the tuned build, onnxruntime and OpenVINO (2 threads each), interleaved,
  medians (coretune.cli_bench.interleaved).

    pip install -e ".[zoo,test]"
    python benchmarks/zoo.py [--only resnet50 bert ...] [--exporter torchscript|dynamo|both]
                             [--tune SECONDS] [--timeout 600] [--repeat 20] [--refresh]

Writes benchmarks/results/zoo.json (every model and exporter measured so far; --only re-runs
some of them) and benchmarks/results/zoo.md, the tables of all of them (--results NAME: NAME.json
and NAME.md instead, e.g. for another host).
"""

import argparse
import datetime
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

from zoo_models import EXPORTERS, MODELS, SEQ

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".zoo_cache"
LOGS = ROOT / "tuning_logs" / "zoo"
WORKER = pathlib.Path(__file__).resolve().parent / "zoo_worker.py"


# ---- the driver -----------------------------------------------------------------------------
def run_one(name: str, exporter: str, args) -> dict:
    CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "result.json"
        command = [sys.executable, str(WORKER), name, exporter, str(out)]
        command += ["--repeat", str(args.repeat), "--budget", str(args.budget)]
        if args.tune:
            command += ["--tune", str(args.tune), "--log", str(LOGS / f"{name}.{exporter}.jsonl")]
        env = dict(os.environ)
        if not args.warm_cache:  # compile from a cold PoCL program cache, as a new user would
            env["POCL_CACHE_DIR"] = str(pathlib.Path(tmp) / "pocl_cache")
        start = time.perf_counter()
        # A session of its own, so that a timeout ends the worker and whatever it started.
        proc = subprocess.Popen(
            command,
            start_new_session=True,
            env=env,
            stdout=subprocess.DEVNULL,  # the exporters' progress lines
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, stderr = proc.communicate(timeout=args.timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
            timed_out = True
        result = json.loads(out.read_text()) if out.exists() else {}
    result.update(model=name, exporter=exporter, wall_s=round(time.perf_counter() - start, 1))
    if timed_out:
        result["timeout"] = (
            f"killed after {args.timeout} s, in the stage after {result.get('stage')}"
        )
    elif proc.returncode:
        result["crash"] = f"worker exit {proc.returncode}: " + (stderr or "")[-800:]
    result["measured"] = f"{datetime.date.today()} at {commit()}"
    return result


def commit() -> str:
    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "graph", "kernels"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return (found.stdout.strip() or "unknown") + (" (+ uncommitted edits)" * bool(dirty.stdout))


def ms(seconds) -> str:
    return "" if seconds is None else f"{seconds * 1e3:,.1f} ms"


def status(r: dict) -> str:
    """The import column: ok, or why not."""
    if "export_error" in r:
        return "export failed: " + r["export_error"].splitlines()[0][:160]
    if "import_error" in r:
        ops = r.get("unsupported") or {}
        if ops:
            return "unsupported: " + ", ".join(f"{op} x{n}" for op, n in ops.items())
        return "import error: " + r["import_error"].splitlines()[0][:200]
    if "ort_error" in r:
        return "onnxruntime failed: " + r["ort_error"].splitlines()[0][:160]
    if "compile_error" in r:
        return "ok; compile failed: " + r["compile_error"].splitlines()[0][:200]
    if "run_error" in r:
        return "ok; run failed: " + r["run_error"].splitlines()[0][:200]
    if "timeout" in r:
        return "ok; " + r["timeout"] if r.get("stage") != "exported" else r["timeout"]
    if "crash" in r:
        return "crash: " + r["crash"].strip().splitlines()[-1][:200]
    return "ok"


def row(r: dict) -> str:
    """The import, compile and correctness table's row."""
    err = r.get("rel_err")
    cells = [
        r["model"],
        r["exporter"],
        str(r.get("opset", "")),
        status(r).replace("|", "/"),
        str(r.get("kernels", "")),
        str(r.get("host_steps", "")),
        f"{r['compile_s']:.1f}" if "compile_s" in r else "",
        "" if err is None else f"{err:.1e}" + ("" if err <= 1e-4 else " **mismatch**"),
    ]
    return "| " + " | ".join(cells) + " |"


def ratio(times: dict, a: str, b: str) -> str:
    return f"{times[a] / times[b]:.2f}x" if a in times and b in times else ""


def speed_row(r: dict) -> str:
    """The latency table's row: every build and peer of one interleaved run."""
    t = r.get("times", {})
    best = "tuned" if "tuned" in t else "default"
    cells = [
        r["model"],
        r["exporter"],
        *(ms(t.get(k)) for k in ("default", "tuned", "onnxruntime", "openvino")),
        ratio(t, "default", "tuned"),
        ratio(t, best, "onnxruntime"),
        ratio(t, best, "openvino"),
        f"{r['tune_budget_s']:.0f}" if "tune_budget_s" in r else "",
    ]
    return "| " + " | ".join(cells) + " |"


def report(results: dict) -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import openvino
    import torch
    import transformers
    from common import environment, header

    from coretune.kernels import open_device

    info = environment(open_device(None))
    info.update(
        torch=torch.__version__,
        transformers=transformers.__version__,
        openvino=openvino.__version__,
    )
    order = {(m, e): i for i, (m, e) in enumerate((m, e) for m in MODELS for e in EXPORTERS)}
    rows = sorted(results.values(), key=lambda r: order.get((r["model"], r["exporter"]), 1e9))
    slow = sorted((r for r in rows if "compile_s" in r), key=lambda r: -r["compile_s"])[:5]
    lines = [
        "# Model zoo: real architectures through coretune vs onnxruntime and OpenVINO",
        "",
        header(info),
        "",
        "Random weights, batch 1, static shapes (224x224 images; BERT and GPT-2 at sequence "
        f"{SEQ} with a padding mask), eval mode; exported by torch's TorchScript exporter "
        "(`dynamo=False`) and its dynamo exporter (`dynamo=True`) at the opsets they produce. "
        "Import ok / error: `coretune.import_onnx` (unsupported op types with their node "
        "counts). Kernels, host steps: the default build's (`Module.summary()`). Compile s: "
        "`coretune.compile` wall time, which builds every kernel and runs it once, from a cold "
        "PoCL program cache (a fresh POCL_CACHE_DIR per model; `--warm-cache` keeps it). Rel err: "
        "max |coretune - onnxruntime| / max |onnxruntime| over the outputs, one run on the "
        "same random inputs (target <= 1e-4). Each model runs in a subprocess of its own with "
        "a time limit.",
        "",
        "| model | exporter | opset | import ok / error | kernels | host steps | compile s "
        "| rel err |",
        "|---|---|---:|---|---:|---:|---:|---:|",
        *(row(r) for r in rows),
        "",
        "Slowest compiles: "
        + (
            ", ".join(f"{r['model']} ({r['exporter']}) {r['compile_s']:.1f} s" for r in slow)
            or "none compiled"
        ),
        "",
        "## Latency",
        "",
        "Medians of wall time per run (inputs up, outputs down), interleaved run by run in one "
        "process (coretune.cli_bench.interleaved; rounds per model in zoo.json): the default "
        "build, the tuned build (`coretune tune --time-budget S`, S in the last column, log in "
        "tuning_logs/zoo/), onnxruntime (CPU provider, 2 intra-op threads) and OpenVINO (CPU, "
        "2 inference threads, latency hint, f32). 'vs' columns: coretune's best build (tuned "
        "where there is one) over the peer, lower is better. The machine is a 2-core VM shared "
        "with other work: the two rows of one model (the same network, two exports) show how "
        "much its timings drift between runs.",
        "",
        "| model | exporter | default | tuned | onnxruntime | OpenVINO | tuned speedup "
        "| vs onnxruntime | vs OpenVINO | tune s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(speed_row(r) for r in rows if r.get("times")),
        "",
        "## What fails where",
        "",
        *details(rows),
        "",
        "Command: `python benchmarks/zoo.py` (`--only NAME ...`, `--exporter`, `--tune S`, "
        "`--timeout`); the full errors, op-type counts of every exported model, build seconds "
        "and first-run times are in zoo.json. Measured at: "
        + ", ".join(sorted({r.get("measured", "?") for r in rows})),
        "",
    ]
    return "\n".join(lines)


def readme_ops() -> set[str]:
    """The op types the README says the importer covers (its "Import covers ..." sentence)."""
    text = (ROOT / "README.md").read_text()
    if "and these op types:" not in text:
        return set()
    return set(text.split("and these op types:")[1].split(". ")[0].split())


def details(rows: list[dict]) -> list[str]:
    """Per model and exporter: the failing stage with its error, host steps, and the op types
    of the exported file outside the README's import list."""
    listed = readme_ops()
    lines = []
    for r in rows:
        what = []
        keys = ("export_error", "ort_error", "import_error", "compile_error", "run_error")
        for key in (*keys, "tune_error", "openvino_error"):
            if key in r and not (key == "import_error" and r.get("unsupported")):
                head = " ".join(r[key].splitlines()[:3])[:400]
                what.append(f"{key.replace('_', ' ')}: `{head}`")
        for key in ("timeout", "crash"):
            if key in r:
                what.append(f"{key}: `{r[key].strip().splitlines()[-1][:300]}`")
        if r.get("unsupported"):
            ops = ", ".join(f"{o} x{n}" for o, n in r["unsupported"].items())
            what.append(f"import: unsupported op types {ops}")
        if r.get("traceback"):
            what.append(f"at {r['traceback']}")
        if r.get("host_steps"):
            what.append(f"{r['host_steps']} host steps ({', '.join(r['host_step_names'][:3])} ...)")
        for key in ("rel_err", "tuned_rel_err", "openvino_rel_err"):
            if r.get(key) is not None and r[key] > 1e-4:
                what.append(f"mismatch: {key.replace('_', ' ')} {r[key]:.2e}")
        outside = {o: n for o, n in r.get("onnx_op_types", {}).items() if o not in listed}
        if listed and outside:
            ops = ", ".join(f"{o} x{n}" for o, n in outside.items())
            what.append(f"op types outside the README's import list: {ops}")
        if what:
            lines.append(f"- {r['model']} ({r['exporter']}): " + "; ".join(what))
    return lines or ["- nothing: every model imports, compiles and matches"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=list(MODELS), help="run these models")
    parser.add_argument("--exporter", choices=[*EXPORTERS, "both"], default="both")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per model/exporter")
    parser.add_argument("--repeat", type=int, default=20, help="most interleaved rounds")
    parser.add_argument("--budget", type=float, default=20, help="seconds of timing per model")
    parser.add_argument("--refresh", action="store_true", help="export again, ignoring the cache")
    parser.add_argument(
        "--warm-cache", action="store_true", help="keep PoCL's program cache (default: cold)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite zoo.md from zoo.json, run nothing"
    )
    parser.add_argument(
        "--tune", type=float, default=0, help="seconds of `coretune tune` per model (0: none)"
    )
    parser.add_argument("--results", default="zoo", help="benchmarks/results/NAME.json and .md")
    args = parser.parse_args()
    exporters = EXPORTERS if args.exporter == "both" else (args.exporter,)
    saved, table = RESULTS / f"{args.results}.json", RESULTS / f"{args.results}.md"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    for name in [] if args.report_only else args.only or MODELS:
        for exporter in exporters:
            if args.refresh:
                (CACHE / f"{name}.{exporter}.onnx").unlink(missing_ok=True)
            print(f"{name} ({exporter}) ...", flush=True)
            result = run_one(name, exporter, args)
            results[f"{name}/{exporter}"] = result
            saved.write_text(json.dumps(results, indent=1))
            print(row(result), flush=True)
            table.write_text(report(results))  # so far, should the run stop
    table.write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
