"""Helper processes that build a model's kernels into PoCL's cache on the other cores."""

import numpy as np
import pytest

from coretune.kernels import open_device, parallel_build
from coretune.kernels.opencl import _program_source, list_devices
from coretune.kernels.parallel_build import BuildHelper, HelperLaunch, part_count, split
from coretune.kernels.render import Buffer, KernelSpec, Launch, renderer_for
from coretune.module import compile as compile_module

from .onnx_models import assert_close, cnn, run_onnxruntime


@pytest.fixture
def pocl(device):
    if device.info.platform != "Portable Computing Language":
        pytest.skip(f"helpers build for PoCL's kernel cache; the test device is {device.info.name}")
    return device


def test_parts_are_consecutive_and_even():
    assert split(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split([1, 2], 1) == [[1, 2]]


def test_one_part_per_core_with_enough_kernels_each(monkeypatch):
    monkeypatch.setenv("CORETUNE_BUILD_JOBS", "4")
    per_part = parallel_build.MIN_KERNELS_PER_PART
    assert part_count(100 * per_part) == 4
    assert part_count(2 * per_part) == 2
    assert part_count(per_part - 1) == 1
    monkeypatch.setenv("CORETUNE_BUILD_JOBS", "1")
    assert part_count(100 * per_part) == 1


def _scaled(factor: float, local: int):
    spec = KernelSpec(
        "scale",
        (Buffer("a", "float"), Buffer("b", "float", output=True)),
        f"  const int i = GROUP_ID(0) * {local} + LOCAL_ID(0);\n  b[i] = {factor:.1f}f * a[i];",
        Launch((3, 1, 1), (local, 1, 1)),
    )
    return renderer_for("opencl").render(spec)


def test_a_helper_builds_and_launches_each_kernel_into_the_cache(pocl, tmp_path, monkeypatch):
    """What the model's own first run then finds: one work-group function per kernel."""
    monkeypatch.setenv("POCL_CACHE_DIR", str(tmp_path))  # the helper's cache, not ours
    kernels = [_scaled(f, local) for f, local in ((2.0, 4), (3.0, 8), (5.0, 16))]
    source, names = _program_source([(str(i), k) for i, k in enumerate(kernels)])
    launches = [
        HelperLaunch(name, k.launch.global_size, k.launch.local, (4 * 48, 4 * 48))
        for name, k in zip(names, kernels, strict=True)
    ]
    helper = BuildHelper(list_devices().index(pocl.device), pocl.info.name, source, (), launches)
    try:
        assert helper.wait_built(timeout=120)
        assert helper._process.wait(timeout=120) == 0
    finally:
        helper.close()
    built = {path.name for path in tmp_path.rglob("*.so")}
    assert built >= {f"{name}.so" for name in names}


def _helpers_started(monkeypatch) -> list:
    started = []

    class Recorded(BuildHelper):
        def __init__(self, *args):
            super().__init__(*args)
            started.append(self)
            self.built = None

        def wait_built(self, timeout):
            self.built = super().wait_built(timeout)
            return self.built

    monkeypatch.setattr(parallel_build, "BuildHelper", Recorded)
    monkeypatch.setattr(parallel_build, "MIN_KERNELS_PER_PART", 1)
    monkeypatch.setenv("CORETUNE_BUILD_JOBS", "3")
    return started


def test_a_model_built_in_parts_matches_onnxruntime(pocl, monkeypatch):
    started = _helpers_started(monkeypatch)
    model, inputs = cnn(batch=1, width=7, size=13)
    module = compile_module(model, device=open_device(pocl.info.name))  # an empty program cache
    assert [helper.built for helper in started] == [True, True]  # three parts: we build one
    assert all(helper._process.returncode is not None for helper in started)  # all stopped
    bound = [p for kind, p in module._executor._actions if kind == "kernel"]
    assert len({k.kernel.program.int_ptr for k in bound}) == 3
    for _ in range(2):
        (got,) = module.run(**inputs)
        assert_close(got, run_onnxruntime(model, inputs)[0])


def test_a_helper_that_dies_costs_time_never_a_result(pocl, monkeypatch):
    started = _helpers_started(monkeypatch)
    monkeypatch.setattr(BuildHelper, "python", "false")  # exits at once, builds nothing
    model, inputs = cnn(batch=1, width=5, size=7)
    module = compile_module(model, device=open_device(pocl.info.name))
    assert started and all(helper.built is False for helper in started)
    assert all(helper._process.returncode == 1 for helper in started)
    (got,) = module.run(**inputs)
    assert_close(got, run_onnxruntime(model, inputs)[0])
    assert np.isfinite(got).all()


def test_a_helper_that_cannot_start_costs_nothing(pocl, monkeypatch):
    started = _helpers_started(monkeypatch)
    monkeypatch.setattr(BuildHelper, "python", "/nonexistent/python")
    model, inputs = cnn(batch=1, width=5, size=7)
    module = compile_module(model, device=open_device(pocl.info.name))
    assert started and all(helper.built is False for helper in started)
    (got,) = module.run(**inputs)
    assert_close(got, run_onnxruntime(model, inputs)[0])
