"""What the command-line modules share: reading models, naming devices and tasks, formatting.

Heavy imports (numpy, pyopencl, onnx) stay inside functions, so ``coretune --help`` is fast.
"""

import math
import re
from pathlib import Path

from .errors import CoretuneError

_ZIP_MAGIC = b"PK\x03\x04"


def existing_file(path) -> Path:
    """The path, when it names a readable file; a one-line user error otherwise."""
    p = Path(path)
    if not p.exists():
        raise CoretuneError(f"{path}: no such file")
    if not p.is_file():
        raise CoretuneError(f"{path}: not a file")
    return p


def is_ctm(path) -> bool:
    """A .ctm module is a zip archive; anything else is read as ONNX."""
    with open(existing_file(path), "rb") as f:
        return f.read(4) == _ZIP_MAGIC


def load_graph(path):
    """The core-op graph of an ONNX file."""
    from . import import_onnx

    return import_onnx(str(existing_file(path)))


def load_module(path, device):
    """A Module from a .ctm file (as saved) or an ONNX file (compiled with default configs)."""
    from .module import compile as compile_module
    from .module import load

    if is_ctm(path):
        return load(path, device)
    return compile_module(load_graph(path), device)


def open_device(spec):
    from .kernels import open_device as _open

    return _open(spec)


def device_slug(name: str) -> str:
    """A short file-name-safe device name: 'pthread-AMD EPYC' -> 'pthread-amd-epyc'."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:40].rstrip("-") or "device"


def default_log_path(model, device_name: str) -> Path:
    return Path("tuning_logs") / f"{Path(model).stem}.{device_slug(device_name)}.jsonl"


def describe_task_key(task: dict, width: int = 60) -> str:
    """'injective multiply+add+sigmoid -> float32[64, 256]' from a task key."""
    try:
        workload = task["workload"]
        ops = "+".join(dict.fromkeys(node[0] for node in workload["nodes"]))
        _, shape, dtype = workload["outputs"][0]
        text = f"{task['template']} {ops} -> {dtype}[{', '.join(map(str, shape))}]"
    except (KeyError, IndexError, TypeError, ValueError):
        text = str(task.get("template", "?")) if isinstance(task, dict) else "?"
    return text if len(text) <= width else text[: width - 3] + "..."


def task_key_flops(task: dict) -> int | None:
    """FLOPs of one run of a logged task, or None when its workload no longer validates."""
    from .kernels.workload import Workload
    from .tuner.task import workload_flops

    try:
        return workload_flops(Workload.from_key(task["workload"]))
    except (CoretuneError, KeyError, IndexError, TypeError, ValueError):
        return None


def gflops(flops: int | None, cost: float) -> float | None:
    if not flops or not math.isfinite(cost) or cost <= 0:
        return None
    return flops / cost / 1e9


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def console(stderr: bool = False):
    """A rich console; when it is not a terminal, wide enough that tables do not wrap."""
    from rich.console import Console

    # No markup: model, op and device names and messages are printed as they are.
    out = Console(stderr=stderr, highlight=False, markup=False)
    if not out.is_terminal:
        out = Console(stderr=stderr, highlight=False, markup=False, width=140)
    return out


def device_line(device) -> str:
    info = device.info
    return f"{info.name} ({info.platform}, driver {info.driver_version}, {info.backend})"
