"""The whole-model allocator (tuner.allocation): which task gets the next slice of trials."""

import math

import pytest

from coretune.tuner.allocation import (
    FLAT_WINDOW,
    PROBE,
    SLICE,
    GainAllocator,
    TaskProgress,
    model_latency,
)


def _task(group="a", weight=1, flops=1e9, template="conv2d_direct", curve=(), seconds=0.05):
    task = TaskProgress(group, weight, int(flops), template)
    for trials, best in curve:
        task.curve.append((trials, best))
        task.trials, task.best = trials, best
    task.measured, task.seconds = task.trials, task.trials * seconds
    return task


def _improving(start, factor, trials):
    """A curve whose best improves by ``factor`` every slice."""
    return [(n, start / factor ** (n // SLICE)) for n in range(SLICE, trials + 1, SLICE)]


def _flat(cost, trials):
    return [(n, cost) for n in range(SLICE, trials + 1, SLICE)]


def test_every_default_first_then_probes_most_work_first():
    small = _task("a", flops=1e8)
    big = _task("b", flops=1e9, weight=2)
    probed = _task("c", flops=1e10, curve=[(1, 1e-3)])
    done = _task("d", flops=1e11, curve=_flat(1e-3, PROBE))
    allocator = GainAllocator([small, big, probed, done])
    assert allocator.next_task() == 1 and allocator.slice_for(1) == 1  # its default alone
    allocator.update(1, 1, 1e-3, 0.05, 1)
    assert allocator.next_task() == 0
    allocator.update(0, 1, 1e-3, 0.05, 1)
    assert allocator.next_task() == 2 and allocator.slice_for(2) == SLICE


def test_a_flat_task_gets_nothing_and_an_improving_one_gets_the_slice():
    flat = _task("a", curve=_flat(1e-3, 2 * FLAT_WINDOW))
    improving = _task("b", curve=_improving(1e-3, 1.05, 2 * FLAT_WINDOW))
    allocator = GainAllocator([flat, improving])
    assert allocator.is_flat(0) and not allocator.is_flat(1)
    assert allocator.rate(0) == 0
    assert allocator.next_task() == 1


def test_the_saving_is_weighted_by_how_often_the_model_runs_the_kernel():
    curve = _improving(1e-3, 1.02, 24)
    once, four_times = _task("a", curve=curve), _task("b", weight=4, curve=curve)
    allocator = GainAllocator([once, four_times])
    assert allocator.expected_saving(1) == pytest.approx(4 * allocator.expected_saving(0))
    assert allocator.next_task() == 1


def test_a_dominated_alternative_gets_nothing():
    direct = _task("node", template="conv2d_direct", curve=_flat(1e-3, 24))
    winograd = _task("node", template="conv2d_winograd", curve=_improving(3e-3, 1.01, 24))
    allocator = GainAllocator([direct, winograd])
    assert allocator.expected_saving(1) == 0
    assert allocator.contenders() == [0]


def test_an_alternative_that_can_overtake_is_counted_by_what_it_would_save():
    direct = _task("node", template="conv2d_direct", curve=_flat(1.0e-3, 24))
    winograd = _task("node", template="conv2d_winograd", curve=_improving(1.3e-3, 1.05, 24))
    allocator = GainAllocator([direct, winograd])
    assert winograd.best > direct.best
    saving = allocator.expected_saving(1)
    speedup = allocator.expected_speedup(1)
    assert 0 < saving == pytest.approx(max(0, 1.0e-3 - winograd.best / (1 + speedup)))
    assert allocator.contenders() == [0, 1]


def test_the_cost_of_a_slice_is_the_tasks_own_seconds_per_trial():
    curve = _improving(1e-3, 1.05, 24)
    slow, fast = _task("a", curve=curve, seconds=0.5), _task("b", curve=curve, seconds=0.05)
    allocator = GainAllocator([slow, fast])
    assert allocator.rate(1) == pytest.approx(10 * allocator.rate(0))
    assert allocator.next_task() == 1


def test_nothing_left_worth_a_slice_ends_the_tune():
    tasks = [_task(g, curve=_flat(1e-3, FLAT_WINDOW + SLICE)) for g in "abc"]
    tasks.append(_task("d", curve=_improving(1e-3, 1.05, 24)))
    tasks[-1].exhausted = True
    assert GainAllocator(tasks).next_task() is None


def test_headroom_caps_the_guess_at_the_templates_best_throughput():
    leader = _task("a", flops=1e9, curve=_flat(1e-2, 24))  # 100 GFLOP/s
    behind = _task("b", flops=1e9, curve=_flat(5e-2, 24))  # 20 GFLOP/s
    allocator = GainAllocator([leader, behind])
    assert allocator.headroom(0) == pytest.approx(0.5)
    assert allocator.headroom(1) == pytest.approx(1.5 * 100 / 20 - 1)


def test_model_latency_takes_each_nodes_best_alternative_times_its_weight():
    tasks = [
        _task("n1", weight=2, curve=[(8, 1e-3)]),
        _task("n1", weight=2, template="conv2d_winograd", curve=[(8, 3e-3)]),
        _task("n2", curve=[(8, 5e-4)]),
    ]
    assert model_latency(tasks) == pytest.approx(2e-3 + 5e-4)
    assert math.isinf(model_latency([_task("x")]))
