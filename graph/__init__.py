"""coretune.graph: the core-op registry, the graph IR, ONNX exchange and the executors."""

from .builder import GraphBuilder, Value
from .ir import Graph, Node, TensorType
from .reference import run_reference
from .registry import Attr, OpDef, Pattern, all_ops, get_op

__all__ = [
    "Attr",
    "Graph",
    "GraphBuilder",
    "Node",
    "OpDef",
    "Pattern",
    "TensorType",
    "Value",
    "all_ops",
    "get_op",
    "run_reference",
]
