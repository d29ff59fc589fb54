"""The conv2d_gemm template: 1 x 1 convolutions as the gemm's matrix product, on PoCL, nvcc,
Metal, and as a tuned choice in a model."""

import dataclasses

import numpy as np
import pytest

import coretune as ct
from coretune.graph import GraphBuilder, run_reference
from coretune.kernels.device import APPLE_M1, CUDA_SM80
from coretune.kernels.epilogue import Epilogue
from coretune.kernels.templates import templates_for
from coretune.kernels.templates.conv2d_gemm import Conv2dGemmTemplate
from coretune.kernels.templates.gemm_source import GemmSource
from coretune.kernels.workload import Workload
from coretune.module import compile as compile_module
from coretune.tuner.records import Record, TuningLog
from coretune.tuner.task import extract_tasks

from .kernel_harness import (
    NVCC,
    assert_matches_reference,
    metal_syntax_check,
    nvcc_compile,
    random_inputs,
    run_on_device,
    wide_vector_limits,
)
from .onnx_models import assert_close
from .test_template_gemm import covering_configs


def pointwise(batch, channels, height, width, out, bias=False, epilogue=None):
    """A 1 x 1 conv (+ per-channel bias) (+ relu | relu and a residual add | SiLU, whose sigmoid the
    epilogue evaluates 8 outputs at a time | a bias broadcast over rows)."""
    b = GraphBuilder()
    x = b.input("x", (batch, channels, height, width))
    operands = [x, b.input("w", (out, channels, 1, 1))] + ([b.input("b", (out,))] if bias else [])
    y = b.conv2d(*operands)
    if epilogue == "relu":
        y = b.relu(y)
    elif epilogue == "residual":
        y = b.relu(y) + b.input("residual", y.shape)
    elif epilogue == "silu":
        y = y * b.sigmoid(y)
    elif epilogue == "row-bias":
        y = y + b.input("row_bias", (1, 1, height, 1))
    return b.build(y)


# Pixels, channels and batch cover 1, 7, 13, 33 and sizes that no tile divides.
WORKLOADS = {
    "7x7-13to33-bias": pointwise(1, 13, 7, 7, 33, bias=True),
    "batch2-1x33-7to13-residual": pointwise(2, 7, 1, 33, 13, bias=True, epilogue="residual"),
    "13x7-33to7-silu": pointwise(1, 33, 13, 7, 7, epilogue="silu"),
    "batch3-1x1-1to1": pointwise(3, 1, 1, 1, 1, bias=True),
    "33x13-7to13-row-bias": pointwise(1, 7, 33, 13, 13, epilogue="row-bias"),
}
WIDE = {**WORKLOADS, "8x10-relu": pointwise(2, 13, 8, 10, 7, bias=True, epilogue="relu")}
RENDER_CHECKED = ["7x7-13to33-bias", "batch2-1x33-7to13-residual", "13x7-33to7-silu"]


@pytest.mark.parametrize("graph", WORKLOADS.values(), ids=WORKLOADS.keys())
def test_default_and_random_configs_match_numpy(device, graph):
    template = Conv2dGemmTemplate(Workload.from_graph(graph))
    configs = [template.default_config(device.limits)]
    configs += template.space(device.limits).sample(12, np.random.default_rng(5))
    configs += covering_configs(template, device.limits)
    for seed, config in enumerate(configs):
        arrays = random_inputs(template.workload, seed)
        got = run_on_device(device, template, config, arrays)
        assert_matches_reference(template, got, arrays, rtol=1e-5)


@pytest.mark.parametrize("name", ["batch2-1x33-7to13-residual", "13x7-33to7-silu", "8x10-relu"])
def test_float16_pixels_match_numpy(device, name):
    """float16 vectors of pixels (lanes .s0-.sf) on limits with 16-float native vectors, in
    the default where they tile the pixels (80 of them) and in sampled configs elsewhere."""
    graph = WIDE[name]
    template = Conv2dGemmTemplate(Workload.from_graph(graph))
    wide = wide_vector_limits(device)
    rng = np.random.default_rng(9)
    configs = [
        c for c in template.space(wide).sample(300, rng, max_tries=30_000) if c["vector"] == 16
    ]
    assert configs
    default = template.default_config(wide)
    if template.geometry.n % 16 == 0:
        assert default["vector"] == 16
    for seed, config in enumerate([default, *configs[:4]]):
        arrays = random_inputs(template.workload, 20 + seed)
        got = run_on_device(device, template, config, arrays, wide)
        assert_matches_reference(template, got, arrays, rtol=1e-5)
    assert not template.space(CUDA_SM80).is_valid(configs[0])  # no float16 on GPUs


@pytest.mark.parametrize("name", ["7x7-13to33-bias", "13x7-33to7-silu", "33x13-7to13-row-bias"])
def test_vectors_over_the_last_pixel_start_at_the_last_whole_vector(device, name):
    """49, 91 and 429 pixels: no whole number of float8 or float16 vectors. The last vector
    of a row of C is moved back to end at the edge (its loads stay whole vectors) and the
    lanes it recomputes are stored twice; every output is still written (NaN poison), right."""
    template = Conv2dGemmTemplate(Workload.from_graph(WORKLOADS[name]))
    wide = wide_vector_limits(device)
    space = template.space(wide)
    base = template.default_config(wide).to_json()
    for vector, tile_n, wg_n, interleave in ((8, 8, 1, True), (16, 16, 4, True), (8, 16, 2, False)):
        config = {**base, "vector": vector, "tile_n": tile_n, "wg_n": wg_n, "tile_m": 2}
        config.update(stage_local=False, wg_k=1, interleave_n=interleave)
        config = space.check(config)
        source = GemmSource(template.geometry, config, "int", Epilogue(template.workload))
        assert source.shifted
        arrays = random_inputs(template.workload, vector + tile_n)
        got = run_on_device(device, template, config, arrays, wide)
        assert_matches_reference(template, got, arrays, rtol=1e-5)


def test_the_float16_default_is_the_untuned_choice_without_vector_math(device):
    wide, narrow = (
        wide_vector_limits(device),
        dataclasses.replace(device.limits, preferred_vector_width=8),
    )
    relu = Conv2dGemmTemplate(Workload.from_graph(WIDE["8x10-relu"]))
    silu = Conv2dGemmTemplate(Workload.from_graph(pointwise(1, 7, 8, 10, 13, epilogue="silu")))
    small = Conv2dGemmTemplate(Workload.from_graph(WORKLOADS["7x7-13to33-bias"]))
    assert relu.untuned_choice(wide) and not relu.untuned_choice(narrow)
    assert not silu.untuned_choice(wide)  # exp in the epilogue: the direct conv was faster
    assert small.untuned_choice(wide) and small.untuned_choice(narrow)  # <= 64 pixels


def test_only_pointwise_unstrided_unpadded_ungrouped_convs_match():
    def conv(**attrs):
        b = GraphBuilder()
        x = b.input("x", (1, 4, 9, 9))
        kernel = attrs.pop("kernel", 1)
        w = b.input("w", (4, 4 // attrs.get("groups", 1), kernel, kernel))
        return Workload.from_graph(b.build(b.relu(b.conv2d(x, w, **attrs))))

    assert Conv2dGemmTemplate.matches(conv())
    for attrs in (
        {"strides": (2, 2)},
        {"padding": (1, 1, 1, 1)},
        {"groups": 2},
        {"kernel": 3},
    ):
        assert not Conv2dGemmTemplate.matches(conv(**attrs)), attrs
    workload = conv()
    names = [t.name for t in templates_for(workload)]
    assert names.index("conv2d_gemm") < names.index("conv2d_direct")
    assert not Conv2dGemmTemplate(workload).untuned_choice(CUDA_SM80)  # the log decides


def test_untuned_cpu_builds_take_the_gemm_for_images_of_at_most_64_pixels(device):
    """On PoCL: 7 x 7 (a ResNet's last stage) and 1 x 1 (a squeeze-and-excitation block) take
    the gemm, 9 x 8 the direct conv; both run correctly."""
    rng = np.random.default_rng(4)
    for (height, width), expected in (
        ((7, 7), "conv2d_gemm"),
        ((1, 1), "conv2d_gemm"),
        ((9, 8), "conv2d_direct"),
    ):
        b = GraphBuilder()
        x = b.input("x", (1, 33, height, width))
        w = b.param("w", rng.standard_normal((13, 33, 1, 1)).astype(np.float32))
        graph = b.build(b.sigmoid(b.conv2d(x, w)))
        module = compile_module(graph, device=device)
        assert [k.template for k in module.plan.kernels] == [expected]
        data = rng.standard_normal((1, 33, height, width)).astype(np.float32)
        assert_close(module.run(x=data)[0], run_reference(graph, {"x": data})[0])


def test_two_convs_of_one_source_run_their_own_grids(device):
    """1 x 1 convs of 64 and 128 rows of whole tiles over one image render the same source
    (no row count in it): each must run its own grid (before the fix, the second ran the
    first's 64 rows, and half its output was never written)."""
    rng = np.random.default_rng(6)
    b = GraphBuilder()
    x = b.input("x", (1, 16, 8, 8))
    convs = [
        b.relu(b.conv2d(x, b.param(f"w{rows}", rng.standard_normal((rows, 16, 1, 1), np.float32))))
        for rows in (64, 128)
    ]
    graph = b.build(*convs)
    module = compile_module(graph, device=device)
    kernels = module.plan.kernels
    assert [k.template for k in kernels] == ["conv2d_gemm"] * 2
    assert kernels[0].source == kernels[1].source
    data = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    for got, want in zip(module.run(x=data), run_reference(graph, {"x": data}), strict=True):
        assert_close(got, want)


def test_convs_that_differ_only_in_input_channels_share_one_program(device, tmp_path):
    """K is a kernel argument: 1 x 1 convs of 16 and 40 input channels (a dense block's, whose
    inputs grow by layer) render one source and each runs with its own K, also after a save
    and load; 13 channels leave a leftover k step that the others do not, so another source."""
    rng = np.random.default_rng(7)
    b = GraphBuilder()
    convs = []
    for channels in (16, 40, 13):
        x = b.input(f"x{channels}", (1, channels, 8, 8))
        w = b.param(f"w{channels}", rng.standard_normal((24, channels, 1, 1), np.float32))
        convs.append(b.relu(b.conv2d(x, w)))
    graph = b.build(*convs)
    module = compile_module(graph, device=device)
    kernels = module.plan.kernels
    assert [k.template for k in kernels] == ["conv2d_gemm"] * 3
    assert kernels[0].source == kernels[1].source != kernels[2].source
    assert [k.launch["scalars"] for k in kernels] == [
        [["m_len", "int", 24], ["k_len", "int", c]] for c in (16, 40, 13)
    ]
    data = {n: rng.standard_normal(t.shape).astype(np.float32) for n, t in graph.inputs.items()}
    module.save(tmp_path / "convs.ctm")
    again = ct.load(tmp_path / "convs.ctm", device=device)
    for run in (module.run(**data), again.run(**data)):
        for got, want in zip(run, run_reference(graph, data), strict=True):
            assert_close(got, want)


def test_gemm_convs_differing_only_in_channel_counts_share_one_program(device):
    """M and K are kernel arguments: where a config makes the same choices for 24 -> 40 and
    40 -> 72 channels (ragged rows or not, a leftover k step or not), it renders one source,
    and the second conv runs the program compiled for the first with its own counts."""
    templates = [
        Conv2dGemmTemplate(Workload.from_graph(pointwise(1, c, 5, 7, out, bias=True, epilogue=e)))
        for c, out, e in ((24, 40, "relu"), (40, 72, "relu"))
    ]
    configs = templates[0].space(device.limits).sample(60, np.random.default_rng(4))
    shared = 0
    for config in [templates[0].default_config(device.limits), *configs]:
        sources = [t.render(config, "opencl", device.limits).source for t in templates]
        if sources[0] != sources[1] or "m_len" not in sources[0]:
            continue
        shared += 1
        for seed, template in enumerate(templates):
            arrays = random_inputs(template.workload, seed)
            got = run_on_device(device, template, config, arrays)
            assert_matches_reference(template, got, arrays)
        if shared == 6:
            break
    assert shared >= 3, shared


def test_defaults_fit_every_target():
    for graph in WORKLOADS.values():
        template = Conv2dGemmTemplate(Workload.from_graph(graph))
        for limits in (CUDA_SM80, APPLE_M1):
            assert template.space(limits).is_valid(template.default_config(limits))


def test_a_model_takes_the_gemm_where_the_log_says_it_is_faster(device, tmp_path):
    """On an image bigger than 64 pixels, with SiLU, a build picks conv2d_gemm for a 1 x 1
    conv only from a log that measured it and the direct conv (and found it faster), and
    then runs the model correctly with it."""
    rng = np.random.default_rng(2)
    b = GraphBuilder()
    x = b.input("x", (2, 13, 9, 13))
    w = b.param("w", rng.standard_normal((33, 13, 1, 1)).astype(np.float32))
    bias = b.param("b", rng.standard_normal(33).astype(np.float32))
    y = b.conv2d(x, w, bias)
    graph = b.build(y * b.sigmoid(y))  # SiLU: the direct conv untuned, also on AVX-512
    tasks = {t.template_name: t for t in extract_tasks(graph)}
    assert set(tasks) == {"conv2d_direct", "conv2d_gemm"}
    assert [k.template for k in compile_module(graph, device=device).plan.kernels] == [
        "conv2d_direct"
    ]
    log = TuningLog(tmp_path / "log.jsonl")
    for name, cost in (("conv2d_gemm", 1e-6), ("conv2d_direct", 2e-6)):
        task = tasks[name]
        log.append(
            Record(
                task=task.key(),
                config=task.template().default_config(device.limits).to_json(),
                costs=(cost,),
                device=device.info.fingerprint(),
                strategy="random",
                trial=1,
                started=1000.0,
                finished=1000.5,
                coretune_version=ct.__version__,
            )
        )
    module = compile_module(graph, device=device, logs=[log.path])
    assert [k.template for k in module.plan.kernels] == ["conv2d_gemm"]
    data = rng.standard_normal((2, 13, 9, 13)).astype(np.float32)
    assert_close(module.run(x=data)[0], run_reference(graph, {"x": data})[0])


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("name", RENDER_CHECKED)
def test_cuda_rendering_compiles_with_nvcc(name, tmp_path):
    template = Conv2dGemmTemplate(Workload.from_graph(WORKLOADS[name]))
    space = template.space(CUDA_SM80)
    for config in [template.default_config(CUDA_SM80), *space.sample(2, np.random.default_rng(1))]:
        nvcc_compile(template.render(config, "cuda", CUDA_SM80), tmp_path)


@pytest.mark.parametrize("name", RENDER_CHECKED)
def test_metal_rendering_passes_a_syntax_check(name, tmp_path):
    """Syntax check with a shim header and g++ -- not a Metal compile (no Metal here)."""
    template = Conv2dGemmTemplate(Workload.from_graph(WORKLOADS[name]))
    space = template.space(APPLE_M1)
    for config in [template.default_config(APPLE_M1), *space.sample(2, np.random.default_rng(2))]:
        metal_syntax_check(template.render(config, "metal", APPLE_M1), tmp_path)
