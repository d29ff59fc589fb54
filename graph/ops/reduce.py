"""Reductions: sum, mean, max, min, prod over axes; argmax, argmin along one axis; the cumsum
scan."""

import numpy as np

from ..registry import Attr, OpDef, Pattern, register, shape_error
from .common import first_dtype, normalize_axes, normalize_axis


def _reduce_shape(name):
    def rule(shapes, axes, keepdims):
        shape = shapes[0]
        axes = normalize_axes(name, axes, len(shape))
        if keepdims:
            return [tuple(1 if i in axes else d for i, d in enumerate(shape))]
        return [tuple(d for i, d in enumerate(shape) if i not in axes)]

    return rule


def _empty_identity(x, largest):
    """max/min of an empty set: the identity element (-inf/+inf, or the dtype's extreme)."""
    if x.dtype == np.bool_:
        return not largest
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        return info.min if largest else info.max
    return -np.inf if largest else np.inf


def _extreme(fn, largest):
    def reference(x, axis, keepdims):
        if x.size == 0:
            return fn(x, axis=axis, keepdims=keepdims, initial=_empty_identity(x, largest))
        return fn(x, axis=axis, keepdims=keepdims)

    return reference


_REDUCERS = {
    "sum": (np.sum, "sum of elements"),
    "mean": (np.mean, "arithmetic mean"),
    "max": (_extreme(np.max, True), "largest element (-inf for an empty set)"),
    "min": (_extreme(np.min, False), "smallest element (+inf for an empty set)"),
    "prod": (np.prod, "product of elements"),
}

for _name, (_fn, _doc) in _REDUCERS.items():
    register(
        OpDef(
            _name,
            4,
            Pattern.REDUCTION,
            ("x",),
            _reduce_shape(_name),
            first_dtype,
            lambda x, axes, keepdims, _fn=_fn: (
                _fn(x, axis=None if axes is None else tuple(axes), keepdims=keepdims),
            ),
            (
                Attr("axes", "ints", None, optional=True, doc="all axes when absent"),
                Attr("keepdims", "bool", False),
            ),
            _doc + " over axes",
        )
    )


def _arg_shape(name):
    def rule(shapes, axis, keepdims, select_last_index):
        shape = shapes[0]
        axis = normalize_axis(name, axis, len(shape))
        if shape[axis] == 0:
            raise shape_error(name, f"cannot take {name} of an empty axis")
        if keepdims:
            return [shape[:axis] + (1,) + shape[axis + 1 :]]
        return [shape[:axis] + shape[axis + 1 :]]

    return rule


def _arg(fn):
    def reference(x, axis, keepdims, select_last_index):
        if select_last_index:
            flipped = np.flip(x, axis)
            index = x.shape[axis] - 1 - fn(flipped, axis=axis, keepdims=keepdims)
        else:
            index = fn(x, axis=axis, keepdims=keepdims)
        return (index,)

    return reference


for _name, _fn in (("argmax", np.argmax), ("argmin", np.argmin)):
    register(
        OpDef(
            _name,
            4,
            Pattern.REDUCTION,
            ("x",),
            _arg_shape(_name),
            lambda dtypes, **_: ["int64"],
            _arg(_fn),
            (
                Attr("axis", "int", 0),
                Attr("keepdims", "bool", False),
                Attr(
                    "select_last_index",
                    "bool",
                    False,
                    doc="on ties, the last index instead of the first",
                ),
            ),
            f"index of the {'largest' if _name == 'argmax' else 'smallest'} element along axis",
        )
    )


def _cumsum_shape(shapes, axis, **_):
    normalize_axis("cumsum", axis, len(shapes[0]))
    return [shapes[0]]


def _cumsum_dtype(dtypes, **_):
    if dtypes[0] == "bool":
        raise shape_error("cumsum", "needs a numeric operand, got bool")
    return [dtypes[0]]


def _cumsum(x, axis, exclusive, reverse):
    axis = normalize_axis("cumsum", axis, x.ndim)
    if reverse:
        x = np.flip(x, axis)
    out = np.cumsum(x, axis=axis, dtype=x.dtype)  # sequential, in x's dtype: as the kernels
    if exclusive and x.shape[axis]:
        first = [slice(None)] * x.ndim
        first[axis] = slice(0, 1)
        rest = list(first)
        rest[axis] = slice(0, -1)
        out = np.concatenate([np.zeros_like(out[tuple(first)]), out[tuple(rest)]], axis=axis)
    return (np.flip(out, axis) if reverse else out,)


# A scan, not a reduction: each output element sums a computable set of inputs (a kernel
# loops over them), so cumsum fuses as an injective op.
register(
    OpDef(
        "cumsum",
        4,
        Pattern.INJECTIVE,
        ("x",),
        _cumsum_shape,
        _cumsum_dtype,
        _cumsum,
        (
            Attr("axis", "int", 0),
            Attr("exclusive", "bool", False, doc="leave each element out of its own sum"),
            Attr("reverse", "bool", False, doc="sum from the end of the axis"),
        ),
        "running sum along axis",
    )
)
