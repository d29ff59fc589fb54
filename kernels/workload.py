"""A workload: what one kernel computes, as a small core-op subgraph with fixed shapes.

Tensor names are canonical (in0.., t0.., out0..): two models that fuse the same ops on the same
shapes share one workload key (so one tuning record serves both), and no name from a model
ever reaches kernel source.
"""

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

from coretune.graph.ir import Graph, Node, TensorType
from coretune.graph.reference import run_reference


@dataclass(frozen=True)
class Workload:
    inputs: tuple[tuple[str, TensorType], ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    types: dict  # every tensor's TensorType
    # Where the one output is stored when its buffer is not of its own shape: element strides
    # per axis and an element offset (the interior of a padded buffer, see graph.executor).
    # Not in the key: the kernel computes the same values, tuned as the plain store.
    output_layout: tuple[tuple[int, ...], int] | None = None
    # The same for inputs read from a bigger buffer: (input name, (strides, offset)) pairs.
    input_layouts: tuple[tuple[str, tuple[tuple[int, ...], int]], ...] = ()

    @classmethod
    def from_graph(cls, graph: Graph) -> "Workload":
        """Canonicalise a (fused) graph: params become inputs too, in first-use order."""
        graph.validate()
        rename: dict[str, str] = {}
        for name in graph.inputs:
            rename[name] = f"in{len(rename)}"
        for node in graph.nodes:
            for name in node.inputs:
                if name in graph.params and name not in rename:
                    rename[name] = f"in{len(rename)}"
        for i, name in enumerate(graph.outputs):
            rename.setdefault(name, f"out{i}")
        count = 0
        for node in graph.nodes:
            for name in node.outputs:
                if name not in rename:
                    rename[name] = f"t{count}"
                    count += 1
        types = {rename[n]: t for n, t in graph.types.items() if n in rename}
        nodes = tuple(
            Node(
                f"n{i}",
                n.op,
                [rename[x] for x in n.inputs],
                [rename[x] for x in n.outputs],
                dict(n.attrs),
            )
            for i, n in enumerate(graph.nodes)
        )
        inputs = tuple(
            (rename[n], graph.types[n]) for n in rename if n in graph.inputs or n in graph.params
        )
        return cls(inputs, nodes, tuple(rename[n] for n in graph.outputs), types)

    def key(self) -> dict:
        """Stable, JSON-able identity: ops, attributes, shapes and dtypes."""
        return {
            "inputs": [[n, list(t.shape), t.dtype] for n, t in self.inputs],
            "nodes": [
                [
                    n.op,
                    n.inputs,
                    n.outputs,
                    {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(n.attrs.items())},
                ]
                for n in self.nodes
            ],
            "outputs": [[n, list(self.types[n].shape), self.types[n].dtype] for n in self.outputs],
        }

    @classmethod
    def from_key(cls, key: dict) -> "Workload":
        """Rebuild a workload from its key (names in a key are already canonical)."""
        inputs = tuple(
            (name, TensorType(tuple(shape), dtype)) for name, shape, dtype in key["inputs"]
        )
        nodes = [
            Node(f"n{i}", op, list(ins), list(outs), dict(attrs))
            for i, (op, ins, outs, attrs) in enumerate(key["nodes"])
        ]
        outputs = [name for name, _, _ in key["outputs"]]
        graph = Graph("workload", dict(inputs), {}, nodes, outputs).validate()
        return cls(inputs, tuple(graph.nodes), tuple(outputs), dict(graph.types))

    def placed(self, strides: tuple[int, ...], offset: int) -> "Workload":
        """This workload storing its output at ``offset + sum(index * strides)``."""
        return dataclasses.replace(self, output_layout=(tuple(strides), int(offset)))

    def reading(self, name: str, strides: tuple[int, ...], offset: int) -> "Workload":
        """This workload reading input ``name`` at ``offset + sum(index * strides)``."""
        layout = (name, (tuple(strides), int(offset)))
        return dataclasses.replace(self, input_layouts=(*self.input_layouts, layout))

    def key_string(self) -> str:
        return json.dumps(self.key(), sort_keys=True, separators=(",", ":"))

    def as_graph(self) -> Graph:
        return Graph(
            "workload", dict(self.inputs), {}, list(self.nodes), list(self.outputs)
        ).validate()

    def reference(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """The numpy reference outputs for input arrays given in ``inputs`` order."""
        graph = self.as_graph()
        return run_reference(graph, {n: a for (n, _), a in zip(self.inputs, arrays, strict=True)})

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}
