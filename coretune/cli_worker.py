"""``coretune worker SCHEDULER --device D``: a Dask worker that owns one device and measures
the trials a ``coretune tune --scheduler`` client sends to that device (tuner.cluster_worker).
"""

import asyncio

import click

from .errors import CoretuneError


async def _serve(scheduler: str, device, fingerprint: dict, lock, name, timeout: float):
    from distributed import Worker

    from .tuner.cluster_worker import DevicePlugin, resource_name

    # One thread: one trial at a time on the device (its resource has one unit anyway); the
    # device subprocesses are this worker's children, so no nanny process sits in between.
    worker = Worker(
        scheduler,
        nthreads=1,
        name=name,
        plugins={DevicePlugin(device, lock)},
        resources={resource_name(fingerprint): 1},  # set before it joins: no early trial lost
        death_timeout=timeout,
        dashboard=False,
    )
    try:
        await asyncio.wait_for(worker.start(), timeout)
    except (OSError, TimeoutError) as exc:
        await worker.close()
        raise CoretuneError(
            f"cannot reach the Dask scheduler at {scheduler} within {timeout:g} s "
            f"({type(exc).__name__}); start it with: dask scheduler"
        ) from None
    click.echo(f"coretune worker {worker.address} serving device {device or 'default'}", err=True)
    await worker.finished()


@click.command("worker")
@click.argument("scheduler")
@click.option("--device", "-d", default=None, help="Device: opencl, opencl:N, cuda, a name part.")
@click.option(
    "--lock",
    default=None,
    help="Name of the measurement lock [default: one per host and physical device; workers "
    "that share hardware never time at once]. Give workers pinned to separate hardware "
    "their own names.",
)
@click.option("--name", default=None, help="The worker's name in the cluster.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Seconds to reach the scheduler (and to wait for it when it goes away).",
)
def worker(scheduler, device, lock, name, timeout):
    """Serve one device to a coretune tuning cluster at SCHEDULER (tcp://HOST:PORT).

    The worker opens the device once and advertises its fingerprint, so only trials for that
    device reach it; each trial is built, checked against numpy and timed in a subprocess of
    its own (a crash or a hang costs one trial). Start one worker per device.

    \b
    Example:
      dask scheduler --port 8786
      coretune worker tcp://10.0.0.1:8786 --device opencl:0
      coretune tune model.onnx --scheduler tcp://10.0.0.1:8786 --trials 800
    """
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise CoretuneError(
            "coretune worker needs Dask distributed: pip install 'coretune[cluster]'"
        ) from None
    from .cli_common import open_device

    # a device that does not open is an error here, not in the worker
    fingerprint = open_device(device).info.fingerprint()
    asyncio.run(_serve(scheduler, device, fingerprint, lock, name, timeout))
