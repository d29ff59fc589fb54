"""ONNX Resize -> core resize2d, which resamples the last two axes with ONNX's coordinates."""

from .convert_base import ConvertContext, converts


def _resize_check(node, attrs):
    if attrs.get("antialias", 0):
        return "antialias=1"
    return None


# String attributes resize2d does not check itself.
_CHOICES = {"keep_aspect_ratio_policy": ("stretch", "not_larger", "not_smaller")}


@converts("Resize", check=_resize_check, constant_inputs=(1, 2, 3), choices=_CHOICES)
def resize(ctx: ConvertContext):
    x = ctx.input(0)
    rank = x.ndim
    axes = [int(a) % rank for a in ctx.attr("axes", range(rank))]
    scales = _given(ctx.optional_constant(2, "scales"))
    sizes = _given(ctx.optional_constant(3, "sizes"))
    if sizes is not None:
        size, scale = _from_sizes(ctx, x.shape, axes, sizes)
    elif scales is not None:
        scale = [1.0] * rank
        for axis, s in zip(axes, scales.tolist(), strict=True):
            scale[axis] = s  # exact: the output size floors in * scale
        size = [int(n * s) for n, s in zip(x.shape, scale, strict=True)]  # floor, as ONNX
        if all(not n or s == m / n for s, m, n in zip(scale, size, x.shape, strict=True)):
            scale = None  # the scale is just size / input, resize2d's default
    else:
        raise ctx.error("needs scales or sizes")
    mode = ctx.attr("coordinate_transformation_mode", "half_pixel")
    starts, ends = (
        _roi(ctx, rank, axes) if mode == "tf_crop_and_resize" else ([0.0] * rank, [1.0] * rank)
    )
    moved = [
        i
        for i in range(rank)
        if size[i] != x.shape[i]
        or (scale and scale[i] != 1.0)
        or (starts[i], ends[i]) != (0.0, 1.0)
    ]
    if rank < 2 or min(moved, default=rank) < rank - 2:
        raise ctx.unsupported(f"resizing axes {moved} (the core resizes only the last two)")
    return ctx.resize2d(
        x,
        size=size[-2:],
        scale=scale[-2:] if scale else None,
        method=ctx.attr("mode", "nearest"),
        coordinate_transformation_mode=mode,
        rounding_method=ctx.attr("nearest_mode", "round_prefer_floor"),
        cubic_alpha=ctx.attr("cubic_coeff_a", -0.75),
        exclude_outside=bool(ctx.attr("exclude_outside", 0)),
        roi=(starts[-2], starts[-1], ends[-2], ends[-1]) if mode == "tf_crop_and_resize" else None,
        extrapolation_value=ctx.attr("extrapolation_value", 0.0),
    )


def _given(array):
    """An empty tensor stands for an absent optional input (opset 13 style)."""
    return None if array is None or array.size == 0 else array


def _from_sizes(ctx: ConvertContext, shape, axes, sizes):
    """(size, scale) from the sizes input; scale is None when it is just size / input."""
    size = list(shape)
    for axis, n in zip(axes, sizes, strict=True):
        size[axis] = int(n)
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
    if policy == "stretch":
        return size, None
    # Keep the aspect ratio: one scale for every resized axis, sizes rounded half up.
    if any(shape[a] == 0 for a in axes):
        raise ctx.error(f"keep_aspect_ratio_policy={policy!r} on a zero-size axis of {shape}")
    pick = min if policy == "not_larger" else max
    common = pick(size[a] / shape[a] for a in axes)
    scale = [common if i in axes else 1.0 for i in range(len(shape))]
    return [int(common * n + 0.5) if i in axes else n for i, n in enumerate(shape)], scale


def _roi(ctx: ConvertContext, rank, axes):
    roi = ctx.constant(1, "roi").astype(float).tolist()
    if len(roi) != 2 * len(axes):
        raise ctx.error(f"roi needs {2 * len(axes)} values, got {len(roi)}")
    starts, ends = [0.0] * rank, [1.0] * rank
    for i, axis in enumerate(axes):
        starts[axis], ends[axis] = roi[i], roi[i + len(axes)]
    return starts, ends
