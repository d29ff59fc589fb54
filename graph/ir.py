"""The graph IR: core-op nodes over named tensors, with inputs, constant params and outputs.

A Graph is plain data. ``validate()`` checks it (every problem at once, each naming its node),
sorts the nodes topologically and infers every tensor's type; the graph's JSON form is the
executor's format, with the parameter arrays kept beside it (never pickled).
"""

import heapq
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coretune.errors import GraphError

from .dtypes import check_dtype, dtype_name, native_order
from .registry import get_op

FORMAT = "coretune.graph"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: str

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"

    @classmethod
    def of(cls, array: np.ndarray) -> "TensorType":
        return cls(tuple(array.shape), dtype_name(array.dtype))


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    name: str
    inputs: dict[str, TensorType]
    params: dict[str, np.ndarray]
    nodes: list[Node]
    outputs: list[str]
    types: dict[str, TensorType] = field(default_factory=dict)

    def copy(self) -> "Graph":
        """A copy whose nodes and dicts can be changed freely (parameter arrays are shared)."""
        nodes = [
            Node(n.name, n.op, list(n.inputs), list(n.outputs), dict(n.attrs)) for n in self.nodes
        ]
        return Graph(
            self.name,
            dict(self.inputs),
            dict(self.params),
            nodes,
            list(self.outputs),
            dict(self.types),
        )

    # ---- checking -------------------------------------------------------------------------
    def validate(self) -> "Graph":
        """Check the graph, order its nodes and infer all types; raise one GraphError listing
        every problem found."""
        problems: list[str] = []
        known: dict[str, str] = {}  # tensor -> what defines it
        for name, ttype in self.inputs.items():
            known[name] = "graph input"
            try:
                check_dtype(ttype.dtype)
            except GraphError as exc:
                problems.append(f"input {name!r}: {exc}")
        # Parameters in this machine's byte order (a big-endian initializer or .npy array
        # would otherwise reach the kernels as garbage: they read raw bytes).
        self.params = {name: native_order(array) for name, array in self.params.items()}
        for name in self.params:
            if name in known:
                problems.append(f"{name!r} is both a graph input and a parameter")
            known[name] = "parameter"
        node_names = set()
        for node in self.nodes:
            if node.name in node_names:
                problems.append(f"node {node.name!r}: name used twice")
            node_names.add(node.name)
            for out in node.outputs:
                if out in known:
                    problems.append(
                        f"node {node.name!r}: output {out!r} already defined by {known[out]}"
                    )
                known[out] = f"node {node.name!r}"
        for node in self.nodes:
            missing = [i for i in node.inputs if i not in known]
            if missing:
                problems.append(
                    f"node {node.name!r} ({node.op}): dangling input(s) "
                    f"{', '.join(map(repr, missing))}"
                )
        for out in self.outputs:
            if out not in known:
                problems.append(f"graph output {out!r} is not defined")
        if problems:
            raise GraphError(_listing(self.name, problems))
        self.nodes = _topological_order(self.name, self.nodes)
        self._infer_types()
        return self

    def _infer_types(self) -> None:
        types = dict(self.inputs)
        types.update((n, TensorType.of(a)) for n, a in self.params.items())
        problems = []
        for node in self.nodes:
            try:
                op = get_op(node.op)
                node.attrs = op.normalize_attrs(node.attrs)
                if any(i not in types for i in node.inputs):
                    continue  # an earlier node failed: its error is already listed
                ins = [types[i] for i in node.inputs]
                outs = op.infer([t.shape for t in ins], [t.dtype for t in ins], node.attrs)
                if len(outs) != len(node.outputs):
                    raise GraphError(
                        f"{node.op}: produces {len(outs)} outputs, the node names "
                        f"{len(node.outputs)}"
                    )
            except GraphError as exc:
                problems.append(f"node {node.name!r} ({node.op}): {exc}")
                continue
            for name, (shape, dtype) in zip(node.outputs, outs, strict=True):
                types[name] = TensorType(shape, dtype)
        if problems:
            raise GraphError(_listing(self.name, problems))
        self.types = types

    def type_of(self, name: str) -> TensorType:
        if not self.types:
            self.validate()
        return self.types[name]

    def producers(self) -> dict[str, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                users.setdefault(name, []).append(node)
        return users

    # ---- serialisation --------------------------------------------------------------------
    def to_json(self) -> dict:
        """The graph as JSON-able data; parameter arrays are described, not embedded."""

        def spec(name, ttype):
            return {"name": name, "shape": list(ttype.shape), "dtype": ttype.dtype}

        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "name": self.name,
            "inputs": [spec(n, t) for n, t in self.inputs.items()],
            "params": [spec(n, TensorType.of(a)) for n, a in self.params.items()],
            "nodes": [
                {
                    "name": n.name,
                    "op": n.op,
                    "inputs": n.inputs,
                    "outputs": n.outputs,
                    "attrs": {k: _jsonable(v) for k, v in n.attrs.items()},
                }
                for n in self.nodes
            ],
            "outputs": list(self.outputs),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=False)

    @classmethod
    def from_json(cls, data: dict, params: dict[str, np.ndarray]) -> "Graph":
        """Rebuild a graph; ``params`` must hold exactly the arrays the JSON describes."""
        try:
            if data.get("format") != FORMAT:
                raise GraphError(f"not a coretune graph (format {data.get('format')!r})")
            if data.get("version") != FORMAT_VERSION:
                raise GraphError(
                    f"graph format version {data.get('version')!r} is not "
                    f"supported (this coretune reads version {FORMAT_VERSION})"
                )
            declared = {
                p["name"]: TensorType(tuple(p["shape"]), p["dtype"]) for p in data["params"]
            }
            if set(declared) != set(params):
                raise GraphError(
                    f"parameters differ from the graph's list: missing "
                    f"{sorted(set(declared) - set(params))}, extra "
                    f"{sorted(set(params) - set(declared))}"
                )
            for name, ttype in declared.items():
                if TensorType.of(params[name]) != ttype:
                    raise GraphError(
                        f"parameter {name!r} is {TensorType.of(params[name])}, the "
                        f"graph says {ttype}"
                    )
            graph = cls(
                name=str(data["name"]),
                inputs={
                    i["name"]: TensorType(
                        tuple(int(d) for d in i["shape"]), check_dtype(i["dtype"])
                    )
                    for i in data["inputs"]
                },
                params={n: params[n] for n in declared},
                nodes=[
                    Node(
                        str(n["name"]),
                        str(n["op"]),
                        list(n["inputs"]),
                        list(n["outputs"]),
                        dict(n["attrs"]),
                    )
                    for n in data["nodes"]
                ],
                outputs=list(data["outputs"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GraphError(f"malformed graph JSON: {type(exc).__name__}: {exc}") from None
        return graph.validate()

    # ---- display --------------------------------------------------------------------------
    def __str__(self) -> str:
        if not self.types:
            self.validate()
        ins = ", ".join(f"{n}: {t}" for n, t in self.inputs.items())
        lines = [f"graph {self.name}({ins}) -> ({', '.join(self.outputs)})"]
        for name, array in self.params.items():
            lines.append(f"  param {name}: {TensorType.of(array)}")
        for node in self.nodes:
            attrs = ", ".join(
                f"{k}={_short(v)}"
                for k, v in node.attrs.items()
                if v != get_op(node.op).attr_index[k].default
            )
            args = ", ".join(node.inputs) + (f"; {attrs}" if attrs else "")
            outs = ", ".join(f"{o}: {self.types[o]}" for o in node.outputs)
            lines.append(f"  {outs} = {node.op}({args})")
        return "\n".join(lines)


def fresh_name(stem: str, taken: set[str]) -> str:
    """A name not in ``taken`` (``stem``, else ``stem_<k>``), added to it."""
    name, k = stem, 0
    while name in taken:
        k += 1
        name = f"{stem}_{k}"
    taken.add(name)
    return name


def _short(value):
    if isinstance(value, tuple) and len(value) > 8:
        return f"({', '.join(map(str, value[:8]))}, ...)"
    return repr(value)


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _listing(graph_name: str, problems: list[str]) -> str:
    head = f"graph {graph_name!r} is invalid ({len(problems)} problem{'s' * (len(problems) > 1)}):"
    return "\n  ".join([head, *problems])


def _topological_order(graph_name: str, nodes: list[Node]) -> list[Node]:
    """Kahn's algorithm, stable: among ready nodes the earliest listed goes first."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.outputs}
    waiting = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        deps = {producer[x] for x in node.inputs if x in producer}
        waiting[i] = len(deps)
        for d in deps:
            users[d].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = [nodes[i].name for i, w in enumerate(waiting) if w > 0]
        raise GraphError(f"graph {graph_name!r} has a cycle through node(s) {', '.join(stuck)}")
    return order
