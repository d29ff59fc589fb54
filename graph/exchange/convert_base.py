"""The converter table, and the context through which ONNX-node converters emit core ops.

A converter is one small function per ONNX op type. It reads its node's inputs and attributes
through a ``ConvertContext`` and returns the core Value(s) of the node's outputs. Every core op
it emits whose operands are all constants is evaluated at once with that op's numpy reference
(constant folding), so exporter-style shape subgraphs (Shape -> Gather -> Concat -> Reshape)
leave no node behind.
"""

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from coretune.errors import GraphError

from ..builder import Value
from ..dtypes import DTYPES
from ..ir import Node, TensorType, fresh_name
from ..registry import get_op

Check = Callable[[onnx.NodeProto, dict[str, Any]], str | None]


@dataclass(frozen=True)
class Converter:
    """``convert(ctx)`` emits the node; ``check(node, attrs)`` names an unsupported attribute
    value before anything is converted (so one error can list every offending node), and may
    raise ``Malformed`` for a value ONNX does not allow; ``choices`` are the values ONNX allows
    for string attributes; ``constant_inputs`` are the input slots whose values the core IR
    needs at import time."""

    convert: Callable[["ConvertContext"], Any]
    check: Check | None = None
    constant_inputs: tuple[int, ...] = ()
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


CONVERTERS: dict[str, Converter] = {}


def converts(
    *op_types: str,
    check: Check | None = None,
    constant_inputs: tuple[int, ...] = (),
    choices: Mapping[str, tuple[str, ...]] | None = None,
):
    """Register the decorated function as the converter of the given ONNX op types."""

    def register(fn):
        for op_type in op_types:
            CONVERTERS[op_type] = Converter(fn, check, constant_inputs, dict(choices or {}))
        return fn

    return register


class Unsupported(Exception):  # noqa: N818  (an internal signal, never reaches the user)
    """A node uses a feature outside the core op set; the importer reports all such nodes."""


class Malformed(Exception):  # noqa: N818  (an internal signal, never reaches the user)
    """A node breaks the ONNX spec (an attribute of the wrong type, a string ONNX does not
    define); the importer reports all such nodes in one ModelLoadError."""


def attribute_problems(node: onnx.NodeProto, opset: int, converter: Converter) -> list[str]:
    """How the node's attributes break its ONNX schema (names, types, required ones) or the
    converter's ``choices``; checked before any converter reads an attribute."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return []  # no schema at this opset: the checker says so
    problems = []
    for attr in node.attribute:
        declared = schema.attributes.get(attr.name)
        if declared is None:
            problems.append(f"attribute {attr.name!r}, which ONNX does not define")
        elif not attr.ref_attr_name and attr.type != declared.type.value:
            problems.append(
                f"attribute {attr.name!r} of type {_attr_type(attr.type)} "
                f"(ONNX defines it as {_attr_type(declared.type.value)})"
            )
    given = {a.name for a in node.attribute}
    problems += [
        f"no {name!r} attribute, which ONNX requires"
        for name, declared in schema.attributes.items()
        if declared.required and name not in given
    ]
    if problems:
        return problems
    try:
        attrs = attribute_values(node)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        return [f"attributes that cannot be read ({type(exc).__name__}: {exc})"]
    for name, allowed in converter.choices.items():
        if name in attrs and attrs[name] not in allowed:
            problems.append(f"{name}={attrs[name]!r} (ONNX allows {', '.join(allowed)})")
    return problems


def _attr_type(code: int) -> str:
    try:
        return onnx.AttributeProto.AttributeType.Name(code)
    except ValueError:
        return str(code)


def onnx_dtype(elem_type: int) -> str | None:
    """The coretune dtype of an ONNX element type, or None when coretune has no such type."""
    try:
        name = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return None
    return name if name in DTYPES else None


def _empty(value: Value) -> bool:
    return math.prod(value.shape) == 0


def attribute_values(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as python values: str, int, float, lists, numpy arrays."""
    values = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        values[attr.name] = value
    return values


_REQUIRED = object()


# A constant folded at import larger than this is refused (a ConstantOfShape or Expand bomb).
MAX_FOLDED_BYTES = 1 << 30


class ConvertContext:
    """Core tensors, constants and nodes made so far, plus the ONNX node being converted.

    Constants stay numpy arrays until a node that is not folded reads them; only then do they
    become graph params, so folded-away intermediates never reach the graph.
    """

    def __init__(self, taken_names: set[str], use_counts: dict[str, int]):
        self.inputs: dict[str, TensorType] = {}
        self.consts: dict[str, np.ndarray] = {}
        self.params: dict[str, np.ndarray] = {}
        self.nodes: list[Node] = []
        self.values: dict[str, Value] = {}  # ONNX tensor name -> core value
        self._types: dict[str, TensorType] = {}
        self._taken = set(taken_names)
        self._use_counts = use_counts
        self._producers: dict[str, Node] = {}
        self._first_new = 0  # index of the first node made for the current ONNX node
        self.node = onnx.NodeProto()
        self.name = ""
        self.opset = 0
        self.attrs: dict[str, Any] = {}

    # ---- declaring graph inputs and constants ----------------------------------------------
    def add_input(self, name: str, ttype: TensorType) -> None:
        self.inputs[name] = ttype
        self._types[name] = ttype
        self.values[name] = Value(name, ttype, self)

    def add_constant(self, name: str, array: np.ndarray) -> Value:
        array = np.asarray(array)
        if array.dtype.name not in DTYPES:
            raise Unsupported(f"{array.dtype.name} tensors")
        self._taken.add(name)
        self.consts[name] = array
        self._types[name] = TensorType.of(array)
        value = self.values[name] = Value(name, self._types[name], self)
        return value

    # ---- the node being converted ----------------------------------------------------------
    def begin(self, node: onnx.NodeProto, name: str, opset: int) -> None:
        self.node, self.name, self.opset = node, name, opset
        self.attrs = attribute_values(node)
        self._first_new = len(self.nodes)

    def attr(self, key: str, default: Any = _REQUIRED) -> Any:
        if key in self.attrs:
            return self.attrs[key]
        if default is _REQUIRED:
            raise self.error(f"missing required attribute {key!r}")
        return default

    def has_input(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def input(self, i: int) -> Value:
        if not self.has_input(i):
            raise self.error(f"input {i} is required")
        return self.value(self.node.input[i])

    def inputs_present(self) -> list[Value]:
        return [self.input(i) for i in range(len(self.node.input)) if self.has_input(i)]

    def constant(self, i: int, what: str) -> np.ndarray:
        """Input ``i``, which must be known at import time (a shape, axes, pads...)."""
        value = self.input(i)
        if value.name not in self.consts:
            source = (
                "is a graph input (give its value with input_values)"
                if value.name in self.inputs
                else "is computed by the graph"
            )
            raise self.error(
                f"{what} (input {i}, {self.node.input[i]!r}) must be a constant "
                f"known at import time, but it {source}"
            )
        return self.consts[value.name]

    def optional_constant(self, i: int, what: str) -> np.ndarray | None:
        return self.constant(i, what) if self.has_input(i) else None

    def wants_output(self, i: int) -> bool:
        return i < len(self.node.output) and self.node.output[i] != ""

    def error(self, message: str) -> GraphError:
        return GraphError(f"node {self.name!r} ({self.node.op_type}): {message}")

    def unsupported(self, reason: str) -> Unsupported:
        return Unsupported(reason)

    # ---- values -----------------------------------------------------------------------------
    def value(self, onnx_name: str) -> Value:
        try:
            return self.values[onnx_name]
        except KeyError:
            raise self.error(f"input {onnx_name!r} is not defined before this node") from None

    def is_constant(self, value: Value) -> bool:
        return value.name in self.consts

    def producer(self, value: Value) -> Node | None:
        return self._producers.get(value.name)

    def core_value(self, name: str) -> Value:
        return Value(name, self._types[name], self)

    def single_use(self, value: Value) -> bool:
        """Only one ONNX node reads this tensor and it is no graph output (so a rewrite that
        replaces its producer loses nothing)."""
        return self._use_counts.get(value.name, 0) == 1

    # ---- emitting (the GraphBuilder-like part) ----------------------------------------------
    def const(self, value, dtype: str | None = None, stem: str = "const") -> Value:
        array = np.asarray(value, dtype=None if dtype is None else DTYPES[dtype])
        return self.add_constant(self.fresh(f"{self.name}_{stem}"), array)

    def infer(self, op_name: str, *operands: Value, **attrs: Any):
        """The normalised attributes and the output (shape, dtype)s of a core op on these
        operands, without adding it; a rejection names the ONNX node."""
        opdef = get_op(op_name)
        try:
            attrs = opdef.normalize_attrs(attrs)
            return attrs, opdef.infer(
                [v.shape for v in operands], [v.dtype for v in operands], attrs
            )
        except GraphError as exc:
            raise self.error(str(exc)) from None

    def op(self, op_name: str, *operands: Value, **attrs: Any):
        """Add one core op, or fold it when every operand is a constant or empty, or when every
        output is empty; returns a Value, or a tuple of Values for multi-output ops.

        A zero-size tensor holds no data, so an op that makes only empty tensors, or reads
        only constants and empty tensors, is known at import: no kernel is ever handed an
        empty workload."""
        opdef = get_op(op_name)
        attrs, outs = self.infer(op_name, *operands, **attrs)
        empty_out = bool(outs) and all(math.prod(shape) == 0 for shape, _ in outs)
        if empty_out or all(v.name in self.consts or _empty(v) for v in operands):
            folded = sum(math.prod(shape) * DTYPES[dtype].itemsize for shape, dtype in outs)
            if folded > MAX_FOLDED_BYTES:  # checked before anything is allocated
                raise self.error(
                    f"folding {op_name} would make a {folded} B constant (limit "
                    f"{MAX_FOLDED_BYTES} B): the model is malformed or hostile"
                )
            if empty_out:
                arrays = [np.zeros(shape, DTYPES[dtype]) for shape, dtype in outs]
            else:
                arrays = self._evaluate(opdef, operands, attrs)
            values = [self.const(a, stem=op_name) for a in arrays]
        else:
            for v in operands:
                if v.name in self.consts:
                    self.params[v.name] = self.consts[v.name]
            node = Node(
                self.fresh(f"{self.name}_{op_name}"), op_name, [v.name for v in operands], [], attrs
            )
            for shape, dtype in outs:
                out = self.fresh(f"{self.name}_{op_name}")
                self._types[out] = TensorType(shape, dtype)
                node.outputs.append(out)
                self._producers[out] = node
            self.nodes.append(node)
            values = [Value(n, self._types[n], self) for n in node.outputs]
        return values[0] if len(values) == 1 else tuple(values)

    def _evaluate(self, opdef, operands: tuple[Value, ...], attrs: dict) -> list[np.ndarray]:
        arrays = [
            self.consts[v.name] if v.name in self.consts else np.zeros(v.shape, DTYPES[v.dtype])
            for v in operands
        ]  # an operand that is not constant is empty: zeros of its shape are its value
        try:
            return opdef.evaluate(arrays, attrs)
        except (ValueError, IndexError, TypeError) as exc:  # e.g. a constant index too big
            raise self.error(f"folding {opdef.name} failed: {exc}") from None

    def __getattr__(self, op_name: str):
        if op_name.startswith("_"):
            raise AttributeError(op_name)
        get_op(op_name)  # raises for an unknown op
        return lambda *operands, **attrs: self.op(op_name, *operands, **attrs)

    def fresh(self, stem: str) -> str:
        return fresh_name(stem, self._taken)

    # ---- binding a converter's results to the node's ONNX outputs ---------------------------
    def finish(self, results) -> None:
        """Bind the converter's results to the node's outputs; the core node that computes the
        first output takes the ONNX node's name."""
        if not isinstance(results, tuple | list):
            results = (results,)
        outputs = [(i, name) for i, name in enumerate(self.node.output) if name]
        for i, onnx_name in outputs:
            if i >= len(results) or results[i] is None:
                raise self.unsupported(f"output {i}")
            self._bind(onnx_name, results[i])
        new_nodes = self.nodes[self._first_new :]
        if new_nodes and outputs:
            primary = self._producers.get(self.values[outputs[0][1]].name)
            is_new = any(primary is node for node in new_nodes)
            (primary if is_new else new_nodes[-1]).name = self.name

    def _bind(self, onnx_name: str, value: Value) -> None:
        """Constants and tensors made by this node take the ONNX name; anything older
        (Identity, Dropout) becomes an alias of the older value."""
        if value.name in self.consts:
            self.add_constant(onnx_name, self.consts[value.name])
            return
        new_nodes = self.nodes[self._first_new :]
        producer = self._producers.get(value.name)
        if not any(producer is node for node in new_nodes) or value.name == onnx_name:
            self.values[onnx_name] = value
            return
        self._types[onnx_name] = self._types.pop(value.name)
        self._producers[onnx_name] = self._producers.pop(value.name)
        for node in new_nodes:
            node.inputs = [onnx_name if n == value.name else n for n in node.inputs]
            node.outputs = [onnx_name if n == value.name else n for n in node.outputs]
        self.values[onnx_name] = Value(onnx_name, value.type, self)
