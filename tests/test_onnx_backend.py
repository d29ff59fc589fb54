"""ONNX's own node test suite (onnx.backend.test.BackendTest) run on coretune.backend.

Only the in-scope tests are collected (models built from the op types the importer claims);
the excluded ones are skipped with their reason (tests/onnx_node_exclusions.py), every other
one must pass. ``python -m tests.test_onnx_backend`` runs all of them, exclusions included,
and prints how many pass.
"""

import io
import re
import unittest
import warnings

import numpy as np
import onnx.backend.test
import pytest
from onnx import TensorProto, helper
from onnx.backend.test.loader import load_model_tests

import coretune.backend
from coretune.errors import CoretuneError, InputError

from .onnx_node_exclusions import EXCLUDED, exclusion_reason, expected_in_scope, in_scope

with warnings.catch_warnings():  # generating some cases (casts, empty reductions) warns
    warnings.simplefilter("ignore")
    IN_SCOPE = in_scope(load_model_tests(kind="node"))
    # Kept out of the module namespace: pytest would collect all ~1900 of ONNX's node tests.
    _NODE_TESTS = vars(
        onnx.backend.test.BackendTest(coretune.backend, __name__).test_cases[
            "OnnxBackendNodeModelTest"
        ]
    )


def node_test_case(skip_excluded: bool = True) -> type[unittest.TestCase]:
    """A TestCase holding ONNX's CPU test of every in-scope node model."""
    case = type("OnnxNodeTest", (unittest.TestCase,), {"__module__": __name__})
    for name in IN_SCOPE:
        test = _NODE_TESTS[f"{name}_cpu"]
        reason = exclusion_reason(name)
        if reason and skip_excluded:
            test = unittest.skip(f"excluded: {reason}")(test)
        setattr(case, f"{name}_cpu", test)
    return case


OnnxNodeTest = node_test_case()


def test_in_scope_count():
    expected = expected_in_scope()
    if expected is None:
        pytest.skip(f"no recorded in-scope count for onnx {onnx.__version__}")
    assert len(IN_SCOPE) == expected


def test_every_exclusion_matches_an_in_scope_test():
    unused = [p for p in EXCLUDED if not any(re.search(p, name) for name in IN_SCOPE)]
    assert not unused, f"stale exclusion patterns: {unused}"


def test_at_least_90_percent_of_the_scope_is_expected_to_pass():
    excluded = [name for name in IN_SCOPE if exclusion_reason(name)]
    assert len(IN_SCOPE) - len(excluded) >= 0.9 * len(IN_SCOPE)


# ---- the backend API ------------------------------------------------------------------------
def _symbolic_relu():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_run_node_and_devices():
    x = np.array([[-1.0, 2.0]], np.float32)
    (y,) = coretune.backend.run_node(helper.make_node("Relu", ["x"], ["y"]), [x])
    np.testing.assert_array_equal(y, [[0.0, 2.0]])
    assert coretune.backend.supports_device("CPU")
    assert not coretune.backend.supports_device("TPU")
    with pytest.raises(CoretuneError, match="'TPU' is not supported here: .*CPU, OPENCL, CUDA"):
        coretune.backend.prepare(_symbolic_relu(), "TPU")
    if not coretune.backend.supports_device("CUDA"):  # no GPU here: the reason is given
        with pytest.raises(CoretuneError, match="'CUDA' is not supported here: CUDA"):
            coretune.backend.prepare(_symbolic_relu(), "CUDA")


def test_rep_imports_once_per_input_signature():
    rep = coretune.backend.prepare(_symbolic_relu())
    for n in (2, 5, 2):
        x = np.linspace(-1, 1, 3 * n, dtype=np.float32).reshape(n, 3)
        (y,) = rep.run({"x": x})
        np.testing.assert_array_equal(y, np.maximum(x, 0))
    assert rep.graph_for({"x": (2, 3)}) is rep.graph_for({"x": (2, 3)})
    assert rep.graph_for({"x": (2, 3)}).inputs["x"].shape == (2, 3)


def test_rep_rejects_wrong_inputs():
    rep = coretune.backend.prepare(_symbolic_relu())
    with pytest.raises(InputError, match="takes 1"):
        rep.run([np.zeros((1, 3), np.float32)] * 2)
    with pytest.raises(InputError, match="unknown input"):
        rep.run({"z": np.zeros((1, 3), np.float32)})


def report() -> str:
    """Run every in-scope test, exclusions included; '<N> passed of <M> in scope'."""
    result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(
        unittest.defaultTestLoader.loadTestsFromTestCase(node_test_case(skip_excluded=False))
    )
    failed = {
        t.id().rsplit(".", 1)[-1].removesuffix("_cpu") for t, _ in result.failures + result.errors
    }
    lines = [f"{result.testsRun - len(failed)} passed of {len(IN_SCOPE)} in scope"]
    surprises = [n for n in IN_SCOPE if exclusion_reason(n) and n not in failed]
    lines += [f"  excluded but passing: {n}" for n in surprises]
    lines += [f"  failing but not excluded: {n}" for n in sorted(failed) if not exclusion_reason(n)]
    return "\n".join(lines)


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        print(report())
