"""The command line, run as a user would: in a subprocess, checking exit codes and output."""

import pathlib
import subprocess
import sys

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
