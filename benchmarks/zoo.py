"""A zoo of real architectures, exported from torchvision and transformers with random weights
(no downloads), through coretune: import, compile, run and time each against onnxruntime.

Each model is exported with both of torch's exporters where each works (TorchScript,
`torch.onnx.export(..., dynamo=False)`, and `dynamo=True`), at the opsets they produce, batch 1,
static shapes, eval mode. The .onnx files are cached in benchmarks/.zoo_cache/ (git-ignored),
so that a re-run skips the export. Then, per model and exporter, in a subprocess of its own
with a time limit (one failing or slow model does not stop the others):

- `coretune.import_onnx` (on failure: the error and the unsupported op types with counts);
- `coretune.compile` on the default device (seconds, kernels, host steps, build seconds);
- one run against onnxruntime on the same random inputs: rel err = max |got - ref| / max |ref|
  over the outputs (float32);
- default build vs onnxruntime (2 intra-op threads), interleaved, medians
  (coretune.cli_bench.interleaved).

    pip install -e ".[zoo,test]"
    python benchmarks/zoo.py [--only resnet50 bert ...] [--exporter torchscript|dynamo|both]
                             [--timeout 600] [--repeat 20] [--refresh]

Writes benchmarks/results/zoo.json (every model and exporter measured so far; --only re-runs
some of them) and benchmarks/results/zoo.md, the table of all of them.
"""

import argparse
import collections
import datetime
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".zoo_cache"
EXPORTERS = ("torchscript", "dynamo")
SEQ = 128  # the transformers models' sequence length


# ---- the models: name -> () -> (torch module in eval mode, {input name: numpy array}) -------
def _vision(factory: str, **kwargs):
    def build():
        import numpy as np
        import torch
        import torchvision

        torch.manual_seed(0)
        model = getattr(torchvision.models, factory)(weights=None, **kwargs).eval()
        # Zero-initialised weights (ViT's head) would make the output 0 and the check empty.
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() > 1 and not param.any():
                    param.normal_(0.0, 0.02)
        image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        return model, {"input": image}

    return build


def _token_inputs(vocab: int, masked: int) -> dict:
    """Random token ids and a padding mask whose last ``masked`` positions are 0."""
    import numpy as np

    ids = np.random.default_rng(0).integers(0, vocab, (1, SEQ), dtype=np.int64)
    mask = np.ones((1, SEQ), dtype=np.int64)
    mask[:, SEQ - masked :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _bert():
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        num_hidden_layers=4,
        hidden_size=256,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
    )

    class Encoder(torch.nn.Module):  # one output: the last hidden state
        def __init__(self):
            super().__init__()
            self.bert = BertModel(config, add_pooling_layer=False)

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]

    return Encoder().eval(), _token_inputs(config.vocab_size, masked=28)


def _gpt2():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=SEQ, use_cache=False)

    class Decoder(torch.nn.Module):  # one output: the logits
        def __init__(self):
            super().__init__()
            self.gpt2 = GPT2LMHeadModel(config)

        def forward(self, input_ids, attention_mask):
            out = self.gpt2(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return out[0]

    return Decoder().eval(), _token_inputs(config.vocab_size, masked=16)


MODELS = {
    "resnet50": _vision("resnet50"),
    "mobilenet_v3_small": _vision("mobilenet_v3_small"),
    "mobilenet_v3_large": _vision("mobilenet_v3_large"),
    "efficientnet_b0": _vision("efficientnet_b0"),
    "squeezenet1_1": _vision("squeezenet1_1"),
    "shufflenet_v2_x1_0": _vision("shufflenet_v2_x1_0"),
    "densenet121": _vision("densenet121"),
    # Its own init (truncated normal, std 0.01) makes the features vanish: the logits would be
    # the fc bias alone. torch's default init keeps them.
    "googlenet": _vision("googlenet", aux_logits=False, init_weights=False),
    "regnet_y_400mf": _vision("regnet_y_400mf"),
    "convnext_tiny": _vision("convnext_tiny"),
    "vit_b_16": _vision("vit_b_16"),
    "swin_t": _vision("swin_t"),
    "bert_4l_256h": _bert,
    "gpt2_4l_256h": _gpt2,
}


# ---- one model and exporter, in a worker process ------------------------------------------
def export(name: str, exporter: str, model, inputs: dict, path: pathlib.Path) -> None:
    import torch

    args = tuple(torch.from_numpy(a) for a in inputs.values())
    tmp = path.with_suffix(".tmp.onnx")
    kwargs = {"input_names": list(inputs), "output_names": ["output"]}
    # Not under no_grad: there nn.MultiheadAttention takes its fused fast path, which the
    # TorchScript exporter cannot export (aten::_native_multi_head_attention).
    if exporter == "torchscript":
        torch.onnx.export(model, args, str(tmp), dynamo=False, **kwargs)
    else:  # weights inside the file: onnxruntime_runner reads the model as bytes
        torch.onnx.export(model, args, str(tmp), dynamo=True, external_data=False, **kwargs)
    tmp.replace(path)  # only a complete export is cached


def error_text(exc: BaseException, limit: int = 1500) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + " ..."


def unsupported_ops(proto) -> dict:
    """Op types of the model's main graph that no coretune converter handles, with counts."""
    from coretune.graph.exchange import importer  # noqa: F401  (registers the converters)
    from coretune.graph.exchange.convert_base import CONVERTERS

    found = collections.Counter(
        node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
        for node in proto.graph.node
        if node.domain not in ("", "ai.onnx") or node.op_type not in CONVERTERS
    )
    return dict(found.most_common())


def rel_err(got: list, ref: list) -> float:
    import numpy as np

    worst = 0.0
    for g, r in zip(got, ref, strict=True):
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        if g.shape != r.shape:
            return float("inf")
        scale = float(np.max(np.abs(r))) or 1.0
        worst = max(worst, float(np.max(np.abs(g - r))) / scale)
    return worst


def work(name: str, exporter: str, out: pathlib.Path, repeat: int, budget: float) -> None:
    """Every stage adds to ``out`` as it ends, so that a timeout still shows how far it got."""
    result: dict = {"model": name, "exporter": exporter}

    def save(**fields):
        result.update(fields)
        out.write_text(json.dumps(result, indent=1))

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    torch.set_num_threads(2)
    path = CACHE / f"{name}.{exporter}.onnx"
    model, inputs = MODELS[name]()
    if not path.exists():
        start = time.perf_counter()
        try:
            export(name, exporter, model, inputs, path)
        except Exception as exc:  # noqa: BLE001  (any export failure is a result)
            return save(stage="export", export_error=error_text(exc, 800))
        save(export_s=round(time.perf_counter() - start, 1))
    del model
    proto = onnx.load(str(path))
    opsets = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    save(
        stage="exported",
        opset=opsets[0] if opsets else None,
        onnx_nodes=len(proto.graph.node),
        onnx_op_types=dict(ops.most_common()),
    )
    # The exporters may drop or rename inputs: feed what the model declares, by name or order.
    declared = [i.name for i in proto.graph.input]
    initializers = {t.name for t in proto.graph.initializer}
    declared = [n for n in declared if n not in initializers]
    feeds = (
        {n: inputs[n] for n in declared}
        if set(declared) <= set(inputs)
        else dict(zip(declared, inputs.values(), strict=False))
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ref = session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001
        return save(stage="onnxruntime", ort_error=error_text(exc, 800))
    del session

    import coretune
    from coretune.cli_bench import interleaved, module_runner, onnxruntime_runner

    start = time.perf_counter()
    try:
        coretune.import_onnx(str(path))
    except Exception as exc:  # noqa: BLE001
        return save(
            stage="import",
            import_error=error_text(exc),
            unsupported=unsupported_ops(proto),
        )
    save(stage="imported", import_s=round(time.perf_counter() - start, 1))
    start = time.perf_counter()
    try:
        module = coretune.compile(str(path))
    except Exception as exc:  # noqa: BLE001
        return save(stage="compile", compile_error=error_text(exc), traceback=tb(exc))
    summary = module.summary()
    save(
        stage="compiled",
        compile_s=round(time.perf_counter() - start, 2),
        **{k: round(v, 2) for k, v in module.build_times().items()},
        kernels=summary["kernels"],
        host_steps=len(summary["host_steps"]),
        host_step_names=summary["host_steps"][:40],
        pad_copies=summary["pad_copies"],
        device=module.device.info.name,
    )
    start = time.perf_counter()
    try:
        got = module.run(**feeds)
    except Exception as exc:  # noqa: BLE001
        return save(stage="run", run_error=error_text(exc), traceback=tb(exc))
    first = time.perf_counter() - start
    err = rel_err(got, ref)
    spread = max(float(np.std(r)) for r in ref)  # a constant output would check nothing
    save(
        stage="ran", first_run_s=round(first, 3), rel_err=err, ok=bool(err <= 1e-4), ref_std=spread
    )
    # As many interleaved rounds as fit the budget (each onnxruntime turn opens a session).
    runners = {"default": module_runner(module, feeds)}
    runners["onnxruntime"] = onnxruntime_runner(path, feeds, module.input_names)[0]
    start = time.perf_counter()
    interleaved(runners, 1)
    one_round = time.perf_counter() - start
    rounds = max(3, min(repeat, int(budget / max(one_round, 1e-6))))
    times = {k: v["wall_median_s"] for k, v in interleaved(runners, rounds).items()}
    save(stage="timed", rounds=rounds, times=times, ratio=times["default"] / times["onnxruntime"])


def tb(exc: BaseException) -> str:
    """The innermost frames: where in coretune it failed."""
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    return " <- ".join(f"{pathlib.Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[::-1])


# ---- the driver -----------------------------------------------------------------------------
def run_one(name: str, exporter: str, args) -> dict:
    CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--worker", name, exporter, str(out)]
        command += ["--repeat", str(args.repeat), "--budget", str(args.budget)]
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
    t = r.get("times", {})
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
        ms(t.get("default")),
        ms(t.get("onnxruntime")),
        f"{r['ratio']:.2f}x" if "ratio" in r else "",
    ]
    return "| " + " | ".join(cells) + " |"


def report(results: dict) -> str:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    import transformers
    from common import environment, header

    from coretune.kernels import open_device

    info = environment(open_device(None))
    info.update(torch=torch.__version__, transformers=transformers.__version__)
    order = {(m, e): i for i, (m, e) in enumerate((m, e) for m in MODELS for e in EXPORTERS)}
    rows = sorted(results.values(), key=lambda r: order.get((r["model"], r["exporter"]), 1e9))
    slow = sorted((r for r in rows if "compile_s" in r), key=lambda r: -r["compile_s"])[:5]
    lines = [
        "# Model zoo: real architectures through coretune vs onnxruntime",
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
        "same random inputs (target <= 1e-4). Latencies: medians of wall time per run, the "
        "default build and onnxruntime (CPU provider, 2 intra-op threads) interleaved run by "
        "run (coretune.cli_bench.interleaved; rounds per model in zoo.json); ratio = default / "
        "onnxruntime. Each model runs in a subprocess of its own with a time limit. The "
        "machine is a 2-core VM shared with other work: the two rows of one model (the same "
        "network, two exports) show how much its timings drift between runs. 'Measured at' "
        "names the checkout; '+ uncommitted edits' means graph/ or kernels/ had work in "
        "progress, whose import rules count as supported here.",
        "",
        "| model | exporter | opset | import ok / error | kernels | host steps | compile s "
        "| rel err | default | onnxruntime | ratio |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        *(row(r) for r in rows),
        "",
        "Slowest compiles: "
        + (
            ", ".join(f"{r['model']} ({r['exporter']}) {r['compile_s']:.1f} s" for r in slow)
            or "none compiled"
        ),
        "",
        "## What fails where",
        "",
        *details(rows),
        "",
        "Command: `python benchmarks/zoo.py` (`--only NAME ...`, `--exporter`, `--timeout`); "
        "the full errors, op-type counts of every exported model, build seconds and first-run "
        "times are in zoo.json. Measured at: "
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
        for key in ("export_error", "ort_error", "import_error", "compile_error", "run_error"):
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
        if r.get("rel_err") is not None and r["rel_err"] > 1e-4:
            what.append(f"mismatch: rel err {r['rel_err']:.2e}")
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
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # coretune comes from its installed (editable) package: the checkout's root is not put on
    # sys.path, where its kernels/ folder would shadow the `kernels` package transformers uses.
    if args.worker:
        name, exporter, out = args.worker
        return work(name, exporter, pathlib.Path(out), args.repeat, args.budget)
    exporters = EXPORTERS if args.exporter == "both" else (args.exporter,)
    saved = RESULTS / "zoo.json"
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
            (RESULTS / "zoo.md").write_text(report(results))  # so far, should the run stop
    (RESULTS / "zoo.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
