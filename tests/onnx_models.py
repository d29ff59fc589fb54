"""Small ONNX models written with onnx.helper, the way exporters write them, plus onnxruntime
helpers. Shared by the exchange tests and, later, by other tests and the benchmarks.

Every builder is deterministic (seeded numpy) and returns ``(ModelProto, example inputs)``;
each model passes the ONNX checker, runs in onnxruntime and takes well under a second on the
reference executor.
"""

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # what torch.onnx writes by default; LayerNormalization needs 17
FLOAT = TensorProto.FLOAT


class _Net:
    """Collects nodes and initializers; node outputs are named after their nodes."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []

    def const(self, name: str, array) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, shape, fan_in: int | None = None) -> str:
        scale = 1 / math.sqrt(fan_in or shape[-1])
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def node(self, op_type: str, inputs, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def batch_norm(self, x: str, name: str, channels: int) -> str:
        stats = [
            self.const(f"{name}.{what}", value.astype(np.float32))
            for what, value in (
                ("weight", 1 + 0.1 * self.rng.standard_normal(channels)),
                ("bias", 0.1 * self.rng.standard_normal(channels)),
                ("running_mean", 0.1 * self.rng.standard_normal(channels)),
                ("running_var", 0.5 + self.rng.random(channels)),
            )
        ]
        return self.node("BatchNormalization", [x, *stats], name, epsilon=1e-5)

    def conv(self, x: str, name: str, cin: int, cout: int, k: int, group: int = 1, **attrs):
        w = self.weight(f"{name}.weight", (cout, cin // group, k, k), fan_in=cin // group * k * k)
        b = self.const(f"{name}.bias", (0.1 * self.rng.standard_normal(cout)).astype(np.float32))
        pad = k // 2
        return self.node(
            "Conv", [x, w, b], name, group=group, kernel_shape=[k, k], pads=[pad] * 4, **attrs
        )

    def linear(self, x: str, name: str, cin: int, cout: int) -> str:
        """MatMul + Add, as torch.onnx writes nn.Linear on a tensor of rank > 2."""
        product = self.node(
            "MatMul", [x, self.weight(f"{name}.weight", (cin, cout), cin)], f"{name}/MatMul"
        )
        bias = self.const(f"{name}.bias", (0.1 * self.rng.standard_normal(cout)).astype("f4"))
        return self.node("Add", [product, bias], f"{name}/Add")

    def model(self, name: str, inputs, outputs, opset: int = OPSET) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(n, FLOAT, shape) for n, shape in inputs],
            [helper.make_tensor_value_info(n, FLOAT, shape) for n, shape in outputs],
            initializer=self.inits,
        )
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(
            graph,
            opset_imports=opsets,
            producer_name="coretune-tests",
            ir_version=helper.find_min_ir_version_for(opsets),
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def _example(seed: int, **shapes) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def mlp(batch: int = 1):
    """Gemm (transB=1) -> Relu -> MatMul + Add -> Relu -> Gemm -> Softmax."""
    net = _Net(seed=1)
    w1 = net.weight("fc1.weight", (32, 64))
    b1 = net.const("fc1.bias", np.full(32, 0.1, np.float32))
    h = net.node("Relu", [net.node("Gemm", ["x", w1, b1], "fc1", transB=1)], "relu1")
    h = net.node("Relu", [net.linear(h, "fc2", 32, 32)], "relu2")
    w3 = net.weight("fc3.weight", (16, 32))
    b3 = net.const("fc3.bias", np.zeros(16, np.float32) + 0.05)
    logits = net.node("Gemm", [h, w3, b3], "fc3", transB=1)
    net.node("Softmax", [logits], "probs", axis=-1)
    model = net.model("mlp", [("x", [batch, 64])], [("probs", [batch, 16])])
    return model, _example(11, x=(batch, 64))


def cnn(batch: int = 1, width: int = 8, size: int = 16):
    """Conv + BN + Relu, a residual block, MaxPool, GlobalAveragePool, Flatten, Gemm.
    ``width`` channels in the residual block (twice that after it) on ``size`` x ``size``
    images: the tests keep it small; the benchmarks also run it at a ResNet stage's size."""
    net = _Net(seed=2)
    wide = 2 * width
    h = net.node(
        "Relu", [net.batch_norm(net.conv("x", "conv1", 3, width, 3), "bn1", width)], "relu1"
    )
    r = net.node(
        "Relu", [net.batch_norm(net.conv(h, "conv2", width, width, 3), "bn2", width)], "relu2"
    )
    r = net.batch_norm(net.conv(r, "conv3", width, width, 3), "bn3", width)
    h = net.node("Relu", [net.node("Add", [r, h], "residual")], "relu3")
    h = net.node("MaxPool", [h], "pool", kernel_shape=[2, 2], strides=[2, 2])
    h = net.node("Relu", [net.conv(h, "conv4", width, wide, 3, strides=[2, 2])], "relu4")
    h = net.node("Flatten", [net.node("GlobalAveragePool", [h], "gap")], "flatten", axis=1)
    w = net.weight("fc.weight", (10, wide))
    b = net.const("fc.bias", np.linspace(-0.5, 0.5, 10, dtype=np.float32))
    net.node("Gemm", [h, w, b], "logits", transB=1)
    model = net.model("cnn", [("x", [batch, 3, size, size])], [("logits", [batch, 10])])
    return model, _example(12, x=(batch, 3, size, size))


def mobilenet_block(batch: int = 1, channels: int = 8, expand: int = 3, batch_norms: bool = False):
    """MobileNetV2 inverted residual: 1x1 expand, ReLU6 (Clip 0..6), 3x3 depthwise, ReLU6,
    1x1 project, residual Add. A BatchNormalization follows the expand conv; with
    ``batch_norms`` one follows every conv, as torchvision's InvertedResidual exports unfolded
    (the default keeps the original, lighter block)."""
    net = _Net(seed=3)
    wide = channels * expand
    low = net.const("relu6.min", np.float32(0.0))
    high = net.const("relu6.max", np.float32(6.0))

    def norm(h: str, name: str, width: int) -> str:
        return net.batch_norm(h, name, width) if batch_norms else h

    h = net.batch_norm(net.conv("x", "expand", channels, wide, 1), "expand_bn", wide)
    h = net.node("Clip", [h, low, high], "expand_relu6")
    h = norm(net.conv(h, "depthwise", wide, wide, 3, group=wide), "depthwise_bn", wide)
    h = net.node("Clip", [h, low, high], "depthwise_relu6")
    h = norm(net.conv(h, "project", wide, channels, 1), "project_bn", channels)
    net.node("Add", ["x", h], "y")
    shape = [batch, channels, 12, 12]
    model = net.model("mobilenet_block", [("x", shape)], [("y", shape)])
    return model, _example(13, x=tuple(shape))


def transformer_layer(
    batch: int = 1, seq: int = 8, dim: int = 16, heads: int = 2, gelu_op: bool = False
):
    """Post-norm encoder layer: Q/K/V projections, heads by Reshape + Transpose, scaled
    softmax attention, output projection, residual + LayerNormalization, a Gelu feed-forward
    (the opset-20 Gelu op, or the Erf formula at opset 17), residual + LayerNormalization."""
    net = _Net(seed=4)
    head_dim = dim // heads
    split_shape = net.const("heads_shape", np.array([0, 0, heads, head_dim], np.int64))
    merged_shape = net.const("merged_shape", np.array([batch, seq, dim], np.int64))

    def project_heads(name: str, perm) -> str:
        h = net.node("Reshape", [net.linear("x", name, dim, dim), split_shape], f"{name}/heads")
        return net.node("Transpose", [h], f"{name}/T", perm=perm)

    q = project_heads("q", [0, 2, 1, 3])
    k = project_heads("k", [0, 2, 3, 1])  # keys come out transposed for q @ k^T
    v = project_heads("v", [0, 2, 1, 3])
    scores = net.node("MatMul", [q, k], "scores")
    scale = net.const("scale", np.float32(1 / math.sqrt(head_dim)))
    attn = net.node("Softmax", [net.node("Mul", [scores, scale], "scaled")], "attn", axis=-1)
    ctx = net.node(
        "Transpose", [net.node("MatMul", [attn, v], "context")], "context/T", perm=[0, 2, 1, 3]
    )
    ctx = net.node("Reshape", [ctx, merged_shape], "context/merge")
    h = net.node("Add", ["x", net.linear(ctx, "out", dim, dim)], "residual1")
    h = _layer_norm(net, h, "norm1", dim)
    f = net.linear(h, "ffn1", dim, 2 * dim)
    f = net.node("Gelu", [f], "gelu") if gelu_op else _erf_gelu(net, f, "gelu")
    h = net.node("Add", [h, net.linear(f, "ffn2", 2 * dim, dim)], "residual2")
    _layer_norm(net, h, "y", dim)
    shape = [batch, seq, dim]
    model = net.model(
        "transformer_layer", [("x", shape)], [("y", shape)], opset=20 if gelu_op else OPSET
    )
    return model, _example(14, x=tuple(shape))


def _layer_norm(net: _Net, x: str, name: str, dim: int) -> str:
    gamma = net.const(f"{name}.weight", (1 + 0.1 * net.rng.standard_normal(dim)).astype("f4"))
    beta = net.const(f"{name}.bias", (0.1 * net.rng.standard_normal(dim)).astype("f4"))
    return net.node("LayerNormalization", [x, gamma, beta], name, axis=-1, epsilon=1e-5)


def _erf_gelu(net: _Net, x: str, name: str) -> str:
    """0.5 * x * (1 + erf(x / sqrt(2))), node for node as torch.onnx writes nn.GELU."""
    root2 = net.const(f"{name}.sqrt2", np.float32(math.sqrt(2)))
    one = net.const(f"{name}.one", np.float32(1.0))
    half = net.const(f"{name}.half", np.float32(0.5))
    e = net.node("Erf", [net.node("Div", [x, root2], f"{name}/Div")], f"{name}/Erf")
    y = net.node("Mul", [x, net.node("Add", [e, one], f"{name}/Add")], f"{name}/Mul")
    return net.node("Mul", [y, half], f"{name}/Mul_1")


def dynamic_reshape(batch: int = 2):
    """torch.onnx's flatten with a symbolic batch: Shape -> Gather -> Unsqueeze -> Concat
    -> Reshape, then a Gemm. The input's batch dimension is the symbol 'batch'."""
    net = _Net(seed=5)
    h = net.node("Relu", ["x"], "relu")
    shape = net.node("Shape", [h], "shape")
    n = net.node("Gather", [shape, net.const("zero", np.array(0, np.int64))], "batch", axis=0)
    n = net.node("Unsqueeze", [n, net.const("axes0", np.array([0], np.int64))], "batch_1d")
    rest = net.const("minus_one", np.array([-1], np.int64))
    target = net.node("Concat", [n, rest], "flat_shape", axis=0)
    flat = net.node("Reshape", [h, target], "flat")
    w = net.weight("fc.weight", (10, 48))
    b = net.const("fc.bias", np.full(10, -0.1, np.float32))
    net.node("Gemm", [flat, w, b], "logits", transB=1)
    model = net.model("dynamic_reshape", [("x", ["batch", 3, 4, 4])], [("logits", ["batch", 10])])
    return model, _example(15, x=(batch, 3, 4, 4))


MODELS = {
    "mlp": mlp,
    "mlp_batch4": lambda: mlp(batch=4),
    "cnn": cnn,
    "mobilenet_block": mobilenet_block,
    "transformer_layer": transformer_layer,
    "transformer_layer_gelu_op": lambda: transformer_layer(gelu_op=True),
    "dynamic_reshape": dynamic_reshape,
}


# ---- onnxruntime ---------------------------------------------------------------------------
def run_onnxruntime(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` on onnxruntime's CPU provider. Outputs of the narrow types onnxruntime
    hands back as raw bytes (float8, ...) are viewed as their ml_dtypes type."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # no warnings about unused initializers and the like
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    results = session.run(None, inputs)
    wanted = [
        helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type) for o in model.graph.output
    ]
    return [
        r.view(w) if r.dtype != w and r.dtype.itemsize == w.itemsize else r
        for r, w in zip(results, wanted, strict=True)
    ]


def assert_close(
    actual: np.ndarray, expected: np.ndarray, what: str = "output", rtol: float | None = None
) -> None:
    """Same dtype and shape; floats within ``rtol`` of the expected norm (1e-5 for 32/64-bit
    floats, 1e-3 below), everything else exactly equal."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if expected.dtype.kind != "f" and "float" not in expected.dtype.name:
        np.testing.assert_array_equal(actual, expected, err_msg=what)
        return
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    assert (np.isnan(a) == np.isnan(e)).all(), f"{what}: NaNs differ"
    a, e = np.nan_to_num(a), np.nan_to_num(e)
    if rtol is None:
        rtol = 1e-5 if expected.dtype.itemsize >= 4 else 1e-3
    error = np.linalg.norm(a - e) / max(np.linalg.norm(e), np.finfo(np.float32).tiny)
    assert error <= rtol, f"{what}: relative error {error:.3g} > {rtol:g}"
