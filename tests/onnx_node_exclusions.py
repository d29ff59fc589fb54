"""Which ONNX node tests are in coretune's scope, and the in-scope ones that cannot pass.

In scope: the node tests whose models (subgraphs included) use only the ONNX op types the
importer claims. ``EXCLUDED`` is the one list of in-scope tests expected to fail, each with the
real reason; every other in-scope test must pass.
"""

import re

import onnx

SUPPORTED_OP_TYPES = frozenset(
    """
    Add Sub Mul Div Pow Neg Abs Exp Log Sqrt Reciprocal Tanh Sigmoid Erf Relu LeakyRelu Clip
    HardSigmoid HardSwish Gelu Softmax LogSoftmax MatMul Gemm Conv ConvTranspose
    BatchNormalization LayerNormalization MaxPool AveragePool GlobalAveragePool GlobalMaxPool
    Flatten Reshape Transpose Squeeze Unsqueeze Concat Split Slice Gather Pad Cast Identity
    Dropout Constant ConstantOfShape Shape Expand Where Equal Greater Less Max Min Sum
    ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ArgMax ArgMin Resize GreaterOrEqual
    LessOrEqual And Or Xor Not Mod GatherElements Trilu CumSum Range Einsum
    IsNaN GatherND ScatterND
""".split()
)

# The number of in-scope node tests each onnx release ships (checked by the test suite).
EXPECTED_IN_SCOPE = {"1.23.2": 865}

# test-name pattern (without the _cpu suffix) -> why it cannot pass.
EXCLUDED = {
    r"^test_(averagepool|maxpool)_3d_": "3-D pooling is outside the core op set (2-D only)",
    r"^test_convtranspose_3d$": "3-D convolution is outside the core op set (2-D only)",
    r"^test_maxpool_with_argmax_": "MaxPool's Indices output has no core op",
    r"^test_resize_.*_antialias$": "antialiased Resize is outside resize2d's semantics",
    r"^test_training_dropout(_default)?(_mask)?$": (
        "training-mode dropout with ratio > 0 is random (ratio 0 is supported and passes)"
    ),
    r"^test_equal_string": "string tensors are outside the core dtypes",
    r"^test_identity_(opt|sequence)$": "optional and sequence values are outside the core IR",
    r"^test_cast_e8m0_FLOAT(16)?_to_FLOAT8E8M0$": (
        "the core cast rounds float8_e8m0fnu to nearest and overflows to NaN; ONNX rounds up "
        "(round_mode) and saturates"
    ),
}


def exclusion_reason(test_name: str) -> str | None:
    for pattern, reason in EXCLUDED.items():
        if re.search(pattern, test_name):
            return reason
    return None


def op_types(graph: onnx.GraphProto) -> set[str]:
    """Every op type in a graph, including those in subgraph attributes (If, Loop, Scan)."""
    found = set()
    for node in graph.node:
        found.add(node.op_type)
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs]:
                found |= op_types(sub)
    return found


def in_scope(cases) -> list[str]:
    """Names of the node test cases (from onnx's loader) that use only supported op types."""
    return sorted(c.name for c in cases if op_types(c.model.graph) <= SUPPORTED_OP_TYPES)


def expected_in_scope() -> int | None:
    return EXPECTED_IN_SCOPE.get(onnx.__version__)
