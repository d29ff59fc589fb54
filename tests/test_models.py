"""Whole models, end to end (issue 5): ONNX in, fused OpenCL kernels out, checked against
onnxruntime before and after a save + load, with the kernel plan pinned so that a regression in
fusion, template matching or memory planning shows up as a failing count, not a slower model.

Each model compiles once per session (compiles dominate: ~0.3-0.7 s per kernel on PoCL).
"""

import numpy as np
import pytest

from coretune.module import compile as compile_module
from coretune.module import load

from . import onnx_models
from .onnx_models import assert_close, run_onnxruntime

CASES = {
    "mlp_batch1": lambda: onnx_models.mlp(batch=1),
    "mlp_batch64": lambda: onnx_models.mlp(batch=64),
    "cnn": onnx_models.cnn,
    "mobilenet_block": lambda: onnx_models.mobilenet_block(batch_norms=True),
    "transformer_layer": onnx_models.transformer_layer,  # Gelu as torch writes it (Erf)
    "transformer_layer_gelu_op": lambda: onnx_models.transformer_layer(gelu_op=True),
}

# Kernels launched per run. The transformer's 15: q/k/v projections (3) and their head
# split (3), scores * scale, softmax, attn @ v, head merge, out-projection + residual,
# layer norm, ffn1 + Gelu (Gelu reads ffn1's output twice, inside one kernel),
# ffn2 + residual, layer norm.
KERNELS = {
    "mlp_batch1": 4,  # fc1+relu, fc2+relu, fc3, softmax
    "mlp_batch64": 4,
    "cnn": 7,  # 4 conv kernels, max pool, global average pool, fc (flatten is a view)
    "mobilenet_block": 3,  # expand, depthwise, project + residual
    "transformer_layer": 15,
    "transformer_layer_gelu_op": 15,
}

# Kernels that hold a conv, as the ONNX node names and core ops they fuse. Batch norms are
# folded into the convs' weights and bias, so they appear in no kernel at all.
CONV_KERNELS = {
    "cnn": [
        (["conv1", "relu1"], ["conv2d", "relu"]),  # conv1 + bias + bn1 + relu1
        (["conv2", "relu2"], ["conv2d", "relu"]),  # conv2 + bias + bn2 + relu2
        (["conv3", "residual", "relu3"], ["conv2d", "add", "relu"]),  # + bn3, residual add
        (["conv4", "relu4"], ["conv2d", "relu"]),  # stride 2, no batch norm
    ],
    "mobilenet_block": [
        (["expand", "expand_relu6"], ["conv2d", "clip"]),
        (["depthwise", "depthwise_relu6"], ["conv2d", "clip"]),
        (["project", "y"], ["conv2d", "add"]),
    ],
}


@pytest.fixture(scope="session")
def compiled(device, tmp_path_factory):
    """name -> (model, inputs, module, module loaded back from its .ctm), built once each."""
    cache = {}

    def get(name):
        if name not in cache:
            model, inputs = CASES[name]()
            module = compile_module(model, device=device)
            path = tmp_path_factory.mktemp("models") / f"{name}.ctm"
            module.save(path)
            cache[name] = model, inputs, module, load(path, device=device)
        return cache[name]

    return get


@pytest.mark.parametrize("name", CASES)
def test_matches_onnxruntime_before_and_after_save_and_load(compiled, name):
    model, inputs, module, loaded = compiled(name)
    assert all(np.all(a != 0) for a in inputs.values()), "inputs should be random and non-zero"
    want = run_onnxruntime(model, inputs)
    got = module.run(**inputs)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_close(g, w, f"{name} output {i}", rtol=1e-4)
    again = loaded.run(**inputs)
    for g, a in zip(got, again, strict=True):
        np.testing.assert_array_equal(a, g, err_msg=f"{name}: outputs changed after load")


@pytest.mark.parametrize("name", CASES)
def test_kernel_count_host_steps_and_memory(compiled, name):
    _, _, module, loaded = compiled(name)
    summary = module.summary()
    assert summary["host_steps"] == [], f"{name} runs groups on the host"
    # On CUDA a pad is a kernel of its own (no rectangle copies, nothing written in place).
    pad_kernels = sum(k.group.kind == "pad" for k in module.plan.kernels)
    assert pad_kernels == 0 or module.device.info.backend != "opencl"
    assert summary["kernels"] - pad_kernels == KERNELS[name]
    assert 0 < summary["planned_bytes"] <= summary["unshared_bytes"]
    assert loaded.summary() == summary


@pytest.mark.parametrize("name", CONV_KERNELS)
def test_conv_bias_batch_norm_activation_and_residual_are_one_kernel(compiled, name):
    model, _, module, _ = compiled(name)
    assert any(n.op_type == "BatchNormalization" for n in model.graph.node)
    graph = module.plan.graph
    assert [n.name for n in graph.nodes if n.op == "batch_norm"] == []  # all folded
    convs = [k for k in module.plan.kernels if any(n.op == "conv2d" for n in k.group.nodes)]
    fused = [([n.name for n in k.group.nodes], [n.op for n in k.group.nodes]) for k in convs]
    assert fused == CONV_KERNELS[name]
    for kernel in convs:
        conv = kernel.group.nodes[0]
        assert len(conv.inputs) == 3, f"{conv.name}: bias (with the folded shift) not in conv"
