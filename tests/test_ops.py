"""Per-op checks of the registry: every op has cases; shape/dtype rules agree with references."""

import numpy as np
import pytest
import scipy.special

from coretune.errors import AttrError, GraphError, ShapeError
from coretune.graph import all_ops, get_op
from coretune.graph.registry import Pattern

from .op_cases import CASES, OpCase


def test_every_op_has_cases():
    covered = {case.op for case in CASES}
    missing = sorted(op.name for op in all_ops() if op.name not in covered)
    assert not missing, f"core ops without a case in tests/op_cases.py: {missing}"


def test_the_core_set_is_complete():
    expected = {
        1: "dense matmul add subtract multiply divide power maximum minimum negative abs exp log "
        "sqrt rsqrt tanh sigmoid erf relu leaky_relu clip softmax log_softmax batch_norm "
        "layer_norm flatten concatenate split expand_dims squeeze cast where greater less equal "
        "greater_equal less_equal mod fmod logical_and logical_or logical_xor logical_not isnan",
        2: "conv2d conv2d_transpose max_pool2d avg_pool2d global_avg_pool2d global_max_pool2d "
        "resize2d",
        3: "reshape transpose take strided_slice pad broadcast_to take_along_axis gather_nd "
        "scatter_nd tril triu",
        4: "sum mean max min prod argmax argmin cumsum",
    }
    for level, names in expected.items():
        for name in names.split():
            assert get_op(name).level == level, name


@pytest.mark.parametrize("case", CASES, ids=str)
def test_rules_agree_with_reference(case: OpCase):
    op = get_op(case.op)
    attrs = op.normalize_attrs(case.attrs)
    arrays = case.arrays()
    inferred = op.infer([a.shape for a in arrays], [a.dtype.name for a in arrays], attrs)
    results = op.evaluate(arrays, attrs)
    assert [(r.shape, r.dtype.name) for r in results] == inferred
    for r in results:
        if r.dtype.kind == "f":
            assert np.isfinite(r).all(), f"{case}: reference gave non-finite values on valid input"


def test_attributes_are_validated():
    conv = get_op("conv2d")
    with pytest.raises(AttrError, match="unknown attribute"):
        conv.normalize_attrs({"stride": (1, 1)})
    with pytest.raises(AttrError, match="must be ints"):
        conv.normalize_attrs({"strides": 2})
    with pytest.raises(AttrError, match="missing required attribute 'pool_size'"):
        get_op("max_pool2d").normalize_attrs({})
    with pytest.raises(AttrError, match="must be one of"):
        get_op("pad").normalize_attrs({"pad_width": (0, 0), "mode": "mirror"})
    with pytest.raises(AttrError, match="got a bool"):
        get_op("softmax").normalize_attrs({"axis": True})
    with pytest.raises(GraphError, match="unknown dtype"):
        get_op("cast").normalize_attrs({"dtype": "float33"})


def test_shape_rules_reject_bad_shapes():
    with pytest.raises(ShapeError, match="do not broadcast"):
        get_op("add").infer([(3, 4), (5,)], ["float32"] * 2, {})
    with pytest.raises(ShapeError, match="inner dimensions"):
        get_op("matmul").infer([(3, 4), (5, 6)], ["float32"] * 2, {})
    with pytest.raises(ShapeError, match="share one dtype"):
        get_op("add").infer([(3,), (3,)], ["float32", "int32"], {})
    with pytest.raises(GraphError, match="takes 2..3 inputs"):
        get_op("dense").infer([(3, 4)], ["float32"], {})
    conv = get_op("conv2d")
    with pytest.raises(ShapeError, match="channels"):
        conv.infer([(1, 4, 8, 8), (8, 3, 3, 3)], ["float32"] * 2, conv.normalize_attrs({}))
    with pytest.raises(ShapeError, match="exceeds padded size"):
        conv.infer([(1, 3, 2, 2), (8, 3, 3, 3)], ["float32"] * 2, conv.normalize_attrs({}))


def test_patterns_follow_the_op_kind():
    assert get_op("relu").pattern is Pattern.ELEMWISE
    assert get_op("add").pattern is Pattern.BROADCAST
    assert get_op("transpose").pattern is Pattern.INJECTIVE
    assert get_op("sum").pattern is Pattern.REDUCTION
    assert get_op("conv2d").pattern is Pattern.OUT_ELEMWISE_FUSABLE


def _naive_conv2d(x, w, strides, padding, dilation, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[2]), (padding[1], padding[3])))
    oh = (h + padding[0] + padding[2] - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd + padding[1] + padding[3] - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((n, o, oh, ow))
    per_group = o // groups
    for oc in range(o):
        g = oc // per_group
        for i in range(oh):
            for j in range(ow):
                patch = xp[
                    :,
                    g * cg : (g + 1) * cg,
                    i * strides[0] : i * strides[0] + dilation[0] * (kh - 1) + 1 : dilation[0],
                    j * strides[1] : j * strides[1] + dilation[1] * (kw - 1) + 1 : dilation[1],
                ]
                out[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3))
    return out


@pytest.mark.parametrize("case", [c for c in CASES if c.op == "conv2d"], ids=str)
def test_conv2d_matches_a_direct_loop(case):
    x, w, *bias = case.arrays(seed=3)
    attrs = get_op("conv2d").normalize_attrs(case.attrs)
    got = get_op("conv2d").evaluate([x, w, *bias], attrs)[0]
    want = _naive_conv2d(
        x.astype(np.float64),
        w.astype(np.float64),
        attrs["strides"],
        attrs["padding"],
        attrs["dilation"],
        attrs["groups"],
    )
    if bias:
        want += bias[0].reshape(1, -1, 1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_conv2d_transpose_is_the_adjoint_of_conv2d():
    """<conv(x), y> == <x, conv_transpose(y)> for the same weight and geometry."""
    rng = np.random.default_rng(1)
    geometry = {"strides": (2, 3), "padding": (1, 0, 2, 1), "dilation": (1, 2), "groups": 2}
    x = rng.standard_normal((2, 4, 11, 13))
    w = rng.standard_normal((6, 2, 3, 3))
    conv = get_op("conv2d")
    y = conv.evaluate([x, w], conv.normalize_attrs(geometry))[0]
    probe = rng.standard_normal(y.shape)
    tconv = get_op("conv2d_transpose")
    # conv2d weight (O, I/g, kh, kw) is conv2d_transpose weight (in=O, out/g=I/g, kh, kw).
    out_pad = tuple(
        x.shape[2 + i]
        - (
            (y.shape[2 + i] - 1) * geometry["strides"][i]
            + geometry["dilation"][i] * 2
            + 1
            - geometry["padding"][i]
            - geometry["padding"][i + 2]
        )
        for i in range(2)
    )
    back = tconv.evaluate(
        [probe, w], tconv.normalize_attrs({**geometry, "output_padding": out_pad})
    )[0]
    assert back.shape == x.shape
    np.testing.assert_allclose((y * probe).sum(), (x * back).sum(), rtol=1e-9)


def test_divide_truncates_integers_like_c():
    a = np.array([7, -7, 7, -7, 0], dtype=np.int32)
    b = np.array([2, 2, -2, -2, 3], dtype=np.int32)
    out = get_op("divide").evaluate([a, b], {})[0]
    assert out.tolist() == [3, -3, -3, 3, 0]


def test_cast_saturates_narrow_floats():
    x = np.array([1e6, -1e6, np.inf, np.nan, 1.0], dtype=np.float32)
    cast = get_op("cast")
    sat = cast.evaluate([x], cast.normalize_attrs({"dtype": "float8_e4m3fn"}))[0]
    assert sat.astype(np.float32)[:3].tolist() == [448.0, -448.0, 448.0]
    assert np.isnan(sat.astype(np.float32)[3])
    raw = cast.evaluate([x], cast.normalize_attrs({"dtype": "float8_e4m3fn", "saturate": False}))[0]
    assert np.isnan(raw.astype(np.float32)[0])


def test_erf_and_sigmoid_references():
    x = np.linspace(-4, 4, 33).astype(np.float32)
    np.testing.assert_allclose(get_op("erf").evaluate([x], {})[0], scipy.special.erf(x), rtol=1e-6)
    np.testing.assert_allclose(
        get_op("sigmoid").evaluate([x], {})[0], 1 / (1 + np.exp(-x)), rtol=1e-6
    )


def test_empty_reductions_use_identities():
    x = np.zeros((0, 3), dtype=np.float32)
    red = get_op("max")
    out = red.evaluate([x], red.normalize_attrs({"axes": (0,)}))[0]
    assert out.tolist() == [-np.inf] * 3
