"""ONNX reductions -> core sum/mean/max/min/prod and argmax/argmin."""

from .convert_base import ConvertContext, converts

_REDUCE = {
    "ReduceSum": "sum",
    "ReduceMean": "mean",
    "ReduceMax": "max",
    "ReduceMin": "min",
    "ReduceProd": "prod",
}


@converts(*_REDUCE, constant_inputs=(1,))
def reduce(ctx: ConvertContext):
    x = ctx.input(0)
    # Before opset 18 (13 for ReduceSum) the axes are an attribute, later an input.
    axes = ctx.attr("axes", None)
    if axes is None:
        axes = ctx.optional_constant(1, "axes")
    axes = None if axes is None else [int(a) for a in axes]
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return x
        axes = None  # no axes: reduce them all
    return ctx.op(_REDUCE[ctx.node.op_type], x, axes=axes, keepdims=bool(ctx.attr("keepdims", 1)))


@converts("ArgMax", "ArgMin")
def arg_reduce(ctx: ConvertContext):
    return ctx.op(
        ctx.node.op_type.lower(),
        ctx.input(0),
        axis=ctx.attr("axis", 0),
        keepdims=bool(ctx.attr("keepdims", 1)),
        select_last_index=bool(ctx.attr("select_last_index", 0)),
    )
