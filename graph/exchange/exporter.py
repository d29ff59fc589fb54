"""ONNX export: a core-op Graph written back as a checked ONNX ModelProto.

Each core op has one emitter (``export_ops.EMITTERS``); ops without a 1:1 ONNX op are written
in the exact forms the importer canonicalises back (dense as Gemm or MatMul + Add, rsqrt as
Reciprocal(Sqrt), ...), so import(export(g)) gives g again.

Names pass through unchanged: graph inputs, parameters (as initializers), node outputs and node
names keep theirs. The one exception is an output ONNX cannot name directly: an output that is
a graph input or a parameter, or a tensor listed as an output twice, is produced by an Identity
under a fresh name (``x`` -> ``x_1``). Helper tensors an emitter needs (shapes, axes, clip
bounds, a transposed weight) get fresh names built from their node's name.

Opset: the default is the newest one both onnx and onnxruntime run; any opset from 13 on may be
asked for. Where an older opset lacks a feature the graph uses (float8 casts, wrap padding,
dilated average pooling, allowzero reshape), export raises a CoretuneError naming the node;
layer_norm, which became an ONNX op in opset 17, is decomposed into reductions and arithmetic
for opsets 13-16. Parameters no node reads (a weight stored transposed, say) are left out.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from coretune import __version__
from coretune.errors import CoretuneError

from ..dtypes import to_numpy
from ..ir import Graph, Node, TensorType, fresh_name

MIN_OPSET = 13
# The newest opset every emitter's output was verified to run on (onnxruntime 1.32, opset 28);
# raise it after re-running tests/test_export.py against a newer onnxruntime.
ONNXRUNTIME_OPSET = 28
# The opset that added each element type newer than opset 13.
_DTYPE_OPSET = {
    "float8_e4m3fn": 19,
    "float8_e4m3fnuz": 19,
    "float8_e5m2": 19,
    "float8_e5m2fnuz": 19,
    "int4": 21,
    "uint4": 21,
    "float4_e2m1fn": 23,
    "float8_e8m0fnu": 24,
    "int2": 25,
    "uint2": 25,
}


def default_opset() -> int:
    return min(onnx.defs.onnx_opset_version(), ONNXRUNTIME_OPSET)


def export_onnx(graph: Graph, opset: int | None = None) -> onnx.ModelProto:
    """Write ``graph`` as an ONNX model at ``opset`` (default: ``default_opset()``).

    The model passes ``onnx.checker.check_model(full_check=True)``; a graph with no ONNX form
    at that opset raises a CoretuneError naming the node.
    """
    from .export_ops import EMITTERS

    opset = _check_opset(default_opset() if opset is None else opset)
    if not graph.types:
        graph.validate()
    writer = OnnxWriter(graph, opset)
    for node in graph.nodes:
        emitter = EMITTERS.get(node.op)
        if emitter is None:
            raise CoretuneError(f"node {node.name!r} ({node.op}): no ONNX form for this op")
        for name in (*node.inputs, *node.outputs):
            dtype = graph.types[name].dtype
            writer.require(node, _DTYPE_OPSET.get(dtype, MIN_OPSET), f"dtype {dtype}")
        emitter(writer, node)
    model = writer.model()
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CoretuneError(
            f"graph {graph.name!r} has no valid ONNX form at opset {opset}: {exc}"
        ) from None
    return model


def _check_opset(opset) -> int:
    newest = onnx.defs.onnx_opset_version()
    if (
        isinstance(opset, bool)
        or not isinstance(opset, int | np.integer)
        or not MIN_OPSET <= opset <= newest
    ):
        raise CoretuneError(
            f"opset must be an integer in {MIN_OPSET}..{newest} (the newest this "
            f"onnx {onnx.__version__} knows), got {opset!r}"
        )
    return int(opset)


def onnx_dtype(dtype: str) -> int:
    """The TensorProto element type of a core dtype."""
    return helper.np_dtype_to_tensor_dtype(to_numpy(dtype))


def value_info(name: str, ttype: TensorType) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx_dtype(ttype.dtype), list(ttype.shape))


class OnnxWriter:
    """The ONNX graph under construction; emitters add nodes and constants through it."""

    def __init__(self, graph: Graph, opset: int):
        self.graph = graph
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[TensorProto] = []
        self._taken = set(graph.types) | {node.name for node in graph.nodes}
        self._transposed: dict[str, str] = {}  # param -> its transposed copy, made once

    def type_of(self, name: str) -> TensorType:
        return self.graph.types[name]

    def is_param(self, name: str) -> bool:
        return name in self.graph.params

    def fresh(self, stem: str) -> str:
        """A tensor or node name not used anywhere in the graph: ``stem`` or ``stem_<k>``."""
        return fresh_name(stem, self._taken)

    def require(self, node: Node, opset: int, feature: str) -> None:
        if self.opset < opset:
            raise CoretuneError(
                f"node {node.name!r} ({node.op}): {feature} needs ONNX opset "
                f">= {opset}, exporting at {self.opset}"
            )

    def emit(self, op_type: str, inputs, outputs, name: str, **attrs) -> None:
        """Add one ONNX node. Trailing absent inputs ("") are dropped, attributes that are None
        are left out, bools become ints."""
        inputs = list(inputs)
        while inputs and inputs[-1] == "":
            inputs.pop()
        attrs = {k: _attr_value(v) for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, inputs, list(outputs), name=name, **attrs))

    def temp(self, node: Node, op_type: str, inputs, **attrs) -> str:
        """Emit a helper node of ``node`` into a fresh tensor and return that tensor's name."""
        out = self.fresh(f"{node.name}/{op_type}")
        self.emit(op_type, inputs, [out], name=out, **attrs)
        return out

    def constant(self, node: Node, what: str, array: np.ndarray) -> str:
        name = self.fresh(f"{node.name}/{what}")
        self.constants.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def ints(self, node: Node, what: str, values) -> str:
        """A 1-D int64 constant (shapes, axes, pads, slice bounds)."""
        return self.constant(node, what, np.array(list(values), dtype=np.int64))

    def scalar(self, node: Node, what: str, value: float, dtype: str) -> str:
        """A scalar constant of ``dtype``, converted as numpy converts (ints truncate)."""
        return self.constant(node, what, _scalar(value, to_numpy(dtype)))

    def transposed_param(self, name: str) -> str:
        """A 2-D parameter's transpose, stored once as a new initializer."""
        if name not in self._transposed:
            self._transposed[name] = self.fresh(f"{name}_transposed")
            array = np.ascontiguousarray(self.graph.params[name].T)
            self.constants.append(numpy_helper.from_array(array, self._transposed[name]))
        return self._transposed[name]

    # ---- assembly -------------------------------------------------------------------------
    def model(self) -> onnx.ModelProto:
        graph = self.graph
        outputs = self._outputs()
        output_names = {o.name for o in outputs}
        produced = [out for node in graph.nodes for out in node.outputs]
        used = {name for node in self.nodes for name in node.input}
        params = [
            numpy_helper.from_array(array, name)
            for name, array in graph.params.items()
            if name in used
        ]
        body = helper.make_graph(
            self.nodes,
            graph.name,
            [value_info(name, ttype) for name, ttype in graph.inputs.items()],
            outputs,
            initializer=params + self.constants,
            value_info=[value_info(n, graph.types[n]) for n in produced if n not in output_names],
        )
        opsets = [helper.make_opsetid("", self.opset)]
        return helper.make_model(
            body,
            opset_imports=opsets,
            producer_name="coretune",
            producer_version=__version__,
            ir_version=helper.find_min_ir_version_for(opsets),
        )

    def _outputs(self) -> list[onnx.ValueInfoProto]:
        """Graph outputs by name; outputs ONNX cannot name directly go through an Identity."""
        graph, named, infos = self.graph, set(), []
        for out in graph.outputs:
            name = out
            if out in graph.inputs or out in graph.params or out in named:
                name = self.fresh(out)
                self.emit("Identity", [out], [name], name=name)
            named.add(name)
            infos.append(value_info(name, graph.types[out]))
        return infos


def _attr_value(value):
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, tuple):
        return [_attr_value(v) for v in value]
    return value


def _scalar(value: float, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        value = np.clip(np.trunc(value), info.min, info.max)  # an infinite bound clips nothing
    return np.asarray(value).astype(dtype)
