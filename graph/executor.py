"""The graph executor: fused groups -> kernels (tuned or default configs) -> a runnable plan.

``build_plan`` decides, once, what runs for each fused group: a kernel (template, config,
rendered source, argument tensors), a view (an alias of a buffer: no kernel), a pad copy (a
device rectangle copy into a buffer pre-filled with the pad value: no kernel), or a host step
(the numpy reference, for a group no template computes, e.g. float16 arithmetic). ``Executor``
owns the device buffers and runs the plan.
"""

import math
import time
from dataclasses import dataclass, field

import numpy as np

from coretune.errors import CoretuneError

from .dtypes import to_numpy
from .ir import Graph
from .passes import FusedGroup, fuse, optimize, plan_memory
from .reference import check_inputs
from .registry import get_op


@dataclass
class KernelStep:
    group: FusedGroup
    template: str
    config: dict
    tuned: bool
    task: dict  # {"template", "workload"}: the tuning-log key
    source: str
    entry: str
    launch: dict  # {"groups": [...], "local": [...]}
    args: list[str]  # graph tensors bound to the kernel's buffers, in order


@dataclass
class ViewStep:
    source: str
    target: str


@dataclass
class PadStep:
    """A constant pad of the last two axes (fuse.is_copy_pad) as a rectangle copy."""

    group: FusedGroup

    def box(self, graph: Graph) -> dict:
        """The copy in bytes and rows, as OpenCL's rectangle copy takes it: (row bytes, rows,
        planes) of the input, its pitches, the output's pitches and where the input lands."""
        node = self.group.nodes[0]
        shape = (1, 1, *graph.types[node.inputs[0]].shape)
        item = to_numpy(graph.types[node.inputs[0]].dtype).itemsize
        top, bottom, left, right = (0, 0, *node.attrs["pad_width"])[-4:]
        height, width = shape[-2], shape[-1]
        padded_height, padded_width = height + top + bottom, width + left + right
        return {
            "region": (width * item, height, math.prod(shape[:-2])),
            "source_pitches": (width * item, height * width * item),
            "target_pitches": (padded_width * item, padded_height * padded_width * item),
            "target_origin": (left * item, top, 0),
        }

    def fill_value(self, graph: Graph) -> np.ndarray:
        node = self.group.nodes[0]
        return np.array(node.attrs["pad_value"], to_numpy(graph.types[node.outputs[0]].dtype))


@dataclass
class HostStep:
    group: FusedGroup
    reason: str


@dataclass
class Plan:
    graph: Graph
    steps: list = field(default_factory=list)
    buffer_bytes: list[int] = field(default_factory=list)
    buffer_of: dict[str, int] = field(default_factory=dict)
    unshared_bytes: int = 0

    @property
    def kernels(self) -> list[KernelStep]:
        return [s for s in self.steps if isinstance(s, KernelStep)]

    def summary(self) -> dict:
        kernels = self.kernels
        return {
            "kernels": len(kernels),
            "pad_copies": sum(isinstance(s, PadStep) for s in self.steps),
            "tuned": sum(k.tuned for k in kernels),
            "untuned": [k.group.name for k in kernels if not k.tuned],
            "host_steps": [s.group.name for s in self.steps if isinstance(s, HostStep)],
            "planned_bytes": sum(self.buffer_bytes),
            "unshared_bytes": self.unshared_bytes,
        }


def group_workload(graph: Graph, group: FusedGroup):
    """The group as a Workload; its inputs, in order, are ``group.inputs``."""
    from coretune.kernels.workload import Workload

    sub = Graph(
        group.name,
        {t: graph.types[t] for t in group.inputs},
        {},
        [n for n in group.nodes],
        list(group.outputs),
    )
    return Workload.from_graph(sub.copy())


def build_plan(
    graph: Graph,
    limits,
    fingerprint: dict,
    database=None,
    version: str = "",
    dialect: str = "opencl",
) -> Plan:
    from coretune.kernels.render import renderer_for
    from coretune.kernels.templates import templates_for

    graph = optimize(graph)
    groups = fuse(graph)
    memory = plan_memory(graph, groups)
    plan = Plan(graph, [], memory.buffer_bytes, memory.buffer_of, memory.unshared_bytes(graph))
    renderer = renderer_for(dialect)
    for group in groups:
        if group.kind == "view":
            plan.steps.append(ViewStep(group.inputs[0], group.outputs[0]))
            continue
        if group.kind == "pad" and dialect == "opencl":  # the runtime with rectangle copies
            plan.steps.append(PadStep(group))
            continue
        try:
            workload = group_workload(graph, group)
            candidates = templates_for(workload)
        except CoretuneError as exc:
            plan.steps.append(HostStep(group, str(exc)))
            continue
        names = dict(zip((n for n, _ in workload.inputs), group.inputs, strict=True))
        candidates = [
            c
            for c in candidates  # e.g. Winograd needs its weights at compile time
            if all(names[i] in graph.params for i in c(workload).constant_inputs())
        ]
        if not candidates:
            plan.steps.append(HostStep(group, "no kernel template computes this group"))
            continue
        template_cls, config, tuned = _choose(
            candidates, workload, limits, fingerprint, database, version
        )
        template = template_cls(workload)
        spec = template.spec(template.space(limits).check(config))
        rendered = renderer.render(spec)
        plan.steps.append(
            KernelStep(
                group,
                template_cls.name,
                dict(config),
                tuned,
                template.key(),
                rendered.source,
                rendered.entry,
                {"groups": list(rendered.launch.groups), "local": list(rendered.launch.local)},
                list(group.inputs) + list(group.outputs),
            )
        )
    return plan


def _choose(candidates, workload, limits, fingerprint, database, version):
    """The tuned config with the lowest cost across candidate templates, else the default of
    the most specialised template that is an untuned choice on this device."""
    best = None
    if database is not None:
        for cls in candidates:
            found = database.best(cls(workload).key(), fingerprint, version, limits)
            if found.record and (best is None or found.cost < best[1].cost):
                best = (cls, found, found.config)
    if best:
        return best[0], best[2], True
    cls = next((c for c in candidates if c(workload).untuned_choice(limits)), candidates[0])
    return cls, cls(workload).default_config(limits), False


class Executor:
    """Runs a plan on a device. Everything a run touches is fixed once, here: parameters are
    uploaded, the graph inputs and outputs get buffers of their own, views are resolved to the
    buffer they alias and every kernel gets its arguments bound. A run then only writes the
    inputs, enqueues the kernels and reads the outputs (a module is not re-entrant: one run at
    a time)."""

    def __init__(self, plan: Plan, device):
        self.plan = plan
        self.device = device
        graph = plan.graph
        pool = [device.empty(n) for n in plan.buffer_bytes]
        buffers = {n: device.upload(a) for n, a in graph.params.items()}
        for name in (*graph.inputs, *graph.outputs):
            if name not in buffers:
                buffers[name] = device.empty(_nbytes(graph, name))
        for name, index in plan.buffer_of.items():
            buffers.setdefault(name, pool[index])
        self._actions = []  # what a run does, in order: (kind, payload)
        for step in plan.steps:
            if isinstance(step, ViewStep):
                copy = self._view(buffers, step)
                if copy:
                    self._actions.append(("copy", copy))
            elif isinstance(step, HostStep):
                self._actions.append(("host", step))
            elif isinstance(step, PadStep):
                self._actions.append(("pad", self._pad(buffers, step)))
            else:
                self._actions.append(("kernel", self._bind(buffers, step)))
        self._buffers = buffers

    def _bind(self, buffers, step: KernelStep):
        from coretune.kernels.render import Launch, RenderedKernel

        launch = Launch(tuple(step.launch["groups"]), tuple(step.launch["local"]))
        rendered = RenderedKernel(
            self.device.info.backend, step.source, step.entry, launch, tuple(step.args)
        )
        prepared = self._prepare(step)
        args = [prepared.get(i) or buffers[a] for i, a in enumerate(step.args)]
        return self.device.bind(self.device.compile(rendered), args)

    def _prepare(self, step: KernelStep) -> dict[int, object]:
        """Upload the weights a template transforms once (e.g. Winograd's U = G g G^T)."""
        from coretune.kernels.templates import get_template

        graph = self.plan.graph
        template = get_template(step.template)(group_workload(graph, step.group))
        arrays = [graph.params.get(name) for name in step.group.inputs]
        prepared = template.prepare_weights(list(arrays))
        return {
            i: self.device.upload(new)
            for i, (old, new) in enumerate(zip(arrays, prepared, strict=True))
            if new is not old
        }

    def _pad(self, buffers, step: PadStep) -> tuple:
        """Fill the output (a buffer no other tensor shares) with the pad value, once; a run
        then copies the input into its interior."""
        graph = self.plan.graph
        source, target = (buffers[t] for t in (*step.group.inputs, *step.group.outputs))
        self.device.fill(target, step.fill_value(graph), _nbytes(graph, step.group.outputs[0]))
        box = step.box(graph)
        return (source, target, box) if all(box["region"]) else ()

    def _view(self, buffers, step: ViewStep) -> tuple | None:
        """Alias the target to its source's buffer; a graph output owns its memory, so it
        gets a copy at run time instead (returned as the copy's arguments)."""
        source = buffers[step.source]
        if step.target in self.plan.graph.outputs:
            return (source, buffers[step.target], _nbytes(self.plan.graph, step.target))
        buffers[step.target] = source
        return None

    def run(self, inputs: dict[str, np.ndarray], events: list | None = None) -> list[np.ndarray]:
        graph = self.plan.graph
        arrays = check_inputs(graph, inputs)
        # The arrays and their writes' events stay alive until the blocking downloads below.
        writes = [
            self.device.write(self._buffers[name], array, blocking=False)
            for name, array in arrays.items()
        ]
        for kind, payload in self._actions:
            if kind == "kernel":
                event = payload.launch()
                if events is not None:
                    events.append(event)
            elif kind == "copy":
                self.device.copy(*payload)
            elif kind == "pad" and payload:
                event = self.device.copy_box(*payload)
                if events is not None:
                    events.append(event)
            elif kind == "host":
                self._host(payload)
        outputs = [self._download(name) for name in graph.outputs]
        del writes  # only now: dropping a pending write's event would wait for it
        return outputs

    def _host(self, step: HostStep):
        env = {t: self._download(t) for t in step.group.inputs}
        for node in step.group.nodes:
            results = get_op(node.op).evaluate([env[i] for i in node.inputs], node.attrs)
            env.update(zip(node.outputs, results, strict=True))
        for name in step.group.outputs:
            self.device.write(self._buffers[name], np.ascontiguousarray(env[name]))

    def _download(self, name):
        graph = self.plan.graph
        if name in graph.params:
            return graph.params[name].copy()
        t = graph.types[name]
        return self.device.download(self._buffers[name], t.shape, t.dtype)

    def benchmark(self, inputs, repeat: int = 10, warmup: int = 2) -> dict:
        """Latency per run: device time (sum of kernel events) and wall time, in seconds."""
        for _ in range(warmup):
            self.run(inputs)
        device_times, wall_times = [], []
        for _ in range(repeat):
            events: list = []
            start = time.perf_counter()
            self.run(inputs, events)
            wall_times.append(time.perf_counter() - start)
            device_times.append(sum(self.device.event_seconds(e) for e in events))
        return {
            "device_median": float(np.median(device_times)),
            "wall_median": float(np.median(wall_times)),
            "wall_min": float(np.min(wall_times)),
            "repeat": repeat,
            "kernels_per_run": len(self.plan.kernels),
        }


def _nbytes(graph, name):
    t = graph.types[name]
    return max(1, math.prod(t.shape) * to_numpy(t.dtype).itemsize)
