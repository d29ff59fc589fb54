"""A run killed during its finalists' verification: the next run completes the missing rounds
of the same finalists and ends with the uninterrupted run's choice, and every reader ranks
only complete rounds (a config verified in fewer rounds than its peers never wins)."""

import zlib

import pytest

import coretune
from coretune.kernels.space import Config
from coretune.tuner import driver
from coretune.tuner.database import TuningDatabase, choose
from coretune.tuner.driver import Budget, tune
from coretune.tuner.measure import MeasureResult
from coretune.tuner.records import (
    VERIFY,
    VERIFY_ROUNDS,
    ErrorKind,
    Record,
    TuningLog,
    verification_rounds,
    verified_costs,
)

from .test_tuner import small_task

TASK = {"template": "t", "workload": "w"}
DEVICE = {"name": "d"}


def _search(config, cost):
    return Record(TASK, {"c": config}, (cost,), device=DEVICE, strategy="random", trial=1)


def _check(config, cost, round_, trial=4, finalists=3, **changes):
    fields = dict(costs=(cost,), device=DEVICE, strategy=VERIFY, trial=trial)
    fields.update(round=round_, finalists=finalists, **changes)
    return Record(TASK, {"c": config}, **fields)


SEARCH = [_search("a", 1.0), _search("b", 1.1), _search("c", 1.2)]
ROUND_1 = [_check("a", 2.0, 1), _check("b", 1.5, 1), _check("c", 1.8, 1)]


def _c(name) -> Config:
    return Config({"c": name})


def test_a_round_cut_short_is_ignored():
    lucky = _check("a", 0.1, 2)  # round 2 measured a alone, then the run was killed
    assert verified_costs([*ROUND_1, lucky]) == {_c("a"): 2.0, _c("b"): 1.5, _c("c"): 1.8}
    assert choose([*SEARCH, *ROUND_1, lucky]).config == _c("b")


def test_a_first_round_cut_short_verifies_nothing():
    lucky = _check("c", 0.1, 1)  # the only record of round 1: the run was killed after it
    assert verified_costs([lucky]) == {}
    lookup = choose([*SEARCH, lucky])
    assert lookup.config == _c("a") and not lookup.verified  # the search's best


def test_a_failure_in_a_cut_round_still_disqualifies():
    failed = _check("b", 0.0, 2, costs=(), error=ErrorKind.TIMEOUT)
    assert _c("b") not in verified_costs([*ROUND_1, failed])


def test_only_the_latest_complete_verification_ranks():
    later = [_check(c, cost, 1, trial=6) for c, cost in (("a", 1.0), ("b", 3.0), ("c", 3.0))]
    assert verified_costs([*ROUND_1, *later])[_c("a")] == 1.0, "not mixed with trial 4"
    assert verified_costs([*ROUND_1, *later[:2]])[_c("a")] == 2.0, "trial 6 incomplete"


def test_records_without_rounds_are_numbered_by_their_order():
    old = [Record(**{**r.__dict__, "round": 0, "finalists": 0}) for r in ROUND_1]
    lucky = Record(**{**old[0].__dict__, "costs": (0.1,)})
    passes = verification_rounds([*old, lucky])
    assert set(passes) == {(4, 3)} and {n: len(r) for n, r in passes[(4, 3)].items()} == {
        1: 3,
        2: 1,
    }
    assert verified_costs([*old, lucky])[_c("a")] == 2.0


class _TableMeasurer:
    """Stands in for the Measurer (no processes): a config's n-th measurement in the log costs
    the same in every run, noisy across n, so a resumed run measures what the uninterrupted
    run measured, and the verified medians need not rank like the search."""

    log: TuningLog

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def measure(self, configs):
        logged = [Config(r.config) for r in self.log.read()]
        results = []
        for config in configs:
            n = logged.count(config) + 1
            noise = zlib.crc32(f"{config.key()}/{n}".encode()) % 1000 / 1000
            cost = 1e-5 * (1 + zlib.crc32(config.key().encode()) % 7 / 10) * (0.6 + noise)
            results.append(MeasureResult((cost,), ErrorKind.NONE, "", 1.0, 2.0))
            logged.append(config)
        return results


def _tune(log, task, default):
    _TableMeasurer.log = log
    return tune(task, log, strategy="random", budget=Budget(12, batch=3, verify=3), default=default)


def _rounds(records) -> set:
    return {(r.round, Config(r.config)) for r in records}


def test_a_kill_anywhere_in_verification_is_completed_with_the_same_choice(
    tmp_path, monkeypatch, device
):
    monkeypatch.setattr(driver, "Measurer", _TableMeasurer)
    task = small_task()
    default = task.template().default_config(device.limits)
    whole = TuningLog(tmp_path / "whole.jsonl")
    expected = _tune(whole, task, default)
    lines = whole.path.read_bytes().splitlines(keepends=True)
    checks = [r for r in whole.read() if r.strategy == VERIFY]
    assert len(checks) == VERIFY_ROUNDS * checks[0].finalists == len(_rounds(checks))
    fingerprint, version = device.info.fingerprint(), coretune.__version__
    winner = TuningDatabase.load([whole.path]).best(task.key(), fingerprint, version)
    for cut in range(12, len(lines)):  # killed after each of its verification records
        log = TuningLog(tmp_path / f"cut{cut}.jsonl")
        log.path.write_bytes(b"".join(lines[:cut]))
        result = _tune(log, task, default)
        again = [r for r in log.read() if r.strategy == VERIFY]
        assert len(again) == len(checks) and _rounds(again) == _rounds(checks), f"cut at {cut}"
        assert (result.best_config, result.trials) == (expected.best_config, 0)
        assert log.path.read_bytes() == whole.path.read_bytes(), "the same measurements"
    lookup = TuningDatabase.load([log.path]).best(task.key(), fingerprint, version)
    assert lookup.verified and lookup.config == winner.config == expected.best_config


def test_a_real_run_cut_in_its_second_round_completes_it(tmp_path, device):
    task = small_task()
    default = task.template().default_config(device.limits)
    log = TuningLog(tmp_path / "log.jsonl")
    budget = Budget(trials=4, batch=4, verify=2)
    tune(task, log, strategy="random", budget=budget, default=default)
    records = log.read()
    n = records[4].finalists
    assert [r.round for r in records[4:]] == [1] * n + [2] * n + [3] * n
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join(lines[: 4 + n + 1]))  # killed after round 2's first record
    result = tune(task, log, strategy="random", budget=budget, default=default)
    resumed = log.read()
    assert result.trials == 0 and len(resumed) == len(records)
    assert [r.round for r in resumed[4:]] == [1] * n + [2] * n + [3] * n
    assert _rounds(resumed[4:]) == _rounds(records[4:]), "the same finalists, each round once"
    assert result.best_config in verified_costs(resumed)


@pytest.mark.parametrize("kept", [1, 4])
def test_the_tune_summary_ranks_complete_rounds_only(kept):
    from coretune.tune_display import TaskState

    state = TaskState(task=None, share=1.0, budget=3, default_config={"c": "a"})
    for record in [*SEARCH, *[*ROUND_1, _check("c", 0.1, 2)][:kept]]:
        state.add(record)
    assert state.best == (1.0 if kept == 1 else 1.5)
