"""ONNX ops that move or make data: reshaping, slicing, joining, padding, constants, Shape.

Shape, Constant and ConstantOfShape produce constants, so the shape arithmetic exporters emit
around them folds away during import.
"""

import math

import numpy as np

from .convert_base import MAX_FOLDED_BYTES, ConvertContext, converts


@converts("Identity")
def identity(ctx: ConvertContext):
    return ctx.input(0)


def _constant_check(node, attrs):
    kinds = set(attrs) - {"value", "value_float", "value_floats", "value_int", "value_ints"}
    return f"a {kinds.pop()} attribute" if kinds else None


@converts("Constant", check=_constant_check)
def constant(ctx: ConvertContext):
    attrs = ctx.attrs
    if "value" in attrs:
        return ctx.const(attrs["value"])
    dtype = "float32" if ("value_float" in attrs or "value_floats" in attrs) else "int64"
    (value,) = attrs.values()
    return ctx.const(value, dtype)


@converts("ConstantOfShape", constant_inputs=(0,))
def constant_of_shape(ctx: ConvertContext):
    shape = tuple(int(d) for d in ctx.constant(0, "the shape"))
    fill = ctx.attr("value", np.zeros(1, dtype=np.float32))
    nbytes = math.prod(shape) * fill.dtype.itemsize
    if min(shape, default=0) < 0 or nbytes > MAX_FOLDED_BYTES:  # before allocating anything
        raise ctx.error(f"ConstantOfShape asks for an implausible constant of shape {shape}")
    return ctx.const(np.full(shape, fill.reshape(())[()], dtype=fill.dtype))


@converts("Shape")
def shape(ctx: ConvertContext):
    dims = ctx.input(0).shape
    return ctx.const(np.array(dims[ctx.attr("start", 0) : ctx.attr("end", len(dims))], np.int64))


@converts("Flatten")
def flatten(ctx: ConvertContext):
    return ctx.flatten(ctx.input(0), axis=ctx.attr("axis", 1))


@converts("Reshape", constant_inputs=(1,))
def reshape(ctx: ConvertContext):
    x = ctx.input(0)
    newshape = [int(d) for d in ctx.constant(1, "the target shape")]
    if not ctx.attr("allowzero", 0):
        # ONNX's 0 copies the input's dimension; the core's 0 means size 0.
        if any(d == 0 and i >= x.ndim for i, d in enumerate(newshape)):
            raise ctx.error(f"shape {newshape} copies a dimension {x.shape} does not have")
        newshape = [x.shape[i] if d == 0 else d for i, d in enumerate(newshape)]
    return ctx.reshape(x, newshape=newshape)


@converts("Transpose")
def transpose(ctx: ConvertContext):
    return ctx.transpose(ctx.input(0), axes=ctx.attr("perm", None))


@converts("Squeeze", constant_inputs=(1,))
def squeeze(ctx: ConvertContext):
    axes = ctx.optional_constant(1, "axes")
    return ctx.squeeze(ctx.input(0), axes=None if axes is None else axes.tolist())


@converts("Unsqueeze", constant_inputs=(1,))
def unsqueeze(ctx: ConvertContext):
    return ctx.expand_dims(ctx.input(0), axes=ctx.constant(1, "axes").tolist())


@converts("Concat")
def concat(ctx: ConvertContext):
    parts, axis = ctx.inputs_present(), ctx.attr("axis")
    ctx.infer("concatenate", *parts, axis=axis)  # every part, empty ones too, must fit
    filled = [p for p in parts if math.prod(p.shape)] or parts  # empty parts add nothing
    if len(filled) == 1 < len(parts):
        return filled[0]
    return ctx.concatenate(*filled, axis=axis)


@converts("Split", constant_inputs=(1,))
def split(ctx: ConvertContext):
    x = ctx.input(0)
    axis = ctx.attr("axis", 0)
    if not -x.ndim <= axis < x.ndim:
        raise ctx.error(f"axis {axis} out of range for shape {x.shape}")
    sizes = ctx.optional_constant(1, "the split sizes")
    if sizes is None:
        # Equal parts; the last is smaller when the axis does not divide (opset 18).
        parts, dim = ctx.attr("num_outputs", len(ctx.node.output)), x.shape[axis]
        chunk = -(-dim // parts)
        sizes = [min(chunk, max(0, dim - i * chunk)) for i in range(parts)]
    sizes = [int(s) for s in sizes]
    ctx.infer("split", x, sizes=sizes, axis=axis)  # the sizes must add up
    if 0 not in sizes or not math.prod(x.shape):
        return ctx.split(x, sizes=sizes, axis=axis)
    # The split makes only the parts that hold data; empty ones are constants.
    filled = [s for s in sizes if s]
    made = iter(ctx.split(x, sizes=filled, axis=axis) if len(filled) > 1 else (x,))
    empty = [0 if i == axis % x.ndim else d for i, d in enumerate(x.shape)]
    return [next(made) if s else ctx.const(np.zeros(empty), x.dtype, stem="empty") for s in sizes]


@converts("Slice", constant_inputs=(1, 2, 3, 4))
def slice_(ctx: ConvertContext):
    def ints(i, what):
        array = ctx.optional_constant(i, what)
        return None if array is None else array.tolist()

    return ctx.strided_slice(
        ctx.input(0),
        begin=ctx.constant(1, "starts").tolist(),
        end=ctx.constant(2, "ends").tolist(),
        axes=ints(3, "axes"),
        strides=ints(4, "steps"),
    )


@converts("Gather")
def gather(ctx: ConvertContext):
    return ctx.take(ctx.input(0), ctx.input(1), axis=ctx.attr("axis", 0))


@converts("Expand", constant_inputs=(1,))
def expand(ctx: ConvertContext):
    x = ctx.input(0)
    target = tuple(int(d) for d in ctx.constant(1, "the shape"))
    try:
        shape = np.broadcast_shapes(x.shape, target)  # ONNX Expand broadcasts both ways
    except ValueError:
        raise ctx.error(f"{x.shape} does not broadcast with {target}") from None
    return ctx.broadcast_to(x, shape=shape)


@converts("Pad", constant_inputs=(1, 2, 3))
def pad(ctx: ConvertContext):
    x = ctx.input(0)
    pads = [int(p) for p in ctx.constant(1, "pads")]
    value = ctx.optional_constant(2, "constant_value")
    axes = ctx.optional_constant(3, "axes")
    axes = range(x.ndim) if axes is None else [int(a) % x.ndim for a in axes]
    if len(pads) != 2 * len(axes):
        raise ctx.error(f"pads {pads} needs two values per axis of {list(axes)}")
    begins, ends = [0] * x.ndim, [0] * x.ndim
    for i, axis in enumerate(axes):
        begins[axis], ends[axis] = pads[i], pads[i + len(axes)]
    widths = [w for b, e in zip(begins, ends, strict=True) for w in (max(b, 0), max(e, 0))]
    if any(widths):
        pad_value = 0.0 if value is None or value.size == 0 else float(value.reshape(()))
        x = ctx.pad(x, pad_width=widths, mode=ctx.attr("mode", "constant"), pad_value=pad_value)
    if min(begins + ends) >= 0:
        return x
    # Negative pads crop.
    cropped = [i for i in range(x.ndim) if min(begins[i], ends[i]) < 0]
    return ctx.strided_slice(
        x,
        begin=[max(0, -begins[i]) for i in cropped],
        end=[x.shape[i] - max(0, -ends[i]) for i in cropped],
        axes=cropped,
    )


@converts("GatherElements")
def gather_elements(ctx: ConvertContext):
    return ctx.take_along_axis(ctx.input(0), ctx.input(1), axis=ctx.attr("axis", 0))


@converts("GatherND")
def gather_nd(ctx: ConvertContext):
    return ctx.gather_nd(ctx.input(0), ctx.input(1), batch_dims=ctx.attr("batch_dims", 0))


@converts("ScatterND", choices={"reduction": ("none", "add", "mul", "max", "min")})
def scatter_nd(ctx: ConvertContext):
    return ctx.scatter_nd(
        ctx.input(0), ctx.input(1), ctx.input(2), reduction=ctx.attr("reduction", "none")
    )


def _scalar_input(ctx: ConvertContext, i: int, what: str) -> int:
    value = ctx.constant(i, what)
    if value.size != 1:
        raise ctx.error(f"{what} must be a scalar, got shape {value.shape}")
    return int(value.reshape(()))


@converts("Trilu", constant_inputs=(1,))
def trilu(ctx: ConvertContext):
    k = _scalar_input(ctx, 1, "k") if ctx.has_input(1) else 0
    return ctx.op("triu" if ctx.attr("upper", 1) else "tril", ctx.input(0), k=k)


@converts("CumSum", constant_inputs=(1,))
def cumsum(ctx: ConvertContext):
    return ctx.cumsum(
        ctx.input(0),
        axis=_scalar_input(ctx, 1, "axis"),
        exclusive=bool(ctx.attr("exclusive", 0)),
        reverse=bool(ctx.attr("reverse", 0)),
    )


# Range's length depends on its inputs' values: with static shapes it is always a constant.
_STASH_DTYPES = {1: np.float32, 11: np.float64}  # TensorProto FLOAT, DOUBLE


@converts("Range", constant_inputs=(0, 1, 2))
def range_(ctx: ConvertContext):
    start, limit, delta = (ctx.constant(i, w) for i, w in enumerate(("start", "limit", "delta")))
    if any(v.size != 1 for v in (start, limit, delta)):
        raise ctx.error("start, limit and delta must be scalars")
    start, limit, delta = (v.reshape(()) for v in (start, limit, delta))
    if delta == 0:
        raise ctx.error("delta must not be 0")
    length = max(0, math.ceil((float(limit) - float(start)) / float(delta)))
    if length * start.dtype.itemsize > MAX_FOLDED_BYTES:
        raise ctx.error(f"Range asks for an implausible {length} elements")
    # As ONNX's reference: float16/bfloat16 are computed in stash_type (opset 27), else as
    # Python scalars, and cast to the inputs' type.
    stash = _STASH_DTYPES.get(ctx.attr("stash_type", 1)) if ctx.opset >= 27 else None
    if stash is not None and start.dtype.name in ("float16", "bfloat16"):
        values = np.arange(start.astype(stash), float(limit), float(delta), dtype=stash)
    else:
        values = np.arange(start.item(), limit.item(), delta.item())
    return ctx.const(values.astype(start.dtype), stem="range")
