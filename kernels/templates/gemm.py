"""gemm: dense (data @ weight.T + bias) and numpy matmul (batched, broadcasting, 1-D operands)
with a fused elementwise epilogue, as a tiled, register-blocked kernel.

Each work-item keeps a ``tile_m`` x ``tile_n`` block of C in registers; a work-group of
``wg_m`` x ``wg_n`` work-items covers ``wg_m * tile_m`` rows by ``wg_n * tile_n`` columns;
batches (matmul) are the third grid axis. K is walked either straight from global memory
(best on CPUs: caches do the staging, and explicit float4/float8 accumulators fill the SIMD
lanes, which PoCL's vectoriser does not do across work-items that run an inner k loop) or in
``tile_k`` chunks staged through local memory (GPUs). The source lives in gemm_source.py.
"""

import math
from functools import cached_property

from ..device import DeviceLimits
from ..epilogue import Epilogue
from ..render import KernelSpec, Launch, LocalArray
from ..space import Config, Knob, Restriction
from .base import Template
from .conv_common import (
    anchor_is_float,
    ceil_div,
    covers,
    indent,
    index_type,
    kernel_buffers,
    shrink_until,
)
from .gemm_source import GemmGeometry, GemmSource

MAX_ACCUMULATORS = 64  # floats of register tile per work-item: beyond this GPUs spill


def geometry_of(workload) -> GemmGeometry:
    node = workload.nodes[0]
    a_shape = workload.types[node.inputs[0]].shape
    b_shape = workload.types[node.inputs[1]].shape
    if node.op == "dense":
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        per_column = bias is not None and workload.types[bias].shape == (b_shape[0],)
        return GemmGeometry(
            a=node.inputs[0],
            b=node.inputs[1],
            bias=bias,
            bias_per_column=per_column and b_shape[0] > 1,
            b_is_nk=True,
            batch_shape=(),
            a_batch_strides=(),
            b_batch_strides=(),
            m=math.prod(a_shape[:-1]),
            n=b_shape[0],
            k=b_shape[1],
            row_shape=a_shape[:-1],
            has_col_axis=True,
        )
    a2 = (1, *a_shape) if len(a_shape) == 1 else a_shape
    b2 = (*b_shape, 1) if len(b_shape) == 1 else b_shape
    out_shape = workload.types[node.outputs[0]].shape
    batch = out_shape[: len(out_shape) - (len(a_shape) > 1) - (len(b_shape) > 1)]
    m, k, n = a2[-2], a2[-1], b2[-1]
    return GemmGeometry(
        a=node.inputs[0],
        b=node.inputs[1],
        bias=None,
        bias_per_column=False,
        b_is_nk=False,
        batch_shape=batch,
        a_batch_strides=_batch_strides(a2[:-2], batch, m * k),
        b_batch_strides=_batch_strides(b2[:-2], batch, k * n),
        m=m,
        n=n,
        k=k,
        row_shape=(m,) if len(a_shape) > 1 else (),
        has_col_axis=len(b_shape) > 1,
    )


def _batch_strides(shape, batch, matrix) -> tuple[int, ...]:
    """Element stride of an operand per output batch axis: 0 where it broadcasts."""
    shape = (1,) * (len(batch) - len(shape)) + tuple(shape)
    strides, step = [], matrix
    for d in reversed(shape):
        strides.append(step if d != 1 else 0)
        step *= d
    return tuple(reversed(strides))


class GemmTemplate(Template):
    name = "gemm"
    places_output = True  # every store is GemmSource.store's, through the epilogue

    @classmethod
    def matches(cls, workload) -> bool:
        return anchor_is_float(workload, {"dense", "matmul"})

    @cached_property
    def geometry(self) -> GemmGeometry:
        return geometry_of(self.workload)

    def knobs(self):
        g = self.geometry

        def upto(choices, extent):  # no point in a tile twice the extent it covers
            return tuple(c for c in choices if c < 2 * extent)

        return [
            Knob("tile_m", upto((1, 2, 4, 8), g.m), "rows of C per work-item (register block)"),
            Knob(
                "tile_n", upto((1, 2, 4, 8, 16), g.n), "columns of C per work-item (register block)"
            ),
            Knob("wg_m", upto((1, 2, 4, 8, 16, 32), g.m), "work-items per group along rows"),
            Knob("wg_n", upto((1, 2, 4, 8, 16, 32, 64), g.n), "work-items per group along columns"),
            Knob(
                "wg_k",
                upto((1, 8, 32), g.k),
                "work-items per group splitting k (direct loops; summed in local memory)",
            ),
            Knob(
                "vector", (1, 4, 8, 16), "float lanes per load: along n of B (k for dense B rows)"
            ),
            Knob(
                "interleave_n",
                (True, False),
                "neighbouring work-items own neighbouring column vectors (else a block each)",
            ),
            Knob("stage_local", (False, True), "stage A and B tiles through local memory"),
            Knob("tile_k", (8, 16, 32), "k steps per staged tile"),
            Knob("unroll_k", (1, 2, 4, 8), "k steps unrolled in the inner loop"),
        ]

    def restrictions(self):
        g = self.geometry
        return [
            Restriction(
                f"register tile must hold at most {MAX_ACCUMULATORS} accumulators",
                lambda c, _: self.accumulators(c) <= MAX_ACCUMULATORS,
            ),
            Restriction(
                "float16 only where the device's native vectors are 16 floats wide (AVX-512)",
                lambda c, limits: c["vector"] < 16 or limits.preferred_vector_width >= 16,
            ),
            Restriction(
                "vector must divide tile_n (accumulators are vectors of columns)",
                lambda c, _: self.vectors_along_k(c) or c["tile_n"] % c["vector"] == 0,
            ),
            Restriction(
                "tile_k is only used with stage_local: keep it at 8 without",
                lambda c, _: c["stage_local"] or c["tile_k"] == 8,
            ),
            Restriction(
                "interleave_n is moot with one column block per work-item or one "
                "work-item per row: keep it True",
                lambda c, _: c["interleave_n"] or not self.interleave_is_moot(c),
            ),
            Restriction(
                "wg_k splits the direct k loops: keep it 1 with stage_local",
                lambda c, _: not c["stage_local"] or c["wg_k"] == 1,
            ),
            covers("wg_k * k step", lambda c: c["wg_k"] * self.k_step(c), g.k),
            covers("wg_m * tile_m", lambda c: self.block(c)[0], g.m),
            covers("wg_n * tile_n", lambda c: self.block(c)[1], g.n),
        ]

    def columns_per_accumulator(self, c: Config) -> int:
        return 1 if self.vectors_along_k(c) else c["vector"]

    def interleave_is_moot(self, c) -> bool:
        return c["wg_n"] == 1 or c["tile_n"] <= self.columns_per_accumulator(c)

    def vectors_along_k(self, c) -> bool:
        """Unstaged dense reads B rows along k: its vectors run along k, not n."""
        return self.geometry.b_is_nk and not c["stage_local"]

    def k_step(self, c) -> int:
        """k consumed by one step of the inner loop."""
        return c["vector"] if self.vectors_along_k(c) else 1

    def accumulators(self, c: Config) -> int:
        return c["tile_m"] * c["tile_n"] * self.k_step(c)

    @staticmethod
    def block(c) -> tuple[int, int]:
        """Rows and columns of C one work-group computes."""
        return c["wg_m"] * c["tile_m"], c["wg_n"] * c["tile_n"]

    def work_group(self, config):
        return (config["wg_n"], config["wg_m"], config["wg_k"])

    def local_mem_bytes(self, config):
        """Staged: the A and B tiles, rows padded by one float (see GemmSource.staged).
        Split k: every work-item's partial sums."""
        rows, cols = self.block(config)
        if config["stage_local"]:
            return 4 * config["tile_k"] * (rows + 1 + cols + 1)
        return 4 * rows * cols * config["wg_k"] if config["wg_k"] > 1 else 0

    def default_config(self, limits: DeviceLimits) -> Config:
        """A heuristic start (see the two below), shrunk to fit small problems."""
        g = self.geometry
        config = self._cpu_start(limits) if limits.warp_size == 1 else self._gpu_start()
        shrink_until(config, ("wg_n", "tile_n"), lambda c: self.block(c)[1] < 2 * g.n)
        shrink_until(config, ("wg_m", "tile_m"), lambda c: self.block(c)[0] < 2 * g.m)
        splits = next(k.choices for k in self.knobs() if k.name == "wg_k")
        config["wg_k"] = max(s for s in splits if s <= config["wg_k"])
        space = self.space(limits)
        config["interleave_n"] = config["interleave_n"] or self.interleave_is_moot(config)
        while config["vector"] > 1 and not space.is_valid(config):
            config["vector"] = {16: 8, 8: 4, 4: 1}[config["vector"]]
            config["interleave_n"] = config["interleave_n"] or self.interleave_is_moot(config)
        return space.check(config)

    def _cpu_start(self, limits: DeviceLimits) -> dict:
        """Straight from global memory into 64 floats of accumulators in vectors as wide as
        the device likes (float8 on AVX): 4 rows x 2 columns of partial sums along k for
        dense, 8 x 8 for matmul; 4 x 4 groups (PoCL runs a group's work-items in turn, so
        neighbours find the rows they share in cache)."""
        nk = self.geometry.b_is_nk
        return {
            "stage_local": False,
            "tile_k": 8,
            "wg_m": 4,
            "wg_n": 4,
            "wg_k": 1,
            "vector": 8 if limits.preferred_vector_width >= 8 else 4,
            "tile_m": 4 if nk else 8,
            "tile_n": 2 if nk else 8,
            "unroll_k": 4 if nk else 2,
            "interleave_n": True,
        }

    def _gpu_start(self) -> dict:
        """Enough rows: 4 x 4 per work-item in 16 x 16 groups staged through local memory 16
        k steps at a time, scalar interleaved columns (coalesced, no bank conflicts). A few
        rows (batch-1 dense, matrix-vector): too little reuse to stage, so parallelism comes
        from splitting k over the group's work-items too; neighbours read neighbouring k of
        a dense B row, or neighbouring columns of a matmul B row (coalesced)."""
        g = self.geometry
        config = {
            "stage_local": False,
            "tile_k": 8,
            "unroll_k": 4,
            "wg_m": 1,
            "tile_m": 4,
            "tile_n": 2,
            "vector": 1,
            "interleave_n": True,
        }
        if g.m >= 16:
            return {
                **config,
                "stage_local": True,
                "tile_k": 16,
                "wg_m": 16,
                "wg_n": 16,
                "wg_k": 1,
                "tile_n": 4,
            }
        if g.b_is_nk:
            return {**config, "wg_n": 4, "wg_k": 32}
        return {**config, "wg_n": 32, "tile_n": 1, "wg_k": 8}

    def spec(self, config: Config) -> KernelSpec:
        g = self.geometry
        source = GemmSource(g, config, index_type(self.workload), Epilogue(self.workload))
        bm, bn = self.block(config)
        local = ()
        if config["stage_local"]:
            tk = config["tile_k"]
            local = (
                LocalArray("a_tile", "float", tk * (bm + 1)),
                LocalArray("b_tile", "float", tk * (bn + 1)),
            )
        elif config["wg_k"] > 1:
            local = (LocalArray("partial", "float", bm * bn * config["wg_k"]),)
        groups = (ceil_div(g.n, bn), ceil_div(g.m, bm), g.batch)
        return KernelSpec(
            "gemm",
            kernel_buffers(self.workload),
            indent(source.body(), 1),
            Launch(groups, self.work_group(config), source.scalars()),
            local,
        )
