"""The public runtime: compile a model, run it, save it as one ``.ctm`` file, load it back.

A ``.ctm`` file is a zip archive of plain data: manifest.json (format version, coretune version,
device fingerprint, digest of the tuning logs), graph.json (the optimised core-op graph),
plan.json (per fused group: template, config, rendered source, launch sizes) and params.npz
(loaded with pickle disabled). Loading validates every entry and re-renders each kernel from
its template and config, so no code from the file is ever executed: a kernel source in the file
that differs from what this coretune renders is rejected.
"""

import hashlib
import io
import json
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import CoretuneError, ModelLoadError

FORMAT = "coretune.module"
FORMAT_VERSION = 1
_ENTRIES = {"manifest.json", "graph.json", "plan.json", "params.npz"}
_MAX_ENTRY_BYTES = 4 << 30


class Module:
    def __init__(self, plan, device, logs_digest: str = ""):
        from .graph.executor import Executor

        self.plan = plan
        self.device = device
        self.logs_digest = logs_digest
        self._executor = Executor(plan, device)

    @property
    def input_names(self) -> list[str]:
        return list(self.plan.graph.inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self.plan.graph.outputs)

    def run(self, **inputs: np.ndarray) -> list[np.ndarray]:
        """The graph outputs, in graph order; inputs are checked by name, shape and dtype."""
        return self._executor.run(inputs)

    def benchmark(self, repeat: int = 10, inputs: dict | None = None, warmup: int = 2) -> dict:
        from .graph.random import random_inputs

        inputs = inputs or random_inputs(self.plan.graph)
        return self._executor.benchmark(inputs, repeat=repeat, warmup=warmup)

    def summary(self) -> dict:
        return self.plan.summary()

    def build_times(self) -> dict:
        """Seconds the kernels took to build and to run once on zeros (so that a user's first
        run compiles nothing); the drivers' own binary caches, PoCL's and CuPy's, keyed by
        source, device and options, make a second build of the same kernels fast."""
        return {
            "build_seconds": self._executor.build_seconds,
            "warm_up_seconds": self._executor.warm_up_seconds,
        }

    # ---- one-file models -------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        from . import __version__

        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "coretune_version": __version__,
            "device": self.device.info.fingerprint(),
            "logs_digest": self.logs_digest,
        }
        params = io.BytesIO()
        np.savez(params, **self.plan.graph.params)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("manifest.json", json.dumps(manifest, indent=1))
            archive.writestr("graph.json", self.plan.graph.dumps())
            archive.writestr("plan.json", json.dumps(plan_json(self.plan), indent=1))
            archive.writestr("params.npz", params.getvalue())


def plan_json(plan) -> dict:
    """A plan as plan.json holds it: its steps in order, with each kernel's template, config,
    source and launch, and the memory plan. Loading derives all of it again from graph.json
    and the kernels' configs, and refuses a file whose plan differs."""
    from .graph.executor import HostStep, KernelStep, PadStep, ViewStep
    from .graph.placement import ConcatStep

    steps = []
    for step in plan.steps:
        if isinstance(step, KernelStep):
            steps.append(
                {
                    "kind": "kernel",
                    "nodes": [n.name for n in step.group.nodes],
                    "inputs": step.group.inputs,
                    "outputs": step.group.outputs,
                    "template": step.template,
                    "config": step.config,
                    "tuned": step.tuned,
                    "source": step.source,
                    "entry": step.entry,
                    "launch": step.launch,
                }
            )
        elif isinstance(step, ViewStep):
            steps.append({"kind": "view", "source": step.source, "target": step.target})
        elif isinstance(step, PadStep):
            nodes = [n.name for n in step.group.nodes]
            steps.append({"kind": "pad", "nodes": nodes, "in_place": step.in_place})
        elif isinstance(step, ConcatStep):
            steps.append({"kind": "concat", "nodes": [n.name for n in step.group.nodes]})
        elif isinstance(step, HostStep):
            steps.append(
                {
                    "kind": "host",
                    "nodes": [n.name for n in step.group.nodes],
                    "inputs": step.group.inputs,
                    "outputs": step.group.outputs,
                    "reason": step.reason,
                }
            )
    plan_data = {
        "steps": steps,
        "buffer_bytes": plan.buffer_bytes,
        "buffer_of": plan.buffer_of,
        "unshared_bytes": plan.unshared_bytes,
    }
    return json.loads(json.dumps(plan_data))  # as the file holds it: lists, str keys


def compile(model, device=None, logs=None) -> Module:  # noqa: A001 - the public verb
    """Compile an ONNX path/ModelProto or a core-op Graph for a device, with tuning logs."""
    from . import __version__
    from .graph.executor import build_plan
    from .graph.ir import Graph
    from .kernels import open_device
    from .tuner.database import TuningDatabase

    graph = model if isinstance(model, Graph) else _import(model)
    dev = device if hasattr(device, "info") else open_device(device)
    paths = [logs] if isinstance(logs, str | Path) else list(logs or [])
    database = TuningDatabase.load(paths) if paths else None
    plan = build_plan(
        graph, dev.limits, dev.info.fingerprint(), database, __version__, dev.info.backend
    )
    return Module(plan, dev, _digest(paths))


def load(path: str | Path, device=None) -> Module:
    """Load a ``.ctm`` file for a device; every entry is validated, no code is executed, and
    the plan is derived again from the graph and the kernels' configs (a file whose plan
    differs is refused), so no field of the file can make a kernel read or write outside its
    buffers or run out of order."""
    from .kernels import open_device

    dev = device if hasattr(device, "info") else open_device(device)
    try:
        with zipfile.ZipFile(path) as archive:
            entries = _read_entries(archive, path)
    except _ARCHIVE_ERRORS as exc:
        raise ModelLoadError(
            f"{path}: not a readable .ctm file ({type(exc).__name__}: {exc})"
        ) from None
    return _module_from_entries(entries, dev, path)


# What a damaged zip can raise: a flipped byte in the central directory can name an unknown
# compression method (NotImplementedError) or a bad deflate stream (zlib.error).
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    zlib.error,
)


def _read_entries(archive: zipfile.ZipFile, path) -> dict[str, bytes]:
    names = [info.filename for info in archive.infolist()]
    unexpected = sorted(set(names) - _ENTRIES)
    missing = sorted(_ENTRIES - set(names))
    if unexpected or missing or len(names) != len(set(names)):
        raise ModelLoadError(f"{path}: unexpected entries {unexpected}, missing {missing}")
    out = {}
    for info in archive.infolist():
        if info.file_size > _MAX_ENTRY_BYTES:
            raise ModelLoadError(f"{path}: entry {info.filename} is implausibly large")
        out[info.filename] = archive.read(info)
    return out


def _json(entries: dict, name: str, path):
    """An entry's JSON; nesting deep enough to exhaust the parser is damage like any other."""
    try:
        return json.loads(entries[name])
    except (ValueError, RecursionError) as exc:
        raise ModelLoadError(f"{path}: {name} is not valid JSON ({type(exc).__name__})") from None


def _read_params(data: bytes, path) -> dict[str, np.ndarray]:
    """params.npz's arrays, pickle disabled; each .npy header's declared size is checked
    against the entry's real size before any array is allocated."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as npz:
            arrays = {}
            for info in npz.infolist():
                if not info.filename.endswith(".npy"):
                    raise ModelLoadError(f"{path}: params.npz holds {info.filename!r}")
                with npz.open(info) as entry:
                    array = _read_npy(entry, info, path)
                arrays[info.filename[: -len(".npy")]] = array
            return arrays
    except ModelLoadError:
        raise
    except (*_ARCHIVE_ERRORS, TypeError, KeyError, SyntaxError) as exc:
        raise ModelLoadError(
            f"{path}: params.npz is damaged ({type(exc).__name__}: {exc})"
        ) from None


def _read_npy(entry, info: zipfile.ZipInfo, path) -> np.ndarray:
    fmt = np.lib.format
    read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    version = fmt.read_magic(entry)
    if version not in read_header:
        raise ModelLoadError(f"{path}: parameter {info.filename}: .npy format {version}")
    shape, fortran, dtype = read_header[version](entry, max_header_size=10_000)
    if dtype.hasobject:
        raise ModelLoadError(f"{path}: parameter {info.filename} holds Python objects")
    declared = math.prod(shape) * dtype.itemsize
    if declared != info.file_size - entry.tell():
        raise ModelLoadError(
            f"{path}: parameter {info.filename} claims shape {shape} of {dtype} "
            f"({declared:,} bytes); the entry holds {info.file_size - entry.tell():,}"
        )
    array = np.frombuffer(entry.read(declared), dtype).reshape(shape, order="F" if fortran else "C")
    return np.array(array, dtype.newbyteorder("="), order="C")  # our own, native-order copy


def _module_from_entries(entries, device, path) -> Module:
    from . import __version__
    from .graph.executor import build_plan
    from .graph.ir import Graph

    try:
        manifest = _json(entries, "manifest.json", path)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ModelLoadError(f"{path}: not a coretune module")
        if manifest.get("version") != FORMAT_VERSION:
            raise ModelLoadError(
                f"{path}: format version {manifest.get('version')!r}; this "
                f"coretune {__version__} reads version {FORMAT_VERSION}"
            )
        made_for = manifest.get("device", {}).get("backend", "opencl")
        if made_for != device.info.backend:
            raise ModelLoadError(
                f"{path}: compiled for a {made_for} device, not for {device.info.name} "
                f"({device.info.backend}): compile the model again for this device"
            )
        params = _read_params(entries["params.npz"], path)
        graph = Graph.from_json(_json(entries, "graph.json", path), params)
        saved = _json(entries, "plan.json", path)
        plan = build_plan(
            graph,
            device.limits,
            device.info.fingerprint(),
            version=__version__,
            dialect=device.info.backend,
            saved_choices=_saved_choices(saved),
        )
        difference = _first_difference(saved, plan_json(plan))
        if difference:
            raise ModelLoadError(
                f"{path}: plan.json differs from the plan this coretune derives from its graph "
                f"and kernel configs ({difference}): edited, or made by another version"
            )
        return Module(plan, device, str(manifest.get("logs_digest", "")))
    except ModelLoadError:
        raise
    except CoretuneError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ModelLoadError(f"{path}: malformed module ({type(exc).__name__}: {exc})") from None


def _saved_choices(saved: dict) -> dict:
    """node names of each kernel step -> (template class, config, tuned), as recorded."""
    return {
        tuple(step["nodes"]): (
            _template_class(step["template"]),
            dict(step["config"]),
            step["tuned"] is True,
        )
        for step in saved["steps"]
        if step["kind"] == "kernel"
    }


def _first_difference(saved, derived, where: str = "") -> str:
    """Where two JSON values first differ (e.g. "steps[3].inputs"), or '' when equal."""
    if type(saved) is not type(derived):
        return where or "the whole plan"
    if isinstance(derived, dict):
        for key in sorted(set(saved) | set(derived), key=str):
            if key not in saved or key not in derived:
                return f"{where}.{key}".lstrip(".")
            found = _first_difference(saved[key], derived[key], f"{where}.{key}")
            if found:
                return found.lstrip(".")
        return ""
    if isinstance(derived, list):
        if len(saved) != len(derived):
            return f"{where} has {len(saved)} entries, not {len(derived)}".lstrip(".")
        for i, (a, b) in enumerate(zip(saved, derived, strict=True)):
            found = _first_difference(a, b, f"{where}[{i}]")
            if found:
                return found
        return ""
    return "" if saved == derived else where.lstrip(".")


def _template_class(name):
    from .kernels.templates import TEMPLATES

    if not isinstance(name, str) or name not in TEMPLATES:  # never import a module a file names
        raise ModelLoadError(f"unknown template {name!r}")
    return TEMPLATES[name]


def _import(model):
    from . import import_onnx

    return import_onnx(model)


def _digest(paths) -> str:
    sha = hashlib.sha256()
    for p in sorted(map(str, paths)):
        sha.update(Path(p).read_bytes())
    return sha.hexdigest() if paths else ""
