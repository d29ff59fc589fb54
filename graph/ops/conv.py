"""NCHW spatial ops: conv2d, conv2d_transpose, max/avg pooling, global pooling."""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..registry import Attr, OpDef, Pattern, register, shape_error
from .common import all_same_dtype, first_dtype, require_rank

_WINDOW_ATTRS = (
    Attr("strides", "ints", (1, 1)),
    Attr("padding", "ints", (0, 0, 0, 0), doc="(top, left, bottom, right)"),
    Attr("dilation", "ints", (1, 1)),
)


def _check_window(op, strides, padding, dilation):
    if len(strides) != 2 or len(dilation) != 2 or len(padding) != 4:
        raise shape_error(op, "strides and dilation need 2 values, padding 4 (t, l, b, r)")
    if min(strides) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise shape_error(op, "strides and dilation must be >= 1, padding >= 0")


def _window_out(op, size, kernel, stride, pad_begin, pad_end, dilation, ceil_mode=False):
    span = size + pad_begin + pad_end - dilation * (kernel - 1) - 1
    if span < 0:
        raise shape_error(op, f"window {kernel} (dilation {dilation}) exceeds padded size {size}")
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1  # the last window may not start in the end padding (as ONNX and PyTorch)
    return out


def _out_hw(op, hw, kernel, strides, padding, dilation, ceil_mode=False):
    return tuple(
        _window_out(
            op, hw[i], kernel[i], strides[i], padding[i], padding[i + 2], dilation[i], ceil_mode
        )
        for i in range(2)
    )


def _windows(x, kernel, strides, padding, dilation, out_hw, fill=0):
    """(N, C, OH, OW, KH, KW) view of the padded input; pads past the end with ``fill``."""
    pads = []
    for i in range(2):
        need = (out_hw[i] - 1) * strides[i] + (kernel[i] - 1) * dilation[i] + 1
        extra = max(0, need - (x.shape[2 + i] + padding[i] + padding[i + 2]))
        pads.append((padding[i], padding[i + 2] + extra))
    padded = np.pad(x, ((0, 0), (0, 0), *pads), constant_values=fill)
    extent = tuple((kernel[i] - 1) * dilation[i] + 1 for i in range(2))
    view = sliding_window_view(padded, extent, axis=(2, 3))
    view = view[:, :, :: strides[0], :: strides[1], :: dilation[0], :: dilation[1]]
    return view[:, :, : out_hw[0], : out_hw[1]]


def _conv2d_shape(shapes, strides, padding, dilation, groups):
    data, weight, *bias = shapes
    require_rank("conv2d", data, 4)
    require_rank("conv2d", weight, 4, "weight")
    _check_window("conv2d", strides, padding, dilation)
    if groups < 1 or data[1] % groups or weight[0] % groups or weight[1] * groups != data[1]:
        raise shape_error("conv2d", f"channels: data {data}, weight {weight}, groups {groups}")
    if bias and bias[0] != (weight[0],):
        raise shape_error("conv2d", f"bias {bias[0]} must be ({weight[0]},)")
    oh, ow = _out_hw("conv2d", data[2:], weight[2:], strides, padding, dilation)
    return [(data[0], weight[0], oh, ow)]


def _conv2d(data, weight, bias=None, *, strides, padding, dilation, groups):
    n = data.shape[0]
    o, cg, kh, kw = weight.shape
    oh, ow = _out_hw("conv2d", data.shape[2:], (kh, kw), strides, padding, dilation)
    win = _windows(data, (kh, kw), strides, padding, dilation, (oh, ow))
    win = win.reshape(n, groups, cg, oh, ow, kh, kw)
    wt = weight.reshape(groups, o // groups, cg, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", win, wt, optimize=True).reshape(n, o, oh, ow)
    return (out if bias is None else out + bias.reshape(1, -1, 1, 1),)


register(
    OpDef(
        "conv2d",
        2,
        Pattern.OUT_ELEMWISE_FUSABLE,
        ("data", "weight", "bias?"),
        _conv2d_shape,
        all_same_dtype("conv2d"),
        _conv2d,
        (*_WINDOW_ATTRS, Attr("groups", "int", 1)),
        "2-D convolution, NCHW data and OIHW weight; groups = channels gives depthwise",
    )
)


def _conv2d_transpose_shape(shapes, strides, padding, output_padding, dilation, groups):
    data, weight, *bias = shapes
    require_rank("conv2d_transpose", data, 4)
    require_rank("conv2d_transpose", weight, 4, "weight")
    _check_window("conv2d_transpose", strides, padding, dilation)
    if groups < 1 or data[1] != weight[0] or data[1] % groups:
        raise shape_error(
            "conv2d_transpose", f"channels: data {data}, weight {weight} (I, O/g, kh, kw)"
        )
    if len(output_padding) != 2 or any(
        not 0 <= p < max(s, d) for p, s, d in zip(output_padding, strides, dilation, strict=True)
    ):
        raise shape_error("conv2d_transpose", f"output_padding {output_padding} out of range")
    out_c = weight[1] * groups
    if bias and bias[0] != (out_c,):
        raise shape_error("conv2d_transpose", f"bias {bias[0]} must be ({out_c},)")
    hw = [
        (data[2 + i] - 1) * strides[i]
        + dilation[i] * (weight[2 + i] - 1)
        + 1
        + output_padding[i]
        - padding[i]
        - padding[i + 2]
        for i in range(2)
    ]
    if min(hw) < 1:
        raise shape_error("conv2d_transpose", f"padding leaves an empty output {tuple(hw)}")
    return [(data[0], out_c, *hw)]


def _conv2d_transpose(
    data, weight, bias=None, *, strides, padding, output_padding, dilation, groups
):
    n, c, h, w = data.shape
    _, og, kh, kw = weight.shape
    full = [
        (h - 1) * strides[0] + dilation[0] * (kh - 1) + 1 + output_padding[0],
        (w - 1) * strides[1] + dilation[1] * (kw - 1) + 1 + output_padding[1],
    ]
    out = np.zeros((n, groups, og, *full), dtype=np.result_type(data, weight))
    x = data.reshape(n, groups, c // groups, h, w)
    wt = weight.reshape(groups, c // groups, og, kh, kw)
    for i in range(kh):
        for j in range(kw):
            part = np.einsum("ngchw,gco->ngohw", x, wt[..., i, j], optimize=True)
            r, s = i * dilation[0], j * dilation[1]
            out[
                ...,
                r : r + (h - 1) * strides[0] + 1 : strides[0],
                s : s + (w - 1) * strides[1] + 1 : strides[1],
            ] += part
    out = out.reshape(n, groups * og, *full)
    out = out[:, :, padding[0] : full[0] - padding[2], padding[1] : full[1] - padding[3]]
    return (out if bias is None else out + bias.reshape(1, -1, 1, 1),)


register(
    OpDef(
        "conv2d_transpose",
        2,
        Pattern.OUT_ELEMWISE_FUSABLE,
        ("data", "weight", "bias?"),
        _conv2d_transpose_shape,
        all_same_dtype("conv2d_transpose"),
        _conv2d_transpose,
        (*_WINDOW_ATTRS, Attr("output_padding", "ints", (0, 0)), Attr("groups", "int", 1)),
        "transposed (fractionally strided) convolution; weight is (in, out / groups, kh, kw)",
    )
)

_POOL_ATTRS = (Attr("pool_size", "ints"), *_WINDOW_ATTRS, Attr("ceil_mode", "bool", False))


def _pool_shape(op):
    def rule(shapes, pool_size, strides, padding, dilation, ceil_mode, **_):
        data = shapes[0]
        require_rank(op, data, 4)
        _check_window(op, strides, padding, dilation)
        if len(pool_size) != 2 or min(pool_size) < 1:
            raise shape_error(op, f"pool_size {pool_size} must be 2 values >= 1")
        if any(padding[i] >= pool_size[i % 2] * dilation[i % 2] for i in range(4)):
            raise shape_error(op, f"padding {padding} must be smaller than the window")
        return [data[:2] + _out_hw(op, data[2:], pool_size, strides, padding, dilation, ceil_mode)]

    return rule


def _lowest(dtype):
    return np.iinfo(dtype).min if np.issubdtype(dtype, np.integer) else -np.inf


def _max_pool2d(x, pool_size, strides, padding, dilation, ceil_mode):
    out_hw = _out_hw("max_pool2d", x.shape[2:], pool_size, strides, padding, dilation, ceil_mode)
    win = _windows(x, pool_size, strides, padding, dilation, out_hw, fill=_lowest(x.dtype))
    return (win.max(axis=(4, 5)),)


def _avg_pool2d(x, pool_size, strides, padding, dilation, ceil_mode, count_include_pad):
    out_hw = _out_hw("avg_pool2d", x.shape[2:], pool_size, strides, padding, dilation, ceil_mode)
    total = _windows(x, pool_size, strides, padding, dilation, out_hw).sum(axis=(4, 5))
    # The divisor counts the taps inside the data, plus the explicit padding when asked;
    # never the overhang that ceil_mode adds past the padding.
    mask = np.ones((1, 1) + x.shape[2:], dtype=np.float64)
    if count_include_pad:
        mask = np.pad(
            mask,
            ((0, 0), (0, 0), (padding[0], padding[2]), (padding[1], padding[3])),
            constant_values=1,
        )
        padding = (0, 0, 0, 0)  # the mask now carries the padding as ones
    count = _windows(mask, pool_size, strides, padding, dilation, out_hw).sum(axis=(4, 5))
    return (total / count,)


register(
    OpDef(
        "max_pool2d",
        2,
        Pattern.OUT_ELEMWISE_FUSABLE,
        ("data",),
        _pool_shape("max_pool2d"),
        first_dtype,
        _max_pool2d,
        _POOL_ATTRS,
        "max over each window (padding never wins)",
    )
)
register(
    OpDef(
        "avg_pool2d",
        2,
        Pattern.OUT_ELEMWISE_FUSABLE,
        ("data",),
        _pool_shape("avg_pool2d"),
        first_dtype,
        _avg_pool2d,
        (*_POOL_ATTRS, Attr("count_include_pad", "bool", False)),
        "mean over each window; the divisor counts padding only with count_include_pad",
    )
)


def _global_shape(op):
    def rule(shapes):
        require_rank(op, shapes[0], 4)
        return [shapes[0][:2] + (1, 1)]

    return rule


register(
    OpDef(
        "global_avg_pool2d",
        2,
        Pattern.REDUCTION,
        ("data",),
        _global_shape("global_avg_pool2d"),
        first_dtype,
        lambda x: (x.mean(axis=(2, 3), keepdims=True),),
        (),
        "mean over H and W",
    )
)
register(
    OpDef(
        "global_max_pool2d",
        2,
        Pattern.REDUCTION,
        ("data",),
        _global_shape("global_max_pool2d"),
        first_dtype,
        lambda x: (x.max(axis=(2, 3), keepdims=True),),
        (),
        "max over H and W",
    )
)
