"""One model and exporter of the zoo (benchmarks/zoo.py), in a process of its own.

    python benchmarks/zoo_worker.py NAME EXPORTER OUT.json [--repeat R] [--budget S]
                                    [--tune SECONDS --log LOG]

Every stage adds to OUT.json as it ends, so that a timeout still shows how far it got:
export (cached in benchmarks/.zoo_cache/), onnxruntime's reference outputs, coretune import,
compile (the default build), one run checked against the reference, optionally a tune
(`coretune tune --time-budget SECONDS --log LOG`, the user's command) and the tuned build, then
every build and peer timed in one interleaved run: default, tuned, onnxruntime and OpenVINO
(2 threads each; coretune.cli_bench's runners).
"""

import argparse
import collections
import json
import pathlib
import subprocess
import sys
import time
import traceback

from zoo_models import MODELS, export

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".zoo_cache"


def error_text(exc: BaseException, limit: int = 1500) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + " ..."


def tb(exc: BaseException) -> str:
    """The innermost frames: where in coretune it failed."""
    frames = traceback.extract_tb(exc.__traceback__)[-4:]
    return " <- ".join(f"{pathlib.Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[::-1])


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


class Stages:
    """The result so far, written to ``out`` after every stage."""

    def __init__(self, out: pathlib.Path, **fields):
        self.out, self.result = out, dict(fields)

    def save(self, **fields):
        self.result.update(fields)
        self.out.write_text(json.dumps(self.result, indent=1))


def exported(name: str, exporter: str, stages: Stages):
    """The cached or fresh export, its opset and op types; None if the export failed."""
    import onnx

    path = CACHE / f"{name}.{exporter}.onnx"
    model, inputs = MODELS[name]()
    if not path.exists():
        start = time.perf_counter()
        try:
            export(name, exporter, model, inputs, path)
        except Exception as exc:  # noqa: BLE001  (any export failure is a result)
            stages.save(stage="export", export_error=error_text(exc, 800))
            return None
        stages.save(export_s=round(time.perf_counter() - start, 1))
    proto = onnx.load(str(path))
    opsets = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    stages.save(
        stage="exported",
        opset=opsets[0] if opsets else None,
        onnx_nodes=len(proto.graph.node),
        onnx_op_types=dict(ops.most_common()),
    )
    # The exporters may drop or rename inputs: feed what the model declares, by name or order.
    initializers = {t.name for t in proto.graph.initializer}
    declared = [i.name for i in proto.graph.input if i.name not in initializers]
    feeds = (
        {n: inputs[n] for n in declared}
        if set(declared) <= set(inputs)
        else dict(zip(declared, inputs.values(), strict=False))
    )
    return path, proto, feeds


def reference(path, feeds):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def openvino_outputs(path, feeds):
    """OpenVINO's outputs once, so that its timings are known to be of a correct run."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    results = compiled.create_infer_request().infer(feeds)
    return [results[port] for port in compiled.outputs]


def tune(path, log: pathlib.Path, seconds: float, stages: Stages) -> bool:
    """`coretune tune` as a user runs it; True if it ended normally."""
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "coretune", "tune", str(path), "--log", str(log)]
    command += ["--time-budget", str(seconds), "--no-e2e"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    stages.save(
        stage="tuned",
        tune_s=round(time.perf_counter() - start, 1),
        tune_budget_s=seconds,
        tune_log=str(log.relative_to(ROOT)) if log.is_relative_to(ROOT) else str(log),
    )
    if done.returncode:
        stages.save(tune_error=f"exit {done.returncode}: " + done.stderr[-800:])
    return done.returncode == 0


def work(name, exporter, out: pathlib.Path, repeat, budget, tune_seconds, log) -> None:
    stages = Stages(out, model=name, exporter=exporter)
    import torch

    torch.set_num_threads(2)
    found = exported(name, exporter, stages)
    if found is None:
        return
    path, proto, feeds = found
    try:
        ref = reference(path, feeds)
    except Exception as exc:  # noqa: BLE001
        return stages.save(stage="onnxruntime", ort_error=error_text(exc, 800))

    import numpy as np

    import coretune
    from coretune.cli_bench import (
        interleaved,
        module_runner,
        onnxruntime_runner,
        openvino_runner,
    )

    start = time.perf_counter()
    try:
        coretune.import_onnx(str(path))
    except Exception as exc:  # noqa: BLE001
        return stages.save(
            stage="import", import_error=error_text(exc), unsupported=unsupported_ops(proto)
        )
    stages.save(stage="imported", import_s=round(time.perf_counter() - start, 1))
    start = time.perf_counter()
    try:
        module = coretune.compile(str(path))
    except Exception as exc:  # noqa: BLE001
        return stages.save(stage="compile", compile_error=error_text(exc), traceback=tb(exc))
    summary = module.summary()
    stages.save(
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
        return stages.save(stage="run", run_error=error_text(exc), traceback=tb(exc))
    err = rel_err(got, ref)
    stages.save(
        stage="ran",
        first_run_s=round(time.perf_counter() - start, 3),
        rel_err=err,
        ok=bool(err <= 1e-4),
        ref_std=max(float(np.std(r)) for r in ref),  # a constant output would check nothing
    )
    runners = {"default": module_runner(module, feeds)}
    if tune_seconds and tune(path, log, tune_seconds, stages):
        tuned = coretune.compile(str(path), logs=[str(log)])
        stages.save(
            tuned_kernels=tuned.summary()["tuned"], tuned_rel_err=rel_err(tuned.run(**feeds), ref)
        )
        runners["tuned"] = module_runner(tuned, feeds)
    runners["onnxruntime"] = onnxruntime_runner(path, feeds, module.input_names)[0]
    try:
        stages.save(openvino_rel_err=rel_err(openvino_outputs(path, feeds), ref))
        runners["openvino"] = openvino_runner(path, feeds)[0]
    except Exception as exc:  # noqa: BLE001  (a peer that cannot run this model is a result)
        stages.save(openvino_error=error_text(exc, 800))
    # As many interleaved rounds as fit the budget (each peer's turn opens its own session).
    start = time.perf_counter()
    interleaved(runners, 1)
    rounds = max(3, min(repeat, int(budget / max(time.perf_counter() - start, 1e-6))))
    times = {k: v["wall_median_s"] for k, v in interleaved(runners, rounds).items()}
    stages.save(stage="timed", rounds=rounds, times=times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=list(MODELS))
    parser.add_argument("exporter")
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--budget", type=float, default=20)
    parser.add_argument("--tune", type=float, default=0, help="seconds of `coretune tune`")
    parser.add_argument("--log", type=pathlib.Path, help="the tuning log (with --tune)")
    args = parser.parse_args()
    if args.tune and not args.log:
        parser.error("--tune needs --log")
    work(args.name, args.exporter, args.out, args.repeat, args.budget, args.tune, args.log)


if __name__ == "__main__":
    main()
