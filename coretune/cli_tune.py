"""``coretune tune``: tune a model's kernels, with a live display, resumable, Ctrl-C safe.

The tuning itself runs in a child process (coretune.tune_session) that ignores SIGINT; this
process owns the display and the interrupt, and re-reads the log for the final summary.
"""

import multiprocessing as mp
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import click

from .cli_common import console, default_log_path, device_line, fmt_seconds, load_graph, open_device
from .errors import CoretuneError
from .tune_display import LiveDisplay, PlainDisplay, summary_table, task_states
from .tune_session import BY_GAIN, SCHEDULES
from .tuner.strategies import DEFAULT_STRATEGY, STRATEGIES

DEFAULT_TRIALS = 200
INTERRUPTED = 130  # the shell convention for "ended by SIGINT"


@dataclass
class _Outcome:
    interrupted: bool = False
    error: str | None = None
    bug: str = ""


def _run_session(plan, states, display) -> _Outcome:
    """Start the tuning process, relay its messages to the display, turn Ctrl-C into stops."""
    from .tune_cluster import ClusterPlan, run_cluster_session
    from .tune_session import run_session
    from .tuner.records import Record

    context = mp.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    stop = context.Event()
    target = run_cluster_session if isinstance(plan, ClusterPlan) else run_session
    process = context.Process(
        target=target, args=(plan, sender, stop, os.getpid()), name="coretune-tune"
    )
    interrupts = [0]
    outcome, handled = _Outcome(), 0
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited: the child ignores it
    try:
        process.start()
        sender.close()
        signal.signal(signal.SIGINT, lambda *_: interrupts.__setitem__(0, interrupts[0] + 1))
        while True:
            if interrupts[0] > handled:
                handled = interrupts[0]
                outcome.interrupted = True
                if handled == 1:
                    stop.set()
                    display.note("stopping after the trial in flight (Ctrl-C again: stop now)")
                else:
                    process.terminate()
                    display.note("stopping now")
            if receiver.poll(0.1):
                try:
                    message = receiver.recv()
                except (EOFError, OSError, ValueError):
                    break  # the process ended (possibly mid-message, when terminated)
                kind = message[0]
                if kind == "task":
                    display.task(message[1], message[2])
                elif kind == "trial":
                    states[message[1]].add(Record.from_json(message[2]), new=True)
                    display.trial(message[1])
                elif kind == "done":
                    display.done(message[1])
                elif kind == "note":
                    display.note(message[1])
                elif kind == "error":
                    outcome.error, outcome.bug = message[2], "" if message[1] else message[3]
                if kind in ("end", "stopped", "error"):
                    break
            elif not process.is_alive():
                break
            display.tick()
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join()
        if process.exitcode and not outcome.interrupted and outcome.error is None:
            outcome.error = f"the tuning process died (exit code {process.exitcode})"
        return outcome
    finally:
        # Once interrupted, further Ctrl-Cs are only counted, up to the exit: the summary is
        # printed whole, and no KeyboardInterrupt can strike while the interpreter shuts down.
        if not outcome.interrupted:
            signal.signal(signal.SIGINT, previous)
        receiver.close()


def _end_to_end(graph, device, log_path, repeat, out) -> None:
    """Compile twice (default configs; with the log) and benchmark both, interleaved."""
    from .cli_bench import interleaved, module_runner
    from .graph.random import random_inputs
    from .module import compile as compile_module

    if not Path(log_path).exists():
        out.print("end-to-end: nothing was measured; skipped")
        return
    default = compile_module(graph, device)
    tuned = compile_module(graph, device, [log_path])
    if not tuned.summary()["tuned"]:
        out.print("end-to-end: no tuned kernel for this device and version yet; skipped")
        return
    inputs = random_inputs(default.plan.graph)
    runners = {"default": module_runner(default, inputs), "tuned": module_runner(tuned, inputs)}
    result = interleaved(runners, repeat)
    d, t = result["default"], result["tuned"]
    line = (
        f"end-to-end latency (median of {d['runs']} runs each, interleaved): "
        f"default {fmt_seconds(d['wall_median_s'])}, tuned {fmt_seconds(t['wall_median_s'])}: "
        f"{d['wall_median_s'] / t['wall_median_s']:.2f}x"
    )
    if d["device_median_s"] and t["device_median_s"]:
        line += (
            f"; kernel time {fmt_seconds(d['device_median_s'])} -> "
            f"{fmt_seconds(t['device_median_s'])}: "
            f"{d['device_median_s'] / t['device_median_s']:.2f}x"
        )
    out.print(line)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--device", "-d", default=None, help="Device: opencl, opencl:N, cuda, a name part.")
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=None,
    help=f"Total trials for the model, split across tasks by their share of the work, at "
    f"least 4 per task [default: {DEFAULT_TRIALS}].",
)
@click.option(
    "--time-budget",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds for the whole model instead of a trial count, split the same way.",
)
@click.option(
    "--strategy",
    type=click.Choice(list(STRATEGIES)),
    default=DEFAULT_STRATEGY,
    show_default=True,
    help="tpe: optuna's TPE sampler; bayesian: scikit-optimize's Gaussian process; random; "
    "grid (a seeded shuffle of the space when a budget is set).",
)
@click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="The tuning log, appended to and resumed from "
    "[default: tuning_logs/<model stem>.<device name>.jsonl].",
)
@click.option(
    "--early-stop",
    type=click.IntRange(min=1),
    default=None,
    help="Leave a task after this many trials without improvement.",
)
@click.option(
    "--verify",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Re-measure each task's best N configs and its default in 3 interleaved rounds "
    "after its trial or time budget; builds then take the lowest median (0: the lowest "
    "single cost).",
)
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default=BY_GAIN,
    show_default=True,
    help="gain: slices of trials go to the task expected to save the most model latency per "
    "second, and the tune ends once no task is worth more; in-turn: one task after another, "
    "each with its share of the budget.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the search and the inputs.")
@click.option(
    "--scheduler",
    default=None,
    help="Tune on the Dask cluster at this address (tcp://HOST:PORT): `coretune worker` "
    "processes measure, one per device; every task at once. --device then names the "
    "cluster's devices to tune: a name part, a comma-separated list, or all [default: all].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Tune on a local Dask cluster of N workers of --device (needs coretune[cluster]).",
)
@click.option(
    "--e2e/--no-e2e",
    default=True,
    show_default=True,
    help="Benchmark the model at the end, default configs vs tuned.",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Timed runs per build for the end-to-end comparison.",
)
@click.pass_context
def tune(
    ctx,
    model,
    device,
    trials,
    time_budget,
    strategy,
    log_path,
    early_stop,
    verify,
    schedule,
    seed,
    e2e,
    repeat,
    scheduler,
    workers,
):
    """Tune MODEL's kernels on a device, most work first, and report the speedups.

    Each task (a kernel template on a fused group's shapes) first measures the template's
    default config, then searches, then re-measures its finalists beside the default
    (--verify). --trials is the total for the model (split by each task's share of FLOPs x
    weight, at least 4 per task) and counts what the log already holds, so re-running a
    command resumes it. The summary compares default and best GFLOP/s per task (verified
    medians where there are some), and the model's end-to-end latency, default build vs tuned
    build.

    Ctrl-C stops after the trial in flight (a second Ctrl-C stops at once); the log stays
    valid, the summary covers what was done, and the exit code is 130.

    \b
    Examples:
      coretune tune model.onnx --trials 400
      coretune tune model.onnx --time-budget 600 --strategy random --log my.jsonl
      coretune tune model.onnx --device opencl:1 --early-stop 32
      coretune tune model.onnx --workers 2 --trials 400
      coretune tune model.onnx --scheduler tcp://10.0.0.1:8786 --device all
    """
    from . import __version__
    from .tune_session import SessionPlan, split_trials, time_weights
    from .tuner.task import extract_tasks

    if trials is not None and time_budget is not None:
        raise click.UsageError("give --trials or --time-budget, not both")
    if time_budget is None and trials is None:
        trials = DEFAULT_TRIALS
    if scheduler is not None and workers is not None:
        raise click.UsageError("give --scheduler or --workers, not both")
    cluster_devices = ()
    if scheduler is not None:
        # The devices are the cluster's; this host opens its own only to show and file them.
        cluster_devices = tuple(d.strip() for d in (device or "all").split(",") if d.strip())
        device = None
    graph = load_graph(model)
    dev = open_device(device)
    tasks = extract_tasks(graph)
    out = console()
    if not tasks:
        out.print(
            f"{model} has no tunable task: no kernel template computes any of its fused groups "
            "(they run as host steps or views); nothing to tune"
        )
        return
    filed_under = "cluster" if scheduler is not None else dev.info.name  # devices of a farm
    log_path = Path(log_path) if log_path else default_log_path(model, filed_under)
    states, skipped = task_states(tasks, dev, log_path)
    if skipped:
        click.echo(f"warning: {skipped}", err=True)
    shares = [s.share for s in states]
    by_gain = schedule == BY_GAIN and scheduler is None and workers is None
    budgets = split_trials(shares, trials) if trials and not by_gain else None
    for state, budget in zip(states, budgets or [None] * len(states), strict=True):
        state.budget = budget
    err = console(stderr=True)
    err.print(
        f"tuning {model}: {len(tasks)} task(s) on {device_line(dev)}, coretune {__version__}\n"
        f"log {log_path} ({sum(s.trials for s in states)} matching trials), strategy "
        f"{strategy}, budget {f'{trials} trials' if trials else f'{time_budget:g} s'}"
        + (", shared by expected gain" if by_gain else ""),
        soft_wrap=True,  # never break a path (or this line) at the console width
    )
    plan = SessionPlan(
        tasks=tasks,
        device=device,
        log=str(log_path),
        strategy=strategy,
        trials=budgets,
        seconds=time_budget,
        weights=time_weights(shares),
        early_stop=early_stop,
        verify=verify,
        seed=seed,
        schedule=schedule if by_gain else "in-turn",
        total_trials=trials if by_gain else None,
    )
    if scheduler is not None or workers is not None:
        from .tune_cluster import ClusterPlan

        plan = ClusterPlan(plan, scheduler, workers or 0, cluster_devices)
    display_cls = LiveDisplay if err.is_terminal else PlainDisplay
    with display_cls(states, time_budget, trials) as display:
        outcome = _run_session(plan, states, display)
    summary_table(task_states(tasks, dev, log_path)[0], out)
    if outcome.bug:
        click.echo(outcome.bug, err=True)
    if outcome.error:
        raise CoretuneError(outcome.error)
    if outcome.interrupted:
        out.print(
            "interrupted: the end-to-end comparison is skipped; run the command again to resume"
        )
        ctx.exit(INTERRUPTED)
    if e2e:
        _end_to_end(graph, dev, log_path, repeat, out)
