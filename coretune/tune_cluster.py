"""The process behind ``coretune tune --scheduler ADDRESS`` or ``--workers N``: a model's tasks
tuned concurrently on a Dask cluster, every selected device at once, into one log.

The same messages as coretune.tune_session ("task"|"trial"|"done"|"end"|"stopped"|"error")
go to the command, so its display, Ctrl-C handling and summary are unchanged. Every task
starts at once (the workers of each device are shared among its tasks), so a ``--time-budget``
is each task's wall-clock limit, the model's whole. Nothing here imports Dask until a cluster
is asked for: the plain ``coretune tune`` path never loads it.
"""

import signal
import traceback
import warnings
from dataclasses import dataclass

from .errors import CoretuneError
from .tune_session import (
    SessionPlan,
    _GuardedLog,
    _ignore_sigint,
    _Stopped,
    _terminate,
)
from .tuner.records import LogWarning

CONNECT_TIMEOUT = 20.0  # seconds to reach the scheduler
WORKER_TIMEOUT = 60.0  # seconds to wait for a worker of a device before giving up


@dataclass(frozen=True)
class ClusterPlan:
    session: SessionPlan
    scheduler: str | None  # tcp://HOST:PORT; None: a LocalCluster of ``workers``
    workers: int = 0
    devices: tuple[str, ...] = ()  # name parts of the devices to tune; () or ("all",): every one
    connect_timeout: float = CONNECT_TIMEOUT
    worker_timeout: float = WORKER_TIMEOUT


def run_cluster_session(plan: ClusterPlan, conn, stop, parent: int) -> None:
    """Process target, as coretune.tune_session.run_session."""
    from .tuner.measure import die_with_parent

    die_with_parent(parent)
    signal.signal(signal.SIGTERM, _terminate)
    warnings.simplefilter("ignore", LogWarning)
    try:
        with _client(plan) as client:
            _tune_all(plan, client, conn, stop, parent)
        conn.send(("end",))
    except _Stopped:
        conn.send(("stopped",))
    except CoretuneError as exc:
        conn.send(("error", True, str(exc), ""))
    except (BrokenPipeError, EOFError):
        pass
    except Exception as exc:
        conn.send(("error", False, f"{type(exc).__name__}: {exc}", traceback.format_exc()))


def local_cluster(workers: int, device: str | None, **kwargs):
    """A LocalCluster of ``workers`` one-thread worker processes, each owning ``device``."""
    import dask
    from distributed import LocalCluster

    # A daemonic worker process may not start children, and each worker starts its device
    # subprocess (the isolation of tuner.measure).
    dask.config.set({"distributed.worker.daemon": False})
    # The scheduler runs here: it looks for lapsed measurement-lock leases (a killed worker's)
    # every second, not Dask's default 10 s (tuner.cluster_worker.LEASE_TIMEOUT).
    dask.config.set({"distributed.scheduler.locks.lease-validation-interval": "1s"})
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        **kwargs,
    )


class _client:
    """The session's Dask client (and its LocalCluster), closed on the way out."""

    def __init__(self, plan: ClusterPlan):
        self.plan, self.cluster, self.client = plan, None, None

    def __enter__(self):
        from distributed import Client

        from .tuner.cluster_worker import DevicePlugin

        plan = self.plan
        if plan.scheduler is None:
            self.cluster = local_cluster(plan.workers, plan.session.device)
            self.client = Client(self.cluster)
            self.client.register_plugin(DevicePlugin(plan.session.device))
            return self.client
        try:
            self.client = Client(plan.scheduler, timeout=plan.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise CoretuneError(
                f"cannot reach the Dask scheduler at {plan.scheduler} within "
                f"{plan.connect_timeout:g} s ({type(exc).__name__}); start it with: "
                "dask scheduler"
            ) from None
        return self.client

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def select_devices(found: list, wanted: tuple[str, ...]) -> list:
    """The (fingerprint, limits) of the cluster's devices that ``wanted`` names (each a part of
    a device name, case-insensitive; () or "all": every device)."""
    if not wanted or "all" in wanted:
        return found
    chosen = [d for d in found if any(w.lower() in d[0]["name"].lower() for w in wanted)]
    if not chosen:
        names = ", ".join(d[0]["name"] for d in found)
        raise CoretuneError(f"no worker of device {', '.join(wanted)} in the cluster ({names})")
    return chosen


def _tune_all(plan: ClusterPlan, client, conn, stop, parent: int) -> None:
    import math

    from .tuner.cluster import Search, cluster_devices, tune_on_cluster
    from .tuner.driver import Budget

    session = plan.session
    log = _GuardedLog(session.log, parent)
    _ignore_sigint()
    devices = select_devices(cluster_devices(client, plan.worker_timeout), plan.devices)
    searches, index_of = [], {}
    for fingerprint, limits in devices:
        for index, task in enumerate(session.tasks):
            trials = session.trials[index] if session.trials is not None else 1 << 40
            budget = Budget(
                trials=trials,
                seconds=session.seconds if session.seconds is not None else math.inf,
                early_stop=session.early_stop,
                verify=session.verify,
            )
            default = task.template().default_config(limits)
            searches.append(Search(task, fingerprint, limits, budget, default=default))
            index_of[id(searches[-1])] = index
    for index in range(len(session.tasks)):
        conn.send(("task", index, session.seconds))
    left = {i: sum(index_of[id(s)] == i for s in searches) for i in range(len(session.tasks))}

    def on_trial(search, record):
        conn.send(("trial", index_of[id(search)], record.to_json()))
        if stop.is_set():
            raise _Stopped

    def progress(text):
        conn.send(("note", text))

    results = tune_on_cluster(
        client,
        searches,
        log,
        session.strategy,
        session.seed,
        on_trial=on_trial,
        worker_timeout=plan.worker_timeout,
        progress=progress,
    )
    for search, result in zip(searches, results, strict=True):
        index = index_of[id(search)]
        left[index] -= 1
        if not left[index]:
            conn.send(("done", index, result.trials, result.resumed))
