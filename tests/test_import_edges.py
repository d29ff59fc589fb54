"""Importer edges (issue 17, item 7): malformed attributes, zero-size tensors, wrong ranks,
declared types the graph does not compute, unknown auto_pad strings. Each error is coretune's
own and names every offending node (or tensor) at once."""

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from coretune.errors import GraphError, ModelLoadError, UnsupportedModelError
from coretune.graph import run_reference
from coretune.graph.exchange.importer import import_onnx

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def _info(name, shape, elem_type=FLOAT):
    if shape is None:
        return helper.make_empty_tensor_value_info(name)
    return helper.make_tensor_value_info(name, elem_type, shape)


def _model(nodes, inputs, outputs, inits=None, opset=17, value_info=()):
    """inputs/outputs: {name: shape} float32 (an output may be (shape, elem_type));
    inits: {name: array}."""
    outs = [
        _info(n, *(s if isinstance(s, tuple) and len(s) == 2 and isinstance(s[1], int) else (s,)))
        for n, s in outputs.items()
    ]
    graph = helper.make_graph(
        nodes,
        "edges",
        [_info(n, s) for n, s in inputs.items()],
        outs,
        initializer=[numpy_helper.from_array(np.asarray(a), n) for n, a in (inits or {}).items()],
        value_info=list(value_info),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if any(s is None for s in outputs.values()):
        model = onnx.shape_inference.infer_shapes(model)
        for out in model.graph.output:  # the checker wants a type and a shape
            tensor_type = out.type.tensor_type
            if not tensor_type.HasField("shape"):
                tensor_type.elem_type = tensor_type.elem_type or FLOAT
                tensor_type.shape.SetInParent()
    return model


def _ones(*shape):
    return np.ones(shape, np.float32)


def _raw_attr(node, name, value, attr_type):
    """Set an attribute of any type, bypassing make_node's inference (e.g. an empty list)."""
    node.attribute.append(helper.make_attribute(name, value, attr_type=attr_type))
    return node


# ---- 1. a scalar where a list is expected: named per node, every node at once ---------------
def test_scalar_attributes_where_lists_are_expected_name_every_node():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="dilated", dilations=3),
        helper.make_node("MaxPool", ["a"], ["b"], name="pooled", kernel_shape=1.5),
        helper.make_node("Conv", ["b", "w2"], ["c"], name="strided", strides=2.0),
        helper.make_node("Conv", ["c", "w2"], ["y"], name="padded", pads="abc"),
    ]
    model = _model(
        nodes, {"x": [1, 3, 16, 16]}, {"y": None}, {"w": _ones(4, 3, 3, 3), "w2": _ones(4, 4, 1, 1)}
    )
    with pytest.raises(ModelLoadError) as info:
        import_onnx(model)
    message = str(info.value)
    for node, op, attr in [
        ("dilated", "Conv", "dilations"),
        ("pooled", "MaxPool", "kernel_shape"),
        ("strided", "Conv", "strides"),
        ("padded", "Conv", "pads"),
    ]:
        assert f"'{node}'" in message and op in message and f"'{attr}'" in message, message
    assert "TypeError" not in message and "has no len" not in message


@pytest.mark.parametrize(
    "op, attrs",
    [
        ("Conv", {"dilations": 3}),
        ("Conv", {"kernel_shape": 1.5}),
        ("Conv", {"strides": 2.0}),
        ("Conv", {"pads": "abc"}),
        ("ConvTranspose", {"output_padding": 1}),
        ("AveragePool", {"kernel_shape": [2, 2], "strides": 1}),
        ("MaxPool", {"kernel_shape": [2, 2], "ceil_mode": [1]}),
        ("Gemm", {"alpha": "two"}),
        ("Softmax", {"axis": 1.0}),
        ("Transpose", {"perm": 1}),
    ],
)
def test_an_attribute_of_the_wrong_type_names_its_node(op, attrs):
    inputs = {
        "Conv": (["x", "w"], {"w": _ones(3, 3, 1, 1)}),
        "ConvTranspose": (["x", "w"], {"w": _ones(3, 3, 1, 1)}),
        "Gemm": (["f", "wg"], {"wg": _ones(3, 3)}),
    }.get(op, (["x"], {}))
    names, inits = inputs
    shapes = {"x": [1, 3, 4, 4]} if "f" not in names else {"f": [2, 3]}
    node = helper.make_node(op, names, ["y"], name="the_node", **attrs)
    with pytest.raises(ModelLoadError, match=f"{op}.*'the_node'"):
        import_onnx(_model([node], shapes, {"y": None}, inits))


def test_an_empty_attribute_list_is_a_named_error():
    node = _raw_attr(
        helper.make_node("Conv", ["x", "w"], ["y"], name="no_dilations"),
        "dilations",
        [],
        AttributeProto.INTS,
    )
    model = _model([node], {"x": [1, 3, 4, 4]}, {"y": None}, {"w": _ones(3, 3, 1, 1)})
    with pytest.raises(GraphError, match="'no_dilations' \\(Conv\\).*dilations"):
        import_onnx(model)


def test_window_attributes_that_disagree_name_every_node():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="c", kernel_shape=[1, 1], strides=[1] * 3),
        helper.make_node("MaxPool", ["a"], ["b"], name="p", kernel_shape=[2, 2], pads=[1, 1, 1]),
        helper.make_node("MaxPool", ["b"], ["c"], name="d", kernel_shape=[2, 2], dilations=[1]),
        helper.make_node("AveragePool", ["c"], ["y"], name="q", kernel_shape=[2, 2], pads=[0, 1]),
    ]
    model = _model(nodes, {"x": [1, 3, 8, 8]}, {"y": None}, {"w": _ones(3, 3, 1, 1)})
    with pytest.raises(ModelLoadError) as info:
        import_onnx(model)
    message = str(info.value)
    assert "different numbers of spatial axes" in message and "node 'c'" in message, message
    assert "odd count" in message and "node 'p'" in message, message
    assert "'d'" in message and "'q'" in message, message
    assert "3-D" not in message


def test_conversion_errors_name_every_node_at_once():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="bad_product"),
        helper.make_node("Relu", ["a"], ["b"], name="after_bad"),  # not converted: input failed
        helper.make_node("Softmax", ["x"], ["c"], name="bad_axis", axis=7),
        helper.make_node("Relu", ["x"], ["d"], name="fine"),
    ]
    model = _model(nodes, {"x": [2, 3]}, {"b": None, "c": None, "d": None}, {"w": _ones(4, 5)})
    with pytest.raises(GraphError) as info:
        import_onnx(model)
    message = str(info.value)
    assert "'bad_product' (MatMul)" in message and "'bad_axis' (Softmax)" in message, message
    assert "after_bad" not in message and "fine" not in message


# ---- 2. zero-size tensors: evaluated at import, so no kernel ever sees one -------------------
def _zero_batch_cnn():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "bias"], ["y"], name="fc", transB=1),
    ]
    inits = {"w": _ones(4, 3, 3, 3), "fc": _ones(10, 4 * 8 * 8), "bias": _ones(10)}
    return _model(nodes, {"x": [0, 3, 8, 8]}, {"y": [0, 10]}, inits)


def _no_kernel_touches_an_empty_tensor(graph):
    empty = [
        name
        for node in graph.nodes
        for name in (*node.inputs, *node.outputs)
        if 0 in graph.types[name].shape
    ]
    assert not empty, f"zero-size tensors reach nodes: {empty}\n{graph}"


def test_a_zero_size_batch_imports_without_empty_kernels():
    graph = import_onnx(_zero_batch_cnn())
    _no_kernel_touches_an_empty_tensor(graph)
    (y,) = run_reference(graph, {"x": np.zeros((0, 3, 8, 8), np.float32)})
    assert y.shape == (0, 10) and y.dtype == np.float32


def test_a_zero_size_batch_compiles_and_runs(device):
    from coretune.module import compile as compile_module

    module = compile_module(_zero_batch_cnn(), device=device)
    (y,) = module.run(x=np.zeros((0, 3, 8, 8), np.float32))
    assert y.shape == (0, 10)


@pytest.mark.parametrize(
    "case",
    ["dense_k0", "matmul_m0", "concat_empty_part", "resize_zero_axis", "softmax_zero_rows"],
)
def test_zero_size_operands_fold_and_match_onnx(case):
    nodes, inputs, inits, feeds = {
        "dense_k0": (
            [helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
            {"x": [2, 0]},
            {"w": _ones(0, 4), "b": np.arange(4, dtype=np.float32)},
            {"x": np.zeros((2, 0), np.float32)},
        ),
        "matmul_m0": (
            [helper.make_node("MatMul", ["x", "z"], ["y"])],
            {"x": [0, 8], "z": [8, 5]},
            {},
            {"x": np.zeros((0, 8), np.float32), "z": _ones(8, 5)},
        ),
        "concat_empty_part": (
            [helper.make_node("Concat", ["x", "e", "x"], ["y"], axis=1)],
            {"x": [4, 3], "e": [4, 0]},
            {},
            {"x": np.arange(12, dtype=np.float32).reshape(4, 3), "e": np.zeros((4, 0), "f4")},
        ),
        "resize_zero_axis": (
            [helper.make_node("Resize", ["x", "", "s"], ["y"])],
            {"x": [1, 0, 4, 4]},
            {"s": np.array([1, 1, 2, 2], np.float32)},
            {"x": np.zeros((1, 0, 4, 4), np.float32)},
        ),
        "softmax_zero_rows": (
            [helper.make_node("Softmax", ["x"], ["y"])],
            {"x": [0, 8]},
            {},
            {"x": np.zeros((0, 8), np.float32)},
        ),
    }[case]
    model = onnx.shape_inference.infer_shapes(_model(nodes, inputs, {"y": None}, inits))
    graph = import_onnx(model)
    _no_kernel_touches_an_empty_tensor(graph)
    expected = ReferenceEvaluator(model).run(None, feeds)
    for got, want in zip(run_reference(graph, feeds), expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want)


def test_a_split_makes_only_its_non_empty_parts():
    node = helper.make_node("Split", ["x", "sizes"], ["a", "b", "c"], axis=1)
    sizes = {"sizes": np.array([2, 0, 4], np.int64)}
    model = _model([node], {"x": [2, 6]}, {"a": [2, 2], "b": [2, 0], "c": [2, 4]}, sizes)
    graph = import_onnx(model)
    _no_kernel_touches_an_empty_tensor(graph)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    a, b, c = run_reference(graph, {"x": x})
    np.testing.assert_array_equal(a, x[:, :2])
    np.testing.assert_array_equal(c, x[:, 2:])
    assert b.shape == (2, 0)


def test_an_empty_input_passed_through_is_an_empty_output():
    model = _model([helper.make_node("Identity", ["x"], ["y"])], {"x": [0, 4]}, {"y": [0, 4]})
    graph = import_onnx(model)
    assert not graph.nodes
    (y,) = run_reference(graph, {"x": np.zeros((0, 4), np.float32)})
    assert y.shape == (0, 4)


def test_an_empty_tensor_a_kernel_would_read_is_refused_by_name():
    # Gather from an empty axis with indices known only at run time: no value at import.
    node = helper.make_node("Gather", ["data", "idx"], ["y"], name="pick")
    model = _model([node], {"data": [0, 3]}, {"y": ["n", 3]})
    model.graph.input.append(helper.make_tensor_value_info("idx", INT64, [2]))
    with pytest.raises(UnsupportedModelError, match="zero-size.*'data' float32\\[0, 3\\].*'pick'"):
        import_onnx(model)


# ---- 3. ranks the ONNX op does not allow -----------------------------------------------------
@pytest.mark.parametrize(
    "a_shape, b_shape, attrs",
    [
        ([64], [64, 10], {}),
        ([2, 2, 64], [64, 10], {}),
        ([2, 64], [64], {}),
        ([2, 64], [1, 10, 64], {"transB": 1}),
    ],
)
def test_gemm_needs_rank_2_operands(a_shape, b_shape, attrs):
    node = helper.make_node("Gemm", ["a", "b"], ["y"], name="fc", **attrs)
    model = _model([node], {"a": a_shape}, {"y": ["m", "n"]}, {"b": _ones(*b_shape)})
    with pytest.raises(GraphError, match="'fc' \\(Gemm\\).*rank 2"):
        import_onnx(model)


@pytest.mark.parametrize("c_shape", [(2, 4, 10), (3, 10), (4, 3)])
def test_gemm_needs_a_bias_that_broadcasts_to_the_result(c_shape):
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], name="fc")
    inits = {"b": _ones(64, 10), "c": _ones(*c_shape)}
    model = _model([node], {"a": [4, 64]}, {"y": None}, inits)
    with pytest.raises(GraphError, match="'fc' \\(Gemm\\).*does not broadcast"):
        import_onnx(model)


@pytest.mark.parametrize(
    "op, x_shape, weight, attrs, needs",
    [
        ("Conv", [3, 8], (4, 3, 3, 3), {}, "rank"),
        ("Conv", [1, 3, 8, 8], (4, 3, 3), {}, "rank"),
        ("Conv", [1, 3, 8], (4, 3, 3, 3), {}, "rank"),
        ("Conv", [1, 3, 8, 8], (4, 3, 3, 3), {"kernel_shape": [2, 2]}, "kernel_shape"),
        ("Conv", [1, 3, 8, 8], (4, 3, 3, 3), {"strides": [2]}, "strides"),
        ("Conv", [1, 3, 8, 8], (4, 3, 3, 3), {"pads": [1, 1]}, "pads"),
        ("ConvTranspose", [3, 8], (3, 4, 3, 3), {}, "rank"),
        ("ConvTranspose", [1, 3, 8, 8], (3, 4, 3, 3), {"output_padding": [1]}, "output_padding"),
        ("MaxPool", [8, 8], None, {"kernel_shape": [2, 2]}, "rank"),
        ("MaxPool", [1, 1, 8, 8], None, {"kernel_shape": [2]}, "kernel_shape"),
        ("AveragePool", [1, 1, 8, 8], None, {"kernel_shape": [2], "pads": [0, 1]}, "kernel_shape"),
        ("GlobalAveragePool", [3, 8], None, {}, "rank"),
        ("GlobalMaxPool", [8], None, {}, "rank"),
    ],
)
def test_spatial_ops_check_ranks_and_attribute_lengths(op, x_shape, weight, attrs, needs):
    inputs, inits = (["x"], {}) if weight is None else (["x", "w"], {"w": _ones(*weight)})
    node = helper.make_node(op, inputs, ["y"], name="spatial", **attrs)
    model = _model([node], {"x": x_shape}, {"y": None}, inits)
    with pytest.raises(GraphError, match=f"'spatial' \\({op}\\).*{needs}"):
        import_onnx(model)


# ---- 4. declared output (and value_info) types must be what the graph computes -------------
def _relu(declared, value_info=()):
    nodes = [
        helper.make_node("Relu", ["x"], ["h"], name="first"),
        helper.make_node("Relu", ["h"], ["y"], name="second"),
    ]
    return _model(nodes, {"x": [2, 3]}, {"y": declared}, value_info=value_info)


@pytest.mark.parametrize(
    "declared, computed",
    [
        (([2, 3], INT64), "int64[2, 3]"),
        ([3, 2], "float32[3, 2]"),
        ([2, 3, 1], "float32[2, 3, 1]"),
        ([6], "float32[6]"),
        (["n", 4], "float32[n, 4]"),
    ],
)
def test_a_declared_output_type_the_graph_does_not_compute_is_refused(declared, computed):
    with pytest.raises(ModelLoadError) as info:
        import_onnx(_relu(declared))
    message = str(info.value)
    assert "'y'" in message and computed in message and "float32[2, 3]" in message, message


@pytest.mark.parametrize("declared", [[2, 3], ["n", 3], ["n", "m"], [None, 3], None])
def test_symbolic_or_unknown_declared_dims_are_fine(declared):
    graph = import_onnx(_relu(declared))
    assert graph.type_of("y").shape == (2, 3)


def test_a_declared_value_info_the_graph_does_not_compute_is_refused():
    model = _relu([2, 3], value_info=[_info("h", [2, 4])])
    with pytest.raises(ModelLoadError, match="'h'.*float32\\[2, 4\\].*float32\\[2, 3\\]"):
        import_onnx(model)
    assert import_onnx(_relu([2, 3], value_info=[_info("h", ["a", 3])])).type_of("y")


def test_every_declared_mismatch_is_named_at_once():
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("Shape", ["x"], ["s"]),
    ]
    model = _model(nodes, {"x": [2, 3]}, {"y": [2, 4], "s": ([2], FLOAT)})
    with pytest.raises(ModelLoadError) as info:
        import_onnx(model)
    message = str(info.value)
    assert "'y'" in message and "'s'" in message and "int64[2]" in message, message


# ---- 5. unknown auto_pad (and other enumerated strings) ------------------------------------
def test_an_unknown_auto_pad_names_every_node():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="conv", auto_pad="SAME"),
        helper.make_node("ConvTranspose", ["a", "wt"], ["b"], name="deconv", auto_pad="same_upper"),
        helper.make_node(
            "MaxPool", ["b"], ["c"], name="maxpool", kernel_shape=[2, 2], auto_pad="X"
        ),
        helper.make_node(
            "AveragePool", ["c"], ["y"], name="avgpool", kernel_shape=[1, 1], auto_pad=""
        ),
    ]
    inits = {"w": _ones(3, 3, 3, 3), "wt": _ones(3, 3, 1, 1)}
    model = _model(nodes, {"x": [1, 3, 8, 8]}, {"y": None}, inits)
    with pytest.raises(ModelLoadError) as info:
        import_onnx(model)
    message = str(info.value)
    for name in ("conv", "deconv", "maxpool", "avgpool"):
        assert f"'{name}'" in message, message
    assert "NOTSET, SAME_UPPER, SAME_LOWER, VALID" in message


@pytest.mark.parametrize("auto_pad", ["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
def test_every_valid_auto_pad_imports(auto_pad):
    node = helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=auto_pad)
    model = _model([node], {"x": [1, 3, 8, 8]}, {"y": None}, {"w": _ones(3, 3, 3, 3)})
    assert import_onnx(model).type_of("y").shape[:2] == (1, 3)


def test_an_unknown_resize_aspect_policy_is_refused():
    node = helper.make_node(
        "Resize", ["x", "", "", "sizes"], ["y"], name="grow", keep_aspect_ratio_policy="fit"
    )
    sizes = {"sizes": np.array([1, 1, 8, 6])}
    model = _model([node], {"x": [1, 1, 4, 4]}, {"y": [1, 1, 8, 6]}, sizes, opset=18)
    with pytest.raises(ModelLoadError, match="keep_aspect_ratio_policy='fit'.*'grow'"):
        import_onnx(model)
