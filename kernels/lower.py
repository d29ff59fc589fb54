"""Lowering fused elementwise/broadcast/injective chains to C statements, one element at a time.

``ElementwiseLowering.value(tensor, index)`` returns a C variable holding ``tensor`` at the
multi-index ``index`` (a tuple of C integer expressions), emitting the statements that compute
it. Each op has one small rule in ``RULES``; values are memoised per (tensor, index) so a
value used twice is computed once. Templates use this for whole injective kernels and for the
prologues and epilogues they fuse. Where a template computes a short vector of adjacent outputs,
``batch_math`` first evaluates the chain's exp/log/sqrt/tanh/erf (and sigmoid, rsqrt) for all of
them with one vector call each.
"""

import contextlib
import math
from collections.abc import Callable

import numpy as np

from coretune.errors import CoretuneError
from coretune.graph.ir import Node, TensorType

from .ctypes_ import literal, value_type
from .render import Table, lane_names


class NotLowerable(CoretuneError):
    """An op that the elementwise lowering cannot express."""


def row_major_strides(shape) -> list[int]:
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return strides[::-1]


def linear_index(index, shape) -> str:
    terms = [
        f"({i}) * {s}" if s != 1 else f"({i})"
        for i, s, d in zip(index, row_major_strides(shape), shape, strict=True)
        if d != 1
    ]
    return " + ".join(terms) or "0"


OUTPUT_OFFSET = "out_offset"  # the kernel argument holding a placed output's offset


def element_offset(index, shape, layout=None) -> str:
    """Where element ``index`` of a tensor of ``shape`` lives in its buffer: row-major, or
    per ``layout`` (element strides per axis, element offset): e.g. the interior of a padded
    buffer (Workload.output_layout, Workload.input_layouts)."""
    if layout is None:
        return linear_index(index, shape)
    strides, offset = layout
    axes = zip(index, strides, shape, strict=True)
    terms = [f"({i}) * {stride}" for i, stride, size in axes if size != 1]
    return " + ".join(([str(offset)] if offset else []) + terms) or "0"


class ElementwiseLowering:
    def __init__(
        self,
        types: dict[str, TensorType],
        producers: dict[str, Node],
        load: Callable[[str, str], str],
        prefix: str = "v",
        layouts: dict | None = None,
    ):
        """``producers`` maps the tensors computed inside the kernel to their nodes; any other
        tensor is read from a buffer with ``load(name, element_offset_expr)``: row-major, or
        as ``layouts`` places it (tensor -> (strides, offset))."""
        self.types = types
        # 32-bit index arithmetic is much cheaper on GPUs; 64-bit only when a tensor needs it.
        self.index_type = (
            "long" if max(math.prod(t.shape) for t in types.values()) >= 2**31 else "int"
        )
        self.producers = producers
        self.load = load
        self.layouts = layouts or {}
        self.prefix = prefix  # temporaries are prefix1, prefix2...: distinct per lowering
        self.lines: list[str] = []
        self._memo: dict[tuple, str] = {}
        self._count = 0
        self.tables: dict[str, Table] = {}  # lookup tables the emitted code reads, by name

    def temp(self, ctype: str, expr: str) -> str:
        self._count += 1
        name = f"{self.prefix}{self._count}"
        self.lines.append(f"{ctype} {name} = {expr};")
        return name

    def bind(self, tensor: str, index: tuple[str, ...], variable: str) -> None:
        """Declare that ``variable`` already holds ``tensor`` at ``index`` (e.g. an accumulator
        a template computed), so the ops fused after it read it from there."""
        self._memo[(tensor, index)] = variable

    @contextlib.contextmanager
    def loop(self, start: str, stop: str, step: int = 1):
        """``for (j = start; j < stop; j += step)`` (``j > stop`` when step < 0) around what
        the body emits; yields j. Values computed inside are forgotten after the loop: they
        are out of scope there."""
        self._count += 1
        j = f"{self.prefix}{self._count}"
        test = f"{j} < {stop}" if step > 0 else f"{j} > {stop} - 1"
        self.lines.append(f"for ({self.index_type} {j} = {start}; {test}; {j} += {step}) {{")
        outer = dict(self._memo)
        yield j
        self._memo = outer
        self.lines.append("}")

    def int_temp(self, expr: str) -> str:
        return self.temp(self.index_type, expr)

    def unflatten(
        self, flat: str, shape, known: dict | None = None, inside: bool = False
    ) -> tuple[str, ...]:
        """Multi-index of a row-major flat index (size-1 axes are constant 0; ``known``: axis
        -> a variable that already holds that axis's index). ``inside``: the index is less
        than the size, so the outermost axis needs no modulo (and its extent is not in the
        text: kernels that differ only in it can be one program)."""
        out, outermost = [], inside
        for axis, (d, s) in enumerate(zip(shape, row_major_strides(shape), strict=True)):
            if d == 1:
                out.append("0")
                continue
            if known and axis in known:
                out.append(known[axis])
            else:
                quotient = f"({flat} / {s})" if s > 1 else f"({flat})"
                out.append(self.int_temp(quotient if outermost else f"{quotient} % {d}"))
            outermost = False
        return tuple(out)

    def value(self, tensor: str, index: tuple[str, ...]) -> str:
        key = (tensor, index)
        if key not in self._memo:
            node = self.producers.get(tensor)
            ttype = self.types[tensor]
            if node is None:
                layout = self.layouts.get(tensor)
                expr = self.load(tensor, element_offset(index, ttype.shape, layout))
            else:
                if node.op in MULTI_OUTPUT_RULES:
                    expr = MULTI_OUTPUT_RULES[node.op](self, node, index, tensor)
                elif node.op in RULES:
                    expr = RULES[node.op](self, node, index)
                else:
                    raise NotLowerable(f"{node.op} cannot be fused into an elementwise kernel")
            # A rule that only moves the index (transpose, reshape...) returns an existing
            # variable: alias it rather than copy it.
            is_variable = expr.isidentifier() and node is not None
            self._memo[key] = expr if is_variable else self.temp(value_type(ttype.dtype), expr)
        return self._memo[key]

    def operand(self, tensor: str, out_index: tuple[str, ...]) -> str:
        """``tensor`` read at an output index of a broadcasting op (numpy rules)."""
        return self.value(tensor, self.operand_index(tensor, out_index))

    def operand_index(self, tensor: str, out_index: tuple[str, ...]) -> tuple[str, ...]:
        shape = self.types[tensor].shape
        offset = len(out_index) - len(shape)
        return tuple("0" if d == 1 else out_index[offset + i] for i, d in enumerate(shape))

    def batch_math(self, tensor: str, indices: list[tuple[str, ...]]) -> None:
        """Evaluate the VECTOR_MATH ops that ``tensor`` depends on at all ``indices`` (2, 4 or
        8 of them) with one vector call per op; the ``value`` calls that follow find the
        results. PoCL's scalar exp/tanh/erf are 7-10x slower than its float8 ones (exp 2.65
        vs 0.40 ns per element, erf 13.5 vs 1.9). Only elementwise and broadcast ops are
        walked: their operands' indices follow from the output's (numpy broadcasting)."""
        node = self.producers.get(tensor)
        width = len(indices)
        if (
            node is None
            or node.op not in BROADCASTING
            or width not in (2, 4, 8)
            or (tensor, indices[0]) in self._memo
        ):
            return
        for source in node.inputs:
            self.batch_math(source, [self.operand_index(source, i) for i in indices])
        if node.op in VECTOR_MATH and self.dtype(node.inputs[0]) == "float32":
            before, call, after = VECTOR_MATH[node.op]
            lanes = [before.format(self.operand(node.inputs[0], i)) for i in indices]
            vector = self.temp(f"float{width}", f"{call}(VEC{width}({', '.join(lanes)}))")
            for index, lane in zip(indices, lane_names(width), strict=True):
                self._memo[(tensor, index)] = self.temp("float", after.format(f"{vector}.{lane}"))

    def dtype(self, tensor: str) -> str:
        return self.types[tensor].dtype


def _is_float(lw, tensor):
    return lw.dtype(tensor) == "float32"


def _elementwise(float_expr: str, int_expr: str | None = None):
    """A rule from C templates over operands a, b, c (same index, numpy broadcasting)."""

    def rule(lw: ElementwiseLowering, node: Node, index):
        args = [lw.operand(t, index) for t in node.inputs]
        template = float_expr if _is_float(lw, node.inputs[0]) or int_expr is None else int_expr
        if template is None:
            raise NotLowerable(f"{node.op} on {lw.dtype(node.inputs[0])}")
        return template.format(*args, **_attr_literals(lw, node))

    return rule


def _attr_literals(lw, node):
    dtype = lw.dtype(node.inputs[0])
    return {
        k: literal(v, dtype)
        for k, v in node.attrs.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _remainder(lw, a: str, b: str, dtype: str) -> str:
    """C's remainder (the sign of a); 0 for a zero divisor, as numpy's. a % -1 is 0, but
    INT_MIN % -1 overflows (a trap on x86): it is never computed."""
    if dtype == "float32":
        return lw.temp("float", f"fmod({a}, {b})")
    never = f"{b} == 0" if dtype.startswith("uint") else f"({b} == 0 || {b} == -1)"
    return lw.temp(value_type(dtype), f"({never} ? 0 : {a} % {b})")


def _fmod(lw, node, index):
    a, b = (lw.operand(t, index) for t in node.inputs)
    return _remainder(lw, a, b, lw.dtype(node.inputs[0]))


def _mod(lw, node, index):
    """numpy mod: C's remainder moved into b's sign; a zero takes b's sign (ONNX Mod)."""
    a, b = (lw.operand(t, index) for t in node.inputs)
    dtype = lw.dtype(node.inputs[0])
    r = _remainder(lw, a, b, dtype)
    if dtype.startswith("uint"):
        return r  # no signs to move
    fix = f"(({r} < 0) != ({b} < 0) ? {r} + {b} : {r})"
    if dtype == "float32":
        return f"({r} != 0 ? {fix} : ({b} < 0 ? -0.0f : 0.0f))"
    return f"({r} != 0 ? {fix} : 0)"


# numpy's maximum/minimum propagate NaN: written so a NaN on either side wins.
_MAX = "(({0} > {1} || {0} != {0}) ? {0} : {1})"
_MIN = "(({0} < {1} || {0} != {0}) ? {0} : {1})"

# Unary float ops batch_math evaluates a vector at a time: (per-lane argument, vector
# builtin, per-lane result), each a format string of one operand.
VECTOR_MATH = {
    "exp": ("{0}", "exp", "{0}"),
    "log": ("{0}", "log", "{0}"),
    "sqrt": ("{0}", "sqrt", "{0}"),
    "tanh": ("{0}", "tanh", "{0}"),
    "erf": ("{0}", "erf", "{0}"),
    "rsqrt": ("{0}", "sqrt", "(1.0f / {0})"),
    "sigmoid": ("(-{0})", "exp", "(1.0f / (1.0f + {0}))"),
}

RULES: dict[str, Callable] = {
    "add": _elementwise("({0} + {1})", "({0} + {1})"),
    "subtract": _elementwise("({0} - {1})", "({0} - {1})"),
    "multiply": _elementwise("({0} * {1})", "({0} * {1})"),
    "divide": _elementwise("({0} / {1})", "({1} == 0 ? 0 : {0} / {1})"),
    "maximum": _elementwise(_MAX, _MAX),
    "minimum": _elementwise(_MIN, _MIN),
    "power": _elementwise("pow({0}, (float)({1}))"),
    "greater": _elementwise("({0} > {1})", "({0} > {1})"),
    "less": _elementwise("({0} < {1})", "({0} < {1})"),
    "equal": _elementwise("({0} == {1})", "({0} == {1})"),
    "greater_equal": _elementwise("({0} >= {1})", "({0} >= {1})"),
    "less_equal": _elementwise("({0} <= {1})", "({0} <= {1})"),
    "logical_and": _elementwise(None, "({0} && {1})"),
    "logical_or": _elementwise(None, "({0} || {1})"),
    "logical_xor": _elementwise(None, "({0} != {1})"),
    "logical_not": _elementwise(None, "(!{0})"),
    "isnan": _elementwise("({0} != {0})"),
    "fmod": _fmod,
    "mod": _mod,
    "negative": _elementwise("(-{0})", "(-{0})"),
    "abs": _elementwise("fabs({0})", "({0} < 0 ? -{0} : {0})"),
    "exp": _elementwise("exp({0})"),
    "log": _elementwise("log({0})"),
    "sqrt": _elementwise("sqrt({0})"),
    "rsqrt": _elementwise("(1.0f / sqrt({0}))"),
    "tanh": _elementwise("tanh({0})"),
    "sigmoid": _elementwise("(1.0f / (1.0f + exp(-{0})))"),
    "erf": _elementwise("erf({0})"),
    "relu": _elementwise("({0} < 0.0f ? 0.0f : {0})", "({0} < 0 ? 0 : {0})"),
    "leaky_relu": _elementwise("({0} < 0.0f ? {0} * {alpha} : {0})"),
    "where": lambda lw, node, index: "({} ? {} : {})".format(
        *(lw.operand(t, index) for t in node.inputs)
    ),
}


# Ops whose rule reads every operand at the broadcast of the output index (lw.operand).
BROADCASTING = frozenset(RULES) | {"clip", "cast"}


def _clip(lw, node, index):
    x = lw.operand(node.inputs[0], index)
    dtype = lw.dtype(node.inputs[0])
    expr = x
    if node.attrs["a_min"] is not None:
        lo = literal(node.attrs["a_min"], dtype)
        expr = f"({x} < {lo} ? {lo} : {expr})"
    if node.attrs["a_max"] is not None:
        hi = literal(node.attrs["a_max"], dtype)
        expr = f"({expr} > {hi} ? {hi} : {expr})"
    return expr


def _cast(lw, node, index):
    target = node.attrs["dtype"]
    x = lw.operand(node.inputs[0], index)
    if target == "bool":
        return f"({x} != 0)"
    return f"({value_type(target)})({x})"


def _batch_norm(lw, node, index):
    data, gamma, beta, mean, var = node.inputs
    axis = node.attrs["axis"] % len(index)
    c = (index[axis],)
    x, g, b, m, v = (lw.value(data, index), *(lw.value(t, c) for t in (gamma, beta, mean, var)))
    eps = literal(node.attrs["epsilon"], "float32")
    return f"(({x} - {m}) * ({g} / sqrt({v} + {eps})) + {b})"


# ---- injective: each rule maps the output index to its input's index ----------------------
def _transpose(lw, node, index):
    axes = node.attrs["axes"] or tuple(reversed(range(len(index))))
    source = [None] * len(index)
    for out_axis, in_axis in enumerate(axes):
        source[in_axis % len(index)] = index[out_axis]
    return lw.value(node.inputs[0], tuple(source))


def _reshaped(lw, node, index):
    """reshape/flatten/expand_dims/squeeze/broadcast-free views: axis by axis where the axes
    correspond, through a flat index only within each run of axes that merge or split (a
    flat index of the whole shape costs a division and a remainder per axis per element:
    ShuffleNet's channel-shuffle kernels took 2.73 ms per run that way, 2.18 ms this way)."""
    out_shape = lw.types[node.outputs[0]].shape
    in_shape = lw.types[node.inputs[0]].shape
    if math.prod(in_shape) <= 1:
        return lw.value(node.inputs[0], ("0",) * len(in_shape))
    source = ["0"] * len(in_shape)  # size-1 input axes stay 0
    for in_axes, out_axes in reshape_runs(in_shape, out_shape):
        if len(in_axes) == 1 and len(out_axes) == 1:
            source[in_axes[0]] = index[out_axes[0]]
            continue
        sizes = [out_shape[a] for a in out_axes]
        flat = lw.int_temp(linear_index([index[a] for a in out_axes], sizes))
        parts = lw.unflatten(flat, [in_shape[a] for a in in_axes])
        for axis, part in zip(in_axes, parts, strict=True):
            source[axis] = part
    return lw.value(node.inputs[0], tuple(source))


def reshape_runs(in_shape, out_shape) -> list[tuple[list[int], list[int]]]:
    """The axes of two shapes of one size in corresponding runs of equal products, axes of
    size 1 left out: (2, 1, 6, 5) -> (2, 3, 2, 5) gives [0]~[0], [2]~[1, 2], [3]~[3]."""
    ins = [a for a, d in enumerate(in_shape) if d != 1]
    outs = [a for a, d in enumerate(out_shape) if d != 1]
    runs, i, j = [], 0, 0
    while i < len(ins) and j < len(outs):
        run_in, run_out = [ins[i]], [outs[j]]
        size_in, size_out = in_shape[ins[i]], out_shape[outs[j]]
        i, j = i + 1, j + 1
        while size_in != size_out:
            if size_in < size_out:
                run_in.append(ins[i])
                size_in *= in_shape[ins[i]]
                i += 1
            else:
                run_out.append(outs[j])
                size_out *= out_shape[outs[j]]
                j += 1
        runs.append((run_in, run_out))
    return runs


def _broadcast_to(lw, node, index):
    return lw.operand(node.inputs[0], index)


def _position(lw, picked: str, n: int) -> str:
    """An index read from a tensor as a position on an axis of size n: negative ones count
    from the end; out-of-range ones are clamped, never read past."""
    position = lw.int_temp(f"({picked} < 0 ? {picked} + {n} : {picked})")
    return lw.int_temp(f"({position} < 0 ? 0 : ({position} >= {n} ? {n - 1} : {position}))")


def _take(lw, node, index):
    data, indices = node.inputs
    axis = node.attrs["axis"] % len(lw.types[data].shape)
    k = len(lw.types[indices].shape)
    position = _position(lw, lw.value(indices, index[axis : axis + k]), lw.types[data].shape[axis])
    return lw.value(data, index[:axis] + (position,) + index[axis + k :])


def _take_along_axis(lw, node, index):
    data, indices = node.inputs
    axis = node.attrs["axis"] % len(index)
    position = _position(lw, lw.value(indices, index), lw.types[data].shape[axis])
    return lw.value(data, index[:axis] + (position,) + index[axis + 1 :])


def _index_row(lw, indices: str, lead: tuple[str, ...], sizes) -> tuple[str, ...]:
    """The positions an index row of ``indices`` (at ``lead``, its last axis) names."""
    return tuple(_position(lw, lw.value(indices, (*lead, str(t))), n) for t, n in enumerate(sizes))


def _gather_nd(lw, node, index):
    data, indices = node.inputs
    b, lead = node.attrs["batch_dims"], len(lw.types[indices].shape) - 1
    k = lw.types[indices].shape[-1]
    row = _index_row(lw, indices, index[:lead], lw.types[data].shape[b : b + k])
    return lw.value(data, index[:b] + row + index[lead:])


_SCATTER = {"none": "{1}", "add": "({0} + {1})", "mul": "({0} * {1})", "max": _MAX, "min": _MIN}
_INT_SCATTER = {"max": "({0} > {1} ? {0} : {1})", "min": "({0} < {1} ? {0} : {1})"}


def _scatter_nd(lw, node, index):
    """A loop over the index rows, in order: each that names this element combines its
    update into the value (so the last of repeated rows wins, as the reference's)."""
    data, indices, updates = node.inputs
    rows, k = lw.types[indices].shape[:-1], lw.types[indices].shape[-1]
    value = lw.temp(value_type(lw.dtype(data)), lw.value(data, index))
    with lw.loop("0", str(math.prod(rows))) as j:
        lead = lw.unflatten(j, rows)
        row = _index_row(lw, indices, lead, lw.types[data].shape[:k])
        hit = " && ".join(f"{p} == ({i})" for p, i in zip(row, index, strict=False)) or "1"
        update = lw.value(updates, lead + index[k:])
        combine = _SCATTER[node.attrs["reduction"]]
        if lw.dtype(data) != "float32":  # no NaN to propagate
            combine = _INT_SCATTER.get(node.attrs["reduction"], combine)
        combined = combine.format(value, update)
        lw.lines.append(f"if ({hit}) {value} = {combined};")
    return value


def _triangle(keep: str):
    def rule(lw, node, index):
        x = lw.value(node.inputs[0], index)
        zero = literal(0, lw.dtype(node.inputs[0]))
        row, col = index[-2:]
        return f"((({col}) - ({row})) {keep} {node.attrs['k']} ? {x} : {zero})"

    return rule


def _cumsum(lw, node, index):
    """A loop over the axis, in numpy's order (from the end when reversed), so float sums
    round as the reference's do."""
    x = node.inputs[0]
    dtype = lw.dtype(x)
    axis = node.attrs["axis"] % len(index)
    n, i = lw.types[x].shape[axis], index[axis]
    skip = 1 if node.attrs["exclusive"] else 0
    total = lw.temp(value_type(dtype), literal(0, dtype))
    if node.attrs["reverse"]:
        bounds = (str(n - 1), f"({i}) + {skip}", -1)
    else:
        bounds = ("0", f"({i}) + {1 - skip}", 1)
    with lw.loop(*bounds) as j:
        lw.lines.append(f"{total} += {lw.value(x, index[:axis] + (j,) + index[axis + 1 :])};")
    return total


def _strided_slice(lw, node, index):
    from coretune.graph.ops.transform import _slice_args

    source = list(index)
    shape = lw.types[node.inputs[0]].shape
    a = node.attrs
    for axis, begin, _, _, stride in _slice_args(
        shape, a["begin"], a["end"], a["strides"], a["axes"]
    ):
        source[axis] = f"({begin} + ({index[axis]}) * {stride})"
    return lw.value(node.inputs[0], tuple(source))


def _pad(lw, node, index):
    shape = lw.types[node.inputs[0]].shape
    widths = node.attrs["pad_width"]
    mode = node.attrs["mode"]
    source, inside = [], []
    for axis, d in enumerate(shape):
        before = widths[2 * axis]
        if not before and not widths[2 * axis + 1]:
            source.append(index[axis])
            continue
        i = lw.int_temp(f"({index[axis]}) - {before}" if before else index[axis])
        if mode == "constant":
            inside.append(f"({i} >= 0 && {i} < {d})")
            source.append(f"({i} < 0 ? 0 : ({i} >= {d} ? {d - 1} : {i}))")
        elif mode == "edge":
            source.append(f"({i} < 0 ? 0 : ({i} >= {d} ? {d - 1} : {i}))")
        elif mode == "reflect":
            source.append(f"({i} < 0 ? -{i} : ({i} >= {d} ? {2 * d - 2} - {i} : {i}))")
        else:  # wrap
            source.append(f"((({i}) % {d} + {d}) % {d})")
    value = lw.value(node.inputs[0], tuple(source))
    if not inside:
        return value
    fill = literal(node.attrs["pad_value"], lw.dtype(node.inputs[0]))
    return f"(({' && '.join(inside)}) ? {value} : {fill})"


# From this many pieces on, a concatenation whose pieces are all buffers read as they are
# selects the piece's buffer and reads it once: reading every piece and selecting the value
# costs a clamp and a load per piece per element (DenseNet-121 concatenates up to 32).
SELECT_BUFFER_PIECES = 3


def _concatenate(lw, node, index):
    axis = node.attrs["axis"] % len(index)
    start, pieces = 0, []
    for tensor in node.inputs:
        size = lw.types[tensor].shape[axis]
        if size:
            pieces.append((start, size, tensor))
        start += size
    buffers = all(t not in lw.producers and t not in lw.layouts for _, _, t in pieces)
    if buffers and len(pieces) >= SELECT_BUFFER_PIECES:
        return _concatenate_buffers(lw, node, index, axis, pieces)
    result = None
    for start, size, tensor in reversed(pieces):
        # Every piece is read (clamped into its bounds) and the right one selected: branch-free.
        local = lw.int_temp(f"({index[axis]}) - {start}")
        local = lw.int_temp(f"({local} < 0 ? 0 : ({local} >= {size} ? {size - 1} : {local}))")
        local = index[:axis] + (local,) + index[axis + 1 :]
        value = lw.value(tensor, local)
        result = (
            value if result is None else f"(({index[axis]}) < {start + size} ? {value} : {result})"
        )
    return result


def _concatenate_buffers(lw, node, index, axis, pieces):
    """One read, from the buffer of the piece that holds the element: the piece's buffer,
    first position and size along the axis are selected by comparisons (one each per
    piece, no loads), then its element offset is formed with that size."""
    shape = lw.types[node.outputs[0]].shape
    at = index[axis]

    def chosen(values):  # the value of the piece holding ``at``, as one select chain
        expr = str(values[-1])
        for (start, size, _), value in zip(
            reversed(pieces[:-1]), reversed(values[:-1]), strict=True
        ):
            expr = f"(({at}) < {start + size} ? {value} : {expr})"
        return expr

    first = lw.int_temp(chosen([start for start, _, _ in pieces]))
    inner = math.prod(shape[axis + 1 :])
    terms = [f"(({at}) - {first}) * {inner}"]
    outer = linear_index(index[:axis], shape[:axis])
    if outer != "0":
        stride = lw.int_temp(chosen([size * inner for _, size, _ in pieces]))
        terms.insert(0, f"({outer}) * {stride}")
    rest = linear_index(index[axis + 1 :], shape[axis + 1 :])
    if rest != "0":
        terms.append(rest)
    return lw.load(chosen([tensor for _, _, tensor in pieces]), " + ".join(terms))


for _op in ("reshape", "flatten", "expand_dims", "squeeze"):
    RULES[_op] = _reshaped
RULES.update(
    {
        "clip": _clip,
        "cast": _cast,
        "batch_norm": _batch_norm,
        "transpose": _transpose,
        "broadcast_to": _broadcast_to,
        "take": _take,
        "take_along_axis": _take_along_axis,
        "gather_nd": _gather_nd,
        "scatter_nd": _scatter_nd,
        "tril": _triangle("<="),
        "triu": _triangle(">="),
        "cumsum": _cumsum,
        "strided_slice": _strided_slice,
        "pad": _pad,
        "concatenate": _concatenate,
    }
)


def _split(lw, node, index, tensor):
    axis = node.attrs["axis"] % len(index)
    start = sum(node.attrs["sizes"][: node.outputs.index(tensor)])
    shifted = f"({index[axis]}) + {start}" if start else index[axis]
    return lw.value(node.inputs[0], index[:axis] + (shifted,) + index[axis + 1 :])


MULTI_OUTPUT_RULES = {"split": _split}


def _resize_taps(lw, node, axis_from_end):
    """Per output position: tap indices and weights (host-computed), as lookup tables."""
    from coretune.graph.ops.resize import _resize_scale, interpolation_matrix

    a = node.attrs
    in_shape = lw.types[node.inputs[0]].shape
    i = 2 - axis_from_end
    stem = f"{node.name}_{'hw'[i]}"
    scale = _resize_scale(in_shape, a["size"], a["scale"])[i]
    roi = a["roi"] or (0.0, 0.0, 1.0, 1.0)
    matrix, outside = interpolation_matrix(
        in_shape[-axis_from_end],
        a["size"][i],
        scale,
        a["method"],
        a["coordinate_transformation_mode"],
        a["rounding_method"],
        a["cubic_alpha"],
        a["exclude_outside"],
        (roi[i], roi[i + 2]),
    )
    taps = max(1, int((matrix != 0).sum(axis=1).max()))
    index, weight = [], []
    for row in matrix:  # rows outside a crop box are all zero: index 0 with weight 0
        nonzero = list(np.flatnonzero(row))
        index += nonzero + [0] * (taps - len(nonzero))
        weight += [row[j] for j in nonzero] + [0.0] * (taps - len(nonzero))
    for table in (
        Table(f"{stem}_index", "int", tuple(map(int, index))),
        Table(f"{stem}_weight", "float", tuple(literal(x, "float32") for x in weight)),
        Table(f"{stem}_outside", "int", tuple(map(int, outside))),
    ):
        lw.tables[table.name] = table
    return stem, taps, bool(outside.any())


def _resize2d(lw, node, index):
    rank = len(index)
    (h_stem, h_taps, h_out), (w_stem, w_taps, w_out) = (
        _resize_taps(lw, node, 2),
        _resize_taps(lw, node, 1),
    )
    oh, ow = index[rank - 2], index[rank - 1]
    terms = []
    for t in range(h_taps):
        for u in range(w_taps):
            ih = f"{h_stem}_index[({oh}) * {h_taps} + {t}]"
            iw = f"{w_stem}_index[({ow}) * {w_taps} + {u}]"
            x = lw.value(node.inputs[0], index[:-2] + (ih, iw))
            terms.append(
                f"{h_stem}_weight[({oh}) * {h_taps} + {t}] * "
                f"{w_stem}_weight[({ow}) * {w_taps} + {u}] * (float)({x})"
            )
    total = " + ".join(terms)
    masks = [f"{h_stem}_outside[{oh}]"] * h_out + [f"{w_stem}_outside[{ow}]"] * w_out
    if masks:
        fill = literal(node.attrs["extrapolation_value"], "float32")
        total = f"(({' || '.join(masks)}) ? {fill} : {total})"
    return total


RULES["resize2d"] = _resize2d


def lowerable(op: str) -> bool:
    return op in RULES or op in MULTI_OUTPUT_RULES
