"""Injective ops that move data: reshape, transpose, take, slicing, padding, joining."""

import math

import numpy as np

from ..registry import Attr, OpDef, Pattern, register, shape_error
from .common import (
    all_same_dtype,
    broadcast,
    first_dtype,
    normalize_axes,
    normalize_axis,
)

INJECTIVE = Pattern.INJECTIVE


def injective(name, inputs, shape, reference, attrs, doc, level=3, dtype=first_dtype):
    return register(OpDef(name, level, INJECTIVE, inputs, shape, dtype, reference, attrs, doc))


def _flatten_shape(shapes, axis):
    shape = shapes[0]
    if not -len(shape) <= axis <= len(shape):
        raise shape_error("flatten", f"axis {axis} out of range [{-len(shape)}, {len(shape)}]")
    return [(math.prod(shape[:axis]), math.prod(shape[axis:]))]  # a negative axis counts back


injective(
    "flatten",
    ("x",),
    _flatten_shape,
    lambda x, axis: (x.reshape(_flatten_shape([x.shape], axis)[0]),),
    (Attr("axis", "int", 1),),
    "reshape to 2-D: (prod(shape[:axis]), prod(shape[axis:]))",
    level=1,
)


def _concat_shape(shapes, axis):
    first = shapes[0]
    axis = normalize_axis("concatenate", axis, len(first))
    for s in shapes[1:]:
        if len(s) != len(first) or s[:axis] + s[axis + 1 :] != first[:axis] + first[axis + 1 :]:
            raise shape_error("concatenate", f"shapes {first} and {s} differ off axis {axis}")
    return [first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1 :]]


injective(
    "concatenate",
    ("*data",),
    _concat_shape,
    lambda *xs, axis: (np.concatenate(xs, axis=axis),),
    (Attr("axis", "int", 0),),
    "join along axis",
    level=1,
    dtype=all_same_dtype("concatenate"),
)


def _split_shape(shapes, sizes, axis):
    shape = shapes[0]
    axis = normalize_axis("split", axis, len(shape))
    if sum(sizes) != shape[axis] or min(sizes, default=0) < 0:
        raise shape_error("split", f"sizes {sizes} do not partition dimension {shape[axis]}")
    return [shape[:axis] + (n,) + shape[axis + 1 :] for n in sizes]


injective(
    "split",
    ("x",),
    _split_shape,
    lambda x, sizes, axis: tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis)),
    (Attr("sizes", "ints"), Attr("axis", "int", 0)),
    "cut along axis into pieces of the given sizes",
    level=1,
    dtype=lambda dtypes, sizes, **_: [dtypes[0]] * len(sizes),
)


def _expand_dims_shape(shapes, axes):
    rank = len(shapes[0]) + len(axes)
    axes = normalize_axes("expand_dims", axes, rank)
    dims = iter(shapes[0])
    return [tuple(1 if i in axes else next(dims) for i in range(rank))]


injective(
    "expand_dims",
    ("x",),
    _expand_dims_shape,
    lambda x, axes: (np.expand_dims(x, tuple(axes)),),
    (Attr("axes", "ints"),),
    "insert size-1 axes at the given output positions",
    level=1,
)


def _squeeze_axes(shape, axes):
    if axes is None:
        return tuple(i for i, d in enumerate(shape) if d == 1)
    axes = normalize_axes("squeeze", axes, len(shape))
    if any(shape[a] != 1 for a in axes):
        raise shape_error("squeeze", f"axes {axes} of {shape} are not all size 1")
    return axes


injective(
    "squeeze",
    ("x",),
    lambda shapes, axes: [
        tuple(d for i, d in enumerate(shapes[0]) if i not in _squeeze_axes(shapes[0], axes))
    ],
    lambda x, axes: (np.squeeze(x, _squeeze_axes(x.shape, axes)),),
    (Attr("axes", "ints", None, optional=True),),
    "drop size-1 axes (all of them when axes is absent)",
    level=1,
)


def _reshape_shape(shapes, newshape):
    size = math.prod(shapes[0])
    if newshape.count(-1) > 1 or any(d < -1 for d in newshape):
        raise shape_error("reshape", f"bad newshape {newshape}")
    if -1 in newshape:
        known = math.prod(d for d in newshape if d != -1)
        if known == 0 or size % known:
            raise shape_error("reshape", f"cannot infer -1 in {newshape} for {shapes[0]}")
        newshape = tuple(size // known if d == -1 else d for d in newshape)
    if math.prod(newshape) != size:
        raise shape_error("reshape", f"cannot reshape {shapes[0]} to {newshape}")
    return [tuple(newshape)]


injective(
    "reshape",
    ("x",),
    _reshape_shape,
    lambda x, newshape: (x.reshape(_reshape_shape([x.shape], newshape)[0]),),
    (Attr("newshape", "ints"),),
    "numpy reshape (one -1 may be inferred)",
)


def _transpose_axes(rank, axes):
    if axes is None:
        return tuple(reversed(range(rank)))
    if sorted(a % rank if -rank <= a < rank else -1 for a in axes) != list(range(rank)):
        raise shape_error("transpose", f"axes {axes} are not a permutation of {rank} axes")
    return tuple(a % rank for a in axes)


injective(
    "transpose",
    ("x",),
    lambda shapes, axes: [tuple(shapes[0][a] for a in _transpose_axes(len(shapes[0]), axes))],
    lambda x, axes: (np.transpose(x, _transpose_axes(x.ndim, axes)),),
    (Attr("axes", "ints", None, optional=True),),
    "permute axes (reverse when absent)",
)


def _take_shape(shapes, axis):
    data, indices = shapes
    axis = normalize_axis("take", axis, len(data))
    return [data[:axis] + indices + data[axis + 1 :]]


def _take_dtype(dtypes, **_):
    if dtypes[1] not in ("int32", "int64"):
        raise shape_error("take", f"indices must be int32 or int64, got {dtypes[1]}")
    return [dtypes[0]]


injective(
    "take",
    ("data", "indices"),
    _take_shape,
    lambda data, indices, axis: (np.take(data, indices, axis=axis),),
    (Attr("axis", "int", 0),),
    "gather along axis; indices in [-n, n)",
    dtype=_take_dtype,
)


def slice_bounds(dim: int, begin: int, end: int, stride: int) -> tuple[int, int, int]:
    """Clamp one axis's (begin, end) as ONNX Slice and numpy do; returns (begin, end, length)."""
    if stride == 0:
        raise shape_error("strided_slice", "stride must not be 0")
    begin, end = (b + dim if b < 0 else b for b in (begin, end))
    if stride > 0:
        begin, end = min(max(begin, 0), dim), min(max(end, 0), dim)
        return begin, end, max(0, -(-(end - begin) // stride))
    begin, end = min(max(begin, 0), dim - 1), min(max(end, -1), dim - 1)
    return begin, end, max(0, -(-(begin - end) // -stride))


def _slice_args(shape, begin, end, strides, axes):
    axes = tuple(range(len(begin))) if axes is None else axes
    if not len(begin) == len(end) == len(axes) or (strides and len(strides) != len(begin)):
        raise shape_error("strided_slice", "begin, end, strides and axes must have one length")
    axes = tuple(normalize_axis("strided_slice", a, len(shape)) for a in axes)
    if len(set(axes)) != len(axes):
        raise shape_error("strided_slice", f"repeated axis in {axes}")
    strides = strides or (1,) * len(begin)
    return [
        (a, *slice_bounds(shape[a], b, e, s), s)
        for a, b, e, s in zip(axes, begin, end, strides, strict=True)
    ]


def _strided_slice_shape(shapes, begin, end, strides, axes):
    shape = list(shapes[0])
    for axis, _, _, length, _ in _slice_args(shape, begin, end, strides, axes):
        shape[axis] = length
    return [tuple(shape)]


def _strided_slice(x, begin, end, strides, axes):
    index = [slice(None)] * x.ndim
    for axis, b, e, _, s in _slice_args(x.shape, begin, end, strides, axes):
        index[axis] = slice(b, e if e >= 0 else None, s)
    return (x[tuple(index)],)


injective(
    "strided_slice",
    ("x",),
    _strided_slice_shape,
    _strided_slice,
    (
        Attr("begin", "ints"),
        Attr("end", "ints"),
        Attr("strides", "ints", None, optional=True),
        Attr("axes", "ints", None, optional=True),
    ),
    "x[begin:end:stride] on each listed axis (ONNX Slice clamping; end -1 with a negative "
    "stride means 'through index 0')",
)


def _pad_pairs(rank, pad_width):
    if len(pad_width) != 2 * rank or min(pad_width, default=0) < 0:
        raise shape_error("pad", f"pad_width needs {2 * rank} non-negative values, got {pad_width}")
    return [(pad_width[2 * i], pad_width[2 * i + 1]) for i in range(rank)]


def _pad_shape(shapes, pad_width, mode, **_):
    pairs = _pad_pairs(len(shapes[0]), pad_width)
    for d, (b, a) in zip(shapes[0], pairs, strict=True):
        if mode == "reflect" and (b or a) and (b >= d or a >= d):
            raise shape_error("pad", f"reflect padding {b, a} must be smaller than the axis {d}")
        if mode in ("edge", "wrap") and (b or a) and d == 0:
            raise shape_error("pad", f"{mode} padding of an empty axis")
    return [tuple(d + b + a for d, (b, a) in zip(shapes[0], pairs, strict=True))]


def _pad(x, pad_width, mode, pad_value):
    pairs = _pad_pairs(x.ndim, pad_width)
    if mode == "constant":
        return (np.pad(x, pairs, mode="constant", constant_values=pad_value),)
    return (np.pad(x, pairs, mode=mode),)


injective(
    "pad",
    ("x",),
    _pad_shape,
    _pad,
    (
        Attr("pad_width", "ints", doc="(before_0, after_0, before_1, after_1, ...)"),
        Attr("mode", "str", "constant", choices=("constant", "reflect", "edge", "wrap")),
        Attr("pad_value", "float", 0.0),
    ),
    "numpy pad",
)


def _broadcast_to_shape(shapes, shape):
    if broadcast("broadcast_to", shapes[0], shape) != tuple(shape):
        raise shape_error("broadcast_to", f"{shapes[0]} does not broadcast to {shape}")
    return [tuple(shape)]


injective(
    "broadcast_to",
    ("x",),
    _broadcast_to_shape,
    lambda x, shape: (np.broadcast_to(x, shape).copy(),),
    (Attr("shape", "ints"),),
    "numpy broadcast_to",
)
