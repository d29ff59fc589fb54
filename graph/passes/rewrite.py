"""A rewrite shared by passes that give a node's data input a step of its own."""

from collections.abc import Callable

from ..ir import Graph, Node, fresh_name


def split_off_input_steps(
    graph: Graph, step_of: Callable[[Graph, Node], tuple | None], names: tuple[str, str]
) -> Graph:
    """Put a node before each node whose data input (``inputs[0]``, not a parameter) needs a
    step of its own. ``step_of(graph, node)`` says which, as (op, attrs of the new node,
    attrs the node keeps instead), or None; the new node and its output are named
    ``<node>.<names[0]>`` and ``<node>.<names[1]>``. The graph comes back unchanged when no
    node needs one."""
    graph = graph.copy().validate()
    taken = set(graph.types) | {n.name for n in graph.nodes}
    nodes = []
    for node in graph.nodes:
        step = step_of(graph, node)
        if step is not None and node.inputs[0] not in graph.params:
            op, attrs, kept = step
            output = fresh_name(f"{node.name}.{names[1]}", taken)
            name = fresh_name(f"{node.name}.{names[0]}", taken)
            nodes.append(Node(name, op, [node.inputs[0]], [output], attrs))
            node.inputs = [output, *node.inputs[1:]]
            node.attrs.update(kept)
        nodes.append(node)
    if len(nodes) == len(graph.nodes):
        return graph
    graph.nodes = nodes
    graph.types = {}
    return graph.validate()
