"""Checks shared by every template test: device correctness, nvcc compile, Metal syntax."""

import dataclasses
import pathlib
import re
import shutil
import subprocess

import numpy as np

from coretune.graph.random import random_array
from coretune.kernels.device import DeviceLimits
from coretune.kernels.render import RenderedKernel

SHIM = pathlib.Path(__file__).with_name("metal_shim")
NVCC = shutil.which("nvcc")
CUDA_ARCH = "sm_80"


def random_inputs(workload, seed):
    rng = np.random.default_rng(seed)
    return [random_array(t.shape, t.dtype, rng) for _, t in workload.inputs]


def run_on_device(device, template, config, arrays, limits=None):
    """Run one config on the device with NaN-poisoned outputs; returns the outputs.
    ``limits`` (default the device's) may open configs the device would not pick, e.g.
    float16 vectors on a device whose native ones are 8 wide (OpenCL C has float16 on all)."""
    rendered = template.render(config, device.info.backend, limits or device.limits)
    compiled = device.compile(rendered)
    w = template.workload
    out_types = [w.types[name] for name in w.outputs]
    outs = [
        device.upload(
            np.full(t.shape, np.nan if t.dtype.startswith("float") else 0x5A, dtype=t.dtype)
        )
        for t in out_types
    ]
    device.launch(compiled, [device.upload(a) for a in arrays] + outs).wait()
    return [device.download(b, t.shape, t.dtype) for b, t in zip(outs, out_types, strict=True)]


def assert_matches_reference(template, got, arrays, rtol=1e-4):
    want = template.workload.reference(arrays)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        if w.dtype.kind == "f":
            assert not np.isnan(g).any() or np.isnan(w).any(), "output left NaN (poison) somewhere"
            scale = max(float(np.linalg.norm(w.astype(np.float64))), 1e-30)
            error = float(np.linalg.norm((g - w).astype(np.float64)))
            assert error <= rtol * scale, f"relative error {error / scale:.3g} > {rtol}"
        else:
            np.testing.assert_array_equal(g, w)


def wide_vector_limits(device):
    """The device's limits with 16-float native vectors (AVX-512), whatever the host has."""
    return dataclasses.replace(device.limits, preferred_vector_width=16)


def nvcc_compile(rendered: RenderedKernel, tmp_path) -> dict:
    """Compile CUDA source to a cubin with nvcc; returns ptxas' resource report.

    The kernels cannot RUN here (no GPU): this proves they compile for a current
    architecture and that their register/shared-memory use fits the config's promises.
    """
    source = tmp_path / f"{rendered.entry}.cu"
    source.write_text(rendered.source)
    result = subprocess.run(
        [
            NVCC,
            f"-arch={CUDA_ARCH}",
            "-cubin",
            "-Xptxas",
            "-v",
            "-o",
            str(source.with_suffix(".cubin")),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"nvcc failed:\n{result.stderr}\n{rendered.source}"
    registers = re.search(r"Used (\d+) registers", result.stderr)
    shared = re.search(r"(\d+) bytes smem", result.stderr)
    return {
        "registers": int(registers[1]) if registers else 0,
        "shared_bytes": int(shared[1]) if shared else 0,
    }


def check_cuda_resources(report: dict, limits: DeviceLimits, local_bytes: int, threads: int):
    assert report["shared_bytes"] <= limits.local_mem_bytes
    assert report["shared_bytes"] == local_bytes, (report, local_bytes)
    assert report["registers"] <= limits.max_registers_per_thread
    assert report["registers"] * threads <= 65536, "more registers than one SM has"


def metal_syntax_check(rendered: RenderedKernel, tmp_path):
    """A SYNTAX check of Metal source with a shim header and g++: not a Metal compile."""
    source = tmp_path / f"{rendered.entry}.metal"
    source.write_text(rendered.source)
    result = subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-fsyntax-only",
            "-Wno-attributes",
            f"-I{SHIM}",
            "-x",
            "c++",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"Metal syntax check failed:\n{result.stderr}\n{rendered.source}"
