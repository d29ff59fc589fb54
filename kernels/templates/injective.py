"""injective: any chain of elementwise, broadcast and injective ops, fused into one kernel.

Each work-item computes ``lanes`` contiguous output elements (stored as one vector when the
output is float32) ``items`` times, the items strided by the whole group so that neighbouring
work-items touch neighbouring memory (coalesced on GPUs).
"""

import math

from coretune.graph.registry import Pattern, get_op

from ..ctypes_ import BUFFER_TYPES, buffer_type
from ..device import DeviceLimits
from ..lower import ElementwiseLowering, lowerable, row_major_strides
from ..render import Buffer, KernelSpec, Launch, Scalar
from ..space import Config, Knob, Restriction
from .base import Template

ELEMENTS = "n_elements"  # the kernel argument holding the output's element count


class InjectiveTemplate(Template):
    name = "injective"

    @classmethod
    def matches(cls, workload) -> bool:
        return (
            len(workload.outputs) == 1
            and all(
                get_op(n.op).pattern <= Pattern.INJECTIVE and lowerable(n.op)
                for n in workload.nodes
            )
            and all(t.dtype in BUFFER_TYPES for t in workload.types.values())
        )

    @property
    def size(self) -> int:
        return math.prod(self.workload.types[self.workload.outputs[0]].shape)

    def knobs(self):
        return [
            Knob("work_group", (16, 32, 64, 128, 256, 512, 1024), "work-items per group"),
            Knob("items", (1, 2, 4, 8), "strided elements per work-item"),
            Knob("lanes", (1, 2, 4), "contiguous elements per work-item (vector width)"),
        ]

    def restrictions(self):
        return [
            Restriction(
                "lanes must divide the element count", lambda c, _: self.size % c["lanes"] == 0
            )
        ]

    def work_group(self, config: Config):
        return (config["work_group"], 1, 1)

    def default_config(self, limits: DeviceLimits) -> Config:
        lanes = 4 if self.size % 4 == 0 else 1
        group = min(256, limits.max_work_group_size)
        return self.space(limits).check({"work_group": group, "items": 1, "lanes": lanes})

    def lane_indices(self, lw, flat: str, lanes: int) -> list[tuple[str, ...]]:
        """The output index of each of a work-item's ``lanes`` elements, from ``flat`` (a
        multiple of ``lanes``). An axis whose stride ``lanes`` divides is the same for every
        lane, so the lanes share lane 0's variable: then what depends on that axis alone (a
        concatenation's choice of piece along channels, a per-channel scale) is one
        expression the compiler folds, not one per lane."""
        shape = self.workload.types[self.workload.outputs[0]].shape
        first = lw.unflatten(flat, shape, inside=True)
        strides = row_major_strides(shape)
        shared = {axis: first[axis] for axis, s in enumerate(strides) if s % lanes == 0}
        return [first] + [
            lw.unflatten(f"({flat} + {lane})", shape, shared, inside=True)
            for lane in range(1, lanes)
        ]

    def spec(self, config: Config) -> KernelSpec:
        w = self.workload
        out = w.outputs[0]
        out_type = w.types[out]
        group, items, lanes = config["work_group"], config["items"], config["lanes"]
        chunk = group * items * lanes
        lw = ElementwiseLowering(w.types, w.producers(), lambda name, i: f"{name}[{i}]")
        flat = "i"
        indices = self.lane_indices(lw, flat, lanes)
        lw.batch_math(out, indices)
        values = [lw.value(out, index) for index in indices]
        store_type = buffer_type(out_type.dtype)
        if lanes > 1 and store_type == "float":
            stores = [f"VSTORE{lanes}(VEC{lanes}({', '.join(values)}), {out}, {flat});"]
        else:
            stores = [f"{out}[{flat} + {k}] = ({store_type})({v});" for k, v in enumerate(values)]
        inner = "\n".join("      " + line for line in lw.lines + stores)
        body = (
            f"  {lw.index_type} base = ({lw.index_type})GROUP_ID(0) * {chunk} + "
            f"LOCAL_ID(0) * {lanes};\n"
            f"  for (int k = 0; k < {items}; ++k) {{\n"
            f"    {lw.index_type} {flat} = base + k * {group * lanes};\n"
            f"    if ({flat} < {ELEMENTS}) {{\n{inner}\n    }}\n"
            f"  }}"
        )
        buffers = tuple(Buffer(n, buffer_type(t.dtype)) for n, t in w.inputs)
        buffers += (Buffer(out, store_type, output=True),)
        groups = max(1, -(-self.size // chunk))
        return KernelSpec(
            "injective",
            buffers,
            body,
            # The element count is an argument: kernels that differ only in the outermost
            # extent are one program (a dense block's batch norms of its growing inputs).
            Launch((groups, 1, 1), (group, 1, 1), (Scalar(ELEMENTS, lw.index_type, self.size),)),
            tables=tuple(lw.tables.values()),
        )
