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
import zipfile
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

    # ---- one-file models -------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        from . import __version__
        from .graph.executor import HostStep, KernelStep, PadStep, ViewStep

        steps = []
        for step in self.plan.steps:
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
                steps.append(
                    {
                        "kind": "pad",
                        "nodes": [n.name for n in step.group.nodes],
                        "in_place": step.in_place,
                    }
                )
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
        plan = {
            "steps": steps,
            "buffer_bytes": self.plan.buffer_bytes,
            "buffer_of": self.plan.buffer_of,
            "unshared_bytes": self.plan.unshared_bytes,
        }
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
            archive.writestr("plan.json", json.dumps(plan, indent=1))
            archive.writestr("params.npz", params.getvalue())


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
    """Load a ``.ctm`` file for a device; every entry is validated, no code is executed."""
    from .kernels import open_device

    dev = device if hasattr(device, "info") else open_device(device)
    try:
        with zipfile.ZipFile(path) as archive:
            entries = _read_entries(archive, path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelLoadError(f"{path}: not a readable .ctm file ({exc})") from None
    return _module_from_entries(entries, dev, path)


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


def _module_from_entries(entries, device, path) -> Module:
    from . import __version__
    from .graph.executor import HostStep, PadStep, Plan, ViewStep, pads_in_place
    from .graph.ir import Graph

    try:
        manifest = json.loads(entries["manifest.json"])
        if manifest.get("format") != FORMAT:
            raise ModelLoadError(f"{path}: not a coretune module")
        if manifest.get("version") != FORMAT_VERSION:
            raise ModelLoadError(
                f"{path}: format version {manifest.get('version')!r}; this "
                f"coretune {__version__} reads version {FORMAT_VERSION}"
            )
        with np.load(io.BytesIO(entries["params.npz"]), allow_pickle=False) as npz:
            params = {name: npz[name] for name in npz.files}
        graph = Graph.from_json(json.loads(entries["graph.json"]), params)
        plan_data = json.loads(entries["plan.json"])
        nodes = {n.name: n for n in graph.nodes}
        plan = Plan(
            graph,
            [],
            [int(b) for b in plan_data["buffer_bytes"]],
            {str(k): int(v) for k, v in plan_data["buffer_of"].items()},
            int(plan_data["unshared_bytes"]),
        )
        groups = [_step_group(step, nodes, path) for step in plan_data["steps"]]
        # Which pads are written in place is derived here as build_plan derives it, never
        # taken from the file; the file's flag must agree.
        templates = {
            group.name: _template_class(step["template"])
            for step, group in zip(plan_data["steps"], groups, strict=True)
            if step["kind"] == "kernel"
        }
        in_place = pads_in_place(graph, groups, templates)
        for step, group in zip(plan_data["steps"], groups, strict=True):
            if step["kind"] == "view":
                plan.steps.append(ViewStep(group.inputs[0], group.outputs[0]))
            elif step["kind"] == "pad":
                pad = PadStep(group, in_place=group.inputs[0] in in_place)
                if step.get("in_place") is not pad.in_place:
                    raise ModelLoadError(f"{path}: pad {group.name}: wrong in_place flag")
                plan.steps.append(pad)
            elif step["kind"] == "host":
                plan.steps.append(HostStep(group, str(step["reason"])))
            else:
                plan.steps.append(_checked_kernel_step(graph, group, step, device, in_place))
    except ModelLoadError:
        raise
    except CoretuneError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{path}: malformed module ({type(exc).__name__}: {exc})") from None
    return Module(plan, device, str(manifest.get("logs_digest", "")))


def _step_group(step: dict, nodes: dict, path):
    """The fused group a plan.json step computes (a view's: just its source and target)."""
    from .graph.passes import FusedGroup, is_copy_pad

    kind = step["kind"]
    if kind == "view":
        return FusedGroup([], [str(step["target"])], [str(step["source"])], "view")
    if kind == "pad":
        (node,) = (nodes[n] for n in step["nodes"])
        if not is_copy_pad(node):
            raise ModelLoadError(f"{path}: step 'pad' names {node.name}, not a pad copy")
        return FusedGroup([node], list(node.outputs), list(node.inputs), "pad")
    if kind not in ("kernel", "host"):
        raise ModelLoadError(f"{path}: unknown step kind {kind!r}")
    members = [nodes[n] for n in step["nodes"]]
    return FusedGroup(members, list(step["outputs"]), list(step["inputs"]))


def _template_class(name):
    from .kernels.templates import TEMPLATES

    if name not in TEMPLATES:  # never import a module a file names
        raise ModelLoadError(f"unknown template {name!r}")
    return TEMPLATES[name]


def _checked_kernel_step(graph, group, step, device, in_place):
    """Re-render the kernel from its template and config (stores and reads placed in pads'
    interiors where build_plan would place them); the file's source must match."""
    from .graph.executor import render_kernel
    from .kernels.render import renderer_for

    renderer = renderer_for(device.info.backend)
    template_cls = _template_class(step["template"])
    tuned = bool(step["tuned"])
    kernel = render_kernel(
        graph, group, template_cls, step["config"], tuned, in_place, renderer, device.limits
    )
    if kernel.source != step["source"]:
        raise ModelLoadError(
            f"kernel for {group.name} differs from what this coretune renders "
            f"for template {step['template']} (edited, or another version)"
        )
    return kernel


def _import(model):
    from . import import_onnx

    return import_onnx(model)


def _digest(paths) -> str:
    sha = hashlib.sha256()
    for p in sorted(map(str, paths)):
        sha.update(Path(p).read_bytes())
    return sha.hexdigest() if paths else ""
