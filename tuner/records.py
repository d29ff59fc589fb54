"""Tuning-log records and the append-only JSON-lines log.

One record per measurement, written and fsync'd before the next trial starts, so a killed run
loses at most the trial in flight. Appends take an exclusive lock, so two tuners can share a
log. Every line is checked on read, field by field (a timing must be one a device can take);
a line that is not a valid record (torn by a kill, NUL bytes left by a crash, edited by hand)
is skipped, and the reader warns with the file and line of each (``TuningLog.skipped``), so
one bad line never costs the rest of the log. A UTF-8 BOM at the start is accepted.
"""

import codecs
import enum
import fcntl
import json
import math
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
VERIFY_ROUNDS = 3  # interleaved rounds of a verification, each measuring every finalist once
MIN_COST = 1e-9  # seconds: no launch on any device is timed at less (a few clock cycles)
MAX_COST = 3600.0  # seconds: no tuner waits an hour for one run (MeasureOptions.run_timeout)
MAX_NESTING = 32  # a real record nests 6 levels deep (a workload's nodes and attributes)


class LogError(CoretuneError):
    """A tuning log that cannot be trusted (damaged, wrong schema, invalid record)."""


class LogWarning(UserWarning):
    """Lines of a tuning log were skipped: the message names the file and line of each."""


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
    # A verification record's round (1..VERIFY_ROUNDS) and the number of finalists each round
    # measures, so a reader can tell a complete round from one a kill cut short. 0 in search
    # trials, and in verification records written before coretune logged rounds.
    round: int = 0
    finalists: int = 0
    # The Dask worker that measured it (its address, tuner.cluster); "" for a one-process run
    # and in records written before coretune tuned on clusters.
    worker: str = ""

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
        """Parse and check one log line; a ValueError says what is wrong with it."""
        try:
            data = json.loads(line)
        except RecursionError:
            raise ValueError(f"nested deeper than {MAX_NESTING} levels") from None
        if not isinstance(data, dict):
            raise ValueError("a record must be a JSON object")
        if not _is_int(data.get("schema")) or data["schema"] != SCHEMA_VERSION:
            raise ValueError(
                f"schema version {data.get('schema')!r}, this coretune reads {SCHEMA_VERSION}"
            )
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
        _check_fields(data)
        data["error"] = ErrorKind(data.get("error", "none"))
        data["costs"] = tuple(float(c) for c in data.get("costs", ()))
        return cls(**data)


def _check_fields(data: dict) -> None:
    """Every field of a parsed record, by type and range: a timing must be one a device can
    take (finite, MIN_COST..MAX_COST s), so no edited or damaged line can move a choice."""
    if _nesting(data) > MAX_NESTING:
        raise ValueError(f"nested deeper than {MAX_NESTING} levels")
    for name in ("task", "config", "device"):
        if not isinstance(data.get(name, {}), dict):
            raise ValueError(f"{name} must be an object")
    if not isinstance(data.get("task", {}).get("template"), str):
        raise ValueError("task must name its template")
    if not all(_is_scalar(v) for v in data.get("config", {}).values()):
        raise ValueError("config values must be strings, booleans or finite numbers")
    for name in ("message", "dialect", "strategy", "coretune_version", "worker"):
        if not isinstance(data.get(name, ""), str):
            raise ValueError(f"{name} must be a string")
    if len(data.get("worker", "")) > 1000:
        raise ValueError("worker must be a worker's address, not 1000+ characters")
    for name in ("trial", "round", "finalists"):
        value = data.get(name, 0)
        if not _is_int(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    if (data.get("round", 0) or data.get("finalists", 0)) and data.get("strategy") != VERIFY:
        raise ValueError("only a verification record has a round")
    if bool(data.get("round", 0)) != bool(data.get("finalists", 0)):
        raise ValueError("a verification round needs its number of finalists, and vice versa")
    for name in ("started", "finished"):
        value = data.get(name, 0.0)
        if not _is_number(value) or not 0 <= value < math.inf:
            raise ValueError(f"{name} must be a time in seconds, not {value!r}")
    costs = data.get("costs", [])
    if not isinstance(costs, list):
        raise ValueError("costs must be a list")
    for cost in costs:
        if not _is_number(cost) or not MIN_COST <= cost <= MAX_COST:
            raise ValueError(
                f"cost {cost!r} is not a time a run can take ({MIN_COST:g}-{MAX_COST:g} s)"
            )
    error = data.get("error", "none")
    if not isinstance(error, str) or error not in {kind.value for kind in ErrorKind}:
        raise ValueError(f"unknown error kind {error!r}")
    if (error == ErrorKind.NONE) != bool(costs):
        raise ValueError("a successful record has costs, a failed one none")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return _is_int(value) or isinstance(value, float)


def _is_scalar(value) -> bool:
    return (
        isinstance(value, str | bool)
        or _is_int(value)
        or (isinstance(value, float) and math.isfinite(value))
    )


def _nesting(value) -> int:
    """How deep lists and objects nest in a parsed JSON value (without recursing)."""
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [
            item
            for container in level
            if isinstance(container, dict | list)
            for item in (container.values() if isinstance(container, dict) else container)
        ]
    return depth - 1


def verification_rounds(records) -> dict[tuple[int, int], dict[int, dict[Config, list]]]:
    """One task's verification records on one device, by pass and round:
    {(trial, finalists): {round: {config: [records]}}}. A pass verifies the first ``trial``
    trials; each of its rounds measures its ``finalists`` configs once. Records written before
    rounds were logged (round 0) are numbered by their order: a config's k-th record of a
    pass is in round k, and the pass's finalists are the configs it measured."""
    passes: dict = {}
    legacy: dict[int, list] = {}
    for record in records:
        if record.strategy != VERIFY:
            continue
        if record.round:
            key = (record.trial, record.finalists)
            rounds = passes.setdefault(key, {}).setdefault(record.round, {})
            rounds.setdefault(Config(record.config), []).append(record)
        else:
            legacy.setdefault(record.trial, []).append(record)
    for trial, old in legacy.items():
        configs = {Config(r.config) for r in old}
        seen: dict[Config, int] = {}
        for record in old:
            config = Config(record.config)
            seen[config] = seen.get(config, 0) + 1
            rounds = passes.setdefault((trial, len(configs)), {}).setdefault(seen[config], {})
            rounds.setdefault(config, []).append(record)
    return passes


def verified_costs(records) -> dict[Config, float]:
    """Config -> median of its costs over the complete rounds of the latest verification with
    one (most trials, then latest), from records of one task on one device. A round is
    complete when it measured every finalist: the rounds a kill cut short are ignored, so no
    config measured in fewer rounds than its peers wins on one lucky measurement. A config
    that failed in any round is left out."""
    passes = verification_rounds(records)

    def recency(key):
        measured = passes[key].values()
        return key[0], max(
            r.finished for by_config in measured for rs in by_config.values() for r in rs
        )

    for key in sorted(passes, key=recency, reverse=True):
        rounds = passes[key].values()
        complete = [by_config for by_config in rounds if len(by_config) >= key[1]]
        if not complete:
            continue
        failed = {
            c for by_config in rounds for c, rs in by_config.items() if not all(r.ok for r in rs)
        }
        costs: dict[Config, list[float]] = {}
        for by_config in complete:
            for config, rs in by_config.items():
                costs.setdefault(config, []).extend(r.best_cost for r in rs)
        return {c: statistics.median(v) for c, v in costs.items() if c not in failed}
    return {}


def task_key(task: dict) -> str:
    return json.dumps(task, sort_keys=True, separators=(",", ":"))


def device_key(device: dict) -> str:
    return json.dumps(device, sort_keys=True, separators=(",", ":"))


class TuningLog:
    """An append-only JSON-lines file of Records."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.skipped: list[tuple[int, str]] = []  # (line number, why) of the last read

    def append(self, record: Record) -> None:
        text = record.to_json()
        Record.from_json(text)  # a ValueError here is a bug: never write what a reader skips
        line = (text + "\n").encode()
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
        """(line number, record) pairs, so later checks can point at the offending line. The
        lines that are not valid records are skipped, listed in ``skipped`` as (line number,
        reason), and named in one LogWarning."""
        self.skipped = []
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        if data.startswith(codecs.BOM_UTF8):  # left by an editor: not part of the first line
            data = data[len(codecs.BOM_UTF8) :]
        lines = data.split(b"\n")
        records = []
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                records.append((number, Record.from_json(raw.decode())))
            except (ValueError, TypeError, UnicodeDecodeError) as exc:
                self.skipped.append((number, _why_invalid(raw, exc, number == len(lines))))
        if self.skipped:
            warnings.warn(LogWarning(self.skipped_message()), stacklevel=2)
        return records

    def skipped_message(self, most: int = 5) -> str:
        """One line naming the skipped lines of the last read (the first ``most`` of them)."""
        named = "; ".join(f"{self.path}:{n} ({why})" for n, why in self.skipped[:most])
        more = len(self.skipped) - most
        return f"skipped {len(self.skipped)} line(s) that are not valid records: {named}" + (
            f"; and {more} more" if more > 0 else ""
        )


def _why_invalid(raw: bytes, exc: Exception, last: bool) -> str:
    if not raw.strip(b"\0 \t\r"):
        return "NUL bytes (left by a crash)"
    if last:  # no newline after it
        return "a torn last record (the run writing it was killed)"
    if isinstance(exc, json.JSONDecodeError):
        if not raw.rstrip().endswith(b"}"):
            return "a torn record (its writer was killed)"
        return f"not JSON: {exc}"
    return f"invalid record: {exc}"


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


def now() -> float:
    return time.time()
