"""Dense algebra and normalisation: dense, matmul, softmax, log_softmax, batch_norm, layer_norm."""

import numpy as np

from ..registry import Attr, OpDef, Pattern, register, shape_error
from .common import all_same_dtype, broadcast, first_dtype, normalize_axis


def _dense_shape(shapes, **_):
    data, weight, *bias = shapes
    if len(weight) != 2 or not data or data[-1] != weight[1]:
        raise shape_error("dense", f"data {data} and weight {weight} (units, in) do not match")
    if bias and bias[0] not in ((weight[0],), (1,), ()):
        raise shape_error("dense", f"bias {bias[0]} must have shape ({weight[0]},)")
    return [data[:-1] + (weight[0],)]


def _dense(data, weight, bias=None):
    out = np.matmul(data, weight.T)
    return (out if bias is None else out + bias,)


register(
    OpDef(
        "dense",
        1,
        Pattern.OUT_ELEMWISE_FUSABLE,
        ("data", "weight", "bias?"),
        _dense_shape,
        all_same_dtype("dense"),
        _dense,
        (),
        "data @ weight.T + bias; weight is (units, in_features)",
    )
)


def _matmul_shape(shapes, **_):
    a, b = shapes
    if not a or not b:
        raise shape_error("matmul", "operands must have rank >= 1")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise shape_error("matmul", f"inner dimensions of {a} and {b} differ")
    batch = broadcast("matmul", a2[:-2], b2[:-2])
    return [batch + (() if len(a) == 1 else (a2[-2],)) + (() if len(b) == 1 else (b2[-1],))]


register(
    OpDef(
        "matmul",
        1,
        Pattern.OUT_ELEMWISE_FUSABLE,
        ("a", "b"),
        _matmul_shape,
        all_same_dtype("matmul"),
        lambda a, b: (np.matmul(a, b),),
        (),
        "numpy matmul: batched, broadcasting, 1-D operands promoted",
    )
)


def _softmax(x, axis):
    wide = x.astype(np.float32) if x.dtype.itemsize < 4 else x
    shifted = wide - wide.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x, axis):
    wide = x.astype(np.float32) if x.dtype.itemsize < 4 else x
    shifted = wide - wide.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _axis_checked(name):
    def rule(shapes, axis, **_):
        normalize_axis(name, axis, len(shapes[0]))
        return [shapes[0]]

    return rule


for _name, _fn, _doc in (
    ("softmax", _softmax, "exp(x) / sum(exp(x)) along axis"),
    ("log_softmax", _log_softmax, "log(softmax(x)) along axis"),
):
    register(
        OpDef(
            _name,
            1,
            Pattern.REDUCTION,
            ("x",),
            _axis_checked(_name),
            first_dtype,
            lambda x, axis, _fn=_fn: (_fn(x, axis),),
            (Attr("axis", "int", -1),),
            _doc,
        )
    )


def _batch_norm_shape(shapes, axis, **_):
    data = shapes[0]
    axis = normalize_axis("batch_norm", axis, len(data))
    for name, shape in zip(("gamma", "beta", "mean", "var"), shapes[1:], strict=True):
        if shape != (data[axis],):
            raise shape_error("batch_norm", f"{name} {shape} must be ({data[axis]},)")
    return [data]


def _batch_norm(data, gamma, beta, mean, var, axis, epsilon):
    axis %= data.ndim
    view = [1] * data.ndim
    view[axis] = -1
    scale = gamma / np.sqrt(var + epsilon)
    return ((data - mean.reshape(view)) * scale.reshape(view) + beta.reshape(view),)


register(
    OpDef(
        "batch_norm",
        1,
        Pattern.BROADCAST,
        ("data", "gamma", "beta", "moving_mean", "moving_var"),
        _batch_norm_shape,
        all_same_dtype("batch_norm"),
        _batch_norm,
        (Attr("axis", "int", 1), Attr("epsilon", "float", 1e-5)),
        "inference batch norm: (data - mean) / sqrt(var + eps) * gamma + beta along axis",
    )
)


def _layer_norm_shape(shapes, axis, **_):
    data = shapes[0]
    axis = normalize_axis("layer_norm", axis, len(data))
    for shape in shapes[1:]:
        if broadcast("layer_norm", data[axis:], shape) != data[axis:]:
            raise shape_error("layer_norm", f"scale/bias {shape} must broadcast to {data[axis:]}")
    return [data]


def _layer_norm(data, gamma, beta=None, *, axis, epsilon):
    axes = tuple(range(axis % data.ndim, data.ndim))
    wide = data.astype(np.float32) if data.dtype.itemsize < 4 else data
    mean = wide.mean(axis=axes, keepdims=True)
    var = np.square(wide - mean).mean(axis=axes, keepdims=True)
    out = (wide - mean) / np.sqrt(var + epsilon) * gamma
    return (out if beta is None else out + beta,)


register(
    OpDef(
        "layer_norm",
        1,
        Pattern.REDUCTION,
        ("data", "gamma", "beta?"),
        _layer_norm_shape,
        all_same_dtype("layer_norm"),
        _layer_norm,
        (Attr("axis", "int", -1), Attr("epsilon", "float", 1e-5)),
        "normalise over the axes from axis to the last, then scale by gamma and shift by beta",
    )
)
