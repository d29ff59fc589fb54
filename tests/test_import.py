"""The ONNX importer: clear errors for bad models, constant folding, canonical core forms."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from coretune import export_onnx
from coretune.errors import GraphError, InputError, ModelLoadError, UnsupportedModelError
from coretune.graph import GraphBuilder, run_reference
from coretune.graph.exchange.importer import MAX_OPSET, constant_inputs, import_onnx

from .onnx_models import MODELS, run_onnxruntime

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def make_model(nodes, inputs, outputs, inits=None, opset=17):
    """inputs/outputs: {name: shape} of float32 tensors, an output shape None is left to ONNX's
    shape inference; inits: {name: array}."""

    def info(name, shape):
        if shape is None:
            return helper.make_empty_tensor_value_info(name)
        return helper.make_tensor_value_info(name, FLOAT, shape)

    graph = helper.make_graph(
        nodes,
        "m",
        [info(*i) for i in inputs.items()],
        [info(*o) for o in outputs.items()],
        initializer=[numpy_helper.from_array(np.asarray(a), n) for n, a in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def check(model, feeds, **import_args):
    """Import, run on the reference executor, compare with ONNX's reference evaluator."""
    graph = import_onnx(model, **import_args)
    expected = ReferenceEvaluator(model).run(None, feeds)
    for got, want in zip(run_reference(graph, feeds), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    return graph


def ops(graph):
    return [n.op for n in graph.nodes]


# ---- bad input ------------------------------------------------------------------------------
def _weighty_model():
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    return make_model([node], {"x": [1, 64]}, {"y": [1, 64]}, {"w": rand(64, 64)})


def test_truncated_file_is_a_load_error(tmp_path):
    data = _weighty_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="cut.onnx"):
        import_onnx(path)
    with pytest.raises(ModelLoadError):
        import_onnx(data[: len(data) // 2])


def test_non_onnx_file_is_a_load_error(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("these are my notes, not a model\n" * 20)
    with pytest.raises(ModelLoadError, match="notes.onnx"):
        import_onnx(str(path))


def test_missing_file_and_wrong_argument_are_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot read"):
        import_onnx(tmp_path / "absent.onnx")
    with pytest.raises(ModelLoadError, match="int"):
        import_onnx(42)


def test_unknown_ops_are_reported_together_with_every_node_and_the_opset():
    nodes = [
        helper.make_node("FooOp", ["x"], ["a"], name="foo_first"),
        helper.make_node("Relu", ["a"], ["b"], name="fine"),
        helper.make_node("BarOp", ["b"], ["c"], name="bar_only"),
        helper.make_node("FooOp", ["c"], ["y"], name="foo_second"),
    ]
    model = make_model(nodes, {"x": [2]}, {"y": [2]}, opset=17)
    with pytest.raises(UnsupportedModelError) as info:
        import_onnx(model)
    message = str(info.value)
    assert "opset 17" in message
    assert "FooOp: nodes 'foo_first', 'foo_second'" in message
    assert "BarOp: node 'bar_only'" in message
    assert "fine" not in message


def test_unsupported_attribute_values_are_reported_like_unknown_ops():
    nodes = [
        helper.make_node(
            "Resize", ["x", "", "scales"], ["a"], name="smooth", antialias=1, mode="linear"
        ),
        helper.make_node("MaxPool", ["a"], ["y", "idx"], name="pool", kernel_shape=[2, 2]),
    ]
    model = make_model(
        nodes,
        {"x": [1, 1, 4, 4]},
        {"y": None, "idx": None},
        {"scales": np.array([1, 1, 2, 2], np.float32)},
        opset=18,  # antialias is an attribute of Resize-18
    )
    with pytest.raises(UnsupportedModelError, match="antialias=1: node 'smooth'") as info:
        import_onnx(model)
    assert "MaxPool with the Indices output: node 'pool'" in str(info.value)


def test_3d_convolution_is_unsupported():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv3d")
    model = make_model([node], {"x": [1, 1, 4, 4, 4]}, {"y": None}, {"w": rand(1, 1, 2, 2, 2)})
    with pytest.raises(UnsupportedModelError, match="3-D data: node 'conv3d'"):
        import_onnx(model)


def test_incompatible_shapes_name_the_node():
    node = helper.make_node("MatMul", ["x", "y"], ["z"], name="bad_product")
    model = make_model([node], {"x": [2, 3], "y": [4, 5]}, {"z": [2, 5]})
    with pytest.raises(GraphError, match="'bad_product' \\(MatMul\\).*inner dimensions"):
        import_onnx(model)


def test_a_shape_computed_at_run_time_names_the_node():
    nodes = [
        helper.make_node("Cast", ["s"], ["shape"], to=INT64),
        helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape_it"),
    ]
    model = make_model(nodes, {"x": [2, 3], "s": [2]}, {"y": None})
    with pytest.raises(GraphError, match="'reshape_it'.*must be a constant"):
        import_onnx(model)
    assert constant_inputs(model) == {"s"}
    graph = import_onnx(model, input_values={"s": np.array([3, 2], np.float32)})
    assert graph.type_of("y").shape == (3, 2)


def test_opset_newer_than_onnx_knows_is_unsupported():
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])], {"x": [2]}, {"y": [2]}, opset=MAX_OPSET + 1
    )
    with pytest.raises(UnsupportedModelError, match=f"opset {MAX_OPSET + 1}"):
        import_onnx(model)


def test_old_opset_is_upgraded_first():
    # Opset 10's Clip takes its bounds as attributes; opset 13 as inputs.
    node = helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.5)
    model = make_model([node], {"x": [3, 4]}, {"y": [3, 4]}, opset=10)
    graph = import_onnx(model)
    assert ops(graph) == ["clip"]
    np.testing.assert_array_equal(
        run_reference(graph, {"x": rand(3, 4)})[0], np.clip(rand(3, 4), -0.5, 0.5)
    )


# ---- input shapes ---------------------------------------------------------------------------
def _symbolic_model():
    node = helper.make_node("Relu", ["x"], ["y"])
    return make_model([node], {"x": ["batch", 3]}, {"y": ["batch", 3]})


def test_symbolic_dims_need_input_shapes():
    with pytest.raises(InputError, match="'x': dimension 0 \\(batch\\).*input_shapes"):
        import_onnx(_symbolic_model())


def test_input_shapes_fill_symbolic_dims():
    graph = import_onnx(_symbolic_model(), input_shapes={"x": (5, 3)})
    assert graph.inputs["x"].shape == (5, 3)
    with pytest.raises(InputError, match="declares"):
        import_onnx(_symbolic_model(), input_shapes={"x": (5, 4)})
    with pytest.raises(InputError, match="unknown input"):
        import_onnx(_symbolic_model(), input_shapes={"z": (1,)})


def test_graph_input_with_an_initializer_is_a_param_unless_given_a_shape():
    model = make_model(
        [helper.make_node("Add", ["x", "b"], ["y"])],
        {"x": [2], "b": [2]},
        {"y": [2]},
        {"b": np.ones(2, np.float32)},
    )
    assert set(import_onnx(model).params) == {"b"}
    overridden = import_onnx(model, input_shapes={"b": (2,)})
    assert set(overridden.inputs) == {"x", "b"} and not overridden.params


# ---- constant folding -----------------------------------------------------------------------
def test_shape_gather_concat_reshape_folds_away():
    inits = {
        "zero": np.array(0, np.int64),
        "axes": np.array([0], np.int64),
        "rest": np.array([-1], np.int64),
    }
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="flatten_it"),
    ]
    model = make_model(nodes, {"x": ["batch", 3, 4]}, {"y": ["batch", 12]}, inits)
    graph = check(model, {"x": rand(2, 3, 4)}, input_shapes={"x": (2, 3, 4)})
    assert ops(graph) == ["reshape"] and not graph.params
    assert graph.nodes[0].name == "flatten_it" and graph.nodes[0].attrs["newshape"] == (2, -1)


def test_constant_subgraphs_become_params():
    nodes = [
        helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0]),
        helper.make_node("Exp", ["c"], ["e"]),
        helper.make_node("Mul", ["x", "e"], ["y"]),
        helper.make_node("Neg", ["c"], ["folded_out"]),
    ]
    graph = check(make_model(nodes, {"x": [2]}, {"y": [2], "folded_out": [2]}), {"x": rand(2)})
    assert ops(graph) == ["multiply"]
    assert set(graph.params) == {"e", "folded_out"}  # a folded graph output keeps its name


# ---- canonicalisation -----------------------------------------------------------------------
def test_matmul_add_with_constants_becomes_one_biased_dense():
    w, b = rand(4, 3), rand(3, seed=1)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["p"]),
        helper.make_node("Add", ["p", "b"], ["y"], name="fc"),
    ]
    graph = check(
        make_model(nodes, {"x": [2, 5, 4]}, {"y": None}, {"w": w, "b": b}), {"x": rand(2, 5, 4)}
    )
    assert ops(graph) == ["dense"] and graph.nodes[0].outputs == ["y"]
    (weight,) = [a for a in graph.params.values() if a.shape == (3, 4)]
    np.testing.assert_array_equal(weight, w.T)


def test_bias_stays_separate_when_the_product_is_used_twice():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["p"]),
        helper.make_node("Add", ["p", "b"], ["y"]),
        helper.make_node("Relu", ["p"], ["z"]),
    ]
    model = make_model(
        nodes, {"x": [2, 4]}, {"y": None, "z": None}, {"w": rand(4, 3), "b": rand(3)}
    )
    assert sorted(ops(check(model, {"x": rand(2, 4)}))) == ["add", "dense", "relu"]


def test_reciprocal_of_sqrt_becomes_rsqrt():
    nodes = [helper.make_node("Sqrt", ["x"], ["s"]), helper.make_node("Reciprocal", ["s"], ["y"])]
    graph = check(make_model(nodes, {"x": [6]}, {"y": [6]}), {"x": np.abs(rand(6)) + 0.1})
    assert ops(graph) == ["rsqrt"]


@pytest.mark.parametrize(
    "attrs, c_shape",
    [
        ({}, None),
        ({"transB": 1}, (3,)),
        ({"transA": 1, "alpha": 0.5}, (1, 3)),
        ({"beta": 2.0}, ()),
        ({"alpha": 2.0, "beta": 0.5}, (4, 3)),
        ({}, (4, 1)),
    ],
)
def test_gemm_becomes_dense(attrs, c_shape):
    a = rand(5, 4) if attrs.get("transA") else rand(4, 5)
    b = rand(3, 5, seed=1) if attrs.get("transB") else rand(5, 3, seed=1)
    inits = {"b": b} | ({} if c_shape is None else {"c": rand(*c_shape, seed=2)})
    node = helper.make_node("Gemm", ["a", "b"] + ([] if c_shape is None else ["c"]), ["y"], **attrs)
    graph = check(make_model([node], {"a": list(a.shape)}, {"y": [4, 3]}, inits), {"a": a})
    assert "dense" in ops(graph) and "matmul" not in ops(graph)


@pytest.mark.parametrize(
    "op_type, attrs",
    [
        ("Gelu", {}),
        ("Gelu", {"approximate": "tanh"}),
        ("HardSwish", {}),
        ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
        ("Reciprocal", {}),
    ],
)
def test_composite_activations_are_built_from_core_ops(op_type, attrs):
    node = helper.make_node(op_type, ["x"], ["y"], **attrs)
    model = make_model([node], {"x": [3, 8]}, {"y": [3, 8]}, opset=20)
    check(model, {"x": rand(3, 8) * 4})


def test_identity_and_dropout_disappear_and_a_dropout_mask_is_constant():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Identity", ["r"], ["i"]),
        helper.make_node("Dropout", ["i"], ["d", "mask"]),
        helper.make_node("Neg", ["d"], ["y"]),
    ]
    model = make_model(nodes, {"x": [2, 3]}, {"y": None, "mask": None})
    graph = check(model, {"x": rand(2, 3)})
    assert ops(graph) == ["relu", "negative"]
    assert graph.params["mask"].dtype == bool and graph.params["mask"].all()


def test_variadic_ops_become_chains_and_computed_clip_bounds_become_max_min():
    nodes = [
        helper.make_node("Max", ["a", "b", "c"], ["m"]),
        helper.make_node("Clip", ["m", "a", "c"], ["y"]),
    ]
    model = make_model(nodes, {"a": [4], "b": [4], "c": [4]}, {"y": [4]})
    graph = check(model, {k: rand(4, seed=i) for i, k in enumerate("abc")})
    assert ops(graph) == ["maximum", "maximum", "maximum", "minimum"]


def test_1d_conv_and_pool_run_as_2d_ops():
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 2], strides=[2]),
        helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2]),
    ]
    model = make_model(nodes, {"x": [2, 3, 11]}, {"y": None}, {"w": rand(4, 3, 3), "b": rand(4)})
    graph = check(model, {"x": rand(2, 3, 11)})
    assert ops(graph) == [
        "expand_dims",
        "conv2d",
        "squeeze",
        "expand_dims",
        "max_pool2d",
        "squeeze",
    ]
    assert [a.ndim for a in graph.params.values()] == [4, 1]  # the weight was folded to 2-D


def test_resize_scale_is_kept_only_when_it_is_not_size_over_input():
    def resize(scales):
        node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")
        model = make_model(
            [node], {"x": [1, 1, 4, 5]}, {"y": None}, {"scales": np.array(scales, np.float32)}
        )
        graph = check(model, {"x": rand(1, 1, 4, 5)})
        return graph.nodes[0].attrs["size"], graph.nodes[0].attrs["scale"]

    assert resize([1, 1, 2, 2]) == ((8, 10), None)
    assert resize([1, 1, 0.6, 0.6]) == ((2, 3), (float(np.float32(0.6)),) * 2)


def test_resizing_other_axes_than_the_last_two_is_unsupported():
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="grow_channels")
    model = make_model(
        [node], {"x": [1, 2, 4, 4]}, {"y": None}, {"scales": np.array([1, 2, 1, 1], np.float32)}
    )
    with pytest.raises(UnsupportedModelError, match="axes \\[1\\].*'grow_channels'"):
        import_onnx(model)


# ---- naming ---------------------------------------------------------------------------------
def test_onnx_names_are_kept_and_duplicates_made_unique():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="act"),
        helper.make_node("Neg", ["a"], ["y"], name="act"),
    ]
    graph = import_onnx(make_model(nodes, {"x": [2]}, {"y": [2]}))
    assert [(n.name, n.outputs) for n in graph.nodes] == [("act", ["a"]), ("act_1", ["y"])]


def test_outputs_keep_their_names_through_identities():
    nodes = [
        helper.make_node("Identity", ["x"], ["same"]),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Identity", ["r"], ["y"]),
    ]
    graph = check(make_model(nodes, {"x": [3]}, {"same": [3], "y": [3]}), {"x": rand(3)})
    assert graph.outputs == ["same", "y"]
    assert [n.outputs for n in graph.nodes if n.op == "relu"] == [["y"]]


# ---- whole models ---------------------------------------------------------------------------
def _exportable_graphs():
    b = GraphBuilder("net")
    x = b.input("x", (2, 8, 6, 6))
    h = b.conv2d(x, b.param("w", rand(4, 8, 3, 3)), b.param("cb", rand(4)), padding=(1, 1, 1, 1))
    h = b.max_pool2d(b.relu(h), pool_size=(2, 2), strides=(2, 2))
    h = b.flatten(b.rsqrt(b.abs(h) + 1.0))
    h = b.dense(h, b.param("fc", rand(5, 36)), b.param("fb", rand(5)))
    yield b.build(b.softmax(b.dense(h, b.param("out", rand(3, 5)))))
    b = GraphBuilder("shapes")
    x = b.input("x", (4, 6))
    parts = b.split(b.transpose(x, axes=(1, 0)), sizes=(2, 4), axis=0)
    y = b.concatenate(
        b.expand_dims(parts[0], axes=(0,)), b.reshape(parts[1], newshape=(2, 2, 4)), axis=0
    )
    yield b.build(b.mean(b.pad(y, pad_width=(0, 0, 1, 1, 0, 2)), axes=(2,), keepdims=True))


@pytest.mark.parametrize("graph", list(_exportable_graphs()), ids=lambda g: g.name)
def test_exported_graphs_import_to_the_same_core_graph(graph):
    def structure(g):
        return [(n.op, n.attrs, [g.type_of(i) for i in n.inputs]) for n in g.nodes]

    again = import_onnx(export_onnx(graph))
    assert structure(again) == structure(graph)
    for name, array in graph.params.items():
        assert any(np.array_equal(array, p) for p in again.params.values()), name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_match_onnxruntime(name):
    model, inputs = MODELS[name]()
    graph = import_onnx(model, input_shapes={k: v.shape for k, v in inputs.items()})
    for got, want in zip(run_reference(graph, inputs), run_onnxruntime(model, inputs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert not {"take", "concatenate"} & set(ops(graph))  # exporter shape code folded away
