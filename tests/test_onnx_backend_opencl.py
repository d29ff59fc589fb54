"""ONNX's node tests on the compiled path: kernels on the test device (the default OpenCL device,
or the one ``pytest --device`` names, e.g. cuda:0: backend device "CUDA").

Every in-scope test that passes on the reference device must pass here too, except those in
``OPENCL_EXCLUDED`` with their reason. The kernels are checked with the test's own tolerances.
"""

import re
import warnings

import numpy as np
import pytest
from onnx import numpy_helper
from onnx.backend.test.loader import load_model_tests
from onnx.backend.test.runner import Runner

import coretune.backend

from .onnx_node_exclusions import exclusion_reason, in_scope

# test-name pattern -> why the compiled path cannot pass it (the reference path does).
OPENCL_EXCLUDED: dict[str, str] = {}

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _CASES = {c.name: c for c in load_model_tests(kind="node")}
    NAMES = [n for n in in_scope(_CASES.values()) if not exclusion_reason(n)]


def _array(value):
    """Test data comes as arrays or as TensorProtos (for the narrow types)."""
    if isinstance(value, np.ndarray | np.generic):
        return np.asarray(value)
    return numpy_helper.to_array(value)


def _opencl_reason(name):
    return next((r for p, r in OPENCL_EXCLUDED.items() if re.search(p, name)), None)


@pytest.mark.parametrize("name", NAMES)
def test_node_on_opencl(name, backend_device):
    reason = _opencl_reason(name)
    if reason:
        pytest.skip(f"excluded on OPENCL: {reason}")
    case = _CASES[name]
    rep = coretune.backend.prepare(case.model, backend_device)
    for inputs, expected in case.data_sets:
        outputs = rep.run([_array(i) for i in inputs])
        Runner.assert_similar_outputs(
            [_array(e) for e in expected], list(outputs), rtol=case.rtol, atol=case.atol
        )


def test_every_opencl_exclusion_is_in_scope():
    unused = [p for p in OPENCL_EXCLUDED if not any(re.search(p, n) for n in NAMES)]
    assert not unused
