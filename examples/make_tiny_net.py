"""Build examples/tiny_net.onnx: a small image classifier, deterministic, made with onnx.helper.

Conv-BN-ReLU stem, a MobileNetV2-style block (depthwise 3x3 + Clip(0, 6), pointwise 1x1,
residual add), global average pooling and a Gemm classifier with Softmax; 1x3x32x32 input.
Run: python examples/make_tiny_net.py  (the file it writes is committed; a test rebuilds it).
"""

import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = pathlib.Path(__file__).with_name("tiny_net.onnx")


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(2026)
    inits = []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def weight(name, *shape):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return const(name, rng.standard_normal(shape) * np.sqrt(2.0 / fan_in))

    def bn(prefix, channels):
        return [
            const(f"{prefix}.gamma", 1 + 0.1 * rng.standard_normal(channels)),
            const(f"{prefix}.beta", 0.1 * rng.standard_normal(channels)),
            const(f"{prefix}.mean", 0.1 * rng.standard_normal(channels)),
            const(f"{prefix}.var", rng.uniform(0.5, 1.5, channels)),
        ]

    nodes = [
        helper.make_node(
            "Conv",
            ["input", weight("stem.w", 16, 3, 3, 3)],
            ["stem.conv"],
            pads=[1, 1, 1, 1],
            strides=[2, 2],
            name="stem_conv",
        ),
        helper.make_node(
            "BatchNormalization", ["stem.conv", *bn("stem.bn", 16)], ["stem.bn"], name="stem_bn"
        ),
        helper.make_node("Relu", ["stem.bn"], ["stem.out"], name="stem_relu"),
        helper.make_node(
            "Conv",
            ["stem.out", weight("dw.w", 16, 1, 3, 3)],
            ["dw.conv"],
            pads=[1, 1, 1, 1],
            group=16,
            name="dw_conv",
        ),
        helper.make_node(
            "BatchNormalization", ["dw.conv", *bn("dw.bn", 16)], ["dw.bn"], name="dw_bn"
        ),
        helper.make_node("Clip", ["dw.bn", "six.lo", "six.hi"], ["dw.out"], name="dw_relu6"),
        helper.make_node(
            "Conv",
            ["dw.out", weight("pw.w", 16, 16, 1, 1), weight("pw.b", 16)],
            ["pw.conv"],
            name="pw_conv",
        ),
        helper.make_node("Add", ["pw.conv", "stem.out"], ["block.out"], name="residual"),
        helper.make_node("GlobalAveragePool", ["block.out"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["features"], name="flatten"),
        helper.make_node(
            "Gemm",
            ["features", weight("fc.w", 10, 16), weight("fc.b", 10)],
            ["logits"],
            transB=1,
            name="fc",
        ),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1, name="softmax"),
    ]
    const("six.lo", 0.0)
    const("six.hi", 6.0)
    graph = helper.make_graph(
        nodes,
        "tiny_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="coretune-examples"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


if __name__ == "__main__":
    path = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    path.write_bytes(build().SerializeToString())
    print(f"wrote {path}")
