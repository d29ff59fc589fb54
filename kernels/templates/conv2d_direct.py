"""conv2d_direct: NCHW conv2d (groups, strides, asymmetric padding, dilation) + fused epilogue.

Each work-item keeps an ``oc_block`` x ``oh_block`` x (``ow_block`` * ``vector``) tile of
outputs in registers: every input value it loads feeds ``oc_block`` output channels and every
weight feeds the whole spatial tile (an outer product per tap). Along the width a work-item's
``vector``-wide column groups are interleaved by the work-group width, so neighbouring
work-items read neighbouring memory (coalesced on GPUs, vectorisable across work-items on
CPUs). With ``stage_input`` the work-group first copies ``ic_chunk`` channels of its input
patch (halo included, zero where it overhangs the padding) to local memory between two
barriers, so the inner loop reads it unmasked and every work-item shares it. Without it, a conv
with no padding (the graph pads inputs beforehand: passes/explicit_padding.py) reads every tap
straight from memory as whole vectors, the last tile of a row or column moved back to end at
the edge (reads_in_bounds); otherwise row and column offsets with their padding masks are
computed once per tap and reused for the ``ic_chunk`` input channels unrolled beneath it.
"""

from coretune.kernels.device import DeviceLimits

from ..epilogue import Epilogue
from ..render import KernelSpec, Launch, LocalArray, Scalar, lane_names
from ..space import Config, Knob, Restriction
from .conv_common import (
    IN_CHANNELS,
    LANE_LOOP,
    NO_UNROLL,
    OUT_CHANNELS,
    UNROLL,
    WindowTemplate,
    anchor_is_float,
    ceil_div,
    covers,
    define_vector,
    indent,
    index_type,
    kernel_buffers,
    largest_tile,
    reads_in_bounds,
    shrink_until,
    splat,
    store_output,
    store_outputs_batched,
    tile_origin,
    vector_type,
    work_group_knobs,
)

MAX_ACCUMULATORS = 64  # floats of register tile per work-item: beyond this GPUs spill
OUT_BLOCKS = "c_out_blocks"  # the kernel argument of an ungrouped conv's channel blocks


class Conv2dDirectTemplate(WindowTemplate):
    name = "conv2d_direct"

    @classmethod
    def matches(cls, workload) -> bool:
        return anchor_is_float(workload, {"conv2d"})

    def knobs(self):
        return [
            Knob("oc_block", (1, 2, 4, 8), "output channels per work-item"),
            Knob("oh_block", (1, 2, 4), "output rows per work-item"),
            Knob("ow_block", (1, 2, 4), "vector column groups per work-item"),
            Knob("vector", (1, 2, 4, 8, 16), "adjacent output columns per vector accumulator"),
            Knob("ic_chunk", (1, 2, 4, 8), "input channels unrolled under each tap"),
            Knob("unroll_window", (False, True), "fully unroll the KH x KW window loops"),
            Knob("stage_input", (False, True), "copy input patches to local memory, zero-padded"),
            *work_group_knobs(),
            Knob("wg_z", (1, 2, 4, 8, 16), "work-items per group along output-channel blocks"),
        ]

    def restrictions(self):
        g = self.geometry
        return [
            Restriction(
                "ic_chunk must divide the input channels per group",
                lambda c, _: g.in_per_group % c["ic_chunk"] == 0,
            ),
            Restriction(
                "float16 only where the device's native vectors are 16 floats wide (AVX-512)",
                lambda c, limits: c["vector"] < 16 or limits.preferred_vector_width >= 16,
            ),
            Restriction(
                f"register tile must hold at most {MAX_ACCUMULATORS} accumulators",
                lambda c, _: self.accumulators(c) <= MAX_ACCUMULATORS,
            ),
            covers("wg_x * ow_block * vector", self.tile_width, g.out_width),
            covers("wg_y * oh_block", lambda c: c["wg_y"] * c["oh_block"], g.out_height),
            covers("wg_z * oc_block", lambda c: c["wg_z"] * c["oc_block"], g.out_per_group),
        ]

    @staticmethod
    def accumulators(c: Config) -> int:
        return c["oc_block"] * c["oh_block"] * c["ow_block"] * c["vector"]

    @staticmethod
    def tile_width(c: Config) -> int:
        return c["wg_x"] * c["ow_block"] * c["vector"]

    def work_group(self, config):
        return (config["wg_x"], config["wg_y"], config["wg_z"])

    def default_config(self, limits: DeviceLimits) -> Config:
        """A 4-channel x 2-row register tile. GPUs get scalar columns and a 16 x 4 spatial
        group for coalesced loads of a staged input patch. CPUs (no lock-step warps) get a
        group of 8 channel blocks and vector columns: float8 read straight from memory as
        whole vectors where the conv has no padding (see reads_in_bounds), else float4 from a
        staged patch."""
        g = self.geometry
        cpu = limits.warp_size == 1
        unpadded = cpu and not any(g.padding)
        config = {
            "oc_block": 4,
            "oh_block": 2,
            "ow_block": 1 if cpu else 2,
            "vector": (8 if unpadded else 4) if cpu else 1,
            "ic_chunk": 1 if unpadded else next(k for k in (4, 2, 1) if g.in_per_group % k == 0),
            "unroll_window": g.kernel[0] * g.kernel[1] <= 9,
            "stage_input": not unpadded,
            "wg_x": 1 if cpu else 16,
            "wg_y": 1 if cpu else 4,
            "wg_z": 8 if cpu else 1,
        }
        widest, tallest = largest_tile(g, unpadded)
        shrink_until(config, ("wg_x", "ow_block", "vector"), lambda c: self.tile_width(c) <= widest)
        shrink_until(config, ("wg_y", "oh_block"), lambda c: c["wg_y"] * c["oh_block"] <= tallest)
        shrink_until(
            config, ("wg_z", "oc_block"), lambda c: c["wg_z"] * c["oc_block"] < 2 * g.out_per_group
        )
        if unpadded and not self.reads_in_bounds(config):
            config["stage_input"] = True  # an output smaller than the tile: masked reads
        if not self.space(limits).is_valid(config):
            config["stage_input"] = False  # a patch too big for local memory
        return self.space(limits).check(config)

    # ---- the kernel -------------------------------------------------------------------
    def _channels(self) -> tuple[str, str]:
        """The input's channels and those per group, as the source spells them. An
        ungrouped conv takes its channel counts as kernel arguments (IN_CHANNELS,
        OUT_CHANNELS, OUT_BLOCKS), so that convs which differ only in them are one program
        (a dense block's 1 x 1 convs, whose inputs grow by layer); every choice that
        depends on their values (ic_chunk and what it must divide) still shows in the text,
        so matching sources agree on it."""
        g = self.geometry
        if g.groups == 1:
            return IN_CHANNELS, IN_CHANNELS
        return str(g.channels), str(g.in_per_group)

    def _out_channels(self) -> str:
        """The output channels per group as the source spells them (see _channels)."""
        return OUT_CHANNELS if self.geometry.groups == 1 else str(self.geometry.out_per_group)

    def _out_blocks(self, config: Config) -> int:
        """Blocks of output channels per group: the grid's third axis, per image and group."""
        return ceil_div(self.geometry.out_per_group, config["wg_z"] * config["oc_block"])

    def _scalars(self, config: Config) -> tuple[Scalar, ...]:
        g = self.geometry
        if g.groups != 1:
            return ()
        return (
            Scalar(IN_CHANNELS, "int", g.channels),
            Scalar(OUT_CHANNELS, "int", g.out_channels),
            Scalar(OUT_BLOCKS, "int", self._out_blocks(config)),
        )

    def _store(self, config: Config) -> str:
        """Bias, epilogue and guarded stores of the accumulator ``tile`` (o, i, j): lane by
        lane, or all lanes at once where the epilogue calls vector math
        (conv_common.store_outputs_batched)."""
        g, vec, wgx = self.geometry, config["vector"], config["wg_x"]
        og, height, width = self._out_channels(), g.out_height, g.out_width
        out_channel = f"g * {og} + oc_base + o"
        if vec > 1 and Epilogue(self.workload).vector_math:
            oh = "oh_base + i"
            outputs = []
            for v, lane in enumerate(lane_names(vec)):
                ow = f"ow_base + j * {wgx * vec} + {v}"
                guard = f"oc_base + o < {og} && {oh} < {height} && {ow} < {width}"
                outputs.append((f"tile.{lane}", ("n", out_channel, oh, ow), guard))
            return store_outputs_batched(self.workload, outputs)
        lanes = ", ".join(f"tile.{name}" for name in lane_names(vec)) if vec > 1 else "tile"
        store = store_output(
            self.workload,
            "lane[v]",
            ("n", out_channel, "oh_base + i", "ow"),
            f"oc_base + o < {og} && oh_base + i < {height} && ow < {width}",
            out_channel,
        )
        return f"""\
const float lane[{vec}] = {{{lanes}}};
{LANE_LOOP}
for (int v = 0; v < {vec}; ++v) {{
  const int ow = ow_base + j * {wgx * vec} + v;
{indent(store, 1)}
}}"""

    def patch_shape(self, c: Config) -> tuple[int, int]:
        """Rows and columns of input one work-group's output tile reads (halo included)."""
        g = self.geometry
        rows = (c["wg_y"] * c["oh_block"] - 1) * g.strides[0] + (g.kernel[0] - 1) * g.dilation[0]
        cols = (self.tile_width(c) - 1) * g.strides[1] + (g.kernel[1] - 1) * g.dilation[1]
        return rows + 1, cols + 1

    def local_mem_bytes(self, config):
        rows, cols = self.patch_shape(config)
        return 4 * config["ic_chunk"] * rows * cols if config["stage_input"] else 0

    def spec(self, config: Config) -> KernelSpec:
        g = self.geometry
        ocb, ohb, owb, vec = (config[k] for k in ("oc_block", "oh_block", "ow_block", "vector"))
        icc, wgx, wgy, wgz = (config[k] for k in ("ic_chunk", "wg_x", "wg_y", "wg_z"))
        kh, kw = g.kernel
        og, cg = self._out_channels(), self._channels()[1]
        tiles_w = ceil_div(g.out_width, self.tile_width(config))
        tiles_h = ceil_div(g.out_height, wgy * ohb)
        tiles_c = self._out_blocks(config)
        blocks = OUT_BLOCKS if g.groups == 1 else str(g.groups * tiles_c)  # per image
        idx = index_type(self.workload)
        weight = self.workload.nodes[0].inputs[1]
        vt = vector_type(vec)
        window = UNROLL if config["unroll_window"] else NO_UNROLL
        stage = self._staging(config) if config["stage_input"] else ""
        offsets, xv = self._input_reads(config)
        store = self._store(config)
        body = f"""\
const int tx = LOCAL_ID(0), ty = LOCAL_ID(1), tz = LOCAL_ID(2);
const int zblock = GROUP_ID(2);
const {idx} n = zblock / {blocks};
const int g = {"0" if g.groups == 1 else f"(zblock / {tiles_c}) % {g.groups}"};
const int oc_base = ((zblock % {blocks if g.groups == 1 else tiles_c}) * {wgz} + tz) * {ocb};
{tile_origin(g, wgy * ohb, self.tile_width(config), self.reads_in_bounds(config))}
const int oh_base = oh_group + ty * {ohb};
const int ow_base = ow_group + tx * {vec};
int w_oc[{ocb}];
{UNROLL}
for (int o = 0; o < {ocb}; ++o) {{  // tail channels read a valid row and store nothing
  const int oc = oc_base + o < {og} ? oc_base + o : {og} - 1;
  w_oc[o] = (g * {og} + oc) * ({cg} * {kh * kw});
}}
{vt} acc[{ocb * ohb * owb}];
{UNROLL}
for (int a = 0; a < {ocb * ohb * owb}; ++a) acc[a] = {splat("0.0f", vec)};
for (int c0 = 0; c0 < {cg}; c0 += {icc}) {{
{indent(stage, 1)}
  {window}
  for (int ky = 0; ky < {kh}; ++ky) {{
    {window}
    for (int kx = 0; kx < {kw}; ++kx) {{
{indent(offsets, 3)}
      {UNROLL}
      for (int cc = 0; cc < {icc}; ++cc) {{
        const int w_tap = (c0 + cc) * {kh * kw} + ky * {kw} + kx;
        float wv[{ocb}];
        {UNROLL}
        for (int o = 0; o < {ocb}; ++o) wv[o] = {weight}[w_oc[o] + w_tap];
        {UNROLL}
        for (int i = 0; i < {ohb}; ++i) {{
          {UNROLL}
          for (int j = 0; j < {owb}; ++j) {{
{indent(xv, 6)}
            {UNROLL}
            for (int o = 0; o < {ocb}; ++o) {{
              const int a = (o * {ohb} + i) * {owb} + j;
              acc[a] = acc[a] + xv * {splat("wv[o]", vec)};
            }}
          }}
        }}
      }}
    }}
  }}
}}
{UNROLL}
for (int o = 0; o < {ocb}; ++o) {{
  {UNROLL}
  for (int i = 0; i < {ohb}; ++i) {{
    {UNROLL}
    for (int j = 0; j < {owb}; ++j) {{
      const {vt} tile = acc[(o * {ohb} + i) * {owb} + j];
{indent(store, 3)}
    }}
  }}
}}"""
        rows, cols = self.patch_shape(config)
        local = (LocalArray("patch", "float", icc * rows * cols),) if config["stage_input"] else ()
        groups = (tiles_w, tiles_h, g.batch * g.groups * tiles_c)
        return KernelSpec(
            "conv2d_direct",
            kernel_buffers(self.workload),
            indent(body, 1),
            Launch(groups, (wgx, wgy, wgz), self._scalars(config)),
            local,
        )

    def _staging(self, config: Config) -> str:
        """The group copies ``ic_chunk`` channels of its input patch to local memory, zero
        where the patch hangs over the padding, so the inner loop reads it unmasked."""
        g = self.geometry
        channels, per_group = self._channels()
        rows, cols = self.patch_shape(config)
        wgx, wgy, wgz = (config[k] for k in ("wg_x", "wg_y", "wg_z"))
        data = self.workload.nodes[0].inputs[0]
        top = config["wg_y"] * config["oh_block"] * g.strides[0]
        left = self.tile_width(config) * g.strides[1]
        return f"""\
BARRIER();  // every work-item is done with the previous chunk
const int patch_top = GROUP_ID(1) * {top} - {g.padding[0]};
const int patch_left = GROUP_ID(0) * {left} - {g.padding[1]};
for (int k = (tz * {wgy} + ty) * {wgx} + tx; k < {config["ic_chunk"] * rows * cols}; \
k += {wgx * wgy * wgz}) {{
  const int ih = patch_top + (k / {cols}) % {rows};
  const int iw = patch_left + k % {cols};
  const int c = g * {per_group} + c0 + k / {rows * cols};
  // A guarded load, not a clamped load + select: with the select PoCL scalarised the
  // whole kernel (float4 accumulation included), measured 2x slower.
  patch[k] = (ih >= 0 && ih < {g.height} && iw >= 0 && iw < {g.width})
      ? {data}[((n * {channels} + c) * {g.height} + ih) * {g.width} + iw] : 0.0f;
}}
BARRIER();"""

    def _input_reads(self, config: Config) -> tuple[str, str]:
        """Statements run once per tap, and those reading column group j of row i (xv)."""
        g = self.geometry
        channels, per_group = self._channels()
        ohb, vec, wgx = (config[k] for k in ("oh_block", "vector", "wg_x"))
        sh, sw = g.strides
        dh, dw = g.dilation
        cols = config["ow_block"] * vec
        if config["stage_input"]:
            rows, width = self.patch_shape(config)
            offsets = (
                f"const int tap = (ty * {ohb * sh} + ky * {dh}) * {width} "
                f"+ tx * {vec * sw} + kx * {dw};"
            )
            at = f"(cc * {rows} + i * {sh}) * {width} + j * {wgx * vec * sw} + tap"
            return offsets, define_vector("xv", "patch", at, vec, sw)
        if self.reads_in_bounds(config):
            return self._unmasked_reads(config)
        data = self.workload.nodes[0].inputs[0]
        plane = g.height * g.width
        offsets = f"""\
int row_off[{ohb}];
bool row_ok[{ohb}];
{UNROLL}
for (int i = 0; i < {ohb}; ++i) {{
  const int ih = (oh_base + i) * {sh} - {g.padding[0]} + ky * {dh};
  row_ok[i] = ih >= 0 && ih < {g.height};
  row_off[i] = (ih < 0 ? 0 : ih < {g.height} ? ih : {g.height - 1}) * {g.width};
}}
int col_off[{cols}];
bool col_ok[{cols}];
{UNROLL}
for (int q = 0; q < {cols}; ++q) {{
  const int ow = ow_base + (q / {vec}) * {wgx * vec} + q % {vec};
  const int iw = ow * {sw} - {g.padding[1]} + kx * {dw};
  col_ok[q] = iw >= 0 && iw < {g.width};
  col_off[q] = iw < 0 ? 0 : iw < {g.width} ? iw : {g.width - 1};
}}
const {index_type(self.workload)} x_group = \
(n * {channels} + g * {per_group} + c0) * {plane};"""
        # Offsets are clamped into the image, so every lane loads unconditionally and a
        # select (not a branch) zeroes the padding.
        reads = f"""\
float lanes[{vec}];
{UNROLL}
for (int v = 0; v < {vec}; ++v) {{
  const float value = {data}[x_group + cc * {plane} + row_off[i] + col_off[j * {vec} + v]];
  lanes[v] = row_ok[i] && col_ok[j * {vec} + v] ? value : 0.0f;
}}
"""
        xv = ", ".join(f"lanes[{k}]" for k in range(vec))
        return offsets, reads + (
            f"const float xv = {xv};" if vec == 1 else f"const float{vec} xv = VEC{vec}({xv});"
        )

    def reads_in_bounds(self, config: Config) -> bool:
        """Reads as whole vectors with no masks or clamps (conv_common.reads_in_bounds)."""
        height = config["wg_y"] * config["oh_block"]
        return reads_in_bounds(self.geometry, config, height, self.tile_width(config))

    def _unmasked_reads(self, config: Config) -> tuple[str, str]:
        g = self.geometry
        channels, per_group = self._channels()
        ohb, vec, wgx = (config[k] for k in ("oh_block", "vector", "wg_x"))
        sh, sw = g.strides
        dh, dw = g.dilation
        data = self.workload.nodes[0].inputs[0]
        plane = g.height * g.width
        idx = index_type(self.workload)
        offsets = f"""\
const {idx} x_tap = (n * {channels} + g * {per_group} + c0) * {plane} \
+ (oh_base * {sh} + ky * {dh}) * {g.width} + ow_base * {sw} + kx * {dw};"""
        at = f"x_tap + cc * {plane} + i * {sh * g.width} + j * {wgx * vec * sw}"
        return offsets, define_vector("xv", data, at, vec, sw)
