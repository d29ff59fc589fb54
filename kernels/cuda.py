"""The CUDA device runtime (pycuda, the optional extra ``cuda``), behind the OpenCL interface.

pycuda is imported only when a CUDA device is asked for; where pycuda, the driver or a GPU is
missing, the error says which and how to fix it.
"""

import hashlib
from dataclasses import dataclass

import numpy as np

from .device import DeviceInfo, DeviceLimits
from .opencl import DeviceError, KernelBuildError
from .render import RenderedKernel


def _driver():
    try:
        import pycuda.driver as driver
    except ImportError:
        raise DeviceError("CUDA needs pycuda: pip install 'coretune[cuda]'") from None
    try:
        driver.init()
    except Exception as exc:  # pycuda raises its own LogicError/RuntimeError types
        raise DeviceError(f"the CUDA driver did not start: {exc}") from None
    if driver.Device.count() == 0:
        raise DeviceError("no CUDA GPU found")
    return driver


@dataclass
class CompiledCudaKernel:
    rendered: RenderedKernel
    function: object
    module: object


class CUDADevice:
    """One GPU with its context and a module cache; same methods as OpenCLDevice."""

    def __init__(self, spec: str | None = None):
        driver = _driver()
        self._driver = driver
        index = int(spec.split(":", 1)[1]) if spec and ":" in spec else 0
        if index >= driver.Device.count():
            raise DeviceError(f"CUDA device {index} does not exist ({driver.Device.count()} found)")
        self.device = driver.Device(index)
        self.context = self.device.make_context()
        attrs = self.device.get_attributes()
        a = driver.device_attribute
        limits = DeviceLimits(
            max_work_group_size=attrs[a.MAX_THREADS_PER_BLOCK],
            max_work_item_sizes=(
                attrs[a.MAX_BLOCK_DIM_X],
                attrs[a.MAX_BLOCK_DIM_Y],
                attrs[a.MAX_BLOCK_DIM_Z],
            ),
            local_mem_bytes=attrs[a.MAX_SHARED_MEMORY_PER_BLOCK],
            compute_units=attrs[a.MULTIPROCESSOR_COUNT],
            warp_size=attrs[a.WARP_SIZE],
        )
        self.info = DeviceInfo(
            "cuda",
            "CUDA",
            self.device.name(),
            ".".join(
                map(
                    str,
                    driver.get_driver_version_tuple()
                    if hasattr(driver, "get_driver_version_tuple")
                    else (driver.get_driver_version(),),
                )
            ),
            limits,
        )
        self._kernels: dict[str, CompiledCudaKernel] = {}

    @property
    def limits(self) -> DeviceLimits:
        return self.info.limits

    def compile(self, rendered: RenderedKernel, options: tuple[str, ...] = ()):
        from pycuda.compiler import SourceModule

        key = hashlib.sha256("\0".join((rendered.source, *options)).encode()).hexdigest()
        if key not in self._kernels:
            try:
                module = SourceModule(rendered.source, options=list(options), no_extern_c=True)
            except Exception as exc:
                raise KernelBuildError(f"nvcc build of {rendered.entry} failed:\n{exc}") from None
            self._kernels[key] = CompiledCudaKernel(
                rendered, module.get_function(rendered.entry), module
            )
        return self._kernels[key]

    def upload(self, array: np.ndarray):
        return self._driver.to_device(np.ascontiguousarray(array))

    def empty(self, nbytes: int):
        return self._driver.mem_alloc(max(nbytes, 1))

    def download(self, buffer, shape, dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        if out.nbytes:
            self._driver.memcpy_dtoh(out, buffer)
        return out

    def write(self, buffer, array: np.ndarray, blocking: bool = True):  # always sync
        if array.nbytes:
            self._driver.memcpy_htod(buffer, np.ascontiguousarray(array))
        return None

    def fill(self, buffer, pattern: np.ndarray, nbytes: int) -> None:
        """Repeat one element's bytes over the buffer, on the device."""
        setter = {1: "memset_d8", 2: "memset_d16", 4: "memset_d32"}.get(pattern.itemsize)
        if setter is None:  # 8-byte elements: no driver memset of that width
            self.write(buffer, np.full(nbytes // pattern.itemsize, pattern, pattern.dtype))
            return
        word = pattern.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[pattern.itemsize])
        getattr(self._driver, setter)(buffer, int(word), nbytes // pattern.itemsize)

    def copy(self, source, target, nbytes: int) -> None:
        self._driver.memcpy_dtod(target, source, nbytes)

    def launch(self, compiled, buffers):
        start, end = self._driver.Event(), self._driver.Event()
        launch = compiled.rendered.launch
        start.record()
        compiled.function(*buffers, block=launch.local, grid=launch.groups)
        end.record()
        return _CudaEvent(start, end)

    @staticmethod
    def event_seconds(event) -> float:
        return event.seconds()

    def bind(self, compiled, buffers):
        """Same contract as OpenCLDevice.bind: ``.launch()`` runs the kernel on these buffers."""
        return _BoundCudaKernel(self, compiled, tuple(buffers))

    def time(self, compiled, buffers, number=1, repeat=3, warmup=1) -> list[float]:
        for _ in range(warmup):
            self.launch(compiled, buffers).wait()
        costs = []
        for _ in range(repeat):
            events = [self.launch(compiled, buffers) for _ in range(number)]
            events[-1].wait()
            costs.append(sum(e.seconds() for e in events) / number)
        return costs


@dataclass
class _BoundCudaKernel:
    device: CUDADevice
    compiled: CompiledCudaKernel
    buffers: tuple

    def launch(self):
        return self.device.launch(self.compiled, self.buffers)


@dataclass
class _CudaEvent:
    start: object
    end: object

    def wait(self):
        self.end.synchronize()

    def seconds(self) -> float:
        self.end.synchronize()
        return self.start.time_till(self.end) * 1e-3
