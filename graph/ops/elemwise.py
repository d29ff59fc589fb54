"""Elementwise and broadcasting ops: the unary and binary families (arithmetic, comparisons,
logic), cast, clip, where."""

import numpy as np
import scipy.special

from ..dtypes import SATURATING_DTYPES, is_float, to_numpy
from ..registry import Attr, OpDef, Pattern, register, shape_error
from .common import broadcast, first_shape, same_dtypes


def unary(name, fn, doc, attrs=(), level=1, float_only=False, bool_only=False, out_dtype=None):
    def dtype_rule(dtypes, **_):
        if float_only and not is_float(dtypes[0]):
            raise shape_error(name, f"needs a floating-point operand, got {dtypes[0]}")
        if bool_only:
            _require_bool(name, dtypes)
        return [out_dtype or dtypes[0]]

    return register(
        OpDef(
            name,
            level,
            Pattern.ELEMWISE,
            ("x",),
            first_shape,
            dtype_rule,
            lambda x, **a: (fn(x, **a),),
            attrs,
            doc,
        )
    )


def binary(name, fn, doc, out_dtype=None, level=1, bool_only=False, numbers_only=False):
    def shape_rule(shapes, **_):
        return [broadcast(name, *shapes)]

    def dtype_rule(dtypes, **_):
        if bool_only:
            _require_bool(name, dtypes)
        if numbers_only and "bool" in dtypes:
            raise shape_error(name, "needs numeric operands, got bool")
        dtype = same_dtypes(name, dtypes)
        return [out_dtype or dtype]

    return register(
        OpDef(
            name,
            level,
            Pattern.BROADCAST,
            ("a", "b"),
            shape_rule,
            dtype_rule,
            lambda a, b: (fn(a, b),),
            (),
            doc,
        )
    )


def _require_bool(name, dtypes):
    if any(d != "bool" for d in dtypes):
        raise shape_error(name, f"needs bool operands, got {', '.join(dtypes)}")


def _divide(a, b):
    """C-style division: integers truncate toward zero (as ONNX Div and every device kernel)."""
    if np.issubdtype(a.dtype, np.integer):
        quotient = a // np.where(b == 0, 1, b)
        inexact = (a % np.where(b == 0, 1, b) != 0) & ((a < 0) != (b < 0))
        return np.where(b == 0, 0, quotient + inexact.astype(a.dtype))
    return a / b


def _power(x, y):
    if np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer) and (y >= 0).all():
        return np.power(x, y.astype(x.dtype))  # exact for large integers
    return np.power(x.astype(np.float64), y.astype(np.float64))


binary("add", np.add, "a + b")
binary("subtract", np.subtract, "a - b")
binary("multiply", np.multiply, "a * b")
binary("divide", _divide, "a / b; integer division truncates toward zero")
binary("maximum", np.maximum, "elementwise max (NaN propagates)")
binary("minimum", np.minimum, "elementwise min (NaN propagates)")
binary("greater", np.greater, "a > b", out_dtype="bool")
binary("less", np.less, "a < b", out_dtype="bool")
binary("equal", np.equal, "a == b", out_dtype="bool")
binary("mod", np.mod, "remainder with the sign of b (numpy mod, Python %)", numbers_only=True)
binary("fmod", np.fmod, "remainder with the sign of a (C fmod)", numbers_only=True)
binary("greater_equal", np.greater_equal, "a >= b", out_dtype="bool")
binary("less_equal", np.less_equal, "a <= b", out_dtype="bool")
binary("logical_and", np.logical_and, "a and b (bool)", bool_only=True)
binary("logical_or", np.logical_or, "a or b (bool)", bool_only=True)
binary("logical_xor", np.logical_xor, "a xor b (bool)", bool_only=True)


def _power_dtype(dtypes, **_):
    return [dtypes[0]]  # the base's dtype, as ONNX Pow: the exponent may be of another type


register(
    OpDef(
        "power",
        1,
        Pattern.BROADCAST,
        ("x", "y"),
        lambda s, **_: [broadcast("power", *s)],
        _power_dtype,
        lambda x, y: (_power(x, y),),
        (),
        "x ** y, in the dtype of x",
    )
)

unary("negative", np.negative, "-x")
unary("abs", np.abs, "|x|")
unary("exp", np.exp, "e ** x", float_only=True)
unary("log", np.log, "natural logarithm", float_only=True)
unary("sqrt", np.sqrt, "square root", float_only=True)
unary("rsqrt", lambda x: 1 / np.sqrt(x), "1 / sqrt(x)", float_only=True)
unary("tanh", np.tanh, "hyperbolic tangent", float_only=True)
unary("sigmoid", scipy.special.expit, "1 / (1 + exp(-x))", float_only=True)
unary("erf", scipy.special.erf, "Gauss error function", float_only=True)
unary("isnan", np.isnan, "x is NaN", float_only=True, out_dtype="bool")
unary("logical_not", np.logical_not, "not x (bool)", bool_only=True)
unary("relu", lambda x: np.maximum(x, 0), "max(x, 0)")
unary(
    "leaky_relu",
    lambda x, alpha: np.where(x >= 0, x, x * alpha),
    "x if x >= 0 else alpha * x",
    attrs=(Attr("alpha", "float", 0.01),),
    float_only=True,
)


def _clip(x, a_min, a_max):
    lo = -np.inf if a_min is None else a_min
    hi = np.inf if a_max is None else a_max
    return np.minimum(np.maximum(x, lo), hi)  # a_min > a_max gives a_max, as numpy and ONNX


unary(
    "clip",
    _clip,
    "min(max(x, a_min), a_max); an absent bound does not clip",
    attrs=(
        Attr("a_min", "float", None, optional=True),
        Attr("a_max", "float", None, optional=True),
    ),
)


def _cast(x, dtype, saturate):
    target = to_numpy(dtype)
    if saturate and dtype in SATURATING_DTYPES and is_float(x.dtype.name):
        info = _finite_range(dtype)
        wide = x.astype(np.float32)
        x = np.where(np.isinf(wide), np.sign(wide) * info, np.clip(wide, -info, info))
        x = np.where(np.isnan(wide), wide, x)
    return x.astype(target)


def _finite_range(dtype):
    import ml_dtypes

    return float(ml_dtypes.finfo(to_numpy(dtype)).max)


register(
    OpDef(
        "cast",
        1,
        Pattern.ELEMWISE,
        ("x",),
        first_shape,
        lambda dtypes, dtype, saturate: [dtype],
        lambda x, dtype, saturate: (_cast(x, dtype, saturate),),
        (
            Attr("dtype", "dtype"),
            Attr("saturate", "bool", True, doc="float8/float4 targets clip to their finite range"),
        ),
        "convert x to dtype (round to nearest even; float -> int truncates)",
    )
)


def _where_dtype(dtypes, **_):
    if dtypes[0] != "bool":
        raise shape_error("where", f"condition must be bool, got {dtypes[0]}")
    return [same_dtypes("where", dtypes[1:])]


register(
    OpDef(
        "where",
        1,
        Pattern.BROADCAST,
        ("condition", "x", "y"),
        lambda s, **_: [broadcast("where", *s)],
        _where_dtype,
        lambda c, x, y: (np.where(c, x, y),),
        (),
        "x where condition else y (broadcasting)",
    )
)
