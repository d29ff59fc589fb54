"""``coretune log``: summarise, query, merge and plot tuning logs."""

import json
import math
import os
import tempfile
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import click

from .cli_common import console, describe_task_key, existing_file, fmt, gflops, task_key_flops
from .errors import CoretuneError


@click.group("log")
def log_group():
    """Inspect and combine tuning logs (JSON lines, one record per trial).

    \b
    Examples:
      coretune log summary tuning_logs/*.jsonl
      coretune log best tuning_logs/model.pthread-amd-epyc.jsonl
      coretune log merge a.jsonl b.jsonl -o all.jsonl
      coretune log plot tuning_logs/model.pthread-amd-epyc.jsonl -o curve.png
    """


def _read(paths) -> list:
    """Every record of every log, in file order; lines that are not valid records are skipped
    and named on stderr, one line per log."""
    return [record for path in paths for record in _read_log(path)[0]]


def _read_log(path) -> tuple[list, int]:
    """The valid records of one log, and how many lines were skipped."""
    from .tuner.records import LogWarning, TuningLog

    log = TuningLog(existing_file(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LogWarning)  # said here, in one line
        records = log.read()
    if log.skipped:
        click.echo(f"warning: {log.skipped_message()}", err=True)
    return records, len(log.skipped)


def _groups(records) -> dict:
    """Records by (task, device), in first-seen order."""
    from .tuner.records import device_key, task_key

    groups = defaultdict(list)
    for record in records:
        groups[(task_key(record.task), device_key(record.device))].append(record)
    return groups


def _device_name(record) -> str:
    return str(record.device.get("name", "?"))


_PATHS = click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))


@log_group.command()
@_PATHS
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def summary(paths, as_json):
    """Per task and device: trials, failures by kind, best cost and GFLOP/s (the verified
    median where a run verified its finalists), strategies.

    \b
    Example:
      coretune log summary tuning_logs/model.pthread-amd-epyc.jsonl --json
    """
    from .tuner.database import choose
    from .tuner.records import VERIFY

    rows = []
    for group in _groups(_read(paths)).values():
        first = group[0]
        searched = [r for r in group if r.strategy != VERIFY]
        winner = choose(group)
        flops = task_key_flops(first.task)
        found = math.isfinite(winner.cost)
        rows.append(
            {
                "task": first.task,
                "description": describe_task_key(first.task),
                "device": first.device,
                "trials": len(searched),
                "ok": sum(r.ok for r in searched),
                "errors": dict(Counter(r.error.value for r in searched if not r.ok)),
                "verifications": len(group) - len(searched),
                "best_cost_s": winner.cost if found else None,
                "best_gflops": gflops(flops, winner.cost),
                "best_config": winner.config.to_json() if found else None,
                "best_verified": winner.verified,
                "flops": flops,
                "strategies": sorted({r.strategy for r in group}),
                "versions": sorted({r.coretune_version for r in group}),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{sum(r['trials'] for r in rows)} trials, {len(rows)} task(s)")
    for column in ("task", "device", "trials", "failed", "best", "GFLOP/s", "strategy"):
        table.add_column(column, justify="right" if column in ("trials", "best") else "left")
    for r in rows:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0"
        table.add_row(
            r["description"],
            str(r["device"].get("name", "?")),
            str(r["trials"]),
            failed,
            "-" if r["best_cost_s"] is None else f"{r['best_cost_s'] * 1e6:.1f} us",
            fmt(r["best_gflops"]),
            ", ".join(r["strategies"]),
        )
    console().print(table)


@log_group.command()
@_PATHS
@click.option("--json", "as_json", is_flag=True, help="Print the best records as JSON lines.")
def best(paths, as_json):
    """The best valid config per task per device (and coretune version): the verified
    finalist with the lowest median where a run verified its finalists, else the fastest.

    \b
    Example:
      coretune log best a.jsonl b.jsonl
    """
    from .tuner.database import choose
    from .tuner.records import device_key, task_key

    groups: dict = {}
    for record in _read(paths):
        key = (task_key(record.task), device_key(record.device), record.coretune_version)
        groups.setdefault(key, []).append(record)
    winners = [w for w in map(choose, groups.values()) if w.record is not None]
    if not winners:
        raise CoretuneError("no successful trial in " + ", ".join(paths))
    for winner in winners:
        record = winner.record
        if as_json:
            click.echo(record.to_json())
            continue
        rate = fmt(gflops(task_key_flops(record.task), winner.cost))
        how = "median of its verification rounds" if winner.verified else "best"
        click.echo(
            f"{describe_task_key(record.task)} on {_device_name(record)} "
            f"(coretune {record.coretune_version}): {json.dumps(record.config, sort_keys=True)} "
            f"{winner.cost * 1e6:.1f} us ({how}), {rate} GFLOP/s"
        )


@log_group.command()
@_PATHS
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="The merged log."
)
@click.option("--ok-only", is_flag=True, help="Drop failed trials too.")
def merge(paths, output, ok_only):
    """Merge logs into one: well-formed records only, one per task, device, version and config
    (the fastest), sorted by time, plus every verification record (their median ranks the
    finalists; an exact duplicate line is kept once). Lines that are not valid records are
    skipped and counted. Failed trials are kept (unless --ok-only) so that a resumed run does
    not retry them.

    \b
    Example:
      coretune log merge machine1.jsonl machine2.jsonl -o merged.jsonl
    """
    from .tuner.records import VERIFY, device_key, task_key

    kept: dict = {}
    total = invalid = 0
    for path in paths:
        records, skipped = _read_log(path)
        total += len(records) + skipped
        invalid += skipped
        for record in records:
            if ok_only and not record.ok:
                continue
            key = (
                task_key(record.task),
                device_key(record.device),
                record.coretune_version,
                json.dumps(record.config, sort_keys=True),
                record.to_json() if record.strategy == VERIFY else "",
            )
            old = kept.get(key)
            if old is None or (record.best_cost, record.finished) < (old.best_cost, old.finished):
                kept[key] = record
    records = sorted(kept.values(), key=lambda r: (r.finished, r.started, r.trial))
    _write_atomically(Path(output), "".join(r.to_json() + "\n" for r in records))
    click.echo(
        f"{output}: {len(records)} records from {total} lines in {len(paths)} file(s) "
        f"({total - invalid - len(records)} duplicates or dropped, {invalid} invalid lines)"
    )


def _write_atomically(path: Path, text: str) -> None:
    """Write next to the target and rename, so the output is never half written (and may be
    one of the inputs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@log_group.command()
@_PATHS
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Image file.")
@click.option(
    "--metric",
    type=click.Choice(["gflops", "cost"]),
    default="gflops",
    show_default=True,
    help="Best-so-far GFLOP/s, or best-so-far cost in microseconds.",
)
def plot(paths, output, metric):
    """Plot the tuning curve: best-so-far GFLOP/s (or cost) per task over its trials.

    Needs matplotlib (pip install 'coretune[plot]').

    \b
    Example:
      coretune log plot tuning_logs/model.pthread-amd-epyc.jsonl -o curve.png
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CoretuneError("log plot needs matplotlib: pip install 'coretune[plot]'") from None
    from .tuner.records import VERIFY

    groups = _groups(r for r in _read(paths) if r.strategy != VERIFY)  # trials only
    if not groups:
        raise CoretuneError("no records in " + ", ".join(paths))
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for group in groups.values():
        group = sorted(group, key=lambda r: (r.finished, r.trial))
        flops = task_key_flops(group[0].task)
        best, ys = math.inf, []
        for record in group:
            best = min(best, record.best_cost)
            if metric == "gflops":
                ys.append(gflops(flops, best) or math.nan)
            else:
                ys.append(best * 1e6 if math.isfinite(best) else math.nan)
        label = f"{describe_task_key(group[0].task, 48)} ({_device_name(group[0])})"
        axes.plot(range(1, len(ys) + 1), ys, drawstyle="steps-post", label=label)
    axes.set_xlabel("trial")
    axes.set_ylabel("best GFLOP/s so far" if metric == "gflops" else "best cost so far (us)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    try:
        figure.savefig(output, dpi=120)
    except (OSError, ValueError) as exc:
        raise CoretuneError(f"cannot write {output}: {exc}") from None
    finally:
        plt.close(figure)
    click.echo(f"saved {output}")
