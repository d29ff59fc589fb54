"""Hostile inputs end to end: fuzzed ONNX models, names that try to get into kernel source,
tuning logs from elsewhere or edited by hand, runtime inputs that are wrong or hold NaN/inf."""

import json
import multiprocessing as mp
import re

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import coretune
from coretune.errors import CoretuneError, InputError, ModelLoadError
from coretune.graph import run_reference
from coretune.graph.exchange.importer import import_onnx
from coretune.module import compile as compile_module
from coretune.module import load
from coretune.tuner.database import TuningDatabase
from coretune.tuner.records import LogError, Record, TuningLog

from .fuzz_mutations import MUTATIONS, bounded, make_case, run_case, seeds
from .onnx_models import assert_close, run_onnxruntime

FLOAT = TensorProto.FLOAT
CASE_BOUND = 30.0  # seconds before a case counts as a hang: generous, never a timing test


def _model(nodes, inputs, outputs, inits=(), opset=17, name="m"):
    """inputs/outputs: {name: shape} of float32 tensors; inits: {name: array}."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(n, FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, FLOAT, s) for n, s in outputs.items()],
        initializer=[numpy_helper.from_array(np.asarray(a), n) for n, a in dict(inits).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# ---- 1. importer fuzzing ---------------------------------------------------------------------
def _check(case):
    outcome = run_case(case, CASE_BOUND)
    assert outcome.kind != "hang", f"{case}\n  -> hang: {outcome.message}"
    if outcome.known_bug():  # reproduced, and xfail'd strictly, by a test below
        return outcome
    assert outcome.acceptable, f"{case}\n  -> {outcome.signature}"
    return outcome


@settings(
    derandomize=True,
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.sampled_from(sorted(seeds())),
    mutation=st.sampled_from(sorted(MUTATIONS)),
    case_seed=st.integers(0, 2**31 - 1),
)
def test_a_mutated_model_imports_or_raises_a_coretune_error(seed, mutation, case_seed):
    case = make_case(seed, mutation, case_seed)
    if _check(case).known_bug():
        note(f"reproduces a known bug: {case}")


def test_every_mutation_on_every_seed_model():
    """A fixed sweep, so each (model, mutation) pair is covered whatever hypothesis draws."""
    outcomes = [
        _check(make_case(seed, mutation, n))
        for seed in seeds()
        for mutation in MUTATIONS
        for n in range(3)
    ]
    kinds = {o.kind for o in outcomes}
    assert {"graph", "error"} <= kinds, "the mutations should both keep and break models"


def _expect_coretune_error(model):
    data = model if isinstance(model, bytes) else model.SerializeToString()
    with bounded(CASE_BOUND), pytest.raises(CoretuneError, match=r"\S"):
        import_onnx(data)


def _add_model(init):
    """y = x + w, with the initializer ``init`` for w."""
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])], {"x": [3]}, {"y": [3]})
    model.graph.initializer.append(init)
    return model


@pytest.mark.parametrize("field, value", [("dims", []), ("data_type", 999)])
def test_initializer_data_that_disagree_with_their_header(field, value):
    init = numpy_helper.from_array(np.ones(3, np.float32), "w")
    if field == "dims":
        init.dims[:] = value  # claims a scalar, holds three floats
    else:
        init.data_type = value
    _expect_coretune_error(_add_model(init))


def test_an_input_of_unknown_element_type():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], {"x": [3]}, {"y": [3]})
    model.graph.input[0].type.tensor_type.elem_type = 33
    _expect_coretune_error(model)


@pytest.mark.parametrize("pads", [7, 1.5])
def test_an_attribute_of_the_wrong_type(pads):
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=pads)
    model = _model(
        [node], {"x": [1, 1, 5, 5]}, {"y": [1, 1, 5, 5]}, {"w": np.ones((1, 1, 3, 3), np.float32)}
    )
    _expect_coretune_error(model)


def test_a_reshape_target_of_rank_two():
    node = helper.make_node("Reshape", ["x", "shape"], ["y"])
    model = _model([node], {"x": [2, 3]}, {"y": [3, 2]}, {"shape": np.array([[3, 2]], np.int64)})
    _expect_coretune_error(model)


@pytest.mark.parametrize(
    "op, shape",
    [
        ("ConstantOfShape", [10**6, 10**6]),
        ("ConstantOfShape", [40_000, 40_000]),
        ("ConstantOfShape", [-1, 4]),
        ("Expand", [10**6, 10**6]),
        ("Expand", [40_000, 40_000]),
    ],
)
def test_a_shape_constant_asking_for_a_huge_tensor(op, shape):
    """6.4 GB (40000^2 float32) is allocated, and filled, at import time; bounded() caps the
    allocation at 2 GiB more than is in use, so here it fails as MemoryError instead."""
    inits = {"shape": np.array(shape, np.int64), "one": np.ones(1, np.float32)}
    inputs = ["shape"] if op == "ConstantOfShape" else ["one", "shape"]
    nodes = [helper.make_node(op, inputs, ["c"]), helper.make_node("Add", ["x", "c"], ["y"])]
    _expect_coretune_error(_model(nodes, {"x": [1, 4]}, {"y": ["a", "b"]}, inits))


def test_a_node_name_that_is_not_utf8():
    node = helper.make_node("Relu", ["undefined"], ["y"], name="QQQQ")  # fails the checker
    data = _model([node], {"x": [3]}, {"y": [3]}).SerializeToString()
    _expect_coretune_error(data.replace(b"QQQQ", b"Q\xffQQ"))


def test_a_shape_whose_size_overflows_int64_is_refused():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], {"x": [2**62, 64]}, {"y": [2**62, 64]})
    _expect_coretune_error(model)


@pytest.mark.parametrize("location", ["/etc/hostname", "../../../etc/hostname", "link.bin"])
def test_external_data_never_reads_outside_the_model(tmp_path, location):
    (tmp_path / "link.bin").symlink_to("/etc/hostname")
    init = numpy_helper.from_array(np.zeros(3, np.float32), "w")
    init.ClearField("raw_data")
    init.data_location = TensorProto.EXTERNAL
    entry = init.external_data.add()
    entry.key, entry.value = "location", location
    path = tmp_path / "m.onnx"
    path.write_bytes(_add_model(init).SerializeToString())
    for model in (path, path.read_bytes()):
        with pytest.raises(ModelLoadError):
            import_onnx(model)


# ---- 2. names that try to get into kernel source ------------------------------------------
PAYLOADS = [
    "zq0\"quote's",
    "zq1\n#include <stdio.h>\n",
    "zq2*/ int evil; /*",
    "zq3\\\\n\\",
    "zq4%s%n%%",
    "zq5é✓\u202e日本",
    "zq6}; void f() {",
    "zq7#define float double",
]


def _named(i: int, role: str) -> str:
    return f"{PAYLOADS[i % len(PAYLOADS)]}|{role}"


def _injection_model():
    """conv -> relu -> mul -> add -> softmax, and sigmoid: every name and doc string a payload."""
    rng = np.random.default_rng(7)
    x, w, b, s = _named(0, "in"), _named(1, "w"), _named(2, "b"), _named(3, "scale")
    t = [_named(i, f"t{i}") for i in range(4, 8)]
    out1, out2 = _named(5, "out"), _named(6, "out2")
    nodes = [
        helper.make_node(
            "Conv",
            [x, w, b],
            [t[0]],
            name=_named(1, "conv"),
            pads=[1, 1, 1, 1],
            doc_string=PAYLOADS[2],
        ),
        helper.make_node("Relu", [t[0]], [t[1]], name=_named(2, "relu")),
        helper.make_node("Mul", [t[1], s], [t[2]], name=_named(3, "mul")),
        helper.make_node("Add", [t[2], t[1]], [t[3]], name=_named(4, "add")),
        helper.make_node("Softmax", [t[3]], [out1], name=_named(5, "softmax"), axis=1),
        helper.make_node("Sigmoid", [t[2]], [out2], name=_named(6, "sigmoid")),
    ]
    inits = {
        w: rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        b: rng.standard_normal(8).astype(np.float32),
        s: np.float32(0.5),
    }
    model = _model(
        nodes, {x: [1, 3, 8, 8]}, {out1: [1, 8, 8, 8], out2: [1, 8, 8, 8]}, inits, name=PAYLOADS[7]
    )
    model.graph.doc_string = PAYLOADS[1]
    helper.set_model_props(model, {PAYLOADS[3]: PAYLOADS[4]})
    onnx.checker.check_model(model, full_check=True)
    return model, {x: rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}


def test_names_never_reach_kernel_source(tmp_path, device):
    model, inputs = _injection_model()
    module = compile_module(model, device=device)
    assert len(module.plan.kernels) >= 3
    for kernel in module.plan.kernels:
        assert "zq" not in kernel.source, f"a model name reached kernel {kernel.entry}"
        for payload in PAYLOADS:
            assert payload not in kernel.source
        assert "#include" not in kernel.source and "evil" not in kernel.source
    got = module.run(**inputs)
    for g, w, name in zip(got, run_onnxruntime(model, inputs), module.output_names, strict=True):
        assert_close(g, w, repr(name), rtol=1e-4)
    with pytest.raises(InputError, match="missing input"):  # names are matched exactly
        module.run(**{json.dumps(k): v for k, v in inputs.items()})
    module.save(tmp_path / "named.ctm")
    again = load(tmp_path / "named.ctm", device=device)
    assert again.input_names == module.input_names and again.output_names == module.output_names
    for g, a in zip(got, again.run(**inputs), strict=True):
        np.testing.assert_array_equal(a, g)


@pytest.mark.parametrize(
    "op, attrs, opset",
    [
        ("Pad", {"mode": 'constant"*/\n#include <x>'}, 17),
        ("Gelu", {"approximate": "%n*/"}, 20),
    ],
)
def test_a_payload_in_a_string_attribute_is_refused(op, attrs, opset):
    inputs = ["x", "pads"] if op == "Pad" else ["x"]
    model = _model(
        [helper.make_node(op, inputs, ["y"], **attrs)],
        {"x": [2, 2]},
        {"y": ["a", "b"]},
        {"pads": np.ones(4, np.int64)} if op == "Pad" else {},
        opset=opset,
    )
    with pytest.raises(CoretuneError, match=r"\S"):
        import_onnx(model)


# ---- 3. tuning logs from elsewhere, or edited by hand ------------------------------------
def _relu_add():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "b"], ["y"])]
    return _model(nodes, {"x": [4, 64]}, {"y": [4, 64]}, {"b": np.ones(64, np.float32)})


def _record(kernel, dev, **changes) -> Record:
    fields = dict(
        task=kernel.task,
        config=dict(kernel.config),
        costs=(1e-6,),
        device=dev.info.fingerprint(),
        coretune_version=coretune.__version__,
    )
    return Record(**{**fields, **changes})


def test_records_from_another_device_or_version_are_counted_never_used(tmp_path, device):
    kernel = compile_module(_relu_add(), device=device).plan.kernels[0]
    other_device = {**device.info.fingerprint(), "name": "Some Other GPU"}
    log = TuningLog(tmp_path / "foreign.jsonl")
    log.append(_record(kernel, device, device=other_device))
    log.append(_record(kernel, device, coretune_version="0.0.0-other"))
    lookup = TuningDatabase.load([log.path]).best(
        kernel.task, device.info.fingerprint(), coretune.__version__, device.limits
    )
    assert lookup.config is None and (lookup.other_devices, lookup.other_versions) == (1, 1)
    summary = compile_module(_relu_add(), device=device, logs=log.path).summary()
    assert summary["tuned"] == 0
    assert summary["ignored_records"] == {"other_device": 1, "other_version": 1}
    log.append(_record(kernel, device))  # the control: a matching record is used
    summary = compile_module(_relu_add(), device=device, logs=log.path).summary()
    assert summary["tuned"] == 1 and not any(summary["ignored_records"].values())


def test_a_hand_edited_invalid_config_is_rejected_with_its_line(tmp_path, device):
    kernel = compile_module(_relu_add(), device=device).plan.kernels[0]
    log = TuningLog(tmp_path / "edited.jsonl")
    log.append(_record(kernel, device))
    log.append(_record(kernel, device, costs=(2e-6,)))
    log.append(_record(kernel, device, config={**kernel.config, "work_group": 48}))
    database = TuningDatabase.load([log.path])
    with pytest.raises(LogError, match=re.escape(f"{log.path}:3") + ".*work_group"):
        database.best(
            kernel.task, device.info.fingerprint(), coretune.__version__, limits=device.limits
        )
    with pytest.raises(LogError, match=":3"):
        compile_module(_relu_add(), device=device, logs=log.path)


def _append_many(path: str, writer: int, count: int) -> None:
    log = TuningLog(path)
    for trial in range(count):
        # A long message makes each line several pages, so an unlocked write would tear.
        log.append(
            Record(
                task={"template": "t", "workload": writer},
                config={"i": trial},
                costs=(1e-6,),
                message="x" * 9000,
                strategy=f"w{writer}",
                trial=trial,
            )
        )


def test_two_processes_appending_at_once_lose_and_interleave_nothing(tmp_path):
    path = str(tmp_path / "shared.jsonl")
    context = mp.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(path, w, 200)) for w in (0, 1)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    lines = open(path, "rb").read().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 401
    records = [Record.from_json(line.decode()) for line in lines[:-1]]  # every line whole
    for writer in (0, 1):
        trials = [r.trial for r in records if r.strategy == f"w{writer}"]
        assert trials == list(range(200)), f"writer {writer} lost or reordered records"


# ---- 4. runtime inputs -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def nan_module(device):
    """relu, add, softmax, max/min/clip, max-pool, reduce-max, layer-norm, exp and sigmoid."""
    n = helper.make_node
    nodes = [
        n("Add", ["x", "b"], ["a"]),
        n("Relu", ["a"], ["relu"]),
        n("Softmax", ["a"], ["softmax"], axis=-1),
        n("Max", ["a", "b"], ["max"]),
        n("Min", ["a", "b"], ["min"]),
        n("Clip", ["a", "lo", "hi"], ["clip"]),
        n("MaxPool", ["a"], ["pool"], kernel_shape=[2, 2]),
        n("ReduceMax", ["a"], ["rmax"], keepdims=1, axes=[-1]),
        n("LayerNormalization", ["a", "g"], ["norm"], axis=-1),
        n("Exp", ["a"], ["exp"]),
        n("Sigmoid", ["a"], ["sigmoid"]),
    ]
    outputs = {o: None for node in nodes[1:] for o in node.output}
    inits = {
        "b": np.linspace(-1, 1, 8, dtype=np.float32),
        "g": np.ones(8, np.float32),
        "lo": np.float32(-0.5),
        "hi": np.float32(0.5),
    }
    model = _model(nodes, {"x": [1, 2, 4, 8]}, {}, inits, opset=17)
    model.graph.output.extend(helper.make_tensor_value_info(o, FLOAT, None) for o in outputs)
    model = onnx.shape_inference.infer_shapes(model)
    return compile_module(model, device=device), import_onnx(model)


def test_nan_and_inf_propagate_as_the_reference_says(nan_module):
    module, graph = nan_module
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 8)).astype(np.float32)
    x.flat[[0, 5, 9, 17, 33, 40, 63]] = [np.nan, np.inf, -np.inf, np.nan, np.inf, -np.inf, np.nan]
    got, want = module.run(x=x), run_reference(graph, {"x": x})
    for g, w, name in zip(got, want, module.output_names, strict=True):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"{name}: NaNs")
        np.testing.assert_array_equal(np.isposinf(g), np.isposinf(w), err_msg=f"{name}: +inf")
        np.testing.assert_array_equal(np.isneginf(g), np.isneginf(w), err_msg=f"{name}: -inf")
        finite = np.isfinite(w)
        np.testing.assert_allclose(g[finite], w[finite], rtol=1e-5, atol=1e-6, err_msg=name)
    relu = got[module.output_names.index("relu")]
    assert np.isnan(relu.flat[0]) and relu.flat[5] == np.inf and relu.flat[9] == 0  # as numpy


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"y": np.zeros((1, 2, 4, 8), np.float32)}, "unknown input.*y.*missing input 'x'"),
        ({"x": np.zeros((1, 2, 8, 4), np.float32)}, r"'x' has shape \(1, 2, 8, 4\), expected"),
        ({"x": np.zeros((2, 4, 8), np.float32)}, "'x' has shape"),
        ({"x": np.zeros((1, 2, 4, 8), np.float16)}, "'x' has dtype float16, expected float32"),
        ({"x": np.zeros((1, 2, 4, 8), np.int32)}, "dtype int32"),
        ({"x": np.zeros((1, 2, 4, 8), np.float32), "x2": np.zeros(1)}, "unknown input.*x2"),
    ],
)
def test_wrong_runtime_inputs_are_input_errors(nan_module, inputs, message):
    module, _ = nan_module
    with pytest.raises(InputError, match=message):
        module.run(**inputs)
