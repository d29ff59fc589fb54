"""ONNX -> core graph: load, check, convert every node through the converter table, validate.

    graph = import_onnx("model.onnx", input_shapes={"x": (1, 3, 224, 224)})

The import is all-or-nothing: every op type, attribute value or tensor type coretune cannot
represent is collected first and reported in one UnsupportedModelError, never dropped or
approximated; every attribute that breaks its op's ONNX schema (type, name, allowed strings)
likewise in one ModelLoadError, and every node that cannot be converted (wrong ranks, shapes)
in one GraphError. Core tensors keep their ONNX names; nodes keep their ONNX names (made unique).
"""

import dataclasses
import math
import os
from collections import defaultdict

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from coretune.errors import GraphError, InputError, ModelLoadError, UnsupportedModelError

from ..dtypes import DTYPES, to_numpy
from ..ir import Graph, Node, TensorType
from . import (  # noqa: F401  (importing a converter module registers its converters)
    convert_conv,
    convert_einsum,
    convert_elemwise,
    convert_nn,
    convert_reduce,
    convert_resize,
    convert_tensor,
)
from .convert_base import CONVERTERS, ConvertContext, Unsupported, onnx_dtype
from .import_checks import (
    DEFAULT_DOMAINS,
    MALFORMED,
    Problems,
    check_declared,
    node_names,
    refuse_empty_operands,
    require_supported,
    unsupported,
)

MIN_OPSET = 13
MAX_OPSET = onnx.defs.onnx_opset_version()


def import_onnx(model, input_shapes=None, *, input_values=None) -> Graph:
    """Read an ONNX model (path, bytes or ModelProto) into a validated core-op Graph.

    ``input_shapes`` ({name: shape}) gives the static shapes of inputs whose dims are symbolic;
    naming an input that also has an initializer makes it a runtime input instead of a param.
    ``input_values`` ({name: array}) fixes graph inputs to constants, for models that feed a
    shape, axes or pads as an input (see ``constant_inputs``).
    """
    try:
        return _import(model, input_shapes, input_values)
    except MALFORMED as exc:  # the last line of defence: damaged protos fail in many places
        raise ModelLoadError(f"malformed model: {type(exc).__name__}: {exc}") from None


def _import(model, input_shapes, input_values) -> Graph:
    proto = load_model(model)
    opset = default_opset(proto)
    if proto.functions:  # model-local functions: inline them so their nodes are checked too
        proto = onnx.inliner.inline_local_functions(proto)
    require_supported(proto, opset)  # before the checker, which stops at the first unknown op
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ModelLoadError(f"the model fails the ONNX checker: {exc}") from None
    if opset < MIN_OPSET:
        proto, opset = _upgrade(proto, opset), MIN_OPSET
        require_supported(proto, opset)  # the upgrade may rewrite nodes
    return _convert(proto, opset, dict(input_shapes or {}), dict(input_values or {}))


# ---- loading and checking -------------------------------------------------------------------
def load_model(model) -> onnx.ModelProto:
    """A ModelProto from a path, bytes or a ModelProto; anything unreadable is a ModelLoadError."""
    if isinstance(model, onnx.ModelProto):
        proto, source = model, "the given ModelProto"
    elif isinstance(model, bytes | bytearray | memoryview):
        proto, source = onnx.ModelProto(), "the given bytes"
        try:
            proto.ParseFromString(bytes(model))
        except DecodeError as exc:
            raise ModelLoadError(
                f"{source} are not a readable ONNX model (truncated or not ONNX: {exc})"
            ) from None
    elif isinstance(model, str | os.PathLike):
        source = os.fspath(model)
        try:
            proto = onnx.load(source)
        except OSError as exc:
            raise ModelLoadError(f"cannot read {source!r}: {exc.strerror or exc}") from None
        except (DecodeError, ValueError, onnx.checker.ValidationError) as exc:
            raise ModelLoadError(
                f"{source!r} is not a readable ONNX model (truncated or not ONNX: {exc})"
            ) from None
    else:
        raise ModelLoadError(
            f"expected a path, bytes or onnx.ModelProto, got {type(model).__name__}"
        )
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelLoadError(f"{source!r} is not an ONNX model (it has no IR version or graph)")
    return proto


def default_opset(proto: onnx.ModelProto) -> int:
    versions = [o.version for o in proto.opset_import if o.domain in DEFAULT_DOMAINS]
    if not versions:
        raise UnsupportedModelError("the model imports no ai.onnx opset")
    if versions[0] > MAX_OPSET:
        raise UnsupportedModelError(
            f"the model uses opset {versions[0]}; this coretune reads "
            f"opsets {MIN_OPSET} to {MAX_OPSET}"
        )
    return versions[0]


def _upgrade(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Converters speak opset 13 and later; older models go through onnx's version converter."""
    try:
        return onnx.version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:  # noqa: BLE001  (the converter raises many types; all mean 'failed')
        raise UnsupportedModelError(
            f"the model uses opset {opset}; coretune reads opsets "
            f"{MIN_OPSET} to {MAX_OPSET}, and converting it to opset "
            f"{MIN_OPSET} failed: {exc}"
        ) from None


# ---- converting -----------------------------------------------------------------------------
def _convert(
    proto: onnx.ModelProto, opset: int, input_shapes: dict[str, tuple], input_values: dict
) -> Graph:
    graph = proto.graph
    names = node_names(graph)  # after the opset upgrade, which may add nodes
    ctx = ConvertContext(_all_names(graph, names), _use_counts(graph))
    _declare(ctx, graph, input_shapes, input_values)
    problems: Problems = defaultdict(list)
    errors: list[str] = []  # one line per node that cannot be converted as it stands
    blocked: set[str] = set()  # outputs of failed nodes: their consumers are not converted
    for node, name in zip(graph.node, names, strict=True):
        if blocked.intersection(node.input):
            blocked.update(node.output)
            continue
        try:
            ctx.begin(node, name, opset)
            ctx.finish(CONVERTERS[node.op_type].convert(ctx))
            continue
        except Unsupported as exc:
            problems[f"{node.op_type} with {exc}", "node"].append(name)
        except GraphError as exc:
            errors.append(str(exc))
        except MALFORMED as exc:  # constants of the wrong type, rank or size
            errors.append(
                f"node {name!r} ({node.op_type}) is malformed: {type(exc).__name__}: {exc}"
            )
        blocked.update(node.output)
    if problems:  # the unsupported nodes are the first thing to fix
        raise unsupported(proto, opset, problems)
    if len(errors) == 1:
        raise GraphError(errors[0])
    if errors:
        raise GraphError(
            "\n  ".join([f"cannot import ONNX model {graph.name!r}: {len(errors)} nodes:", *errors])
        )
    check_declared(graph, ctx.values)
    outputs = _bind_outputs(ctx, [o.name for o in graph.output])
    nodes, params = _prune(ctx.nodes, ctx.params, outputs)
    core = Graph(graph.name or "onnx_model", dict(ctx.inputs), params, nodes, outputs).validate()
    refuse_empty_operands(core)
    return core


def _all_names(graph: onnx.GraphProto, nodes: list[str]) -> set[str]:
    names = set(nodes)
    names.update(i.name for i in graph.input)
    names.update(o.name for o in graph.output)
    names.update(t.name for t in graph.initializer)
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def _use_counts(graph: onnx.GraphProto) -> dict[str, int]:
    """How many node inputs and graph outputs read each tensor."""
    counts: dict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in node.input:
            counts[name] += 1
    for out in graph.output:
        counts[out.name] += 1
    return counts


def _declare(
    ctx: ConvertContext, graph: onnx.GraphProto, input_shapes: dict, input_values: dict
) -> None:
    initializers = {t.name: t for t in graph.initializer}
    unknown = sorted((set(input_shapes) | set(input_values)) - {i.name for i in graph.input})
    if unknown:
        raise InputError(
            f"input_shapes/input_values name unknown input(s) {', '.join(unknown)}; "
            f"the model's inputs are {', '.join(i.name for i in graph.input)}"
        )
    for info in graph.input:
        if info.name in input_values:
            ttype = _input_type(info, np.shape(input_values[info.name]))
            ctx.add_constant(info.name, np.asarray(input_values[info.name], to_numpy(ttype.dtype)))
        elif info.name not in initializers or info.name in input_shapes:
            ctx.add_input(info.name, _input_type(info, input_shapes.get(info.name)))
    for name, tensor in initializers.items():
        if name not in ctx.inputs and name not in ctx.consts:
            try:
                ctx.add_constant(name, numpy_helper.to_array(tensor))
            except Unsupported as exc:
                raise UnsupportedModelError(
                    f"initializer {name!r}: {exc} are not supported"
                ) from None


def constant_inputs(model: onnx.ModelProto) -> set[str]:
    """The graph inputs whose values the core IR needs at import time: those that reach an
    input slot a converter needs constant (a shape, axes, pads...), except through Shape."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    pending = []
    for node in graph.node:
        converter = CONVERTERS.get(node.op_type) if node.domain in DEFAULT_DOMAINS else None
        for i in converter.constant_inputs if converter else ():
            if i < len(node.input) and node.input[i]:
                pending.append(node.input[i])
    needed: set[str] = set()
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producers.get(name)
        if node is not None and node.op_type != "Shape":  # Shape reads only the static shape
            pending.extend(n for n in node.input if n)
    initializers = {t.name for t in graph.initializer}
    return {i.name for i in graph.input if i.name in needed and i.name not in initializers}


def _input_type(info: onnx.ValueInfoProto, override) -> TensorType:
    tensor_type = info.type.tensor_type
    dims = (
        [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor_type.shape.dim
        ]
        if tensor_type.HasField("shape")
        else None
    )
    dtype = onnx_dtype(tensor_type.elem_type)
    if override is not None:
        shape = tuple(int(d) for d in override)
        if dims is not None and (
            len(dims) != len(shape)
            or any(isinstance(d, int) and d != s for d, s in zip(dims, shape, strict=True))
        ):
            raise InputError(
                f"input_shapes gives input {info.name!r} the shape {shape}, but the "
                f"model declares {tuple(dims)}"
            )
        return TensorType(_bounded(info.name, shape), dtype)
    if dims is None:
        raise InputError(
            f"input {info.name!r} has no declared shape; give it with "
            f"import_onnx(..., input_shapes={{{info.name!r}: (...)}})"
        )
    for i, d in enumerate(dims):
        if not isinstance(d, int):
            raise InputError(
                f"input {info.name!r}: dimension {i} ({d or 'unknown'}) has no "
                f"static size; give the shape with import_onnx(..., "
                f"input_shapes={{{info.name!r}: (...)}})"
            )
    return TensorType(_bounded(info.name, tuple(dims)), dtype)


# Kernels index with 32- or 64-bit integers; no real tensor comes near these.
MAX_DIM, MAX_ELEMENTS = 2**31 - 1, 2**40


def _bounded(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if any(d < 0 or d > MAX_DIM for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise InputError(f"input {name!r} has an implausible shape {shape}")
    return shape


def _bind_outputs(ctx: ConvertContext, outputs: list[str]) -> list[str]:
    """Give each graph output its ONNX name. An output that aliases an input, another output
    or a constant (Identity, Dropout, a folded value) gets a param or a copy of its own."""
    for name in outputs:
        if name not in ctx.values:
            raise GraphError(f"graph output {name!r} is computed by no node")
        value = ctx.values[name]
        if value.name in ctx.consts:
            ctx.params[name] = ctx.consts[value.name]
        elif value.name == name:
            continue
        elif not math.prod(value.shape):  # an empty input: its value is known
            ctx.params[name] = np.zeros(value.shape, DTYPES[value.dtype])
        elif value.name in ctx.inputs or value.name in outputs:
            # The core op set has no identity; a same-shape reshape is the cheapest copy.
            ctx.nodes.append(
                Node(
                    ctx.fresh(f"{name}_copy"),
                    "reshape",
                    [value.name],
                    [name],
                    {"newshape": value.shape},
                )
            )
        else:
            for node in ctx.nodes:
                node.inputs = [name if n == value.name else n for n in node.inputs]
                node.outputs = [name if n == value.name else n for n in node.outputs]
            for key, v in list(ctx.values.items()):
                if v.name == value.name:
                    ctx.values[key] = dataclasses.replace(v, name=name)
    return outputs


def _prune(nodes: list[Node], params: dict, outputs: list[str]) -> tuple[list[Node], dict]:
    """Drop nodes and params no output depends on (left by folding and peephole rewrites)."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if needed.intersection(node.outputs):
            kept.append(node)
            needed.update(node.inputs)
    return kept[::-1], {n: a for n, a in params.items() if n in needed}
