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


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # no CuPy, or no NVRTC library beside it
        pytest.skip(f"NVRTC is not available here: {type(exc).__name__}: {exc}")
    return nvrtc


@pytest.mark.parametrize("name", ["cnn", "mobilenet_block", "transformer_layer"])
def test_the_tasks_random_configs_compile_with_nvrtc(name):
    """NVRTC (what CuPy builds kernels with) has no host headers: every kernel of a CUDA plan,
    and random configs of each of its tuning tasks, must compile there. No GPU is needed."""
    import numpy as np

    from coretune.tuner.task import extract_tasks

    nvrtc = _nvrtc()
    model, _ = onnx_models.MODELS[name]()
    graph = import_onnx(model)
    plan = build_plan(graph, CUDA_SM80, {"backend": "cuda"}, dialect="cuda")
    sources = {kernel.source: kernel.entry for kernel in plan.kernels}
    rng = np.random.default_rng(0)
    for task in extract_tasks(graph):
        template = task.template()
        for config in template.space(CUDA_SM80).sample(3, rng):
            rendered = template.render(config, "cuda", CUDA_SM80)
            sources[rendered.source] = rendered.entry
    for source, entry in sources.items():
        program = nvrtc.createProgram(source, f"{entry}.cu", [], [])
        try:
            nvrtc.compileProgram(program, ["-std=c++17", "-arch=compute_90"])
        except Exception:
            pytest.fail(f"NVRTC rejected {entry}:\n{nvrtc.getProgramLog(program)}")
