"""The reduction template: every reduction core op, fused prologues/epilogues, both schemes,
on PoCL against numpy; CUDA renderings compiled by nvcc; Metal renderings syntax-checked."""

import numpy as np
import pytest

from coretune.graph import GraphBuilder
from coretune.kernels.device import APPLE_M1, CUDA_SM80
from coretune.kernels.space import InvalidConfig
from coretune.kernels.templates.reduction import ReductionTemplate
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


def reduce(op, shape, axes, keepdims=False):
    b = GraphBuilder()
    return b.build(b.op(op, b.input("x", shape), axes=axes, keepdims=keepdims))


def arg(op, shape, axis, keepdims=True, last=False):
    b = GraphBuilder()
    x = b.input("x", shape)
    return b.build(b.op(op, x, axis=axis, keepdims=keepdims, select_last_index=last))


def softmax(op, shape, axis):
    b = GraphBuilder()
    return b.build(b.op(op, b.input("x", shape), axis=axis))


def layer_norm(shape, axis, gamma_shape, beta=True):
    b = GraphBuilder()
    x, gamma = b.input("x", shape), b.input("gamma", gamma_shape)
    extra = (b.input("beta", gamma_shape),) if beta else ()
    return b.build(b.layer_norm(x, gamma, *extra, axis=axis, epsilon=1e-5))


def global_pool(op, shape):
    b = GraphBuilder()
    return b.build(b.op(op, b.input("x", shape)))


def template_of(graph) -> ReductionTemplate:
    return ReductionTemplate(Workload.from_graph(graph))


def configs(template, limits, count, seed):
    """The default, then ``count`` random valid configs split between the two schemes (one
    fills what the other lacks)."""
    rng = np.random.default_rng(seed)
    valid = list(template.space(limits).all_valid())
    tree = [valid[i] for i in rng.permutation(len(valid)) if valid[i]["scheme"] == "tree"]
    serial = [valid[i] for i in rng.permutation(len(valid)) if valid[i]["scheme"] == "serial"]
    n_serial = min(len(serial), count - min(len(tree), count // 2))
    return [template.default_config(limits), *serial[:n_serial], *tree[: count - n_serial]]


def check_on_device(device, graph, count, seed=0):
    template = template_of(graph)
    for i, config in enumerate(configs(template, device.limits, count, seed)):
        arrays = random_inputs(template.workload, seed + i)
        got = run_on_device(device, template, config, arrays)
        assert_matches_reference(template, got, arrays)


# One workload per op: odd sizes, strided and contiguous rows, keepdims both ways.
OPS = {
    "sum": reduce("sum", (33, 13, 7), (0, 2)),
    "mean": reduce("mean", (13, 33), (1,), keepdims=True),
    "max": reduce("max", (7, 13, 33), (1,)),
    "min": reduce("min", (33, 13), (0,), keepdims=True),
    "prod": reduce("prod", (13, 7), (1,)),
    "argmax": arg("argmax", (33, 13), 1),
    "argmin": arg("argmin", (13, 33, 7), 1, keepdims=False, last=True),
    "softmax": softmax("softmax", (7, 13, 33), -1),
    "log_softmax": softmax("log_softmax", (33, 13, 7), 1),
    "layer_norm": layer_norm((13, 7, 33), 1, (7, 33)),
    "global_avg_pool2d": global_pool("global_avg_pool2d", (2, 7, 13, 7)),
    "global_max_pool2d": global_pool("global_max_pool2d", (1, 13, 7, 33)),
}


@pytest.mark.parametrize("op", OPS)
def test_every_op_matches_numpy_with_default_and_random_configs(device, op):
    check_on_device(device, OPS[op], count=8)  # 12 ops x 8: the template sees ~100 configs


EDGES = {
    "sum-1": reduce("sum", (1,), None),
    "sum-all-7": reduce("sum", (7,), None, keepdims=True),
    "sum-no-axes": reduce("sum", (13, 7), ()),
    "sum-long-row": reduce("sum", (3, 1025), (-1,)),
    "mean-1x33": reduce("mean", (1, 33), (1,)),
    "max-33x1-axis0": reduce("max", (33, 1), (0,), keepdims=True),
    "prod-axes-0-2": reduce("prod", (7, 1, 13), (0, 2), keepdims=True),
    "argmax-n1": arg("argmax", (1, 13), 0, keepdims=False),
    "softmax-1x1": softmax("softmax", (1, 1), 0),
    "softmax-33": softmax("softmax", (33,), 0),
    "layer_norm-whole": layer_norm((1, 7), 0, (7,), beta=False),
    "layer_norm-scalar-gamma": layer_norm((7, 13), -1, (1,), beta=False),
}


@pytest.mark.parametrize("case", EDGES)
def test_edge_sizes_and_axes(device, case):
    check_on_device(device, EDGES[case], count=2)


def sum_exp_difference():
    b = GraphBuilder()
    x, y = b.input("x", (7, 33)), b.input("y", (33,))
    return b.build(b.sum(b.exp(x - y), axes=(-1,)))


def mean_of_transpose():
    b = GraphBuilder()
    x = b.transpose(b.input("x", (13, 7, 33)), axes=(2, 0, 1))
    return b.build(b.mean(x, axes=(1,)))


def root_mean_square():
    b = GraphBuilder()
    x, eps = b.input("x", (13, 33)), b.input("eps", ())
    return b.build(b.sqrt(b.mean(x * x, axes=(-1,), keepdims=True) + eps * eps))


def scaled_softmax():
    b = GraphBuilder()
    x, y = b.input("x", (7, 33)), b.input("y", (33,))
    return b.build(b.softmax(x, axis=-1) * y)


def relu_layer_norm():
    b = GraphBuilder()
    x, gamma, beta = b.input("x", (13, 33)), b.input("g", (33,)), b.input("b", (33,))
    return b.build(b.relu(b.layer_norm(x, gamma, beta, axis=-1)))


def shifted_argmax():
    b = GraphBuilder()
    x = b.input("x", (13, 7))
    return b.build(b.cast(b.argmax(b.abs(x), axis=0), dtype="float32") + 1.0)


FUSED = {
    "prologue-sum-exp": sum_exp_difference(),
    "prologue-mean-transpose": mean_of_transpose(),
    "both-rms": root_mean_square(),
    "epilogue-softmax-scale": scaled_softmax(),
    "epilogue-layer_norm-relu": relu_layer_norm(),
    "both-argmax-cast": shifted_argmax(),
}


@pytest.mark.parametrize("case", FUSED)
def test_fused_prologue_and_epilogue(device, case):
    check_on_device(device, FUSED[case], count=2)


@pytest.mark.parametrize("op", ["max", "min", "argmax", "argmin"])
def test_nan_propagates_like_numpy(device, op):
    """On the op test's workloads and first configs (their kernels are already built)."""
    template = template_of(OPS[op])
    x = random_inputs(template.workload, 3)[0]
    flat = x.reshape(-1)
    flat[[5, 6, 40, 300]] = np.nan  # some rows/columns get one NaN, some two
    want = template.workload.reference([x])[0]
    for config in configs(template, device.limits, 20, 0)[:3]:
        np.testing.assert_array_equal(run_on_device(device, template, config, [x])[0], want)


@pytest.mark.parametrize("op, axis", [("softmax", 2), ("log_softmax", 1)])
def test_softmax_of_masked_rows_and_nan_matches_numpy(device, op, axis):
    """-inf elements (masked attention), a row all -inf, a NaN, a NaN among -infs: numpy's
    answer, whether a config folds elements one at a time or in vector blocks (items 2-8)."""
    template = template_of(OPS[op])
    x = np.moveaxis(random_inputs(template.workload, 6)[0], axis, -1).copy()
    x[0, :, 3:] = -np.inf  # masked tails of every row of a slice
    x[1, 0, :] = -np.inf
    x[1, 1, 5] = np.nan
    x[1, 2, :], x[1, 2, 2] = -np.inf, np.nan
    x = np.moveaxis(x, -1, axis).copy()
    want = template.workload.reference([x])[0]
    space = template.space(device.limits)
    serial = [{"scheme": "serial", "work_group": 16, "row_threads": 1, "items": k} for k in (1, 8)]
    tree = [{"scheme": "tree", "work_group": 32, "row_threads": 4, "items": k} for k in (1, 2)]
    chosen = [c for c in serial + tree if space.is_valid(c)]
    assert len(chosen) == 4
    for config in chosen:
        got = run_on_device(device, template, config, [x])[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(config))


TIES = {
    "argmax-first": OPS["argmax"],
    "argmin-last": OPS["argmin"],
    "argmax-last": arg("argmax", (13, 33), 1, last=True),
    "argmin-first": arg("argmin", (33, 13), 0),
}


@pytest.mark.parametrize("case", TIES)
def test_ties_pick_numpys_index(device, case):
    template = template_of(TIES[case])
    shape = template.workload.inputs[0][1].shape
    x = np.random.default_rng(4).integers(1, 4, shape).astype(np.float32)  # many ties
    want = template.workload.reference([x])[0]
    for config in configs(template, device.limits, 20, 0)[:3]:
        np.testing.assert_array_equal(run_on_device(device, template, config, [x])[0], want)


def test_matches_only_one_fusable_nonempty_reduction():
    b = GraphBuilder()
    x = b.input("x", (7, 13))
    assert not ReductionTemplate.matches(Workload.from_graph(b.build(b.sum(b.sum(x, axes=(0,))))))
    b = GraphBuilder()
    empty = b.input("x", (0, 13))
    assert not ReductionTemplate.matches(Workload.from_graph(b.build(b.sum(empty, axes=(0,)))))
    b = GraphBuilder()
    ints = b.input("x", (7, 13), "int32")
    assert not ReductionTemplate.matches(Workload.from_graph(b.build(b.sum(ints, axes=(0,)))))
    b = GraphBuilder()
    moved = b.transpose(b.sum(b.input("x", (7, 13, 5)), axes=(0,)), axes=(1, 0))
    assert not ReductionTemplate.matches(Workload.from_graph(b.build(moved)))
    assert ReductionTemplate.matches(Workload.from_graph(root_mean_square()))


def test_invalid_configs_are_rejected_with_a_reason(device):
    template = template_of(OPS["softmax"])
    space = template.space(device.limits)
    tree = {"scheme": "tree", "work_group": 96, "row_threads": 64, "items": 1}
    assert "row_threads must divide work_group" in space.why_invalid(tree)
    serial = {"scheme": "serial", "work_group": 64, "row_threads": 4, "items": 1}
    assert "row_threads must be 1" in space.why_invalid(serial)
    small = type(device.limits)(
        max_work_group_size=1024, max_work_item_sizes=(1024, 1024, 64), local_mem_bytes=1024
    )
    big = {"scheme": "tree", "work_group": 256, "row_threads": 32, "items": 1}
    with pytest.raises(InvalidConfig, match="local memory 2048 B > device maximum 1024 B"):
        template.render(big, "opencl", small)


ALL = {**OPS, **EDGES, **FUSED}


def test_default_configs_are_valid_everywhere(device):
    for graph in ALL.values():
        template = template_of(graph)
        for limits in (device.limits, CUDA_SM80, APPLE_M1):
            assert template.space(limits).is_valid(template.default_config(limits))


RENDER_CHECKED = ["softmax", "layer_norm", "argmin", "sum", "both-rms"]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("case", RENDER_CHECKED)
def test_cuda_rendering_compiles_with_nvcc(case, tmp_path):
    template = template_of(ALL[case])
    for config in configs(template, CUDA_SM80, 2, 5):
        report = nvcc_compile(template.render(config, "cuda", CUDA_SM80), tmp_path)
        check_cuda_resources(
            report, CUDA_SM80, template.local_mem_bytes(config), config["work_group"]
        )


@pytest.mark.parametrize("case", RENDER_CHECKED)
def test_metal_rendering_passes_a_syntax_check(case, tmp_path):
    """Syntax check with a shim header and g++ -- not a Metal compile (no Metal here)."""
    template = template_of(ALL[case])
    for config in configs(template, APPLE_M1, 2, 6):
        metal_syntax_check(template.render(config, "metal", APPLE_M1), tmp_path)
