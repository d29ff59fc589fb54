"""Concatenations in place: each part's producer stores it at its offset in the output."""

import numpy as np
import pytest

from coretune.graph import GraphBuilder, run_reference
from coretune.graph.placement import ConcatStep
from coretune.module import compile as compile_module
from coretune.module import load

from .onnx_models import assert_close


def _fire(batch=1, channels=7, size=13, squeeze=5, left=6, right=7, right_kernel=3, **kw):
    """SqueezeNet's Fire module: a 1x1 squeeze read by a 1x1 and a 3x3 expand, concatenated
    on channels, then a 1x1 conv (or the concatenation is the graph's output)."""
    rng = np.random.default_rng(7)
    b = GraphBuilder()

    def conv(x, out, kernel, name, pad=0):
        w = b.param(f"{name}.w", rng.standard_normal((out, x.shape[1], kernel, kernel), np.float32))
        bias = b.param(f"{name}.b", rng.standard_normal(out).astype(np.float32))
        return b.relu(b.conv2d(x, w, bias, padding=(pad,) * 4))

    x = b.input("x", (batch, channels, size, size))
    s = conv(x, squeeze, 1, "squeeze")
    pad = right_kernel // 2
    joined = b.concatenate(
        conv(s, left, 1, "left"), conv(s, right, right_kernel, "right", pad), axis=1
    )
    return b.build(joined if kw.get("concat_output") else conv(joined, 3, 1, "after"))


def _run(graph, device, seed=0):
    x = np.random.default_rng(seed).standard_normal(graph.inputs["x"].shape).astype(np.float32)
    module = compile_module(graph, device=device)
    return module, x, module.run(x=x)[0], run_reference(graph, {"x": x})[0]


@pytest.mark.parametrize("batch,size", [(1, 13), (2, 7), (1, 1), (3, 33)])
def test_a_fire_module_concatenates_in_place_and_matches_numpy(device, batch, size):
    graph = _fire(batch=batch, size=size)
    module, x, got, expected = _run(graph, device)
    assert module.plan.summary()["concats_in_place"] == 1
    assert not [k for k in module.plan.kernels if k.group.nodes[0].op == "concatenate"]
    assert_close(got, expected)
    assert_close(module.run(x=x)[0], expected)  # and run after run


def test_the_concatenation_may_be_the_graph_output(device):
    module, _, got, expected = _run(_fire(batch=2, size=7, concat_output=True), device)
    assert module.plan.summary()["concats_in_place"] == 1
    assert_close(got, expected)


def test_the_output_s_buffer_is_live_from_the_first_part_on(device):
    """The squeeze output, read by both expands, is freed after the second; the buffer the
    first expand stores its part into must not be that one (it would be, were the output's
    buffer taken at the concatenation's own step: it fits there)."""
    graph = _fire(size=7, squeeze=16, left=3, right=4, right_kernel=1)
    module, _, got, expected = _run(graph, device)
    plan = module.plan
    concat = next(s for s in plan.steps if isinstance(s, ConcatStep)).group.outputs[0]
    squeeze = plan.steps[0].group.outputs[0]
    assert plan.buffer_of[concat] != plan.buffer_of[squeeze]
    assert_close(got, expected)


def test_a_part_read_elsewhere_keeps_the_copy(device):
    rng = np.random.default_rng(3)
    b = GraphBuilder()
    x = b.input("x", (1, 4, 7, 7))
    w = b.param("w", rng.standard_normal((5, 4, 1, 1), np.float32))
    y = b.relu(b.conv2d(x, w))
    joined = b.concatenate(y, b.sigmoid(x), axis=1)  # a graph input's op: not placeable
    graph = b.build(joined, y * 2.0)
    module = compile_module(graph, device=device)
    assert module.plan.summary()["concats_in_place"] == 0
    xs = rng.standard_normal((1, 4, 7, 7)).astype(np.float32)
    for got, expected in zip(module.run(x=xs), run_reference(graph, {"x": xs}), strict=True):
        assert_close(got, expected)


def test_dense_outputs_concatenate_on_their_last_axis(device):
    rng = np.random.default_rng(5)
    b = GraphBuilder()
    x = b.input("x", (7, 13))
    parts = [
        b.relu(b.dense(x, b.param(f"w{i}", rng.standard_normal((n, 13), np.float32))))
        for i, n in enumerate((5, 33, 1))
    ]
    graph = b.build(b.concatenate(*parts, axis=1))  # a graph output: its memory is its own
    module = compile_module(graph, device=device)
    assert module.plan.summary()["concats_in_place"] == 1
    xs = rng.standard_normal((7, 13)).astype(np.float32)
    assert_close(module.run(x=xs)[0], run_reference(graph, {"x": xs})[0])


def test_a_saved_module_derives_its_concatenation_in_place_again(device, tmp_path):
    module, x, got, expected = _run(_fire(batch=2, size=7), device)
    module.save(tmp_path / "fire.ctm")
    loaded = load(tmp_path / "fire.ctm", device=device)
    assert loaded.plan.summary()["concats_in_place"] == 1
    assert_close(loaded.run(x=x)[0], expected)


def test_a_concatenation_in_place_is_not_a_tuning_task():
    from coretune.tuner.task import extract_tasks

    tasks = extract_tasks(_fire())
    assert tasks and not [t for t in tasks if t.workload.nodes[0].op == "concatenate"]
    assert {t.workload.nodes[0].op for t in tasks} == {"conv2d"}


def test_a_cuda_plan_stores_its_parts_in_place_and_compiles_with_nvcc(tmp_path):
    import subprocess

    from coretune.graph.executor import build_plan
    from coretune.kernels.device import CUDA_SM80

    from .kernel_harness import CUDA_ARCH, NVCC

    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    plan = build_plan(_fire(batch=2), CUDA_SM80, {"backend": "cuda"}, dialect="cuda")
    assert plan.summary()["concats_in_place"] == 1
    files = []
    for index, kernel in enumerate(plan.kernels):
        files.append(tmp_path / f"k{index}_{kernel.entry}.cu")
        files[-1].write_text(kernel.source)
    done = subprocess.run(
        [NVCC, f"-arch={CUDA_ARCH}", "-cubin", "-odir", str(tmp_path), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _dense_block(batch=1, layers=3, stem=8, growth=4, size=9, extra_reader=False, output="pool"):
    """A DenseNet block: layer i reads batch norm + ReLU of the concatenation of the block's
    input and the i feature maps before it, and adds one (1 x 1 conv, batch norm, ReLU,
    3 x 3 conv); the whole block's
    concatenation is read by a transition (batch norm, ReLU, 1 x 1 conv), or is the output.
    ``extra_reader``: the first layer's features are also read outside the block."""
    rng = np.random.default_rng(11)
    b = GraphBuilder()

    def param(name, shape):
        return b.param(name, rng.standard_normal(shape).astype(np.float32))

    def bn_relu(x, name):
        c = (x.shape[1],)
        var = b.param(f"{name}.var", rng.random(c, np.float32) + 0.5)
        scale, shift, mean = (param(f"{name}.{p}", c) for p in ("g", "b", "mean"))
        return b.relu(b.batch_norm(x, scale, shift, mean, var))

    x = b.input("x", (batch, 3, size, size))
    h = b.relu(b.conv2d(x, param("stem.w", (stem, 3, 3, 3)), padding=(1,) * 4))
    features = [b.max_pool2d(h, pool_size=(3, 3), strides=(1, 1), padding=(1,) * 4)]
    for i in range(layers):
        joined = features[0] if i == 0 else b.concatenate(*features, axis=1)
        h = bn_relu(joined, f"l{i}")
        h = bn_relu(b.conv2d(h, param(f"l{i}.w1", (8, h.shape[1], 1, 1))), f"l{i}.2")
        features.append(b.conv2d(h, param(f"l{i}.w3", (growth, 8, 3, 3)), padding=(1,) * 4))
    block = b.concatenate(*features, axis=1)
    if output == "block":
        return b.build(block)
    out = b.conv2d(bn_relu(block, "t"), param("t.w", (4, block.shape[1], 1, 1)))
    return b.build(out, b.relu(features[1])) if extra_reader else b.build(out)


def _concat_kernels(module) -> list:
    return [k for k in module.plan.kernels if any(n.op == "concatenate" for n in k.group.nodes)]


@pytest.mark.parametrize("size", [1, 7, 13])
def test_a_dense_block_is_one_buffer_that_every_layer_reads_in_place(device, size, tmp_path):
    """Each layer's features are stored once, after the ones before them, in the block's
    buffer; every concatenation of the block is a prefix of it and runs no kernel, and the
    batch norms of the growing prefixes are one program (their element count an argument;
    channels 8, 12, 16, 20: 4 lanes each)."""
    graph = _dense_block(size=size)
    module, x, got, expected = _run(graph, device)
    assert module.plan.summary()["concats_in_place"] == 3
    assert not _concat_kernels(module)
    norms = [k for k in module.plan.kernels if k.template == "injective"]
    assert len(norms) == 4 and len({k.source for k in norms}) == 1
    assert_close(got, expected)
    assert_close(module.run(x=x)[0], expected)
    module.save(tmp_path / "block.ctm")
    assert_close(load(tmp_path / "block.ctm", device=device).run(x=x)[0], expected)


def test_a_dense_block_in_a_batch_keeps_its_concatenations(device):
    """With a batch, a prefix along channels is not a prefix of memory: the chain is not one
    buffer (the last concatenation may still be stored in place by its parts' producers)."""
    module, _, got, expected = _run(_dense_block(batch=2, size=7), device)
    assert _concat_kernels(module)
    assert_close(got, expected)


def test_features_read_outside_the_block_keep_its_concatenations(device):
    module, x, _, _ = _run(_dense_block(size=7, growth=5, extra_reader=True), device)
    assert _concat_kernels(module)
    for got, want in zip(module.run(x=x), run_reference(module.plan.graph, {"x": x}), strict=True):
        assert_close(got, want)


def test_the_block_s_concatenation_may_be_the_graph_output(device):
    module, _, got, expected = _run(_dense_block(size=7, output="block"), device)
    assert module.plan.summary()["concats_in_place"] == 3 and not _concat_kernels(module)
    assert_close(got, expected)
