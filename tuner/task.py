"""A tuning task: one template on one workload, with its weight in the model and its FLOPs."""

import math
from dataclasses import dataclass

import numpy as np

from coretune.graph.random import random_array
from coretune.kernels.templates import Template, get_template
from coretune.kernels.workload import Workload


@dataclass(frozen=True)
class Task:
    template_name: str
    workload: Workload
    weight: int = 1  # how many times the model runs this kernel

    def template(self) -> Template:
        return get_template(self.template_name)(self.workload)

    def key(self) -> dict:
        return {"template": self.template_name, "workload": self.workload.key()}

    def inputs(self, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [random_array(t.shape, t.dtype, rng) for _, t in self.workload.inputs]

    @property
    def flops(self) -> int:
        return workload_flops(self.workload)


def workload_flops(workload: Workload) -> int:
    """Floating-point operations of one run (multiply-adds count two)."""
    total = 0
    for node in workload.nodes:
        out = workload.types[node.outputs[0]].shape
        size = math.prod(out)
        ins = [workload.types[i].shape for i in node.inputs]
        if node.op == "dense":
            total += 2 * size * ins[1][1]
        elif node.op == "matmul":
            total += 2 * size * (ins[0][-1])
        elif node.op == "conv2d":
            total += 2 * size * math.prod(ins[1][1:])
        elif node.op == "conv2d_transpose":
            total += 2 * math.prod(ins[0]) * math.prod(ins[1][1:])
        elif node.op in ("max_pool2d", "avg_pool2d"):
            total += size * math.prod(node.attrs["pool_size"])
        else:
            total += max(size, max((math.prod(s) for s in ins), default=0))
    return total


def extract_tasks(graph) -> list[Task]:
    """The unique tuning tasks of a model, after the fusion the executor uses, most FLOPs first.

    Each fused group that a template computes gives one task per applicable template; groups
    with the same workload (same ops, shapes and attributes) are one task with a weight.
    """
    from coretune.errors import CoretuneError
    from coretune.graph.executor import group_workload
    from coretune.graph.passes import fuse, optimize
    from coretune.graph.placement import concat_holders, concats_in_place
    from coretune.kernels.templates import templates_for

    graph = optimize(graph)
    groups = fuse(graph)
    candidates_of: dict[str, tuple] = {}
    for group in groups:
        if group.kind in ("view", "pad"):  # no kernel on the device that tunes (OpenCL)
            continue
        try:
            workload = group_workload(graph, group)
            candidates_of[group.name] = (workload, templates_for(workload))
        except CoretuneError:
            continue  # runs on the host: nothing to tune
    # Concatenations stored in place by their producers run no kernel (every template that
    # places its output places it for each of its configs).
    first = {name: found[0] for name, (_, found) in candidates_of.items() if found}
    in_place = concat_holders(groups, concats_in_place(graph, groups, first, set()))
    found: dict[str, Task] = {}
    for name, (workload, candidates) in candidates_of.items():
        if name in in_place:
            continue
        for template in candidates:
            key = template.name + workload.key_string()
            if key in found:
                old = found[key]
                found[key] = Task(old.template_name, old.workload, old.weight + 1)
            else:
                found[key] = Task(template.name, workload)
    return sorted(found.values(), key=lambda t: -t.flops * t.weight)
