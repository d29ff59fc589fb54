"""Search strategies, replayed against a committed table of measured costs.

The table (benchmarks/results/tuner_table_dense_256x512x256.csv) holds the cost of every valid
config of a gemm sub-space, measured once on PoCL by benchmarks/tuner_efficiency.py: replaying
against it is cheap and deterministic, so these tests pin how good each strategy is.
"""

import math
import pathlib
import sys

import numpy as np
import pytest

from coretune.kernels.space import Config
from coretune.tuner.strategies import STRATEGIES, make_strategy

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import tuner_efficiency  # noqa: E402

NAME = "dense_256x512x256"


@pytest.fixture(scope="module")
def setup(device):
    task = tuner_efficiency.TASKS[NAME]()
    table = tuner_efficiency.load_table(NAME)
    space = tuner_efficiency.space_for(NAME, task, device.limits)
    return task, table, space


def _run(space, table, strategy, seed, budget, batch=4):
    search = make_strategy(strategy, space, seed)
    seen, best, curve = [], math.inf, []
    while len(seen) < budget:
        configs = search.propose(min(batch, budget - len(seen)))
        if not configs:
            break
        seen += configs
        costs = [table[c] for c in configs]
        search.observe(configs, costs)
        best = min(best, *costs)
        curve.append(best)
    return seen, best


def test_the_table_covers_the_space(setup):
    _, table, space = setup
    assert set(table) == set(space.all_valid()) and len(table) >= 300


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_proposals_are_valid_and_never_repeat(setup, strategy):
    _, table, space = setup
    seen, _ = _run(space, table, strategy, seed=1, budget=24, batch=5)
    assert len(seen) == 24 and len(set(seen)) == 24
    assert all(space.is_valid(c) for c in seen)


def test_grid_enumerates_every_valid_config_once(setup):
    _, table, space = setup
    seen, best = _run(space, table, "grid", seed=0, budget=len(table) + 10, batch=64)
    assert set(seen) == set(table) and len(seen) == len(table)
    assert best == min(table.values())


def test_failed_trials_are_observed_without_breaking_the_model(setup):
    _, table, space = setup
    search = make_strategy("bayesian", space, seed=3)
    for _ in range(4):
        configs = search.propose(4)
        search.observe(configs, [math.inf, *(table[c] for c in configs[1:])])
    assert len(search.seen) == 16


def test_the_model_is_fit_on_a_bounded_set_of_the_best_and_latest_points(setup, monkeypatch):
    """Beyond MODEL_POINTS observations the GP is refit on the best half and the most recent
    half, so its memory and fit time stop growing with the length of the run."""
    from coretune.tuner import strategies

    monkeypatch.setattr(strategies, "MODEL_POINTS", 16)
    _, table, space = setup
    search = make_strategy("bayesian", space, seed=2)
    observed = []
    for _ in range(10):
        configs = search.propose(4)
        search.observe(configs, [table[c] for c in configs])
        observed += configs
        assert len(search._optimizer.Xi) <= 16
    assert len(set(observed)) == 40 and all(space.is_valid(c) for c in observed)
    modelled = {search._decode(x) for x in search._optimizer.Xi}
    best = sorted(observed, key=table.get)[:8]
    assert set(best) <= modelled and set(observed[-4:]) <= modelled


def test_bayesian_beats_random_at_32_trials(setup):
    _, table, space = setup
    exhaustive = min(table.values())
    ratios = {
        s: [exhaustive / _run(space, table, s, seed, 32)[1] for seed in range(8)]
        for s in ("bayesian", "random")
    }
    assert np.median(ratios["bayesian"]) >= 0.95, ratios
    assert np.median(ratios["bayesian"]) >= np.median(ratios["random"]), ratios


def test_configs_are_hashable_values():
    a, b = Config({"x": 1, "y": 2}), Config({"y": 2, "x": 1})
    assert a == b and hash(a) == hash(b) and a.key() == '{"x":1,"y":2}'


def test_random_search_resumes_exactly(setup):
    """Killed after some trials and restarted from its log, a random search proposes exactly
    what the uninterrupted run would have (the kill campaign relies on it)."""
    _, table, space = setup
    whole = make_strategy("random", space, seed=5)
    uninterrupted = whole.propose(4) + whole.propose(4) + whole.propose(4)
    resumed = make_strategy("random", space, seed=5)
    resumed.observe(uninterrupted[:6], [table[c] for c in uninterrupted[:6]])
    assert resumed.propose(6) == uninterrupted[6:]
