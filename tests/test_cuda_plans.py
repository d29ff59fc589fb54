"""Whole models planned for a CUDA GPU compile with nvcc: every kernel the executor would launch
there (pads as kernels, not rectangle copies), for the limits of a real GPU. The kernels cannot
run here; tests/test_cuda_runtime.py and ``pytest --device cuda:0`` run them where a GPU is."""

import subprocess

import pytest

from coretune.graph.exchange.importer import import_onnx
from coretune.graph.executor import build_plan
from coretune.kernels.device import CUDA_SM80

from . import onnx_models
from .kernel_harness import CUDA_ARCH, NVCC

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


@pytest.mark.parametrize("name", ["cnn", "transformer_layer"])
def test_every_kernel_of_a_cuda_plan_compiles(name, tmp_path):
    model, _ = onnx_models.MODELS[name]()
    plan = build_plan(import_onnx(model), CUDA_SM80, {"backend": "cuda"}, dialect="cuda")
    assert plan.kernels and not [s for s in plan.summary()["host_steps"]]
    assert plan.summary()["pad_copies"] == plan.summary()["pads_in_place"] == 0
    assert any(k.group.kind == "pad" for k in plan.kernels) == (name == "cnn")
    sources = {kernel.source: kernel.entry for kernel in plan.kernels}
    files = []
    for index, (source, entry) in enumerate(sources.items()):
        assert source.startswith("#define INFINITY_F"), f"{entry} is not CUDA source"
        files.append(tmp_path / f"k{index}_{entry}.cu")
        files[-1].write_text(source)
    done = subprocess.run(
        [NVCC, f"-arch={CUDA_ARCH}", "-cubin", "-odir", str(tmp_path), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(tmp_path.glob("*.cubin"))) == len(files)
