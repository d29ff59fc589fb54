"""Constant folding: evaluate every node whose inputs are all parameters, once, at compile time."""

from ..ir import Graph
from ..registry import get_op
from .simplify import remove_dead_code


def fold_constants(graph: Graph, max_bytes: int = 64 << 20) -> Graph:
    """Replace parameter-only subgraphs by their values (skipping results over ``max_bytes``,
    e.g. a broadcast that would blow a small constant up to a huge one)."""
    graph = graph.copy().validate()
    kept = []
    for node in graph.nodes:
        if all(i in graph.params for i in node.inputs) and node.inputs:
            if all(graph.types[o].dtype and _nbytes(graph, o) <= max_bytes for o in node.outputs):
                values = get_op(node.op).evaluate(
                    [graph.params[i] for i in node.inputs], node.attrs
                )
                graph.params.update(zip(node.outputs, values, strict=True))
                continue
        kept.append(node)
    graph.nodes = kept
    graph.types = {}
    return remove_dead_code(graph)


def _nbytes(graph: Graph, name: str) -> int:
    import math

    from ..dtypes import to_numpy

    t = graph.types[name]
    return math.prod(t.shape) * to_numpy(t.dtype).itemsize
