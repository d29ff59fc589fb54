"""Whole-model tuning by expected gain (tuner.model_tune) on the default device."""

import json
import math

import coretune as ct
from coretune.tuner.measure import Measurer
from coretune.tuner.model_tune import ModelBudget, tune_model
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


def test_one_measurer_moves_between_tasks_without_new_workers(tmp_path):
    from coretune.kernels import open_device

    tasks, limits = _tasks(tmp_path), open_device(None).limits
    with Measurer(tasks[0]).start() as measurer:
        runner = measurer._runner.pid
        for task in (tasks[0], tasks[1], tasks[0]):
            measurer.use(task)
            result = measurer.measure([task.template().default_config(limits)])[0]
            assert result.ok, result.message  # checked against this task's reference
        assert measurer._runner.pid == runner
