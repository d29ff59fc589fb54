"""ONNX Conv, ConvTranspose and pooling -> the core's 2-D NCHW ops.

1-D ops run as the 2-D op on an inserted height-1 axis (expand_dims + op + squeeze); 3-D ops
have no core counterpart and are reported as unsupported.
"""

from .convert_base import ConvertContext, Malformed, converts

_AUTO_PAD = {"auto_pad": ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")}


def _spatial_check(node, attrs):
    """Find 3-D (or higher) ops from their attributes before anything is converted, and
    attributes that disagree on the number of spatial axes."""
    keys = ("kernel_shape", "strides", "dilations", "output_padding")
    ranks = {k: len(attrs[k]) for k in keys if k in attrs}
    if "pads" in attrs:
        if len(attrs["pads"]) % 2:
            raise Malformed(f"pads {attrs['pads']} (an odd count: begins, then ends)")
        ranks["pads"] = len(attrs["pads"]) // 2
    if len(set(ranks.values())) > 1:
        given = ", ".join(f"{k} {list(attrs[k])}" for k in ranks)
        raise Malformed(f"attributes for different numbers of spatial axes ({given})")
    too_big = [r for r in ranks.values() if r > 2]
    return f"{too_big[0]}-D data" if too_big else None


def _spatial_rank(ctx: ConvertContext, x, weight=None) -> int:
    """The number of spatial axes of ``x`` (N, C, spatial...); a weight has the same rank."""
    rank = x.ndim - 2
    if rank < 1:
        raise ctx.error(
            f"input {x.shape} has rank {x.ndim}; {ctx.node.op_type} needs rank 3 or more "
            f"(N, C, then the spatial axes)"
        )
    if rank > 2:
        raise ctx.unsupported(f"{rank}-D data")
    if weight is not None and weight.ndim != x.ndim:
        raise ctx.error(
            f"weight {weight.shape} has rank {weight.ndim}; it needs the input's rank {x.ndim}"
        )
    return rank


def _per_axis(ctx: ConvertContext, key: str, rank: int, default: int, count: int = 1) -> list:
    """An ints attribute with ``count`` values per spatial axis (pads: 2, begins then ends)."""
    values = list(ctx.attr(key, [default] * rank * count))
    if len(values) != rank * count:
        raise ctx.error(
            f"{key} {values} has {len(values)} value(s); {rank}-D data needs {rank * count}"
        )
    return values


def _conv_kernel(ctx: ConvertContext, weight) -> tuple:
    kernel = weight.shape[2:]
    given = ctx.attr("kernel_shape", None)
    if given is not None and tuple(given) != tuple(kernel):
        raise ctx.error(f"kernel_shape {list(given)} differs from the weight's {weight.shape}")
    return kernel


def _auto_pads(ctx: ConvertContext, sizes, kernel, strides, dilations):
    """(begins, ends) from auto_pad or the pads attribute, as ONNX's reference computes them."""
    rank = len(sizes)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins, ends
    if auto_pad == "VALID":
        return [0] * rank, [0] * rank
    pads = _per_axis(ctx, "pads", rank, 0, count=2)
    return pads[:rank], pads[rank:]


def _window_attrs(ctx: ConvertContext, x, kernel):
    rank = len(kernel)
    strides = _per_axis(ctx, "strides", rank, 1)
    dilations = _per_axis(ctx, "dilations", rank, 1)
    begins, ends = _auto_pads(ctx, x.shape[2:], kernel, strides, dilations)
    return strides, dilations, begins, ends


def _as_2d(ctx: ConvertContext, x):
    return ctx.expand_dims(x, axes=(2,))


def _window_2d(strides, dilations, begins, ends):
    """Core attributes; a 1-D window gains a height-1 axis in front."""
    if len(strides) == 1:
        strides, dilations, begins, ends = [1, *strides], [1, *dilations], [0, *begins], [0, *ends]
    return {"strides": strides, "dilation": dilations, "padding": (*begins, *ends)}


@converts("Conv", check=_spatial_check, choices=_AUTO_PAD)
def conv(ctx: ConvertContext):
    x, weight = ctx.input(0), ctx.input(1)
    rank = _spatial_rank(ctx, x, weight)
    bias = [ctx.input(2)] if ctx.has_input(2) else []
    window = _window_2d(*_window_attrs(ctx, x, _conv_kernel(ctx, weight)))
    if rank == 1:
        x, weight = _as_2d(ctx, x), _as_2d(ctx, weight)
    y = ctx.conv2d(x, weight, *bias, groups=ctx.attr("group", 1), **window)
    return ctx.squeeze(y, axes=(2,)) if rank == 1 else y


@converts("ConvTranspose", check=_spatial_check, choices=_AUTO_PAD)
def conv_transpose(ctx: ConvertContext):
    x, weight = ctx.input(0), ctx.input(1)
    rank = _spatial_rank(ctx, x, weight)
    bias = [ctx.input(2)] if ctx.has_input(2) else []
    kernel = _conv_kernel(ctx, weight)
    strides = _per_axis(ctx, "strides", rank, 1)
    dilations = _per_axis(ctx, "dilations", rank, 1)
    extra = _per_axis(ctx, "output_padding", rank, 0)
    begins, ends = _transpose_pads(ctx, x.shape[2:], kernel, strides, dilations, extra)
    # An output larger than the full result (negative end padding) is output padding.
    extra = [p + max(0, -e) for p, e in zip(extra, ends, strict=True)]
    ends = [max(0, e) for e in ends]
    if min(begins) < 0:
        raise ctx.error(f"output_shape {ctx.attr('output_shape')} needs negative padding")
    window = _window_2d(strides, dilations, begins, ends)
    if rank == 1:
        x, weight, extra = _as_2d(ctx, x), _as_2d(ctx, weight), [0, *extra]
    y = ctx.conv2d_transpose(
        x, weight, *bias, groups=ctx.attr("group", 1), output_padding=extra, **window
    )
    return ctx.squeeze(y, axes=(2,)) if rank == 1 else y


def _transpose_pads(ctx: ConvertContext, sizes, kernel, strides, dilations, extra):
    """ConvTranspose padding: from output_shape or SAME auto_pad the total is split as ONNX
    specifies; otherwise it is the pads attribute."""
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    target = ctx.attr("output_shape", None)
    if target is None and auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return _auto_pads(ctx, sizes, kernel, strides, dilations)
    if target is None:
        target = [n * s for n, s in zip(sizes, strides, strict=True)]
    target = list(target)[-len(sizes) :]
    begins, ends = [], []
    for n, k, s, d, p, out in zip(sizes, kernel, strides, dilations, extra, target, strict=True):
        total = s * (n - 1) + p + (k - 1) * d + 1 - out
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins, ends


def _pool_check(node, attrs):
    if len(node.output) > 1 and node.output[1]:
        return "the Indices output"
    return _spatial_check(node, attrs)


@converts("MaxPool", "AveragePool", check=_pool_check, choices=_AUTO_PAD)
def pool(ctx: ConvertContext):
    x = ctx.input(0)
    rank = _spatial_rank(ctx, x)
    kernel = _per_axis(ctx, "kernel_shape", rank, 0)
    attrs = _window_2d(*_window_attrs(ctx, x, kernel))
    attrs["pool_size"] = [1, *kernel] if rank == 1 else kernel
    attrs["ceil_mode"] = bool(ctx.attr("ceil_mode", 0))
    op = "max_pool2d"
    if ctx.node.op_type == "AveragePool":
        op, attrs["count_include_pad"] = "avg_pool2d", bool(ctx.attr("count_include_pad", 0))
    y = ctx.op(op, _as_2d(ctx, x) if rank == 1 else x, **attrs)
    return ctx.squeeze(y, axes=(2,)) if rank == 1 else y


@converts("GlobalAveragePool", "GlobalMaxPool")
def global_pool(ctx: ConvertContext):
    x = ctx.input(0)
    average = ctx.node.op_type == "GlobalAveragePool"
    if x.ndim < 3:
        raise ctx.error(f"input {x.shape} has rank {x.ndim}; it needs rank 3 or more (N, C, ...)")
    if x.ndim == 4:
        return ctx.op("global_avg_pool2d" if average else "global_max_pool2d", x)
    # Any other rank is a plain reduction over the spatial axes.
    return ctx.op("mean" if average else "max", x, axes=tuple(range(2, x.ndim)), keepdims=True)
