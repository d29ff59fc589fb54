"""Kill a real tuning run with SIGKILL at >= 20 random points, restart it each time, and check
that the log it leaves is as good as an uninterrupted run's.

The run: coretune.tuner.driver.tune on a small injective task, random strategy, fixed seed,
batch 1, in a subprocess with its own process group (the tuner, its build workers and its
device worker die together). Kill points alternate between "a random moment after start"
(start-up, mid-build, mid-run, mid-append) and "just after the log gained 1-2 records".

Checks, once the killed run has finished its budget:
  1. every complete line of the log is a valid record (torn lines are counted, and only a
     killed writer may leave one);
  2. no config was recorded twice, and the budget was met exactly;
  3. the killed run recorded the same set of configs as an uninterrupted run with the same
     seed (proposals are deterministic, so a resume must not change what gets measured);
  4. its best config, costed from one table (a grid run over every config, measured once),
     is the uninterrupted run's best config;
  5. nothing of a killed run survives its SIGKILL.

    python benchmarks/kill_campaign.py                  # 25 kills, 60 trials: 2-5 minutes
    python benchmarks/kill_campaign.py --kills 5 --trials 20     # a quick look

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

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import environment, header  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RUN_LIMIT = 600.0  # seconds one (re)started run may take before it counts as stuck


def small_task():
    """The injective task of tests/test_tuner.py: sigmoid(x * y + 1) on 64x64 (84 configs)."""
    from coretune.graph import GraphBuilder
    from coretune.kernels.workload import Workload
    from coretune.tuner.task import Task

    b = GraphBuilder()
    x, y = b.input("x", (64, 64)), b.input("y", (64,))
    return Task("injective", Workload.from_graph(b.build(b.sigmoid(x * y + 1.0))))


def worker(log: str, strategy: str, trials: int, seed: int) -> None:
    """One tuning run (the process the campaign kills)."""
    from coretune.tuner.driver import Budget, tune
    from coretune.tuner.measure import MeasureOptions
    from coretune.tuner.records import TuningLog

    warnings.simplefilter("ignore")  # the torn-record warnings are counted by the campaign
    tune(
        small_task(),
        TuningLog(log),
        strategy=strategy,
        seed=seed,
        budget=Budget(trials=trials, batch=1),
        options=MeasureOptions(repeat=1, number=2),
    )


def _start(log: pathlib.Path, strategy: str, trials: int, seed: int) -> subprocess.Popen:
    """A tuning run in a new session (so one killpg reaches its workers too); its stderr goes
    to a file beside the log, where no full pipe can stall it."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        str(log),
        "--strategy",
        strategy,
        "--trials",
        str(trials),
        "--seed",
        str(seed),
    ]
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


def _group_gone(pgid: int, patience: float = 10.0) -> bool:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def uninterrupted(log: pathlib.Path, strategy: str, trials: int, seed: int) -> float:
    started = time.monotonic()
    process = _start(log, strategy, trials, seed)
    if process.wait(timeout=RUN_LIMIT) != 0:
        raise _failed(process, log, f"the uninterrupted {strategy} run")
    return time.monotonic() - started


def killed_run(log: pathlib.Path, trials: int, seed: int, kills: int, rng: random.Random):
    """Run until the budget is met, SIGKILLing the first ``kills`` starts at random points."""
    events, survivors = [], 0
    while True:
        process = _start(log, "random", trials, seed)
        started = time.monotonic()
        if len(events) >= kills:  # the last start runs to the end
            if process.wait(timeout=RUN_LIMIT) != 0:
                raise _failed(process, log, "the final run")
            return events, survivors
        before = _complete_lines(log)
        if len(events) % 2 == 0:
            mode, delay = "timed", rng.uniform(0.2, 1.6)
            wait_for = None
        else:
            mode, delay = "after-record", rng.uniform(0.0, 0.3)
            wait_for = before + 1
        deadline = started + RUN_LIMIT
        while process.poll() is None and time.monotonic() < deadline:
            if wait_for is None and time.monotonic() - started >= delay:
                break
            if wait_for is not None and _complete_lines(log) >= wait_for:
                time.sleep(delay)
                break
            time.sleep(0.01)
        if process.poll() is not None:  # it finished the budget before the kill point
            if process.returncode != 0:
                raise _failed(process, log, "a restarted run")
            return events, survivors
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        survivors += not _group_gone(process.pid)
        events.append(
            {
                "mode": mode,
                "at": round(time.monotonic() - started, 2),
                "records_before": before,
                "records_after": _complete_lines(log),
            }
        )


def read_log(path: pathlib.Path):
    """(records, torn lines); any other damage raises."""
    from coretune.tuner.records import TuningLog

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = TuningLog(path).read()
    return records, sum("torn" in str(w.message) for w in caught)


def _key(config) -> str:
    return json.dumps(dict(config), sort_keys=True)


def check(campaign_log, reference_log, table_log, trials) -> tuple[list, dict]:
    from coretune.kernels import open_device

    records, torn = read_log(campaign_log)
    reference, _ = read_log(reference_log)
    table_records, _ = read_log(table_log)
    space = small_task().template().space(open_device().limits)
    table = {_key(r.config): r.best_cost for r in table_records}
    keys = [_key(r.config) for r in records]
    ref_keys = [_key(r.config) for r in reference]
    invalid = [
        r for r in records if not space.is_valid(r.config) or not r.device or r.started > r.finished
    ]

    def best(keys_):
        return min(keys_, key=lambda k: table.get(k, float("inf")))

    missing = sorted(set(keys) - set(ref_keys)), sorted(set(ref_keys) - set(keys))
    checks = [
        (
            "every complete record is valid",
            not invalid,
            f"{len(invalid)} invalid; {torn} torn line(s) skipped",
        ),
        (
            "no config recorded twice",
            len(keys) == len(set(keys)),
            f"{len(keys) - len(set(keys))} duplicate(s)",
        ),
        ("the budget was met exactly", len(records) == trials, f"{len(records)} of {trials}"),
        (
            "same configs as the uninterrupted run",
            not any(missing),
            f"{len(missing[0])} measured only by the killed run, {len(missing[1])} only by the "
            "uninterrupted one",
        ),
        (
            "same best config (costed from one table)",
            best(keys) == best(ref_keys),
            f"killed run: {best(keys)}, uninterrupted: {best(ref_keys)}",
        ),
    ]
    facts = {"records": len(records), "torn": torn, "ordered_same": keys == ref_keys}
    return checks, facts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--trials", type=int, default=84)
    parser.add_argument("--seed", type=int, default=5, help="the tuner's seed")
    parser.add_argument("--campaign-seed", type=int, default=2026, help="where the kills land")
    parser.add_argument("--strategy", default="random")
    parser.add_argument("--worker", metavar="LOG", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "kill_campaign.md")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.strategy, args.trials, args.seed)
        return 0
    if args.strategy != "random":
        parser.error("the campaign drives the random strategy")

    work = pathlib.Path(tempfile.mkdtemp(prefix="kill_campaign_"))
    started = time.monotonic()
    print("measuring the table (grid over every config)...", file=sys.stderr)
    table_seconds = uninterrupted(work / "table.jsonl", "grid", 10_000, args.seed)
    print("the uninterrupted run...", file=sys.stderr)
    reference_seconds = uninterrupted(work / "reference.jsonl", "random", args.trials, args.seed)
    print(f"the killed run ({args.kills} kills)...", file=sys.stderr)
    events, survivors = killed_run(
        work / "campaign.jsonl",
        args.trials,
        args.seed,
        args.kills,
        random.Random(args.campaign_seed),
    )
    checks, facts = check(
        work / "campaign.jsonl", work / "reference.jsonl", work / "table.jsonl", args.trials
    )
    checks.append(
        (
            "nothing survives a SIGKILL of the process group",
            survivors == 0,
            f"{survivors} group(s) still alive 10 s after the kill",
        )
    )
    checks.insert(
        0, ("at least 20 kills across the run", len(events) >= 20, f"{len(events)} kills")
    )

    lines = [
        "# Kill campaign: SIGKILL a tuning run, restart it, check the log",
        "",
        header(environment()),
        f"- task: injective sigmoid(x * y + 1) on 64x64, random strategy, seed {args.seed}, "
        f"batch 1, {args.trials} trials; kills placed with seed {args.campaign_seed}",
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
        f"Records: {facts['records']}; torn lines skipped: {facts['torn']}; same order as the "
        f"uninterrupted run: {facts['ordered_same']}.",
        "",
        "| kill | mode | seconds after start | complete lines before | after |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {i} | {e['mode']} | {e['at']} | {e['records_before']} | {e['records_after']} |"
        for i, e in enumerate(events, 1)
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
