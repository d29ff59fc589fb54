"""One emitter per core op: how each is written as ONNX nodes.

An emitter takes the exporter's ``OnnxWriter`` and a validated core ``Node`` (attributes
normalised) and emits nodes whose final outputs carry the core node's output names. Ops with
no 1:1 ONNX op use the forms the importer canonicalises back to the same core op.
"""

from collections.abc import Callable

import numpy as np

from coretune.errors import CoretuneError

from ..ir import Node
from .exporter import OnnxWriter, onnx_dtype

Emitter = Callable[[OnnxWriter, Node], None]


def direct(op_type: str, **attr_names: str) -> Emitter:
    """A 1:1 op: same inputs and outputs; ``attr_names`` maps ONNX attribute -> core attribute."""

    def emit(w: OnnxWriter, node: Node) -> None:
        attrs = {onnx_name: node.attrs[name] for onnx_name, name in attr_names.items()}
        w.emit(op_type, node.inputs, node.outputs, node.name, **attrs)

    return emit


# ---- elementwise ---------------------------------------------------------------------------
def emit_rsqrt(w: OnnxWriter, node: Node) -> None:
    root = w.temp(node, "Sqrt", node.inputs)
    w.emit("Reciprocal", [root], node.outputs, node.name)


def emit_clip(w: OnnxWriter, node: Node) -> None:
    dtype = w.type_of(node.inputs[0]).dtype
    bounds = [
        "" if node.attrs[a] is None else w.scalar(node, a[2:], node.attrs[a], dtype)
        for a in ("a_min", "a_max")
    ]
    w.emit("Clip", [node.inputs[0], *bounds], node.outputs, node.name)


def emit_cast(w: OnnxWriter, node: Node) -> None:
    dtype = node.attrs["dtype"]
    # ONNX's saturate covers the float8 targets only (float4 casts always saturate); float8
    # types need opset 19, which the exporter has checked. e8m0 rounds up unless told to round
    # to nearest, as coretune (ml_dtypes) does.
    float8 = dtype.startswith("float8")
    w.emit(
        "Cast",
        node.inputs,
        node.outputs,
        node.name,
        to=onnx_dtype(dtype),
        saturate=node.attrs["saturate"] if float8 else None,
        round_mode="nearest" if dtype == "float8_e8m0fnu" else None,
    )


def emit_mod(w: OnnxWriter, node: Node) -> None:
    fmod = node.op == "fmod"
    if not fmod and w.type_of(node.inputs[0]).dtype.startswith(("float", "bfloat")):
        w.require(node, 28, "a floating-point mod with the sign of b (Mod fmod=0)")
    w.emit("Mod", node.inputs, node.outputs, node.name, fmod=int(fmod))


# ---- dense algebra and normalisation ---------------------------------------------------------
def emit_dense(w: OnnxWriter, node: Node) -> None:
    data, weight, *bias = node.inputs
    if len(w.type_of(data).shape) == 2:
        w.emit("Gemm", node.inputs, node.outputs, node.name, transB=1)
        return
    if w.is_param(weight):
        weight_t = w.transposed_param(weight)
    else:
        weight_t = w.temp(node, "Transpose", [weight], perm=(1, 0))
    if not bias:
        w.emit("MatMul", [data, weight_t], node.outputs, node.name)
        return
    product = w.temp(node, "MatMul", [data, weight_t])
    w.emit("Add", [product, bias[0]], node.outputs, node.name)


def emit_batch_norm(w: OnnxWriter, node: Node) -> None:
    """ONNX normalises axis 1 only: another axis is moved there and back with Transposes."""
    data, *stats = node.inputs
    rank = len(w.type_of(data).shape)
    axis = node.attrs["axis"] % rank
    epsilon = node.attrs["epsilon"]
    if axis == 1:
        w.emit("BatchNormalization", node.inputs, node.outputs, node.name, epsilon=epsilon)
        return
    if rank == 1:  # ONNX wants (N, C, ...): view the channels as (1, C)
        batch_axis = w.ints(node, "batch_axis", [0])
        wide = w.temp(node, "Unsqueeze", [data, batch_axis])
        normed = w.temp(node, "BatchNormalization", [wide, *stats], epsilon=epsilon)
        w.emit("Squeeze", [normed, batch_axis], node.outputs, node.name)
        return
    order = [a for a in range(rank) if a != axis]
    order.insert(1, axis)
    moved = w.temp(node, "Transpose", [data], perm=order)
    normed = w.temp(node, "BatchNormalization", [moved, *stats], epsilon=epsilon)
    w.emit("Transpose", [normed], node.outputs, node.name, perm=np.argsort(order).tolist())


def emit_layer_norm(w: OnnxWriter, node: Node) -> None:
    if w.opset >= 17:
        w.emit(
            "LayerNormalization",
            node.inputs,
            node.outputs,
            node.name,
            axis=node.attrs["axis"],
            epsilon=node.attrs["epsilon"],
        )
        return
    # Opsets 13-16 have no LayerNormalization: write out its definition.
    data, gamma, *beta = node.inputs
    ttype = w.type_of(data)
    axes = range(node.attrs["axis"] % len(ttype.shape), len(ttype.shape))
    mean = reduce(w, node, "ReduceMean", data, axes, keepdims=True)
    centred = w.temp(node, "Sub", [data, mean])
    square = w.temp(node, "Mul", [centred, centred])
    variance = reduce(w, node, "ReduceMean", square, axes, keepdims=True)
    epsilon = w.scalar(node, "epsilon", node.attrs["epsilon"], ttype.dtype)
    std = w.temp(node, "Sqrt", [w.temp(node, "Add", [variance, epsilon])])
    normed = w.temp(node, "Div", [centred, std])
    if not beta:
        w.emit("Mul", [normed, gamma], node.outputs, node.name)
        return
    w.emit("Add", [w.temp(node, "Mul", [normed, gamma]), beta[0]], node.outputs, node.name)


# ---- reductions ----------------------------------------------------------------------------
def reduce(
    w: OnnxWriter, node: Node, op_type: str, data: str, axes, keepdims: bool, out: str | None = None
) -> str:
    """Emit a Reduce* node; axes move from attribute to input at opset 13 (ReduceSum) or 18
    (the others). ``axes=None`` reduces everything. Returns the output's name."""
    attrs = {"keepdims": keepdims}
    inputs = [data]
    if axes is not None:
        if op_type == "ReduceSum" or w.opset >= 18:
            inputs.append(w.ints(node, "axes", axes))
        else:
            attrs["axes"] = list(axes)
    if out is None:
        return w.temp(node, op_type, inputs, **attrs)
    w.emit(op_type, inputs, [out], node.name, **attrs)
    return out


def reduction(op_type: str) -> Emitter:
    def emit(w: OnnxWriter, node: Node) -> None:
        axes = node.attrs["axes"]
        if axes == ():  # reduces nothing; ONNX would read empty axes as 'all'
            w.emit("Identity", node.inputs, node.outputs, node.name)
            return
        reduce(w, node, op_type, node.inputs[0], axes, node.attrs["keepdims"], node.outputs[0])

    return emit


# ---- spatial -------------------------------------------------------------------------------
def _window_attrs(node: Node) -> dict:
    return {
        "strides": node.attrs["strides"],
        "pads": node.attrs["padding"],
        "dilations": node.attrs["dilation"],
    }


def emit_conv2d(w: OnnxWriter, node: Node) -> None:
    w.emit(
        "Conv",
        node.inputs,
        node.outputs,
        node.name,
        group=node.attrs["groups"],
        **_window_attrs(node),
    )


def emit_conv2d_transpose(w: OnnxWriter, node: Node) -> None:
    w.emit(
        "ConvTranspose",
        node.inputs,
        node.outputs,
        node.name,
        group=node.attrs["groups"],
        output_padding=node.attrs["output_padding"],
        **_window_attrs(node),
    )


def emit_max_pool2d(w: OnnxWriter, node: Node) -> None:
    w.emit(
        "MaxPool",
        node.inputs,
        node.outputs,
        node.name,
        kernel_shape=node.attrs["pool_size"],
        ceil_mode=node.attrs["ceil_mode"],
        **_window_attrs(node),
    )


def emit_avg_pool2d(w: OnnxWriter, node: Node) -> None:
    attrs = _window_attrs(node)
    if attrs["dilations"] == (1, 1):
        del attrs["dilations"]  # AveragePool takes dilations from opset 19 only
    else:
        w.require(node, 19, "dilated average pooling")
    w.emit(
        "AveragePool",
        node.inputs,
        node.outputs,
        node.name,
        kernel_shape=node.attrs["pool_size"],
        ceil_mode=node.attrs["ceil_mode"],
        count_include_pad=node.attrs["count_include_pad"],
        **attrs,
    )


# ---- data movement -------------------------------------------------------------------------
def with_ints(op_type: str, attr: str, **attr_names: str) -> Emitter:
    """An op whose core attribute ``attr`` is an int64 input in ONNX (absent when None)."""

    def emit(w: OnnxWriter, node: Node) -> None:
        values = node.attrs[attr]
        extra = "" if values is None else w.ints(node, attr, values)
        attrs = {onnx_name: node.attrs[name] for onnx_name, name in attr_names.items()}
        w.emit(op_type, [node.inputs[0], extra], node.outputs, node.name, **attrs)

    return emit


def emit_reshape(w: OnnxWriter, node: Node) -> None:
    newshape = node.attrs["newshape"]
    allowzero = None
    if 0 in newshape:  # a 0 is a size here; ONNX reads it as 'copy' unless allowzero=1
        w.require(node, 14, "a 0 in newshape (Reshape allowzero)")
        allowzero = 1
    w.emit(
        "Reshape",
        [node.inputs[0], w.ints(node, "shape", newshape)],
        node.outputs,
        node.name,
        allowzero=allowzero,
    )


def emit_transpose(w: OnnxWriter, node: Node) -> None:
    axes = node.attrs["axes"]
    rank = len(w.type_of(node.inputs[0]).shape)
    perm = None if axes is None else [a % rank for a in axes]
    w.emit("Transpose", node.inputs, node.outputs, node.name, perm=perm)


def emit_strided_slice(w: OnnxWriter, node: Node) -> None:
    a = node.attrs
    inputs = [
        node.inputs[0],
        w.ints(node, "starts", a["begin"]),
        w.ints(node, "ends", a["end"]),
        "" if a["axes"] is None else w.ints(node, "axes", a["axes"]),
        "" if a["strides"] is None else w.ints(node, "steps", a["strides"]),
    ]
    w.emit("Slice", inputs, node.outputs, node.name)


def emit_pad(w: OnnxWriter, node: Node) -> None:
    mode, widths = node.attrs["mode"], node.attrs["pad_width"]
    if mode == "wrap":
        w.require(node, 19, "wrap padding")
    pads = w.ints(node, "pads", [*widths[0::2], *widths[1::2]])  # all befores, then all afters
    value = ""
    if mode == "constant":
        dtype = w.type_of(node.inputs[0]).dtype
        value = w.scalar(node, "value", node.attrs["pad_value"], dtype)
    w.emit("Pad", [node.inputs[0], pads, value], node.outputs, node.name, mode=mode)


def emit_triangle(w: OnnxWriter, node: Node) -> None:
    w.require(node, 14, "Trilu")
    k = w.constant(node, "k", np.array(node.attrs["k"], np.int64))
    w.emit("Trilu", [node.inputs[0], k], node.outputs, node.name, upper=int(node.op == "triu"))


def emit_cumsum(w: OnnxWriter, node: Node) -> None:
    a = node.attrs
    axis = w.constant(node, "axis", np.array(a["axis"], np.int64))
    w.emit(
        "CumSum",
        [node.inputs[0], axis],
        node.outputs,
        node.name,
        exclusive=a["exclusive"],
        reverse=a["reverse"],
    )


def emit_scatter_nd(w: OnnxWriter, node: Node) -> None:
    reduction = node.attrs["reduction"]
    if reduction != "none":
        w.require(node, 16 if reduction in ("add", "mul") else 18, f"reduction={reduction}")
    reduction = None if reduction == "none" else reduction
    w.emit("ScatterND", node.inputs, node.outputs, node.name, reduction=reduction)


def emit_resize2d(w: OnnxWriter, node: Node) -> None:
    """Resize over every axis (the leading ones keep their size), by ``sizes``; by ``scales``
    only when the core's coordinate scale differs from size / in, which sizes would imply."""
    a = node.attrs
    shape = w.type_of(node.inputs[0]).shape
    lead = len(shape) - 2
    mode = a["coordinate_transformation_mode"]
    if mode == "half_pixel_symmetric":
        w.require(node, 19, "half_pixel_symmetric resizing")
    roi = scales = sizes = ""
    if mode == "tf_crop_and_resize":
        box = list(a["roi"] or (0.0, 0.0, 1.0, 1.0))
        roi = w.constant(
            node, "roi", np.array([0.0] * lead + box[:2] + [1.0] * lead + box[2:], dtype=np.float32)
        )
    if _needs_scales(node, shape[-2:]):
        scales = w.constant(node, "scales", np.array([1.0] * lead + list(a["scale"]), np.float32))
    else:
        sizes = w.ints(node, "sizes", [*shape[:-2], *a["size"]])
    w.emit(
        "Resize",
        [node.inputs[0], roi, scales, sizes],
        node.outputs,
        node.name,
        mode=a["method"],
        coordinate_transformation_mode=mode,
        nearest_mode=a["rounding_method"],
        cubic_coeff_a=a["cubic_alpha"],
        exclude_outside=a["exclude_outside"],
        extrapolation_value=a["extrapolation_value"],
    )


def _needs_scales(node: Node, in_hw) -> bool:
    scale, size = node.attrs["scale"], node.attrs["size"]
    if scale is None or node.attrs["coordinate_transformation_mode"] in (
        "align_corners",
        "tf_crop_and_resize",
    ):  # these modes never read the scale
        return False
    # ONNX derives the scale from sizes in float32; only a different scale needs scales.
    f32 = np.float32
    if all(f32(s) == f32(o) / f32(i) for s, o, i in zip(scale, size, in_hw, strict=True)):
        return False
    implied = [int(np.floor(f32(s) * f32(i))) for s, i in zip(scale, in_hw, strict=True)]
    if implied != list(size):
        raise CoretuneError(
            f"node {node.name!r} (resize2d): ONNX Resize cannot combine scale "
            f"{scale} with size {size}: its scales give size {tuple(implied)}"
        )
    return True


_DIRECT = {
    "add": "Add",
    "subtract": "Sub",
    "multiply": "Mul",
    "divide": "Div",
    "power": "Pow",
    "maximum": "Max",
    "minimum": "Min",
    "greater": "Greater",
    "less": "Less",
    "equal": "Equal",
    "greater_equal": "GreaterOrEqual",
    "less_equal": "LessOrEqual",
    "logical_and": "And",
    "logical_or": "Or",
    "logical_xor": "Xor",
    "logical_not": "Not",
    "isnan": "IsNaN",
    "negative": "Neg",
    "abs": "Abs",
    "exp": "Exp",
    "log": "Log",
    "sqrt": "Sqrt",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
    "erf": "Erf",
    "relu": "Relu",
    "where": "Where",
    "matmul": "MatMul",
    "global_avg_pool2d": "GlobalAveragePool",
    "global_max_pool2d": "GlobalMaxPool",
}

EMITTERS: dict[str, Emitter] = {
    **{op: direct(op_type) for op, op_type in _DIRECT.items()},
    "rsqrt": emit_rsqrt,
    "mod": emit_mod,
    "fmod": emit_mod,
    "leaky_relu": direct("LeakyRelu", alpha="alpha"),
    "clip": emit_clip,
    "cast": emit_cast,
    "dense": emit_dense,
    "softmax": direct("Softmax", axis="axis"),
    "log_softmax": direct("LogSoftmax", axis="axis"),
    "batch_norm": emit_batch_norm,
    "layer_norm": emit_layer_norm,
    "flatten": direct("Flatten", axis="axis"),
    "concatenate": direct("Concat", axis="axis"),
    "split": with_ints("Split", "sizes", axis="axis"),
    "expand_dims": with_ints("Unsqueeze", "axes"),
    "squeeze": with_ints("Squeeze", "axes"),
    "reshape": emit_reshape,
    "transpose": emit_transpose,
    "take": direct("Gather", axis="axis"),
    "take_along_axis": direct("GatherElements", axis="axis"),
    "gather_nd": direct("GatherND", batch_dims="batch_dims"),
    "scatter_nd": emit_scatter_nd,
    "tril": emit_triangle,
    "triu": emit_triangle,
    "cumsum": emit_cumsum,
    "strided_slice": emit_strided_slice,
    "pad": emit_pad,
    "broadcast_to": with_ints("Expand", "shape"),
    "conv2d": emit_conv2d,
    "conv2d_transpose": emit_conv2d_transpose,
    "max_pool2d": emit_max_pool2d,
    "avg_pool2d": emit_avg_pool2d,
    "resize2d": emit_resize2d,
    "sum": reduction("ReduceSum"),
    "mean": reduction("ReduceMean"),
    "max": reduction("ReduceMax"),
    "min": reduction("ReduceMin"),
    "prod": reduction("ReduceProd"),
    "argmax": direct(
        "ArgMax", axis="axis", keepdims="keepdims", select_last_index="select_last_index"
    ),
    "argmin": direct(
        "ArgMin", axis="axis", keepdims="keepdims", select_last_index="select_last_index"
    ),
}
