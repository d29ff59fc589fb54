"""Device selection, fingerprints and the program cache on the default OpenCL device."""

import numpy as np
import pytest

from coretune.kernels import DeviceError, open_device
from coretune.kernels.opencl import KernelBuildError, list_devices
from coretune.kernels.render import Buffer, KernelSpec, Launch, Table, renderer_for


def test_default_device_is_there_and_fingerprinted(device):
    fingerprint = device.info.fingerprint()
    assert set(fingerprint) >= {
        "platform",
        "name",
        "driver_version",
        "compute_units",
        "max_work_group_size",
        "local_mem_bytes",
    }
    assert fingerprint == open_device("opencl:0").info.fingerprint()  # stable
    assert device.limits.max_work_group_size >= 1


def test_selection_by_index_and_name():
    devices = list_devices()
    assert open_device(devices[0].name.strip()[:6]).info.name == devices[0].name.strip()
    with pytest.raises(DeviceError, match="does not exist"):
        open_device(f"opencl:{len(devices)}")
    with pytest.raises(DeviceError, match="no OpenCL device matches 'no-such-gpu'"):
        open_device("no-such-gpu")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.skipif(
    _importable("cupy") or _importable("pycuda"), reason="a CUDA binding is installed here"
)
def test_cuda_without_a_binding_is_one_clear_error():
    with pytest.raises(DeviceError) as error:
        open_device("cuda:0")
    message = str(error.value)
    assert "CUDA needs CuPy or pycuda" in message and "pip install 'coretune[cuda]'" in message
    assert "\n" not in message


def test_cuda_runtime_choice_is_checked(monkeypatch):
    monkeypatch.setenv("CORETUNE_CUDA_RUNTIME", "opencl")
    with pytest.raises(DeviceError, match="CORETUNE_CUDA_RUNTIME='opencl': choose one of cupy"):
        open_device("cuda")
    with pytest.raises(DeviceError, match="write cuda or cuda:N"):
        open_device("cuda:first")


def test_cuda_fill_words_repeat_the_element_bytes():
    from coretune.kernels.cuda import fill_word

    assert fill_word(np.array(np.nan, np.float32)) == 0x7FC00000
    assert fill_word(np.array(0x5A, np.int64)) == 0x5A
    assert fill_word(np.array(-1, np.int8)) == 0xFF


def _copy_kernel(body):
    return KernelSpec(
        "copy",
        (Buffer("a", "float"), Buffer("b", "float", output=True)),
        body,
        Launch((1, 1, 1), (8, 1, 1)),
    )


def test_programs_are_cached_and_build_errors_are_reported(device):
    rendered = renderer_for("opencl").render(
        _copy_kernel("  b[LOCAL_ID(0)] = 2.0f * a[LOCAL_ID(0)];")
    )
    assert device.compile(rendered) is device.compile(rendered)
    a = np.arange(1, 9, dtype=np.float32)
    out = device.upload(np.full(8, np.nan, np.float32))
    device.launch(device.compile(rendered), [device.upload(a), out]).wait()
    np.testing.assert_array_equal(device.download(out, (8,), np.float32), 2 * a)
    times = device.time(device.compile(rendered), [device.upload(a), out], number=2, repeat=3)
    assert len(times) == 3 and all(t > 0 for t in times)
    broken = renderer_for("opencl").render(_copy_kernel("  b[0] = undefined_thing;"))
    with pytest.raises(KernelBuildError, match="undefined_thing"):
        device.compile(broken)


def _scale_kernel(factor: float, local: int = 8):
    """The same entry, macro and table names, different values: what kernels of one template
    on different shapes look like."""
    body = "  b[LOCAL_ID(0)] = SCALE * a[LOCAL_ID(0)] + factor[0];"
    spec = KernelSpec(
        "copy",
        (Buffer("a", "float"), Buffer("b", "float", output=True)),
        f"#define SCALE {factor:.1f}f\n{body}",
        Launch((1, 1, 1), (local, 1, 1)),
        tables=(Table("factor", "float", (factor,)),),
    )
    return renderer_for("opencl").render(spec)


def test_kernels_built_together_share_a_program_and_keep_their_own_names(device):
    kernels = [_scale_kernel(f) for f in (2.0, 3.0, 5.0)]
    device.compile_all(kernels)
    compiled = [device.compile(k) for k in kernels]
    assert len({id(c.program) for c in compiled}) == 1  # one build for the three
    a = np.arange(1, 9, dtype=np.float32)
    for factor, kernel in zip((2.0, 3.0, 5.0), compiled, strict=True):
        out = device.upload(np.full(8, np.nan, np.float32))
        device.bind(kernel, [device.upload(a), out]).launch().wait()
        np.testing.assert_array_equal(device.download(out, (8,), np.float32), factor * a + factor)


def test_one_source_launched_on_two_grids_runs_each_grid(device):
    """Kernels of one source may differ in their grids only (a gemm of 48 rows and one of 64
    in whole tiles): the cached program runs each caller's launch, not the first's."""
    body = "  b[GROUP_ID(0) * 4 + LOCAL_ID(0)] = 3.0f * a[GROUP_ID(0) * 4 + LOCAL_ID(0)];"
    renderer = renderer_for("opencl")
    kernels = [
        renderer.render(KernelSpec("grid", _copy_kernel(body).buffers, body, Launch(g, (4, 1, 1))))
        for g in ((1, 1, 1), (3, 1, 1))
    ]
    device.compile_all(kernels)
    a = np.arange(1, 13, dtype=np.float32)
    for groups, kernel in zip((1, 3), kernels, strict=True):
        out = device.upload(np.full(12, np.nan, np.float32))
        device.bind(device.compile(kernel), [device.upload(a), out]).launch().wait()
        got = device.download(out, (12,), np.float32)
        np.testing.assert_array_equal(got[: 4 * groups], 3 * a[: 4 * groups])
        assert np.isnan(got[4 * groups :]).all()


def test_a_kernel_that_does_not_build_with_others_is_named_alone(device):
    good = [_scale_kernel(f) for f in (7.0, 11.0)]
    broken = renderer_for("opencl").render(_copy_kernel("  b[0] = undefined_thing;"))
    device.compile_all([good[0], broken, good[1]])  # no error: compile() names the one that fails
    with pytest.raises(KernelBuildError, match="undefined_thing"):
        device.compile(broken)
    a = np.arange(1, 9, dtype=np.float32)
    out = device.upload(np.full(8, np.nan, np.float32))
    device.launch(device.compile(good[1]), [device.upload(a), out]).wait()
    np.testing.assert_array_equal(device.download(out, (8,), np.float32), 11 * a + 11)


BASIC_DRIVER_RUN = """
import numpy as np, coretune
from coretune.graph import run_reference
from coretune.graph.random import random_inputs
module = coretune.compile("examples/tiny_net.onnx")
graph = coretune.import_onnx("examples/tiny_net.onnx")
inputs = random_inputs(graph, seed=4)
got, want = module.run(**inputs)[0], run_reference(graph, inputs)[0]
np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
print(module.device.info.name, module.summary()["kernels"])
"""


def test_the_example_runs_on_pocls_single_threaded_driver():
    """POCL_DEVICES=basic (the README's choice for small models): commands run in the calling
    thread. The device is chosen when PoCL loads, so this runs in a fresh interpreter."""
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "POCL_DEVICES": "basic"}
    run = subprocess.run(
        [sys.executable, "-c", BASIC_DRIVER_RUN], cwd=root, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("basic-"), run.stdout


NO_PYOPENCL = """
import sys
sys.modules["pyopencl"] = None  # as on a GPU host without PoCL: any import of it fails
import coretune, coretune.cli, coretune.module, coretune.backend, coretune.tuner.driver
from coretune.kernels import DeviceError, open_device
graph = coretune.import_onnx("examples/tiny_net.onnx")
for spec in ("opencl", "cuda:0"):
    try:
        open_device(spec)
    except DeviceError as exc:
        print(spec, "->", exc)
"""


def test_the_opencl_runtime_is_imported_only_for_an_opencl_device():
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-c", NO_PYOPENCL], cwd=root, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("opencl -> pyopencl is not importable"), lines
    assert lines[1].startswith("cuda:0 -> CUDA") and "pyopencl" not in lines[1], lines
