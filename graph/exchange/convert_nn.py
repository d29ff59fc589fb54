"""ONNX dense algebra and normalisation: MatMul, Gemm, Softmax, BatchNorm, LayerNorm, Dropout."""

import numpy as np

from .convert_base import ConvertContext, converts, onnx_dtype


@converts("MatMul")
def matmul(ctx: ConvertContext):
    a, b = ctx.input(0), ctx.input(1)
    if ctx.is_constant(b) and b.ndim == 2 and not ctx.is_constant(a):
        # MatMul(x, constant W[K, N]) -> dense(x, W.T): dense is the op kernels are tuned for,
        # and the exporter writes dense this way.
        weight = np.ascontiguousarray(ctx.consts[b.name].T)
        return ctx.dense(a, ctx.const(weight, stem="weight"))
    return ctx.matmul(a, b)


@converts("Gemm")
def gemm(ctx: ConvertContext):
    a, b = ctx.input(0), ctx.input(1)
    if a.ndim != 2 or b.ndim != 2:  # dense would take any rank, and compute something else
        raise ctx.error(f"A {a.shape} and B {b.shape}: Gemm needs rank 2 for both")
    if ctx.attr("transA", 0):
        a = ctx.transpose(a, axes=(1, 0))
    # dense wants its weight as (units, in); transposes and alpha fold into a constant B.
    weight = b if ctx.attr("transB", 0) else ctx.transpose(b, axes=(1, 0))
    alpha = ctx.attr("alpha", 1.0)
    if alpha != 1.0:
        weight = weight * alpha
    if not ctx.has_input(2):
        return ctx.dense(a, weight)
    bias, units = ctx.input(2), weight.shape[0]
    rows = a.shape[0]
    result = (rows, units)[2 - bias.ndim :] if bias.ndim <= 2 else ()
    if bias.ndim > 2 or any(c not in (1, n) for c, n in zip(bias.shape, result, strict=True)):
        raise ctx.error(f"C {bias.shape} does not broadcast to the result ({rows}, {units})")
    beta = ctx.attr("beta", 1.0)
    if beta != 1.0:
        bias = bias * beta
    if ctx.is_constant(bias) and bias.shape in ((), (1,), (1, units)):
        bias = ctx.broadcast_to(ctx.reshape(bias, newshape=(-1,)), shape=(units,))
    if bias.shape == (units,):
        return ctx.dense(a, weight, bias)
    return ctx.add(ctx.dense(a, weight), bias)  # a (M, N) or (M, 1) bias is no dense bias


@converts("Softmax", "LogSoftmax")
def softmax(ctx: ConvertContext):
    op = "softmax" if ctx.node.op_type == "Softmax" else "log_softmax"
    return ctx.op(op, ctx.input(0), axis=ctx.attr("axis", -1))


@converts("BatchNormalization")
def batch_norm(ctx: ConvertContext):
    x = ctx.input(0)
    scale, bias, mean, var = (_as(ctx, ctx.input(i), x.dtype) for i in range(1, 5))
    epsilon = ctx.attr("epsilon", 1e-5)
    if not ctx.attr("training_mode", 0):
        return ctx.batch_norm(x, scale, bias, mean, var, axis=1, epsilon=epsilon)
    # Training mode normalises with the batch statistics and updates the running ones.
    axes = (0, *range(2, x.ndim))
    batch_mean = ctx.mean(x, axes=axes)
    centered = x - ctx.mean(x, axes=axes, keepdims=True)
    batch_var = ctx.mean(centered * centered, axes=axes)
    momentum = ctx.attr("momentum", 0.9)
    y = ctx.batch_norm(x, scale, bias, batch_mean, batch_var, axis=1, epsilon=epsilon)
    return (
        y,
        mean * momentum + batch_mean * (1 - momentum),
        var * momentum + batch_var * (1 - momentum),
    )


def _as(ctx: ConvertContext, value, dtype: str):
    return value if value.dtype == dtype else ctx.cast(value, dtype=dtype)


@converts("LayerNormalization")
def layer_norm(ctx: ConvertContext):
    x = ctx.input(0)
    axis, epsilon = ctx.attr("axis", -1), ctx.attr("epsilon", 1e-5)
    extra = [ctx.input(2)] if ctx.has_input(2) else []
    y = ctx.layer_norm(x, ctx.input(1), *extra, axis=axis, epsilon=epsilon)
    if not (ctx.wants_output(1) or ctx.wants_output(2)):
        return y
    # The Mean and InvStdDev outputs come from core reductions in the stash type.
    wide = _as(ctx, x, onnx_dtype(ctx.attr("stash_type", 1)))
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = ctx.mean(wide, axes=axes, keepdims=True)
    centered = wide - mean
    inv_std = ctx.rsqrt(ctx.mean(centered * centered, axes=axes, keepdims=True) + epsilon)
    return y, mean, inv_std


@converts("Dropout", constant_inputs=(1, 2))
def dropout(ctx: ConvertContext):
    x = ctx.input(0)
    training = ctx.optional_constant(2, "training_mode")
    ratio = ctx.optional_constant(1, "ratio")
    ratio = 0.5 if ratio is None else float(ratio)
    if training is not None and bool(training) and ratio != 0.0:
        raise ctx.unsupported("training_mode=True and ratio > 0 (random dropout)")
    # Inference (or ratio 0) dropout is the identity; its mask keeps everything.
    mask = ctx.const(np.ones(x.shape, dtype=bool), stem="mask") if ctx.wants_output(1) else None
    return x, mask
