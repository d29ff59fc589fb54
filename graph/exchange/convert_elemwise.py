"""ONNX elementwise ops -> core unary/binary ops; activations the core set lacks are composed."""

import math

import onnx

from ..dtypes import is_float
from .convert_base import ConvertContext, Malformed, converts, onnx_dtype

_BINARY = {
    "Sub": "subtract",
    "Mul": "multiply",
    "Div": "divide",
    "Pow": "power",
    "Equal": "equal",
    "Greater": "greater",
    "Less": "less",
    "GreaterOrEqual": "greater_equal",
    "LessOrEqual": "less_equal",
    "And": "logical_and",
    "Or": "logical_or",
    "Xor": "logical_xor",
}
_UNARY = {
    "Neg": "negative",
    "Abs": "abs",
    "Exp": "exp",
    "Log": "log",
    "Sqrt": "sqrt",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Erf": "erf",
    "Relu": "relu",
    "Not": "logical_not",
    "IsNaN": "isnan",
}
_VARIADIC = {"Max": "maximum", "Min": "minimum", "Sum": "add"}


@converts(*_BINARY)
def binary(ctx: ConvertContext):
    return ctx.op(_BINARY[ctx.node.op_type], ctx.input(0), ctx.input(1))


@converts(*_UNARY)
def unary(ctx: ConvertContext):
    return ctx.op(_UNARY[ctx.node.op_type], ctx.input(0))


@converts("Add")
def add(ctx: ConvertContext):
    a, b = ctx.input(0), ctx.input(1)
    return _biased_dense(ctx, a, b) or _biased_dense(ctx, b, a) or ctx.add(a, b)


def _biased_dense(ctx: ConvertContext, product, bias):
    # add(dense(x, W), constant b[N]) -> dense(x, W, b): how the exporter writes a biased dense.
    node = ctx.producer(product)
    units = product.shape[-1:]
    if (
        node is None
        or node.op != "dense"
        or len(node.inputs) != 2
        or not ctx.single_use(product)
        or not ctx.is_constant(bias)
        or bias.dtype != product.dtype
        or bias.shape not in (units, (1,), ())
    ):
        return None
    bias = ctx.broadcast_to(ctx.reshape(bias, newshape=(-1,)), shape=units)  # folds to [N]
    return ctx.dense(*(ctx.core_value(n) for n in node.inputs), bias)


def _mod_check(node, attrs):
    if attrs.get("fmod", 0) not in (0, 1):
        raise Malformed(f"fmod={attrs['fmod']} (ONNX allows 0 or 1)")
    return None


@converts("Mod", check=_mod_check)
def mod(ctx: ConvertContext):
    a, b = ctx.input(0), ctx.input(1)
    if ctx.attr("fmod", 0):
        return ctx.fmod(a, b)
    if is_float(a.dtype) and ctx.opset < 28:
        raise ctx.error(f"fmod=0 on {a.dtype} needs opset 28 (Mod-13 takes fmod=1 for floats)")
    return ctx.mod(a, b)


@converts("Reciprocal")
def reciprocal(ctx: ConvertContext):
    x = ctx.input(0)
    node = ctx.producer(x)
    if node is not None and node.op == "sqrt" and ctx.single_use(x):
        # Reciprocal(Sqrt(x)) -> rsqrt(x): how the exporter writes rsqrt.
        return ctx.rsqrt(ctx.core_value(node.inputs[0]))
    return ctx.divide(ctx.const(1, x.dtype), x)


@converts(*_VARIADIC)
def variadic(ctx: ConvertContext):
    result, *rest = ctx.inputs_present()
    for value in rest:
        result = ctx.op(_VARIADIC[ctx.node.op_type], result, value)
    return result


@converts("LeakyRelu")
def leaky_relu(ctx: ConvertContext):
    return ctx.leaky_relu(ctx.input(0), alpha=ctx.attr("alpha", 0.01))


@converts("HardSigmoid")
def hard_sigmoid(ctx: ConvertContext):
    x = ctx.input(0)
    return ctx.clip(x * ctx.attr("alpha", 0.2) + ctx.attr("beta", 0.5), a_min=0.0, a_max=1.0)


@converts("HardSwish")
def hard_swish(ctx: ConvertContext):
    x = ctx.input(0)
    return x * ctx.clip(x * (1 / 6) + 0.5, a_min=0.0, a_max=1.0)


@converts("Gelu", choices={"approximate": ("none", "tanh")})
def gelu(ctx: ConvertContext):
    x = ctx.input(0)
    if ctx.attr("approximate", "none") == "tanh":
        inner = (x + x * x * x * 0.044715) * math.sqrt(2 / math.pi)
        return x * 0.5 * (ctx.tanh(inner) + 1.0)
    return x * 0.5 * (ctx.erf(x * (1 / math.sqrt(2))) + 1.0)


@converts("Clip")
def clip(ctx: ConvertContext):
    x = ctx.input(0)
    low, high = (ctx.input(i) if ctx.has_input(i) else None for i in (1, 2))
    if all(b is None or ctx.is_constant(b) for b in (low, high)):
        return ctx.clip(x, a_min=_scalar(ctx, low), a_max=_scalar(ctx, high))
    # A bound computed at run time cannot be an attribute: use maximum/minimum instead.
    if low is not None:
        x = ctx.maximum(x, low)
    return x if high is None else ctx.minimum(x, high)


def _scalar(ctx: ConvertContext, value):
    if value is None:
        return None
    array = ctx.consts[value.name]
    if array.size != 1:
        raise ctx.error(f"a clip bound must be a scalar, got shape {array.shape}")
    return float(array.reshape(()))


def _cast_check(node, attrs):
    to = attrs.get("to", 0)
    if onnx_dtype(to) in (None, "float8_e8m0fnu"):
        # The core cast rounds e8m0 to nearest and overflows to NaN; ONNX rounds per
        # round_mode (default up) and saturates.
        return f"to={onnx.TensorProto.DataType.Name(to)}"
    return None


@converts("Cast", check=_cast_check)
def cast(ctx: ConvertContext):
    return _cast(ctx, ctx.input(0), onnx_dtype(ctx.attr("to")))


@converts("CastLike")
def cast_like(ctx: ConvertContext):
    return _cast(ctx, ctx.input(0), ctx.input(1).dtype)


def _cast(ctx: ConvertContext, x, dtype: str):
    if dtype == "float8_e8m0fnu":
        raise ctx.unsupported("to=FLOAT8E8M0")  # see _cast_check
    if x.dtype == dtype:
        return x
    return ctx.cast(x, dtype=dtype, saturate=bool(ctx.attr("saturate", 1)))


@converts("Where")
def where(ctx: ConvertContext):
    return ctx.where(ctx.input(0), ctx.input(1), ctx.input(2))
