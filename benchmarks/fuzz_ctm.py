"""Hostile .ctm files: >= 2,000 mutations of three saved models, each either a correct run or
coretune's ModelLoadError; a run with other outputs, any other exception, a crash of the
process (a segfault, an abort) or a hang is a failure.

Cases come from tests/ctm_mutations.py, round-robin over (model, mutation) pairs, so a failure
replays with ``make_case(model, mutation, seed)``. They run in a worker process that keeps one
device open: a crash or a hang costs that case (the worker is replaced), not the campaign.

    python benchmarks/fuzz_ctm.py                 # 5,400 cases
    python benchmarks/fuzz_ctm.py --cases 300     # a quick look

Writes benchmarks/results/fuzz_ctm.md; exits 1 when any case failed.
"""

import argparse
import collections
import multiprocessing as mp
import pathlib
import resource
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import environment, header  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _worker(conn) -> None:
    from coretune.kernels import open_device
    from tests.ctm_mutations import make_case, run_case

    device = open_device(None)
    directory = pathlib.Path(tempfile.mkdtemp())
    while True:
        job = conn.recv()
        if job is None:
            return
        case = make_case(*job, device=device)
        started = time.perf_counter()
        outcome = run_case(case, device, directory)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        conn.send((outcome.kind, outcome.message, case.note, time.perf_counter() - started, peak))


class Worker:
    """One worker process, replaced when a case crashes it or hangs past the bound."""

    def __init__(self, seconds: float):
        self.seconds, self.process = seconds, None

    def run(self, job):
        if self.process is None or not self.process.is_alive():
            self._start()
        self.conn.send(job)
        if not self.conn.poll(self.seconds):
            self.stop()
            return ("hang", f"no outcome within {self.seconds} s", "", self.seconds, 0)
        try:
            return self.conn.recv()
        except EOFError:
            code = self.process.exitcode
            self.stop()
            return ("crash", f"the worker died (exit code {code})", "", 0.0, 0)

    def _start(self):
        context = mp.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child,), daemon=True)
        self.process.start()
        child.close()

    def stop(self):
        if self.process is not None:
            self.process.kill()
            self.process.join(5)
            self.conn.close()
        self.process = None


def campaign(cases: int, seconds: float) -> dict:
    from tests.ctm_mutations import MODELS, MUTATIONS

    pairs = [(m, k) for m in MODELS for k in MUTATIONS]
    worker = Worker(seconds)
    kinds, per_mutation = collections.Counter(), collections.defaultdict(collections.Counter)
    failures, peak, slowest = [], 0, (0.0, "")
    started = time.monotonic()
    try:
        for index in range(cases):
            model, mutation = pairs[index % len(pairs)]
            job = (model, mutation, index // len(pairs))
            kind, message, note, took, rss = worker.run(job)
            kinds[kind] += 1
            per_mutation[mutation][kind] += 1
            peak = max(peak, rss)
            if took > slowest[0]:
                slowest = (took, f"make_case{job}")
            if kind not in ("refused", "correct"):
                failures.append((f"make_case{job}", kind, message, note))
    finally:
        worker.stop()
    return {
        "cases": cases,
        "pairs": len(pairs),
        "kinds": kinds,
        "per_mutation": per_mutation,
        "failures": failures,
        "peak_rss": peak,
        "slowest": slowest,
        "wall": time.monotonic() - started,
    }


def report(result: dict, seconds: float) -> str:
    kinds = result["kinds"]
    bad = sum(kinds[k] for k in ("wrong", "other", "crash", "hang"))
    lines = [
        "# Hostile .ctm files",
        "",
        "Mutations of three saved models (an MLP, the residual CNN with pads written in place, "
        "a transformer layer; tests/ctm_mutations.py): every field of plan.json, manifest.json "
        "and graph.json edited (shrunk, grown, negated, retyped, emptied, cut, reversed, "
        "nested, oversized), whole-plan edits (steps dropped/reversed/emptied, one buffer for "
        "every tensor, buffers shrunk or 2**50 bytes), JSON nested 50,000 deep, .npy headers "
        "claiming huge or other shapes, big-endian parameters (valid: they must run "
        "correctly), byte flips anywhere (half of them in the zip's central directory) and "
        "truncations. Acceptable outcomes: a correct run (outputs within 1e-4 of the "
        "unmutated file's), or a ModelLoadError.",
        "",
        header(environment()),
        "",
        "| what | count |",
        "| --- | ---: |",
        f"| cases | {result['cases']} ({result['pairs']} model x mutation pairs) |",
        f"| ModelLoadError | {kinds['refused']} |",
        f"| loaded and ran correctly | {kinds['correct']} |",
        f"| **ran with other outputs** | **{kinds['wrong']}** |",
        f"| **other exceptions** | **{kinds['other']}** |",
        f"| **worker crashes (segfault, abort)** | **{kinds['crash']}** |",
        f"| **hangs (no outcome within {seconds:g} s)** | **{kinds['hang']}** |",
        f"| max time per case | {result['slowest'][0] * 1e3:.0f} ms (`{result['slowest'][1]}`) |",
        f"| peak RSS of the worker | {result['peak_rss'] / 2**20:.0f} MiB |",
        f"| wall time | {result['wall']:.0f} s |",
        "",
        "## Outcomes per mutation",
        "",
        "| mutation | refused | correct | failed |",
        "| --- | ---: | ---: | ---: |",
    ]
    for mutation, counts in sorted(result["per_mutation"].items()):
        failed = sum(counts[k] for k in ("wrong", "other", "crash", "hang"))
        lines.append(f"| {mutation} | {counts['refused']} | {counts['correct']} | {failed} |")
    lines += ["", "## Failures", ""]
    if not bad:
        lines.append("None.")
    for replay, kind, message, note in result["failures"][:50]:
        lines.append(f"- {kind}: `{replay}` ({note}): {message}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5400)
    parser.add_argument("--seconds", type=float, default=60.0, help="bound per case")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "fuzz_ctm.md")
    args = parser.parse_args()
    result = campaign(args.cases, args.seconds)
    text = report(result, args.seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
