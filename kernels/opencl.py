"""The OpenCL device runtime (pyopencl): selection, program cache, buffers, launches, timing."""

import hashlib
import os
import re
import time
from dataclasses import dataclass, replace

import numpy as np

from coretune.errors import CoretuneError

from . import parallel_build
from .device import DeviceInfo, DeviceLimits
from .render import RenderedKernel


class DeviceError(CoretuneError):
    """No such device, or the device runtime is missing."""


class KernelBuildError(CoretuneError):
    """The device compiler rejected a kernel; the message carries its build log."""


def _cl():
    try:
        import pyopencl
    except ImportError as exc:  # pragma: no cover - pyopencl is a hard dependency
        raise DeviceError(f"pyopencl is not importable: {exc}") from None
    return pyopencl


def _cache_key(rendered: RenderedKernel, options: tuple[str, ...]) -> str:
    return hashlib.sha256(
        "\0".join((rendered.source, rendered.entry, *options)).encode()
    ).hexdigest()


# What a rendered OpenCL kernel defines at program scope besides its entry (render.py): macros
# and lookup tables; each is renamed (tables) or undefined after it (macros) in a shared program.
_MACRO = re.compile(r"^[ \t]*#define[ \t]+(\w+)", re.MULTILINE)
_TABLE = re.compile(r"^__constant\s+\w+\s+(\w+)\s*\[", re.MULTILINE)


def _renamed_apart(rendered: RenderedKernel, name: str, index: int) -> str:
    """The kernel's source, its entry called ``name`` and its tables suffixed with ``index``,
    its macros undefined at its end: ready to share a program with other kernels."""
    source = re.sub(
        rf"(\bvoid\s+){rendered.entry}(\s*\()", rf"\g<1>{name}\2", rendered.source, count=1
    )
    for table in set(_TABLE.findall(source)):
        source = re.sub(rf"\b{table}\b", f"{table}__{index}", source)
    undefs = "".join(f"#undef {macro}\n" for macro in dict.fromkeys(_MACRO.findall(source)))
    return f"{source}\n{undefs}"


def _program_source(todo: list) -> tuple[str, list[str]]:
    """One program of the (key, rendered) kernels in ``todo``, and each one's entry name in it."""
    names = [f"{rendered.entry}__{i}" for i, (_, rendered) in enumerate(todo)]
    source = "\n".join(
        _renamed_apart(rendered, name, i)
        for i, ((_, rendered), name) in enumerate(zip(todo, names, strict=True))
    )
    return source, names


def list_devices() -> list:
    """Every OpenCL device, platform by platform, in the order 'opencl:N' counts them."""
    cl = _cl()
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:
        raise DeviceError(
            f"no OpenCL platform found ({exc}); install pocl-binary-distribution"
        ) from None
    return [d for p in platforms for d in p.get_devices()]


def select_device(spec: str | None = None):
    """'opencl' or None: the first device; 'opencl:N': the N-th; otherwise a name substring."""
    devices = list_devices()
    if not devices:
        raise DeviceError("no OpenCL device found; install pocl-binary-distribution")
    names = ", ".join(f"opencl:{i} ({d.name.strip()})" for i, d in enumerate(devices))
    if spec in (None, "", "opencl"):
        return devices[0]
    if spec.startswith("opencl:") and spec[7:].isdigit():
        index = int(spec[7:])
        if index >= len(devices):
            raise DeviceError(f"device {spec!r} does not exist; devices: {names}")
        return devices[index]
    matches = [d for d in devices if spec.lower() in d.name.lower()]
    if not matches:
        raise DeviceError(f"no OpenCL device matches {spec!r}; devices: {names}")
    return matches[0]


def device_info(device) -> DeviceInfo:
    cl = _cl()
    widths = device.get_info(cl.device_info.PREFERRED_VECTOR_WIDTH_FLOAT) or 1
    limits = DeviceLimits(
        max_work_group_size=int(device.max_work_group_size),
        max_work_item_sizes=tuple(int(s) for s in device.max_work_item_sizes[:3]),
        local_mem_bytes=int(device.local_mem_size),
        compute_units=int(device.max_compute_units),
        preferred_vector_width=int(widths),
        global_mem_bytes=int(device.global_mem_size),
        max_buffer_bytes=int(device.max_mem_alloc_size),
    )
    return DeviceInfo(
        "opencl",
        device.platform.name.strip(),
        device.name.strip(),
        device.driver_version.strip(),
        limits,
    )


@dataclass
class CompiledKernel:
    rendered: RenderedKernel
    kernel: object  # pyopencl.Kernel
    program: object  # pyopencl.Program: bind() makes one Kernel object per use from it
    name: str  # the kernel's name in that program (renamed where kernels share one program)


@dataclass
class BoundKernel:
    """A kernel with its arguments set once, for launching the same buffers many times (a
    Kernel object of its own: two steps running one cached program must not share args)."""

    queue: object
    kernel: object
    global_size: tuple[int, ...]
    local_size: tuple[int, ...]
    buffers: tuple  # held here: clSetKernelArg does not keep a buffer alive

    def launch(self, timed: bool = True):
        """Enqueue once; returns the profiling event (OpenCL makes one either way)."""
        return _cl().enqueue_nd_range_kernel(
            self.queue, self.kernel, self.global_size, self.local_size
        )


class OpenCLDevice:
    """One device with its context, a profiling queue and a program cache."""

    def __init__(self, spec: str | None = None):
        cl = _cl()
        self._cl = cl
        self.device = select_device(spec)
        self.info = device_info(self.device)
        self.context = cl.Context([self.device])
        self.queue = cl.CommandQueue(
            self.context, properties=cl.command_queue_properties.PROFILING_ENABLE
        )
        self._kernels: dict[str, CompiledKernel] = {}
        self._helpers: list[parallel_build.BuildHelper] = []

    @property
    def limits(self) -> DeviceLimits:
        return self.info.limits

    def versions(self) -> dict[str, str]:
        """The Python binding and driver behind this device (benchmarks print them)."""
        return {"pyopencl": self._cl.VERSION_TEXT, "opencl_driver": self.info.driver_version}

    def compile(self, rendered: RenderedKernel, options: tuple[str, ...] = ()) -> CompiledKernel:
        """Build (or fetch from the cache, keyed by source and options) and pick the entry.
        A cached program comes back with this ``rendered``'s launch: two kernels of one source
        may run different grids (a gemm of 48 rows and one of 64, in whole tiles, whose
        source names no row count)."""
        key = _cache_key(rendered, options)
        compiled = self._kernels.get(key)
        if compiled is not None:
            same = compiled.rendered == rendered
            return compiled if same else replace(compiled, rendered=rendered)
        try:
            program = self._cl.Program(self.context, rendered.source).build(list(options))
        except self._cl.RuntimeError as exc:
            raise KernelBuildError(f"OpenCL build of {rendered.entry} failed:\n{exc}") from None
        kernel = self._cl.Kernel(program, rendered.entry)
        compiled = CompiledKernel(rendered, kernel, program, rendered.entry)
        self._kernels[key] = compiled
        return compiled

    def compile_all(
        self,
        kernels: list[RenderedKernel],
        options: tuple[str, ...] = (),
        arguments: list[list] | None = None,
    ) -> None:
        """Build the kernels not cached yet as one program, so that compile() then finds them.

        A driver's build has a large fixed cost per program (PoCL: 0.1 s of its 0.14 s mean on
        SqueezeNet's 26 kernels; one program of all 26 builds in 0.8 s instead of 3.6 s). Each
        kernel's program-scope names are renamed apart; a program that does not build is split
        in halves, down to single kernels, which compile() then builds alone, so that a kernel
        that fails is named in its own error.

        ``arguments``, the buffers each kernel will be bound to, lets PoCL's share of the work
        run on every core: the kernels are built as one program per core, helper processes
        build all but the first and compile their work-group functions into PoCL's cache
        (parallel_build.py) until finish_builds()."""
        todo, arg_bytes = {}, {}
        for i, rendered in enumerate(kernels):
            key = _cache_key(rendered, options)
            if key not in self._kernels and key not in todo:
                todo[key] = rendered
                if arguments is not None:
                    arg_bytes[key] = tuple(int(buffer.size) for buffer in arguments[i])
        items = list(todo.items())
        parts = [items]
        if arguments is not None and self._shares_kernel_cache():
            parts = parallel_build.split(items, parallel_build.part_count(len(items)))
        helpers = [self._start_helper(part, options, arg_bytes) for part in parts[1:]]
        started = time.perf_counter()
        self._build_together(parts[0], options)
        own_seconds = time.perf_counter() - started
        for helper, part in zip(helpers, parts[1:], strict=True):
            helper.wait_built(timeout=10 + 5 * own_seconds)  # parts are about the same size
            self._build_together(part, options)  # from PoCL's cache where the helper built it
        self._helpers.extend(helpers)

    def finish_builds(self) -> None:
        """Stop compile_all's helper processes: call after the kernels' first launches."""
        for helper in self._helpers:
            helper.close()
        self._helpers.clear()

    def _shares_kernel_cache(self) -> bool:
        """PoCL, with its disk cache of work-group functions on (its default)."""
        return (
            self.info.platform == "Portable Computing Language"
            and os.environ.get("POCL_KERNEL_CACHE", "1") != "0"
        )

    def _start_helper(self, part: list, options, arg_bytes: dict) -> parallel_build.BuildHelper:
        source, names = _program_source(part)
        launches = [
            parallel_build.HelperLaunch(
                name,
                rendered.launch.global_size,
                rendered.launch.local,
                arg_bytes[key],
                tuple((s.ctype, s.value) for s in rendered.launch.scalars),
            )
            for (key, rendered), name in zip(part, names, strict=True)
        ]
        return parallel_build.BuildHelper(
            list_devices().index(self.device), self.info.name, source, options, launches[::-1]
        )

    def _build_together(self, todo: list, options: tuple[str, ...]) -> None:
        if len(todo) < 2:
            return
        source, names = _program_source(todo)
        try:
            program = self._cl.Program(self.context, source).build(list(options))
        except self._cl.RuntimeError:
            half = len(todo) // 2
            self._build_together(todo[:half], options)
            self._build_together(todo[half:], options)
            return
        for (key, rendered), name in zip(todo, names, strict=True):
            kernel = self._cl.Kernel(program, name)
            self._kernels[key] = CompiledKernel(rendered, kernel, program, name)

    def upload(self, array: np.ndarray):
        flags = self._cl.mem_flags
        array = np.ascontiguousarray(array)
        if array.nbytes == 0:
            return self._cl.Buffer(self.context, flags.READ_WRITE, 1)
        return self._cl.Buffer(self.context, flags.READ_WRITE | flags.COPY_HOST_PTR, hostbuf=array)

    def empty(self, nbytes: int):
        return self._cl.Buffer(self.context, self._cl.mem_flags.READ_WRITE, max(nbytes, 1))

    def download(self, buffer, shape, dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        if out.nbytes:
            self._cl.enqueue_copy(self.queue, out, buffer)
        return out

    def write(self, buffer, array: np.ndarray, blocking: bool = True):
        """Copy host -> device. Non-blocking only for a caller that keeps ``array`` unchanged
        and the returned event alive until a later blocking command on this queue returns:
        pyopencl's event of a host copy waits for the copy when it is dropped (to keep the
        host array alive), which made every "non-blocking" input write of a run a blocking
        one (~40 us each on PoCL's pthread driver)."""
        if array.nbytes:
            return self._cl.enqueue_copy(
                self.queue, buffer, np.ascontiguousarray(array), is_blocking=blocking
            )
        return None

    def fill(self, buffer, pattern: np.ndarray, nbytes: int) -> None:
        """Repeat one element's bytes over the buffer, on the device."""
        if nbytes:
            self._cl.enqueue_fill_buffer(self.queue, buffer, pattern, 0, nbytes).wait()

    def copy(self, source, target, nbytes: int) -> None:
        self._cl.enqueue_copy(self.queue, target, source, byte_count=nbytes)

    def copy_box(self, source, target, box: dict):
        """A rectangle copy (see PadStep.box); returns its profiling event."""
        return self._cl.enqueue_copy(
            self.queue,
            target,
            source,
            src_origin=(0, 0, 0),
            dst_origin=box["target_origin"],
            region=box["region"],
            src_pitches=box["source_pitches"],
            dst_pitches=box["target_pitches"],
        )

    def write_box(self, target, array: np.ndarray, box: dict):
        """Host -> device rectangle write (see PadStep.box), non-blocking as ``write`` is:
        keep ``array`` and the returned event alive until a blocking command returns."""
        return self._cl.enqueue_copy(
            self.queue,
            target,
            np.ascontiguousarray(array),
            buffer_origin=box["target_origin"],
            host_origin=(0, 0, 0),
            region=box["region"],
            buffer_pitches=box["target_pitches"],
            host_pitches=box["source_pitches"],
            is_blocking=False,
        )

    @staticmethod
    def event_seconds(event) -> float:
        event.wait()
        return (event.profile.end - event.profile.start) * 1e-9

    def bind(self, compiled: CompiledKernel, buffers: list) -> BoundKernel:
        kernel = self._cl.Kernel(compiled.program, compiled.name)
        launch = compiled.rendered.launch
        kernel.set_args(*buffers, *launch.scalar_arguments())
        return BoundKernel(self.queue, kernel, launch.global_size, launch.local, tuple(buffers))

    def launch(self, compiled: CompiledKernel, buffers: list):
        """Enqueue once; returns the profiling event."""
        launch = compiled.rendered.launch
        compiled.kernel.set_args(*buffers, *launch.scalar_arguments())
        return self._cl.enqueue_nd_range_kernel(
            self.queue, compiled.kernel, launch.global_size, launch.local
        )

    def time(
        self,
        compiled: CompiledKernel,
        buffers: list,
        number: int = 1,
        repeat: int = 3,
        warmup: int = 1,
    ) -> list[float]:
        """Seconds per launch, from device events: ``repeat`` means of ``number`` launches."""
        for _ in range(warmup):
            self.launch(compiled, buffers).wait()
        costs = []
        for _ in range(repeat):
            events = [self.launch(compiled, buffers) for _ in range(number)]
            events[-1].wait()
            costs.append(sum(e.profile.end - e.profile.start for e in events) * 1e-9 / number)
        return costs
