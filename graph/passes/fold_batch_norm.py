"""Fold an inference batch_norm into the conv2d or dense before it (constant weights only)."""

import numpy as np

from ..ir import Graph
from .simplify import remove_dead_code

# op -> the batch_norm axis that is the op's output-channel axis, and the weight's channel axis
_FOLDABLE = {"conv2d": (1, 0), "dense": (-1, 0)}


def fold_batch_norm(graph: Graph) -> Graph:
    graph = graph.copy().validate()
    producer, users = graph.producers(), graph.consumers()
    rename = {}
    for bn in [n for n in graph.nodes if n.op == "batch_norm"]:
        data = bn.inputs[0]
        anchor = producer.get(data)
        if anchor is None or anchor.op not in _FOLDABLE or len(users.get(data, [])) != 1:
            continue
        if data in graph.outputs or not all(p in graph.params for p in bn.inputs[1:]):
            continue
        weight_name = anchor.inputs[1]
        if weight_name not in graph.params or len(users.get(weight_name, [])) != 1:
            continue
        rank = len(graph.types[data].shape)
        out_axis, weight_axis = _FOLDABLE[anchor.op]
        if bn.attrs["axis"] % rank != out_axis % rank:
            continue
        if len(anchor.inputs) > 2 and len(users.get(anchor.inputs[2], [])) != 1:
            continue  # a bias shared with another node must keep its value
        gamma, beta, mean, var = (graph.params[p].astype(np.float64) for p in bn.inputs[1:])
        scale = gamma / np.sqrt(var + bn.attrs["epsilon"])
        weight = graph.params[weight_name]
        view = [1] * weight.ndim
        view[weight_axis] = -1
        bias = graph.params[anchor.inputs[2]] if len(anchor.inputs) > 2 else 0.0
        new_weight = (weight * scale.reshape(view)).astype(weight.dtype)
        new_bias = ((bias - mean) * scale + beta).astype(weight.dtype)
        graph.params[weight_name] = new_weight
        bias_name = anchor.inputs[2] if len(anchor.inputs) > 2 else f"{anchor.name}.folded_bias"
        graph.params[bias_name] = new_bias
        anchor.inputs = [anchor.inputs[0], weight_name, bias_name]
        rename[bn.outputs[0]] = data  # readers of the batch norm now read the anchor
        bn.inputs = []  # marks it for removal
    if not rename:
        return graph
    for node in graph.nodes:
        node.inputs = [rename.get(i, i) for i in node.inputs]
    graph.nodes = [n for n in graph.nodes if not (n.op == "batch_norm" and not n.inputs)]
    for old, new in rename.items():  # a graph output keeps its name: rename the anchor's output
        if old in graph.outputs:
            _rename_tensor(graph, new, old)
    graph.types = {}
    return remove_dead_code(graph)


def _rename_tensor(graph: Graph, old: str, new: str) -> None:
    for node in graph.nodes:
        node.inputs = [new if i == old else i for i in node.inputs]
        node.outputs = [new if o == old else o for o in node.outputs]
    graph.outputs = [new if o == old else o for o in graph.outputs]
