"""Graph IR: validation names every problem, ordering, JSON round trip, the builder."""

import json

import numpy as np
import pytest

from coretune.errors import GraphError, InputError
from coretune.graph import Graph, GraphBuilder, Node, TensorType, run_reference


def _mlp():
    rng = np.random.default_rng(0)
    b = GraphBuilder("mlp")
    x = b.input("x", (7, 13))
    w1 = b.param("w1", rng.standard_normal((33, 13)).astype("float32"))
    b1 = b.param("b1", rng.standard_normal(33).astype("float32"))
    w2 = b.param("w2", rng.standard_normal((5, 33)).astype("float32"))
    h = b.relu(b.dense(x, w1, b1))
    return b.build(b.softmax(b.dense(h, w2), axis=-1)), (w1, b1, w2)


def test_builder_graph_runs_like_numpy():
    graph, _ = _mlp()
    x = np.random.default_rng(1).standard_normal((7, 13)).astype("float32")
    (y,) = run_reference(graph, x=x)
    p = graph.params
    h = np.maximum(x @ p["w1"].T + p["b1"], 0)
    logits = h @ p["w2"].T
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(y, want, rtol=1e-5)
    assert graph.type_of(graph.outputs[0]) == TensorType((7, 5), "float32")


def test_builder_operators_and_errors():
    b = GraphBuilder()
    x = b.input("x", (3, 4))
    y = (x * 2.0 + 1.0) / x - x
    assert y.shape == (3, 4) and y.dtype == "float32"
    with pytest.raises(GraphError, match="do not broadcast"):
        b.add(x, b.input("z", (5,)))
    with pytest.raises(GraphError, match="unknown core op 'frobnicate'"):
        b.frobnicate(x)
    with pytest.raises(GraphError, match="already used"):
        b.input("x", (1,))


def test_validation_lists_every_problem_with_its_node():
    graph = Graph(
        "bad",
        inputs={"x": TensorType((2, 3), "float32")},
        params={"w": np.ones((4, 4), np.float32)},
        nodes=[
            Node("n1", "frobnicate", ["x"], ["a"]),
            Node("n2", "relu", ["nowhere"], ["b"]),
            Node("n3", "softmax", ["x"], ["c"], {"axis": 7}),
            Node("n4", "matmul", ["x", "w"], ["d"]),
            Node("n5", "leaky_relu", ["x"], ["e"], {"alpha": "big"}),
        ],
        outputs=["b", "ghost"],
    )
    with pytest.raises(GraphError) as err:
        graph.validate()
    text = str(err.value)
    assert "node 'n2' (relu): dangling input(s) 'nowhere'" in text
    assert "graph output 'ghost' is not defined" in text
    graph.nodes.pop(1)
    graph.outputs = ["c"]
    with pytest.raises(GraphError) as err:
        graph.validate()
    text = str(err.value)
    for expected in (
        "node 'n1' (frobnicate): unknown core op",
        "node 'n3' (softmax): softmax: axis 7",
        "node 'n4' (matmul): matmul: inner dimensions",
        "node 'n5' (leaky_relu)",
        "4 problems",
    ):
        assert expected in text


def test_cycles_are_reported_and_order_is_topological():
    x = {"x": TensorType((2,), "float32")}
    cyclic = Graph(
        "loop",
        x,
        {},
        [Node("a", "add", ["x", "b_out"], ["a_out"]), Node("b", "relu", ["a_out"], ["b_out"])],
        ["b_out"],
    )
    with pytest.raises(GraphError, match="cycle through node.*a, b"):
        cyclic.validate()
    shuffled = Graph(
        "order",
        x,
        {},
        [Node("second", "relu", ["first_out"], ["y"]), Node("first", "exp", ["x"], ["first_out"])],
        ["y"],
    )
    assert [n.name for n in shuffled.validate().nodes] == ["first", "second"]


def test_json_round_trip_keeps_everything():
    graph, _ = _mlp()
    data = json.loads(json.dumps(graph.to_json()))
    again = Graph.from_json(data, dict(graph.params))
    assert again.to_json() == graph.to_json()
    x = np.random.default_rng(2).standard_normal((7, 13)).astype("float32")
    np.testing.assert_array_equal(run_reference(again, x=x)[0], run_reference(graph, x=x)[0])


def test_json_errors_are_clear():
    graph, _ = _mlp()
    data = graph.to_json()
    with pytest.raises(GraphError, match="format version 99"):
        Graph.from_json({**data, "version": 99}, dict(graph.params))
    with pytest.raises(GraphError, match="missing \\['w2'\\]"):
        Graph.from_json(data, {k: v for k, v in graph.params.items() if k != "w2"})
    wrong = dict(graph.params, w2=np.ones((2, 2), np.float32))
    with pytest.raises(GraphError, match="parameter 'w2' is float32\\[2, 2\\]"):
        Graph.from_json(data, wrong)
    with pytest.raises(GraphError, match="malformed graph JSON"):
        Graph.from_json({**data, "nodes": [{"name": "x"}]}, dict(graph.params))


def test_runtime_inputs_are_checked():
    graph, _ = _mlp()
    good = np.zeros((7, 13), np.float32)
    with pytest.raises(InputError, match="missing input 'x'"):
        run_reference(graph)
    with pytest.raises(InputError, match="shape \\(7, 12\\), expected \\(7, 13\\)"):
        run_reference(graph, x=good[:, :12])
    with pytest.raises(InputError, match="dtype float64, expected float32"):
        run_reference(graph, x=good.astype(np.float64))
    with pytest.raises(InputError, match="unknown input\\(s\\) y"):
        run_reference(graph, x=good, y=good)


def test_nan_and_inf_propagate_as_numpy():
    b = GraphBuilder()
    x = b.input("x", (3,))
    graph = b.build(b.exp(x) + x)
    (y,) = run_reference(graph, x=np.array([np.nan, np.inf, 1.0], np.float32))
    assert np.isnan(y[0]) and np.isinf(y[1]) and np.isfinite(y[2])


def test_printed_graph_names_ops_and_types():
    graph, _ = _mlp()
    text = str(graph)
    assert text.startswith("graph mlp(x: float32[7, 13])")
    assert "= dense(x, w1, b1)" in text and "float32[7, 5]" in text
