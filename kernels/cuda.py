"""The CUDA device runtime, behind the OpenCL device's interface (the optional extra ``cuda``).

``CUDADevice`` is written once over a small table of driver calls, ``CudaRuntime``, of which
there are two: CuPy (kernels built by NVRTC through ``RawModule``; a wheel, and on the GPU
hosts this project measures on it is already installed) and pycuda (built from source against
the local CUDA toolkit). ``CORETUNE_CUDA_RUNTIME=cupy|pycuda`` picks one; by default CuPy
where it imports, else pycuda. Neither is imported until a CUDA device is asked for; where
both, the driver or a GPU are missing, the error says which.

Device memory comes from plain allocations (cudaMalloc/cuMemAlloc, never a pool or managed
memory), kernels are timed with CUDA events, and every launch's status is checked: a launch
the driver refuses raises at once, a kernel that faults raises at the next synchronisation.
"""

import hashlib
import os
from dataclasses import dataclass, replace

import numpy as np

from .device import DeviceInfo, DeviceLimits
from .opencl import DeviceError, KernelBuildError
from .render import RenderedKernel

RUNTIME_VARIABLE = "CORETUNE_CUDA_RUNTIME"
_INSTALL_HINT = "pip install 'coretune[cuda]' (CuPy), or 'coretune[cuda-pycuda]' (pycuda)"
# CUDA's grid limits per axis (x, y, z): y and z are 16-bit.
CUDA_MAX_GROUPS = (2**31 - 1, 65535, 65535)


@dataclass(frozen=True)
class CudaProperties:
    name: str
    compute_capability: tuple[int, int]
    driver_version: int  # e.g. 13000 for CUDA 13.0
    max_threads_per_block: int
    max_block_dims: tuple[int, int, int]
    shared_bytes_per_block: int
    multiprocessors: int
    warp_size: int
    registers_per_block: int
    global_mem_bytes: int


class CudaRuntime:
    """The driver calls CUDADevice needs; one subclass per Python CUDA binding."""

    name = ""

    def device_count(self) -> int:
        raise NotImplementedError

    def properties(self, index: int) -> CudaProperties:
        raise NotImplementedError

    def allocate(self, nbytes: int):
        raise NotImplementedError

    def to_device(self, buffer, array: np.ndarray) -> None:
        raise NotImplementedError

    def to_host(self, array: np.ndarray, buffer) -> None:
        raise NotImplementedError

    def device_copy(self, target, source, nbytes: int) -> None:
        raise NotImplementedError

    def fill(self, buffer, word: int, itemsize: int, count: int) -> None:
        raise NotImplementedError

    def build(self, source: str, entry: str, options: tuple[str, ...]):
        raise NotImplementedError

    def launch(self, function, groups, local, buffers) -> None:
        raise NotImplementedError

    def event(self):
        raise NotImplementedError

    def record(self, event) -> None:
        raise NotImplementedError

    def synchronize(self, event) -> None:
        raise NotImplementedError

    def elapsed_seconds(self, start, end) -> float:
        raise NotImplementedError

    def versions(self) -> dict[str, str]:
        raise NotImplementedError


class CupyRuntime(CudaRuntime):
    name = "cupy"

    def __init__(self, index: int):
        import cupy

        self.cupy = cupy
        cupy.cuda.Device(index).use()

    def device_count(self):
        return self.cupy.cuda.runtime.getDeviceCount()

    def properties(self, index):
        runtime = self.cupy.cuda.runtime
        p = runtime.getDeviceProperties(index)
        name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
        return CudaProperties(
            name=name.strip(),
            compute_capability=(int(p["major"]), int(p["minor"])),
            driver_version=int(runtime.driverGetVersion()),
            max_threads_per_block=int(p["maxThreadsPerBlock"]),
            max_block_dims=tuple(int(d) for d in p["maxThreadsDim"][:3]),
            shared_bytes_per_block=int(p["sharedMemPerBlock"]),
            multiprocessors=int(p["multiProcessorCount"]),
            warp_size=int(p["warpSize"]),
            registers_per_block=int(p["regsPerBlock"]),
            global_mem_bytes=int(p["totalGlobalMem"]),
        )

    def allocate(self, nbytes):
        # A plain cudaMalloc (cupy.cuda.Memory), not CuPy's pool: a buffer is freed when the
        # last reference to it goes, and what nvidia-smi shows is what the model holds.
        memory = self.cupy.cuda.MemoryPointer(self.cupy.cuda.Memory(nbytes), 0)
        return self.cupy.ndarray((nbytes,), self.cupy.uint8, memptr=memory)

    def to_device(self, buffer, array):
        kind = self.cupy.cuda.runtime.memcpyHostToDevice
        self.cupy.cuda.runtime.memcpy(buffer.data.ptr, array.ctypes.data, array.nbytes, kind)

    def to_host(self, array, buffer):
        kind = self.cupy.cuda.runtime.memcpyDeviceToHost
        self.cupy.cuda.runtime.memcpy(array.ctypes.data, buffer.data.ptr, array.nbytes, kind)

    def device_copy(self, target, source, nbytes):
        kind = self.cupy.cuda.runtime.memcpyDeviceToDevice
        self.cupy.cuda.runtime.memcpyAsync(target.data.ptr, source.data.ptr, nbytes, kind, 0)

    def fill(self, buffer, word, itemsize, count):
        unsigned = {1: self.cupy.uint8, 2: self.cupy.uint16, 4: self.cupy.uint32}
        unsigned[8] = self.cupy.uint64
        buffer[: count * itemsize].view(unsigned[itemsize]).fill(word)

    def build(self, source, entry, options):
        module = self.cupy.RawModule(code=source, options=("-std=c++17", *options))
        return module.get_function(entry)  # NVRTC compiles here, not at the first launch

    def launch(self, function, groups, local, buffers):
        function(tuple(groups), tuple(local), tuple(buffers))

    def event(self):
        return self.cupy.cuda.Event()

    def record(self, event):
        event.record()

    def synchronize(self, event):
        event.synchronize()

    def elapsed_seconds(self, start, end):
        return self.cupy.cuda.get_elapsed_time(start, end) * 1e-3

    def versions(self):
        return {"cupy": self.cupy.__version__}


class PycudaRuntime(CudaRuntime):
    name = "pycuda"

    def __init__(self, index: int):
        import pycuda.driver as driver

        self.driver = driver
        driver.init()
        if index >= driver.Device.count():
            raise DeviceError(f"CUDA device {index} does not exist ({driver.Device.count()} found)")
        self.context = driver.Device(index).make_context()

    def device_count(self):
        return self.driver.Device.count()

    def properties(self, index):
        device = self.driver.Device(index)
        a = self.driver.device_attribute
        attrs = device.get_attributes()
        return CudaProperties(
            name=device.name().strip(),
            compute_capability=device.compute_capability(),
            driver_version=int(self.driver.get_driver_version()),
            max_threads_per_block=attrs[a.MAX_THREADS_PER_BLOCK],
            max_block_dims=(
                attrs[a.MAX_BLOCK_DIM_X],
                attrs[a.MAX_BLOCK_DIM_Y],
                attrs[a.MAX_BLOCK_DIM_Z],
            ),
            shared_bytes_per_block=attrs[a.MAX_SHARED_MEMORY_PER_BLOCK],
            multiprocessors=attrs[a.MULTIPROCESSOR_COUNT],
            warp_size=attrs[a.WARP_SIZE],
            registers_per_block=attrs[a.MAX_REGISTERS_PER_BLOCK],
            global_mem_bytes=int(device.total_memory()),
        )

    def allocate(self, nbytes):
        return self.driver.mem_alloc(nbytes)

    def to_device(self, buffer, array):
        self.driver.memcpy_htod(buffer, array)

    def to_host(self, array, buffer):
        self.driver.memcpy_dtoh(array, buffer)

    def device_copy(self, target, source, nbytes):
        self.driver.memcpy_dtod_async(target, source, nbytes)

    def fill(self, buffer, word, itemsize, count):
        setter = {1: "memset_d8", 2: "memset_d16", 4: "memset_d32"}.get(itemsize)
        if setter is None:  # 8-byte elements: no driver memset of that width
            pattern = np.full(count, word, np.uint64)
            self.to_device(buffer, pattern)
            return
        getattr(self.driver, setter)(buffer, word, count)

    def build(self, source, entry, options):
        from pycuda.compiler import SourceModule

        module = SourceModule(source, options=list(options), no_extern_c=True)
        return module.get_function(entry)

    def launch(self, function, groups, local, buffers):
        function(*buffers, block=tuple(local), grid=tuple(groups))

    def event(self):
        return self.driver.Event()

    def record(self, event):
        event.record()

    def synchronize(self, event):
        event.synchronize()

    def elapsed_seconds(self, start, end):
        return start.time_till(end) * 1e-3

    def versions(self):
        import pycuda

        return {"pycuda": pycuda.VERSION_TEXT}


_RUNTIMES = {"cupy": CupyRuntime, "pycuda": PycudaRuntime}


def open_runtime(index: int) -> CudaRuntime:
    """The CUDA binding asked for by CORETUNE_CUDA_RUNTIME, else the first that imports, with
    device ``index`` current; a DeviceError naming what is missing otherwise."""
    wanted = os.environ.get(RUNTIME_VARIABLE, "").strip().lower()
    if wanted and wanted not in _RUNTIMES:
        raise DeviceError(f"{RUNTIME_VARIABLE}={wanted!r}: choose one of {', '.join(_RUNTIMES)}")
    missing = []
    for name in [wanted] if wanted else list(_RUNTIMES):
        try:
            __import__(name)
        except ImportError as exc:
            missing.append(f"{name} is not importable ({exc})")
            continue
        try:
            runtime = _RUNTIMES[name](index)
            count = runtime.device_count()
        except DeviceError:
            raise
        except Exception as exc:  # each binding raises its own driver error types
            raise DeviceError(
                f"CUDA ({name}) did not start: {type(exc).__name__}: {exc} "
                "(no NVIDIA driver or GPU on this machine?)"
            ) from None
        if index >= count:
            raise DeviceError(f"CUDA device cuda:{index} does not exist ({count} found)")
        return runtime
    raise DeviceError(f"CUDA needs CuPy or pycuda: {'; '.join(missing)}; {_INSTALL_HINT}")


def list_devices() -> list[DeviceInfo]:
    """Every CUDA device, in the order 'cuda:N' counts them (a DeviceError says why none)."""
    first = CUDADevice("cuda:0")
    count = first.runtime.device_count()
    return [first.info] + [CUDADevice(f"cuda:{i}").info for i in range(1, count)]


@dataclass
class CompiledCudaKernel:
    rendered: RenderedKernel
    function: object


class CUDADevice:
    """One GPU with a kernel cache; the same methods as OpenCLDevice (no rectangle copies:
    the executor runs pads as kernels on CUDA)."""

    def __init__(self, spec: str | None = None):
        index = _index(spec)
        self.runtime = open_runtime(index)
        props = self.runtime.properties(index)
        self.properties = props
        limits = DeviceLimits(
            max_work_group_size=props.max_threads_per_block,
            max_work_item_sizes=props.max_block_dims,
            local_mem_bytes=props.shared_bytes_per_block,
            compute_units=props.multiprocessors,
            preferred_vector_width=4,  # 16-byte accesses per thread
            warp_size=props.warp_size,
            max_registers_per_thread=255,
            max_groups=CUDA_MAX_GROUPS,
            global_mem_bytes=props.global_mem_bytes,
        )
        major, minor = props.compute_capability
        driver = props.driver_version
        self.info = DeviceInfo(
            "cuda",
            f"CUDA sm_{major}{minor}",
            props.name,
            f"{driver // 1000}.{driver % 1000 // 10}",
            limits,
        )
        self._kernels: dict[str, CompiledCudaKernel] = {}

    @property
    def limits(self) -> DeviceLimits:
        return self.info.limits

    def versions(self) -> dict[str, str]:
        """The Python binding and driver behind this device (benchmarks print them)."""
        return {
            "cuda_runtime": self.runtime.name,
            **self.runtime.versions(),
            "cuda_driver": self.info.driver_version,
        }

    def compile(self, rendered: RenderedKernel, options: tuple[str, ...] = ()):
        key = hashlib.sha256("\0".join((rendered.source, rendered.entry, *options)).encode())
        compiled = self._kernels.get(key.hexdigest())
        if compiled is not None:  # with this one's launch (see OpenCLDevice.compile)
            same = compiled.rendered == rendered
            return compiled if same else replace(compiled, rendered=rendered)
        try:
            function = self.runtime.build(rendered.source, rendered.entry, options)
        except Exception as exc:  # the compiler's log, whatever the binding raised
            raise KernelBuildError(
                f"CUDA build ({self.runtime.name}) of {rendered.entry} failed:\n{exc}"
            ) from None
        compiled = CompiledCudaKernel(rendered, function)
        self._kernels[key.hexdigest()] = compiled
        return compiled

    def compile_all(
        self,
        kernels: list[RenderedKernel],
        options: tuple[str, ...] = (),
        arguments: list[list] | None = None,
    ) -> None:
        """Build the kernels not cached yet, one module each, as compile() does (NVRTC builds
        the whole kernel: nothing is left for a first launch, so ``arguments`` is not needed)."""
        for rendered in kernels:
            self.compile(rendered, options)

    def finish_builds(self) -> None:
        """Nothing runs on after compile_all here."""

    def empty(self, nbytes: int):
        return self.runtime.allocate(max(nbytes, 1))

    def upload(self, array: np.ndarray):
        array = np.ascontiguousarray(array)
        buffer = self.empty(array.nbytes)
        if array.nbytes:
            self.runtime.to_device(buffer, array)
        return buffer

    def download(self, buffer, shape, dtype) -> np.ndarray:
        """Device -> host, after every kernel before it: a kernel that faulted (an illegal
        address...) is reported here, where its error surfaces."""
        out = np.empty(shape, dtype)
        if out.nbytes:
            try:
                self.runtime.to_host(out, buffer)
            except Exception as exc:
                raise DeviceError(
                    f"CUDA error before a download: {type(exc).__name__}: {exc}"
                ) from None
        return out

    def write(self, buffer, array: np.ndarray, blocking: bool = True):
        """Host -> device; always completes before returning (pageable host memory)."""
        if array.nbytes:
            self.runtime.to_device(buffer, np.ascontiguousarray(array))
        return None

    def fill(self, buffer, pattern: np.ndarray, nbytes: int) -> None:
        """Repeat one element's bytes over the buffer, on the device."""
        if nbytes:
            self.runtime.fill(
                buffer, fill_word(pattern), pattern.itemsize, nbytes // pattern.itemsize
            )

    def copy(self, source, target, nbytes: int) -> None:
        self.runtime.device_copy(target, source, nbytes)

    def launch(self, compiled: CompiledCudaKernel, buffers: list, timed: bool = True):
        """Launch once, between two events when ``timed``; returns them (``event_seconds``
        reads them), else None: two event records per kernel cost a model's run more than
        a small kernel takes."""
        launch = compiled.rendered.launch
        if timed:
            start, end = self.runtime.event(), self.runtime.event()
            self.runtime.record(start)
        try:
            arguments = [*buffers, *launch.scalar_arguments()]
            self.runtime.launch(compiled.function, launch.groups, launch.local, arguments)
        except Exception as exc:  # the driver refused it: say which kernel and launch
            raise DeviceError(
                f"CUDA launch of {compiled.rendered.entry} ({launch.groups} blocks of "
                f"{launch.local} threads) failed: {type(exc).__name__}: {exc}"
            ) from None
        if not timed:
            return None
        self.runtime.record(end)
        return _CudaEvent(self.runtime, start, end)

    @staticmethod
    def event_seconds(event) -> float:
        return event.seconds()

    def bind(self, compiled: CompiledCudaKernel, buffers: list):
        """Same contract as OpenCLDevice.bind: ``.launch()`` runs the kernel on these buffers."""
        return _BoundCudaKernel(self, compiled, tuple(buffers))

    def time(self, compiled, buffers, number=1, repeat=3, warmup=1) -> list[float]:
        """Seconds per launch from CUDA events: ``repeat`` means of ``number`` launches."""
        for _ in range(warmup):
            self.launch(compiled, buffers).wait()
        costs = []
        for _ in range(repeat):
            events = [self.launch(compiled, buffers) for _ in range(number)]
            events[-1].wait()
            costs.append(sum(e.seconds() for e in events) / number)
        return costs


def fill_word(pattern: np.ndarray) -> int:
    """One element's bytes as the unsigned word a driver memset repeats."""
    return int(np.ascontiguousarray(pattern).reshape(-1)[:1].view(f"u{pattern.itemsize}")[0])


def _index(spec: str | None) -> int:
    if spec in (None, "", "cuda"):
        return 0
    suffix = spec.split(":", 1)[1] if ":" in spec else ""
    if not suffix.isdigit():
        raise DeviceError(f"device {spec!r}: write cuda or cuda:N")
    return int(suffix)


@dataclass
class _BoundCudaKernel:
    device: CUDADevice
    compiled: CompiledCudaKernel
    buffers: tuple

    def launch(self, timed: bool = True):
        return self.device.launch(self.compiled, self.buffers, timed)


@dataclass
class _CudaEvent:
    runtime: CudaRuntime
    start: object
    end: object

    def wait(self):
        self.runtime.synchronize(self.end)

    def seconds(self) -> float:
        self.wait()
        return self.runtime.elapsed_seconds(self.start, self.end)
