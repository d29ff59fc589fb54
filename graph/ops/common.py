"""Shared shape/dtype rules and family helpers used by the op declarations."""

from collections.abc import Sequence

import numpy as np

from ..registry import Shape, shape_error


def normalize_axis(op: str, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise shape_error(op, f"axis {axis} out of range for rank {rank}")
    return axis % rank


def normalize_axes(op: str, axes: Sequence[int] | None, rank: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(rank))
    out = tuple(sorted(normalize_axis(op, a, rank) for a in axes))
    if len(set(out)) != len(out):
        raise shape_error(op, f"repeated axis in {tuple(axes)}")
    return out


def broadcast(op: str, *shapes: Shape) -> Shape:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise shape_error(op, f"shapes {' and '.join(map(str, shapes))} do not broadcast") from None


def same_dtypes(op: str, dtypes: Sequence[str]) -> str:
    if len(set(dtypes)) > 1:
        raise shape_error(op, f"operands must share one dtype, got {', '.join(dtypes)}")
    return dtypes[0]


def first_shape(shapes, **_):
    return [shapes[0]]


def first_dtype(dtypes, **_):
    return [dtypes[0]]


def all_same_dtype(name):
    def rule(dtypes, **_):
        return [same_dtypes(name, dtypes)]

    return rule


def require_rank(op: str, shape: Shape, rank: int, what: str = "data") -> None:
    if len(shape) != rank:
        raise shape_error(op, f"{what} must have rank {rank}, got shape {shape}")


def require_float(op: str, dtype: str) -> None:
    if not (dtype.startswith("float") or dtype == "bfloat16"):
        raise shape_error(op, f"needs a floating-point operand, got {dtype}")
