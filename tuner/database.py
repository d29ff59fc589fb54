"""The tuning database the executor queries: the best valid config of a task on a device.

(What AutoTVM calls ApplyHistoryBest.) Records from another device or another coretune version
are never used; they are counted and reported, so a user sees why a kernel ran untuned. A
record whose config is not valid for its template (a log edited by hand) is rejected with its
file and line number. Where a tuning run verified its finalists (interleaved re-measurements,
tuner.driver), the best is the finalist with the lowest median over the complete rounds;
otherwise the lowest cost. Lines that are not valid records are skipped by the reader
(``skipped``: file, line, why), never trusted.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from coretune.kernels.device import DeviceLimits
from coretune.kernels.space import Config
from coretune.kernels.templates import get_template
from coretune.kernels.workload import Workload

from .records import VERIFY, LogError, Record, TuningLog, device_key, task_key, verified_costs


@dataclass
class Lookup:
    config: Config | None
    record: Record | None
    cost: float = float("inf")  # what the choice rests on: the verified median, or best_cost
    verified: bool = False
    searched_cost: float = float("inf")  # the lowest cost of the search (not re-measurements)
    other_devices: int = 0  # records of this task that were skipped, by reason
    other_versions: int = 0


@dataclass
class TuningDatabase:
    records: list[tuple[str, int, Record]] = field(default_factory=list)  # (file, line, record)
    skipped: list[tuple[str, int, str]] = field(default_factory=list)  # (file, line, why)

    @classmethod
    def load(cls, paths: Iterable[str | Path]) -> "TuningDatabase":
        db = cls()
        for path in paths:
            log = TuningLog(path)
            if not log.path.exists():
                raise LogError(f"tuning log {path} does not exist")
            db.records += [(str(path), n, r) for n, r in log.read_numbered()]
            db.skipped += [(str(path), n, why) for n, why in log.skipped]
        return db

    def best(
        self, task_dict: dict, fingerprint: dict, version: str, limits: DeviceLimits | None = None
    ) -> Lookup:
        """The fastest valid config of this task on this device and version."""
        key, device = task_key(task_dict), device_key(fingerprint)
        usable, other_devices, other_versions = [], 0, 0
        for path, line, record in self.records:
            if task_key(record.task) != key:
                continue
            if device_key(record.device) != device:
                other_devices += 1
            elif record.coretune_version != version:
                other_versions += 1
            else:
                if limits is not None and record.ok:
                    self._check(path, line, record, limits)
                usable.append(record)
        return replace(choose(usable), other_devices=other_devices, other_versions=other_versions)

    @staticmethod
    def _check(path, line, record: Record, limits: DeviceLimits) -> None:
        template = get_template(record.task["template"])
        workload = Workload.from_key(record.task["workload"])
        reason = template(workload).space(limits).why_invalid(record.config)
        if reason:
            raise LogError(f"{path}:{line}: invalid config {record.config}: {reason}")


def choose(records: list[Record]) -> Lookup:
    """The winner among one task's records on one device and version: the finalist with the
    lowest verified median if a verification completed a round, else the record with the
    lowest cost. Failed verifications count: a finalist that failed a round is no winner."""
    lookup = Lookup(None, None)
    for record in records:
        if record.ok and record.strategy != VERIFY and record.best_cost < lookup.cost:
            lookup.config, lookup.record = Config(record.config), record
            lookup.cost = lookup.searched_cost = record.best_cost
    verified = verified_costs(records)
    if verified:
        lookup.config = min(verified, key=verified.get)
        lookup.cost, lookup.verified = verified[lookup.config], True
        lookup.record = next(
            r
            for r in reversed(records)
            if r.strategy == VERIFY and Config(r.config) == lookup.config
        )
    return lookup
