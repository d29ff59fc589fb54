"""A whole GPU session in one call (issue 16): run by benchmarks/gpu_session.sh on the H200 host.

Steps, each isolated (a step that fails is recorded with its traceback and the next one runs)
and each within its own time budget, so that one device call of at most ~8 minutes measures
everything and nothing needs debugging there:

1. environment: GPU, driver, clocks, versions, the device fingerprint;
2. tests: tests/test_cuda_runtime.py, then the template, model and ONNX node tests with
   ``--device cuda:0``;
3. ops: dense 4096^3 and a 3x3 conv 64->64 at 56x56 (batch 32), coretune's default config
   against cuBLAS and cuDNN through torch, fp32 with TF32 off, device events, interleaved;
4. tune: the dense and a ResNet-style CNN (64 channels, 56x56, batch 32) with
   ``coretune tune --device cuda:0 --time-budget``; default vs tuned per kernel vs the peer;
5. models: the README's benchmark models (default build vs onnxruntime on the host CPU) and
   a torchvision ResNet-18 at 224x224, batch 1 and 32 (random weights, exported to ONNX here):
   default and tuned builds vs torch eager, outputs checked against torch;
6. pycuda: whether its sdist built (the shell script builds it in the background), and if so
   the CUDA runtime tests once more through it;
7. a short table, printed last; everything in OUT/session.json and OUT/session.log.

    python benchmarks/gpu_session.py --out DIR [--dry-run] [--only STEP ...]

``--dry-run`` runs the same steps on the default OpenCL device (PoCL) at tiny sizes, with the
peers on torch's CPU build when torch is installed: the script's own code is checked on the
CPU machine before any device time is spent.
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEPS = ("environment", "tests", "ops", "tune", "models", "pycuda")


# ---- sizes: the real session and the dry run ----------------------------------------------
REAL = {
    "device": "cuda:0",
    "dense": 4096,
    "conv": (32, 64, 56),  # batch, channels, size
    "cnn": {"batch": 32, "width": 64, "size": 56},
    "resnet_batches": (1, 32),
    "resnet_size": 224,
    "budgets": {"tests": 130, "tune_dense": 40, "tune_cnn": 60, "tune_resnet": 45},
    "repeat": 20,
}
DRY = {
    "device": None,
    "dense": 128,
    "conv": (2, 8, 16),
    "cnn": {"batch": 2, "width": 8, "size": 16},
    "resnet_batches": (1,),
    "resnet_size": 32,
    "budgets": {"tests": 120, "tune_dense": 8, "tune_cnn": 12, "tune_resnet": 12},
    "repeat": 5,
}


class Session:
    """Results by step, a log of everything printed, and each step's time."""

    def __init__(self, out: pathlib.Path, sizes: dict, dry_run: bool):
        self.out, self.sizes, self.dry_run = out, sizes, dry_run
        self.results: dict = {"started": datetime.datetime.now().isoformat(), "steps": {}}
        self._log = (out / "session.log").open("a")

    def say(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    @contextlib.contextmanager
    def step(self, name: str):
        started = time.monotonic()
        record = self.results["steps"].setdefault(name, {})
        self.say(f"== {name}")
        try:
            yield record
            record["status"] = "ok"
        except Exception as exc:  # a step's failure is a result: the next step still runs
            record["status"] = f"failed: {type(exc).__name__}: {str(exc)[:500]}"
            record["traceback"] = traceback.format_exc()
            self.say(record["traceback"])
        record["seconds"] = round(time.monotonic() - started, 1)
        self.say(f"== {name}: {record['status']} ({record['seconds']} s)")
        self.save()

    def save(self) -> None:
        (self.out / "session.json").write_text(json.dumps(self.results, indent=1, default=str))


def run(command, timeout, env=None, log: pathlib.Path | None = None) -> tuple[int, str]:
    """A command's exit code and output (124 when it ran past ``timeout``, 127 when it is not
    there). With ``log``, the output goes there as it comes, so a killed run leaves it."""
    log = log or pathlib.Path(tempfile.mkstemp(suffix=".log")[1])
    try:
        with log.open("w") as sink:
            done = subprocess.run(
                command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=timeout
            )
        code = done.returncode
    except subprocess.TimeoutExpired:
        code = 124
    except FileNotFoundError as exc:
        return 127, str(exc)
    return code, log.read_text(errors="replace")


def open_target(session: Session):
    from coretune.kernels import open_device

    return open_device(session.sizes["device"])


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    # fp32 peers: cuBLAS and cuDNN without TF32 (its 10-bit mantissa is not float32 math).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True  # cuDNN picks its fastest algorithm, as users run it
    return torch


def torch_device(torch, session: Session) -> str:
    return "cpu" if session.dry_run or not torch.cuda.is_available() else "cuda"


# ---- 1. environment -----------------------------------------------------------------------
def environment(session: Session, record: dict) -> None:
    import coretune

    record["date"] = datetime.date.today().isoformat()
    record["python"] = sys.version.split()[0]
    record["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    record["versions"] = {"coretune": coretune.__version__, "numpy": np.__version__}
    for name in ("torch", "cupy", "onnx", "onnxruntime", "skopt", "torchvision", "pycuda"):
        try:
            record["versions"][name] = __import__(name).__version__
        except Exception as exc:
            record["versions"][name] = f"not available ({type(exc).__name__})"
    code, text = run(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,"
            "clocks.mem,power.limit,temperature.gpu",
            "--format=csv",
        ],
        30,
    )
    record["nvidia_smi"] = text.strip() if code == 0 else f"nvidia-smi: exit {code}"
    code, text = run(["nvcc", "--version"], 30)
    record["nvcc"] = text.strip().splitlines()[-1] if code == 0 else "nvcc: not found"
    device = open_target(session)
    record["device"] = device.info.fingerprint()
    record["device_versions"] = device.versions()
    record["limits"] = device.limits.__dict__
    for key in ("nvidia_smi", "nvcc", "device", "device_versions", "versions"):
        session.say(f"{key}: {record[key]}")


# ---- 2. tests -----------------------------------------------------------------------------
DEVICE_TESTS = [
    "tests/test_template_injective.py",
    "tests/test_template_gemm.py",
    "tests/test_template_conv2d.py",
    "tests/test_template_pool.py",
    "tests/test_template_reduction.py",
    "tests/test_placed_stores.py",
    "tests/test_models.py",
    "tests/test_onnx_backend_opencl.py",
    "tests/test_cuda_plans.py",  # NVRTC compiles of random configs (CuPy is there)
]


def pytest_counts(text: str) -> dict:
    """The counts of pytest's closing line (passed, failed, skipped, errors...)."""
    found = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", text)
    return {kind: int(count) for count, kind in found[-6:]}


def tests(session: Session, record: dict) -> None:
    spec = session.sizes["device"]
    budget = session.sizes["budgets"]["tests"]
    env = {**os.environ, "CORETUNE_TEST_DEVICE": spec or ""}
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"]
    log = session.out / "tests_cuda_runtime.log"
    code, text = run([*base, "tests/test_cuda_runtime.py", "-rs"], 120, env, log)
    record["cuda_runtime"] = {"exit": code, **pytest_counts(text)}
    session.say("cuda runtime tests:", record["cuda_runtime"])
    selection = DEVICE_TESTS if not session.dry_run else DEVICE_TESTS[:1]
    workers = ["-n", "8"] if not session.dry_run else []
    junit = session.out / "tests_device.xml"
    command = [*base, *workers, f"--junitxml={junit}", *selection]
    if spec:
        command += ["--device", spec]
    started = time.monotonic()
    code, text = run(command, budget, env, session.out / "tests_device.log")
    record["device_tests"] = {
        "exit": code,
        "seconds": round(time.monotonic() - started, 1),
        **pytest_counts(text),
    }
    failures = [line for line in text.splitlines() if line.startswith(("FAILED", "ERROR"))]
    record["failures"] = failures[:60]
    session.say("device tests:", record["device_tests"])
    for line in failures[:25]:
        session.say("  ", line[:200])


# ---- 3. ops against cuBLAS / cuDNN ----------------------------------------------------------
def op_workloads(session: Session) -> dict:
    from coretune.graph import GraphBuilder
    from coretune.kernels.workload import Workload

    n = session.sizes["dense"]
    batch, channels, size = session.sizes["conv"]

    def workload(build):
        b = GraphBuilder()
        return Workload.from_graph(b.build(build(b)))

    return {
        f"dense {n}x{n}x{n}": workload(
            lambda b: b.dense(b.input("x", (n, n)), b.input("w", (n, n)))
        ),
        f"conv3x3 {batch}x{channels}x{size}x{size} -> {channels}": workload(
            lambda b: b.conv2d(
                b.input("x", (batch, channels, size + 2, size + 2)),
                b.input("w", (channels, channels, 3, 3)),
            )
        ),
    }


class KernelTimer:
    """One template config of a workload on the device: checked once against a float64
    reference, then timed with device events (medians of ``number`` launches)."""

    def __init__(self, device, workload, template_name=None, config=None, seed=0):
        from coretune.kernels.templates import get_template, templates_for
        from coretune.tuner.task import Task

        candidates = templates_for(workload)
        if template_name is None:
            cls = next(c for c in candidates if c(workload).untuned_choice(device.limits))
        else:
            cls = get_template(template_name)
        template = cls(workload)
        self.task = Task(cls.name, workload)
        self.config = config or template.default_config(device.limits)
        rendered = template.render(self.config, device.info.backend, device.limits)
        self.device, self.compiled = device, device.compile(rendered)
        self.arrays = self.task.inputs(seed)
        inputs = [device.upload(a) for a in template.prepare_weights(list(self.arrays))]
        out = workload.types[workload.outputs[0]]
        self.out_type = out
        nbytes = math.prod(out.shape) * 4
        self.output = device.empty(nbytes)
        device.fill(self.output, np.array(np.nan, np.float32), nbytes)
        self.buffers = inputs + [self.output]

    def check(self, reference: np.ndarray) -> float:
        self.device.launch(self.compiled, self.buffers).wait()
        got = self.device.download(self.output, self.out_type.shape, np.float32)
        if np.isnan(got).any():
            return math.inf
        ref = reference.astype(np.float64)
        return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))

    def seconds(self, number: int) -> float:
        return statistics.median(self.device.time(self.compiled, self.buffers, number, 3, 1))


def torch_op(torch, name: str, arrays, where: str):
    """The peer for an op: a callable timing one run (seconds, CUDA events) and its output."""
    tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(where) for a in arrays]
    if name.startswith("dense"):

        def op():
            return tensors[0] @ tensors[1].T
    else:

        def op():
            return torch.nn.functional.conv2d(tensors[0], tensors[1])

    def timed(number: int) -> float:
        if where == "cpu":
            start = time.perf_counter()
            for _ in range(number):
                op()
            return (time.perf_counter() - start) / number
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(number):
            op()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) * 1e-3 / number

    for _ in range(3):  # warm-up: cuDNN's algorithm search, cuBLAS's handle
        op()
    return timed, op().double().cpu().numpy()


def interleaved_medians(timers: dict, rounds: int = 5, number: int = 10) -> dict:
    """name -> median seconds per run over ``rounds`` rounds, each timing every entry once."""
    samples = {name: [] for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            samples[name].append(timer(number))
    return {name: statistics.median(values) for name, values in samples.items()}


def ops(session: Session, record: dict) -> None:
    device, torch = open_target(session), torch_or_none()
    for name, workload in op_workloads(session).items():
        from coretune.tuner.task import workload_flops

        timer = KernelTimer(device, workload)
        entry = record[name] = {"template": timer.task.template_name, "config": timer.config}
        timers = {"coretune default": timer.seconds}
        if torch is not None:
            where = torch_device(torch, session)
            timers["torch"], reference = torch_op(torch, name, timer.arrays, where)
            entry["peer"] = f"torch {torch.__version__} on {where} (TF32 off)"
        else:
            reference = workload.reference(timer.arrays)[0]
            entry["peer"] = "none: torch is not installed"
        entry["rel_error"] = timer.check(reference)
        medians = interleaved_medians(timers)
        flops = workload_flops(workload)
        entry["seconds"] = medians
        entry["gflops"] = {k: flops / v * 1e-9 for k, v in medians.items()}
        session.say(
            f"{name}: rel err {entry['rel_error']:.2e}; "
            + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in entry["gflops"].items())
        )


# ---- 4. tuning ------------------------------------------------------------------------------
def dense_model(n: int):
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(5).standard_normal((n, n)).astype(np.float32) / math.sqrt(n)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="dense")],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def coretune_tune(session: Session, path: pathlib.Path, log: pathlib.Path, budget: float):
    spec = session.sizes["device"]
    command = [
        sys.executable,
        "-m",
        "coretune",
        "tune",
        str(path),
        "--time-budget",
        str(budget),
        "--log",
        str(log),
    ]
    command += ["--no-e2e"] + (["--device", spec] if spec else [])
    code, text = run(command, budget * 2 + 120, log=session.out / f"tune_{path.stem}.log")
    session.say(f"tune {path.name}: exit {code}; " + " | ".join(text.strip().splitlines()[-4:]))
    return code


def kernel_times(module, number: int = 10, rounds: int = 5) -> dict:
    """Per kernel step of a compiled module: its group name -> median seconds per launch,
    from device events, each kernel launched on the module's own buffers."""
    device = module.device
    bound = [
        (step.group.name, payload)
        for step, (kind, payload) in zip(
            module.plan.kernels,
            [a for a in module._executor._actions if a[0] == "kernel"],
            strict=True,
        )
    ]
    samples = {name: [] for name, _ in bound}
    module.run(**random_inputs_for(module))
    for _ in range(rounds):
        for name, kernel in bound:
            events = [kernel.launch() for _ in range(number)]
            samples[name].append(sum(device.event_seconds(e) for e in events) / number)
    return {name: statistics.median(v) for name, v in samples.items()}


def random_inputs_for(module) -> dict:
    from coretune.graph.random import random_inputs

    return random_inputs(module.plan.graph, seed=1)


def tune(session: Session, record: dict) -> None:
    import onnx

    import coretune
    from tests.onnx_models import MODELS

    device = open_target(session)
    budgets = session.sizes["budgets"]
    work = pathlib.Path(tempfile.mkdtemp())
    n = session.sizes["dense"]
    cases = {
        "dense": (dense_model(n), budgets["tune_dense"]),
        "cnn": (MODELS["cnn"](**session.sizes["cnn"])[0], budgets["tune_cnn"]),
    }
    for name, (model, budget) in cases.items():
        path = work / f"{name}.onnx"
        onnx.save(model, path)
        log = session.out / f"tune_{name}.jsonl"
        entry = record[name] = {
            "budget_s": budget,
            "exit": coretune_tune(session, path, log, budget),
        }
        default = coretune.compile(str(path), device)
        tuned = coretune.compile(str(path), device, logs=[str(log)]) if log.exists() else default
        entry["tuned_kernels"] = tuned.summary()["tuned"]
        times = {"default": kernel_times(default), "tuned": kernel_times(tuned)}
        entry["kernels"] = {
            kernel: {
                "default_s": times["default"][kernel],
                "tuned_s": times["tuned"].get(kernel, math.nan),
                "speedup": times["default"][kernel] / times["tuned"].get(kernel, math.nan),
                "template": next(k.template for k in tuned.plan.kernels if k.group.name == kernel),
                "config": next(k.config for k in tuned.plan.kernels if k.group.name == kernel),
            }
            for kernel in times["default"]
        }
        for kernel, t in entry["kernels"].items():
            session.say(
                f"  {name}/{kernel}: default {t['default_s'] * 1e6:.1f} us, tuned "
                f"{t['tuned_s'] * 1e6:.1f} us ({t['speedup']:.2f}x) {t['template']} {t['config']}"
            )


# ---- 5. whole models -----------------------------------------------------------------------
def resnet18(torch):
    """torchvision's ResNet-18 with random weights; where torchvision is missing (the dry run
    on the CPU machine), a stand-in of the same kinds of layers, so the export and the
    comparison still run."""
    try:
        import torchvision
    except ImportError:
        nn = torch.nn

        class Block(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.body = nn.Sequential(
                    nn.Conv2d(width, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                    nn.Conv2d(width, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                )

            def forward(self, x):
                return torch.relu(self.body(x) + x)

        stem = [nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
        head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)]
        layers = [*stem, nn.MaxPool2d(3, 2, 1), Block(16), Block(16), *head]
        return nn.Sequential(*layers), "stand-in (torchvision not installed)"
    return torchvision.models.resnet18(weights=None), f"torchvision {torchvision.__version__}"


def export_resnet18(torch, batch: int, size: int, path: pathlib.Path):
    """The ResNet-18 in eval mode, exported to ONNX (the TorchScript exporter first: its
    opset-17 graph is what coretune imports today)."""
    torch.manual_seed(0)
    net, origin = resnet18(torch)
    net = net.eval()
    x = torch.randn(batch, 3, size, size)
    try:
        torch.onnx.export(net, (x,), str(path), input_names=["x"], dynamo=False, opset_version=17)
        exporter = "torchscript"
    except Exception:
        torch.onnx.export(net, (x,), str(path), input_names=["x"], dynamo=True)
        exporter = "dynamo"
    return net, x.numpy(), f"{origin}, {exporter} exporter"


def torch_eager_timer(torch, net, x: np.ndarray, where: str):
    net = net.to(where)
    tensor = torch.from_numpy(x).to(where)

    def run_once() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            net(tensor)
        if where == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(3):
        run_once()
    with torch.no_grad():
        out = net(tensor).double().cpu().numpy()
    return run_once, out


def module_timer(module, inputs: dict):
    def run_once() -> float:
        start = time.perf_counter()
        module.run(**inputs)
        return time.perf_counter() - start

    for _ in range(3):
        run_once()
    return run_once


def models(session: Session, record: dict) -> None:
    import onnx

    import coretune
    from coretune.cli_bench import interleaved, module_runner, onnxruntime_runner
    from tests.onnx_models import MODELS

    device, torch = open_target(session), torch_or_none()
    repeat = session.sizes["repeat"]
    work = pathlib.Path(tempfile.mkdtemp())
    readme_models = {
        "mlp_batch1": MODELS["mlp"](),
        "mlp_batch64": MODELS["mlp"](batch=64),
        "cnn": MODELS["cnn"](),
        "cnn_32ch_64x64": MODELS["cnn"](width=32, size=64),
        "mobilenet_block_bn": MODELS["mobilenet_block"](batch_norms=True),
        "transformer_layer": MODELS["transformer_layer"](),
    }
    for name, (model, inputs) in readme_models.items():
        path = work / f"{name}.onnx"
        onnx.save(model, path)
        module = coretune.compile(str(path), device)
        runners = {"default": module_runner(module, inputs)}
        found = onnxruntime_runner(path, inputs, module.input_names)
        if found:
            runners["onnxruntime (host CPU)"] = found[0]
        results = interleaved(runners, repeat)
        record[name] = {k: v["wall_median_s"] for k, v in results.items()}
        session.say(
            f"{name}: " + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in record[name].items())
        )
    if torch is None:
        record["resnet18"] = "skipped: torch is not installed"
        return
    where = torch_device(torch, session)
    for batch in session.sizes["resnet_batches"]:
        key = (
            f"resnet18 {session.sizes['resnet_size']}x{session.sizes['resnet_size']} batch {batch}"
        )
        path = work / f"resnet18_b{batch}.onnx"
        net, x, exporter = export_resnet18(torch, batch, session.sizes["resnet_size"], path)
        entry = record[key] = {"model": exporter}
        started = time.monotonic()
        default = coretune.compile(str(path), device)
        entry["compile_s"] = time.monotonic() - started
        entry["kernels"] = default.summary()["kernels"]
        eager, want = torch_eager_timer(torch, net, x, where)
        (got,) = default.run(x=x)
        entry["rel_error_vs_torch"] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        builds = {"default": module_timer(default, {"x": x})}
        if batch == session.sizes["resnet_batches"][0]:
            log = session.out / f"tune_resnet18_b{batch}.jsonl"
            coretune_tune(session, path, log, session.sizes["budgets"]["tune_resnet"])
            if log.exists():
                tuned = coretune.compile(str(path), device, logs=[str(log)])
                entry["tuned_kernels"] = tuned.summary()["tuned"]
                builds["tuned"] = module_timer(tuned, {"x": x})
        builds[f"torch eager ({where})"] = eager
        samples = {k: [] for k in builds}
        for _ in range(repeat):
            for k, timer in builds.items():
                samples[k].append(timer())
        entry["wall_median_s"] = {k: statistics.median(v) for k, v in samples.items()}
        session.say(
            f"{key}: rel err {entry['rel_error_vs_torch']:.1e}, {entry['kernels']} kernels, "
            + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in entry["wall_median_s"].items())
        )


# ---- 6. pycuda ------------------------------------------------------------------------------
def pycuda(session: Session, record: dict) -> None:
    status = session.out / "pycuda_build.status"
    if session.dry_run:
        record["result"] = "skipped in the dry run (no driver here to link against)"
        return
    deadline = time.monotonic() + 150
    while not status.exists() and time.monotonic() < deadline:
        time.sleep(5)
    if not status.exists():
        record["result"] = "the build had not finished when the session ended"
        return
    record["build"] = status.read_text().strip()
    session.say("pycuda build:", record["build"])
    wheels = list(pathlib.Path("/tmp/pycuda_wheel").glob("pycuda-*.whl"))
    if not record["build"].startswith("rc=0") or not wheels:
        log = (session.out / "pycuda_build.log").read_text(errors="replace")
        record["error_tail"] = log[-3000:]
        return
    site = tempfile.mkdtemp()
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            site,
            *map(str, wheels),
        ],
        120,
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{site}:{os.environ.get('PYTHONPATH', '')}",
        "CORETUNE_CUDA_RUNTIME": "pycuda",
    }
    command = [sys.executable, "-m", "pytest", "-q", "tests/test_cuda_runtime.py"]
    code, text = run(command, 120, env, session.out / "tests_pycuda.log")
    record["runtime_tests"] = {"exit": code, **pytest_counts(text)}


# ---- 7. the table ---------------------------------------------------------------------------
def table(session: Session) -> str:
    steps = session.results["steps"]
    lines = ["", "| what | result |", "|---|---|"]
    for name in STEPS:
        step = steps.get(name, {})
        lines.append(
            f"| step {name} | {step.get('status', 'not run')} ({step.get('seconds', 0)} s) |"
        )
    tests_step = steps.get("tests", {})
    for key in ("cuda_runtime", "device_tests"):
        if key in tests_step:
            lines.append(f"| tests: {key} | {tests_step[key]} |")
    for name, entry in steps.get("ops", {}).items():
        if isinstance(entry, dict) and "gflops" in entry:
            g = entry["gflops"]
            ratio = g["coretune default"] / g["torch"] if "torch" in g else math.nan
            cells = ", ".join(f"{k} {v:.0f}" for k, v in g.items())
            lines.append(f"| {name} GFLOP/s | {cells} (default/peer {ratio:.2f}) |")
    # The ops step's peers beside the tuned kernels of the same shapes: the dense, and the
    # CNN's second conv (64 -> 64 3x3 at 56x56, batch 32, with its fused bias and ReLU).
    peers = {
        name.split()[0]: entry["seconds"]["torch"]
        for name, entry in steps.get("ops", {}).items()
        if isinstance(entry, dict) and "torch" in entry.get("seconds", {})
    }
    same_shape = {("dense", "dense"): "dense", ("cnn", "relu2"): "conv3x3"}
    for name, entry in steps.get("tune", {}).items():
        if isinstance(entry, dict) and "kernels" in entry:
            default = sum(k["default_s"] for k in entry["kernels"].values())
            tuned = sum(k["tuned_s"] for k in entry["kernels"].values())
            lines.append(
                f"| tune {name} ({entry['budget_s']} s) | kernels default {default * 1e3:.3f} ms, "
                f"tuned {tuned * 1e3:.3f} ms ({default / tuned:.2f}x) |"
            )
            for (model, kernel), peer in same_shape.items():
                if model == name and kernel in entry["kernels"] and peer in peers:
                    k = entry["kernels"][kernel]
                    lines.append(
                        f"| {name}/{kernel} vs torch ({peer}) | default "
                        f"{peers[peer] / k['default_s']:.2f}x, tuned "
                        f"{peers[peer] / k['tuned_s']:.2f}x of the peer's speed |"
                    )
    for name, entry in steps.get("models", {}).items():
        if isinstance(entry, dict) and "wall_median_s" in entry:
            cells = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in entry["wall_median_s"].items())
            lines.append(f"| {name} | {cells}; rel err {entry['rel_error_vs_torch']:.1e} |")
        elif isinstance(entry, dict):
            cells = ", ".join(
                f"{k} {v * 1e6:.0f} us" for k, v in entry.items() if isinstance(v, float)
            )
            lines.append(f"| {name} | {cells} |")
    if "pycuda" in steps:
        lines.append(
            f"| pycuda | {steps['pycuda'].get('build', steps['pycuda'].get('result', ''))} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path(os.environ.get("OUT", "."))
    )
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--only", nargs="*", choices=STEPS, default=list(STEPS))
    parser.add_argument(
        "--deadline",
        type=float,
        default=450.0,
        help="seconds after which the remaining steps are skipped (the call's limit is 8 min)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    session = Session(args.out, DRY if args.dry_run else REAL, args.dry_run)
    functions = {"environment": environment, "tests": tests, "ops": ops, "tune": tune}
    functions.update(models=models, pycuda=pycuda)
    started = time.monotonic()
    for name in args.only:
        if time.monotonic() - started > args.deadline:
            session.results["steps"][name] = {"status": "skipped: past the deadline"}
            continue
        with session.step(name) as record:
            functions[name](session, record)
    summary = table(session)
    (args.out / "session.md").write_text(summary + "\n")
    session.say(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
