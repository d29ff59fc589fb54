"""Every line of a tuning log is checked on read, field by field: a line that is not a valid
record (nested too deeply, NUL bytes left by a crash, torn, garbage, an impossible timing, a
field of the wrong type) is skipped and named with its file and line by every reader (log
summary, best, merge, compile, a tune's resume), never a traceback and never a choice."""

import json
import math
import re
import warnings

import pytest

import coretune
from coretune.kernels.space import Config
from coretune.tuner.database import TuningDatabase
from coretune.tuner.driver import _checked, _history
from coretune.tuner.measure import MeasureResult
from coretune.tuner.records import VERIFY, ErrorKind, LogWarning, Record, TuningLog

from .test_cli import chain_model
from .test_cli import coretune as run_cli
from .test_tuner import small_task

TASK = {"template": "t", "workload": "w"}
DEVICE = {"name": "d"}
GOOD = Record(
    task=TASK,
    config={"c": "a"},
    costs=(2e-6, 2.1e-6),
    device=DEVICE,
    strategy="random",
    trial=1,
    coretune_version="v",
)


def _edited(**changes) -> str:
    data = json.loads(GOOD.to_json())
    data.update(changes)
    return json.dumps(data)  # NaN and Infinity as Python writes them


def _nested(depth: int):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


EDITED = {
    "cost NaN": {"costs": [math.nan]},
    "cost -1": {"costs": [-1.0]},
    "cost 0": {"costs": [0]},
    "cost inf": {"costs": [math.inf]},
    "cost -inf": {"costs": [-math.inf]},
    "cost 1e-300": {"costs": [1e-300]},
    "cost 1e300": {"costs": [1e300]},
    "cost a string": {"costs": ["2e-6"]},
    "cost a boolean": {"costs": [True]},
    "costs not a list": {"costs": 2e-6},
    "a success without costs": {"costs": []},
    "a failure with costs": {"error": "timeout"},
    "unknown error kind": {"error": "exploded"},
    "error not a string": {"error": 3},
    "trial 1.5": {"trial": 1.5},
    "trial -1": {"trial": -1},
    "trial a boolean": {"trial": True},
    "trial a string": {"trial": "3"},
    "started NaN": {"started": math.nan},
    "finished -1": {"finished": -1.0},
    "finished a string": {"finished": "now"},
    "config value a list": {"config": {"c": [1]}},
    "config value NaN": {"config": {"c": math.nan}},
    "config not an object": {"config": ["c"]},
    "task without a template": {"task": {"workload": "w"}},
    "task not an object": {"task": "t"},
    "device not an object": {"device": "d"},
    "message a number": {"message": 5},
    "strategy null": {"strategy": None},
    "a round on a search trial": {"round": 1, "finalists": 2},
    "a verify round without finalists": {"strategy": VERIFY, "round": 1},
    "a negative round": {"strategy": VERIFY, "round": -1, "finalists": 2},
    "schema 2": {"schema": 2},
    "schema true": {"schema": True},
    "error a list": {"error": ["none"]},
    "an unknown field": {"extra": 1},
    "nested 40 deep": {"device": {"n": _nested(40)}},
}


@pytest.mark.parametrize("change", EDITED.values(), ids=EDITED.keys())
def test_an_edited_field_skips_its_line_and_names_it(tmp_path, change):
    path = tmp_path / "edited.jsonl"
    path.write_text(GOOD.to_json() + "\n" + _edited(**change) + "\n" + GOOD.to_json() + "\n")
    log = TuningLog(path)
    with pytest.warns(LogWarning, match=f"skipped 1 line.*{re.escape(str(path))}:2 "):
        records = log.read_numbered()
    assert [n for n, _ in records] == [1, 3] and [n for n, _ in log.skipped] == [2]


GARBAGE = {
    "nested 50000 deep": b'{"a":' * 50000,
    "nested arrays": b"[" * 100000 + b"]" * 100000,
    "NUL bytes": b"\0" * 4096,
    "NUL bytes, then a record": b"\0" * 64 + GOOD.to_json().encode(),
    "torn": GOOD.to_json().encode()[:40],
    "not UTF-8": b"\xff\xfe\x00garbage",
    "not JSON": b"hello",
    "an array": b"[1, 2]",
    "null": b"null",
    "a huge integer": GOOD.to_json().replace('"trial":1', '"trial":' + "9" * 5000).encode(),
}


@pytest.mark.parametrize("line", GARBAGE.values(), ids=GARBAGE.keys())
def test_a_garbage_line_anywhere_is_skipped_and_named(tmp_path, line):
    good = GOOD.to_json().encode()
    path = tmp_path / "garbage.jsonl"
    path.write_bytes(line + b"\n" + good + b"\n" + line + b"\n" + good + b"\n" + line)
    log = TuningLog(path)
    named = re.escape(str(path))
    with pytest.warns(LogWarning, match=f"{named}:1 .*{named}:3 .*{named}:5 "):
        assert len(log.read()) == 2
    assert [n for n, _ in log.skipped] == [1, 3, 5]


def test_a_utf8_bom_at_the_start_is_accepted(tmp_path):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (GOOD.to_json() + "\r\n").encode() * 2)
    log = TuningLog(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert log.read() == [GOOD, GOOD] and log.skipped == []


def _verify(config, cost, round_, trial=2):
    return Record(
        task=TASK,
        config={"c": config},
        costs=(cost,),
        device=DEVICE,
        strategy=VERIFY,
        trial=trial,
        coretune_version="v",
        round=round_,
        finalists=2,
    )


def test_negative_verify_timings_cannot_move_the_pick(tmp_path):
    records = [GOOD, Record(**{**GOOD.__dict__, "config": {"c": "b"}, "costs": (3e-6,)})]
    records += [_verify(c, cost, r) for r in (1, 2, 3) for c, cost in (("a", 2e-6), ("b", 1e-6))]
    lines = [r.to_json() for r in records]
    for index in (4, 6):  # a's rounds 2 and 3, made "the fastest" by hand
        lines[index] = lines[index].replace('"costs":[2e-06]', '"costs":[-5.0]')
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(LogWarning, match=f"{re.escape(str(path))}:5 .*cost -5.0"):
        database = TuningDatabase.load([path])
    assert [(p, n) for p, n, _ in database.skipped] == [(str(path), 5), (str(path), 7)]
    lookup = database.best(TASK, DEVICE, "v")  # on round 1, the only complete one
    assert lookup.verified and lookup.config == Config({"c": "b"})


def test_the_writer_never_writes_what_a_reader_skips(tmp_path):
    log = TuningLog(tmp_path / "log.jsonl")
    with pytest.raises(ValueError, match="cost"):
        log.append(Record(**{**GOOD.__dict__, "costs": (math.nan,)}))
    assert not log.path.exists()
    zero = MeasureResult((0.0, 1e-6), ErrorKind.NONE, "", 1.0, 2.0)
    (checked,) = _checked([zero])  # a broken device timer: a runtime error, logged as one
    assert checked.error is ErrorKind.RUNTIME and checked.costs == () and "0.0" in checked.message


def test_a_tune_resumes_from_a_log_with_damaged_lines(tmp_path, device):
    task = small_task()
    config = task.template().default_config(device.limits)
    record = Record(
        task=task.key(),
        config=config.to_json(),
        costs=(1e-5,),
        device=device.info.fingerprint(),
        strategy="default",
        trial=1,
        coretune_version=coretune.__version__,
    )
    log = TuningLog(tmp_path / "log.jsonl")
    log.path.write_bytes(b"\xef\xbb\xbf" + b"\0" * 512 + b"\n" + b'{"a":' * 50000 + b"\n")
    log.append(record)
    with pytest.warns(LogWarning, match=":1 .*NUL.*:2 "):
        mine, _ = _history(log, task, device.info.fingerprint())
    assert mine == [record]


@pytest.fixture(scope="module")
def damaged_log(tmp_path_factory):
    """A BOM, a good record, a nested bomb, NUL bytes, an impossible cost, a good record."""
    path = tmp_path_factory.mktemp("damaged") / "damaged.jsonl"
    bad_cost = _edited(costs=[-5.0], config={"c": "b"})
    lines = [GOOD.to_json().encode(), b'{"a":' * 50000, b"\0" * 300, bad_cost.encode()]
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines + [GOOD.to_json().encode()]) + b"\n")
    return path


@pytest.mark.parametrize("command", ["summary", "best", "merge"])
def test_log_commands_skip_and_name_damaged_lines(damaged_log, tmp_path, command):
    extra = ["-o", str(tmp_path / "merged.jsonl")] if command == "merge" else []
    result = run_cli("log", command, str(damaged_log), *extra)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "skipped 3 line(s)" in warning[0]
    for line in (2, 3, 4):
        assert f"{damaged_log}:{line} " in warning[0]
    if command == "merge":
        assert "from 5 lines" in result.stdout and "3 invalid lines" in result.stdout


def test_log_best_with_only_damaged_lines_is_a_one_line_error(tmp_path):
    path = tmp_path / "nul.jsonl"
    path.write_bytes(b"\0" * 4096 + b"\n")
    result = run_cli("log", "best", str(path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: no successful trial")


def test_compile_skips_and_names_damaged_lines(damaged_log, tmp_path):
    model = chain_model(tmp_path / "chain.onnx")
    result = run_cli("compile", str(model), "--log", str(damaged_log))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and f"{damaged_log}:2 " in result.stderr
