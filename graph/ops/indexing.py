"""Injective ops that select by position: take_along_axis, gather_nd, scatter_nd, and the
triangle masks tril, triu."""

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


def _nd_shape(op, data, indices, batch_dims):
    """The depth k of an index row; checks the shapes gather_nd and scatter_nd share."""
    if not indices:
        raise shape_error(op, "indices must have rank >= 1")
    k = indices[-1]
    if batch_dims < 0 or batch_dims >= min(len(data), len(indices)):
        raise shape_error(op, f"batch_dims {batch_dims} out of range for {data} and {indices}")
    if batch_dims + k > len(data) or indices[:batch_dims] != data[:batch_dims]:
        raise shape_error(op, f"indices {indices} do not index data {data}")
    return k


def _index_dtype(op):
    def rule(dtypes, **_):
        if dtypes[1] != "int64":  # as ONNX's
            raise shape_error(op, f"indices must be int64, got {dtypes[1]}")
        if len(dtypes) > 2 and dtypes[2] != dtypes[0]:
            raise shape_error(op, f"updates are {dtypes[2]}, data {dtypes[0]}")
        return [dtypes[0]]

    return rule


def _gather_nd_shape(shapes, batch_dims):
    data, indices = shapes
    k = _nd_shape("gather_nd", data, indices, batch_dims)
    return [indices[:-1] + data[batch_dims + k :]]


def _gather_nd(data, indices, batch_dims):
    batch = tuple(np.indices(indices.shape[:-1], sparse=True)[:batch_dims])
    rows = tuple(np.moveaxis(indices, -1, 0))
    return (data[batch + rows],)


register(
    OpDef(
        "gather_nd",
        3,
        Pattern.INJECTIVE,
        ("data", "indices"),
        _gather_nd_shape,
        _index_dtype("gather_nd"),
        _gather_nd,
        (Attr("batch_dims", "int", 0, doc="leading axes data and indices share"),),
        "out[i] = data[batch..., *indices[i]]: each index row (the last axis of indices) picks "
        "a slice of data after its batch axes; indices in [-n, n)",
    )
)


def _scatter_nd_shape(shapes, reduction):
    data, indices, updates = shapes
    k = _nd_shape("scatter_nd", data, indices, 0)
    if updates != indices[:-1] + data[k:]:
        raise shape_error("scatter_nd", f"updates {updates} must be {indices[:-1] + data[k:]}")
    return [data]


_COMBINE = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter_nd(data, indices, updates, reduction):
    out = data.copy()
    for i in np.ndindex(indices.shape[:-1]):  # in order: the last of repeated rows wins
        row = tuple(indices[i])
        out[row] = updates[i] if reduction == "none" else _COMBINE[reduction](out[row], updates[i])
    return (out,)


register(
    OpDef(
        "scatter_nd",
        3,
        Pattern.INJECTIVE,
        ("data", "indices", "updates"),
        _scatter_nd_shape,
        _index_dtype("scatter_nd"),
        _scatter_nd,
        (Attr("reduction", "str", "none", choices=("none", "add", "mul", "max", "min")),),
        "data with updates[i] written (or added, multiplied, maxed, minned) at each index row "
        "indices[i], rows in order; indices in [-n, n)",
    )
)
