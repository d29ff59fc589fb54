"""Strided 1 x 1 convolutions read a subsampled copy of their input (passes/subsample.py)."""

import numpy as np
import pytest

from coretune.graph import GraphBuilder, run_reference
from coretune.graph.passes import optimize, subsample_pointwise_convs
from coretune.graph.random import random_inputs
from coretune.module import compile as compile_module

from .onnx_models import assert_close


def _projection(batch=1, channels=6, height=13, width=13, out=5, strides=(2, 2), bias=True):
    """A ResNet downsample block: a strided 1 x 1 projection and a strided 3 x 3 conv path
    added together (the 3 x 3 keeps its stride: only 1 x 1 convs are subsampled)."""
    rng = np.random.default_rng(3)
    b = GraphBuilder()

    def weight(name, *shape):
        return b.param(name, rng.standard_normal(shape).astype(np.float32))

    x = b.input("x", (batch, channels, height, width))
    operands = [x, weight("p.w", out, channels, 1, 1)] + ([weight("p.b", out)] if bias else [])
    shortcut = b.conv2d(*operands, strides=strides)
    path = b.conv2d(x, weight("c.w", out, channels, 3, 3), padding=(1, 1, 1, 1), strides=strides)
    return b.build(b.relu(b.add(shortcut, path)))


def test_only_strided_unpadded_pointwise_convs_get_a_subsample():
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", (2, 6, 7, 13))

    def weight(name, *shape):
        return b.param(name, rng.standard_normal(shape).astype(np.float32))

    strided = b.conv2d(x, weight("s", 4, 6, 1, 1), strides=(2, 3))
    plain = b.conv2d(x, weight("p", 4, 6, 1, 1))
    padded = b.conv2d(x, weight("q", 4, 6, 1, 1), strides=(2, 2), padding=(1, 1, 1, 1))
    window = b.conv2d(x, weight("w", 4, 6, 3, 3), strides=(2, 2))
    grouped = b.conv2d(x, weight("g", 4, 3, 1, 1), strides=(2, 1), groups=2)
    before = b.build(strided, plain, padded, window, grouped)
    after = subsample_pointwise_convs(before)
    convs = {n.inputs[1]: n for n in after.nodes if n.op == "conv2d"}
    slices = {n.outputs[0]: n for n in after.nodes if n.op == "strided_slice"}
    assert sorted(convs[w].inputs[0] in slices for w in "spqwg") == [False] * 3 + [True] * 2
    for weight_name, strides in (("s", (2, 3)), ("g", (2, 1))):
        subsample = slices[convs[weight_name].inputs[0]]
        assert tuple(subsample.attrs["strides"]) == strides
        assert tuple(subsample.attrs["axes"]) == (2, 3)
        assert list(convs[weight_name].attrs["strides"]) == [1, 1]
    for name, (x_, y) in zip(
        "spqwg",
        zip(
            run_reference(before, random_inputs(before, seed=1)),
            run_reference(after, random_inputs(before, seed=1)),
            strict=True,
        ),
        strict=True,
    ):
        np.testing.assert_allclose(x_, y, rtol=1e-5, atol=1e-6, err_msg=name)
    assert subsample_pointwise_convs(after).nodes == after.nodes  # nothing left to do


def test_the_standard_pipeline_subsamples():
    graph = optimize(_projection())
    ops = [n.op for n in graph.nodes]
    assert ops.count("strided_slice") == 1


@pytest.mark.parametrize(
    "batch,height,width,strides,bias",
    [
        (1, 13, 13, (2, 2), True),
        (2, 7, 33, (2, 2), False),
        (1, 1, 1, (2, 2), True),
        (1, 33, 7, (3, 2), True),
        (3, 13, 7, (2, 1), False),
    ],
)
def test_a_downsample_block_matches_numpy(device, batch, height, width, strides, bias):
    graph = _projection(batch, height=height, width=width, strides=strides, bias=bias)
    x = np.random.default_rng(5).standard_normal(graph.inputs["x"].shape).astype(np.float32)
    module = compile_module(graph, device=device)
    assert any(k.group.nodes[0].op == "strided_slice" for k in module.plan.kernels)
    expected = run_reference(graph, {"x": x})[0]
    assert_close(module.run(x=x)[0], expected)
    assert_close(module.run(x=x)[0], expected)  # and run after run
