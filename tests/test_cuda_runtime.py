"""The CUDA runtime on a real GPU: memory, fills, events, build and launch errors, a whole model.

Skipped with the reason where no CUDA device can be opened (CI, and every CPU machine). The
template, model and ONNX node tests run on a GPU too with ``pytest --device cuda:0``.
"""

import numpy as np
import pytest

from coretune.graph.random import random_inputs
from coretune.kernels import DeviceError
from coretune.kernels.opencl import KernelBuildError
from coretune.kernels.render import Buffer, KernelSpec, Launch, renderer_for

from . import onnx_models
from .onnx_models import assert_close, run_onnxruntime


def _scale_kernel(body="  b[i] = 2.0f * a[i];", threads=64, blocks=3):
    guarded = (
        f"  long i = (long)GROUP_ID(0) * {threads} + LOCAL_ID(0);\n  if (i < 129) {{\n{body}\n  }}"
    )
    return KernelSpec(
        "scale",
        (Buffer("a", "float"), Buffer("b", "float", output=True)),
        guarded,
        Launch((blocks, 1, 1), (threads, 1, 1)),
    )


def test_memory_round_trips_and_fills(cuda_device):
    rng = np.random.default_rng(0)
    for array in (rng.standard_normal(1027).astype(np.float32), rng.integers(-9, 9, 33)):
        buffer = cuda_device.upload(array)
        np.testing.assert_array_equal(cuda_device.download(buffer, array.shape, array.dtype), array)
    buffer = cuda_device.empty(13 * 4)
    cuda_device.fill(buffer, np.array(np.nan, np.float32), 13 * 4)
    assert np.isnan(cuda_device.download(buffer, (13,), np.float32)).all()
    cuda_device.fill(buffer, np.array(0x5A, np.int64), 6 * 8)
    np.testing.assert_array_equal(cuda_device.download(buffer, (6,), np.int64), 0x5A)


def test_a_kernel_runs_is_timed_with_events_and_is_cached(cuda_device):
    rendered = renderer_for("cuda").render(_scale_kernel())
    compiled = cuda_device.compile(rendered)
    assert cuda_device.compile(rendered) is compiled
    a = np.random.default_rng(1).standard_normal(129).astype(np.float32)
    out = cuda_device.empty(a.nbytes)
    cuda_device.fill(out, np.array(np.nan, np.float32), a.nbytes)
    event = cuda_device.launch(compiled, [cuda_device.upload(a), out])
    assert cuda_device.event_seconds(event) > 0
    np.testing.assert_array_equal(cuda_device.download(out, a.shape, a.dtype), 2 * a)
    times = cuda_device.time(compiled, [cuda_device.upload(a), out], number=4, repeat=3)
    assert len(times) == 3 and all(0 < t < 1 for t in times)


def test_build_and_launch_errors_are_the_projects_own(cuda_device):
    broken = renderer_for("cuda").render(_scale_kernel("  b[i] = undefined_thing;"))
    with pytest.raises(KernelBuildError, match="undefined_thing"):
        cuda_device.compile(broken)
    too_big = renderer_for("cuda").render(_scale_kernel(threads=4096, blocks=1))
    buffers = [cuda_device.empty(129 * 4), cuda_device.empty(129 * 4)]
    with pytest.raises(DeviceError, match="CUDA launch of scale"):
        cuda_device.launch(cuda_device.compile(too_big), buffers).wait()


def test_the_fingerprint_is_the_gpus(cuda_device):
    fingerprint = cuda_device.info.fingerprint()
    assert fingerprint["backend"] == "cuda" and fingerprint["platform"].startswith("CUDA sm_")
    assert cuda_device.limits.warp_size == 32 and cuda_device.limits.max_groups[1] == 65535
    assert set(cuda_device.versions()) >= {"cuda_runtime", "cuda_driver"}


def test_a_model_with_pads_runs_as_kernels_and_matches_onnxruntime(cuda_device, tmp_path):
    from coretune.module import compile as compile_module
    from coretune.module import load

    model, inputs = onnx_models.cnn()
    module = compile_module(model, device=cuda_device)
    summary = module.summary()
    assert summary["host_steps"] == [] and summary["pad_copies"] == 0
    assert any(k.group.kind == "pad" for k in module.plan.kernels)
    for got, want in zip(module.run(**inputs), run_onnxruntime(model, inputs), strict=True):
        assert_close(got, want, "cnn on CUDA", rtol=1e-4)
    module.save(tmp_path / "cnn.ctm")
    again = load(tmp_path / "cnn.ctm", device=cuda_device)
    other = random_inputs(module.plan.graph, seed=3)
    for a, b in zip(again.run(**other), module.run(**other), strict=True):
        np.testing.assert_array_equal(a, b)
