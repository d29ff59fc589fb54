"""max_pool2d / avg_pool2d template on PoCL, nvcc and Metal, against the numpy reference.

Covers pool sizes, strides 2, asymmetric padding, dilation 2, ceil_mode (windows hanging
past the padding), count_include_pad, sizes 1, 7, 13, 33, a fused epilogue, windows made
only of padding, and NaN propagation through max.
"""

import numpy as np
import pytest

from coretune.graph import GraphBuilder
from coretune.kernels.device import APPLE_M1, CUDA_SM80
from coretune.kernels.space import InvalidConfig
from coretune.kernels.templates.pool import Pool2dTemplate
from coretune.kernels.workload import Workload

from .kernel_harness import (
    NVCC,
    assert_matches_reference,
    check_cuda_resources,
    metal_syntax_check,
    nvcc_compile,
    random_inputs,
    run_on_device,
)

RANDOM_CONFIGS = 20


def pool(op, shape, epilogue=False, math=False, **attrs):
    b = GraphBuilder()
    x = b.input("x", shape)
    y = b.op(op, x, **attrs)
    if epilogue:  # relu, scale and a residual add fused after the pool
        y = b.relu(y) * 2.0 + b.input("residual", y.shape)
    if math:  # tanh and sigmoid: evaluated 8 outputs at a time (Epilogue.store_tile)
        y = b.tanh(y) * b.sigmoid(y) + b.input("residual", y.shape)
    return b.build(y)


POOLS = {
    "max-1x1": pool("max_pool2d", (1, 1, 1, 1), pool_size=(1, 1)),
    "max-7c-13-s2-ceil": pool(
        "max_pool2d",
        (2, 7, 13, 13),
        pool_size=(3, 3),
        strides=(2, 2),
        padding=(1, 1, 1, 1),
        ceil_mode=True,
    ),
    "max-13c-dil2-asym": pool(
        "max_pool2d",
        (1, 13, 33, 7),
        epilogue=True,
        pool_size=(2, 3),
        strides=(2, 1),
        padding=(1, 0, 1, 1),
        dilation=(2, 2),
        ceil_mode=True,
    ),
    "avg-7c-incl-pad-ceil": pool(
        "avg_pool2d",
        (2, 7, 13, 13),
        pool_size=(3, 3),
        strides=(2, 2),
        padding=(1, 2, 2, 1),
        ceil_mode=True,
        count_include_pad=True,
    ),
    "avg-33c-dil-asym": pool(
        "avg_pool2d",
        (1, 33, 7, 33),
        epilogue=True,
        pool_size=(3, 2),
        strides=(1, 2),
        padding=(0, 1, 2, 0),
        dilation=(2, 1),
        ceil_mode=True,
    ),
    "avg-1x1": pool("avg_pool2d", (1, 1, 1, 1), pool_size=(1, 1), count_include_pad=True),
    "avg-7c-13-math": pool(
        "avg_pool2d", (2, 7, 13, 33), math=True, pool_size=(3, 3), strides=(2, 2), ceil_mode=True
    ),
}


@pytest.mark.parametrize("name", list(POOLS))
def test_default_and_random_configs_match_numpy(device, name):
    template = Pool2dTemplate(Workload.from_graph(POOLS[name]))
    seed = list(POOLS).index(name)
    share = -(-RANDOM_CONFIGS // len(POOLS))  # >= 20 random configs in all
    configs = [template.default_config(device.limits)]
    configs += template.space(device.limits).sample(
        share, np.random.default_rng(seed), max_tries=5000
    )
    for offset, config in enumerate(configs):
        arrays = random_inputs(template.workload, 10 * seed + offset)
        assert_matches_reference(template, run_on_device(device, template, config, arrays), arrays)


def test_padding_only_windows_and_nan_follow_the_reference(device):
    """Taps at -5 and -2 are both padding: max gives -inf, the mean 0/0 = NaN, as numpy;
    a NaN input wins every max window that holds it."""
    for op in ("max_pool2d", "avg_pool2d"):
        graph = pool(
            op,
            (1, 2, 7, 6),
            pool_size=(2, 2),
            strides=(3, 3),
            padding=(5, 5, 0, 0),
            dilation=(3, 3),
        )
        template = Pool2dTemplate(Workload.from_graph(graph))
        arrays = random_inputs(template.workload, 0)
        arrays[0][0, 1, 4, 4] = np.nan  # a tap of windows (2, 1), (2, 2)
        want = template.workload.reference(arrays)[0]
        for config in (
            template.default_config(device.limits),
            *template.space(device.limits).sample(2, np.random.default_rng(0)),
        ):
            got = run_on_device(device, template, config, arrays)[0]
            np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
        assert np.isnan(want).any() and (op == "avg_pool2d" or np.isneginf(want).any())


def test_invalid_configs_are_rejected_with_a_reason(device):
    template = Pool2dTemplate(Workload.from_graph(POOLS["max-7c-13-s2-ceil"]))
    space = template.space(device.limits)
    config = dict(template.default_config(device.limits))
    assert "wg_x * ow_block must be < 2x" in space.why_invalid({**config, "wg_x": 64})
    tiny = type(device.limits)(
        max_work_group_size=16, max_work_item_sizes=(16, 16, 16), local_mem_bytes=1024
    )
    with pytest.raises(InvalidConfig, match="work-group size 32 > device maximum 16"):
        template.render({**config, "wg_x": 8, "wg_y": 4}, "opencl", tiny)


GPU_CASES = ["max-13c-dil2-asym", "avg-7c-incl-pad-ceil", "avg-7c-13-math"]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("name", GPU_CASES)
def test_cuda_rendering_compiles_with_nvcc(name, tmp_path):
    template = Pool2dTemplate(Workload.from_graph(POOLS[name]))
    for config in [
        template.default_config(CUDA_SM80),
        *template.space(CUDA_SM80).sample(2, np.random.default_rng(1)),
    ]:
        report = nvcc_compile(template.render(config, "cuda", CUDA_SM80), tmp_path)
        check_cuda_resources(
            report,
            CUDA_SM80,
            template.local_mem_bytes(config),
            int(np.prod(template.work_group(config))),
        )


@pytest.mark.parametrize("name", GPU_CASES)
def test_metal_rendering_passes_a_syntax_check(name, tmp_path):
    """Syntax check with a shim header and g++ -- not a Metal compile (no Metal here)."""
    template = Pool2dTemplate(Workload.from_graph(POOLS[name]))
    for config in [
        template.default_config(APPLE_M1),
        *template.space(APPLE_M1).sample(2, np.random.default_rng(2)),
    ]:
        metal_syntax_check(template.render(config, "metal", APPLE_M1), tmp_path)
