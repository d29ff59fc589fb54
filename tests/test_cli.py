"""The command line, run as a user would: in a subprocess, checking exit codes and output."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tiny_net.onnx"


def coretune(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "coretune", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_docs_ops_md_is_current():
    result = coretune("ops", "--markdown")
    assert result.returncode == 0, result.stderr
    assert (ROOT / "docs" / "ops.md").read_text() == result.stdout, (
        "docs/ops.md is stale: run `coretune ops --markdown > docs/ops.md`"
    )


def test_ops_table_lists_every_op():
    from coretune.graph import all_ops

    result = coretune("ops")
    assert result.returncode == 0
    for op in all_ops():
        assert op.name in result.stdout


def test_show_runs_the_example(tmp_path):
    result = coretune("show", str(EXAMPLE), "--run")
    assert result.returncode == 0, result.stderr
    assert "graph tiny_net(input: float32[1, 3, 32, 32])" in result.stdout
    assert "conv2d(" in result.stdout and "probabilities: float32[1, 10]" in result.stdout


def test_example_model_is_reproducible(tmp_path):
    out = tmp_path / "tiny_net.onnx"
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_tiny_net.py"), str(out)],
        check=True,
        capture_output=True,
    )
    assert out.read_bytes() == EXAMPLE.read_bytes()


def test_user_errors_exit_1_with_one_line(tmp_path):
    missing = coretune("show", str(tmp_path / "nope.onnx"))
    assert missing.returncode in (1, 2) and "Traceback" not in missing.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    bad = coretune("show", str(junk))
    assert bad.returncode == 1, bad.stderr
    assert bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_usage_errors_exit_2():
    assert coretune("show").returncode == 2
    assert coretune("no-such-command").returncode == 2


# ---- models built here, as a user would have them ---------------------------------------------
def chain_model(path):
    """Two injective chains (tunable today): y1 = sigmoid(x * w + x), y2 = tanh(2 * y1)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 256])
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [64, 256]) for n in ("y1", "y2")]
    params = [
        numpy_helper.from_array(np.linspace(0.5, 1.5, 256, dtype=np.float32), "w"),
        numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["a"]),
        helper.make_node("Add", ["a", "x"], ["b"]),
        helper.make_node("Sigmoid", ["b"], ["y1"]),
        helper.make_node("Mul", ["y1", "two"], ["d"]),
        helper.make_node("Tanh", ["d"], ["y2"]),
    ]
    graph = helper.make_graph(nodes, "chain", [x], outputs, params)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def one_op_model(path, op, out_shape=(4, 8), params=()):
    """x: float32[4, 8] -> one node -> y (an unknown op type, or a Reshape: nothing to tune)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))
    inits = [numpy_helper.from_array(a, n) for n, a in params]
    node = helper.make_node(op, ["x", *(n for n, _ in params)], ["y"])
    graph = helper.make_graph([node], op.lower(), [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return chain_model(tmp_path_factory.mktemp("models") / "chain.onnx")


def _no_traceback(result):
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr


def _one_line_error(result):
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    _no_traceback(result)


# ---- help, usage --------------------------------------------------------------------------------
COMMANDS = [
    ["tune"],
    ["compile"],
    ["run"],
    ["bench"],
    ["devices"],
    ["log"],
    ["log", "summary"],
    ["log", "best"],
    ["log", "merge"],
    ["log", "plot"],
    ["ops"],
    ["show"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command):
    result = coretune(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout and f"coretune {' '.join(command)}" in result.stdout


def test_more_usage_errors_exit_2(chain, tmp_path):
    both = coretune("tune", str(chain), "--trials", "3", "--time-budget", "5")
    assert both.returncode == 2 and "not both" in both.stderr
    assert coretune("tune", str(chain), "--strategy", "annealing").returncode == 2
    assert coretune("run", str(chain), "--input", "no-equals-sign.npy").returncode == 2
    assert coretune("log", "merge", str(chain)).returncode == 2  # -o is required


# ---- compile, run, bench, devices ------------------------------------------------------------
def test_compile_says_when_the_logs_are_from_another_version(chain, tmp_path):
    import coretune as ct
    from coretune.tuner.records import Record, TuningLog

    kernel = ct.compile(str(chain)).plan.kernels[0]
    log = TuningLog(tmp_path / "old.jsonl")
    fingerprint = ct.kernels.open_device(None).info.fingerprint()
    old = Record(kernel.task, dict(kernel.config), (1e-6,), device=fingerprint)
    log.append(Record(**{**old.__dict__, "coretune_version": "0.0.1"}))
    compiled = coretune("compile", str(chain), "--log", str(log.path))
    assert compiled.returncode == 0, compiled.stderr
    assert "1 records from another coretune version" in compiled.stdout


def test_compile_saves_a_ctm_that_runs_with_and_without_inputs(chain, tmp_path):
    import numpy as np

    import coretune as ct
    from coretune.graph import run_reference

    ctm = tmp_path / "chain.ctm"
    compiled = coretune("compile", str(chain), "-o", str(ctm))
    assert compiled.returncode == 0, compiled.stderr
    assert "kernels: 2 (0 tuned, 2 with default configs)" in compiled.stdout
    assert "host steps: 0" in compiled.stdout and "planned vs" in compiled.stdout
    assert ctm.exists()

    random = coretune("run", str(ctm))
    assert random.returncode == 0, random.stderr
    assert "random input x: float32[64, 256]" in random.stderr
    assert "y1: float32[64, 256] [" in random.stdout and "y2: float32[64, 256] [" in random.stdout

    x = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    given = coretune("run", str(ctm), "--input", f"x={tmp_path / 'x.npy'}", "-o", str(out))
    assert given.returncode == 0, given.stderr
    assert "random input" not in given.stderr
    want = run_reference(ct.import_onnx(str(chain)), x=x)
    with np.load(out) as got:
        assert sorted(got.files) == ["y1", "y2"]
        for name, value in zip(["y1", "y2"], want, strict=True):
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)

    np.save(tmp_path / "bad.npy", np.ones((3, 3), np.float32))
    bad_shape = coretune("run", str(ctm), "--input", f"x={tmp_path / 'bad.npy'}")
    _one_line_error(bad_shape)
    assert "shape (3, 3), expected (64, 256)" in bad_shape.stderr
    bad_name = coretune("run", str(ctm), "--input", f"nope={tmp_path / 'x.npy'}")
    _one_line_error(bad_name)
    assert "unknown input(s) nope" in bad_name.stderr


def test_run_an_onnx_model_directly(chain):
    result = coretune("run", str(chain), "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "(seed 3)" in result.stderr and "y2: float32[64, 256]" in result.stdout


def test_bench_json_compares_builds_in_one_run(chain):
    result = coretune("bench", str(chain), "--repeat", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["device"]["name"] and report["versions"]["coretune"]
    results = report["results"]
    assert list(results)[0] == "default" and results["default"]["speedup"] == 1.0
    assert results["default"]["kernels"] == 2 and results["default"]["wall_median_s"] > 0
    if "onnxruntime" in report["versions"]:
        assert results["onnxruntime"]["wall_median_s"] > 0
    if "openvino" in report["versions"]:
        assert results["openvino"]["wall_median_s"] > 0


def test_bench_without_openvino_times_no_openvino(chain):
    result = coretune("bench", str(chain), "--repeat", "2", "--json", "--no-openvino")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "openvino" not in report["results"] and "openvino" not in report["versions"]


def test_devices_json_lists_the_default_device():
    result = coretune("devices", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["opencl"]["available"]
    assert sum(d["default"] for d in report["opencl"]["devices"]) == 1
    first = report["opencl"]["devices"][0]
    assert first["device"] == "opencl:0" and first["max_work_group_size"] > 0
    assert len(first["max_work_item_sizes"]) == 3 and first["local_mem_bytes"] > 0
    assert report["cuda"]["available"] or report["cuda"]["reason"]


# ---- user errors: exit 1, one line, no traceback ------------------------------------------------
def test_user_errors_of_the_new_commands(chain, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model")
    weird = one_op_model(tmp_path / "weird.onnx", "FooBar")
    cases = {
        ("compile", str(tmp_path / "missing.onnx")): "no such file",
        ("tune", str(junk)): "not a readable ONNX model",
        ("compile", str(weird)): "FooBar",
        ("compile", str(chain), "--device", "no-such-device"): "devices: opencl:0",
        ("run", str(tmp_path / "missing.ctm")): "no such file",
        ("log", "summary", str(tmp_path / "missing.jsonl")): "no such file",
    }
    for args, message in cases.items():
        result = coretune(*args)
        _one_line_error(result)
        assert message in result.stderr, (args, result.stderr)


def test_verbose_shows_the_traceback(tmp_path):
    result = coretune("--verbose", "compile", str(tmp_path / "missing.onnx"))
    assert result.returncode == 1 and "Traceback" in result.stderr
