"""Search strategies, replayed against a committed table of measured costs.

The table (benchmarks/results/tuner_table_dense_256x512x256.csv) holds the cost of every valid
config of a gemm sub-space, measured once on PoCL by benchmarks/tuner_efficiency.py: replaying
against it is cheap and deterministic, so these tests pin how good each strategy is.
"""

import itertools
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


# Tables measured elsewhere: Kernel Tuner's caches (benchmarks/tables/README.md).
import outside_tables  # noqa: E402


@pytest.fixture(scope="module")
def convolution():
    """A 2-D convolution on an RTX 3090: 6768 configs pass the kernel's restrictions of the
    16896 in the product, 5220 of them ran."""
    return outside_tables.OutsideTable(outside_tables.TABLES / "convolution_RTX_3090.json.gz")


def _ask_tell(table, strategy, seed, budget, batch=4, prior=()):
    search = make_strategy(strategy, table.space, seed, prior=prior)
    proposed = []
    while len(proposed) < budget:
        configs = search.propose(min(batch, budget - len(proposed)))
        proposed += configs
        search.observe(configs, [table.cost(c) for c in configs])
    return proposed


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_restricted_spaces_get_only_valid_configs_and_no_repeats(convolution, strategy):
    proposed = _ask_tell(convolution, strategy, seed=4, budget=24, batch=3)
    assert len(proposed) == 24 and len(set(proposed)) == 24
    assert all(c in convolution.costs for c in proposed)  # never outside the restrictions


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_the_same_seed_proposes_the_same_configs(convolution, strategy):
    first = _ask_tell(convolution, strategy, seed=7, budget=12)
    assert _ask_tell(convolution, strategy, seed=7, budget=12) == first


def test_a_budgeted_grid_does_not_walk_the_space_in_order(convolution):
    in_order = list(itertools.islice(convolution.space.all_valid(), 32))
    proposed = _ask_tell(convolution, "grid", seed=0, budget=32)
    assert len(set(proposed) & set(in_order)) < 4
    # the walk in order never leaves the first knob's first value; the shuffle does
    assert len({c["block_size_x"] for c in in_order}) == 1
    assert len({c["block_size_x"] for c in proposed}) > 4


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_prior_from_another_gpu_is_measured_first(convolution, strategy):
    other = outside_tables.OutsideTable(outside_tables.TABLES / "convolution_RTX_Titan.json.gz")
    prior = list(other.costs.items())
    best_there = [c for c, _ in sorted(prior, key=lambda p: p[1])[:4]]
    proposed = _ask_tell(convolution, strategy, seed=1, budget=8, prior=prior)
    assert proposed[:4] == best_there and len(set(proposed)) == 8


def test_a_broken_optuna_install_degrades_to_random_search(convolution, monkeypatch):
    from coretune.tuner.strategies import RandomSearch

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.warns(RuntimeWarning, match="using random search"):
        search = make_strategy("tpe", convolution.space, seed=0)
    assert isinstance(search, RandomSearch) and len(search.propose(4)) == 4


def test_tpe_gets_near_the_optimum_of_an_outside_table_in_64_trials(convolution):
    fractions = [
        convolution.optimum / min(convolution.cost(c) for c in _ask_tell(convolution, "tpe", s, 64))
        for s in range(3)
    ]
    assert np.median(fractions) >= 0.95, fractions
