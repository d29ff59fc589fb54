"""Templates that store their output into, or read a residual from, the interior of a bigger
(padded) buffer.

The executor lets a conv, pool or gemm write its output straight into the buffer of the pad
that reads it (Workload.placed), so the pad needs no copy per run; the tensor's other readers,
e.g. the residual add of a ResNet block, then read it there (Workload.input_layouts). Here
each such template runs its default and random configs with the output placed in a NaN-filled
padded buffer (the interior must match numpy, and not one element of the border may be
written), and with its residual read from a padded buffer whose border is NaN (a read outside
the interior would show in the output).
"""

import math

import numpy as np
import pytest

from coretune.graph import GraphBuilder
from coretune.kernels.device import APPLE_M1, CUDA_SM80
from coretune.kernels.templates import TEMPLATES
from coretune.kernels.templates.base import TemplateMismatch
from coretune.kernels.templates.injective import InjectiveTemplate
from coretune.kernels.workload import Workload

from .kernel_harness import (
    NVCC,
    assert_matches_reference,
    metal_syntax_check,
    nvcc_compile,
    random_inputs,
)
from .test_template_conv2d import conv, conv_bn_relu_add, conv_silu_residual, conv_transpose

RANDOM_CONFIGS = 3


def pool(shape):
    b = GraphBuilder()
    return b.build(b.relu(b.max_pool2d(b.input("x", shape), pool_size=(3, 3), strides=(2, 2))))


def dense_bias_relu(m, n, k):
    b = GraphBuilder()
    x, w, bias = b.input("x", (m, k)), b.input("w", (n, k)), b.input("b", (n,))
    return b.build(b.relu(b.dense(x, w, bias)))


def batch_matmul(batch, m, n, k):
    b = GraphBuilder()
    return b.build(b.matmul(b.input("a", (batch, m, k)), b.input("b", (batch, k, n))))


CASES = [
    ("conv2d_direct", conv_bn_relu_add((1, 7, 13, 13), 13, (3, 3), padding=(1, 1, 1, 1))),
    ("conv2d_direct", conv((1, 7, 13, 33), 13, (3, 3), bias=True)),  # in-bounds reads
    ("conv2d_depthwise", conv((1, 13, 7, 33), 13, (3, 3), bias=True, groups=13)),
    ("conv2d_winograd", conv((1, 7, 13, 13), 13, (3, 3), padding=(1, 1, 1, 1))),
    ("conv2d_transpose", conv_transpose((1, 7, 7, 13), 13, (3, 3), strides=(2, 2))),
    ("pool2d", pool((1, 7, 13, 33))),
    ("gemm", dense_bias_relu(7, 33, 13)),
    ("gemm", batch_matmul(2, 7, 13, 33)),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]


def padded_layout(shape, pad_width):
    """A buffer of ``shape`` padded by ``pad_width`` (pairs per axis): its shape, the element
    strides and offset of its interior (a Workload layout) and the interior's slices."""
    pairs = list(zip(pad_width[0::2], pad_width[1::2], strict=True))
    padded = tuple(d + before + after for d, (before, after) in zip(shape, pairs, strict=True))
    strides = tuple(math.prod(padded[axis + 1 :]) for axis in range(len(padded)))
    offset = sum(before * s for (before, _), s in zip(pairs, strides, strict=True))
    interior = tuple(slice(b, b + d) for (b, _), d in zip(pairs, shape, strict=True))
    return padded, (strides, offset), interior


def placed(template_cls, graph, pad_width):
    """The template on the graph's workload, its output placed in a buffer padded by
    ``pad_width``; returns the template and the padded shape."""
    workload = Workload.from_graph(graph)
    padded, layout, _ = padded_layout(workload.types[workload.outputs[0]].shape, pad_width)
    return template_cls(workload.placed(*layout)), padded


def reading_residual(workload, graph, pad_width):
    """The workload reading its input "residual" from a buffer padded by ``pad_width``;
    returns it, the residual's position among the inputs, the padded shape and interior."""
    position = list(graph.inputs).index("residual")  # workload inputs keep the graph's order
    name = workload.inputs[position][0]
    padded, layout, interior = padded_layout(workload.types[name].shape, pad_width)
    return workload.reading(name, *layout), position, padded, interior


def positive_variances(workload, arrays):
    names = [name for name, _ in workload.inputs]
    for node in workload.nodes:
        if node.op == "batch_norm":
            var = names.index(node.inputs[4])
            arrays[var] = np.abs(arrays[var]) + 0.5
    return arrays


def pad_width_for(rank):
    return (0, 0) * (rank - 2) + (2, 1, 1, 3)  # uneven on both padded axes


@pytest.mark.parametrize("name, graph", CASES, ids=IDS)
def test_placed_output_fills_the_interior_and_leaves_the_border(device, name, graph):
    rank = len(graph.types[graph.outputs[0]].shape)
    pad_width = pad_width_for(rank)
    template, padded_shape = placed(TEMPLATES[name], graph, pad_width)
    interior = tuple(
        slice(before, before + d)
        for before, d in zip(pad_width[0::2], graph.types[graph.outputs[0]].shape, strict=True)
    )
    border = np.ones(padded_shape, bool)
    border[interior] = False
    space = template.space(device.limits)
    configs = [template.default_config(device.limits)]
    configs += space.sample(RANDOM_CONFIGS, np.random.default_rng(len(name)))
    for seed, config in enumerate(configs):
        arrays = positive_variances(template.workload, random_inputs(template.workload, seed))
        compiled = device.compile(template.render(config, device.info.backend, device.limits))
        buffer = device.upload(np.full(padded_shape, np.nan, np.float32))
        buffers = [device.upload(a) for a in template.prepare_weights(arrays)]
        device.launch(compiled, [*buffers, buffer]).wait()
        got = device.download(buffer, padded_shape, np.float32)
        assert np.isnan(got[border]).all(), f"{config}: wrote outside the interior"
        assert_matches_reference(template, [np.ascontiguousarray(got[interior])], arrays)


def pool_residual(shape):
    b = GraphBuilder()
    y = b.max_pool2d(b.input("x", shape), pool_size=(3, 3), strides=(2, 2))
    return b.build(b.relu(y) + b.input("residual", y.shape))


def dense_residual(m, n, k):
    b = GraphBuilder()
    x, w, bias = b.input("x", (m, k)), b.input("w", (n, k)), b.input("b", (n,))
    return b.build(b.relu(b.dense(x, w, bias)) + b.input("residual", (m, n)))


RESIDUAL_CASES = [
    ("conv2d_direct", conv_bn_relu_add((1, 7, 13, 13), 7, (3, 3), padding=(1, 1, 1, 1))),
    # vector math: the residual is read at clamped positions for outputs past the edge
    ("conv2d_direct", conv_silu_residual((1, 7, 13, 33), 13, (3, 3), padding=(1, 1, 1, 1))),
    ("conv2d_depthwise", conv_silu_residual((1, 13, 7, 33), 13, (3, 3), groups=13)),
    ("conv2d_winograd", conv_bn_relu_add((1, 7, 13, 13), 13, (3, 3), padding=(1, 1, 1, 1))),
    (
        "conv2d_transpose",
        conv_bn_relu_add((1, 7, 7, 13), 13, (3, 3), "conv2d_transpose", strides=(2, 2)),
    ),
    ("pool2d", pool_residual((1, 7, 13, 33))),
    ("gemm", dense_residual(7, 33, 13)),
]


@pytest.mark.parametrize(
    "name, graph", RESIDUAL_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(RESIDUAL_CASES)]
)
def test_a_residual_read_from_the_interior_of_a_padded_buffer(device, name, graph):
    workload = Workload.from_graph(graph)
    pad_width = pad_width_for(len(workload.types[workload.outputs[0]].shape))
    reading, position, padded_shape, interior = reading_residual(workload, graph, pad_width)
    template = TEMPLATES[name](reading)
    out_type = workload.types[workload.outputs[0]]
    configs = [template.default_config(device.limits)]
    configs += template.space(device.limits).sample(RANDOM_CONFIGS, np.random.default_rng(3))
    for seed, config in enumerate(configs):
        arrays = positive_variances(workload, random_inputs(workload, seed))
        placed_residual = np.full(padded_shape, np.nan, np.float32)
        placed_residual[interior] = arrays[position]
        buffers = [device.upload(a) for a in template.prepare_weights(arrays)]
        buffers[position] = device.upload(placed_residual)
        output = device.upload(np.full(out_type.shape, np.nan, np.float32))
        compiled = device.compile(template.render(config, device.info.backend, device.limits))
        device.launch(compiled, [*buffers, output]).wait()
        got = device.download(output, out_type.shape, np.float32)
        assert_matches_reference(template, [got], arrays)


def test_only_epilogue_inputs_are_read_from_a_bigger_buffer():
    name, graph = RESIDUAL_CASES[0]
    workload = Workload.from_graph(graph)
    data = workload.nodes[0].inputs[0]  # the conv's own input: read by the template's loops
    with pytest.raises(TemplateMismatch, match="reads its input in0 row-major only"):
        TEMPLATES[name](workload.reading(data, (1, 1, 1, 1), 0))
    b = GraphBuilder()
    injective = Workload.from_graph(b.build(b.relu(b.input("x", (7, 13))) + b.input("y", (7, 13))))
    with pytest.raises(TemplateMismatch, match="row-major only"):
        InjectiveTemplate(injective.reading("in1", (13, 1), 0))


def test_only_templates_that_store_through_the_epilogue_place_their_output():
    b = GraphBuilder()
    graph = b.build(b.relu(b.input("x", (7, 13))))
    with pytest.raises(TemplateMismatch, match="row-major only"):
        placed(InjectiveTemplate, graph, (1, 1, 1, 1))


@pytest.mark.parametrize("dialect", ["cuda", "metal"])
def test_placed_stores_and_reads_compile_for_cuda_and_pass_the_metal_syntax_check(
    dialect, tmp_path
):
    """nvcc compiles the CUDA source (it cannot run here: no GPU); Metal gets only a syntax
    check with the shim header."""
    if dialect == "cuda" and NVCC is None:
        pytest.skip("nvcc not on PATH")
    name, graph = CASES[0]  # a conv with a residual add: its output and residual both placed
    template, _ = placed(TEMPLATES[name], graph, pad_width_for(4))
    template = TEMPLATES[name](reading_residual(template.workload, graph, pad_width_for(4))[0])
    limits = CUDA_SM80 if dialect == "cuda" else APPLE_M1
    rendered = template.render(template.default_config(limits), dialect, limits)
    if dialect == "cuda":
        nvcc_compile(rendered, tmp_path)
    else:
        metal_syntax_check(rendered, tmp_path)
