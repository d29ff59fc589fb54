"""Search strategies, all behind one ask/tell interface.

``propose(n)`` returns up to n new valid configs (fewer when the space is exhausted);
``observe(configs, costs)`` reports their costs in seconds (``inf`` for a failed trial).
Strategies never see an invalid config and never propose one twice. The measure/log/stop
loop lives once, in the driver.
"""

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np

from coretune.kernels.space import Config, ConfigSpace

PRIOR_FIRST = 4  # a prior's best configs measured before anything the strategy picks itself


class Strategy:
    """The ask/tell interface. ``prior`` is (config, cost) pairs from another device or a
    similar task: its best valid configs are proposed first (and so re-measured here, never
    taken as an answer); a model-based strategy may also warm-start its surrogate from it."""

    name = ""

    def __init__(self, space: ConfigSpace, seed: int = 0, prior=()):
        self.space = space
        self.rng = np.random.default_rng(seed)
        self.seen: set[Config] = set()
        self.prior = sorted(
            ((c, cost) for c, cost in prior if math.isfinite(cost) and space.is_valid(c)),
            key=lambda pair: pair[1],
        )
        self._prior_queue = [c for c, _ in self.prior[:PRIOR_FIRST]]

    def _from_prior(self, n: int) -> list[Config]:
        """Up to n of the prior's best configs not measured yet (each offered once)."""
        picked = []
        while self._prior_queue and len(picked) < n:
            config = self._prior_queue.pop(0)
            if config not in self.seen:
                picked.append(config)
        self.seen.update(picked)
        return picked

    def propose(self, n: int) -> list[Config]:
        raise NotImplementedError

    def observe(self, configs: Sequence[Config], costs: Sequence[float]) -> None:
        self.seen.update(configs)


class RandomSearch(Strategy):
    """Uniform over the valid configs, in one seeded order: proposals depend only on the seed
    and on what was already measured, so a run resumed from its log continues exactly as the
    uninterrupted run would have."""

    name = "random"

    def __init__(self, space, seed=0, prior=()):
        super().__init__(space, seed, prior)
        self._order = self._draws()

    def _draws(self):
        knobs = self.space.knobs
        for _ in range(100_000):
            config = Config({k.name: k.choices[self.rng.integers(len(k.choices))] for k in knobs})
            if self.space.is_valid(config):
                yield config
        yield from self.space.all_valid()  # a nearly exhausted space: the rest, in order

    def propose(self, n):
        picked = self._from_prior(n)
        while len(picked) < n:  # take only what is used: the order must not skip a draw
            config = next(self._order, None)
            if config is None:
                break
            if config not in self.seen and config not in picked:
                picked.append(config)
        self.seen.update(picked)
        return picked


class GridSearch(Strategy):
    """Every valid config once, in a seeded shuffle of the space: exhaustive, for small spaces
    and baselines. Not in the space's own order: under a budget that walk only ever sees the
    first knob's first values (on Kernel Tuner's convolution table its first 128 configs all
    fail to compile)."""

    name = "grid"

    def __init__(self, space, seed=0, prior=()):
        super().__init__(space, seed, prior)
        configs = list(space.all_valid())
        self._order = iter([configs[i] for i in self.rng.permutation(len(configs))])

    def propose(self, n):
        picked = self._from_prior(n)
        if len(picked) == n:
            return picked
        for config in self._order:
            if config not in self.seen:
                picked.append(config)
                self.seen.add(config)
                if len(picked) == n:
                    break
        return picked


VALIDITY_CACHE = 1 << 16  # answers kept about which knob-index points are valid
MODEL_POINTS = 256  # observations the model is fit on, at most


class BayesianSearch(Strategy):
    """scikit-optimize's Optimizer over the knobs, constrained to valid configs.

    Numeric knobs are ordinal dimensions (the index of the choice, so the model sees that 64
    lies between 32 and 128); others are categorical. The model is a Gaussian process with the
    hedged acquisition (gp_hedge) or, for large categorical spaces, extra trees. Costs are
    modelled as log(seconds); a failed trial counts as twice the worst cost seen.

    The model is fit on at most MODEL_POINTS observations: beyond that, the best half and the
    most recent half. A Gaussian process costs O(n^2) memory and O(n^3) time per fit, so an
    unbounded one made a 500-trial run grow by tens of MiB and spend most of its time fitting;
    the best points keep the model sharp where it matters, the recent ones where it searches.

    Once the model exists, one proposal in each batch (every other one when proposing one at a
    time) is local: the unmeasured one-knob neighbour of the best config so far that the model
    predicts fastest. Kernel spaces are rugged, and the global acquisition often lands next to
    the best config without trying the neighbour that is better still (measured in
    benchmarks/tuner_efficiency.py).
    """

    name = "bayesian"

    def __init__(
        self,
        space,
        seed=0,
        prior=(),
        initial_points: int = 4,
        acquisition: str = "gp_hedge",
        initial_generator: str = "random",
        local_search: bool = True,
    ):
        super().__init__(space, seed, prior)
        from skopt import Optimizer
        from skopt.space import Categorical, Integer
        from skopt.utils import cook_estimator, normalize_dimensions

        self._knobs = space.knobs
        dims = []
        for knob in self._knobs:
            numeric = all(
                isinstance(c, int | float) and not isinstance(c, bool) for c in knob.choices
            )
            if len(knob.choices) == 1:
                dims.append(Categorical([0], name=knob.name))
            elif numeric:
                dims.append(Integer(0, len(knob.choices) - 1, name=knob.name))
            else:
                dims.append(Categorical(list(range(len(knob.choices))), name=knob.name))
        categorical = sum(isinstance(d, Categorical) for d in dims)
        categorical_heavy = space.size > 50_000 and categorical > len(dims) // 2
        seed = int(self.rng.integers(2**31))
        if categorical_heavy:
            estimator, acquisition = "ET", "EI"  # gp_hedge needs a GP
        else:
            # One hyper-parameter fit per observation is plenty here: skopt's default of
            # several restarts triples the time per trial for no measurable gain.
            estimator = cook_estimator(
                "GP",
                space=normalize_dimensions(dims),
                random_state=seed,
                noise="gaussian",
                n_restarts_optimizer=0,
            )
        # skopt samples thousands of points per proposal under the constraint; remembering
        # every answer would grow without bound on large spaces (millions of points).
        self._valid_key = functools.lru_cache(maxsize=VALIDITY_CACHE)(self._valid_key_uncached)
        self._new_optimizer = functools.partial(
            Optimizer,
            dims,
            base_estimator=estimator,
            acq_func=acquisition,
            acq_optimizer="sampling",
            n_initial_points=initial_points,
            initial_point_generator=initial_generator,
            random_state=seed,
            space_constraint=self._is_valid_point,
            acq_optimizer_kwargs={"n_points": 1000},
            model_queue_size=1,  # skopt keeps every fitted model otherwise: memory grows per trial
        )
        self._optimizer = self._new_optimizer()
        self._seed = seed
        self._worst = None
        self._failed: list[list[int]] = []
        self._observed: list[tuple[list[int], float]] = []  # (point, log cost) the model knows
        self._local_search = local_search
        self._best: tuple[float, Config] | None = None
        self._calls = 0

    def _is_valid_point(self, point) -> bool:
        """The constraint skopt samples under (asked about the same points many times)."""
        return self._valid_key(tuple(int(i) for i in point))

    def _valid_key_uncached(self, key: tuple) -> bool:
        return self.space.is_valid(self._decode(key))

    def _decode(self, point) -> Config:
        return Config({k.name: k.choices[int(i)] for k, i in zip(self._knobs, point, strict=True)})

    def _encode(self, config: Config) -> list[int]:
        return [k.choices.index(config[k.name]) for k in self._knobs]

    def propose(self, n):
        self._calls += 1
        picked: list[Config] = self._from_prior(n)
        if n > len(picked) and self._local_search and (n > 1 or self._calls % 2 == 0):
            local = self._best_neighbour()
            if local is not None:
                picked.append(local)
        for _attempt in range(4):
            if len(picked) >= n:
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # skopt warns when it repeats a point
                points = self._optimizer.ask(n_points=n - len(picked))
            for point in points:
                config = self._decode(point)
                if config not in self.seen and config not in picked and self.space.is_valid(config):
                    picked.append(config)
        if len(picked) < n:  # the model keeps repeating itself: top up at random
            extra = RandomSearch(self.space, int(self.rng.integers(2**31)))
            extra.seen = self.seen | set(picked)
            picked += extra.propose(n - len(picked))
        self.seen.update(picked)
        return picked

    def _best_neighbour(self) -> Config | None:
        """The unmeasured neighbour of the best config with the lowest predicted cost."""
        if self._best is None or not self._optimizer.models:
            return None
        candidates = [c for c in self.space.neighbours(self._best[1]) if c not in self.seen]
        if not candidates:
            return None
        points = self._optimizer.space.transform([self._encode(c) for c in candidates])
        predicted = self._optimizer.models[-1].predict(points)
        return candidates[int(np.argmin(predicted))]

    def observe(self, configs, costs):
        super().observe(configs, costs)
        good = [math.log(c) for c in costs if math.isfinite(c) and c > 0]
        if good:
            self._worst = max(good + ([self._worst] if self._worst is not None else []))
        xs, ys = [], []
        for config, cost in zip(configs, costs, strict=True):
            if math.isfinite(cost) and cost > 0:
                if self._best is None or cost < self._best[0]:
                    self._best = (cost, config)
                xs.append(self._encode(config))
                ys.append(math.log(cost))
            else:
                self._failed.append(self._encode(config))
        if self._worst is not None and self._failed:  # penalise failures once a scale exists
            xs += self._failed
            ys += [self._worst + math.log(2)] * len(self._failed)
            self._failed = []
        if not xs:
            return
        self._observed += zip(xs, ys, strict=True)
        if len(self._observed) > MODEL_POINTS:  # refit a fresh model on a bounded subset
            # a new random stream each time (the same one would sample the same candidates),
            # a function of the data only, so a resumed run refits exactly as the first did
            stream = (self._seed + len(self._observed)) % 2**31
            self._optimizer = self._new_optimizer(random_state=stream)
            xs, ys = map(list, zip(*self._model_subset(), strict=True))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._optimizer.tell(xs, ys)

    def _model_subset(self) -> list[tuple[list[int], float]]:
        """The best MODEL_POINTS / 2 observations, then the most recent others."""
        half = MODEL_POINTS // 2
        order = sorted(range(len(self._observed)), key=lambda i: self._observed[i][1])
        keep = set(order[:half])
        for i in range(len(self._observed) - 1, -1, -1):
            if len(keep) == MODEL_POINTS:
                break
            keep.add(i)
        return [self._observed[i] for i in sorted(keep)]


def _tpe(space, seed=0, prior=()):
    from .tpe import TPESearch  # optuna's import is slow: only when asked for

    return TPESearch(space, seed, prior)


_tpe.name = "tpe"
STRATEGIES = {s.name: s for s in (BayesianSearch, RandomSearch, GridSearch, _tpe)}
# Picked by the replay on Kernel Tuner's tables (benchmarks/results/tuner_efficiency.md): tpe
# is ahead of the Gaussian process at 16 trials on all 8 and at 32 on 6, and asks in 0.12 s
# against 2.2 s; without optuna it becomes random search with a warning (make_strategy).
DEFAULT_STRATEGY = "tpe"


def make_strategy(name: str, space: ConfigSpace, seed: int = 0, prior=()) -> Strategy:
    """The named strategy; a model-based one whose optimiser does not import (a broken or
    missing install) becomes random search with a warning, never a crash."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    try:
        return STRATEGIES[name](space, seed, prior)
    except ImportError as e:
        warnings.warn(
            f"strategy {name!r} unavailable ({e}); using random search", RuntimeWarning, 2
        )
        return RandomSearch(space, seed, prior)
