"""Shared by the spatial templates (conv2d, depthwise, conv2d_transpose, pooling).

``WindowGeometry`` reads an NCHW anchor node's shapes and attributes once, so each template's
kernel generator deals in plain integers; the helpers below emit the pieces every one of
them needs: buffers, the index type, the bias add and the guarded epilogue store.
"""

import math
from dataclasses import dataclass

from ..ctypes_ import buffer_type
from ..epilogue import Epilogue, epilogue_fusable
from ..render import Buffer, lane_names
from ..space import Knob, Restriction
from ..workload import Workload
from .base import Template

UNROLL = "#pragma unroll"
NO_UNROLL = "#pragma unroll 1"
# The loop over a vector's lanes that stores them one by one: kept a loop instead of unrolled
# into 8-16 copies of the index math, guard and epilogue (PoCL compiled a 3 x 3 conv kernel's
# work-group function in ~145 ms instead of ~205; with the gemm's other store changes, whole
# models on PoCL ran 0.99-1.05x as fast as before).
LANE_LOOP = NO_UNROLL

# The kernel arguments of a conv's input and output channel counts, where they are passed at
# launch instead of written into the source (conv2d_direct, conv2d_depthwise).
IN_CHANNELS, OUT_CHANNELS = "c_in", "c_out"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class WindowGeometry:
    """Sizes of one sliding-window anchor. For pools ``out_channels == channels == groups``."""

    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    out_height: int
    out_width: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    groups: int

    @classmethod
    def of(cls, workload: Workload) -> "WindowGeometry":
        node = workload.nodes[0]
        a = node.attrs
        n, c, h, w = workload.types[node.inputs[0]].shape
        _, o, oh, ow = workload.types[node.outputs[0]].shape
        if node.op in ("conv2d", "conv2d_transpose"):
            kernel, groups = workload.types[node.inputs[1]].shape[2:], a["groups"]
        else:
            kernel, groups = a["pool_size"], c
        return cls(
            n,
            c,
            h,
            w,
            o,
            oh,
            ow,
            tuple(kernel),
            tuple(a["strides"]),
            tuple(a["padding"]),
            tuple(a["dilation"]),
            groups,
        )

    @property
    def in_per_group(self) -> int:
        return self.channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups


def anchor_is_float(workload: Workload, ops: set[str]) -> bool:
    """The workload is ``ops`` + a fusable elementwise epilogue, with float32 anchor tensors."""
    if not epilogue_fusable(workload, ops):
        return False
    node = workload.nodes[0]
    return all(workload.types[t].dtype == "float32" for t in (*node.inputs, *node.outputs))


def index_type(workload: Workload) -> str:
    """32-bit index arithmetic is much cheaper on GPUs; 64-bit only when a tensor needs it."""
    largest = max(math.prod(t.shape) for t in workload.types.values())
    return "long" if largest >= 2**31 - 2**20 else "int"


def kernel_buffers(workload: Workload) -> tuple[Buffer, ...]:
    """Every workload input in order (the epilogue reads its own by name), then the output."""
    out = workload.outputs[0]
    return (
        *(Buffer(name, buffer_type(t.dtype)) for name, t in workload.inputs),
        Buffer(out, buffer_type(workload.types[out].dtype), output=True),
    )


def bias_of(workload: Workload) -> str | None:
    node = workload.nodes[0]
    return node.inputs[2] if len(node.inputs) > 2 else None


def store_output(
    workload: Workload,
    value: str,
    index: tuple[str, str, str, str],
    guard: str,
    channel: str | None = None,
) -> str:
    """A guarded block: add the anchor's bias (at ``channel``), run the epilogue, store."""
    bias = bias_of(workload)
    lines = [f"float anchor_value = {value};"]
    if bias is not None:
        lines.append(f"anchor_value += {bias}[{channel}];")
    lines += Epilogue(workload).store("anchor_value", index)
    return f"if ({guard}) {{\n" + "\n".join("  " + line for line in lines) + "\n}"


def each_output(store: str, rows: int, cols: int) -> str:
    """``store`` (written in loop variables i and j) for each of a work-item's rows x cols
    outputs, as unrolled loops."""
    return f"""\
{UNROLL}
for (int i = 0; i < {rows}; ++i) {{
  {UNROLL}
  for (int j = 0; j < {cols}; ++j) {{
{indent(store, 2)}
  }}
}}"""


def store_outputs_batched(workload: Workload, outputs: list[tuple[str, tuple, str]]) -> str:
    """store_output for a work-item's outputs 8 at a time (Epilogue.store_tile), for an
    epilogue that calls vector math: each output is (acc, its (n, c, h, w) index, its guard).
    The bias and the epilogue's inputs are read at the index clamped into the output (an
    output past the edge computes garbage there and stores nothing)."""
    epilogue, bias = Epilogue(workload), bias_of(workload)
    tile = []
    for acc, (n, *axes), guard in outputs:
        sizes = epilogue.shape[1:]
        clamped = [f"(({i}) < {d} ? ({i}) : {d - 1})" for i, d in zip(axes, sizes, strict=True)]
        acc = f"{acc} + {bias}[{clamped[0]}]" if bias else acc
        tile.append((acc, (n, *clamped), (n, *axes), guard))
    return "\n".join(epilogue.store_tile(tile))


def indent(code: str, depth: int) -> str:
    pad = "  " * depth
    return "\n".join(pad + line if line else line for line in code.split("\n"))


def vector_type(lanes: int) -> str:
    return "float" if lanes == 1 else f"float{lanes}"


def splat(value: str, lanes: int) -> str:
    return value if lanes == 1 else f"VEC{lanes}({', '.join([value] * lanes)})"


def vector_lanes(expr_of_lane, width: int) -> str:
    lanes = [expr_of_lane(v) for v in range(width)]
    return lanes[0] if width == 1 else f"VEC{width}({', '.join(lanes)})"


def vector_load(pointer: str, offset: str, width: int, stride: int = 1) -> str:
    """``width`` floats ``stride`` apart, lane by lane from one base address. Not VLOADn: PoCL
    calls vload out of line, which forces the accumulators to the stack. Lanes indexed off one
    pointer (not ``p[offset + v]``, whose 32-bit sums LLVM cannot prove adjacent) are merged
    into one vector load: 256 x 256 x 256 gemm 97 -> 143 GFLOP/s on PoCL."""
    return vector_lanes(lambda v: f"({pointer} + ({offset}))[{v * stride}]", width)


def define_vector(name: str, pointer: str, offset: str, width: int, stride: int = 1) -> str:
    """``const floatN name`` = ``width`` floats ``stride`` apart from ``pointer + offset``.
    Strided lanes are gathered from whole vectors: contiguous ``width``-float loads cover the
    span, the last one moved back to end at the last lane needed (so no load reaches past
    it), and the lanes are picked out of them. One scalar load per lane instead made PoCL's
    stride-2 3 x 3 convs run at 61 GFLOP/s against 157 for stride 1 (ResNet-50, 28 x 28)."""
    if stride == 1 or width == 1:
        return f"const {vector_type(width)} {name} = {vector_load(pointer, offset, width, stride)};"
    span = stride * (width - 1) + 1
    starts = [min(start, span - width) for start in range(0, span, width)]
    names, chunks, picked = lane_names(width), [], []
    for lane in range(width):
        at = lane * stride
        chunk = max(i for i, start in enumerate(starts) if start <= at)
        chunks += [chunk] if chunk not in chunks else []
        picked.append(f"{name}_{chunk}.{names[at - starts[chunk]]}")
    vt = vector_type(width)
    lines = [
        f"const {vt} {name}_{i} = {vector_load(pointer, f'{offset} + {starts[i]}', width)};"
        for i in chunks
    ]
    lines.append(f"const {vt} {name} = VEC{width}({', '.join(picked)});")
    return "\n".join(lines)


def reads_in_bounds(g: "WindowGeometry", config: dict, height: int, width: int) -> bool:
    """Unstaged, without padding, and a group tile (height x width outputs) no bigger than the
    output: with the last tile moved back to the edge (tile_origin) every tap lies in the
    image, so reads need neither masks nor clamps."""
    return (
        not config["stage_input"]
        and not any(g.padding)
        and width <= g.out_width
        and height <= g.out_height
    )


def largest_tile(g: "WindowGeometry", unpadded: bool) -> tuple[int, int]:
    """The widest and tallest group tile a default config takes: no bigger than the output
    where reads can be in bounds, else below twice the output (see covers)."""
    if unpadded:
        return g.out_width, g.out_height
    return 2 * g.out_width - 1, 2 * g.out_height - 1


def tile_origin(g: "WindowGeometry", height: int, width: int, in_bounds: bool) -> str:
    """Statements naming the group's first output row and column (oh_group, ow_group). With
    ``in_bounds`` (unpadded input, tile no bigger than the output) the last tile of a row or
    column is moved back to end at the edge, so every tap it reads lies in the image: it then
    overlaps its neighbour, whose outputs it recomputes and stores again with the same values
    (the memory plan never lets a kernel's output share a buffer with its inputs, so the
    epilogue reads the same inputs both times)."""
    rows, cols = f"GROUP_ID(1) * {height}", f"GROUP_ID(0) * {width}"
    if in_bounds:
        last_row, last_col = g.out_height - height, g.out_width - width
        if g.out_height % height:
            rows = f"({rows} < {last_row} ? {rows} : {last_row})"
        if g.out_width % width:
            cols = f"({cols} < {last_col} ? {cols} : {last_col})"
    return f"const int oh_group = {rows};\nconst int ow_group = {cols};"


def work_group_knobs() -> list[Knob]:
    return [
        Knob("wg_x", (1, 2, 4, 8, 16, 32, 64), "work-items per group along the output width"),
        Knob("wg_y", (1, 2, 4, 8, 16), "work-items per group along the output height"),
    ]


def covers(reason: str, tile, extent: int) -> Restriction:
    """A work-group's tile at most twice the extent it covers: bigger tiles only idle."""
    return Restriction(
        f"{reason} must be < 2x the extent it covers ({extent})", lambda c, _: tile(c) < 2 * extent
    )


def shrink_until(config: dict, knobs: tuple[str, ...], fits) -> dict:
    """Halve ``knobs`` in order (each down to 1) until ``fits(config)``: defaults that shrink
    gracefully to small workloads."""
    for knob in knobs:
        while not fits(config) and config[knob] > 1:
            config[knob] //= 2
    return config


def row_tile_restrictions(g: "WindowGeometry", max_accumulators: int) -> list[Restriction]:
    """Restrictions of a template whose work-item computes oh_block x ow_block outputs and whose
    group is wg_x x wg_y (depthwise conv, pooling): registers bounded, no idle group rows."""
    return [
        Restriction(
            f"register tile must hold at most {max_accumulators} accumulators",
            lambda c, _: c["oh_block"] * c["ow_block"] <= max_accumulators,
        ),
        covers("wg_x * ow_block", lambda c: c["wg_x"] * c["ow_block"], g.out_width),
        covers("wg_y * oh_block", lambda c: c["wg_y"] * c["oh_block"], g.out_height),
    ]


class WindowTemplate(Template):
    """Base of the NCHW window templates (convolutions, pooling): the workload's geometry."""

    places_output = True  # every store is store_output's

    @property
    def geometry(self) -> WindowGeometry:
        return WindowGeometry.of(self.workload)
