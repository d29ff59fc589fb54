import pytest


@pytest.fixture(scope="session")
def device():
    """The default OpenCL device (PoCL from pocl-binary-distribution when nothing else)."""
    from coretune.kernels.opencl import OpenCLDevice

    return OpenCLDevice()
