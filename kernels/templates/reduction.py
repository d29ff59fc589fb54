"""reduction: one reduction core op, with a fused injective prologue and elementwise epilogue.

Covers sum, mean, max, min, prod (any axes), argmax/argmin, softmax/log_softmax, layer_norm
and the global pools. The reduction's input is seen as rows (kept axes) of elements (reduced
axes); the input is read through the fused prologue ops, never materialised.

Two schemes. ``tree``: ``row_threads`` work-items share a row, each folding a strided share
of it into registers, then a local-memory tree merges their states; a work-group holds
``work_group / row_threads`` rows. ``serial``: one work-item per row folds it alone, no local
memory, no barriers -- best for short rows or many rows. ``items`` independent accumulators
per work-item keep several loads in flight. When a row's elements are adjacent in memory,
work-items of a row are the fast local dimension (their loads coalesce); when they are
strided, rows are (neighbouring rows are neighbouring in memory).

softmax, log_softmax and layer_norm fold a row once (online softmax; Welford) and write it in
a second pass; the other ops store one value per row.
"""

import math
import re

from coretune.graph.registry import Pattern, get_op

from ..ctypes_ import BUFFER_TYPES, buffer_type, value_type
from ..device import DeviceLimits
from ..lower import ElementwiseLowering, lowerable
from ..render import Buffer, KernelSpec, Launch, LocalArray, Scalar, lane_names
from ..space import Config, Knob, Restriction
from .base import Template
from .reduction_parts import (
    OPS,
    Reduction,
    RowGeometry,
    indent,
    next_pow2,
    prev_pow2,
    reduction_of,
    times,
)

WORK_GROUPS = (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024)
# The kernel argument holding the row count: reductions that differ only in it are one
# program (the squeeze-and-excitation pools of one stage's 480 and 672 channels).
ROWS = "n_rows"


def _is_tree(config: Config) -> bool:
    return config["scheme"] == "tree"


def _downstream(workload, tensor: str) -> list:
    """The nodes that read ``tensor``, directly or through other nodes."""
    reached, found = {tensor}, []
    for node in workload.nodes:
        if reached & set(node.inputs):
            found.append(node)
            reached.update(node.outputs)
    return found


class ReductionTemplate(Template):
    name = "reduction"

    @classmethod
    def matches(cls, workload) -> bool:
        anchors = [n for n in workload.nodes if n.op in OPS]
        if len(anchors) != 1 or len(workload.outputs) != 1 or len(anchors[0].outputs) != 1:
            return False
        node, types = anchors[0], workload.types
        result = node.outputs[0]
        epilogue = _downstream(workload, result)
        shape = types[result].shape
        if not (
            all(t.dtype in BUFFER_TYPES for t in types.values())
            and all(types[t].dtype == "float32" for t in node.inputs)
            and all(
                get_op(n.op).pattern <= Pattern.INJECTIVE and lowerable(n.op)
                for n in workload.nodes
                if n is not node
            )
            and all(
                get_op(n.op).pattern <= Pattern.BROADCAST and types[n.outputs[0]].shape == shape
                for n in epilogue
            )
            and workload.outputs[0] in {result, *(t for n in epilogue for t in n.outputs)}
        ):
            return False
        in_shape = types[node.inputs[0]].shape
        rows = RowGeometry(in_shape, reduction_of(node.op, node.attrs, in_shape).axes)
        return rows.rows > 0 and rows.length > 0  # empty reductions are not kernels

    # ---- the workload, as rows ----------------------------------------------------------
    @property
    def node(self):
        return next(n for n in self.workload.nodes if n.op in OPS)

    @property
    def reduction(self) -> Reduction:
        node = self.node
        shape = self.workload.types[node.inputs[0]].shape
        return reduction_of(node.op, node.attrs, shape, beta=len(node.inputs) > 2)

    @property
    def geometry(self) -> RowGeometry:
        return RowGeometry(self.workload.types[self.node.inputs[0]].shape, self.reduction.axes)

    @property
    def index_type(self) -> str:
        largest = max(math.prod(t.shape) for t in self.workload.types.values())
        return "long" if largest >= 2**31 - 2**20 else "int"

    # ---- knobs --------------------------------------------------------------------------
    def knobs(self):
        return [
            Knob("scheme", ("tree", "serial"), "work-items share a row (tree) or own one"),
            Knob("work_group", WORK_GROUPS, "work-items per group"),
            Knob("row_threads", tuple(2**k for k in range(11)), "work-items sharing one row"),
            Knob("items", (1, 2, 4, 8), "elements each work-item loads per step"),
        ]

    def restrictions(self):
        g = self.geometry
        return [
            Restriction(
                "the serial scheme gives each work-item whole rows: row_threads must be 1",
                lambda c, _: _is_tree(c) or c["row_threads"] == 1,
            ),
            Restriction(
                "a tree reduction needs at least 2 row_threads",
                lambda c, _: not _is_tree(c) or c["row_threads"] >= 2,
            ),
            Restriction(
                "row_threads must divide work_group (a work-group holds whole rows)",
                lambda c, _: c["work_group"] % c["row_threads"] == 0,
            ),
            Restriction(
                "more row_threads than the row has elements would idle",
                lambda c, _: c["row_threads"] <= next_pow2(g.length),
            ),
            Restriction(
                "more rows per work-group than the workload has would idle",
                lambda c, _: (
                    self.rows_per_group(c) <= next_pow2(g.rows) or c["work_group"] == WORK_GROUPS[0]
                ),
            ),
        ]

    @staticmethod
    def rows_per_group(config: Config) -> int:
        return config["work_group"] // config["row_threads"]

    def elements_first(self, config: Config) -> bool:
        """Local dimension 0 walks a row's elements (adjacent in memory), else the rows."""
        return config["row_threads"] > 1 and self.geometry.contiguous

    def work_group(self, config):
        t, r = config["row_threads"], self.rows_per_group(config)
        return (t, r, 1) if self.elements_first(config) else (r, t, 1)

    def local_mem_bytes(self, config):
        if not _is_tree(config):
            return 0
        return 4 * config["work_group"] * len(self.reduction.fold.variables)

    def default_config(self, limits: DeviceLimits) -> Config:
        """GPUs: a tree with ~4 elements per work-item and rows packed to ~128 work-items per
        group (strided rows pack up to 32 side by side so each load coalesces) -- unless rows
        are short, or strided and plentiful enough to fill the device one work-item each.
        CPUs (no lock-step warps): serial with 8 accumulators; barriers only cost there."""
        g = self.geometry
        n, rows, cap = g.length, g.rows, min(256, limits.max_work_group_size)
        space = self.space(limits)
        cpu = limits.warp_size == 1
        plentiful = rows >= 256 * limits.compute_units
        if not cpu and n >= 32 and (g.contiguous or not plentiful):
            pack = min(32, prev_pow2(rows)) if not g.contiguous else 1
            threads = max(2, min(cap // pack, next_pow2(-(-n // 4))))
            pack = max(pack, min(prev_pow2(rows), 128 // threads))
            items = next(k for k in (4, 2, 1) if n >= k * threads)
            config = {
                "scheme": "tree",
                "work_group": threads * pack,
                "row_threads": threads,
                "items": items,
            }
            if space.is_valid(config):
                return space.check(config)
        group = min(64 if cpu else cap, max(WORK_GROUPS[0], next_pow2(rows)))
        items = next(k for k in (8 if cpu else 4, 2, 1) if n >= k)
        return space.check(
            {"scheme": "serial", "work_group": group, "row_threads": 1, "items": items}
        )

    # ---- the kernel ---------------------------------------------------------------------
    def spec(self, config: Config) -> KernelSpec:
        return _KernelWriter(self, config).spec()


class _KernelWriter:
    """Writes one config's kernel: setup, the folding loop, the tree, then the stores."""

    def __init__(self, template: ReductionTemplate, config: Config):
        self.w = template.workload
        self.node = template.node
        self.red = template.reduction
        self.g = template.geometry
        self.it = template.index_type
        self.threads = config["row_threads"]
        self.rows_per_group = template.rows_per_group(config)
        self.items = config["items"]
        self.tree = _is_tree(config)
        self.local = template.work_group(config)
        self.row_dim = 1 if template.elements_first(config) else 0
        self.x = self.node.inputs[0]
        self.producers = {t: n for n in self.w.nodes if n is not self.node for t in n.outputs}
        self.tables: dict = {}

    def spec(self) -> KernelSpec:
        g, it = self.g, self.it
        thread = f"LOCAL_ID({1 - self.row_dim})" if self.threads > 1 else "0"
        lines = [
            f"const int t = {thread};",
            f"const {it} r = ({it})GROUP_ID(0) * {self.rows_per_group} + LOCAL_ID({self.row_dim});",
            # Surplus rows of the last group redo the last row (barriers stay uniform) but
            # never store.
            f"const {it} row = r < {ROWS} ? r : {ROWS} - 1;",
        ]
        fold = self.red.fold
        if fold.block is not None and self.items in (2, 4, 8):  # one state, folded by blocks
            body = fold.declare("a")
            body += self.block_loop(lambda lw, xs: fold.block("a", xs), "p", fold.block_pad)
        else:
            body = [line for k in range(self.items) for line in fold.declare(self.acc(k))]
            body += self.strided_loop(lambda k, lw, x: [fold.fold(self.acc(k), x, "j")], "p")
            body += [fold.merge("a", self.acc(k)) for k in range(1, self.items)]
        if self.tree:
            body += self.tree_merge()
        body += self.red.finish.splitlines()
        body += self.stores()
        # The row's offset, and its axis indices for whatever reads the input by multi-index
        # (prologue, epilogue, a broadcast gamma): declared when used.
        text = "\n".join(body)
        if re.search(r"\bbase\b", text):
            lines.append(f"const {it} base = {g.offset(False, 'row')};")
        lines += [
            f"const {it} k{a} = {e};"
            for a, e in g.axis_indices(False, "row").items()
            if e != "0" and re.search(rf"\bk{a}\b", text)
        ]
        lines += body
        buffers = tuple(Buffer(n, buffer_type(t.dtype)) for n, t in self.w.inputs)
        out = self.w.outputs[0]
        buffers += (Buffer(out, buffer_type(self.w.types[out].dtype), output=True),)
        group_count = -(-g.rows // self.rows_per_group)
        return KernelSpec(
            f"reduce_{self.node.op}",
            buffers,
            "\n".join(indent(lines)),
            Launch((group_count, 1, 1), self.local, (Scalar(ROWS, it, g.rows),)),
            local_arrays=self.local_arrays(),
            tables=tuple(self.tables.values()),
        )

    @staticmethod
    def acc(k: int) -> str:
        return "a" if k == 0 else f"a{k}"

    # ---- reading elements ---------------------------------------------------------------
    def lowering(self, prefix: str) -> ElementwiseLowering:
        return ElementwiseLowering(self.w.types, self.producers, lambda n, i: f"{n}[{i}]", prefix)

    def row_index(self) -> dict[int, str]:
        """The kept axes' indices of this work-item's row (variables k<axis>, or 0)."""
        kept = self.g.axis_indices(False, "row")
        return {a: "0" if e == "0" else f"k{a}" for a, e in kept.items()}

    def index(self, j: str) -> tuple[str, ...]:
        """The input multi-index of element ``j`` of this work-item's row."""
        axes = {**self.row_index(), **self.g.axis_indices(True, j)}
        return tuple(axes[a] for a in range(len(self.g.shape)))

    def offset(self, j: str) -> str:
        inner = self.g.offset(True, j)
        return "base" if inner == "0" else f"base + {inner}"

    def element(self, lw: ElementwiseLowering, j: str) -> str:
        """The reduction's input at element ``j``: a buffer load, or through the prologue."""
        if self.x in self.producers:
            return lw.value(self.x, self.index(j))
        return lw.temp("float", f"{self.x}[{self.offset(j)}]")

    def strided_loop(self, body, prefix: str) -> list[str]:
        """Work-item t visits elements t, t + T, t + 2T... of its row, ``items`` per trip;
        ``body(k, lowering, x)`` gives the statements for the k-th element of a trip."""
        n, step, it = self.g.length, self.threads * self.items, self.it
        lines = [f"for ({it} j0 = t; j0 < {n}; j0 += {step}) {{"]
        for k in range(self.items):
            lw = self.lowering(prefix)
            x = self.element(lw, "j")
            stores = body(k, lw, x)  # may emit more of lw's statements: read them after
            inner = lw.lines + stores
            self.tables.update(lw.tables)
            if k and n % step:
                inner = [f"if (j < {n}) {{", *indent(inner), "}"]
            j = "j0" if k == 0 else f"j0 + {k * self.threads}"
            lines += indent(["{", f"  const {it} j = {j};", *indent(inner), "}"])
        return lines + ["}"]

    def block_loop(self, body, prefix: str, pad: str | None = None) -> list[str]:
        """``strided_loop`` with a trip's ``items`` elements read together, so ``body(lowering,
        elements)`` can treat them as one vector. Past the row's end an element is read at the
        row's last position and replaced by ``pad``; element k's index is ``j<k>``."""
        n, step, it = self.g.length, self.threads * self.items, self.it
        ragged = n % step != 0
        lw = self.lowering(prefix)
        xs = []
        for k in range(self.items):
            lw.lines.append(f"const {it} j{k} = jb{f' + {k * self.threads}' if k else ''};")
            if ragged and k:
                lw.lines.append(f"const {it} jr{k} = j{k} < {n} ? j{k} : {n - 1};")
            x = self.element(lw, f"jr{k}" if ragged and k else f"j{k}")
            if ragged and k and pad is not None:
                x = lw.temp("float", f"j{k} < {n} ? {x} : {pad}")
            xs.append(x)
        stores = body(lw, xs)
        self.tables.update(lw.tables)
        inner = lw.lines + stores
        return [f"for ({it} jb = t; jb < {n}; jb += {step}) {{", *indent(inner), "}"]

    # ---- merging a row's partial states -------------------------------------------------
    def local_arrays(self) -> tuple[LocalArray, ...]:
        if not self.tree:
            return ()
        size = self.threads * self.rows_per_group
        return tuple(LocalArray(f"lm_{v}", ctype, size) for v, ctype, _ in self.red.fold.variables)

    def tree_merge(self) -> list[str]:
        """Halve the active work-items of each row until its slot 0 holds the row's state."""
        fold = self.red.fold
        names = [v for v, _, _ in fold.variables]
        t_stride = 1 if self.row_dim == 1 else self.rows_per_group
        slot_stride = self.threads if self.row_dim == 1 else 1
        slot = f"LOCAL_ID({self.row_dim})"
        lines = [f"const int lane = {times(slot, slot_stride)} + {times('t', t_stride)};"]
        lines += [f"lm_{v}[lane] = a_{v};" for v in names] + ["BARRIER();"]
        partner = f"lane + {times('span', t_stride)}"
        lines += [
            f"for (int span = {self.threads // 2}; span > 0; span >>= 1) {{",
            "  if (t < span) {",
            *(f"    {c} o_{v} = lm_{v}[{partner}];" for v, c, _ in fold.variables),
            f"    {fold.merge('a', 'o')}",
            *(f"    lm_{v}[lane] = a_{v};" for v in names),
            "  }",
            "  BARRIER();",
            "}",
        ]
        if self.red.per_element:  # every work-item of the row needs the final state
            first = f"lane - {times('t', t_stride)}"
            lines += [f"a_{v} = lm_{v}[{first}];" for v in names]
        return lines

    # ---- storing ------------------------------------------------------------------------
    def store(self, lw: ElementwiseLowering, value: str, index, offset: str) -> list[str]:
        """Store the reduction's value through the fused epilogue (if any) to the output; the
        epilogue's statements go to ``lw.lines``."""
        out = self.w.outputs[0]
        lw.bind(self.node.outputs[0], index, value)
        result = lw.value(out, index)
        self.tables.update(lw.tables)
        return [f"{out}[{offset}] = ({buffer_type(self.w.types[out].dtype)})({result});"]

    def stores(self) -> list[str]:
        result_type = value_type(self.w.types[self.node.outputs[0]].dtype)
        if self.red.per_element:
            if self.red.vector_result and self.items in (2, 4, 8):
                loop = self.block_loop(self.write_block, "w")
            else:
                loop = self.strided_loop(self.write, "w")
            return [f"if (r < {ROWS}) {{", *indent(loop), "}"]
        lw = self.lowering("e")
        value = lw.temp(result_type, self.red.result)
        kept, rank = self.row_index(), len(self.w.types[self.node.outputs[0]].shape)
        if rank == len(self.g.shape):  # keepdims: the reduced axes stay, with size 1
            kept = {a: kept.get(a, "0") for a in range(rank)}
        store = self.store(lw, value, tuple(kept[a] for a in sorted(kept)), "row")
        body = lw.lines + store
        first = " && t == 0" if self.threads > 1 else ""
        return [f"if (r < {ROWS}{first}) {{", *indent(body), "}"]

    def write(self, k: int, lw: ElementwiseLowering, x: str) -> list[str]:
        """One element of a per-element reduction (softmax, layer_norm)."""
        params = {"x": x}
        for key, tensor in zip("gb", self.node.inputs[1:], strict=False):
            params[key] = self.row_operand(lw, tensor)
        value = lw.temp("float", self.red.result.format(**params))
        return self.store(lw, value, self.index("j"), self.offset("j"))

    def write_block(self, lw: ElementwiseLowering, xs: list[str]) -> list[str]:
        """``write`` for a trip's elements at once: the result's math one vector call; each
        element stored through its own epilogue lowering, inside its bounds check."""
        before, call, after = self.red.vector_result
        width, n = len(xs), self.g.length
        ragged = n % (self.threads * self.items) != 0
        lanes = ", ".join(before.format(x=x) for x in xs)
        vector = lw.temp(f"float{width}", f"{call}(VEC{width}({lanes}))")
        lines = []
        for k, lane in enumerate(lane_names(width)):
            value = lw.temp("float", after.format(f"{vector}.{lane}"))
            store_lw = self.lowering(f"w{k}_")
            stored = self.store(store_lw, value, self.index(f"j{k}"), self.offset(f"j{k}"))
            inner = store_lw.lines + stored
            lines += [f"if (j{k} < {n}) {{", *indent(inner), "}"] if ragged and k else inner
        return lines

    def row_operand(self, lw: ElementwiseLowering, tensor: str) -> str:
        """layer_norm's gamma/beta at element j: the row-local flat index when it is a buffer
        of the row's shape, else broadcast through the lowering."""
        if tensor not in self.producers and math.prod(self.w.types[tensor].shape) == self.g.length:
            return f"{tensor}[j]"
        return lw.operand(tensor, self.index("j"))
