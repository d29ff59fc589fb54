"""Finalist verification: a run re-measures its best configs beside the default, and the
tuning database ranks a task by those interleaved re-measurements, not by a lucky minimum."""

from coretune.kernels.space import Config
from coretune.tuner.database import TuningDatabase
from coretune.tuner.driver import VERIFY_ROUNDS, Budget, tune
from coretune.tuner.records import VERIFY, ErrorKind, Record, TuningLog, verified_costs

from .test_tuner import small_task

TASK = {"template": "t", "workload": "w"}
DEVICE = {"name": "d"}


def _record(config, cost, strategy="bayesian", error=ErrorKind.NONE):
    return Record(
        task=TASK,
        config={"c": config},
        costs=() if error is not ErrorKind.NONE else (cost, cost * 1.1),
        error=error,
        device=DEVICE,
        strategy=strategy,
        coretune_version="v",
    )


def _database(tmp_path, records) -> TuningDatabase:
    log = TuningLog(tmp_path / "log.jsonl")
    for record in records:
        log.append(record)
    return TuningDatabase.load([log.path])


def test_without_verifications_the_lowest_cost_wins(tmp_path):
    lookup = _database(tmp_path, [_record("a", 1.0), _record("b", 1.2)]).best(TASK, DEVICE, "v")
    assert lookup.config == Config({"c": "a"}) and lookup.cost == 1.0 and not lookup.verified


def test_a_lucky_minimum_loses_to_the_better_verified_median(tmp_path):
    records = [_record("a", 1.0), _record("b", 1.2)]
    records += [_record("a", c, VERIFY) for c in (2.0, 2.1, 1.9)]
    records += [_record("b", c, VERIFY) for c in (1.3, 1.25, 1.4)]
    lookup = _database(tmp_path, records).best(TASK, DEVICE, "v")
    assert lookup.config == Config({"c": "b"}) and lookup.verified
    assert lookup.cost == 1.3 and lookup.record.strategy == VERIFY


def test_a_finalist_that_failed_a_round_is_never_the_winner(tmp_path):
    records = [_record("a", 1.0), _record("b", 1.2)]
    records += [_record("a", c, VERIFY) for c in (1.0, 1.0)]
    records += [_record("a", 0, VERIFY, ErrorKind.TIMEOUT)]
    records += [_record("b", c, VERIFY) for c in (1.3, 1.25, 1.4)]
    assert verified_costs(records) == {Config({"c": "b"}): 1.3}
    assert _database(tmp_path, records).best(TASK, DEVICE, "v").config == Config({"c": "b"})


def test_a_run_verifies_its_finalists_and_the_default_once(tmp_path, device):
    task = small_task()
    default = task.template().default_config(device.limits)
    log = TuningLog(tmp_path / "log.jsonl")
    budget = Budget(trials=6, batch=3, verify=2)
    result = tune(task, log, budget=budget, strategy="random", default=default)
    records = log.read()
    searched = [r for r in records if r.strategy != VERIFY]
    checks = [r for r in records if r.strategy == VERIFY]
    assert len(searched) == 6 == result.trials
    best_two = {Config(r.config) for r in sorted(searched, key=lambda r: r.best_cost)[:2]}
    finalists = best_two | {default}
    assert {Config(r.config) for r in checks} == finalists
    assert len(checks) == VERIFY_ROUNDS * len(finalists) and all(r.ok for r in checks)
    medians = verified_costs(records)
    assert result.best_config == min(medians, key=medians.get)
    assert result.best_cost == medians[result.best_config]

    again = tune(task, log, budget=budget, strategy="random", default=default)
    assert len(log.read()) == len(records), "a finished, verified task is not re-measured"
    assert again.trials == 0 and again.resumed == 6

    tune(task, log, budget=Budget(trials=8, batch=2, verify=2), strategy="random", default=default)
    grown = log.read()
    assert len([r for r in grown if r.strategy != VERIFY]) == 8, "verifications are not trials"
    assert len([r for r in grown if r.strategy == VERIFY]) > len(checks), "new trials: re-verify"


def test_the_tune_summary_shows_verified_medians_and_counts_only_trials():
    from coretune.tune_display import TaskState

    state = TaskState(task=None, share=1.0, budget=4, default_config={"c": "default"})
    for record in [_record("default", 2.0), _record("a", 0.5), _record("b", 1.0)]:
        state.add(record)
    assert state.trials == 3 and state.best == 0.5 and state.default == 2.0
    for config, costs in {
        "default": (2.2, 2.0, 2.4),
        "a": (1.5, 1.6, 1.4),
        "b": (1.1,) * 3,
    }.items():
        for cost in costs:
            state.add(_record(config, cost, VERIFY))
    assert state.trials == 3, "re-measurements are not trials"
    assert state.best == 1.1 and state.default == 2.2 and state.speedup == 2.2 / 1.1


def test_log_best_and_merge_keep_the_verified_choice(tmp_path):
    from .test_cli import coretune

    records = [_record("a", 1.0), _record("b", 1.2)]
    records += [_record("a", c, VERIFY) for c in (2.0, 2.1, 1.9)]
    records += [_record("b", c, VERIFY) for c in (1.3, 1.25, 1.4)]
    log = TuningLog(tmp_path / "log.jsonl")
    for record in records:
        log.append(record)
    merged = tmp_path / "merged.jsonl"
    assert coretune("log", "merge", str(log.path), str(log.path), "-o", str(merged)).returncode == 0
    assert len(TuningLog(merged).read()) == len(records), "each verification record kept once"
    for path in (log.path, merged):
        best = coretune("log", "best", str(path), "--json")
        assert best.returncode == 0, best.stderr
        winner = Record.from_json(best.stdout)
        assert winner.config == {"c": "b"} and winner.strategy == VERIFY
