"""Dead-code and identity removal: nodes whose output nobody reads; ops that change nothing."""

from ..ir import Graph, Node


def _is_identity(graph: Graph, node: Node) -> bool:
    """An op that returns its input unchanged (same shape, dtype and element order)."""
    src, out = graph.types[node.inputs[0]], graph.types[node.outputs[0]]
    if src != out or len(node.outputs) != 1:
        return False
    a = node.attrs
    if node.op in ("reshape", "flatten", "expand_dims", "squeeze", "broadcast_to", "cast"):
        return True
    if node.op == "transpose":
        return a["axes"] is not None and list(a["axes"]) == list(range(len(src.shape)))
    if node.op == "strided_slice":  # a full slice; a negative stride would reverse
        return all(s > 0 for s in a["strides"] or (1,))
    if node.op == "pad":
        return True  # same shape in and out: it pads nothing
    if node.op == "concatenate" or node.op == "split":
        return len(node.inputs) == 1 and len(node.outputs) == 1
    return False


def remove_identities(graph: Graph) -> Graph:
    """Bypass identity ops; a graph output keeps its name (its producer's output is renamed)."""
    graph = graph.copy().validate()
    outputs = set(graph.outputs)
    rename: dict[str, str] = {}
    kept = []
    producer = graph.producers()
    readers = graph.consumers()
    for node in graph.nodes:
        node.inputs = [rename.get(i, i) for i in node.inputs]
        if not _is_identity(graph, node):
            kept.append(node)
        elif node.outputs[0] not in outputs:
            rename[node.outputs[0]] = node.inputs[0]
        elif _can_take_name(node.inputs[0], producer, readers, outputs):
            # The identity makes a graph output: its producer takes the output's name instead.
            producer[node.inputs[0]].outputs = [
                node.outputs[0] if o == node.inputs[0] else o
                for o in producer[node.inputs[0]].outputs
            ]
        else:
            kept.append(node)
    graph.nodes = kept
    graph.types = {}
    return remove_dead_code(graph)


def remove_dead_code(graph: Graph) -> Graph:
    """Drop nodes and parameters that no graph output depends on."""
    graph = graph.copy()
    producer = graph.producers()
    live: set[str] = set()
    stack = list(graph.outputs)
    while stack:
        name = stack.pop()
        if name in live:
            continue
        live.add(name)
        if name in producer:
            stack.extend(producer[name].inputs)
    graph.nodes = [n for n in graph.nodes if any(o in live for o in n.outputs)]
    graph.params = {k: v for k, v in graph.params.items() if k in live}
    graph.types = {}
    return graph.validate()


def _can_take_name(tensor, producer, readers, outputs) -> bool:
    return tensor in producer and len(readers.get(tensor, [])) == 1 and tensor not in outputs


def split_into_slices(graph: Graph) -> Graph:
    """Each output of a split becomes a strided_slice of its input. A split whose pieces go to
    different consumers (an attention's q, k, v) was a group of its own, with several outputs,
    which no kernel template computes: it ran on the host. As slices, each piece is one
    injective op that fuses into its consumer or runs as a one-output kernel."""
    graph = graph.copy().validate()
    nodes = []
    for node in graph.nodes:
        if node.op != "split" or node.inputs[0] in graph.params:
            nodes.append(node)
            continue
        axis, start = node.attrs["axis"], 0
        for index, (out, size) in enumerate(zip(node.outputs, node.attrs["sizes"], strict=True)):
            attrs = {"begin": (start,), "end": (start + size,), "strides": (1,), "axes": (axis,)}
            nodes.append(
                Node(f"{node.name}/{index}", "strided_slice", [node.inputs[0]], [out], attrs)
            )
            start += size
    graph.nodes = nodes
    graph.types = {}
    return graph.validate()
