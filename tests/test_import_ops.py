"""Importing the logic, comparison, Mod, GatherElements, Trilu, CumSum and Range nodes: the
core ops they become, an attention-mask subgraph as transformers exports it, and the errors
that name the node."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import coretune.backend
from coretune.errors import GraphError, ModelLoadError
from coretune.graph import run_reference
from coretune.graph.exchange.importer import constant_inputs, import_onnx

FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def model(nodes, inputs, outputs, inits=None, opset=17):
    """inputs/outputs: {name: (elem_type, shape)}; an output shape None is inferred."""

    def info(name, kind):
        elem, shape = kind
        if shape is None:
            return helper.make_empty_tensor_value_info(name)
        return helper.make_tensor_value_info(name, elem, shape)

    graph = helper.make_graph(
        nodes,
        "m",
        [info(*i) for i in inputs.items()],
        [info(*o) for o in outputs.items()],
        initializer=[numpy_helper.from_array(np.asarray(a), n) for n, a in (inits or {}).items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(proto)


def check(proto, feeds):
    graph = import_onnx(proto)
    expected = ReferenceEvaluator(proto).run(None, feeds)
    for got, want in zip(run_reference(graph, feeds), expected, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    return [n.op for n in graph.nodes]


def attention_mask_model():
    """A causal mask from Range/Trilu/GreaterOrEqual, a padding mask, And/Or/Not/Xor, position
    ids by CumSum, a GatherElements of the scores and a Mod: as BERT/GPT-2 exports write them."""
    nodes = [
        helper.make_node("Range", ["zero", "seq", "one"], ["pos"]),
        helper.make_node("Unsqueeze", ["pos", "ax1"], ["rows"]),
        helper.make_node("Unsqueeze", ["pos", "ax0"], ["cols"]),
        helper.make_node("GreaterOrEqual", ["rows", "cols"], ["causal"]),
        helper.make_node("Cast", ["mask"], ["keep"], to=BOOL),
        helper.make_node("And", ["causal", "keep"], ["both"], name="and"),
        helper.make_node("LessOrEqual", ["scores", "limit"], ["low"], name="low"),
        helper.make_node("Xor", ["both", "low"], ["xor"]),
        helper.make_node("Not", ["xor"], ["not"]),
        helper.make_node("Or", ["not", "both"], ["allowed"]),
        helper.make_node("Where", ["allowed", "scores", "neg"], ["masked"]),
        helper.make_node("Trilu", ["masked", "k"], ["tri"], upper=0),
        helper.make_node("CumSum", ["mask", "axis"], ["positions"], reverse=1),
        helper.make_node("Mod", ["positions", "three"], ["wrapped"]),
        helper.make_node("GatherElements", ["tri", "wrapped"], ["y"], axis=1),
    ]
    inits = {
        "zero": np.array(0, np.int64),
        "seq": np.array(7, np.int64),
        "one": np.array(1, np.int64),
        "ax0": np.array([0], np.int64),
        "ax1": np.array([1], np.int64),
        "axis": np.array(1, np.int64),
        "limit": np.array(0.5, np.float32),
        "neg": np.array(-1e9, np.float32),
        "k": np.array(1, np.int64),
        "three": np.array(3, np.int64),
    }
    proto = model(
        nodes,
        {"mask": (INT64, [7, 7]), "scores": (FLOAT, [7, 7])},
        {"y": (FLOAT, None)},
        inits,
    )
    rng = np.random.default_rng(0)
    feeds = {
        "mask": rng.integers(0, 2, (7, 7)).astype(np.int64),
        "scores": rng.standard_normal((7, 7)).astype(np.float32),
    }
    return proto, feeds


def test_an_attention_mask_subgraph_imports_and_matches_onnx():
    proto, feeds = attention_mask_model()
    ops = check(proto, feeds)
    # Range, the causal comparison and the Unsqueezes fold to constants.
    assert "greater_equal" not in ops
    assert {"logical_and", "logical_or", "logical_xor", "logical_not", "less_equal"} <= set(ops)
    assert {"tril", "cumsum", "mod", "take_along_axis"} <= set(ops)


def test_the_attention_mask_subgraph_runs_compiled_on_the_device(backend_device):
    proto, feeds = attention_mask_model()
    (got,) = coretune.backend.prepare(proto, backend_device).run(feeds)
    (want,) = ReferenceEvaluator(proto).run(None, feeds)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("fmod", "op"), [(0, "mod"), (1, "fmod")])
def test_mod_becomes_mod_or_fmod(fmod, op):
    node = helper.make_node("Mod", ["a", "b"], ["y"], fmod=fmod)
    proto = model([node], {"a": (INT64, [7]), "b": (INT64, [7])}, {"y": (INT64, [7])})
    feeds = {"a": np.arange(-3, 4, dtype=np.int64), "b": np.array([2, -2, 3, -3, 2, -2, 5])}
    assert check(proto, feeds) == [op]


def test_float_mod_with_the_sign_of_b_needs_opset_28():
    node = helper.make_node("Mod", ["a", "b"], ["y"], name="floor_mod")
    inputs = {"a": (FLOAT, [3]), "b": (FLOAT, [3])}
    with pytest.raises(GraphError, match="'floor_mod' \\(Mod\\).*needs opset 28"):
        import_onnx(model([node], inputs, {"y": (FLOAT, [3])}, opset=17))
    assert import_onnx(model([node], inputs, {"y": (FLOAT, [3])}, opset=28)).nodes[0].op == "mod"


def test_an_fmod_onnx_does_not_define_is_malformed():
    node = helper.make_node("Mod", ["a", "b"], ["y"], name="odd", fmod=2)
    proto = model([node], {"a": (INT64, [3]), "b": (INT64, [3])}, {"y": (INT64, [3])})
    with pytest.raises(ModelLoadError, match="fmod=2.*'odd'"):
        import_onnx(proto)


def test_range_of_constants_folds_and_a_computed_bound_names_the_node():
    nodes = [
        helper.make_node("Range", ["start", "limit", "delta"], ["r"], name="range"),
        helper.make_node("Cast", ["r"], ["rf"], to=FLOAT),
        helper.make_node("Add", ["x", "rf"], ["y"]),
    ]
    inits = {"start": np.array(10.0, np.float32), "delta": np.array(-2.5, np.float32)}
    inputs = {"x": (FLOAT, [4]), "limit": (FLOAT, [])}
    folded = model(nodes, {"x": (FLOAT, [4])}, {"y": (FLOAT, [4])}, inits | {"limit": 0.0})
    proto = model(nodes, inputs, {"y": (FLOAT, None)}, inits)
    assert check(folded, {"x": np.ones(4, np.float32)}) == ["add"]
    assert constant_inputs(proto) == {"limit"}
    with pytest.raises(GraphError, match="'range' \\(Range\\): limit .* must be a constant"):
        import_onnx(proto, input_shapes={"x": (4,)})
    graph = import_onnx(proto, input_values={"limit": np.array(0.0, np.float32)})
    (y,) = run_reference(graph, {"x": np.zeros(4, np.float32)})
    np.testing.assert_array_equal(y, [10.0, 7.5, 5.0, 2.5])


def test_range_with_zero_delta_names_the_node():
    node = helper.make_node("Range", ["s", "l", "d"], ["y"], name="stuck")
    inits = {"s": np.array(0, np.int64), "l": np.array(5, np.int64), "d": np.array(0, np.int64)}
    proto = model([node], {}, {"y": (INT64, [None])}, inits)
    with pytest.raises(GraphError, match="'stuck'.*delta must not be 0"):
        import_onnx(proto)


@pytest.mark.parametrize("op_type", ["Trilu", "CumSum"])
def test_a_computed_k_or_axis_names_the_node(op_type):
    nodes = [
        helper.make_node("Cast", ["s"], ["axis"], to=INT64),
        helper.make_node(op_type, ["x", "axis"], ["y"], name="scan"),
    ]
    proto = model(nodes, {"x": (FLOAT, [3, 4]), "s": (FLOAT, [])}, {"y": (FLOAT, [3, 4])})
    with pytest.raises(GraphError, match=f"'scan' \\({op_type}\\).*must be a constant"):
        import_onnx(proto)


def test_gather_elements_with_wider_indices_off_the_axis_names_the_node():
    node = helper.make_node("GatherElements", ["x", "i"], ["y"], name="wide", axis=0)
    proto = model([node], {"x": (FLOAT, [3, 2]), "i": (INT64, [2, 4])}, {"y": (FLOAT, [2, 4])})
    with pytest.raises(GraphError, match="'wide' \\(GatherElements\\).*exceed data"):
        import_onnx(proto)


def test_a_scatter_reduction_onnx_does_not_define_is_malformed():
    node = helper.make_node("ScatterND", ["x", "i", "u"], ["y"], name="avg", reduction="mean")
    proto = model(
        [node],
        {"x": (FLOAT, [4, 3]), "i": (INT64, [2, 1]), "u": (FLOAT, [2, 3])},
        {"y": (FLOAT, [4, 3])},
        opset=18,
    )
    with pytest.raises(ModelLoadError, match="reduction='mean'.*'avg'"):
        import_onnx(proto)
