"""Kill a real tuning run with SIGKILL at >= 20 random points, in its search and in its
finalists' verification, by its process group or by its pid alone; restart it each time, and
check that the log it leaves is as good as an uninterrupted run's.

The run: coretune.tuner.driver.tune on a small injective task, random strategy, fixed seed,
batch 1, the default config first, then 3 finalists + the default verified in 3 rounds, in a
subprocess with its own process group. A kill by the group takes the tuner and its workers at
once; a kill by the pid takes the tuner alone, and its build workers and device worker must
die with it (tuner.measure.die_with_parent). Kill points: in the search, alternately "a random
moment after start" (start-up, mid-build, mid-run, mid-append) and "just after the log gained
a record"; then the same inside the verification.

Costs are replayed: the builds and runs are real (so kills land in real work), but each
result's cost is the config's cost in a table (a grid run over every config, measured once)
with a jitter keyed by the config and how many records of it the log already holds. The
uninterrupted and the killed run thus see the same numbers, the verified medians need not
rank like the search, and any difference in their final choice is the resume's doing.

Checks, once the killed run has finished:
  1. every complete line of the log is a valid record (torn lines are counted);
  2. no config searched twice, no verification round measured a config twice, and the trial
     budget was met exactly;
  3. the same configs in the same order as the uninterrupted run with the same seed;
  4. the same finalists, each verified in every round;
  5. the same final choice (the tuning database's pick, and its verified median);
  6. nothing of a killed run survives it (its group is gone within 10 s), and no record was
     appended after a kill (the log's size right after the kill and 2 s after the group ended).

    python benchmarks/kill_campaign.py                  # 25 kills, 84 trials: 3-6 minutes
    python benchmarks/kill_campaign.py --kills 8 --trials 20     # a quick look

Writes benchmarks/results/kill_campaign.md; exits 1 when a check fails.
"""

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import environment, header  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RUN_LIMIT = 600.0  # seconds one (re)started run may take before it counts as stuck
VERIFY = 3  # finalists besides the default
JITTER = 0.25  # replayed costs vary by up to +-25% from one measurement of a config to the next


def small_task():
    """The injective task of tests/test_tuner.py: sigmoid(x * y + 1) on 64x64 (84 configs)."""
    from coretune.graph import GraphBuilder
    from coretune.kernels.workload import Workload
    from coretune.tuner.task import Task

    b = GraphBuilder()
    x, y = b.input("x", (64, 64)), b.input("y", (64,))
    return Task("injective", Workload.from_graph(b.build(b.sigmoid(x * y + 1.0))))


def _key(config) -> str:
    return json.dumps(dict(config), sort_keys=True)


def replaying_measurer(table_log: str, log: str):
    """A Measurer that builds and runs for real, then reports the table's cost, jittered by
    (config, the number of its records in ``log``): the same numbers in every run."""
    from dataclasses import replace

    from coretune.tuner.measure import Measurer
    from coretune.tuner.records import TuningLog

    table = {_key(r.config): r.best_cost for r in TuningLog(table_log).read()}

    class Replaying(Measurer):
        def measure(self, configs):
            results = super().measure(configs)
            logged = [_key(r.config) for r in TuningLog(log).read()]
            for index, (config, result) in enumerate(zip(configs, results, strict=True)):
                key = _key(config)
                logged.append(key)
                if result.ok:
                    jitter = zlib.crc32(f"{key}/{logged.count(key)}".encode()) / 2**32 * 2 - 1
                    cost = table[key] * (1 + JITTER * jitter)
                    results[index] = replace(result, costs=(cost,) * len(result.costs))
            return results

    return Replaying


def worker(log: str, strategy: str, trials: int, seed: int, table: str | None) -> None:
    """One tuning run (the process the campaign kills)."""
    from coretune.kernels import open_device
    from coretune.tuner import driver
    from coretune.tuner.measure import MeasureOptions
    from coretune.tuner.records import TuningLog

    warnings.simplefilter("ignore")  # the skipped (torn) lines are counted by the campaign
    task = small_task()
    if table:
        driver.Measurer = replaying_measurer(table, log)
    driver.tune(
        task,
        TuningLog(log),
        strategy=strategy,
        seed=seed,
        budget=driver.Budget(trials=trials, batch=1, verify=VERIFY if table else 0),
        options=MeasureOptions(repeat=1, number=2),
        default=task.template().default_config(open_device().limits) if table else None,
    )


def _start(log: pathlib.Path, strategy: str, trials: int, seed: int, table=None):
    """A tuning run in a new session (its own process group); its stderr goes to a file beside
    the log, where no full pipe can stall it."""
    command = [sys.executable, __file__, "--worker", str(log), "--strategy", strategy]
    command += ["--trials", str(trials), "--seed", str(seed)]
    command += ["--table", str(table)] if table else []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log.with_suffix(".stderr"), "ab") as err:
        return subprocess.Popen(
            command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err
        )


def _failed(process, log: pathlib.Path, what: str):
    tail = log.with_suffix(".stderr").read_text(errors="replace")[-2000:]
    return SystemExit(f"{what} failed (exit code {process.returncode}):\n{tail}")


def _complete_lines(path: pathlib.Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _size(path: pathlib.Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _group_gone(pgid: int, patience: float = 10.0) -> bool:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def uninterrupted(log: pathlib.Path, strategy: str, trials: int, seed: int, table=None) -> float:
    started = time.monotonic()
    process = _start(log, strategy, trials, seed, table)
    if process.wait(timeout=RUN_LIMIT) != 0:
        raise _failed(process, log, f"the uninterrupted {strategy} run")
    return time.monotonic() - started


def _kill_point(process, log, started, mode, delay) -> None:
    """Wait for the kill point: ``delay`` s after start ("timed"), or ``delay`` s after the log
    gained a record ("after-record"); returns early if the run ends."""
    target = _complete_lines(log) + 1
    deadline = started + RUN_LIMIT
    while process.poll() is None and time.monotonic() < deadline:
        if mode == "timed" and time.monotonic() - started >= delay:
            return
        if mode == "after-record" and _complete_lines(log) >= target:
            time.sleep(delay)
            return
        time.sleep(0.001)


def _progress(log: pathlib.Path) -> tuple[int, int]:
    """(search records, verification records) in the log."""
    records, _ = read_log(log)
    checks = sum(r.strategy == "verify" for r in records)
    return len(records) - checks, checks


def killed_run(log, trials, seed, table, kills, in_verify, rng):
    """Run until done, SIGKILLing the first ``kills`` starts: the last ``in_verify`` of them
    inside the verification (the run before them is let through the search), by the process
    group and by the pid in turn."""
    events = []
    while True:
        before = _complete_lines(log)
        searched, _ = _progress(log)
        verifying = len(events) >= kills - in_verify
        # In the verification, a restart takes ~3 s to its first measurement, and a round's
        # records are appended together once all its finalists ran: a timed kill mostly lands
        # in the restart or a round's runs, an after-record one (no delay) within or just
        # after a round's appends.
        if len(events) % 2 == 0:
            mode, delay = "timed", rng.uniform(0.2, 3.5 if verifying else 1.6)
        else:
            mode, delay = "after-record", 0.0 if verifying else rng.uniform(0.0, 0.3)
        process = _start(log, "random", trials, seed, table)
        started = time.monotonic()
        if len(events) >= kills:  # the last start runs to the end
            if process.wait(timeout=RUN_LIMIT) != 0:
                raise _failed(process, log, "the final run")
            return events
        if verifying and searched < trials:  # through the search, into the verification
            mode, wanted = "after-search", rng.randrange(0, 3)
            while process.poll() is None and _progress(log)[0] < trials:
                time.sleep(0.02)
            target = _complete_lines(log) + wanted
            while process.poll() is None and _complete_lines(log) < target:
                time.sleep(0.002)
        else:
            _kill_point(process, log, started, mode, delay)
        if process.poll() is not None:  # it finished before the kill point
            if process.returncode != 0:
                raise _failed(process, log, "a restarted run")
            return events
        by_pid = len(events) % 4 in (1, 2)  # group, pid, pid, group, ...
        if by_pid:
            os.kill(process.pid, signal.SIGKILL)  # the tuner alone: its workers must follow
        else:
            os.killpg(process.pid, signal.SIGKILL)
        at = round(time.monotonic() - started, 2)
        process.wait()
        size = _size(log)
        gone = _group_gone(process.pid)
        time.sleep(2.0)  # a ghost worker would have appended by now
        searched, checked = _progress(log)
        events.append(
            {
                "phase": "verify" if searched >= trials else "search",
                "checks": checked,
                "mode": mode,
                "by": "pid" if by_pid else "group",
                "at": at,
                "records_before": before,
                "records_after": _complete_lines(log),
                "survived": not gone,
                "appended": _size(log) - size,
            }
        )


def read_log(path: pathlib.Path):
    """(records, torn or invalid lines skipped)."""
    from coretune.tuner.records import TuningLog

    log = TuningLog(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = log.read()
    return records, len(log.skipped)


def _choice(path: pathlib.Path):
    """The tuning database's pick for the task, as a compile would make it."""
    import coretune
    from coretune.kernels import open_device
    from coretune.tuner.database import TuningDatabase

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lookup = TuningDatabase.load([path]).best(
            small_task().key(), open_device().info.fingerprint(), coretune.__version__
        )
    return _key(lookup.config), lookup.cost, lookup.verified


def check(campaign_log, reference_log, table_log, trials) -> tuple[list, dict]:
    from coretune.kernels import open_device
    from coretune.tuner.records import VERIFY as VERIFY_STRATEGY

    records, torn = read_log(campaign_log)
    reference, _ = read_log(reference_log)
    table_records, _ = read_log(table_log)
    space = small_task().template().space(open_device().limits)
    table = {_key(r.config): r.best_cost for r in table_records}

    def split(rs):
        search = [_key(r.config) for r in rs if r.strategy != VERIFY_STRATEGY]
        checks = [(r.round, _key(r.config)) for r in rs if r.strategy == VERIFY_STRATEGY]
        return search, checks

    keys, checks = split(records)
    ref_keys, ref_checks = split(reference)
    invalid = [r for r in records if not space.is_valid(r.config) or not r.device]

    def best(keys_):
        return min(keys_, key=lambda k: table.get(k, float("inf")))

    missing = sorted(set(keys) - set(ref_keys)), sorted(set(ref_keys) - set(keys))
    choice, ref_choice = _choice(campaign_log), _choice(reference_log)
    finalists = {k for _, k in checks}
    checks_list = [
        (
            "every complete record is valid",
            not invalid,
            f"{len(invalid)} invalid; {torn} torn line(s) skipped",
        ),
        (
            "no config searched twice, none verified twice in a round",
            len(keys) == len(set(keys)) and len(checks) == len(set(checks)),
            f"{len(keys) - len(set(keys))} + {len(checks) - len(set(checks))} duplicate(s)",
        ),
        ("the trial budget was met exactly", len(keys) == trials, f"{len(keys)} of {trials}"),
        (
            "same configs in the same order as the uninterrupted run",
            keys == ref_keys,
            f"{len(missing[0])} measured only by the killed run, {len(missing[1])} only by the "
            "uninterrupted one",
        ),
        (
            "same finalists, each verified in every round",
            sorted(checks) == sorted(ref_checks) and len(checks) == 3 * len(finalists),
            f"{len(finalists)} finalists, {len(checks)} verification records "
            f"(uninterrupted: {len(ref_checks)})",
        ),
        (
            "same best searched config (costed from one table)",
            best(keys) == best(ref_keys),
            f"killed run: {best(keys)}, uninterrupted: {best(ref_keys)}",
        ),
        (
            "same final choice (the database's pick, verified)",
            choice == ref_choice and choice[2],
            f"killed run: {choice[0]} {choice[1] * 1e6:.2f} us, uninterrupted: {ref_choice[0]} "
            f"{ref_choice[1] * 1e6:.2f} us",
        ),
    ]
    facts = {"records": len(records), "torn": torn, "choice": choice}
    return checks_list, facts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--in-verify", type=int, default=7, help="kills inside verification")
    parser.add_argument("--trials", type=int, default=84)
    parser.add_argument("--seed", type=int, default=5, help="the tuner's seed")
    parser.add_argument("--campaign-seed", type=int, default=2026, help="where the kills land")
    parser.add_argument("--strategy", default="random")
    parser.add_argument("--table", help=argparse.SUPPRESS)
    parser.add_argument("--worker", metavar="LOG", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "kill_campaign.md")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.strategy, args.trials, args.seed, args.table)
        return 0
    if args.strategy != "random":
        parser.error("the campaign drives the random strategy")

    work = pathlib.Path(tempfile.mkdtemp(prefix="kill_campaign_"))
    table = work / "table.jsonl"
    started = time.monotonic()
    print("measuring the table (grid over every config)...", file=sys.stderr)
    table_seconds = uninterrupted(table, "grid", 10_000, args.seed)
    print("the uninterrupted run...", file=sys.stderr)
    reference = work / "reference.jsonl"
    reference_seconds = uninterrupted(reference, "random", args.trials, args.seed, table)
    print(f"the killed run ({args.kills} kills)...", file=sys.stderr)
    campaign = work / "campaign.jsonl"
    rng = random.Random(args.campaign_seed)
    events = killed_run(campaign, args.trials, args.seed, table, args.kills, args.in_verify, rng)
    checks, facts = check(campaign, reference, table, args.trials)
    in_verify = sum(e["phase"] == "verify" for e in events)
    by_pid = [e for e in events if e["by"] == "pid"]
    survived = sum(e["survived"] for e in events)
    appended = sum(e["appended"] > 0 for e in events)
    checks = [
        (
            "at least 20 kills, 5 in verification, 10 by pid alone",
            len(events) >= 20 and in_verify >= 5 and len(by_pid) >= 10,
            f"{len(events)} kills: {in_verify} in verification, {len(by_pid)} by pid",
        ),
        *checks,
        (
            "nothing survives a SIGKILL (of the group, or of the pid alone)",
            survived == 0,
            f"{survived} run(s) with a process alive 10 s after the kill",
        ),
        (
            "no record appended after a kill",
            appended == 0,
            f"{appended} kill(s) after which the log grew",
        ),
    ]

    lines = [
        "# Kill campaign: SIGKILL a tuning run, restart it, check the log",
        "",
        header(environment()),
        f"- task: injective sigmoid(x * y + 1) on 64x64, random strategy, seed {args.seed}, "
        f"batch 1, {args.trials} trials, the default first; then {VERIFY} finalists + the "
        f"default verified in 3 rounds; kills placed with seed {args.campaign_seed}",
        f"- costs replayed from the table with a +-{JITTER:.0%} jitter per (config, record "
        "count), so both runs see the same numbers; builds and runs are real",
        f"- table: a grid run over every config ({table_seconds:.0f} s); uninterrupted run: "
        f"{reference_seconds:.0f} s; campaign total: {time.monotonic() - started:.0f} s",
        f"- logs kept in {work}",
        "",
        "| check | result | detail |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {name} | {'PASS' if ok else '**FAIL**'} | {detail} |" for name, ok, detail in checks
    ]
    lines += [
        "",
        f"Records: {facts['records']}; torn lines skipped: {facts['torn']}; final choice: "
        f"{facts['choice'][0]} at {facts['choice'][1] * 1e6:.2f} us (verified median).",
        "",
        "| kill | phase | mode | by | seconds after start | complete lines before | after "
        "| of them verification records | bytes appended after the kill |",
        "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {i} | {e['phase']} | {e['mode']} | {e['by']} | {e['at']} | {e['records_before']} "
        f"| {e['records_after']} | {e['checks']} | {e['appended']} |"
        for i, e in enumerate(events, 1)
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
