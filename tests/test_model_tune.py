"""Whole-model tuning by expected gain (tuner.model_tune) on the default device."""

import json
import math

import coretune as ct
from coretune.tuner.measure import MeasureOptions
from coretune.tuner.model_tune import MeasurerCache, ModelBudget, tune_model
from coretune.tuner.records import VERIFY, TuningLog
from coretune.tuner.task import extract_tasks

from .test_cli import chain_model


def _tasks(tmp_path):
    return extract_tasks(ct.import_onnx(str(chain_model(tmp_path / "chain.onnx"))))


def _by_task(records):
    found: dict = {}
    for record in records:
        if record.strategy != VERIFY:
            found.setdefault(json.dumps(record.task, sort_keys=True), []).append(record)
    return found


def test_a_stopped_tune_resumes_from_its_log_without_measuring_a_config_twice(tmp_path):
    tasks, log = _tasks(tmp_path), TuningLog(tmp_path / "log.jsonl")
    first = tune_model(tasks, log, strategy="random", budget=ModelBudget(trials=10))
    assert sum(r.trials for r in first) == 10
    second = tune_model(tasks, log, strategy="random", budget=ModelBudget(trials=22))
    assert sum(r.trials for r in second) == 12 and sum(r.resumed for r in second) == 10
    for records in _by_task(log.read()).values():
        assert records[0].strategy == "default"
        assert [r.trial for r in records] == list(range(1, len(records) + 1))
        configs = [json.dumps(r.config, sort_keys=True) for r in records]
        assert len(set(configs)) == len(configs)
    assert all(math.isfinite(r.best_cost) for r in second)


def test_early_stop_leaves_a_task_and_the_rest_of_the_budget_is_not_forced_on_it(tmp_path):
    tasks, log = _tasks(tmp_path), TuningLog(tmp_path / "log.jsonl")
    results = tune_model(tasks, log, strategy="random", budget=ModelBudget(early_stop=1))
    # every task stops at its first trial without improvement: a few trials each, not 1 << 40
    assert all(2 <= r.trials <= 16 for r in results)


def test_the_measurer_cache_keeps_a_few_open_and_closes_the_least_recent(tmp_path):
    from coretune.kernels import open_device

    tasks, limits = _tasks(tmp_path), open_device(None).limits
    with MeasurerCache(None, MeasureOptions(), 0, capacity=1) as cache:
        first = cache.get(0, tasks[0])
        assert first.measure([tasks[0].template().default_config(limits)])[0].ok
        runner = first._runner
        assert cache.get(0, tasks[0]) is first and runner.is_alive()
        second = cache.get(1, tasks[1])
        assert second is not first and first._runner is None and first._pool is None
        assert not runner.is_alive()
