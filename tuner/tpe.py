"""Optuna's TPE sampler behind the ask/tell strategy interface.

TPE models p(config | good) and p(config | bad) per knob and jointly (multivariate), which
suits ordinal and categorical knobs and rugged, partly failing kernel spaces better than a
Gaussian process does (measured in benchmarks/tuner_efficiency.py on Kernel Tuner's tables).
Numeric knobs are ordinal (the index of the choice), others categorical; costs are modelled as
log(seconds), a failed trial as twice the worst cost seen. A config that breaks a restriction
is told to the sampler as a failure without being proposed, so the sampler learns where the
valid region is while the driver only ever sees valid configs.
"""

import math
import warnings

from .strategies import RandomSearch, Strategy

STARTUP_TRIALS = 4  # random configs before the model: fewer than skopt's default 10
SMALL_KNOB = 4  # knobs with this many choices or fewer: every choice counts as a neighbour
# Asks per wanted config before topping up at random (all invalid or repeated). Each ask costs
# more as the study grows; on Kernel Tuner's tables 4 find the same configs as 32 (medians over
# 20 seeds equal at 16-64 trials) with the slowest 4-config propose at 128 observations down
# from 0.6 s to 0.1 s (benchmarks/results/tuner_efficiency.md).
ASK_TRIES = 4


class TPESearch(Strategy):
    name = "tpe"

    def __init__(self, space, seed=0, prior=()):
        super().__init__(space, seed, prior)
        import optuna
        from optuna.distributions import CategoricalDistribution, IntDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self._knobs = [k for k in space.knobs if len(k.choices) > 1]
        self._fixed = {k.name: k.choices[0] for k in space.knobs if len(k.choices) == 1}
        self._dists = {}
        for knob in self._knobs:
            numeric = all(
                isinstance(c, int | float) and not isinstance(c, bool) for c in knob.choices
            )
            count = len(knob.choices)
            self._dists[knob.name] = (
                IntDistribution(0, count - 1) if numeric else CategoricalDistribution(range(count))
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate and constant_liar are "experimental"
            sampler = optuna.samplers.TPESampler(
                seed=int(self.rng.integers(2**31)),
                n_startup_trials=STARTUP_TRIALS,
                multivariate=True,
                constant_liar=True,  # a batch's pending trials push its other asks apart
            )
        self._study = optuna.create_study(sampler=sampler, direction="minimize")
        self._pending = {}  # config -> its running trial
        self._unscaled = []  # failed trials told once a finite cost gives the scale
        self._worst = None
        self._random = RandomSearch(space, int(self.rng.integers(2**31)))
        self._best = None  # (cost, config)
        self._calls = 0

    def _near_best(self):
        """An unmeasured neighbour of the best config one step away in one knob's choices.

        Kernel spaces are rugged and TPE samples around good regions without trying the
        adjacent config that is better still (pnpoly in the replay); one such step per batch
        is the cheap local search that closes the gap."""
        best = self._best[1]
        index = {k.name: k.choices.index(best[k.name]) for k in self.space.knobs}
        steps = []
        for knob in self.space.knobs:
            near = range(len(knob.choices))  # a few choices: often flags or methods, try all
            if len(knob.choices) > SMALL_KNOB:
                near = (index[knob.name] - 1, index[knob.name] + 1)
            for i in near:
                if 0 <= i < len(knob.choices) and i != index[knob.name]:
                    steps.append(self._fixed_config({**best.to_json(), knob.name: knob.choices[i]}))
        steps = [c for c in steps if c not in self.seen and self.space.is_valid(c)]
        if not steps:
            return None
        return steps[int(self.rng.integers(len(steps)))]

    def _decode(self, params):
        values = {k.name: k.choices[params[k.name]] for k in self._knobs}
        return self._fixed_config(values)

    def _fixed_config(self, values):
        from coretune.kernels.space import Config

        return Config({**self._fixed, **values})

    def _encode(self, config):
        return {k.name: k.choices.index(config[k.name]) for k in self._knobs}

    def _penalty(self):
        return None if self._worst is None else self._worst + math.log(2)

    def propose(self, n):
        picked = self._from_prior(n)
        self._calls += 1
        if len(picked) < n and self._best is not None and (n > 1 or self._calls % 2 == 0):
            local = self._near_best()
            if local is not None:
                picked.append(local)
        tries = 0
        while len(picked) < n and tries < ASK_TRIES * n:
            tries += 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial = self._study.ask(self._dists)
            config = self._decode(trial.params)
            if config in self.seen or config in picked:
                # a repeat: the sampler already knows (or is waiting for) this point
                self._study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
            elif not self.space.is_valid(config):
                self._fail(trial)
            else:
                self._pending[config] = trial
                picked.append(config)
        if len(picked) < n:  # the sampler keeps repeating itself: top up at random
            self._random.seen = self.seen | set(picked)
            picked += self._random.propose(n - len(picked))
        self.seen.update(picked)
        return picked

    def _fail(self, trial):
        penalty = self._penalty()
        if penalty is None:
            self._unscaled.append(trial)
        else:
            self._study.tell(trial, penalty)

    def observe(self, configs, costs):
        super().observe(configs, costs)
        good = [math.log(c) for c in costs if math.isfinite(c) and c > 0]
        if good:
            self._worst = max(good + ([self._worst] if self._worst is not None else []))
        for config, cost in zip(configs, costs, strict=True):
            finite = math.isfinite(cost) and cost > 0
            if finite and (self._best is None or cost < self._best[0]):
                self._best = (cost, config)
            trial = self._pending.pop(config, None)
            if trial is None:  # measured without asking us (a seed, a resumed log, a prior)
                if not finite and self._worst is None:
                    continue  # no scale for it yet; too early to matter
                self._add(config, math.log(cost) if finite else self._penalty())
            elif finite:
                self._study.tell(trial, math.log(cost))
            else:
                self._fail(trial)
        if self._worst is not None:
            for trial in self._unscaled:
                self._study.tell(trial, self._penalty())
            self._unscaled = []

    def _add(self, config, value):
        self._study.add_trial(
            self._optuna.trial.create_trial(
                params=self._encode(config), distributions=self._dists, value=value
            )
        )
