"""Graph passes: each keeps the reference outputs and does what it says."""

import numpy as np

from coretune.graph import GraphBuilder, run_reference
from coretune.graph.passes import (
    explicit_padding,
    fold_batch_norm,
    fold_constants,
    fuse,
    optimize,
    plan_memory,
    remove_identities,
    split_into_slices,
)
from coretune.graph.random import random_inputs


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def cnn(channels=8):
    """conv-bn-relu, conv-bn + residual add + relu, global pool, flatten, dense, softmax."""
    rng = np.random.default_rng(0)
    b = GraphBuilder("cnn")
    x = b.input("x", (1, 3, 13, 13))

    def bn(v):
        c = v.shape[1]
        return b.batch_norm(
            v,
            b.param(f"g{v.name}", 1 + 0.1 * _rand(rng, c)),
            b.param(f"b{v.name}", _rand(rng, c)),
            b.param(f"m{v.name}", _rand(rng, c)),
            b.param(f"v{v.name}", np.abs(_rand(rng, c)) + 0.5),
        )

    w1 = b.param("w1", _rand(rng, channels, 3, 3, 3))
    h = b.relu(bn(b.conv2d(x, w1, b.param("c1", _rand(rng, channels)), padding=(1, 1, 1, 1))))
    w2 = b.param("w2", _rand(rng, channels, channels, 3, 3))
    r = b.relu(bn(b.conv2d(h, w2, padding=(1, 1, 1, 1))) + h)
    pooled = b.flatten(b.global_avg_pool2d(r))
    logits = b.dense(pooled, b.param("fc", _rand(rng, 5, channels)), b.param("fcb", _rand(rng, 5)))
    return b.build(b.softmax(logits))


def _same_outputs(before, after, rtol=1e-5):
    inputs = random_inputs(before, seed=1)
    for x, y in zip(run_reference(before, inputs), run_reference(after, inputs), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6)


def test_batch_norm_folds_into_conv_weights():
    before = cnn()
    after = fold_batch_norm(cnn())
    assert "batch_norm" not in [n.op for n in after.nodes]
    assert sum(n.op == "conv2d" and len(n.inputs) == 3 for n in after.nodes) == 2
    _same_outputs(before, after)


def test_constant_subgraphs_fold_and_identities_go():
    b = GraphBuilder()
    x = b.input("x", (4, 6))
    w = b.param("w", np.arange(24, dtype=np.float32).reshape(6, 4))
    wt = b.transpose(b.relu(w))  # parameter-only: folds
    y = b.reshape(b.cast(b.dense(x, wt), dtype="float32"), newshape=(4, 4))  # two identities
    before = b.build(y)
    after = remove_identities(fold_constants(b.build(y)))
    assert [n.op for n in after.nodes] == ["dense"]
    assert after.outputs == before.outputs
    _same_outputs(before, after)


def test_fusion_groups_follow_patterns():
    graph = optimize(cnn())
    groups = fuse(graph)
    ops = [[n.op for n in g.nodes] for g in groups if g.kind != "pad"]
    assert [g.kind for g in groups[:4]] == ["pad", "anchor", "pad", "anchor"]
    assert ops[0] == ["conv2d", "relu"]  # conv + bias + bn (folded) + relu: one kernel
    assert ops[1] == ["conv2d", "add", "relu"]  # + residual add
    assert ["global_avg_pool2d"] in ops
    assert ops[-1] == ["softmax"] or ops[-1][-1] == "softmax"
    kinds = {g.kind for g in groups}
    assert "view" in kinds  # flatten needs no kernel
    every = [n.name for g in groups for n in g.nodes]
    assert sorted(every) == sorted(n.name for n in graph.nodes)  # each node exactly once


def test_an_anchor_takes_an_epilogue_that_reads_it_twice():
    """dense + Gelu: the Gelu reads the dense output twice; still one kernel, one output."""
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", (4, 16))
    h = b.dense(x, b.param("w", _rand(rng, 32, 16)), b.param("b", _rand(rng, 32)))
    gelu = h * 0.5 * (b.erf(h / 1.4142135) + 1.0)
    graph = b.build(gelu, b.sum(gelu))
    groups = fuse(graph)
    assert [(g.kind, [n.op for n in g.nodes]) for g in groups] == [
        ("anchor", ["dense", "multiply", "divide", "erf", "add", "multiply"]),
        ("reduction", ["sum"]),
    ]
    assert groups[0].outputs == [gelu.name]
    # A second reader of the dense output outside the chain keeps the dense output open: then
    # no single-output group contains the chain, and the dense kernel stands alone.
    split = fuse(b.build(gelu, b.tanh(h)))
    assert [n.op for n in split[0].nodes] == ["dense"]


def test_reductions_take_their_injective_prologue():
    b = GraphBuilder()
    x = b.input("x", (7, 13))
    y = b.input("y", (13,))
    s = b.sum(b.exp(b.transpose(x - y)), axes=(1,))
    graph = b.build(b.sqrt(s))
    groups = fuse(graph)
    assert len(groups) == 1
    assert [n.op for n in groups[0].nodes] == ["subtract", "transpose", "exp", "sum", "sqrt"]
    assert groups[0].kind == "reduction"


def test_shared_tensors_are_not_fused_twice():
    b = GraphBuilder()
    x = b.input("x", (8,))
    e = b.exp(x)
    together = fuse(b.build(b.relu(e) + b.tanh(e)))
    assert len(together) == 1  # both readers in one kernel: e is computed once per element
    graph = b.build(b.sum(e), b.relu(e))
    groups = fuse(graph)
    names = [n.name for g in groups for n in g.nodes]
    assert len(names) == len(set(names)) == len(graph.nodes)
    assert any(g.outputs == [e.name] for g in groups)  # read by two kernels: materialised


def test_memory_plan_reuses_buffers_safely():
    graph = optimize(cnn())
    groups = fuse(graph)
    plan = plan_memory(graph, groups)
    assert plan.planned_bytes < plan.unshared_bytes(graph)
    # Simulate: a buffer may be rewritten only after every reader of its old tensor ran.
    holder: dict[int, str] = {}
    for step, group in enumerate(groups):
        for name in group.inputs:
            name = plan.alias_of.get(name, name)
            if name in plan.buffer_of:
                assert holder[plan.buffer_of[name]] == name, (
                    f"{name} overwritten before step {step}"
                )
        for name in group.outputs:
            if name in plan.buffer_of:
                holder[plan.buffer_of[name]] = name


def test_explicit_padding_moves_conv_padding_into_pad_nodes():
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", (2, 6, 7, 13))
    dense = b.conv2d(x, b.param("w", _rand(rng, 4, 6, 3, 3)), padding=(1, 2, 0, 1), strides=(2, 1))
    depthwise = b.conv2d(x, b.param("d", _rand(rng, 6, 1, 3, 3)), padding=(1, 1, 1, 1), groups=6)
    grouped = b.conv2d(x, b.param("g", _rand(rng, 4, 3, 1, 1)), groups=2)  # no padding
    before = b.build(dense, depthwise, grouped)
    after = explicit_padding(before)
    pads = {n.outputs[0]: n for n in after.nodes if n.op == "pad"}
    convs = {n.inputs[1]: n for n in after.nodes if n.op == "conv2d"}
    assert len(pads) == 2 and convs["g"].inputs[0] == "x"  # the unpadded conv needs none
    for weight, widths in (("w", [0, 0, 0, 0, 1, 0, 2, 1]), ("d", [0, 0, 0, 0, 1, 1, 1, 1])):
        assert list(pads[convs[weight].inputs[0]].attrs["pad_width"]) == widths
        assert list(convs[weight].attrs["padding"]) == [0] * 4
    _same_outputs(before, after)
    assert explicit_padding(after).nodes == after.nodes  # nothing left to move


def test_a_lone_constant_pad_of_the_last_two_axes_is_a_copy_group():
    b = GraphBuilder()
    x = b.input("x", (2, 3, 5, 7))
    spatial = b.pad(x, pad_width=(0, 0, 0, 0, 1, 2, 3, 0), pad_value=-1.0)
    channels = b.pad(x, pad_width=(0, 0, 1, 0, 0, 0, 0, 0))  # an outer axis: a kernel
    reflect = b.pad(x, pad_width=(0, 0, 0, 0, 1, 1, 1, 1), mode="reflect")
    fused = b.pad(b.relu(x), pad_width=(0, 0, 0, 0, 1, 1, 1, 1))  # relu + pad: one kernel
    kinds = {g.outputs[0]: g.kind for g in fuse(b.build(spatial, channels, reflect, fused))}
    assert kinds == {
        spatial.name: "pad",
        channels.name: "injective",
        reflect.name: "injective",
        fused.name: "injective",
    }


def test_pad_outputs_keep_their_buffers():
    """The executor fills a pad copy's border once: no later tensor may reuse its buffer."""
    graph = optimize(cnn())
    groups = fuse(graph)
    plan = plan_memory(graph, groups)
    padded = [g.outputs[0] for g in groups if g.kind == "pad"]
    assert len(padded) == 2
    for name in padded:
        sharing = [t for t, b in plan.buffer_of.items() if b == plan.buffer_of[name]]
        assert sharing == [name]


def test_splits_become_slices_of_their_input():
    b = GraphBuilder()
    x = b.input("x", (2, 33, 5))
    a, c = b.split(x, axis=1, sizes=(1, 32))
    before = b.build(b.relu(a), c * 2.0)
    after = split_into_slices(before)
    assert [n.op for n in after.nodes].count("split") == 0
    assert [n.op for n in after.nodes].count("strided_slice") == 2
    _same_outputs(before, after)
