"""The injective template on the comparison, logic, mod, gather, scatter, triangle and scan
ops.

Every op case of tests/op_cases.py for these ops (odd sizes 1, 7, 13, 33; bool, int and float
operands; valid indices, signed mod operands) runs as a one-node kernel, and fused chains mix
them with other ops: each on the default and random configs, with NaN-poisoned outputs,
against the numpy reference. ONNX Mod's edge cases are checked bit for bit; reductions and an
anchor's epilogue fuse the new ops too.
"""

import numpy as np
import pytest

from coretune.graph import GraphBuilder, run_reference
from coretune.graph.random import random_array
from coretune.kernels.device import APPLE_M1, CUDA_SM80
from coretune.kernels.templates.injective import InjectiveTemplate
from coretune.kernels.workload import Workload
from coretune.module import compile as compile_module

from .kernel_harness import (
    NVCC,
    assert_matches_reference,
    metal_syntax_check,
    nvcc_compile,
    run_on_device,
)
from .op_cases import CASES

NEW_OPS = {
    "greater_equal",
    "less_equal",
    "logical_and",
    "logical_or",
    "logical_xor",
    "logical_not",
    "mod",
    "fmod",
    "take_along_axis",
    "gather_nd",
    "scatter_nd",
    "isnan",
    "tril",
    "triu",
    "cumsum",
}


def one_node(case):
    b = GraphBuilder(case.op)
    operands = [b.input(f"x{k}", shape, dtype) for k, (shape, dtype) in enumerate(case.inputs)]
    return b.build(b.op(case.op, *operands, **case.attrs))


def fused_logic(shape):
    """Comparisons and logic feeding where, whose branches are mod and fmod of floats."""
    b = GraphBuilder()
    x, y, keep = b.input("x", shape), b.input("y", shape[-1:]), b.input("keep", shape, "bool")
    ge, le = b.greater_equal(x, y), b.less_equal(b.tanh(x), y)
    mask = b.logical_or(b.logical_and(ge, keep), b.logical_not(b.logical_xor(le, keep)))
    return b.build(b.where(mask, b.mod(x * 3.0, y), b.fmod(x * 3.0, y)))


def fused_gather(shape, axis):
    """take_along_axis whose indices are computed in the kernel: (i mod n) - n // 2, so every
    index is valid (negative ones included) whatever the random inputs."""
    b = GraphBuilder()
    x, i = b.input("x", shape), b.input("i", shape, "int64")
    n = shape[axis]
    index = b.mod(i - 5, b.const(n, "int64")) - n // 2
    return b.build(b.take_along_axis(b.relu(x) + 1.0, index, axis=axis))


def fused_scan(shape, k, reverse):
    """cumsum over a triangle of a fused product, and a triangle of the running sums."""
    b = GraphBuilder()
    x, y = b.input("x", shape), b.input("y", shape[-1:])
    running = b.cumsum(b.triu(x * y, k=k), axis=-1, reverse=reverse)
    return b.build(b.tril(running + b.cumsum(x, axis=0, exclusive=True), k=-k))


def fused_scatter(shape, rows, reduction):
    """scatter_nd of computed updates into computed data at computed rows (repeats included:
    rows apply in order), each index in [-n, n) whatever the random inputs."""
    b = GraphBuilder()
    k = len(shape) - 1
    x, u = b.input("x", shape), b.input("u", (rows, shape[-1]))
    i = b.input("i", (rows, k), "int64")
    sizes = b.const(np.array(shape[:k], np.int64))
    index = b.mod(i * 7, sizes) - b.const(np.array([n // 2 for n in shape[:k]], np.int64))
    return b.build(b.scatter_nd(b.tanh(x), index, b.exp(u) - b.sigmoid(u), reduction=reduction))


def fused_int_scan(n):
    b = GraphBuilder()
    i = b.input("i", (n, 7), "int32")
    return b.build(b.cumsum(b.fmod(i - 5, b.const(3, "int32")), axis=0, exclusive=True))


def fused_bool_out(shape):
    """A bool output (stored as uchar) of int comparisons and logic."""
    b = GraphBuilder()
    i, j = b.input("i", shape, "int32"), b.input("j", shape[-1:], "int32")
    return b.build(b.logical_xor(b.greater_equal(i, j), b.less_equal(b.mod(i, j), j - 4)))


# Graphs with every input value valid; the graphs of the op cases take the case's arrays.
FUSED = {
    "logic-1": fused_logic((1,)),
    "logic-7x13": fused_logic((7, 13)),
    "logic-33x7": fused_logic((33, 7)),
    "gather-13x7-axis0": fused_gather((13, 7), 0),
    "gather-7x33-axis1": fused_gather((7, 33), 1),
    "gather-2x7x13-axis-1": fused_gather((2, 7, 13), -1),
    "scan-7x13": fused_scan((7, 13), 1, False),
    "scan-13x7-reverse": fused_scan((13, 7), -2, True),
    "scan-2x33x7": fused_scan((2, 33, 7), 0, True),
    "scatter-7x13x5": fused_scatter((7, 13, 5), 33, "none"),
    "scatter-13x7-add": fused_scatter((13, 7), 7, "add"),
    "scatter-1x33-max": fused_scatter((1, 33), 13, "max"),
    "int-scan-13": fused_int_scan(13),
    "int-scan-1": fused_int_scan(1),
    "bool-7x13": fused_bool_out((7, 13)),
    "bool-33": fused_bool_out((33,)),
}
OP_CASES = {str(c): c for c in CASES if c.op in NEW_OPS}


def _random(graph, seed):
    """Random graph inputs, and the constants' own values, in the workload's input order
    (graph inputs, then parameters by first use)."""
    rng = np.random.default_rng(seed)
    params = [n for node in graph.nodes for n in node.inputs if n in graph.params]
    arrays = [random_array(t.shape, t.dtype, rng) for t in graph.inputs.values()]
    return arrays + [graph.params[n] for n in dict.fromkeys(params)]


def _check_configs(device, graph, arrays_for, samples):
    template = InjectiveTemplate(Workload.from_graph(graph))
    configs = [template.default_config(device.limits)]
    configs += template.space(device.limits).sample(samples, np.random.default_rng(5))
    for seed, config in enumerate(configs):
        arrays = arrays_for(seed)
        got = run_on_device(device, template, config, arrays)
        assert_matches_reference(template, got, arrays, rtol=1e-5)


@pytest.mark.parametrize("name", OP_CASES)
def test_op_cases_match_numpy(device, name):
    case = OP_CASES[name]
    assert InjectiveTemplate.matches(Workload.from_graph(one_node(case)))
    _check_configs(device, one_node(case), lambda seed: case.arrays(seed), 4)


@pytest.mark.parametrize("name", FUSED)
def test_fused_chains_match_numpy(device, name):
    graph = FUSED[name]
    _check_configs(device, graph, lambda seed: _random(graph, seed), 8)


def test_every_new_op_is_covered():
    assert {c.op for c in OP_CASES.values()} == NEW_OPS


# ONNX Mod's float special cases (test_mod_float_edge_cases_fmod_0), and fmod's.
EDGE_A = np.array([0, -0.0, 0, -0.0, -3, 3, -1, 1, np.inf, -np.inf, 1, 1, np.nan, 1, -7.5, 7.5])
EDGE_B = np.array([-2, 2, 2, -2, np.inf, np.inf, -np.inf, -np.inf, 2, 2, 0, -0.0, 2, np.nan, 2, -2])


@pytest.mark.parametrize("op", ["mod", "fmod"])
def test_float_mod_edge_cases_bit_for_bit(device, op):
    b = GraphBuilder()
    graph = b.build(b.op(op, b.input("a", (16,)), b.input("b", (16,))))
    template = InjectiveTemplate(Workload.from_graph(graph))
    arrays = [EDGE_A.astype(np.float32), EDGE_B.astype(np.float32)]
    for config in [
        template.default_config(device.limits),
        {"work_group": 16, "items": 2, "lanes": 1},
    ]:
        (got,) = run_on_device(
            device, template, template.space(device.limits).check(config), arrays
        )
        (want,) = template.workload.reference(arrays)
        np.testing.assert_array_equal(got, want)  # NaN where NaN
        assert (np.signbit(got) == np.signbit(want))[~np.isnan(want)].all(), (got, want)


def test_int_mod_by_zero_and_minus_one_is_zero_not_a_trap(device):
    b = GraphBuilder()
    a, d = b.input("a", (7,), "int32"), b.input("d", (7,), "int32")
    graph = b.build(b.mod(a, d) + b.fmod(a, d))
    template = InjectiveTemplate(Workload.from_graph(graph))
    arrays = [
        np.array([-(2**31), -(2**31), 7, -7, 5, 0, 9], np.int32),
        np.array([-1, 0, 0, -1, -3, 4, 3], np.int32),
    ]
    config = template.default_config(device.limits)
    assert_matches_reference(template, run_on_device(device, template, config, arrays), arrays)


RENDER_CHECKED = ["logic-7x13", "gather-7x33-axis1", "scan-13x7-reverse", "bool-7x13"]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("name", RENDER_CHECKED)
def test_cuda_rendering_compiles_with_nvcc(name, tmp_path):
    template = InjectiveTemplate(Workload.from_graph(FUSED[name]))
    nvcc_compile(template.render(template.default_config(CUDA_SM80), "cuda", CUDA_SM80), tmp_path)


@pytest.mark.parametrize("name", RENDER_CHECKED)
def test_metal_rendering_passes_a_syntax_check(name, tmp_path):
    """Syntax check with a shim header and g++ -- not a Metal compile (no Metal here)."""
    template = InjectiveTemplate(Workload.from_graph(FUSED[name]))
    metal_syntax_check(
        template.render(template.default_config(APPLE_M1), "metal", APPLE_M1), tmp_path
    )


def _ones(*shape):
    return np.ones(shape, np.float32)


# The new ops as prologues of reductions and in an anchor's epilogue, compiled as a model.
PROLOGUES = {
    "sum-of-cumsum": lambda b, x: b.sum(b.cumsum(x, axis=1), axes=(1,)),
    "softmax-of-tril": lambda b, x: b.softmax(b.tril(x, k=2), axis=-1),
    "layer_norm-of-cumsum": lambda b, x: b.layer_norm(
        b.cumsum(x * 2.0, axis=0, reverse=True), b.const(_ones(33)), b.const(0 * _ones(33))
    ),
    "max-of-scatter_nd": lambda b, x: b.max(
        b.scatter_nd(x, b.const(np.array([[1], [-2]])), b.const(5 * _ones(2, 33))), axes=(0,)
    ),
    "dense-then-greater_equal": lambda b, x: b.greater_equal(
        b.dense(x, b.const(_ones(5, 33))), b.const(np.float32(0))
    ),
}


@pytest.mark.parametrize("name", PROLOGUES)
def test_fused_into_reductions_and_epilogues(device, name):
    b = GraphBuilder(name)
    graph = b.build(PROLOGUES[name](b, b.input("x", (7, 33))))
    module = compile_module(graph, device=device)
    assert len(module.plan.kernels) == 1 and not module.plan.summary()["host_steps"]
    x = np.random.default_rng(0).standard_normal((7, 33)).astype(np.float32)
    (got,), (want,) = module.run(x=x), run_reference(graph, {"x": x})
    if want.dtype == np.bool_:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
