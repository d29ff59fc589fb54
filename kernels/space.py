"""Config spaces: knobs declared once, restrictions as predicates, configs as frozen values.

A template declares its knobs (each a name and a tuple of choices) and its restrictions (a
reason and a predicate over the config and the device limits). ``ConfigSpace`` rejects an
invalid config with the reason, before anything is rendered or compiled.
"""

import itertools
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from coretune.errors import CoretuneError

from .device import DeviceLimits


class InvalidConfig(CoretuneError):
    """A config outside its space, or one that breaks a restriction or a device limit."""


@dataclass(frozen=True)
class Knob:
    name: str
    choices: tuple
    doc: str = ""


class Config(Mapping):
    """An immutable, hashable assignment of a value to every knob."""

    __slots__ = ("_items",)

    def __init__(self, values: Mapping[str, Any]):
        self._items = tuple(sorted(values.items()))

    def __getitem__(self, key):
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self):
        return (name for name, _ in self._items)

    def __len__(self):
        return len(self._items)

    def __hash__(self):
        return hash(self._items)

    def __eq__(self, other):
        return isinstance(other, Config) and self._items == other._items

    def __repr__(self):
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in self._items) + ")"

    def to_json(self) -> dict:
        return dict(self._items)

    def key(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Restriction:
    reason: str
    holds: Callable[[Config, DeviceLimits], bool]


class ConfigSpace:
    def __init__(
        self,
        knobs: list[Knob],
        restrictions: list[Restriction],
        limits: DeviceLimits,
        work_group: Callable[[Config], tuple[int, ...]],
        local_mem_bytes: Callable[[Config], int] = lambda c: 0,
    ):
        self.knobs = tuple(knobs)
        self.restrictions = tuple(restrictions)
        self.limits = limits
        self._work_group = work_group
        self._local_mem_bytes = local_mem_bytes

    @property
    def size(self) -> int:
        """Points in the cartesian product (valid or not)."""
        return math.prod(len(k.choices) for k in self.knobs)

    def why_invalid(self, config: Mapping[str, Any]) -> str | None:
        for knob in self.knobs:
            if knob.name not in config:
                return f"knob {knob.name!r} has no value"
            if config[knob.name] not in knob.choices:
                return f"{knob.name}={config[knob.name]!r} is not one of {knob.choices}"
        extra = set(config) - {k.name for k in self.knobs}
        if extra:
            return f"unknown knob(s) {', '.join(sorted(extra))}"
        config = Config(config)
        for restriction in self.restrictions:
            if not restriction.holds(config, self.limits):
                return restriction.reason
        return self.limits.fits_work_group(
            self._work_group(config)
        ) or self.limits.fits_local_memory(self._local_mem_bytes(config))

    def check(self, config: Mapping[str, Any]) -> Config:
        reason = self.why_invalid(config)
        if reason:
            raise InvalidConfig(f"invalid config {dict(config)}: {reason}")
        return Config(config)

    def is_valid(self, config) -> bool:
        return self.why_invalid(config) is None

    def all_valid(self) -> Iterator[Config]:
        names = [k.name for k in self.knobs]
        for values in itertools.product(*(k.choices for k in self.knobs)):
            config = Config(dict(zip(names, values, strict=True)))
            if self.is_valid(config):
                yield config

    def neighbours(self, config: Config) -> list[Config]:
        """The valid configs that differ from ``config`` in exactly one knob."""
        found = []
        for knob in self.knobs:
            for value in knob.choices:
                if value != config[knob.name]:
                    other = Config({**config.to_json(), knob.name: value})
                    if self.is_valid(other):
                        found.append(other)
        return found

    def sample(
        self, count: int, rng: np.random.Generator, max_tries: int = 100_000
    ) -> list[Config]:
        """Up to ``count`` distinct valid configs drawn uniformly from the product."""
        seen: set[Config] = set()
        for _ in range(max_tries):
            if len(seen) == count:
                break
            config = Config({k.name: k.choices[rng.integers(len(k.choices))] for k in self.knobs})
            if config not in seen and self.is_valid(config):
                seen.add(config)
        return sorted(seen, key=Config.key)
