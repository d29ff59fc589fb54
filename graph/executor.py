"""The graph executor: fused groups -> kernels (tuned or default configs) -> a runnable plan.

``build_plan`` decides, once, what runs for each fused group: a kernel (template, config,
rendered source, argument tensors), a view (an alias of a buffer: no kernel), or a host step
(the numpy reference, for a group no template computes, e.g. float16 arithmetic). ``Executor``
owns the device buffers and runs the plan.
"""

import math
import time
from dataclasses import dataclass, field

import numpy as np

from coretune.errors import CoretuneError

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
    the most specialised template."""
    best = None
    if database is not None:
        for cls in candidates:
            found = database.best(cls(workload).key(), fingerprint, version, limits)
            if found.record and (best is None or found.record.best_cost < best[1].best_cost):
                best = (cls, found.record, found.config)
    if best:
        return best[0], best[2], True
    cls = candidates[0]
    return cls, cls(workload).default_config(limits), False


class Executor:
    """Runs a plan on a device: parameters uploaded once, intermediates in planned buffers."""

    def __init__(self, plan: Plan, device):
        from coretune.kernels.render import Launch, RenderedKernel

        self.plan = plan
        self.device = device
        graph = plan.graph
        self._params = {n: device.upload(a) for n, a in graph.params.items()}
        self._pool = [device.empty(n) for n in plan.buffer_bytes]
        self._compiled = []
        self._prepared: list[dict[int, object]] = []  # per step: argument -> prepared buffer
        for step in plan.steps:
            self._prepared.append(self._prepare(step) if isinstance(step, KernelStep) else {})
            if isinstance(step, KernelStep):
                launch = Launch(tuple(step.launch["groups"]), tuple(step.launch["local"]))
                rendered = RenderedKernel(
                    device.info.backend, step.source, step.entry, launch, tuple(step.args)
                )
                self._compiled.append(device.compile(rendered))
            else:
                self._compiled.append(None)

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

    def _buffers(self, inputs):
        graph = self.plan.graph
        buffers = dict(self._params)
        for name, array in inputs.items():
            buffers[name] = self.device.upload(array)
        for name in graph.outputs:
            if name not in buffers:
                buffers[name] = self.device.empty(_nbytes(graph, name))
        return buffers

    def _lookup(self, buffers, name):
        if name not in buffers:
            buffers[name] = self._pool[self.plan.buffer_of[name]]
        return buffers[name]

    def run(self, inputs: dict[str, np.ndarray], events: list | None = None) -> list[np.ndarray]:
        graph = self.plan.graph
        arrays = check_inputs(graph, inputs)
        buffers = self._buffers(arrays)
        steps = zip(self.plan.steps, self._compiled, self._prepared, strict=True)
        for step, compiled, prepared in steps:
            if isinstance(step, ViewStep):
                self._view(buffers, step)
            elif isinstance(step, HostStep):
                self._host(buffers, step)
            else:
                args = [
                    prepared.get(i) or self._lookup(buffers, a) for i, a in enumerate(step.args)
                ]
                event = self.device.launch(compiled, args)
                if events is not None:
                    events.append(event)
        return [self._download(buffers, name) for name in graph.outputs]

    def _view(self, buffers, step: ViewStep):
        source = self._lookup(buffers, step.source)
        if step.target in buffers:  # a graph output owns its memory: copy into it
            self.device.copy(source, buffers[step.target], _nbytes(self.plan.graph, step.target))
        else:
            buffers[step.target] = source

    def _host(self, buffers, step: HostStep):
        graph = self.plan.graph
        env = {t: self._download(buffers, t) for t in step.group.inputs}
        for node in step.group.nodes:
            results = get_op(node.op).evaluate([env[i] for i in node.inputs], node.attrs)
            env.update(zip(node.outputs, results, strict=True))
        for name in step.group.outputs:
            target = self._lookup(buffers, name)
            self.device.write(target, np.ascontiguousarray(env[name]))
        del graph

    def _download(self, buffers, name):
        t = self.plan.graph.types[name]
        if name in self.plan.graph.params and name not in buffers:
            return self.plan.graph.params[name]
        return self.device.download(self._lookup(buffers, name), t.shape, t.dtype)

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
    from .dtypes import to_numpy

    t = graph.types[name]
    return max(1, math.prod(t.shape) * to_numpy(t.dtype).itemsize)
