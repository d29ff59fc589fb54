"""Which template a build takes for a node that several templates compute (executor._choose)
when the log covers them unevenly."""

import pytest

import coretune as ct
from coretune.kernels import open_device
from coretune.tuner.records import VERIFY, Record, TuningLog
from coretune.tuner.task import extract_tasks

from .onnx_models import cnn


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import onnx

    path = tmp_path_factory.mktemp("choice") / "cnn.onnx"
    onnx.save(cnn()[0], path)
    return str(path)


def _alternatives(model):
    """(direct, winograd) tasks of the first node that both compute."""
    by_workload: dict = {}
    for task in extract_tasks(ct.import_onnx(model)):
        by_workload.setdefault(task.workload.key_string(), {})[task.template_name] = task
    pair = next(t for t in by_workload.values() if {"conv2d_direct", "conv2d_winograd"} <= set(t))
    return pair["conv2d_direct"], pair["conv2d_winograd"]


def _record(task, cost, strategy="random", round_=0, finalists=0):
    device = open_device(None)
    return Record(
        task=task.key(),
        config=task.template().default_config(device.limits).to_json(),
        costs=(cost,),
        device=device.info.fingerprint(),
        strategy=strategy,
        trial=1,
        started=1000.0 + round_,
        finished=1000.5 + round_,
        coretune_version=ct.__version__,
        round=round_,
        finalists=finalists,
    )


def _template_of(module, task) -> tuple[str, bool]:
    kernel = next(
        k
        for k in module.plan.kernels
        if k.task["workload"]["nodes"] == task.key()["workload"]["nodes"]
        and k.task["workload"]["inputs"][0] == task.key()["workload"]["inputs"][0]
    )
    return kernel.template, kernel.tuned


def test_an_alternative_measured_alone_does_not_replace_the_untuned_choice(model, tmp_path):
    direct, winograd = _alternatives(model)
    untuned, tuned = _template_of(ct.compile(model), direct)
    assert untuned == "conv2d_direct" and not tuned
    log = TuningLog(tmp_path / "partial.jsonl")
    log.append(_record(winograd, 1e-9))  # the only record: the direct task was never reached
    assert _template_of(ct.compile(model, None, [log.path]), direct) == ("conv2d_direct", False)
    log.append(_record(direct, 2e-9))  # now both are measured: the faster one wins
    assert _template_of(ct.compile(model, None, [log.path]), direct) == ("conv2d_winograd", True)


def test_alternatives_are_compared_like_for_like(model, tmp_path):
    direct, winograd = _alternatives(model)
    log = TuningLog(tmp_path / "mixed.jsonl")
    log.append(_record(direct, 2e-9))
    for round_ in (1, 2, 3):  # re-measured: its verified median (5e-9) is above its lowest
        log.append(_record(direct, 5e-9, VERIFY, round_, 1))
    log.append(_record(winograd, 3e-9))  # searched only
    # by lowest searched costs, direct's 2e-9 beats winograd's 3e-9 (its median would not)
    assert _template_of(ct.compile(model, None, [log.path]), direct) == ("conv2d_direct", True)
