"""ONNX Einsum, imported as existing core ops: equations attention and others use, against
numpy's einsum; the core ops they become; malformed equations named by node."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from coretune.errors import GraphError, ModelLoadError
from coretune.graph import run_reference
from coretune.graph.exchange.importer import import_onnx


def einsum_model(equation, shapes, out_rank=None, dtype=TensorProto.FLOAT):
    """The output's type is left to ONNX's shape inference, or declared of ``out_rank``
    symbolic dims (for equations that inference cannot type)."""
    out = (
        helper.make_empty_tensor_value_info("y")
        if out_rank is None
        else helper.make_tensor_value_info("y", dtype, [f"d{i}" for i in range(out_rank)])
    )
    names = [f"x{i}" for i in range(len(shapes))]
    node = helper.make_node("Einsum", names, ["y"], equation=equation, name="e")
    graph = helper.make_graph(
        [node],
        "einsum",
        [helper.make_tensor_value_info(n, dtype, s) for n, s in zip(names, shapes, strict=True)],
        [out],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def check(equation, *shapes):
    rng = np.random.default_rng(len(equation))
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    want = np.einsum(equation.replace(" ", ""), *arrays)
    # ONNX's shape inference cannot type every equation (ellipses of different ranks).
    graph = import_onnx(einsum_model(equation, shapes, out_rank=want.ndim))
    (got,) = run_reference(graph, {f"x{i}": a for i, a in enumerate(arrays)})
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max(initial=0)), 1e-30)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    return [n.op for n in graph.nodes]


EQUATIONS = [
    ("bhqd,bhkd->bhqk", (2, 3, 7, 13), (2, 3, 5, 13)),  # attention scores
    ("bhqk,bhkd->bhqd", (2, 3, 7, 5), (2, 3, 5, 13)),  # attention context
    ("bqhd,bkhd->bhqk", (1, 7, 3, 13), (1, 5, 3, 13)),  # heads after the sequence
    ("bij, bjk -> bik", (5, 2, 3), (5, 3, 4)),
    ("ij,jk", (7, 13), (13, 3)),
    ("i,i", (33,), (33,)),
    ("i,j->ij", (7,), (13,)),
    ("ij,ij->ij", (7, 13), (7, 13)),
    ("ij,j->i", (7, 13), (13,)),
    ("bnd,de->bne", (2, 7, 13), (13, 5)),
    ("...ij,...jk->...ik", (2, 3, 7, 13), (3, 13, 5)),
    ("...ij,jk", (2, 1, 7, 13), (13, 5)),
    ("b1d,bkd->bk".replace("1", "q"), (3, 1, 13), (3, 7, 13)),
    ("ij,kj->ik", (7, 1), (5, 13)),  # an inner label broadcast from size 1
    ("ij->ji", (3, 4)),
    ("ij->i", (3, 4)),
    ("ij->", (3, 4)),
    ("ii->i", (5, 5)),
    ("...ii->...i", (3, 5, 5)),
    ("iij,jk->ik", (4, 4, 7), (7, 3)),
    ("ab,bc,cd->ad", (3, 4), (4, 5), (5, 6)),
    ("abc,cd,ad->b", (3, 4, 5), (5, 6), (3, 6)),
    ("->", ()),
]


@pytest.mark.parametrize("case", EQUATIONS, ids=lambda c: c[0])
def test_equations_match_numpy(case):
    check(*case)


def test_attention_einsum_is_one_matmul_and_a_transpose():
    assert check("bhqd,bhkd->bhqk", (2, 3, 7, 13), (2, 3, 5, 13)) == ["transpose", "matmul"]
    assert check("bhqk,bhkd->bhqd", (2, 3, 7, 5), (2, 3, 5, 13)) == ["matmul"]


@pytest.mark.parametrize(
    ("equation", "shapes", "message"),
    [
        ("ij,jk->ik", [(3, 4)], "2 terms for 1 inputs"),
        ("ij->ij", [(3, 4, 5)], "does not fit rank 3"),
        ("ij,jk->iz", [(3, 4), (4, 5)], "output labels must be distinct input labels"),
        ("ij,jk->ii", [(3, 4), (4, 5)], "output labels must be distinct input labels"),
        ("ij,jk->ik", [(3, 4), (5, 6)], "sizes \\[4, 5\\]"),
        ("i1->i", [(3, 4)], "not letters"),
        ("ii->i", [(3, 4)], "sizes 3 and 4"),
    ],
)
def test_bad_equations_name_the_node(equation, shapes, message):
    model = einsum_model(equation, shapes, out_rank=len(equation.split("->")[1]))
    with pytest.raises((GraphError, ModelLoadError), match=f"'e'.*{message}|{message}.*'e'"):
        import_onnx(model)
