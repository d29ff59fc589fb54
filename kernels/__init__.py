"""coretune.kernels: parameterised kernel templates, dialect renderers and device runtimes."""

from .device import DeviceInfo, DeviceLimits
from .opencl import DeviceError, KernelBuildError, OpenCLDevice
from .render import RENDERERS, renderer_for


def open_device(spec: str | None = None):
    """A device by string: None/'opencl' (the first OpenCL device), 'opencl:N', 'cuda',
    'cuda:N', or a substring of an OpenCL device's name."""
    if spec and (spec == "cuda" or spec.startswith("cuda:")):
        from .cuda import CUDADevice

        return CUDADevice(spec)
    return OpenCLDevice(spec)


__all__ = [
    "RENDERERS",
    "DeviceError",
    "DeviceInfo",
    "DeviceLimits",
    "KernelBuildError",
    "OpenCLDevice",
    "open_device",
    "renderer_for",
]
