"""The worker side of tuning on a Dask cluster: a worker owns one device and measures on it.

``DevicePlugin`` (a Dask WorkerPlugin) opens the device once when the worker starts and
advertises its fingerprint as a worker resource (``resource_name``), so the scheduler sends a
device's trials only to workers of that device, one at a time per worker. Each task's
measurements run in an isolated subprocess, as in tuner.measure: a compiler crash, a driver
crash, a hanging kernel or a wrong result costs one trial and a restarted subprocess, never the
worker. A measurement is two steps, so that only the timed run holds the device's lock (a
``distributed.Lock`` per host and physical device: workers sharing a CPU or a GPU never time at
the same moment, while their compilation and numpy reference checks overlap).
"""

import hashlib
import multiprocessing as mp
import os
import socket
import time
import traceback
from collections import OrderedDict

from distributed import WorkerPlugin

from coretune.kernels.space import Config

from .measure import (
    MeasureOptions,
    MeasureResult,
    _cap_address_space,
    _compare,
    _poisoned,
    die_with_parent,
)
from .records import ErrorKind, device_key, task_key
from .task import Task

PLUGIN_NAME = "coretune-device"
LEASE_TIMEOUT = "3s"  # of the measurement lock (setup says why)
RUNNERS_KEPT = 2  # tasks whose inputs stay uploaded on a worker (tasks are tuned concurrently)
_CONTEXT = mp.get_context("spawn")  # never fork a process that holds an OpenCL context


def resource_name(fingerprint: dict) -> str:
    """The Dask resource a worker of this device advertises (one unit: one trial at a time)."""
    digest = hashlib.sha1(device_key(fingerprint).encode()).hexdigest()[:16]
    return f"coretune-device-{digest}"


def physical_device(fingerprint: dict, spec: str | None) -> str:
    """What workers share when they share hardware: PoCL's CPU drivers (basic, pthread) all run
    on the host's cores, so every CPU worker of a host shares one lock; other devices by spec."""
    if (
        fingerprint.get("platform") == "Portable Computing Language"
        or "cpu" in str(fingerprint.get("name", "")).lower()
    ):
        return "cpu"
    return f"{fingerprint.get('backend')}:{spec or fingerprint.get('name')}"


def _runner_main(conn, task: Task, device_spec, options: MeasureOptions, seed: int, parent: int):
    """The device subprocess: ("check", config) renders, compiles, checks against the numpy
    reference (no lock needed); ("time",) then times that kernel (the caller holds the lock)."""
    die_with_parent(parent)
    from threadpoolctl import threadpool_limits

    from coretune.kernels import open_device
    from coretune.kernels.space import InvalidConfig

    threadpool_limits(1)  # idle BLAS threads spin and slow the next timing (tuner.measure)
    device = open_device(device_spec)
    template = task.template()
    arrays = task.inputs(seed)
    expected = task.workload.reference(arrays) if options.check_correctness else None
    inputs = [device.upload(a) for a in template.prepare_weights(list(arrays))]
    out_types = [task.workload.types[n] for n in task.workload.outputs]
    if options.device_memory_limit is not None:
        _cap_address_space(options.device_memory_limit)
    conn.send("ready")
    compiled = buffers = None
    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            if job[0] == "check":
                compiled = None
                try:
                    rendered = template.render(job[1], device.info.backend, device.limits)
                except InvalidConfig as exc:
                    conn.send((ErrorKind.INVALID, str(exc), ()))
                    continue
                try:
                    kernel = device.compile(rendered)
                except Exception as exc:  # the build log, whatever the driver raised
                    conn.send((ErrorKind.COMPILE, f"{type(exc).__name__}: {exc}", ()))
                    continue
                outputs = [_poisoned(device, t) for t in out_types]
                buffers = inputs + outputs
                if expected is not None:
                    device.launch(kernel, buffers).wait()
                    got = [
                        device.download(b, t.shape, t.dtype)
                        for b, t in zip(outputs, out_types, strict=True)
                    ]
                    problem = _compare(got, expected, options.rtol)
                    if problem:
                        conn.send((ErrorKind.WRONG_RESULT, problem, ()))
                        continue
                compiled = kernel
                conn.send((ErrorKind.NONE, "", ()))
            else:
                number = options.number
                costs = device.time(
                    compiled, buffers, number=number, repeat=1, warmup=options.warmup
                )
                while costs[0] * number * 1e3 < options.min_repeat_ms and number < 1 << 20:
                    number *= 2
                    costs = device.time(compiled, buffers, number=number, repeat=1, warmup=0)
                costs += device.time(
                    compiled, buffers, number=number, repeat=options.repeat - 1, warmup=0
                )
                conn.send((ErrorKind.NONE, "", tuple(costs)))
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            conn.send((ErrorKind.RUNTIME, message, ()))


class _Runner:
    """One task's device subprocess, started lazily, restarted after a crash or a timeout."""

    def __init__(self, task, device_spec, options, seed):
        self.args = (task, device_spec, options, seed)
        self.process = self.conn = None

    def start(self):
        parent, child = _CONTEXT.Pipe()
        # Started from the worker's executor thread, which lives as long as the worker: the
        # parent-death signal (fired when that thread ends) then means the worker is gone.
        self.process = _CONTEXT.Process(
            target=_runner_main, args=(child, *self.args, os.getpid()), daemon=True
        )
        self.process.start()
        child.close()
        self.conn = parent
        if not parent.poll(120) or parent.recv() != "ready":
            self.stop()
            raise RuntimeError("the device subprocess did not start")

    def stop(self):
        if self.process is not None:
            self.process.kill()
            self.process.join(5)
            self.conn.close()
        self.process = self.conn = None

    def ask(self, job, timeout: float):
        """The subprocess's answer, or (error kind, why, ()) when it hangs or dies."""
        if self.process is None or not self.process.is_alive():
            self.start()
        try:
            self.conn.send(job)
            if not self.conn.poll(timeout):
                self.stop()
                why = f"no result within {timeout} s (hung kernel?); device subprocess restarted"
                return ErrorKind.TIMEOUT, why, ()
            return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as exc:
            code = self.process.exitcode if self.process else None
            self.stop()
            why = f"the device subprocess died (exit code {code}): {type(exc).__name__}"
            return ErrorKind.RUNTIME, why, ()


class DevicePlugin(WorkerPlugin):
    """The worker's device, its lock name and its measurement subprocesses."""

    name = PLUGIN_NAME

    def __init__(self, device_spec: str | None = None, lock: str | None = None):
        self.device_spec = device_spec
        self.lock = lock  # None: one per host and physical device
        self.fingerprint: dict = {}
        self._runners: OrderedDict = OrderedDict()

    async def setup(self, worker):
        import dask

        from coretune.kernels import open_device

        # The lock's lease is refreshed every LEASE_TIMEOUT / 5 by this worker's event loop
        # (while its thread times a kernel, too); a SIGKILLed holder's lease then lapses in
        # seconds, not Dask's default 30 s, and the other workers of the device go on.
        dask.config.set({"distributed.scheduler.locks.lease-timeout": LEASE_TIMEOUT})
        self._lock = None

        device = open_device(self.device_spec)
        self.fingerprint = device.info.fingerprint()
        self.limits = device.limits  # the config space's limits, sent to the client
        self.address = worker.address
        if self.lock is None:
            where = physical_device(self.fingerprint, self.device_spec)
            self.lock = f"coretune-measure:{socket.gethostname()}:{where}"
        resource = resource_name(self.fingerprint)
        if resource not in worker.state.total_resources:  # a plugin added to a running worker
            await worker.set_resources(**{resource: 1})

    def teardown(self, worker):
        for runner in self._runners.values():
            runner.stop()
        self._runners.clear()

    def runner(self, task: Task, options: MeasureOptions, seed: int) -> _Runner:
        key = (task_key(task.key()), options, seed)
        if key not in self._runners:
            self._runners[key] = _Runner(task, self.device_spec, options, seed)
            while len(self._runners) > RUNNERS_KEPT:
                self._runners.popitem(last=False)[1].stop()
        self._runners.move_to_end(key)
        return self._runners[key]

    def measure(self, task, config: Config, options, seed) -> MeasureResult:
        from distributed import Lock

        runner = self.runner(task, options, seed)
        started = time.time()
        error, message, _ = runner.ask(("check", config), options.build_timeout)
        if ErrorKind(error) is not ErrorKind.NONE:
            return MeasureResult((), ErrorKind(error), message, started, time.time())
        if self._lock is None:  # one Lock per worker: each new one registers anew
            self._lock = Lock(self.lock)
        with self._lock:
            run_started = time.time()
            error, message, costs = runner.ask(("time",), options.run_timeout)
        return MeasureResult(tuple(costs), ErrorKind(error), message, run_started, time.time())


def measure_on_worker(task: Task, configs: list[dict], options: MeasureOptions, seed: int):
    """The Dask task: measure ``configs`` in order on this worker's device. Returns (worker
    address, [MeasureResult], when the configs arrived, when the results left)."""
    from distributed import get_worker

    arrived = time.time()
    plugin = get_worker().plugins[PLUGIN_NAME]
    results = [plugin.measure(task, Config(c), options, seed) for c in configs]
    return plugin.address, results, arrived, time.time()


def worker_device(dask_worker):
    """For Client.run: (fingerprint, limits) of the worker's device; None before its plugin is
    set up."""
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    if plugin is None or not plugin.fingerprint:
        return None
    return dict(plugin.fingerprint), plugin.limits
