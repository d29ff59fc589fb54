"""The graph executor: fused groups -> kernels (tuned or default configs) -> a runnable plan.

``build_plan`` decides, once, what runs for each fused group: a kernel (template, config,
rendered source, argument tensors), a view (an alias of a buffer: no kernel), a pad (a buffer
pre-filled with the pad value, its interior written by a device rectangle copy each run, or
in place: by the producer's own stores, or by the rectangle write of a graph input, the
tensor's other readers, e.g. a residual add, then reading it there), a concatenation in
place (its parts stored into it by their producers: nothing runs, see placement.py), or a host
step (the numpy reference, for a group no template computes, e.g. float16 arithmetic).
``Executor`` owns the device buffers and runs the plan.
"""

import math
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from coretune.errors import CoretuneError

from .dtypes import to_numpy
from .ir import Graph
from .passes import FusedGroup, fuse, optimize, plan_memory
from .placement import (
    ConcatStep,
    concat_holders,
    concats_in_place,
    places,
    readers_and_producers,
    template_of,
)
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
    launch: dict  # {"groups": [...], "local": [...]} (+ "scalars": [[name, ctype, value]...])
    args: list[str]  # graph tensors bound to the kernel's buffers, in order
    placed: bool = False  # stores its output into the interior of a padded buffer


@dataclass
class ViewStep:
    source: str
    target: str


@dataclass
class PadStep:
    """A constant pad of the last two axes (fuse.is_copy_pad): a rectangle copy into a buffer
    whose border is filled once, or ``in_place``: its input lives in the interior (stored
    there by its producer's placed stores, or as a graph input by a rectangle write; see
    pads_in_place)."""

    group: FusedGroup
    in_place: bool = False

    def interior(self, graph: Graph) -> tuple[tuple[int, ...], int]:
        """Element strides of the padded buffer and the element offset of its interior: where
        element ``index`` of the input lives is ``offset + sum(index * strides)``."""
        node = self.group.nodes[0]
        shape = graph.types[node.outputs[0]].shape
        strides = [math.prod(shape[axis + 1 :]) for axis in range(len(shape))]
        befores = node.attrs["pad_width"][0::2]
        return tuple(strides), sum(b * s for b, s in zip(befores, strides, strict=True))

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
    # Tuning records of the untuned kernels' tasks that were not used: {"other_device": n,
    # "other_version": m} (a log from another machine, or from before a coretune upgrade).
    ignored_records: dict[str, int] = field(default_factory=dict)

    @property
    def kernels(self) -> list[KernelStep]:
        return [s for s in self.steps if isinstance(s, KernelStep)]

    def summary(self) -> dict:
        kernels = self.kernels
        pads = [s for s in self.steps if isinstance(s, PadStep)]
        return {
            "kernels": len(kernels),
            "pad_copies": sum(not p.in_place for p in pads),
            "pads_in_place": sum(p.in_place for p in pads),
            "concats_in_place": sum(isinstance(s, ConcatStep) for s in self.steps),
            "tuned": sum(k.tuned for k in kernels),
            "untuned": [k.group.name for k in kernels if not k.tuned],
            "host_steps": [s.group.name for s in self.steps if isinstance(s, HostStep)],
            "planned_bytes": sum(self.buffer_bytes),
            "unshared_bytes": self.unshared_bytes,
            "ignored_records": dict(self.ignored_records),
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
    saved_choices: dict | None = None,
) -> Plan:
    """The plan of a graph for a device. Each kernel group takes the best tuned config of the
    database, else its template's default; with ``saved_choices`` (node names of a group ->
    (template class, config, tuned), as a .ctm file records them) a group listed there takes
    that instead, so that loading re-derives every other part of the plan."""
    from coretune.kernels.render import renderer_for

    graph = optimize(graph)
    groups = fuse(graph)
    steps: list = []
    ignored: Counter = Counter()  # records of untuned groups' tasks made elsewhere
    chosen: dict[str, tuple] = {}  # kernel group -> (template class, config, tuned)
    for group in groups:
        if group.kind == "view":
            steps.append(ViewStep(group.inputs[0], group.outputs[0]))
        elif group.kind == "pad" and dialect == "opencl":
            steps.append(PadStep(group))  # rectangle copies: elsewhere pads are kernels
        else:
            saved = (saved_choices or {}).get(tuple(n.name for n in group.nodes))
            found = saved or _kernel_choice(
                graph, group, limits, fingerprint, database, version, ignored
            )
            if isinstance(found, str):
                steps.append(HostStep(group, found))
            else:
                chosen[group.name] = found
                steps.append(group)  # its kernel is rendered below, once pads in place are known
    templates = {name: cls for name, (cls, _, _) in chosen.items()}
    in_place = pads_in_place(graph, groups, templates) if dialect == "opencl" else {}
    in_concats = concats_in_place(graph, groups, templates, set(in_place))
    holders = concat_holders(groups, in_concats)
    renderer = renderer_for(dialect)
    for i, step in enumerate(steps):
        if isinstance(step, PadStep):
            step.in_place = step.group.inputs[0] in in_place
        elif isinstance(step, FusedGroup) and step.name in holders:
            steps[i] = ConcatStep(step, holders[step.name])
        elif isinstance(step, FusedGroup):
            cls, config, tuned = chosen[step.name]
            placement = Placement(in_place, in_concats)
            steps[i] = render_kernel(graph, step, cls, config, tuned, placement, renderer, limits)
    hosts = {t: pad.outputs[0] for t, pad in in_place.items()}
    hosts.update((t, part.concat.outputs[0]) for t, part in in_concats.items())
    memory = plan_memory(graph, groups, hosts)
    plan = Plan(graph, steps, memory.buffer_bytes, memory.buffer_of, memory.unshared_bytes(graph))
    plan.ignored_records = dict(ignored)
    return plan


def _kernel_choice(graph, group, limits, fingerprint, database, version, ignored):
    """(template class, config, tuned) for a group, or why no template computes it."""
    from coretune.kernels.templates import templates_for

    try:
        workload = group_workload(graph, group)
        candidates = templates_for(workload)
    except CoretuneError as exc:
        return str(exc)
    names = dict(zip((n for n, _ in workload.inputs), group.inputs, strict=True))
    candidates = [
        c
        for c in candidates  # e.g. Winograd needs its weights at compile time
        if all(names[i] in graph.params for i in c(workload).constant_inputs())
    ]
    if not candidates:
        return "no kernel template computes this group"
    return _choose(candidates, workload, limits, fingerprint, database, version, ignored)


@dataclass(frozen=True)
class Placement:
    """Tensors that live inside a bigger buffer: in a pad's interior (tensor -> pad group,
    see pads_in_place) or in a concatenation's output (tensor -> ConcatPart)."""

    pads: dict = field(default_factory=dict)
    concats: dict = field(default_factory=dict)


def render_kernel(graph, group, template_cls, config, tuned, placement, renderer, limits):
    """The group's kernel with ``config``, its stores and reads placed where ``placement``
    puts its output and inputs."""
    workload = placed_workload(graph, group, group_workload(graph, group), placement)
    template = template_cls(workload)
    config = template.space(limits).check(config)
    rendered = renderer.render(template.checked_spec(config, limits))
    return KernelStep(
        group,
        template_cls.name,
        dict(config),
        tuned,
        template.key(),
        rendered.source,
        rendered.entry,
        launch_record(rendered.launch),
        list(group.inputs) + list(group.outputs),
        workload.output_layout is not None,
    )


def launch_record(launch) -> dict:
    """A launch as JSON (a KernelStep's, and in a .ctm file): its scalar arguments only where
    the kernel has any."""
    record = {"groups": list(launch.groups), "local": list(launch.local)}
    if launch.scalars:
        record["scalars"] = [[s.name, s.ctype, s.value] for s in launch.scalars]
    return record


def placed_workload(graph: Graph, group: FusedGroup, workload, placement: Placement):
    """The group's workload storing its output into its pad's interior or its
    concatenation's output, and reading its inputs from the interiors of their pads."""
    in_place, output = placement.pads, group.outputs[0]
    if output in in_place:
        workload = workload.placed(*PadStep(in_place[output]).interior(graph))
    elif output in placement.concats:
        part = placement.concats[output]
        workload = workload.placed(part.strides, part.offset)
    for (name, _), tensor in zip(workload.inputs, group.inputs, strict=True):
        if tensor in in_place:
            workload = workload.reading(name, *PadStep(in_place[tensor]).interior(graph))
    return workload


def pads_in_place(graph: Graph, groups: list[FusedGroup], templates: dict) -> dict:
    """Padded tensors that live in their pad's interior, so that the pad needs no copy per
    run (tensor -> its pad group): a graph input (written there by one rectangle write) or
    the one output of a kernel whose template can place it there (``templates``: kernel
    group name -> template class), whose every other reader is a kernel that can read it
    from there (an epilogue input: a residual add). Not parameters or graph outputs (their
    memory is theirs), nor tensors whose padded element offsets could outgrow 32 bits."""
    readers, producers = readers_and_producers(groups)
    found = {}
    for pad in groups:
        tensor = pad.inputs[0] if pad.kind == "pad" else None
        if (
            tensor is None
            or tensor in graph.params
            or tensor in graph.outputs
            or math.prod(graph.types[pad.outputs[0]].shape) >= 2**31
        ):
            continue
        others = [r for r in readers[tensor] if r is not pad]
        if tensor in graph.inputs or places(producers[tensor], templates):
            if all(_reads_placed(graph, r, tensor, templates) for r in others):
                found[tensor] = pad
    return found


def _reads_placed(graph, group, tensor, templates) -> bool:
    """Whether the kernel of ``group`` can read ``tensor`` from a bigger buffer."""
    cls = template_of(group, templates)
    if cls is None:
        return False
    workload = group_workload(graph, group)
    name = dict(zip(group.inputs, (n for n, _ in workload.inputs), strict=True))[tensor]
    return cls(workload).reads_placed(name)


def _choose(candidates, workload, limits, fingerprint, database, version, ignored=None):
    """The tuned config with the lowest cost across candidate templates, else the default of
    the most specialised template that is an untuned choice on this device. Records of the
    task for another device or coretune version are counted into ``ignored`` when none fits.

    Alternatives are compared like for like: by their verified medians when every measured
    one was verified, else by their lowest searched costs (a verified median is higher than a
    lowest cost of the same config). And a partial log (a tune stopped early, or one that
    gave an alternative no trials) never swaps the untuned choice for an alternative that
    was measured while it was not: with nothing to compare it against, the measured one may
    well be the slower (a Winograd convolution three times slower than the direct one)."""
    untuned = next((c for c in candidates if c(workload).untuned_choice(limits)), candidates[0])
    found, others = {}, Counter()
    if database is not None:
        for cls in candidates:
            lookup = database.best(cls(workload).key(), fingerprint, version, limits)
            others.update(other_device=lookup.other_devices, other_version=lookup.other_versions)
            if lookup.record:
                found[cls] = lookup
    if found and (untuned in found or len(candidates) == 1):
        by_median = all(lookup.verified for lookup in found.values())
        cls = min(found, key=lambda c: found[c].cost if by_median else found[c].searched_cost)
        return cls, found[cls].config, True
    if ignored is not None and not found:
        ignored.update(others)
    return untuned, untuned(workload).default_config(limits), False


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
        in_place = [s for s in plan.steps if isinstance(s, PadStep) and s.in_place]
        written_into_pads = {s.group.inputs[0] for s in in_place} & set(graph.inputs)
        _check_fits(plan, device)
        pool = [device.empty(n) for n in plan.buffer_bytes]
        buffers = {n: device.upload(a) for n, a in graph.params.items()}
        for name in (*graph.inputs, *graph.outputs):
            if name not in buffers and name not in written_into_pads:
                buffers[name] = device.empty(_nbytes(graph, name))
        for name, index in plan.buffer_of.items():
            buffers.setdefault(name, pool[index])
        self._input_boxes = {}  # graph input -> (padded buffer, box): one rectangle write
        for step in in_place:
            source, target = step.group.inputs[0], step.group.outputs[0]
            if source in written_into_pads:
                self._input_boxes[source] = (buffers[target], step.box(graph))
            # Its producer's kernel stores into the interior (Workload.placed), or the input's
            # write does; its other readers read it there (Workload.input_layouts).
            buffers[source] = buffers[target]
        for step in plan.steps:  # each part's producer stores it into the output
            if isinstance(step, ConcatStep):
                for tensor in (*step.group.inputs, *step.group.outputs):
                    buffers[tensor] = buffers[step.holder]
        self._actions = []  # what a run does, in order: (kind, payload)
        kernels = []  # (action index, step, arguments): bound once all are built
        for step in plan.steps:
            if isinstance(step, ViewStep):
                copy = self._view(buffers, step)
                if copy:
                    self._actions.append(("copy", copy))
            elif isinstance(step, HostStep):
                self._actions.append(("host", step))
            elif isinstance(step, PadStep):
                copy = self._pad(buffers, step)
                if copy:
                    self._actions.append(("pad", copy))
            elif isinstance(step, KernelStep):
                kernels.append((len(self._actions), step, self._arguments(buffers, step)))
                self._actions.append(("kernel", None))
        self._buffers = buffers
        started = time.perf_counter()
        rendered = [self._rendered(step) for _, step, _ in kernels]
        try:
            device.compile_all(rendered, arguments=[arguments for *_, arguments in kernels])
            for (index, _, arguments), kernel in zip(kernels, rendered, strict=True):
                self._actions[index] = ("kernel", device.bind(device.compile(kernel), arguments))
            self.build_seconds = time.perf_counter() - started  # driver caches hit
            started = time.perf_counter()
            self._warm_up()
            self.warm_up_seconds = time.perf_counter() - started
        finally:
            device.finish_builds()

    def _warm_up(self) -> None:
        """One run on zero inputs, so that nothing is compiled at a user's first run: PoCL
        builds each kernel's work-group function at its first launch (0.9-1.9 s for the test
        models on a cold cache), CUDA loads modules then. Zeros are valid for every kernel (an
        index 0 is in range); any inf or NaN they make stays in scratch buffers."""
        graph = self.plan.graph
        zeros = {n: np.zeros(t.shape, to_numpy(t.dtype)) for n, t in graph.inputs.items()}
        with np.errstate(all="ignore"):  # the host steps' numpy, on zeros
            self.run(zeros)

    def _rendered(self, step: KernelStep):
        from coretune.kernels.render import Launch, RenderedKernel, Scalar

        launch = Launch(
            tuple(step.launch["groups"]),
            tuple(step.launch["local"]),
            tuple(Scalar(*s) for s in step.launch.get("scalars", ())),
        )
        return RenderedKernel(
            self.device.info.backend, step.source, step.entry, launch, tuple(step.args)
        )

    def _arguments(self, buffers, step: KernelStep) -> list:
        prepared = self._prepare(step)
        return [prepared.get(i) or buffers[a] for i, a in enumerate(step.args)]

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
        then copies the input into its interior (the copy's arguments, returned), unless the
        input is written there in place."""
        graph = self.plan.graph
        target = buffers[step.group.outputs[0]]
        self.device.fill(target, step.fill_value(graph), _nbytes(graph, step.group.outputs[0]))
        box = step.box(graph)
        if step.in_place or not all(box["region"]):
            return ()
        return (buffers[step.group.inputs[0]], target, box)

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
        writes = [self._write_input(name, array) for name, array in arrays.items()]
        for kind, payload in self._actions:
            if kind == "kernel":
                event = payload.launch(timed=events is not None)
                if events is not None:
                    events.append(event)
            elif kind == "copy":
                self.device.copy(*payload)
            elif kind == "pad":
                event = self.device.copy_box(*payload)
                if events is not None:
                    events.append(event)
            elif kind == "host":
                self._host(payload)
        outputs = [self._download(name) for name in graph.outputs]
        del writes  # only now: dropping a pending write's event would wait for it
        return outputs

    def _write_input(self, name: str, array: np.ndarray):
        """Non-blocking: the caller keeps ``array`` and the returned event alive until a
        blocking command returns."""
        if name in self._input_boxes:
            target, box = self._input_boxes[name]
            return self.device.write_box(target, array, box) if all(box["region"]) else None
        return self.device.write(self._buffers[name], array, blocking=False)

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


def _check_fits(plan: Plan, device) -> None:
    """Refuse, before allocating, a plan that the device's memory cannot hold (a driver that
    allocates lazily, PoCL's among them, would fail later, at the first write)."""
    from coretune.kernels.opencl import DeviceError

    graph, limits = plan.graph, device.limits
    own = [_nbytes(graph, n) for n in (*graph.inputs, *graph.outputs)]
    sizes = [*plan.buffer_bytes, *(a.nbytes for a in graph.params.values()), *own]
    if limits.max_buffer_bytes and max(sizes, default=0) > limits.max_buffer_bytes:
        raise DeviceError(
            f"a buffer of {max(sizes):,} bytes is over {device.info.name}'s largest "
            f"allocation ({limits.max_buffer_bytes:,} bytes)"
        )
    if limits.global_mem_bytes and sum(sizes) > limits.global_mem_bytes:
        raise DeviceError(
            f"the model needs {sum(sizes):,} bytes of device memory; {device.info.name} has "
            f"{limits.global_mem_bytes:,}"
        )


def _nbytes(graph, name):
    t = graph.types[name]
    return max(1, math.prod(t.shape) * to_numpy(t.dtype).itemsize)
