"""Injective ops that select by position: take_along_axis, and the triangle masks tril, triu."""

import numpy as np

from ..registry import Attr, OpDef, Pattern, register, shape_error
from .common import first_dtype, first_shape, normalize_axis


def _take_along_axis_shape(shapes, axis):
    data, indices = shapes
    if len(indices) != len(data):
        raise shape_error("take_along_axis", f"indices {indices} and data {data} differ in rank")
    axis = normalize_axis("take_along_axis", axis, len(data))
    if any(i > d for a, (i, d) in enumerate(zip(indices, data, strict=True)) if a != axis):
        raise shape_error(
            "take_along_axis", f"indices {indices} exceed data {data} off axis {axis}"
        )
    return [tuple(indices)]


def _take_along_axis_dtype(dtypes, **_):
    if dtypes[1] not in ("int32", "int64"):
        raise shape_error("take_along_axis", f"indices must be int32 or int64, got {dtypes[1]}")
    return [dtypes[0]]


def _take_along_axis(data, indices, axis):
    axis %= data.ndim
    # Off the axis the output index is the data index (no broadcasting, as ONNX GatherElements).
    window = tuple(slice(None) if a == axis else slice(0, n) for a, n in enumerate(indices.shape))
    positions = np.where(indices < 0, indices + data.shape[axis], indices)
    return (np.take_along_axis(data[window], positions, axis=axis),)


register(
    OpDef(
        "take_along_axis",
        3,
        Pattern.INJECTIVE,
        ("data", "indices"),
        _take_along_axis_shape,
        _take_along_axis_dtype,
        _take_along_axis,
        (Attr("axis", "int", 0),),
        "out[..., i, ...] = data[..., indices[..., i, ...], ...] on axis; indices in [-n, n), "
        "of data's rank, no larger off the axis; the output has their shape",
    )
)


def _triangle(name, fn, keep):
    def shape_rule(shapes, k):
        if len(shapes[0]) < 2:
            raise shape_error(name, f"needs rank >= 2, got shape {shapes[0]}")
        return first_shape(shapes)

    return register(
        OpDef(
            name,
            3,
            Pattern.INJECTIVE,
            ("x",),
            shape_rule,
            first_dtype,
            lambda x, k: (fn(x, k),),
            (Attr("k", "int", 0, doc="diagonal offset: > 0 above the main one, < 0 below"),),
            f"x on the last two axes where column - row {keep} k, else 0 (numpy {name})",
        )
    )


_triangle("tril", np.tril, "<=")
_triangle("triu", np.triu, ">=")
