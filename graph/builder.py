"""A numpy-like API for writing core-op graphs directly.

    b = GraphBuilder("mlp")
    x = b.input("x", (1, 784))
    h = b.relu(b.dense(x, b.param("w1", w1), b.param("b1", b1)))
    g = b.build(b.softmax(h))

Every core op is a method (``b.conv2d(x, w, strides=(2, 2))``); types are inferred as each
node is added, so a mistake fails on the line that made it.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

from coretune.errors import GraphError

from .dtypes import check_dtype, dtype_name
from .ir import Graph, Node, TensorType
from .registry import get_op


@dataclass(frozen=True)
class Value:
    """A tensor in a graph under construction."""

    name: str
    type: TensorType
    builder: "GraphBuilder"

    shape = property(lambda self: self.type.shape)
    dtype = property(lambda self: self.type.dtype)
    ndim = property(lambda self: len(self.type.shape))

    def _other(self, other):
        return other if isinstance(other, Value) else self.builder.const(other, self.dtype)

    def __add__(self, o):
        return self.builder.add(self, self._other(o))

    def __radd__(self, o):
        return self.builder.add(self._other(o), self)

    def __sub__(self, o):
        return self.builder.subtract(self, self._other(o))

    def __rsub__(self, o):
        return self.builder.subtract(self._other(o), self)

    def __mul__(self, o):
        return self.builder.multiply(self, self._other(o))

    def __rmul__(self, o):
        return self.builder.multiply(self._other(o), self)

    def __truediv__(self, o):
        return self.builder.divide(self, self._other(o))

    def __rtruediv__(self, o):
        return self.builder.divide(self._other(o), self)

    def __matmul__(self, o):
        return self.builder.matmul(self, o)

    def __neg__(self):
        return self.builder.negative(self)

    def __pow__(self, o):
        return self.builder.power(self, self._other(o))


class GraphBuilder:
    def __init__(self, name: str = "graph"):
        self.name = name
        self._inputs: dict[str, TensorType] = {}
        self._params: dict[str, np.ndarray] = {}
        self._nodes: list[Node] = []
        self._types: dict[str, TensorType] = {}
        self._counter = 0

    def _fresh(self, stem: str) -> str:
        while True:
            self._counter += 1
            name = f"{stem}_{self._counter}"
            if name not in self._types:
                return name

    def _claim(self, name: str, ttype: TensorType) -> Value:
        if name in self._types:
            raise GraphError(f"tensor name {name!r} is already used")
        self._types[name] = ttype
        return Value(name, ttype, self)

    def input(self, name: str, shape, dtype: str = "float32") -> Value:
        ttype = TensorType(tuple(int(d) for d in shape), check_dtype(dtype))
        self._inputs[name] = ttype
        return self._claim(name, ttype)

    def param(self, name: str, array) -> Value:
        array = np.asarray(array)
        self._params[name] = array
        return self._claim(name, TensorType.of(array))

    def const(self, value, dtype: str | None = None) -> Value:
        array = np.asarray(value, dtype=None if dtype is None else np.dtype(dtype_name(dtype)))
        return self.param(self._fresh("const"), array)

    def op(self, op_name: str, *inputs: Value, name: str | None = None, **attrs: Any):
        """Add one node; returns a Value, or a tuple of Values for multi-output ops."""
        op = get_op(op_name)
        for v in inputs:
            if not isinstance(v, Value) or v.builder is not self:
                raise GraphError(f"{op_name}: operands must be Values of this builder, got {v!r}")
        attrs = op.normalize_attrs(attrs)
        outs = op.infer([v.shape for v in inputs], [v.dtype for v in inputs], attrs)
        node_name = name or self._fresh(op_name)
        out_names = (
            [node_name] if len(outs) == 1 else [f"{node_name}:{i}" for i in range(len(outs))]
        )
        values = [
            self._claim(n, TensorType(s, t)) for n, (s, t) in zip(out_names, outs, strict=True)
        ]
        self._nodes.append(Node(node_name, op_name, [v.name for v in inputs], out_names, attrs))
        return values[0] if len(values) == 1 else tuple(values)

    def __getattr__(self, op_name: str):
        if op_name.startswith("_"):
            raise AttributeError(op_name)
        get_op(op_name)  # raises for an unknown op
        return lambda *inputs, **attrs: self.op(op_name, *inputs, **attrs)

    def build(self, *outputs: Value) -> Graph:
        graph = Graph(
            self.name,
            dict(self._inputs),
            dict(self._params),
            list(self._nodes),
            [v.name for v in outputs],
        )
        return graph.copy().validate()  # later builds must not share mutable nodes
