"""The tuning database the executor queries: the best valid config of a task on a device.

(What AutoTVM calls ApplyHistoryBest.) Records from another device or another coretune version
are never used; they are counted and reported, so a user sees why a kernel ran untuned. A
record whose config is not valid for its template (a log edited by hand) is rejected with its
file and line number.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from coretune.kernels.device import DeviceLimits
from coretune.kernels.space import Config
from coretune.kernels.templates import get_template
from coretune.kernels.workload import Workload

from .records import LogError, Record, TuningLog, device_key, task_key


@dataclass
class Lookup:
    config: Config | None
    record: Record | None
    other_devices: int = 0  # records of this task that were skipped, by reason
    other_versions: int = 0


@dataclass
class TuningDatabase:
    records: list[tuple[str, int, Record]] = field(default_factory=list)  # (file, line, record)

    @classmethod
    def load(cls, paths: Iterable[str | Path]) -> "TuningDatabase":
        db = cls()
        for path in paths:
            log = TuningLog(path)
            if not log.path.exists():
                raise LogError(f"tuning log {path} does not exist")
            db.records += [(str(path), n, r) for n, r in log.read_numbered()]
        return db

    def best(
        self, task_dict: dict, fingerprint: dict, version: str, limits: DeviceLimits | None = None
    ) -> Lookup:
        """The fastest valid record of this task on this device and version."""
        key, device = task_key(task_dict), device_key(fingerprint)
        lookup = Lookup(None, None)
        for path, line, record in self.records:
            if task_key(record.task) != key:
                continue
            if device_key(record.device) != device:
                lookup.other_devices += 1
                continue
            if record.coretune_version != version:
                lookup.other_versions += 1
                continue
            if not record.ok:
                continue
            if limits is not None:
                self._check(path, line, record, limits)
            if lookup.record is None or record.best_cost < lookup.record.best_cost:
                lookup.config, lookup.record = Config(record.config), record
        return lookup

    @staticmethod
    def _check(path, line, record: Record, limits: DeviceLimits) -> None:
        template = get_template(record.task["template"])
        workload = Workload.from_key(record.task["workload"])
        reason = template(workload).space(limits).why_invalid(record.config)
        if reason:
            raise LogError(f"{path}:{line}: invalid config {record.config}: {reason}")
