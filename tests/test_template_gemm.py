"""The gemm template: dense and matmul (+ epilogues) on PoCL, nvcc, Metal."""

import numpy as np
import pytest

from coretune.graph import GraphBuilder
from coretune.kernels.device import APPLE_M1, CUDA_SM80
from coretune.kernels.space import Config, InvalidConfig
from coretune.kernels.templates.gemm import GemmTemplate
from coretune.kernels.workload import Workload

from .kernel_harness import (
    NVCC,
    assert_matches_reference,
    check_cuda_resources,
    metal_syntax_check,
    nvcc_compile,
    random_inputs,
    run_on_device,
    wide_vector_limits,
)


def dense(data, units, bias=None, relu_residual=False, gelu=False):
    """data @ weight(units, K).T (+ bias of shape ``bias``) (-> relu + residual) (-> Gelu,
    whose erf the epilogue evaluates 8 outputs at a time)."""
    b = GraphBuilder()
    x, w = b.input("x", data), b.input("w", (units, data[-1]))
    y = b.dense(x, w, b.input("bias", bias)) if bias is not None else b.dense(x, w)
    if relu_residual:
        y = b.relu(y) + b.input("residual", y.shape)
    if gelu:
        y = y * 0.5 * (b.erf(y * 0.7071067811865476) + 1.0)
    return b.build(y)


def matmul(a, b_shape, epilogue=False):
    b = GraphBuilder()
    y = b.matmul(b.input("a", a), b.input("b", b_shape))
    return b.build(b.sigmoid(y) * 2.0 if epilogue else y)


# M, N, K cover 1, 7, 13, 33 and sizes that no tile divides.
WORKLOADS = {
    "dense-7x13x33-bias": dense((7, 33), 13, bias=(13,)),
    "dense-vector-33x13-scalar-bias": dense((13,), 33, bias=(1,)),  # 1-D data: M = 1
    "dense-2x7x13-relu-residual": dense((2, 7, 13), 33, bias=(33,), relu_residual=True),
    "batched-broadcast": matmul((2, 1, 7, 13), (3, 13, 40), epilogue=True),  # N = 5 float8
    "dense-33x7x13-gelu": dense((33, 13), 7, bias=(7,), gelu=True),  # tiles hang over N
    "dense-2x7x33-gelu": dense((2, 7, 33), 13, gelu=True),
    "vector-by-batch": matmul((13,), (2, 13, 7)),  # vectors of B rows hang over N
    "batch-by-vector": matmul((3, 33, 1), (1,)),  # K = N = 1
}


def covering_configs(template, limits):
    """float8 vectors in each inner loop that takes them, and k split over work-items (random
    configs may miss them on small spaces): the valid ones, each in the first group shape
    that fits."""
    space = template.space(limits)
    base = {"unroll_k": 2, "interleave_n": True, "stage_local": False, "tile_k": 8}
    loops = [
        {"vector": 8, "tile_n": 2, "wg_k": 1},  # direct dense
        {"vector": 8, "tile_n": 8, "wg_k": 1},  # direct matmul
        {"vector": 1, "tile_n": 2, "wg_k": 8},  # direct, split k
        {"vector": 8, "tile_n": 8, "wg_k": 1, "stage_local": True, "tile_k": 8},
    ]
    configs = []
    for loop in loops:
        for group in ({"tile_m": 4, "wg_m": 2, "wg_n": 2}, {"tile_m": 1, "wg_m": 1, "wg_n": 1}):
            config = Config({**base, **loop, **group})
            if space.is_valid(config):
                configs.append(config)
                break
    return configs


@pytest.mark.parametrize("graph", WORKLOADS.values(), ids=WORKLOADS.keys())
def test_default_and_random_configs_match_numpy(device, graph):
    template = GemmTemplate(Workload.from_graph(graph))
    configs = [template.default_config(device.limits)]
    configs += template.space(device.limits).sample(20, np.random.default_rng(11))
    configs += covering_configs(template, device.limits)
    assert len(set(configs)) >= 21
    for seed, config in enumerate(configs):
        arrays = random_inputs(template.workload, seed)
        got = run_on_device(device, template, config, arrays)
        assert_matches_reference(template, got, arrays, rtol=1e-5)


@pytest.mark.parametrize("name", ["batched-broadcast", "dense-2x7x33-gelu", "dense-7x13x33-bias"])
def test_float16_vectors_match_numpy(device, name):
    """float16 vectors (lanes .s0-.sf) along n of B (matmul; the last one over the edge) or
    along k (dense), direct and staged, on limits with 16-float native vectors; none on GPUs."""
    template = GemmTemplate(Workload.from_graph(WORKLOADS[name]))
    wide = wide_vector_limits(device)
    sampled = template.space(wide).sample(400, np.random.default_rng(4), max_tries=40_000)
    configs = [c for c in sampled if c["vector"] == 16][:6]
    assert configs
    for seed, config in enumerate(configs):
        arrays = random_inputs(template.workload, 30 + seed)
        got = run_on_device(device, template, config, arrays, wide)
        assert_matches_reference(template, got, arrays, rtol=1e-5)
    assert not template.space(CUDA_SM80).is_valid(configs[0])


def test_larger_problem_with_every_tile_ragged(device):
    """Edges of every tile at once: M, N, K = 67, 45, 101 with 8-row tiles, float4/float8,
    and k split over 8 work-items."""
    template = GemmTemplate(Workload.from_graph(dense((67, 101), 45, bias=(45,))))
    for stage, vector, split in ((False, 4, 1), (False, 8, 1), (True, 8, 1), (False, 4, 8)):
        config = {
            "tile_m": 8,
            "tile_n": 8 if stage else 1,
            "wg_m": 2,
            "wg_n": 4,
            "wg_k": split,
            "vector": vector,
            "interleave_n": True,
            "stage_local": stage,
            "tile_k": 16 if stage else 8,
            "unroll_k": 4,
        }
        arrays = random_inputs(template.workload, 3)
        got = run_on_device(device, template, config, arrays)
        assert_matches_reference(template, got, arrays, rtol=1e-5)


def test_tiles_that_divide_c_store_without_guards(device):
    """M, N = 32, 64 in 8 x 4 tiles: no store is guarded (and the results hold); one more
    row of M brings the row guard back, and only it."""
    config = {
        "tile_m": 4,
        "tile_n": 2,
        "wg_m": 2,
        "wg_n": 2,
        "wg_k": 1,
        "vector": 8,
        "interleave_n": True,
        "stage_local": False,
        "tile_k": 8,
        "unroll_k": 2,
    }
    for rows, guards in ((32, set()), (33, {"m < 33"})):
        graph = dense((rows, 13), 64, bias=(64,), relu_residual=True)
        template = GemmTemplate(Workload.from_graph(graph))
        source = template.render(config, "opencl", device.limits).source
        assert {g for g in ("m < 32", "m < 33", "n < 64") if g in source} == guards
        arrays = random_inputs(template.workload, rows)
        got = run_on_device(device, template, config, arrays)
        assert_matches_reference(template, got, arrays, rtol=1e-5)


def test_matches_float_dense_and_matmul_with_elementwise_epilogues_only():
    assert all(GemmTemplate.matches(Workload.from_graph(g)) for g in WORKLOADS.values())
    b = GraphBuilder()
    ints = b.matmul(b.input("a", (7, 13), "int32"), b.input("b", (13, 5), "int32"))
    b2 = GraphBuilder()
    rows = b2.softmax(b2.dense(b2.input("x", (7, 13)), b2.input("w", (5, 13))), axis=-1)
    for graph in (b.build(ints), b2.build(rows)):
        assert not GemmTemplate.matches(Workload.from_graph(graph))


def test_defaults_fit_every_target():
    for graph in WORKLOADS.values():
        template = GemmTemplate(Workload.from_graph(graph))
        for limits in (CUDA_SM80, APPLE_M1):
            assert template.space(limits).is_valid(template.default_config(limits))


def test_invalid_configs_are_rejected_with_a_reason(device):
    template = GemmTemplate(Workload.from_graph(WORKLOADS["batched-broadcast"]))
    space = template.space(device.limits)
    good = template.default_config(device.limits).to_json()
    assert "at most 64 accumulators" in space.why_invalid({**good, "tile_m": 8, "tile_n": 16})
    assert "vector must divide tile_n" in space.why_invalid(
        {**good, "stage_local": False, "tile_n": 2, "vector": 4, "wg_n": 4}
    )
    assert "tile_k is only used with stage_local" in space.why_invalid(
        {**good, "stage_local": False, "tile_k": 16}
    )
    assert "keep it 1 with stage_local" in space.why_invalid(
        {**good, "stage_local": True, "tile_k": 8, "unroll_k": 1, "wg_k": 8}
    )
    tiny = type(device.limits)(
        max_work_group_size=256, max_work_item_sizes=(256, 256, 256), local_mem_bytes=1024
    )
    staged = {
        **good,
        "stage_local": True,
        "tile_k": 32,
        "unroll_k": 4,
        "tile_m": 1,
        "tile_n": 1,
        "vector": 1,
        "wg_m": 4,
        "wg_n": 8,
        "wg_k": 1,
        "interleave_n": True,
    }
    with pytest.raises(InvalidConfig, match=r"local memory 1792 B > device maximum 1024 B"):
        template.render(staged, "opencl", tiny)


RENDER_CHECKED = [
    "dense-2x7x13-relu-residual",
    "batched-broadcast",
    "vector-by-batch",
    "dense-33x7x13-gelu",
]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("name", RENDER_CHECKED)
def test_cuda_rendering_compiles_with_nvcc(name, tmp_path):
    template = GemmTemplate(Workload.from_graph(WORKLOADS[name]))
    space = template.space(CUDA_SM80)
    configs = [template.default_config(CUDA_SM80), *space.sample(2, np.random.default_rng(1))]
    for config in configs + covering_configs(template, CUDA_SM80):
        report = nvcc_compile(template.render(config, "cuda", CUDA_SM80), tmp_path)
        threads = config["wg_m"] * config["wg_n"] * config["wg_k"]
        check_cuda_resources(report, CUDA_SM80, template.local_mem_bytes(config), threads)


@pytest.mark.parametrize("name", RENDER_CHECKED)
def test_metal_rendering_passes_a_syntax_check(name, tmp_path):
    """Syntax check with a shim header and g++ -- not a Metal compile (no Metal here)."""
    template = GemmTemplate(Workload.from_graph(WORKLOADS[name]))
    space = template.space(APPLE_M1)
    configs = [template.default_config(APPLE_M1), *space.sample(2, np.random.default_rng(2))]
    for config in configs + covering_configs(template, APPLE_M1):
        metal_syntax_check(template.render(config, "metal", APPLE_M1), tmp_path)
