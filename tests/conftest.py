"""The device the device tests run on: the default OpenCL device (PoCL when nothing else), or
the one given by ``pytest --device SPEC`` or ``CORETUNE_TEST_DEVICE=SPEC`` (e.g. cuda:0).
Where that device cannot be opened (no GPU, no CUDA binding), every test that needs it is
skipped with the reason; the others run as usual."""

import os

import pytest

DEVICE_VARIABLE = "CORETUNE_TEST_DEVICE"


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default=os.environ.get(DEVICE_VARIABLE) or None,
        help=f"device for the device tests (default: ${DEVICE_VARIABLE}, else opencl:0)",
    )


@pytest.fixture(scope="session")
def device_spec(request) -> str | None:
    return request.config.getoption("--device")


@pytest.fixture(scope="session")
def device(device_spec):
    from coretune.kernels import DeviceError, open_device

    try:
        return open_device(device_spec)
    except DeviceError as exc:
        pytest.skip(f"device {device_spec or 'opencl'} is not available here: {exc}")


@pytest.fixture(scope="session")
def backend_device(device) -> str:
    """The ONNX backend's name for the test device's kind ("OPENCL" or "CUDA")."""
    return device.info.backend.upper()


@pytest.fixture(scope="session")
def cuda_device():
    """The first CUDA GPU, for the CUDA runtime's own tests; skipped where there is none."""
    from coretune.kernels import DeviceError, open_device

    try:
        return open_device("cuda:0")
    except DeviceError as exc:
        pytest.skip(f"no CUDA device here: {exc}")
