"""resize2d: nearest, linear and cubic resampling of the last two axes, with ONNX coordinates.

The reference builds one (out, in) interpolation matrix per axis and applies both: every
method and coordinate mode is a choice of taps and weights, so one code path serves them all.
"""

import math

import numpy as np

from ..registry import Attr, OpDef, Pattern, register, shape_error
from .common import first_dtype

_TAPS = {"nearest": 2, "linear": 2, "cubic": 4}


def _source_coordinate(x, in_size, out_size, scale, mode, roi):
    # ONNX measures the resized length as scale * in_size, which is fractional when the
    # output size was floored from a scale; only half_pixel_symmetric uses the integer size.
    length = scale * in_size
    length = out_size if math.isclose(length, out_size) else length  # size / in * in, exactly
    if mode == "align_corners":
        return 0.0 if length == 1 else x * (in_size - 1) / (length - 1)
    if mode == "asymmetric":
        return x / scale
    if mode == "pytorch_half_pixel":
        return -0.5 if length == 1 else (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = in_size / 2 * (1 - out_size / length)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "tf_crop_and_resize":
        start, end = roi
        if length == 1:
            return (end - start) * (in_size - 1) / 2 + start * (in_size - 1)
        return x * (end - start) * (in_size - 1) / (length - 1) + start * (in_size - 1)
    return (x + 0.5) / scale - 0.5  # half_pixel


def _weights(ratio, method, rounding, alpha):
    if method == "nearest":
        if ratio == 1:
            return [0.0, 1.0]
        take_right = {
            "round_prefer_floor": ratio > 0.5,
            "round_prefer_ceil": ratio >= 0.5,
            "floor": False,
            "ceil": True,
        }[rounding]
        return [float(not take_right), float(take_right)]
    if method == "linear":
        return [1 - ratio, ratio]
    a = alpha
    r, q = ratio, 1 - ratio
    return [
        ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
        ((a + 2) * r - (a + 3)) * r * r + 1,
        ((a + 2) * q - (a + 3)) * q * q + 1,
        ((a * (q + 1) - 5 * a) * (q + 1) + 8 * a) * (q + 1) - 4 * a,
    ]


def interpolation_matrix(
    in_size, out_size, scale, method, mode, rounding, alpha, exclude_outside, roi=(0.0, 1.0)
):
    """(out, in) weights, and a mask of the output positions that fall outside the roi."""
    matrix = np.zeros((out_size, in_size))
    outside = np.zeros(out_size, dtype=bool)
    taps = _TAPS[method]
    for x in range(out_size):
        src = _source_coordinate(x, in_size, out_size, scale, mode, roi)
        if mode == "tf_crop_and_resize" and not 0 <= src <= in_size - 1:
            outside[x] = True
            continue
        # Taps sit left of src first: ratio lies in (0, 1], as ONNX's reference picks them.
        base = math.ceil(src) - 1
        ratio = src - math.floor(src) if src != math.floor(src) else 1.0
        weights = np.array(_weights(ratio, method, rounding, alpha))
        index = np.arange(base - taps // 2 + 1, base + taps // 2 + 1)
        if exclude_outside:
            weights = np.where((index < 0) | (index >= in_size), 0.0, weights)
            weights /= weights.sum()
        np.add.at(matrix[x], np.clip(index, 0, in_size - 1), weights)
    return matrix, outside


def _resize_scale(shape, size, scale):
    return scale if scale is not None else tuple(size[i] / shape[-2 + i] for i in range(2))


def _resize_shape(shapes, size, scale, method, roi, **_):
    data = shapes[0]
    if len(data) < 2 or len(size) != 2 or min(size) < 1 or min(data[-2:]) < 1:
        raise shape_error("resize2d", f"cannot resize {data} to {size}")
    if scale is not None and (len(scale) != 2 or min(scale) <= 0):
        raise shape_error("resize2d", f"scale {scale} must be two positive values")
    if roi is not None and len(roi) != 4:
        raise shape_error("resize2d", "roi needs 4 values (start_h, start_w, end_h, end_w)")
    return [data[:-2] + tuple(size)]


def _resize2d(
    x,
    size,
    scale,
    method,
    coordinate_transformation_mode,
    rounding_method,
    cubic_alpha,
    exclude_outside,
    roi,
    extrapolation_value,
):
    scale = _resize_scale(x.shape, size, scale)
    roi = roi or (0.0, 0.0, 1.0, 1.0)
    (mh, out_h), (mw, out_w) = (
        interpolation_matrix(
            x.shape[-2 + i],
            size[i],
            scale[i],
            method,
            coordinate_transformation_mode,
            rounding_method,
            cubic_alpha,
            exclude_outside,
            (roi[i], roi[i + 2]),
        )
        for i in range(2)
    )
    out = np.einsum("oh,...hw,pw->...op", mh, x.astype(np.float64), mw)
    out[..., out_h, :] = extrapolation_value
    out[..., :, out_w] = extrapolation_value
    return (out,)


register(
    OpDef(
        "resize2d",
        2,
        Pattern.INJECTIVE,
        ("data",),
        _resize_shape,
        first_dtype,
        _resize2d,
        (
            Attr("size", "ints", doc="(out_h, out_w)"),
            Attr(
                "scale",
                "floats",
                None,
                optional=True,
                doc="coordinate scale; size / in when absent",
            ),
            Attr("method", "str", "nearest", choices=tuple(_TAPS)),
            Attr(
                "coordinate_transformation_mode",
                "str",
                "half_pixel",
                choices=(
                    "half_pixel",
                    "half_pixel_symmetric",
                    "pytorch_half_pixel",
                    "align_corners",
                    "asymmetric",
                    "tf_crop_and_resize",
                ),
            ),
            Attr(
                "rounding_method",
                "str",
                "round_prefer_floor",
                choices=("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"),
            ),
            Attr("cubic_alpha", "float", -0.75),
            Attr("exclude_outside", "bool", False),
            Attr(
                "roi", "floats", None, optional=True, doc="tf_crop_and_resize box (h0, w0, h1, w1)"
            ),
            Attr("extrapolation_value", "float", 0.0),
        ),
        "resample the last two axes (ONNX Resize semantics, without antialiasing)",
    )
)
