"""Memory planning by liveness: intermediate tensors share buffers once their readers are done.

Buffers are planned per group output (what kernels write). A tensor is live from the group that
writes it to the last group that reads it; a freed buffer of at least the needed size is reused
(best fit), otherwise a new one is made. Views alias their source and extend its life. A pad
group's output gets a buffer of its own, never shared: the executor fills its border once. A
tensor placed in a pad's interior (its producer stores straight into the padded buffer) needs
no buffer of its own.
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
    placed: frozenset = frozenset()  # tensors stored in their pad's buffer: none of their own

    @property
    def planned_bytes(self) -> int:
        return sum(self.buffer_bytes)

    def unshared_bytes(self, graph: Graph) -> int:
        """What one buffer per intermediate tensor would take: the no-reuse total."""
        return sum(_nbytes(graph, t) for t in (*self.buffer_of, *self.placed))


def _nbytes(graph: Graph, tensor: str) -> int:
    t = graph.types[tensor]
    return max(1, math.prod(t.shape) * to_numpy(t.dtype).itemsize)


def plan_memory(graph: Graph, groups: list[FusedGroup], placed=frozenset()) -> MemoryPlan:
    """Plan the intermediates (not graph inputs, params or outputs: those own their memory,
    nor the ``placed`` tensors, which live in their pad's buffer)."""
    external = set(graph.inputs) | set(graph.params) | set(graph.outputs) | set(placed)
    alias = {}
    for g in groups:
        if g.kind == "view":
            source = g.inputs[0]
            alias[g.outputs[0]] = alias.get(source, source)
    last_read: dict[str, int] = {}
    for step, g in enumerate(groups):
        for name in g.inputs:
            last_read[alias.get(name, name)] = step
    for out in graph.outputs:  # a view of an intermediate that is a graph output keeps it alive
        last_read[alias.get(out, out)] = len(groups)
    padded = {name for g in groups if g.kind == "pad" for name in g.outputs}
    buffer_of: dict[str, int] = {}
    sizes: list[int] = []
    free: list[int] = []
    for step, g in enumerate(groups):
        if g.kind != "view":
            for name in g.outputs:
                if name in external:
                    continue
                need = _nbytes(graph, name)
                fits = [b for b in free if sizes[b] >= need] if g.kind != "pad" else []
                if fits:
                    chosen = min(fits, key=lambda b: sizes[b])
                    free.remove(chosen)
                else:
                    chosen = len(sizes)
                    sizes.append(need)
                buffer_of[name] = chosen
        for name in {alias.get(i, i) for i in g.inputs}:
            if name in buffer_of and last_read.get(name) == step and name not in padded:
                free.append(buffer_of[name])
    return MemoryPlan(buffer_of, sizes, alias, frozenset(placed) - set(graph.inputs))
