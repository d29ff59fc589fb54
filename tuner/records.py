"""Tuning-log records and the append-only JSON-lines log.

One record per measurement, written and fsync'd before the next trial starts, so a killed run
loses at most the trial in flight. Appends take an exclusive lock, so two tuners can share a
log. The reader skips a torn last line with a warning and rejects any other damage with its
line number.
"""

import enum
import fcntl
import json
import os
import statistics
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from coretune.errors import CoretuneError
from coretune.kernels.space import Config

SCHEMA_VERSION = 1
VERIFY = "verify"  # the strategy of a record that re-measures a finalist (tuner.driver)


class LogError(CoretuneError):
    """A tuning log that cannot be trusted (damaged, wrong schema, invalid record)."""


class ErrorKind(enum.StrEnum):
    """The closed set of ways a trial can fail (cf. AutoTVM's MeasureErrorNo)."""

    NONE = "none"
    INVALID = "invalid"  # the config breaks a restriction or a device limit
    COMPILE = "compile"  # the device compiler rejected it, crashed or timed out
    RUNTIME = "runtime"  # the launch failed or the worker died
    TIMEOUT = "timeout"  # the kernel ran past the time limit
    WRONG_RESULT = "wrong_result"  # it ran, and disagreed with the numpy reference


@dataclass(frozen=True)
class Record:
    task: dict  # {"template": ..., "workload": ...}
    config: dict
    costs: tuple[float, ...]  # seconds per run, every repeat
    error: ErrorKind = ErrorKind.NONE
    message: str = ""
    device: dict = field(default_factory=dict)  # the device fingerprint
    dialect: str = "opencl"
    strategy: str = ""
    trial: int = 0
    started: float = 0.0
    finished: float = 0.0
    coretune_version: str = ""
    schema: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.error is ErrorKind.NONE

    @property
    def best_cost(self) -> float:
        return min(self.costs) if self.ok and self.costs else float("inf")

    def to_json(self) -> str:
        data = asdict(self)
        data["error"] = self.error.value
        data["costs"] = list(self.costs)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "Record":
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("a record must be a JSON object")
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(
                f"schema version {data.get('schema')!r}, this coretune reads {SCHEMA_VERSION}"
            )
        data["error"] = ErrorKind(data.get("error", "none"))
        data["costs"] = tuple(float(c) for c in data.get("costs", ()))
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
        for name in ("task", "config", "device"):
            if not isinstance(data.get(name, {}), dict):
                raise ValueError(f"{name} must be an object")
        return cls(**data)


def verified_costs(records) -> dict[Config, float]:
    """Config -> median of its verification costs, from records of one task on one device.
    A config that failed any verification round is left out."""
    costs: dict[Config, list[float]] = {}
    failed = set()
    for record in records:
        if record.strategy == VERIFY:
            config = Config(record.config)
            costs.setdefault(config, []).append(record.best_cost)
            if not record.ok:
                failed.add(config)
    return {c: statistics.median(v) for c, v in costs.items() if c not in failed}


def task_key(task: dict) -> str:
    return json.dumps(task, sort_keys=True, separators=(",", ":"))


def device_key(device: dict) -> str:
    return json.dumps(device, sort_keys=True, separators=(",", ":"))


class TuningLog:
    """An append-only JSON-lines file of Records."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def append(self, record: Record) -> None:
        line = (record.to_json() + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                # A previous writer killed mid-line leaves a torn tail: start on a fresh line
                # so that only the torn record is lost, never this one.
                size = os.fstat(fd).st_size
                if size and _last_byte(self.path, size) != b"\n":
                    line = b"\n" + line
                os.write(fd, line)
                os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.read())

    def read(self) -> list[Record]:
        return [record for _, record in self.read_numbered()]

    def read_numbered(self) -> list[tuple[int, Record]]:
        """(line number, record) pairs, so later checks can point at the offending line."""
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().split(b"\n")
        complete = lines[:-1]  # everything before the final newline
        tail = lines[-1]
        records = []
        for number, raw in enumerate(complete, start=1):
            if not raw.strip():
                continue
            try:
                records.append((number, Record.from_json(raw.decode())))
            except (ValueError, TypeError, UnicodeDecodeError) as exc:
                if _is_torn(raw, number, len(complete)):
                    warnings.warn(f"{self.path}:{number}: skipping a torn record", stacklevel=2)
                    continue
                raise LogError(f"{self.path}:{number}: invalid record: {exc}") from None
        if tail.strip():
            warnings.warn(
                f"{self.path}:{len(lines)}: skipping a torn last record (the run "
                "writing it was killed)",
                stacklevel=2,
            )
        return records


def _is_torn(raw: bytes, number: int, total: int) -> bool:
    """A line cut short by a killed writer: not valid JSON, and a fresh record follows it."""
    try:
        json.loads(raw)
        return False
    except ValueError:
        return raw.lstrip().startswith(b"{") and not raw.rstrip().endswith(b"}")


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


def now() -> float:
    return time.time()
