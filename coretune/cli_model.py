"""``coretune compile``, ``run`` and ``devices``."""

import json
from pathlib import Path

import click

from .cli_common import (
    console,
    device_line,
    existing_file,
    load_graph,
    load_module,
    open_device,
)
from .errors import InputError

_DEVICE_HELP = "Device: opencl (the default), opencl:N, cuda, cuda:N, or part of a device name."


@click.command("compile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--log",
    "logs",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="A tuning log to take configs from (repeatable).",
)
@click.option("--device", "-d", default=None, help=_DEVICE_HELP)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), default=None, help="Save as a .ctm file."
)
def compile_command(model, logs, device, output):
    """Compile an ONNX model for a device and print what runs where.

    The summary lists the kernels (tuned from the logs, or default configs), the host steps
    (groups no kernel template computes yet, run with numpy), and the planned memory next to
    what one buffer per tensor would take.

    \b
    Examples:
      coretune compile model.onnx
      coretune compile model.onnx --log tuning_logs/model.pthread-amd-epyc.jsonl -o model.ctm
    """
    from .graph.executor import HostStep
    from .module import compile as compile_module

    dev = open_device(device)
    module = compile_module(load_graph(model), dev, list(logs))
    summary, times = module.summary(), module.build_times()
    out = console()
    out.print(f"{model} on {device_line(dev)}")
    out.print(
        f"kernels: {summary['kernels']} ({summary['tuned']} tuned, "
        f"{len(summary['untuned'])} with default configs), built in "
        f"{times['build_seconds']:.2f} s, first run {times['warm_up_seconds']:.2f} s"
    )
    if summary["untuned"]:
        out.print("  untuned: " + ", ".join(summary["untuned"]))
    ignored = summary["ignored_records"]
    if ignored.get("other_version") or ignored.get("other_device"):
        out.print(
            f"  their tasks have {ignored.get('other_version', 0)} records from another "
            f"coretune version and {ignored.get('other_device', 0)} from another device in the "
            "logs, not used: re-tune with `coretune tune`"
        )
    if summary["pad_copies"] or summary["pads_in_place"]:
        out.print(
            f"pads: {summary['pads_in_place']} written in place (no copy), "
            f"{summary['pad_copies']} copied each run"
        )
    hosts = [s for s in module.plan.steps if isinstance(s, HostStep)]
    out.print(f"host steps: {len(hosts)}")
    for step in hosts:
        reason = step.reason.splitlines()[0] if step.reason else ""
        out.print(f"  {step.group.name}: {reason[:100]}")
    planned, unshared = summary["planned_bytes"], summary["unshared_bytes"]
    saved = f" ({1 - planned / unshared:.0%} saved)" if unshared else ""
    out.print(
        f"memory: {_kib(planned)} planned vs {_kib(unshared)} with one buffer per tensor{saved}"
    )
    if output:
        module.save(output)
        out.print(f"saved {output}")


def _kib(nbytes: int) -> str:
    return f"{nbytes / 1024:.1f} KiB" if nbytes >= 1024 else f"{nbytes} B"


def _parse_inputs(_ctx, _param, values) -> dict[str, Path]:
    inputs = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{value!r}: expected NAME=FILE.npy")
        inputs[name] = Path(path)
    return inputs


def _load_array(name, path):
    import numpy as np

    existing_file(path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"input {name!r}: {path} is not a readable .npy file ({exc})") from None


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--input",
    "-i",
    "inputs",
    multiple=True,
    callback=_parse_inputs,
    metavar="NAME=FILE.npy",
    help="An input array (repeatable); inputs not given are random.",
)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the outputs (.npz).")
@click.option("--device", "-d", default=None, help=_DEVICE_HELP)
@click.option("--seed", default=0, show_default=True, help="Seed of the random inputs.")
def run(model, inputs, output, device, seed):
    """Run a .ctm module or an ONNX model once and print its outputs.

    Inputs not given with --input are random (a note on stderr says which). Each input must
    match the model's name, shape and dtype exactly.

    \b
    Examples:
      coretune run model.ctm
      coretune run model.onnx --input input=image.npy --output out.npz
    """
    import numpy as np

    from .graph.random import random_inputs

    module = load_module(model, open_device(device))
    graph = module.plan.graph
    arrays = {name: _load_array(name, path) for name, path in inputs.items()}
    unknown = sorted(set(arrays) - set(graph.inputs))
    if unknown:
        raise InputError(
            f"unknown input(s) {', '.join(unknown)}; the model takes "
            + ", ".join(f"{n}: {t}" for n, t in graph.inputs.items())
        )
    missing = [n for n in graph.inputs if n not in arrays]
    if missing:
        random = random_inputs(graph, seed)
        for name in missing:
            arrays[name] = random[name]
            click.echo(f"note: random input {name}: {graph.inputs[name]} (seed {seed})", err=True)
    results = module.run(**arrays)
    for name, value in zip(module.output_names, results, strict=True):
        flat = value.astype(np.float64).ravel()
        head = ", ".join(f"{v:.4g}" for v in flat[:6]) + (", ..." if flat.size > 6 else "")
        click.echo(f"{name}: {value.dtype}{list(value.shape)} [{head}]")
    if output:
        np.savez(output, **dict(zip(module.output_names, results, strict=True)))
        click.echo(f"saved {output}", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the devices as JSON.")
def devices(as_json):
    """List the OpenCL platforms and devices with their limits, and CUDA devices.

    The default device (what --device is when not given) is opencl:0.

    \b
    Examples:
      coretune devices
      coretune devices --json | jq '.opencl.devices[] | .name'
    """
    report = {"opencl": _opencl_devices(), "cuda": _cuda_devices()}
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from rich.table import Table

    out = console()
    table = Table(title="OpenCL devices")
    columns = ("device", "platform", "name", "driver", "units", "wg size", "wi sizes", "local")
    for column in columns:
        table.add_column(column)
    for d in report["opencl"]["devices"]:
        table.add_row(
            d["device"] + (" (default)" if d["default"] else ""),
            d["platform"],
            d["name"],
            d["driver_version"],
            str(d["compute_units"]),
            str(d["max_work_group_size"]),
            "x".join(map(str, d["max_work_item_sizes"])),
            f"{d['local_mem_bytes'] // 1024} KiB",
        )
    if report["opencl"]["available"]:
        out.print(table)
    else:
        out.print(f"OpenCL: not available ({report['opencl']['reason']})")
    cuda = report["cuda"]
    if not cuda["available"]:
        out.print(f"CUDA: not available ({cuda['reason']})")
    for d in cuda["devices"]:
        out.print(
            f"{d['device']}: {d['name']} ({d['platform']}, driver {d['driver_version']}), "
            f"{d['compute_units']} SMs, block {d['max_work_group_size']} threads, "
            f"shared memory {d['local_mem_bytes'] // 1024} KiB"
        )


def _opencl_devices() -> dict:
    """OpenCL devices when pyopencl and a platform work; otherwise the reason, in one line."""
    from .kernels.opencl import DeviceError, device_info, list_devices

    try:
        infos = [device_info(device) for device in list_devices()]
    except DeviceError as exc:
        return _none_found(str(exc))
    return _found("opencl", infos)


def _cuda_devices() -> dict:
    """CUDA devices when CuPy or pycuda and a driver work; otherwise the reason, in one line."""
    from .kernels.cuda import list_devices
    from .kernels.opencl import DeviceError

    try:
        infos = list_devices()
    except DeviceError as exc:
        return _none_found(str(exc).splitlines()[0])
    return _found("cuda", infos)


def _found(backend: str, infos) -> dict:
    devices = [
        {
            "device": f"{backend}:{index}",
            "default": backend == "opencl" and index == 0,
            "platform": info.platform,
            "name": info.name,
            "driver_version": info.driver_version,
            "compute_units": info.limits.compute_units,
            "max_work_group_size": info.limits.max_work_group_size,
            "max_work_item_sizes": list(info.limits.max_work_item_sizes),
            "local_mem_bytes": info.limits.local_mem_bytes,
            "preferred_vector_width": info.limits.preferred_vector_width,
        }
        for index, info in enumerate(infos)
    ]
    return {"available": True, "reason": "", "devices": devices}


def _none_found(reason: str) -> dict:
    return {"available": False, "reason": reason, "devices": []}
