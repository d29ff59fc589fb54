"""Operator fusion by op pattern: which nodes run as one kernel.

Groups form from the graph's sinks backwards: a group's root absorbs the producers of its
inputs while the result stays one kernel some template computes:
- an anchor (dense, matmul, conv2d, conv2d_transpose, pools) absorbs the elementwise and
  broadcast ops after it that keep its output shape (bias, batch norm, activation, residual
  add): its epilogue;
- a reduction (sum..argmin, softmax, layer_norm, global pools) absorbs that epilogue too, and
  the injective ops before it: its prologue;
- otherwise injective ops fuse into one injective kernel.
A tensor is absorbed only when every reader is in the group and it is not a graph output, so
nothing is computed twice. Views (reshape, flatten, expand_dims, squeeze) alone in a group need
no kernel: the executor aliases their buffer. A constant pad of the last two axes alone in a
group is a "pad" group: the executor fills its buffer with the pad value once and copies the
input into it with a device rectangle copy each run (no kernel, see is_copy_pad).
"""

from dataclasses import dataclass, field

from ..ir import Graph, Node
from ..registry import Pattern, get_op

VIEWS = frozenset({"reshape", "flatten", "expand_dims", "squeeze"})


def is_copy_pad(node: Node) -> bool:
    """A constant pad of at most the last two axes: its interior is one rectangle copy."""
    if node.op != "pad" or node.attrs["mode"] != "constant":
        return False
    widths = node.attrs["pad_width"]
    return len(widths) >= 2 and not any(widths[:-4])


@dataclass
class FusedGroup:
    nodes: list[Node]  # topological order
    outputs: list[str]
    inputs: list[str] = field(default_factory=list)
    kind: str = "injective"  # "anchor", "reduction", "injective", "view" or "pad"

    @property
    def name(self) -> str:
        return self.nodes[-1].name


def _pattern(node: Node) -> Pattern:
    return get_op(node.op).pattern


class _Builder:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.producer = graph.producers()
        self.readers = graph.consumers()
        self.assigned: set[str] = set()  # node names already in a group
        self.outputs = set(graph.outputs)

    def anchor_group(self, anchor: Node) -> FusedGroup:
        """The anchor and the elementwise ops of its shape after it, as long as the group keeps
        one output: e.g. dense + Gelu, which reads the dense output twice."""
        shape = self.graph.types[anchor.outputs[0]].shape
        downstream = self._descendants(anchor)
        members, produced = [anchor], set(anchor.outputs)
        best = list(members)
        start = self.graph.nodes.index(anchor) + 1
        for node in self.graph.nodes[start:]:
            if node.name in self.assigned or not any(i in produced for i in node.inputs):
                continue
            if (
                _pattern(node) > Pattern.BROADCAST
                or len(node.outputs) != 1
                or self.graph.types[node.outputs[0]].shape != shape
            ):
                continue
            # Another operand computed from the anchor outside the group would be a cycle.
            if any(
                i not in produced and i in self.producer and self.producer[i].name in downstream
                for i in node.inputs
            ):
                continue
            members.append(node)
            produced.update(node.outputs)
            if len(self._open(members, produced)) == 1:
                best = list(members)
        self.assigned.update(n.name for n in best)
        output = self._open(best, {o for n in best for o in n.outputs})[0]
        produced = {o for n in best for o in n.outputs}
        inputs = list(dict.fromkeys(i for n in best for i in n.inputs if i not in produced))
        return FusedGroup(best, [output], inputs, "anchor")

    def _open(self, members, produced) -> list[str]:
        """Tensors of the group that something outside it needs (its outputs)."""
        inside = {n.name for n in members}
        return [
            t
            for t in produced
            if t in self.outputs
            or any(r.name not in inside for r in self.readers.get(t, []))
            or not self.readers.get(t)
        ]

    def _descendants(self, anchor: Node) -> set[str]:
        """Names of the nodes that depend on the anchor's output."""
        seen, stack = set(), list(anchor.outputs)
        while stack:
            for reader in self.readers.get(stack.pop(), []):
                if reader.name not in seen:
                    seen.add(reader.name)
                    stack.extend(reader.outputs)
        return seen

    def group_from(self, root: Node) -> FusedGroup:
        members = [root]
        kind = (
            "anchor"
            if _pattern(root) == Pattern.OUT_ELEMWISE_FUSABLE
            else ("reduction" if _pattern(root) == Pattern.REDUCTION else "injective")
        )
        if _pattern(root) == Pattern.OPAQUE or len(root.outputs) > 1:
            kind = "opaque"
        frontier = [] if kind in ("anchor", "opaque") else list(root.inputs)
        shape = self.graph.types[root.outputs[0]].shape
        heavy_found = kind in ("anchor", "reduction")
        while frontier:
            tensor = frontier.pop()
            node = self.producer.get(tensor)
            if node is None or node.name in self.assigned or node in members:
                continue
            if tensor in self.outputs or len(node.outputs) > 1:
                continue
            if any(r not in members for r in self.readers.get(tensor, [])):
                continue
            pattern = _pattern(node)
            if not heavy_found and pattern in (Pattern.OUT_ELEMWISE_FUSABLE, Pattern.REDUCTION):
                epilogue_ok = all(
                    _pattern(m) <= Pattern.BROADCAST
                    and self.graph.types[m.outputs[0]].shape == shape
                    for m in members
                )
                if not epilogue_ok or self.graph.types[node.outputs[0]].shape != shape:
                    continue
                members.insert(0, node)
                heavy_found = True
                kind = "anchor" if pattern == Pattern.OUT_ELEMWISE_FUSABLE else "reduction"
                if kind == "reduction":
                    frontier.extend(node.inputs)  # its prologue
                continue
            if pattern > Pattern.INJECTIVE:
                continue
            if kind == "anchor" and (
                pattern > Pattern.BROADCAST or self.graph.types[tensor].shape != shape
            ):
                continue  # an anchor's epilogue computes other operands only elementwise
            members.append(node)
            frontier.extend(node.inputs)
        order = {n.name: i for i, n in enumerate(self.graph.nodes)}
        # Topological order, but an anchor first: its epilogue's other operands never depend
        # on it, and templates expect the anchor to open the kernel.
        members.sort(
            key=lambda n: (
                not (kind == "anchor" and _pattern(n) == Pattern.OUT_ELEMWISE_FUSABLE),
                order[n.name],
            )
        )
        self.assigned.update(n.name for n in members)
        if kind == "injective" and len(members) == 1:
            if members[0].op in VIEWS:
                kind = "view"
            elif is_copy_pad(members[0]):
                kind = "pad"
        produced = {o for n in members for o in n.outputs}
        inputs = list(dict.fromkeys(i for n in members for i in n.inputs if i not in produced))
        return FusedGroup(members, list(root.outputs), inputs, kind)


def fuse(graph: Graph) -> list[FusedGroup]:
    """Partition the graph's nodes into kernels, returned in an order that respects data flow."""
    graph.validate()
    builder = _Builder(graph)
    # Anchors claim their epilogues first, so a reduction downstream cannot take them as its
    # prologue: conv + bias + activation + residual add is worth more as one kernel.
    groups = [
        builder.anchor_group(n) for n in graph.nodes if _pattern(n) == Pattern.OUT_ELEMWISE_FUSABLE
    ]
    for node in reversed(graph.nodes):
        if node.name not in builder.assigned:
            groups.append(builder.group_from(node))
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    return sorted(groups, key=lambda g: order[g.nodes[-1].name])
