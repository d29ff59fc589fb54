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
input into it with a device rectangle copy each run (no kernel, see is_copy_pad). The
concatenations of a chain (concat_chains) stay alone in their groups: they run no kernel.
"""

import math
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


def concat_chains(graph: Graph) -> list[list[Node]]:
    """Chains of concatenations whose inputs each begin with all of the previous one's (a
    DenseNet block: layer i reads the block's input and the features of the layers before
    it), along an axis after only size-1 axes, so that each is a prefix of the last one's
    memory. Their parts, read by the chain only, can then be stored once into the last one's
    buffer, where every concatenation of the chain reads them: no concatenation copies
    anything (placement.concats_in_place; should a part's kernel not store in place after
    all, the links run as concatenation kernels of their own). A chain has two or more
    links, each extended by the next alone (where two extend one, the chain ends there)."""
    readers, outputs = graph.consumers(), set(graph.outputs)
    by_inputs: dict[tuple, Node] = {}
    for node in graph.nodes:
        if node.op == "concatenate":
            by_inputs.setdefault(tuple(node.inputs), node)
    parent_of, children = {}, {}
    for node in by_inputs.values():
        for n in range(len(node.inputs) - 1, 0, -1):  # the longest prefix that is a concat
            parent = by_inputs.get(tuple(node.inputs[:n]))
            if parent is not None:
                if parent.attrs["axis"] == node.attrs["axis"]:
                    parent_of[node.name] = parent
                    children.setdefault(parent.name, []).append(node)
                break
    chains = []
    for node in by_inputs.values():
        parent = parent_of.get(node.name)
        if parent is not None and len(children[parent.name]) == 1:
            continue  # a link of the chain that starts at (or above) its parent
        chain = [node]
        while len(children.get(chain[-1].name, [])) == 1:
            chain.append(children[chain[-1].name][0])
        if len(chain) >= 2 and _chain_in_place(graph, chain, readers, outputs):
            chains.append(chain)
    return chains


def _chain_in_place(graph: Graph, chain: list[Node], readers, outputs) -> bool:
    """Prefixes along the axis are prefixes of memory; the parts are distinct intermediates
    that the chain alone reads, but for the first (others read it in place, as a prefix:
    DenseNet's first layer reads the block's input itself); the links before the last are
    not graph outputs (their memory would be theirs); element offsets fit in 32 bits."""
    last = chain[-1]
    shape = graph.types[last.outputs[0]].shape
    axis = last.attrs["axis"] % len(shape)
    members = {n.name for n in chain}
    return (
        all(d == 1 for d in shape[:axis])
        and math.prod(shape) < 2**31
        and len(set(last.inputs)) == len(last.inputs)
        and not any(n.outputs[0] in outputs for n in chain[:-1])
        and all(
            t not in graph.inputs
            and t not in graph.params
            and t not in outputs
            and (t == last.inputs[0] or all(r.name in members for r in readers.get(t, [])))
            for t in last.inputs
        )
    )


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
    def __init__(self, graph: Graph, apart: frozenset = frozenset()):
        self.graph = graph
        self.apart = apart  # nodes that form a group alone
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
        alone = kind in ("anchor", "opaque") or root.name in self.apart
        frontier = [] if alone else list(root.inputs)
        shape = self.graph.types[root.outputs[0]].shape
        heavy_found = kind in ("anchor", "reduction")
        while frontier:
            tensor = frontier.pop()
            node = self.producer.get(tensor)
            if node is None or node.name in self.assigned or node in members:
                continue
            if node.name in self.apart:
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
    builder = _Builder(graph, frozenset(n.name for c in concat_chains(graph) for n in c))
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
