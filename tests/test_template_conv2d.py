"""conv2d (direct, Winograd, depthwise) and conv2d_transpose templates on PoCL, nvcc, Metal.

Each template runs its default config on every workload plus at least 20 random valid
configs spread over the workloads (one compile each keeps the suite fast), against the numpy
reference, with NaN-poisoned outputs and random non-zero inputs. Shapes hit sizes 1, 7, 13
and 33 in channels and space, tiles that do not divide them, groups, stride 2, asymmetric
padding and dilation 2.
"""

import numpy as np
import pytest

from coretune.graph import GraphBuilder
from coretune.kernels.device import APPLE_M1, CUDA_SM80
from coretune.kernels.space import InvalidConfig
from coretune.kernels.templates.base import TemplateMismatch
from coretune.kernels.templates.conv2d_depthwise import DepthwiseConv2dTemplate
from coretune.kernels.templates.conv2d_direct import Conv2dDirectTemplate
from coretune.kernels.templates.conv2d_transpose import Conv2dTransposeTemplate
from coretune.kernels.templates.conv2d_winograd import WEIGHT_TRANSFORM, Conv2dWinogradTemplate
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

RANDOM_CONFIGS = 20


def conv(shape, out, kernel, bias=False, **attrs):
    b = GraphBuilder()
    x = b.input("x", shape)
    w = b.input("w", (out, shape[1] // attrs.get("groups", 1), *kernel))
    return b.build(b.conv2d(x, w, *([b.input("b", (out,))] if bias else []), **attrs))


def conv_transpose(shape, out, kernel, bias=False, **attrs):
    b = GraphBuilder()
    x = b.input("x", shape)
    w = b.input("w", (shape[1], out // attrs.get("groups", 1), *kernel))
    return b.build(b.conv2d_transpose(x, w, *([b.input("b", (out,))] if bias else []), **attrs))


def conv_transpose_tanh(shape, out, kernel, **attrs):
    """A decoder's last layer: conv_transpose + bias + tanh, tanh 8 outputs at a time."""
    b = GraphBuilder()
    x, w = b.input("x", shape), b.input("w", (shape[1], out, *kernel))
    return b.build(b.tanh(b.conv2d_transpose(x, w, b.input("b", (out,)), **attrs)))


def conv_bn_relu_add(shape, out, kernel, anchor="conv2d", **attrs):
    """conv + bias + batch_norm + relu + residual add: the fused epilogue of a ResNet block."""
    b = GraphBuilder()
    x = b.input("x", shape)
    groups = attrs.get("groups", 1)
    transpose = anchor == "conv2d_transpose"
    weight = (shape[1], out // groups) if transpose else (out, shape[1] // groups)
    y = b.op(anchor, x, b.input("w", (*weight, *kernel)), b.input("bias", (out,)), **attrs)
    stats = [b.input(name, (out,)) for name in ("gamma", "beta", "mean", "var")]
    y = b.relu(b.batch_norm(y, *stats))
    return b.build(y + b.input("residual", y.shape))


def conv_silu_residual(shape, out, kernel, **attrs):
    """conv + bias + SiLU (x * sigmoid(x)) + residual: sigmoid's exp runs a vector of output
    columns at a time (Epilogue.store_lanes), the residual read at clamped positions."""
    b = GraphBuilder()
    y = b.conv2d(
        b.input("x", shape),
        b.input("w", (out, shape[1] // attrs.get("groups", 1), *kernel)),
        b.input("bias", (out,)),
        **attrs,
    )
    return b.build(y * b.sigmoid(y) + b.input("residual", y.shape))


DIRECT = {
    "1x1-all-ones": conv((1, 1, 1, 1), 1, (1, 1)),
    "7c-13-s2-asym": conv((2, 7, 13, 13), 13, (3, 3), strides=(2, 2), padding=(0, 1, 2, 1)),
    "33c-g3-dil2": conv(
        (1, 33, 7, 33), 33, (3, 3), padding=(2, 2, 2, 2), dilation=(2, 2), groups=3
    ),
    "12c-g4-1x1-s12": conv((1, 12, 13, 7), 8, (1, 1), bias=True, strides=(1, 2), groups=4),
    "13c-3x2-bias": conv((1, 13, 33, 13), 7, (3, 2), bias=True, padding=(1, 0, 0, 1)),
    "7c-13-silu-residual": conv_silu_residual((1, 7, 13, 13), 13, (3, 3), padding=(1, 1, 1, 1)),
}
WINOGRAD = {
    "1x1-pad1": conv((1, 1, 1, 1), 1, (3, 3), padding=(1, 1, 1, 1)),
    "7c-13": conv((2, 7, 13, 13), 13, (3, 3), padding=(1, 1, 1, 1)),
    "33c-asym": conv((1, 33, 7, 33), 7, (3, 3), bias=True, padding=(0, 2, 1, 0)),
    "12c-g4": conv((1, 12, 13, 7), 8, (3, 3), padding=(1, 1, 1, 1), groups=4),
    "7c-13-silu-residual": conv_silu_residual((1, 7, 13, 13), 13, (3, 3), padding=(1, 1, 1, 1)),
}
DEPTHWISE = {
    "1x1-pad1": conv((1, 1, 1, 1), 1, (3, 3), padding=(1, 1, 1, 1)),
    "7c-13-s2-asym": conv(
        (2, 7, 13, 13), 7, (3, 3), strides=(2, 2), padding=(0, 1, 2, 1), groups=7
    ),
    "13c-x2-dil2": conv(
        (1, 13, 33, 7), 26, (3, 3), bias=True, padding=(2, 2, 2, 2), dilation=(2, 2), groups=13
    ),
    "33c-5x3": conv((1, 33, 7, 33), 33, (5, 3), padding=(2, 1, 2, 1), groups=33),
    "7c-silu-residual": conv_silu_residual(
        (1, 7, 13, 33), 7, (3, 3), padding=(1, 1, 1, 1), groups=7
    ),
}
TRANSPOSE = {
    "1x1": conv_transpose((1, 1, 1, 1), 1, (1, 1)),
    "7c-s2-outpad": conv_transpose(
        (2, 7, 7, 13), 13, (3, 3), strides=(2, 2), padding=(1, 0, 1, 1), output_padding=(1, 0)
    ),
    "12c-g3-s23-dil": conv_transpose(
        (1, 12, 5, 6),
        6,
        (4, 3),
        bias=True,
        strides=(2, 3),
        padding=(0, 1, 2, 0),
        output_padding=(1, 2),
        dilation=(2, 1),
        groups=3,
    ),
    "13c-dil2-33": conv_transpose(
        (1, 13, 13, 4), 33, (3, 3), padding=(1, 1, 1, 1), dilation=(2, 2)
    ),
    "7c-s2-tanh": conv_transpose_tanh(
        (1, 7, 7, 13), 3, (4, 4), strides=(2, 2), padding=(1, 1, 1, 1)
    ),
}
TEMPLATES = [
    (Conv2dDirectTemplate, DIRECT),
    (Conv2dWinogradTemplate, WINOGRAD),
    (DepthwiseConv2dTemplate, DEPTHWISE),
    (Conv2dTransposeTemplate, TRANSPOSE),
]
CASES = [(cls, name, graph) for cls, graphs in TEMPLATES for name, graph in graphs.items()]
CASE_IDS = [f"{cls.name}-{name}" for cls, name, _ in CASES]


def check_on_device(device, template, configs, seed=0, arrays=None):
    for offset, config in enumerate(configs):
        inputs = arrays if arrays is not None else random_inputs(template.workload, seed + offset)
        got = run_on_device(device, template, config, template.prepare_weights(inputs))
        assert_matches_reference(template, got, inputs)


@pytest.mark.parametrize("cls, name, graph", CASES, ids=CASE_IDS)
def test_default_and_random_configs_match_numpy(device, cls, name, graph):
    template = cls(Workload.from_graph(graph))
    graphs = dict(TEMPLATES)[cls]
    share = -(-RANDOM_CONFIGS // len(graphs))  # >= 20 random configs per template in all
    seed = list(graphs).index(name)
    configs = [template.default_config(device.limits)]
    configs += template.space(device.limits).sample(
        share, np.random.default_rng(seed), max_tries=5000
    )
    assert len(configs) == share + 1 or name.startswith("1x1"), "space too small to sample"
    check_on_device(device, template, configs, seed=10 * seed)


@pytest.mark.parametrize("name", ["7c-13-s2-asym", "33c-g3-dil2", "13c-3x2-bias"])
def test_direct_float8_columns_match_numpy(device, name):
    """float8 accumulators (lanes .s0-.s7), staged or not, with column tails to mask."""
    template = Conv2dDirectTemplate(Workload.from_graph(DIRECT[name]))
    rng = np.random.default_rng(list(DIRECT).index(name))
    sampled = template.space(device.limits).sample(300, rng, max_tries=20_000)
    eights = [c for c in sampled if c["vector"] == 8]
    configs = [next(c for c in eights if c["stage_input"] == staged) for staged in (False, True)]
    check_on_device(device, template, configs, seed=40)


@pytest.mark.parametrize("name", ["33c-g3-dil2", "13c-3x2-bias", "7c-13-silu-residual"])
def test_direct_float16_columns_match_numpy(device, name):
    """float16 accumulators (lanes .s0-.sf), staged or not, on limits with 16-float native
    vectors; none where the device's are narrower (GPUs)."""
    template = Conv2dDirectTemplate(Workload.from_graph(DIRECT[name]))
    wide = wide_vector_limits(device)
    rng = np.random.default_rng(list(DIRECT).index(name))
    sixteens = [
        c for c in template.space(wide).sample(400, rng, max_tries=40_000) if c["vector"] == 16
    ]
    configs = [next(c for c in sixteens if c["stage_input"] == staged) for staged in (False, True)]
    for offset, config in enumerate(configs):
        inputs = random_inputs(template.workload, 70 + offset)
        got = run_on_device(device, template, config, inputs, wide)
        assert_matches_reference(template, got, inputs)
    assert not template.space(CUDA_SM80).is_valid(configs[0])


UNPADDED = {
    "7c-13x33": conv((2, 7, 15, 35), 13, (3, 3), bias=True),
    "33c-7x13-s2-dil2": conv((1, 33, 17, 29), 7, (3, 3), strides=(2, 2), dilation=(2, 2)),
    "12c-g4-2x3": conv((1, 12, 9, 14), 8, (2, 3), groups=4),
    "1x1-7x7": conv((1, 13, 7, 7), 33, (1, 1)),
    "7c-13x13-s23": conv((1, 7, 27, 41), 13, (3, 3), strides=(2, 3)),  # lanes 3 apart
    "7c-13x33-silu-residual": conv_silu_residual((1, 7, 15, 35), 13, (3, 3)),
}


@pytest.mark.parametrize("name", UNPADDED)
def test_direct_in_bounds_reads_match_numpy(device, name):
    """Unpadded convs read taps as whole vectors with no masks; where the group tile does
    not divide the output, the last tile moves back to the edge and recomputes part of its
    neighbour's outputs (sizes 7, 13, 33: most tiles do not divide)."""
    template = Conv2dDirectTemplate(Workload.from_graph(UNPADDED[name]))
    rng = np.random.default_rng(list(UNPADDED).index(name))
    sampled = template.space(device.limits).sample(200, rng, max_tries=20_000)
    in_bounds = [c for c in sampled if template.reads_in_bounds(c)]
    g = template.geometry
    shifted = [c for c in in_bounds if g.out_width % template.tile_width(c)]
    configs = [template.default_config(device.limits), *in_bounds[:5], *shifted[:3]]
    assert template.reads_in_bounds(configs[0]) and shifted, "no in-bounds configs sampled"
    check_on_device(device, template, configs, seed=60)


@pytest.mark.parametrize("padding", [(0, 0, 0, 0), (1, 1, 1, 1)], ids=["unpadded", "padded"])
def test_direct_convs_differing_only_in_channel_counts_share_one_program(device, padding):
    """An ungrouped conv takes its channel counts as kernel arguments: 16 -> 7 and 40 -> 13
    channels render one source for each config (whole-vector, masked and staged reads), and
    the second conv runs the program compiled for the first with its own. (In a batch, the
    output's batch stride is in the source.)"""
    templates = [
        Conv2dDirectTemplate(Workload.from_graph(conv((1, c, 9, 13), out, (3, 3), padding=padding)))
        for c, out in ((16, 7), (40, 13))
    ]
    configs = templates[0].space(device.limits).sample(40, np.random.default_rng(3))
    by_reads = {}  # a few configs of each way of reading the input
    for c in [templates[0].default_config(device.limits), *configs]:
        by_reads.setdefault((c["stage_input"], templates[0].reads_in_bounds(c)), []).append(c)
    assert len(by_reads) >= 2, by_reads.keys()
    for config in [c for group in by_reads.values() for c in group[:3]]:
        sources = [t.render(config, "opencl", device.limits).source for t in templates]
        assert sources[0] == sources[1]
        for seed, template in enumerate(templates):
            arrays = random_inputs(template.workload, seed)
            got = run_on_device(device, template, config, arrays)
            assert_matches_reference(template, got, arrays)


def test_depthwise_convs_differing_only_in_channels_share_one_program(device):
    """A depthwise conv's channel counts are kernel arguments: 7 and 13 channels render one
    source, and the second conv runs the program compiled for the first with its own."""
    templates = [
        DepthwiseConv2dTemplate(
            Workload.from_graph(conv((1, c, 11, 9), c, (3, 3), padding=(1,) * 4, groups=c))
        )
        for c in (7, 13)
    ]
    configs = templates[0].space(device.limits).sample(4, np.random.default_rng(5))
    for config in [templates[0].default_config(device.limits), *configs]:
        sources = [t.render(config, "opencl", device.limits).source for t in templates]
        assert sources[0] == sources[1]
        for seed, template in enumerate(templates):
            arrays = random_inputs(template.workload, seed)
            assert_matches_reference(
                template, run_on_device(device, template, config, arrays), arrays
            )


UNPADDED_DEPTHWISE = {
    "7c-13x33": conv((2, 7, 15, 35), 7, (3, 3), bias=True, groups=7),
    "13c-x2-s2-dil2": conv((1, 13, 17, 29), 26, (3, 3), strides=(2, 2), dilation=(2, 2), groups=13),
    "33c-5x3": conv((1, 33, 11, 9), 33, (5, 3), groups=33),
    "7c-13x33-silu-residual": conv_silu_residual((2, 7, 15, 35), 7, (3, 3), groups=7),
}


@pytest.mark.parametrize("name", UNPADDED_DEPTHWISE)
def test_depthwise_in_bounds_reads_match_numpy(device, name):
    """The depthwise template's unchecked reads of an unpadded input, tiles moved back to the
    edge where they do not divide the output (sizes 7, 13, 33)."""
    template = DepthwiseConv2dTemplate(Workload.from_graph(UNPADDED_DEPTHWISE[name]))
    rng = np.random.default_rng(list(UNPADDED_DEPTHWISE).index(name))
    sampled = template.space(device.limits).sample(200, rng, max_tries=20_000)
    in_bounds = [c for c in sampled if template.reads_in_bounds(c)]
    g = template.geometry
    shifted = [c for c in in_bounds if g.out_width % (c["wg_x"] * c["ow_block"])]
    configs = [template.default_config(device.limits), *in_bounds[:5], *shifted[:3]]
    assert template.reads_in_bounds(configs[0]) and shifted, "no in-bounds configs sampled"
    check_on_device(device, template, configs, seed=70)


def test_direct_in_bounds_reads_keep_the_fused_epilogue(device):
    """Recomputed outputs of a moved-back tile go through bias, batch norm, relu and the
    residual add a second time: the stored values must not change."""
    graph = conv_bn_relu_add((1, 8, 15, 13), 8, (3, 3))
    template = Conv2dDirectTemplate(Workload.from_graph(graph))
    space = template.space(device.limits)
    config = {**template.default_config(device.limits), "wg_x": 1, "vector": 8, "ow_block": 1}
    config = space.check({**config, "oh_block": 2, "wg_y": 1})
    g = template.geometry
    assert template.reads_in_bounds(config)
    assert (g.out_height, g.out_width) == (13, 11)  # 2-row, 8-column tiles: both move back
    check_on_device(device, template, [config], arrays=fused_block_inputs(template, 5))


def fused_block_inputs(template, seed):
    arrays = random_inputs(template.workload, seed)
    names = [name for name, _ in template.workload.inputs]
    var = names.index(template.workload.nodes[1].inputs[4])
    arrays[var] = np.abs(arrays[var]) + 0.5  # a variance: positive
    return arrays


@pytest.mark.parametrize(
    "cls",
    [
        Conv2dDirectTemplate,
        Conv2dWinogradTemplate,
        DepthwiseConv2dTemplate,
        Conv2dTransposeTemplate,
    ],
)
def test_conv_bias_batch_norm_relu_residual_epilogue(device, cls):
    if cls is Conv2dTransposeTemplate:
        graph = conv_bn_relu_add(
            (1, 8, 7, 13),
            7,
            (3, 3),
            anchor="conv2d_transpose",
            strides=(2, 2),
            padding=(1, 1, 0, 1),
        )
    else:
        groups = 8 if cls is DepthwiseConv2dTemplate else 1
        graph = conv_bn_relu_add((2, 8, 13, 7), 8, (3, 3), padding=(1, 1, 1, 1), groups=groups)
    template = cls(Workload.from_graph(graph))
    configs = [
        template.default_config(device.limits),
        *template.space(device.limits).sample(2, np.random.default_rng(3)),
    ]
    for seed, config in enumerate(configs):
        check_on_device(device, template, [config], arrays=fused_block_inputs(template, seed))


def test_winograd_applies_only_to_3x3_stride_1_undilated():
    assert Conv2dWinogradTemplate.matches(Workload.from_graph(WINOGRAD["7c-13"]))
    for graph in (DIRECT["7c-13-s2-asym"], DIRECT["33c-g3-dil2"], DIRECT["13c-3x2-bias"]):
        workload = Workload.from_graph(graph)
        assert Conv2dDirectTemplate.matches(workload)
        with pytest.raises(TemplateMismatch):
            Conv2dWinogradTemplate(workload)


def test_winograd_is_the_untuned_choice_on_gpus_only(device):
    from coretune.graph.executor import _choose
    from coretune.kernels.templates import templates_for

    workload = Workload.from_graph(WINOGRAD["7c-13"])
    candidates = templates_for(workload)
    assert [c.name for c in candidates] == ["conv2d_winograd", "conv2d_direct"]
    chosen = {
        limits.warp_size: _choose(candidates, workload, limits, {}, None, "")[0].name
        for limits in (device.limits, CUDA_SM80)
    }
    assert chosen == {1: "conv2d_direct", 32: "conv2d_winograd"}


def test_depthwise_and_transpose_match_only_their_workloads():
    assert DepthwiseConv2dTemplate.matches(Workload.from_graph(DEPTHWISE["13c-x2-dil2"]))
    assert not DepthwiseConv2dTemplate.matches(Workload.from_graph(DIRECT["33c-g3-dil2"]))
    assert not Conv2dDirectTemplate.matches(Workload.from_graph(TRANSPOSE["7c-s2-outpad"]))


def test_winograd_weight_transform_matches_g_w_gt():
    template = Conv2dWinogradTemplate(Workload.from_graph(WINOGRAD["12c-g4"]))
    arrays = random_inputs(template.workload, 0)
    prepared = template.prepare_weights(arrays)
    assert prepared[0] is arrays[0] and prepared[1].shape == (4 * 3 * 2 * 16,)
    u = prepared[1].reshape(4, 3, 2, 4, 4)  # groups, in/group, out/group, 4, 4
    w = arrays[1].reshape(4, 2, 3, 3, 3)  # groups, out/group, in/group, 3, 3
    g = WEIGHT_TRANSFORM
    np.testing.assert_allclose(u[1, 2, 0], g @ w[1, 0, 2] @ g.T, rtol=1e-6)


def test_invalid_configs_are_rejected_with_a_reason(device):
    template = Conv2dDirectTemplate(Workload.from_graph(DIRECT["33c-g3-dil2"]))
    space = template.space(device.limits)
    config = dict(template.default_config(device.limits))
    assert "ic_chunk must divide" in space.why_invalid({**config, "ic_chunk": 2})
    assert "at most 64 accumulators" in space.why_invalid(
        {**config, "oc_block": 8, "oh_block": 4, "ow_block": 2, "vector": 2}
    )
    assert "wg_x * ow_block * vector must be < 2x" in space.why_invalid({**config, "wg_x": 64})
    tiny = type(device.limits)(
        max_work_group_size=64, max_work_item_sizes=(64, 64, 64), local_mem_bytes=64
    )
    with pytest.raises(InvalidConfig, match="local memory .* > device maximum 64 B"):
        template.render({**config, "stage_input": True}, "opencl", tiny)
    winograd = Conv2dWinogradTemplate(Workload.from_graph(WINOGRAD["33c-asym"]))
    with pytest.raises(InvalidConfig, match="work-group size 128 > device maximum 64"):
        winograd.render(
            {**winograd.default_config(tiny), "wg_x": 32, "wg_y": 4, "wg_z": 1}, "opencl", tiny
        )


GPU_CASES = [
    (Conv2dDirectTemplate, DIRECT["7c-13-s2-asym"]),
    (Conv2dDirectTemplate, conv_bn_relu_add((1, 32, 33, 33), 32, (3, 3), padding=(1, 1, 1, 1))),
    (Conv2dDirectTemplate, UNPADDED["7c-13x33"]),
    (Conv2dDirectTemplate, UNPADDED["7c-13x33-silu-residual"]),
    (DepthwiseConv2dTemplate, UNPADDED_DEPTHWISE["13c-x2-s2-dil2"]),
    (DepthwiseConv2dTemplate, UNPADDED_DEPTHWISE["7c-13x33-silu-residual"]),
    (Conv2dWinogradTemplate, WINOGRAD["33c-asym"]),
    (Conv2dWinogradTemplate, WINOGRAD["7c-13-silu-residual"]),
    (DepthwiseConv2dTemplate, DEPTHWISE["13c-x2-dil2"]),
    (Conv2dTransposeTemplate, TRANSPOSE["12c-g3-s23-dil"]),
    (Conv2dTransposeTemplate, TRANSPOSE["7c-s2-tanh"]),
]
GPU_IDS = [
    "direct",
    "direct-fused",
    "direct-unpadded",
    "direct-unpadded-silu",
    "depthwise-unpadded",
    "depthwise-unpadded-silu",
    "winograd",
    "winograd-silu",
    "depthwise",
    "transpose",
    "transpose-tanh",
]


def in_bounds_config(template, limits) -> list:
    """The unchecked-read variant of the default, where the template and conv have one."""
    if not isinstance(template, Conv2dDirectTemplate | DepthwiseConv2dTemplate):
        return []
    config = {**template.default_config(limits), "stage_input": False}
    return [config] if template.reads_in_bounds(config) else []


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("cls, graph", GPU_CASES, ids=GPU_IDS)
def test_cuda_rendering_compiles_with_nvcc(cls, graph, tmp_path):
    template = cls(Workload.from_graph(graph))
    configs = [
        template.default_config(CUDA_SM80),
        *template.space(CUDA_SM80).sample(2, np.random.default_rng(1)),
        *in_bounds_config(template, CUDA_SM80),
    ]
    for config in configs:
        report = nvcc_compile(template.render(config, "cuda", CUDA_SM80), tmp_path)
        check_cuda_resources(
            report,
            CUDA_SM80,
            template.local_mem_bytes(config),
            int(np.prod(template.work_group(config))),
        )


@pytest.mark.parametrize("cls, graph", GPU_CASES, ids=GPU_IDS)
def test_metal_rendering_passes_a_syntax_check(cls, graph, tmp_path):
    """Syntax check with a shim header and g++ -- not a Metal compile (no Metal here)."""
    template = cls(Workload.from_graph(graph))
    for config in [
        template.default_config(APPLE_M1),
        *template.space(APPLE_M1).sample(2, np.random.default_rng(2)),
        *in_bounds_config(template, APPLE_M1),
    ]:
        metal_syntax_check(template.render(config, "metal", APPLE_M1), tmp_path)


@pytest.mark.parametrize("cls, graph", GPU_CASES, ids=GPU_IDS)
def test_default_configs_are_valid_on_every_target(device, cls, graph):
    template = cls(Workload.from_graph(graph))
    for limits in (device.limits, CUDA_SM80, APPLE_M1):
        assert template.space(limits).is_valid(template.default_config(limits))
