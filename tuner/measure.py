"""Measurement: build in parallel worker processes, run in one device worker with a timeout.

A compiler crash, a driver crash or a hanging kernel costs one trial: it is recorded with its
error kind and the worker is restarted; the tuning process itself never dies of a bad config.
Each new config's output is checked once against the numpy reference before it is timed.
Workers die with the process that started them (die_with_parent), however it ends.
"""

import math
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coretune.kernels.space import Config

from .records import ErrorKind
from .task import Task

_CONTEXT = mp.get_context("spawn")  # never fork a process that holds an OpenCL context


@dataclass(frozen=True)
class MeasureOptions:
    number: int = 3  # launches averaged into one cost
    repeat: int = 3  # costs recorded per config
    min_repeat_ms: float = 0.0  # raise `number` until one repeat takes at least this long
    warmup: int = 1
    build_timeout: float = 60.0
    run_timeout: float = 20.0
    check_correctness: bool = True
    rtol: float = 1e-4
    # Address space the device worker may add once its inputs are on the device (None: no
    # cap). On a CPU device, device memory is host memory: a cap turns a config or task that
    # allocates too much into an error record instead of swapping or OOM-killing the host.
    device_memory_limit: int | None = None  # Linux only (RLIMIT_AS)

    def __post_init__(self):
        if self.device_memory_limit is not None and sys.platform != "linux":
            raise ValueError("device_memory_limit needs Linux (an RLIMIT_AS on the worker)")


@dataclass(frozen=True)
class MeasureResult:
    costs: tuple[float, ...]
    error: ErrorKind
    message: str
    started: float
    finished: float

    @property
    def ok(self) -> bool:
        return self.error is ErrorKind.NONE


@dataclass(frozen=True)
class _Built:
    config: Config
    source: str | None
    error: ErrorKind
    message: str


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Call first thing in a child process: it is SIGKILLed when ``parent`` dies, so no
    worker outlives a killed tuner (a restarted tune never races a ghost of the last one). On
    Linux, PR_SET_PDEATHSIG, which fires when the parent *thread* that started the child ends:
    coretune starts its workers from the main thread (ProcessPoolExecutor spawns its workers
    in submit()). A parent already gone before this call (a spawn child imports for a while
    first) is caught by the pid check."""
    if sys.platform == "linux":
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


# ---- build workers --------------------------------------------------------------------------
def _build(task: Task, config: Config, device_spec: str | None) -> _Built:
    """Render and compile one config (in a worker process); errors come back as values."""
    from coretune.kernels.space import InvalidConfig

    device = _worker_device(device_spec)
    try:
        rendered = task.template().render(config, device.info.backend, device.limits)
    except InvalidConfig as exc:
        return _Built(config, None, ErrorKind.INVALID, str(exc))
    try:
        device.compile(rendered)
    except Exception as exc:  # the build log, whatever the driver raised
        return _Built(config, None, ErrorKind.COMPILE, f"{type(exc).__name__}: {exc}")
    return _Built(config, rendered.source, ErrorKind.NONE, "")


_DEVICE = None


def _worker_device(spec):
    global _DEVICE
    if _DEVICE is None:
        from coretune.kernels import open_device

        _DEVICE = open_device(spec)
    return _DEVICE


# ---- the device worker ----------------------------------------------------------------------
@dataclass
class _Prepared:
    """One task's state in the device worker: its inputs on the device, their reference."""

    template: object
    inputs: list
    expected: list | None
    out_types: list


def _prepare(device, task: Task, options: MeasureOptions, seed: int) -> _Prepared:
    template = task.template()
    arrays = task.inputs(seed)
    expected = task.workload.reference(arrays) if options.check_correctness else None
    inputs = [device.upload(a) for a in template.prepare_weights(list(arrays))]
    out_types = [task.workload.types[n] for n in task.workload.outputs]
    return _Prepared(template, inputs, expected, out_types)


def _runner_main(conn, task: Task, device_spec, options: MeasureOptions, seed: int, parent: int):
    """Owns the device: uploads the task's inputs once, then runs configs as they arrive; a
    ("task", task) message moves it to another task (Measurer.use)."""
    die_with_parent(parent)
    from threadpoolctl import threadpool_limits

    from coretune.kernels import open_device

    # After a BLAS call (the result check's norms), OpenBLAS's idle threads spin for ~0.1 s: on
    # a CPU device they took a core from the kernel timed next, which then measured up to 2x
    # slow (median 500-730 us vs 374-400 us for the same gemm config). One BLAS thread here.
    threadpool_limits(1)
    device = open_device(device_spec)
    prepared = _prepare(device, task, options, seed)
    if options.device_memory_limit is not None:
        _cap_address_space(options.device_memory_limit)
    conn.send("ready")
    while True:
        job = conn.recv()
        if job is None:
            return
        if job[0] == "task":
            prepared = None  # the old task's buffers go before the new one's are made
            prepared = _prepare(device, job[1], options, seed)
            conn.send("ready")
            continue
        template, inputs = prepared.template, prepared.inputs
        expected, out_types = prepared.expected, prepared.out_types
        config, source = job
        try:
            rendered = template.render(config, device.info.backend, device.limits)
            assert rendered.source == source, "the runner rendered different source"
            compiled = device.compile(rendered)
            outputs = [_poisoned(device, t) for t in out_types]
            buffers = inputs + outputs
            if expected is not None:
                device.launch(compiled, buffers).wait()
                got = [
                    device.download(b, t.shape, t.dtype)
                    for b, t in zip(outputs, out_types, strict=True)
                ]
                problem = _compare(got, expected, options.rtol)
                if problem:
                    conn.send((ErrorKind.WRONG_RESULT, problem, ()))
                    continue
            number = options.number
            costs = device.time(compiled, buffers, number=number, repeat=1, warmup=options.warmup)
            while costs[0] * number * 1e3 < options.min_repeat_ms and number < 1 << 20:
                number *= 2
                costs = device.time(compiled, buffers, number=number, repeat=1, warmup=0)
            costs += device.time(
                compiled, buffers, number=number, repeat=options.repeat - 1, warmup=0
            )
            conn.send((ErrorKind.NONE, "", tuple(costs)))
        except Exception as exc:
            conn.send(
                (
                    ErrorKind.RUNTIME,
                    f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}",
                    (),
                )
            )


def _poisoned(device, tensor_type):
    """A device buffer for an output, filled on the device with NaN (0x5A bytes for integers)
    so a kernel that skips an element cannot pass; no host copy of its size is made."""
    dtype = np.dtype(tensor_type.dtype)
    buffer = device.empty(math.prod(tensor_type.shape) * dtype.itemsize)
    pattern = np.array(np.nan if dtype.kind == "f" else 0x5A, dtype)
    device.fill(buffer, pattern, math.prod(tensor_type.shape) * dtype.itemsize)
    return buffer


def _cap_address_space(extra_bytes: int) -> None:
    import resource

    status = Path("/proc/self/status").read_text().splitlines()
    used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (used + extra_bytes, used + extra_bytes))


def _compare(got, expected, rtol) -> str:
    for index, (g, w) in enumerate(zip(got, expected, strict=True)):
        if w.dtype.kind == "f":
            finite_w = np.isfinite(w)
            if not np.array_equal(finite_w, np.isfinite(g)):
                return f"output {index}: NaN/inf where the reference has none (or vice versa)"
            scale = float(np.linalg.norm(w[finite_w].astype(np.float64))) or 1e-30
            error = float(np.linalg.norm((g[finite_w] - w[finite_w]).astype(np.float64)))
            if error > rtol * scale:
                return f"output {index}: relative error {error / scale:.3g} > {rtol}"
        elif not np.array_equal(g, w):
            return f"output {index}: {int((g != w).sum())} elements differ"
    return ""


class Measurer:
    """Measures configs of one task on one device; keep it open across a tuning run."""

    def __init__(
        self,
        task: Task,
        device_spec: str | None = None,
        options: MeasureOptions | None = None,
        build_workers: int = 2,
        seed: int = 0,
    ):
        self.task = task
        self.device_spec = device_spec
        self.options = options or MeasureOptions()
        self.build_workers = build_workers
        self.seed = seed
        self._pool = None
        self._runner = None
        self._conn = None

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._stop_runner()
        self._kill_pool()

    def use(self, task: Task) -> None:
        """Measure ``task``'s configs from now on, with the same workers: the device worker
        uploads the new task's inputs (no new process, no new device context). Under a
        device memory cap (an address-space limit set after the first task's uploads) the
        device worker is restarted instead."""
        if task == self.task:
            return
        self.task = task
        if self._runner is None or not self._runner.is_alive():
            return  # the next run starts one for this task
        if self.options.device_memory_limit is not None:
            self._stop_runner()
            return
        try:
            self._conn.send(("task", task))
            ready = self._conn.poll(120) and self._conn.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self._stop_runner()  # the next run starts a fresh one

    def start(self) -> "Measurer":
        """Start the device worker and the build workers now (else the first measurement
        does), so that a caller timing measurements does not count their start."""
        pool = self._pool_()  # its processes start on demand: one job each starts them
        for job in [pool.submit(os.getpid) for _ in range(self.build_workers)]:
            job.result()
        if self._runner is None or not self._runner.is_alive():
            self._start_runner()
        return self

    def _pool_(self):
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.build_workers,
                mp_context=_CONTEXT,
                initializer=die_with_parent,
                initargs=(os.getpid(),),
            )
        return self._pool

    def _kill_pool(self):
        if self._pool is None:
            return
        processes = list(getattr(self._pool, "_processes", {}).values())
        for process in processes:
            process.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:  # reap them: no zombies, no leaked pipes
            process.join(timeout=5)
        self._pool = None

    def _start_runner(self):
        parent, child = _CONTEXT.Pipe()
        self._runner = _CONTEXT.Process(
            target=_runner_main,
            args=(child, self.task, self.device_spec, self.options, self.seed, os.getpid()),
            daemon=True,
        )
        self._runner.start()
        child.close()
        self._conn = parent
        if not parent.poll(120) or parent.recv() != "ready":
            raise RuntimeError("the device worker did not start")

    def _stop_runner(self):
        if self._runner is not None:
            if self._runner.is_alive():
                self._runner.kill()
            self._runner.join(5)
            self._conn.close()
        self._runner = None

    # ---- measuring -------------------------------------------------------------------------
    def measure(self, configs: list[Config]) -> list[MeasureResult]:
        """Build all in parallel, then run one by one; one result per config, in order."""
        started = time.time()
        built = self._build_all(configs, started)
        return [
            self._run(b, started)
            if b.error is ErrorKind.NONE
            else MeasureResult((), b.error, b.message, started, time.time())
            for b in built
        ]

    def _build_all(self, configs, started) -> list[_Built]:
        try:
            futures = [
                self._pool_().submit(_build, self.task, c, self.device_spec) for c in configs
            ]
        except BrokenProcessPool:
            self._kill_pool()
            futures = [
                self._pool_().submit(_build, self.task, c, self.device_spec) for c in configs
            ]
        results = []
        deadline = time.monotonic() + self.options.build_timeout
        for config, future in zip(configs, futures, strict=True):
            try:
                results.append(future.result(timeout=max(0.1, deadline - time.monotonic())))
            except FutureTimeout:
                results.append(
                    _Built(
                        config,
                        None,
                        ErrorKind.COMPILE,
                        f"build timed out after {self.options.build_timeout} s",
                    )
                )
                self._kill_pool()  # the stuck compiler dies with its pool
            except BrokenProcessPool as exc:
                results.append(
                    _Built(config, None, ErrorKind.COMPILE, f"the build worker crashed: {exc}")
                )
                self._kill_pool()
            except Exception as exc:
                results.append(
                    _Built(config, None, ErrorKind.COMPILE, f"{type(exc).__name__}: {exc}")
                )
        return results

    def _run(self, built: _Built, started) -> MeasureResult:
        if self._runner is None or not self._runner.is_alive():
            self._start_runner()
        run_started = time.time()
        try:
            self._conn.send((built.config, built.source))
            if not self._conn.poll(self.options.run_timeout):
                self._stop_runner()
                return MeasureResult(
                    (),
                    ErrorKind.TIMEOUT,
                    f"no result within {self.options.run_timeout} s (hung "
                    "kernel?); device worker restarted",
                    run_started,
                    time.time(),
                )
            error, message, costs = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as exc:
            code = self._runner.exitcode if self._runner else None
            self._stop_runner()
            return MeasureResult(
                (),
                ErrorKind.RUNTIME,
                f"the device worker died (exit code {code}): {type(exc).__name__}",
                run_started,
                time.time(),
            )
        return MeasureResult(tuple(costs), ErrorKind(error), message, run_started, time.time())
