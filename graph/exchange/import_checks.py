"""What the importer checks of an ONNX model besides converting it: the per-node scan for
unsupported ops and malformed attributes (before anything is converted, so that one error
names every offending node), the declared output and value_info types against the computed
ones, and zero-size tensors that would reach a kernel.
"""

import math
from collections import defaultdict

import onnx

from coretune.errors import ModelLoadError, UnsupportedModelError

from ..ir import Graph
from .convert_base import CONVERTERS, Malformed, attribute_problems, attribute_values, onnx_dtype

DEFAULT_DOMAINS = ("", "ai.onnx")

MALFORMED = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    ArithmeticError,  # overflow, division by zero
    UnicodeDecodeError,
)


def node_names(graph: onnx.GraphProto) -> list[str]:
    """ONNX node names made unique; unnamed nodes are called '<op type>_<index>'."""
    seen, names = set(), []
    for i, node in enumerate(graph.node):
        base = name = node.name or f"{node.op_type}_{i}"
        count = 0
        while name in seen:
            count += 1
            name = f"{base}_{count}"
        seen.add(name)
        names.append(name)
    return names


Problems = dict[tuple[str, str], list[str]]  # (feature, "node" or "value") -> names


def scan(graph: onnx.GraphProto, names: list[str], opset: int) -> tuple[Problems, Problems]:
    """Everything in the graph coretune cannot import, and where it is used: (unsupported,
    malformed). Every node's attributes are checked here, against its ONNX schema, before
    any converter reads them."""
    problems: Problems = defaultdict(list)
    malformed: Problems = defaultdict(list)
    declared = [
        *graph.input,
        *(o for o in graph.output if o.type.WhichOneof("value") and o.type.tensor_type.elem_type),
    ]  # outputs may be untyped
    for info in declared:
        kind = info.type.WhichOneof("value")
        if kind != "tensor_type":
            problems[f"{kind or 'untyped'} values (only tensors are supported)", "value"].append(
                info.name
            )
        elif onnx_dtype(info.type.tensor_type.elem_type) is None:
            dtype = onnx.TensorProto.DataType.Name(info.type.tensor_type.elem_type)
            problems[f"{dtype} tensors", "value"].append(info.name)
    if graph.sparse_initializer:
        problems["sparse initializers", "value"].extend(
            t.values.name for t in graph.sparse_initializer
        )
    for node, name in zip(graph.node, names, strict=True):
        converter = CONVERTERS.get(node.op_type) if node.domain in DEFAULT_DOMAINS else None
        if converter is None:
            op_type = (
                node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
            )
            problems[op_type, "node"].append(name)
            continue
        bad = attribute_problems(node, opset, converter)
        for problem in bad:
            malformed[f"{node.op_type} with {problem}", "node"].append(name)
        if bad:
            continue
        try:
            reason = converter.check and converter.check(node, attribute_values(node))
        except Malformed as exc:
            malformed[f"{node.op_type} with {exc}", "node"].append(name)
        except MALFORMED as exc:
            malformed[f"{node.op_type} with {type(exc).__name__}: {exc}", "node"].append(name)
        else:
            if reason:
                problems[f"{node.op_type} with {reason}", "node"].append(name)
    return problems, malformed


def require_supported(proto: onnx.ModelProto, opset: int) -> None:
    problems, malformed = scan(proto.graph, node_names(proto.graph), opset)
    if malformed:
        lines = [
            f"ONNX model {proto.graph.name!r} (opset {opset}) is malformed: "
            f"{len(malformed)} problem(s):",
            *_listing(malformed),
        ]
        if problems:
            lines += [f"and it uses {len(problems)} thing(s) coretune does not support:"]
            lines += _listing(problems)
        raise ModelLoadError("\n".join(lines))
    if problems:
        raise unsupported(proto, opset, problems)


def _listing(problems: Problems) -> list[str]:
    return [
        f"  {what}: {kind}{'s' * (len(names) > 1)} {', '.join(map(repr, names))}"
        for (what, kind), names in problems.items()
    ]


def unsupported(proto: onnx.ModelProto, opset: int, problems: Problems):
    lines = [
        f"cannot import ONNX model {proto.graph.name!r} (opset {opset}): it uses "
        f"{len(problems)} thing(s) coretune does not support:",
        *_listing(problems),
    ]
    return UnsupportedModelError("\n".join(lines))


def refuse_empty_operands(graph: Graph) -> None:
    """Zero-size tensors are evaluated at import (ConvertContext.op); one that still reaches a
    node (read or made by a kernel) is refused here, by name, rather than in the compiler."""
    empty = defaultdict(list)
    for node in graph.nodes:
        for name in (*node.inputs, *node.outputs):
            ttype = graph.types[name]
            if not math.prod(ttype.shape):
                empty[f"{name!r} {ttype}"].append(node.name)
    if empty:
        raise UnsupportedModelError(
            f"cannot import ONNX model {graph.name!r}: zero-size tensors are not supported "
            f"as a kernel's operand or result: "
            + "; ".join(f"{t} (node {', '.join(map(repr, n))})" for t, n in empty.items())
        )


def check_declared(graph: onnx.GraphProto, values: dict) -> None:
    """The types the model declares for its outputs (and in value_info) must be those its graph
    computes, as onnxruntime requires; a symbolic or unknown dim, an unknown shape or element
    type matches anything. Every mismatch is named at once."""
    mismatches = []
    for kind, infos in (("output", graph.output), ("value_info", graph.value_info)):
        for info in infos:
            value = values.get(info.name)
            if value is None or info.type.WhichOneof("value") != "tensor_type":
                continue
            tensor_type = info.type.tensor_type
            elem = tensor_type.elem_type
            dtype = (onnx_dtype(elem) or onnx.TensorProto.DataType.Name(elem)) if elem else None
            dims = (
                [
                    d.dim_value if d.HasField("dim_value") else d.dim_param or None
                    for d in tensor_type.shape.dim
                ]
                if tensor_type.HasField("shape")
                else None
            )
            same_dtype = dtype is None or dtype == value.dtype
            same_shape = dims is None or (
                len(dims) == value.ndim
                and all(
                    not isinstance(d, int) or d == n for d, n in zip(dims, value.shape, strict=True)
                )
            )
            if not (same_dtype and same_shape):
                shape = (
                    ""
                    if dims is None
                    else f"[{', '.join('?' if d is None else str(d) for d in dims)}]"
                )
                mismatches.append(
                    f"{kind} {info.name!r} is declared {dtype or value.dtype}{shape}, but the "
                    f"graph computes {value.type}"
                )
    if mismatches:
        raise ModelLoadError(
            "\n  ".join(
                [
                    f"ONNX model {graph.name!r} declares {len(mismatches)} type(s) that its "
                    f"graph does not compute:",
                    *mismatches,
                ]
            )
        )
