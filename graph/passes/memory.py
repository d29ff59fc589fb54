"""Memory planning by liveness: intermediate tensors share buffers once their readers are done.

Buffers are planned per group output (what kernels write). A tensor is live from the group that
writes it to the last group that reads it; a freed buffer of at least the needed size is reused
(best fit), otherwise a new one is made. Views alias their source and extend its life. A pad
group's output gets a buffer of its own, never shared: the executor fills its border once. A
tensor placed in a pad's interior or in a concatenation's output (its producer stores straight
into that buffer) needs no buffer of its own.
"""

import math
from dataclasses import dataclass

from ..dtypes import to_numpy
from ..ir import Graph
from .fuse import FusedGroup


@dataclass
class MemoryPlan:
    buffer_of: dict[str, int]  # tensor -> buffer index
    buffer_bytes: list[int]
    alias_of: dict[str, str]  # view tensor -> the tensor whose buffer it reads
    placed: frozenset = frozenset()  # tensors stored in a pad's or concatenation's buffer

    @property
    def planned_bytes(self) -> int:
        return sum(self.buffer_bytes)

    def unshared_bytes(self, graph: Graph) -> int:
        """What one buffer per intermediate tensor would take: the no-reuse total."""
        return sum(_nbytes(graph, t) for t in (*self.buffer_of, *self.placed))


def _nbytes(graph: Graph, tensor: str) -> int:
    t = graph.types[tensor]
    return max(1, math.prod(t.shape) * to_numpy(t.dtype).itemsize)


def plan_memory(graph: Graph, groups: list[FusedGroup], placed=None) -> MemoryPlan:
    """Plan the intermediates (not graph inputs, params or outputs: those own their memory).
    ``placed`` tensors (tensor -> the tensor whose buffer holds it: a pad's output, an in-place
    concatenation's) have no buffer of their own; a holder's buffer is live from the step that
    writes it or any tensor it holds, to the last read of either."""
    placed = dict(placed or {})
    external = set(graph.inputs) | set(graph.params) | set(graph.outputs) | set(placed)
    alias = {}
    for g in groups:
        if g.kind == "view":
            source = g.inputs[0]
            alias[g.outputs[0]] = alias.get(source, source)
    last_read: dict[str, int] = {}
    for step, g in enumerate(groups):
        for name in g.inputs:
            name = alias.get(name, name)
            last_read[placed.get(name, name)] = step
    for out in graph.outputs:  # a view of an intermediate that is a graph output keeps it alive
        last_read[alias.get(out, out)] = len(groups)
    written: dict[int, list[str]] = {}  # step -> the buffers that step writes first
    first_written: set[str] = set()
    for step, g in enumerate(groups):
        if g.kind != "view":
            for name in g.outputs:
                holder = placed.get(name, name)
                if holder not in external and holder not in first_written:
                    first_written.add(holder)
                    written.setdefault(step, []).append(holder)
    padded = {name for g in groups if g.kind == "pad" for name in g.outputs}
    buffer_of: dict[str, int] = {}
    sizes: list[int] = []
    free: list[int] = []
    for step, g in enumerate(groups):
        for name in written.get(step, []):
            need = _nbytes(graph, name)
            fits = [b for b in free if sizes[b] >= need] if name not in padded else []
            if fits:
                chosen = min(fits, key=lambda b: sizes[b])
                free.remove(chosen)
            else:
                chosen = len(sizes)
                sizes.append(need)
            buffer_of[name] = chosen
        for name in {placed.get(n, n) for n in (alias.get(i, i) for i in g.inputs)}:
            if name in buffer_of and last_read.get(name) == step and name not in padded:
                free.append(buffer_of[name])
    return MemoryPlan(buffer_of, sizes, alias, frozenset(placed) - set(graph.inputs))
