"""Fuzz the ONNX importer: >= 10,000 mutated models, each either a validated Graph or a
CoretuneError with a message; anything else (another exception, a hang, a crash of the
process, a memory bomb) is a bug.

Cases come from tests/fuzz_mutations.py, round-robin over (seed model, mutation) pairs, so every
failure replays with ``make_case(seed, mutation, case_seed)``. They run in a worker process: a
hang inside C code or a segfault costs one case (the worker is replaced), never the campaign.
Inside the worker each case is bounded in time (SIGALRM) and in new memory (RLIMIT_DATA).

    python benchmarks/fuzz_importer.py                   # 20,000 cases
    python benchmarks/fuzz_importer.py --cases 1000      # a quick look

Writes benchmarks/results/fuzz_importer.md; exits 1 when it found a failure that is not one
of the known bugs listed in tests/fuzz_mutations.py (KNOWN_BUGS).
"""

import argparse
import collections
import multiprocessing as mp
import pathlib
import resource
import sys
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import environment, header  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _worker(conn, seconds: float) -> None:
    warnings.simplefilter("ignore")  # onnx and numpy warn about the models we feed them
    from tests.fuzz_mutations import make_case, run_case

    while True:
        job = conn.recv()
        if job is None:
            return
        outcome = run_case(make_case(*job), seconds)
        conn.send(
            (
                outcome.kind,
                outcome.detail,
                outcome.message,
                outcome.seconds,
                outcome.where,
                outcome.known_bug(),
            )
        )


class Pool:
    """One worker process, replaced when a case hangs past the bound or kills it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.context = mp.get_context("spawn")
        self.process = None

    def run(self, job):
        if self.process is None:
            self.conn, child = self.context.Pipe()
            self.process = self.context.Process(target=_worker, args=(child, self.seconds))
            self.process.start()
            child.close()
        self.conn.send(job)
        # The worker's own SIGALRM bound fires first for a Python-level hang; this one catches a
        # hang inside C code (and the worker's start-up on the first case).
        if not self.conn.poll(self.seconds + 30):
            self.stop(kill=True)
            return ("hang", "Hang", "no answer from the worker", self.seconds, "", None)
        try:
            return self.conn.recv()
        except (EOFError, ConnectionResetError):
            self.process.join(5)
            code = self.process.exitcode
            self.stop(kill=True)
            return ("crash", "Crash", f"the worker died (exit code {code})", 0.0, "", None)

    def stop(self, kill=False):
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.conn.send(None)
        self.process.join(10)
        self.conn.close()
        self.process = None


def campaign(cases: int, seconds: float, progress: bool = True) -> dict:
    from tests.fuzz_mutations import MUTATIONS, seeds

    pairs = [(s, m) for s in sorted(seeds()) for m in sorted(MUTATIONS)]
    kinds = collections.Counter()
    errors = collections.Counter()
    known = collections.Counter()
    new: dict[str, list[str]] = collections.defaultdict(list)
    per_mutation: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    slowest = (0.0, "")
    pool = Pool(seconds)
    started = time.monotonic()
    try:
        for i in range(cases):
            seed, mutation = pairs[i % len(pairs)]
            job = (seed, mutation, i // len(pairs))
            kind, detail, message, took, where, bug = pool.run(job)
            replay = f"make_case{job!r}"
            kinds[kind] += 1
            per_mutation[mutation][kind] += 1
            if took > slowest[0]:
                slowest = (took, replay)
            if kind == "error":
                errors[detail] += 1
                if not message.strip():
                    new["CoretuneError with an empty message"].append(replay)
            elif bug:
                known[bug] += 1
            elif kind != "graph":
                new[f"{detail} at {where or '?'}: {message[:120]}"].append(replay)
            if progress and (i + 1) % 1000 == 0:
                print(f"{i + 1} cases, {time.monotonic() - started:.0f} s", file=sys.stderr)
    finally:
        pool.stop()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest worker
    return {
        "cases": cases,
        "kinds": kinds,
        "errors": errors,
        "known": known,
        "new": new,
        "per_mutation": per_mutation,
        "slowest": slowest,
        "peak_rss": peak,
        "wall": time.monotonic() - started,
        "pairs": len(pairs),
    }


def report(result: dict, seconds: float) -> str:
    from tests.fuzz_mutations import KNOWN_BUGS

    kinds, new = result["kinds"], result["new"]
    other = kinds["other"] + kinds["hang"] + kinds["crash"]
    lines = [
        "# ONNX importer fuzzing",
        "",
        "Mutations of valid models (tests/fuzz_mutations.py): bit flips, truncation, byte splices, "
        "wrong attribute types and values, huge/negative/overflowing dims, cut or retyped "
        "initializer data, external data, cycles, duplicate outputs, missing initializers and "
        "nodes, changed op types and opsets, huge shape constants. Acceptable outcomes: a "
        "validated Graph, or a CoretuneError with a message.",
        "",
        header(environment()),
        "",
        "| what | count |",
        "| --- | ---: |",
        f"| cases | {result['cases']} ({result['pairs']} model x mutation pairs) |",
        f"| validated graphs | {kinds['graph']} |",
    ]
    for name, count in result["errors"].most_common():
        lines.append(f"| CoretuneError: {name} | {count} |")
    lines += [
        f"| **other exceptions, hangs, crashes** | **{other}** |",
        f"| of which known bugs (xfail'd in tests/test_hostile_inputs.py) | "
        f"{sum(result['known'].values())} |",
        f"| of which new | {sum(len(v) for v in new.values())} |",
        f"| hangs (no outcome within {seconds:g} s) | {kinds['hang']} |",
        f"| worker crashes | {kinds['crash']} |",
        f"| max time per case | {result['slowest'][0] * 1e3:.1f} ms (`{result['slowest'][1]}`) |",
        f"| peak RSS of the fuzzing worker | {result['peak_rss'] / 2**20:.0f} MiB |",
        f"| wall time | {result['wall']:.0f} s |",
        "",
        "## Known bugs hit",
        "",
        "| bug | cases | what |",
        "| --- | ---: | --- |",
    ]
    for bug in KNOWN_BUGS:
        lines.append(f"| {bug.id} | {result['known'][bug.id]} | {bug.summary} |")
    lines += ["", "## New failures", ""]
    if not new:
        lines.append("None.")
    for signature, replays in sorted(new.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"- {len(replays)} x `{signature}`; first: `{replays[0]}`")
    lines += [
        "",
        "## Outcomes per mutation",
        "",
        "| mutation | graph | error | other | hang |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for mutation, counts in sorted(result["per_mutation"].items()):
        lines.append(
            f"| {mutation} | {counts['graph']} | {counts['error']} | "
            f"{counts['other']} | {counts['hang'] + counts['crash']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=30.0, help="bound per case")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "fuzz_importer.md")
    args = parser.parse_args()
    result = campaign(args.cases, args.seconds)
    text = report(result, args.seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 1 if result["new"] else 0


if __name__ == "__main__":
    sys.exit(main())
