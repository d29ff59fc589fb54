"""ONNX export: every core op's emitter, checked by onnx and compared with onnxruntime.

Each op case (tests/op_cases.py, plus the export-specific forms below) becomes a one-node graph
whose operands are graph inputs or, in the "params" variant, initializers; it is exported at
the oldest supported opset, at 17 and at the default, checked with full_check and run on
onnxruntime against coretune's reference executor.
"""

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from coretune import export_onnx
from coretune.errors import CoretuneError
from coretune.graph import GraphBuilder, all_ops, run_reference
from coretune.graph.dtypes import DTYPES, is_float, to_numpy
from coretune.graph.exchange.export_ops import EMITTERS
from coretune.graph.exchange.exporter import MIN_OPSET, ONNXRUNTIME_OPSET, default_opset

from .onnx_models import assert_close, run_onnxruntime
from .op_cases import CASES, OpCase, f


def i32(*shape):
    return (tuple(shape), "int32")


def resize(**attrs):
    return OpCase("resize2d", (f(1, 3, 7, 13),), attrs)


# Forms the op cases leave out: each reaches a different branch of an emitter.
EXPORT_CASES = [
    OpCase("dense", (f(7, 13), f(5, 13))),
    OpCase("dense", (f(2, 3, 13), f(5, 13), f(5))),
    OpCase("dense", (f(13), f(5, 13), f(1))),
    OpCase("clip", (f(7, 13),), {"a_min": -0.25}),
    OpCase("clip", (i32(7, 13),), {"a_min": 2.5, "a_max": 7.5}),
    OpCase("cast", (f(13),), {"dtype": "float8_e5m2", "saturate": False}),
    OpCase("cast", (f(13),), {"dtype": "bfloat16"}),
    OpCase("cast", (f(13),), {"dtype": "bool"}),
    OpCase("cast", (i32(13),), {"dtype": "float32"}),
    OpCase("power", (f(7), i32(7))),
    OpCase("equal", (i32(7, 1), i32(5))),
    OpCase("less", (i32(7, 1), i32(5))),
    OpCase("matmul", (f(13), f(13))),
    OpCase("batch_norm", (f(7, 2, 5), f(7), f(7), f(7), f(7)), {"axis": 0}),
    OpCase("batch_norm", (f(2, 5, 3, 7), f(7), f(7), f(7), f(7)), {"axis": -1}),
    OpCase("batch_norm", (f(7), f(7), f(7), f(7), f(7)), {"axis": 0}),
    OpCase("layer_norm", (f(2, 7, 13), f(13)), {"axis": 1}),
    OpCase("layer_norm", (f(3, 13), f(13)), {"epsilon": 1e-3}),
    OpCase("log_softmax", (f(3, 7),), {"axis": 0}),
    OpCase("flatten", (f(2, 3, 4),), {"axis": 0}),
    OpCase("flatten", (f(2, 3, 4),), {"axis": -1}),
    OpCase("concatenate", (f(3),)),
    OpCase("split", (f(7, 5),), {"sizes": (7,)}),
    OpCase("split", (f(7, 5),), {"sizes": (2, 0, 3), "axis": -1}),
    OpCase("expand_dims", (f(7),), {"axes": (-1, 0)}),
    OpCase("squeeze", (f(1, 7, 1),), {"axes": (-1,)}),
    OpCase("reshape", (f(2, 0, 3),), {"newshape": (0, 6)}),
    OpCase("reshape", (f(2, 3, 4),), {"newshape": (-1,)}),
    OpCase("transpose", (f(2, 7, 13),), {"axes": (-1, 0, 1)}),
    OpCase("take", (f(7, 13), i32(3)), {"axis": -1}),
    OpCase("strided_slice", (f(7, 13),), {"begin": (5, 0), "end": (-100, 13), "strides": (-2, 4)}),
    OpCase("strided_slice", (f(2, 7, 13),), {"begin": (1,), "end": (-1,), "axes": (-1,)}),
    OpCase("pad", (f(3, 5),), {"pad_width": (2, 1, 3, 4), "mode": "wrap"}),
    OpCase("pad", (i32(3, 5),), {"pad_width": (1, 0, 0, 2), "pad_value": 7.9}),
    OpCase("broadcast_to", (f(),), {"shape": (3, 4)}),
    OpCase("avg_pool2d", (f(1, 2, 9, 9),), {"pool_size": (2, 2), "dilation": (2, 2)}),
    OpCase(
        "max_pool2d",
        (f(1, 2, 9, 9),),
        {"pool_size": (3, 2), "dilation": (2, 3), "padding": (1, 1, 2, 0)},
    ),
    resize(size=(14, 26), scale=(2.0, 2.0)),
    resize(
        size=(17, 32),
        scale=(2.5, 2.5),
        rounding_method="floor",
        coordinate_transformation_mode="asymmetric",
    ),
    resize(
        size=(11, 17),
        rounding_method="round_prefer_ceil",
        coordinate_transformation_mode="asymmetric",
    ),
    resize(size=(11, 17), rounding_method="ceil"),
    resize(
        size=(5, 9),
        method="linear",
        extrapolation_value=0.5,
        coordinate_transformation_mode="tf_crop_and_resize",
        roi=(0.1, 0.2, 0.9, 0.7),
    ),
    resize(size=(10, 20), method="cubic", exclude_outside=True, cubic_alpha=-0.5),
    resize(size=(9, 5), method="linear", coordinate_transformation_mode="half_pixel_symmetric"),
    resize(size=(1, 20), method="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    OpCase("sum", (f(3, 4, 5),), {"keepdims": True}),
    OpCase("mean", (f(3, 4, 5),), {"axes": (-1,)}),
    OpCase("max", (f(3, 4, 5),), {"axes": ()}),
    OpCase("argmax", (i32(7, 13),), {"axis": 0, "select_last_index": True}),
    OpCase("argmin", (i32(7, 13),), {"axis": -1, "select_last_index": True, "keepdims": True}),
]
ALL_CASES = CASES + EXPORT_CASES


# onnxruntime runs casts to these types, but its Python API cannot hand the result back ("No
# corresponding Numpy type for Tensor Type"): such cases are only checked with check_model.
ONNXRUNTIME_CANNOT_RETURN = {"bfloat16", "float8_e5m2"}


def minimum_opset(case: OpCase) -> int:
    """The oldest opset that can express the case; older ones must raise naming the node."""
    a = case.attrs
    if case.op == "cast" and a["dtype"].startswith("float8"):
        return 19
    if (
        case.op == "pad"
        and a.get("mode") == "wrap"
        or case.op == "avg_pool2d"
        and tuple(a.get("dilation", (1, 1))) != (1, 1)
        or a.get("coordinate_transformation_mode") == "half_pixel_symmetric"
    ):
        return 19
    if case.op == "scatter_nd" and a.get("reduction", "none") != "none":
        return 16 if a["reduction"] in ("add", "mul") else 18
    if case.op == "mod" and case.inputs[0][1].startswith("float"):
        return 28  # Mod with fmod=0 takes floats from opset 28
    if case.op == "reshape" and 0 in a["newshape"] or case.op in ("tril", "triu"):
        return 14
    return MIN_OPSET


def single_op_graph(case: OpCase, params: bool = False, name: str = "node"):
    """One node over the case's operands: all graph inputs, or (params) the first an input
    and the others parameters. Returns the graph and its runtime inputs."""
    b = GraphBuilder(case.op)
    operands, feeds = [], {}
    for k, ((shape, dtype), array) in enumerate(zip(case.inputs, case.arrays(), strict=True)):
        if params and k:
            operands.append(b.param(f"p{k}", array))
        else:
            operands.append(b.input(f"x{k}", shape, dtype))
            feeds[f"x{k}"] = array
    out = b.op(case.op, *operands, name=name, **case.attrs)
    return b.build(*(out if isinstance(out, tuple) else (out,))), feeds


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


_VARIANTS = [
    pytest.param(case, params, id=f"{case}-{'params' if params else 'inputs'}")
    for case in ALL_CASES
    for params in (False, True)
    if not params or len(case.inputs) > 1
]


@pytest.mark.parametrize("op", [op.name for op in all_ops()])
def test_every_core_op_has_an_emitter_and_cases(op):
    assert op in EMITTERS, f"core op {op!r} has no ONNX emitter in graph/exchange/export_ops.py"
    assert any(case.op == op for case in ALL_CASES), f"no export case exercises {op!r}"


@pytest.mark.parametrize("opset", [MIN_OPSET, 17, None], ids=["opset13", "opset17", "default"])
@pytest.mark.parametrize(("case", "params"), _VARIANTS)
def test_export_matches_onnxruntime(case, params, opset):
    graph, feeds = single_op_graph(case, params)
    if opset is not None and opset < minimum_opset(case):
        with pytest.raises(CoretuneError, match=r"node 'node' .*opset"):
            export_onnx(graph, opset)
        return
    model = export_onnx(graph, opset)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == (opset or default_opset())
    if any(graph.types[out].dtype in ONNXRUNTIME_CANNOT_RETURN for out in graph.outputs):
        return
    expected = run_reference(graph, feeds)
    actual = run_onnxruntime(model, feeds)
    for name, a, e in zip(graph.outputs, actual, expected, strict=True):
        assert_close(a, e, what=f"{case} output {name}")


# Narrow types go to the dtype and back to float32, so their values can be compared even where
# onnxruntime cannot hand them back. Where onnxruntime departs from ONNX, ONNX's own reference
# evaluator is the oracle instead:
ONNXRUNTIME_DIFFERS = {
    "float4_e2m1fn": "onnxruntime has no Cast kernel for float4",
    **dict.fromkeys(
        ("int4", "uint4", "int2", "uint2"),
        "onnxruntime rounds float -> int4/int2 to nearest; ONNX's reference "
        "evaluator truncates, as for every other float -> int cast",
    ),
}


@pytest.mark.parametrize("dtype", DTYPES)
def test_cast_to_every_dtype_and_back(dtype):
    rng = np.random.default_rng(3)
    if is_float(dtype):
        values = rng.standard_normal(64) * 3
        if dtype == "float8_e8m0fnu":  # unsigned: ONNX leaves negative values unspecified
            values = np.abs(values)
    else:  # in range: ONNX leaves out-of-range float -> int casts undefined
        info = np.iinfo(np.int8) if dtype == "bool" else ml_dtypes.iinfo(to_numpy(dtype))
        values = rng.uniform(max(info.min, -100), min(info.max, 100), 64)
    feeds = {"x": values.astype(np.float32)}
    b = GraphBuilder("cast")
    graph = b.build(b.cast(b.cast(b.input("x", (64,)), dtype=dtype), dtype="float32"))
    model = export_onnx(graph)
    if dtype in ONNXRUNTIME_DIFFERS:
        actual = ReferenceEvaluator(model).run(None, feeds)
    else:
        actual = run_onnxruntime(model, feeds)
    assert_close(actual[0], run_reference(graph, feeds)[0], rtol=0)


def test_default_opset_is_the_newest_both_onnx_and_onnxruntime_run():
    assert default_opset() == min(onnx.defs.onnx_opset_version(), ONNXRUNTIME_OPSET)
    graph, _ = single_op_graph(CASES[0])
    for bad in (12, onnx.defs.onnx_opset_version() + 1, "17", True):
        with pytest.raises(CoretuneError, match="opset must be an integer"):
            export_onnx(graph, bad)


def test_integer_divide_truncates_like_the_reference():
    b = GraphBuilder("div")
    a = b.input("a", (4,), "int32")
    g = b.build(b.divide(a, b.param("d", np.array([2, -2, -2, 2], np.int32))))
    feeds = {"a": np.array([-7, 7, -7, 7], np.int32)}
    assert_close(run_onnxruntime(export_onnx(g), feeds)[0], run_reference(g, feeds)[0])
    assert run_reference(g, feeds)[0].tolist() == [-3, -3, 3, 3]


# ---- the forms the importer canonicalises back -----------------------------------------------
def test_dense_forms():
    gemm = export_onnx(single_op_graph(OpCase("dense", (f(7, 13), f(5, 13), f(5))), True)[0])
    assert op_types(gemm) == ["Gemm"]
    assert onnx.helper.get_attribute_value(gemm.graph.node[0].attribute[0]) == 1  # transB
    graph, _ = single_op_graph(OpCase("dense", (f(2, 3, 13), f(5, 13), f(5))), params=True)
    model = export_onnx(graph)
    assert op_types(model) == ["MatMul", "Add"]
    inits = initializers(model)
    assert "p1" not in inits, "the untransposed weight is left out: no node reads it"
    np.testing.assert_array_equal(inits[model.graph.node[0].input[1]], graph.params["p1"].T)
    model = export_onnx(single_op_graph(OpCase("dense", (f(2, 3, 13), f(5, 13))))[0])
    assert op_types(model) == ["Transpose", "MatMul"]


def test_a_shared_weight_is_transposed_once():
    b = GraphBuilder("shared")
    x = b.input("x", (2, 3, 4))
    w = b.param("w", np.arange(16, dtype=np.float32).reshape(4, 4))
    model = export_onnx(b.build(b.dense(b.dense(x, w), w)))
    assert sorted(initializers(model)) == ["w_transposed"]


def test_rsqrt_is_reciprocal_of_sqrt():
    model = export_onnx(single_op_graph(OpCase("rsqrt", (f(3),)))[0])
    assert op_types(model) == ["Sqrt", "Reciprocal"]
    assert model.graph.node[1].input[0] == model.graph.node[0].output[0]


def test_clip_bounds_are_constant_inputs_absent_ones_empty():
    model = export_onnx(single_op_graph(OpCase("clip", (f(3),), {"a_max": 0.5}))[0])
    _, low, high = model.graph.node[0].input
    assert low == "" and initializers(model)[high] == np.float32(0.5)


@pytest.mark.parametrize(
    ("dtype", "opset", "saturate"),
    [
        ("float8_e4m3fn", 19, 1),
        ("float8_e4m3fn", None, 1),
        ("float16", 19, None),
        ("int8", None, None),
    ],
)
def test_cast_writes_saturate_only_for_float8(dtype, opset, saturate):
    model = export_onnx(single_op_graph(OpCase("cast", (f(3),), {"dtype": dtype}))[0], opset)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert attrs.get("saturate") == saturate


@pytest.mark.parametrize(
    ("op", "opset", "axes_input"),
    [
        ("sum", 13, True),
        ("mean", 17, False),
        ("mean", 18, True),
        ("max", 17, False),
        ("prod", None, True),
    ],
)
def test_reduction_axes_move_to_an_input_with_the_opset(op, opset, axes_input):
    case = OpCase(op, (f(3, 4),), {"axes": (1,)})
    node = export_onnx(single_op_graph(case)[0], opset).graph.node[0]
    assert (len(node.input) == 2) == axes_input
    assert any(a.name == "axes" for a in node.attribute) != axes_input


def test_layer_norm_is_decomposed_before_opset_17():
    graph, _ = single_op_graph(OpCase("layer_norm", (f(3, 13), f(13), f(13))))
    assert op_types(export_onnx(graph, 17)) == ["LayerNormalization"]
    assert "LayerNormalization" not in op_types(export_onnx(graph, 16))


def test_resize_uses_sizes_unless_the_scale_differs():
    def resize_inputs(**attrs):
        model = export_onnx(single_op_graph(resize(**attrs))[0])
        return [name.rsplit("/", 1)[-1] for name in model.graph.node[0].input]

    assert resize_inputs(size=(14, 26)) == ["x0", "", "", "sizes"]
    assert resize_inputs(size=(14, 26), scale=(2.0, 2.0)) == ["x0", "", "", "sizes"]
    assert resize_inputs(size=(17, 32), scale=(2.5, 2.5)) == ["x0", "", "scales"]


def test_reshape_with_a_zero_size_sets_allowzero():
    model = export_onnx(single_op_graph(OpCase("reshape", (f(2, 0, 3),), {"newshape": (0, 6)}))[0])
    assert [(a.name, a.i) for a in model.graph.node[0].attribute] == [("allowzero", 1)]


# ---- names ---------------------------------------------------------------------------------
def test_names_pass_through_unchanged():
    b = GraphBuilder("names keep")
    x = b.input("input:0", (2, 3))
    w = b.param("layer 1/weight", np.ones((4, 3), np.float32))
    h = b.op("dense", x, w, name="layer 1/dense")
    parts = b.op("split", h, sizes=(1, 3), axis=1, name="odd::split")
    model = export_onnx(b.build(*parts))
    assert model.graph.name == "names keep"
    assert [v.name for v in model.graph.input] == ["input:0"]
    assert "layer 1/weight" in initializers(model)
    assert [n.name for n in model.graph.node] == ["layer 1/dense", "odd::split"]
    assert [v.name for v in model.graph.output] == ["odd::split:0", "odd::split:1"]


def test_outputs_onnx_cannot_name_directly_go_through_identity():
    b = GraphBuilder("outs")
    x = b.input("x", (2, 3))
    w = b.param("w", np.full((2, 3), 0.5, np.float32))
    y = b.add(x, w)
    graph = b.build(x, w, y, y)
    model = export_onnx(graph)
    assert [v.name for v in model.graph.output] == ["x_1", "w_1", y.name, f"{y.name}_1"]
    assert op_types(model) == ["Add", "Identity", "Identity", "Identity"]
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3) + 1}
    for a, e in zip(run_onnxruntime(model, feeds), run_reference(graph, feeds), strict=True):
        assert_close(a, e)


# ---- what ONNX cannot express --------------------------------------------------------------
def test_a_missing_emitter_names_the_node(monkeypatch):
    monkeypatch.delitem(EMITTERS, "relu")
    with pytest.raises(CoretuneError, match=r"node 'node' \(relu\): no ONNX form"):
        export_onnx(single_op_graph(OpCase("relu", (f(3),)))[0])


def test_a_scale_onnx_cannot_pair_with_the_size_names_the_node():
    case = resize(size=(14, 26), scale=(2.5, 2.5))
    with pytest.raises(CoretuneError, match=r"node 'node' \(resize2d\).*scales give size"):
        export_onnx(single_op_graph(case)[0])


def test_a_type_newer_than_the_opset_names_the_node():
    graph, _ = single_op_graph(OpCase("cast", (f(3),), {"dtype": "float4_e2m1fn"}), name="c")
    with pytest.raises(
        CoretuneError,
        match=r"node 'c' \(cast\): dtype float4_e2m1fn needs "
        r"ONNX opset >= 23, exporting at 19",
    ):
        export_onnx(graph, 19)
    onnx.checker.check_model(export_onnx(graph, 23), full_check=True)


def test_what_the_onnx_checker_rejects_names_the_node():
    graph, _ = single_op_graph(OpCase("add", (((3,), "bool"), ((3,), "bool"))))  # Add has no bool
    with pytest.raises(CoretuneError, match=r"no valid ONNX form at opset \d+.*node name: node"):
        export_onnx(graph)
