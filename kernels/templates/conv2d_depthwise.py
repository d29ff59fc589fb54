"""conv2d_depthwise: conv2d with groups == channels (channel multiplier >= 1) + fused epilogue.

Depthwise convolution has no reduction over channels, so its cost is memory traffic: each
work-item computes an ``oh_block`` x ``ow_block`` tile of one output channel with that
channel's KH x KW weights in registers, reading each input row segment once per row and tap
row and reusing it across the KW taps and the tile's columns. With ``stage_input`` the
work-group first copies its (haloed, zero-padded) input patch to local memory, so global
reads are coalesced and the inner loop has no padding checks. Without it, an unpadded input
(the graph pads inputs beforehand: passes/explicit_padding.py) is read with no checks at all,
the last tile moved back to the edge (reads_in_bounds, as in conv2d_direct); a padded one
with clamped offsets and masks.
"""

from coretune.kernels.device import DeviceLimits

from ..epilogue import Epilogue
from ..render import KernelSpec, Launch, LocalArray, Scalar
from ..space import Config, Knob
from .conv_common import (
    IN_CHANNELS,
    NO_UNROLL,
    OUT_CHANNELS,
    UNROLL,
    WindowGeometry,
    WindowTemplate,
    anchor_is_float,
    ceil_div,
    each_output,
    indent,
    index_type,
    kernel_buffers,
    largest_tile,
    reads_in_bounds,
    row_tile_restrictions,
    shrink_until,
    store_output,
    store_outputs_batched,
    tile_origin,
    work_group_knobs,
)

MAX_ACCUMULATORS = 32


class DepthwiseConv2dTemplate(WindowTemplate):
    name = "conv2d_depthwise"

    @classmethod
    def matches(cls, workload) -> bool:
        if not anchor_is_float(workload, {"conv2d"}):
            return False
        g = WindowGeometry.of(workload)
        return g.groups == g.channels and g.in_per_group == 1

    def knobs(self):
        return [
            Knob("oh_block", (1, 2, 4), "output rows per work-item"),
            Knob("ow_block", (1, 2, 4, 8), "adjacent output columns per work-item"),
            Knob("unroll_window", (False, True), "fully unroll the KH x KW window loops"),
            Knob("stage_input", (False, True), "copy the group's input patch to local memory"),
            *work_group_knobs(),
        ]

    def restrictions(self):
        return row_tile_restrictions(self.geometry, MAX_ACCUMULATORS)

    def work_group(self, config):
        return (config["wg_x"], config["wg_y"], 1)

    def patch_shape(self, c: Config) -> tuple[int, int]:
        g = self.geometry
        rows = (c["wg_y"] * c["oh_block"] - 1) * g.strides[0] + (g.kernel[0] - 1) * g.dilation[0]
        cols = (c["wg_x"] * c["ow_block"] - 1) * g.strides[1] + (g.kernel[1] - 1) * g.dilation[1]
        return rows + 1, cols + 1

    def segment(self, c: Config) -> int:
        """Input columns one work-item's row of outputs reads."""
        g = self.geometry
        return (c["ow_block"] - 1) * g.strides[1] + (g.kernel[1] - 1) * g.dilation[1] + 1

    def local_mem_bytes(self, config):
        rows, cols = self.patch_shape(config)
        return 4 * rows * cols if config["stage_input"] else 0

    def _store(self, config: Config) -> str:
        """Bias, epilogue and guarded stores of the work-item's outputs: one by one, or 8 at a
        time where the epilogue calls vector math (conv_common.store_outputs_batched)."""
        g = self.geometry
        ohb, owb = config["oh_block"], config["ow_block"]

        def output(i: str, j: str) -> tuple[str, tuple[str, ...], str]:
            oh, ow = f"oh_base + {i}", f"ow_base + {j}"
            guard = f"{oh} < {g.out_height} && {ow} < {g.out_width}"
            return f"acc[{i} * {owb} + {j}]", ("n", "oc", oh, ow), guard

        if ohb * owb > 1 and Epilogue(self.workload).vector_math:
            outputs = [output(str(i), str(j)) for i in range(ohb) for j in range(owb)]
            return store_outputs_batched(self.workload, outputs)
        store = store_output(self.workload, *output("i", "j"), "oc")
        return each_output(store, ohb, owb)

    def default_config(self, limits: DeviceLimits) -> Config:
        """2 x 2 outputs per work-item in a 16-wide group; GPUs stage the group's patch in
        local memory, CPUs read through their caches (staging measured slower on PoCL). An
        unpadded input on a CPU (reads_in_bounds) gets one column per work-item and a group
        one row of up to 64 columns wide: PoCL vectorises across the group's work-items,
        1.5-3.3x faster than 2 x 2 in a 16 x 4 group on 24x12x12 to 32x112x112 depthwise
        convs (in-process probe, 5 interleaved rounds). Unless the epilogue calls exp, erf...:
        a scalar call stops that vectorisation (SiLU took a 32x112x112 conv from 0.13 to 3-5 ms),
        so CPUs then give a work-item 4 rows of 8 columns, whose math runs as float8 calls, in
        2 x 2 groups (32x112x112 + SiLU: 0.65 ms; 1 x 8 columns in an 8-wide group 0.80)."""
        g = self.geometry
        cpu = limits.warp_size == 1
        unpadded = cpu and not any(g.padding)
        lanes = cpu and Epilogue(self.workload).vector_math
        config = {
            "oh_block": 4 if lanes else 2,
            "ow_block": 8 if lanes else 1 if unpadded else 2,
            "unroll_window": g.kernel[0] * g.kernel[1] <= 25,
            "stage_input": not cpu,
            "wg_x": 2 if lanes else 64 if unpadded else 16,
            "wg_y": 2 if lanes else 1 if unpadded else 4 if cpu else 8,
        }
        widest, tallest = largest_tile(g, unpadded)
        shrink_until(config, ("wg_x", "ow_block"), lambda c: c["wg_x"] * c["ow_block"] <= widest)
        shrink_until(config, ("wg_y", "oh_block"), lambda c: c["wg_y"] * c["oh_block"] <= tallest)
        if not self.space(limits).is_valid(config):
            config["stage_input"] = False
        return self.space(limits).check(config)

    def spec(self, config: Config) -> KernelSpec:
        g = self.geometry
        ohb, owb, wgx, wgy = (config[k] for k in ("oh_block", "ow_block", "wg_x", "wg_y"))
        kh, kw = g.kernel
        sh, sw = g.strides
        dh, dw = g.dilation
        seg = self.segment(config)
        data, weight = self.workload.nodes[0].inputs[:2]
        idx = index_type(self.workload)
        window = UNROLL if config["unroll_window"] else NO_UNROLL
        multiplier = g.out_per_group
        rows, cols = self.patch_shape(config)
        if self.reads_in_bounds(config):
            prepare = ""
            row = (
                f"const {idx} row = x_chan + ((oh_base + i) * {sh} + ky * {dh}) * {g.width} "
                f"+ ow_base * {sw};"
            )
            read = f"seg[q] = ({data} + row)[q];"
        elif config["stage_input"]:
            prepare = self._staging(config)
            row = (
                f"const int row = ((ty * {ohb} + i) * {sh} + ky * {dh}) * {cols} + tx * {owb * sw};"
            )
            read = "seg[q] = patch[row + q];"
        else:
            prepare = f"""\
int col_off[{seg}];
bool col_ok[{seg}];
{UNROLL}
for (int q = 0; q < {seg}; ++q) {{
  const int iw = ow_base * {sw} - {g.padding[1]} + q;
  col_ok[q] = iw >= 0 && iw < {g.width};
  col_off[q] = iw < 0 ? 0 : iw < {g.width} ? iw : {g.width - 1};
}}"""
            row = f"""\
const int ih = (oh_base + i) * {sh} - {g.padding[0]} + ky * {dh};
const bool row_ok = ih >= 0 && ih < {g.height};
const {idx} row = x_chan + (ih < 0 ? 0 : ih < {g.height} ? ih : {g.height - 1}) * {g.width};"""
            read = (
                f"const float value = {data}[row + col_off[q]];\n"
                "seg[q] = row_ok && col_ok[q] ? value : 0.0f;"
            )
        store = self._store(config)
        body = f"""\
const int tx = LOCAL_ID(0), ty = LOCAL_ID(1);
const int oc = GROUP_ID(2) % {OUT_CHANNELS};
const {idx} n = GROUP_ID(2) / {OUT_CHANNELS};
const {idx} x_chan = (n * {IN_CHANNELS} + oc / {multiplier}) * {g.height * g.width};
{tile_origin(g, wgy * ohb, wgx * owb, self.reads_in_bounds(config))}
const int oh_base = oh_group + ty * {ohb};
const int ow_base = ow_group + tx * {owb};
float taps[{kh * kw}];
{UNROLL}
for (int k = 0; k < {kh * kw}; ++k) taps[k] = {weight}[oc * {kh * kw} + k];
{prepare}
float acc[{ohb * owb}];
{UNROLL}
for (int a = 0; a < {ohb * owb}; ++a) acc[a] = 0.0f;
{UNROLL}
for (int i = 0; i < {ohb}; ++i) {{
  {window}
  for (int ky = 0; ky < {kh}; ++ky) {{
{indent(row, 2)}
    float seg[{seg}];
    {UNROLL}
    for (int q = 0; q < {seg}; ++q) {{
{indent(read, 3)}
    }}
    {window}
    for (int kx = 0; kx < {kw}; ++kx) {{
      {UNROLL}
      for (int j = 0; j < {owb}; ++j)
        acc[i * {owb} + j] += seg[j * {sw} + kx * {dw}] * taps[ky * {kw} + kx];
    }}
  }}
}}
{store}"""
        local = (LocalArray("patch", "float", rows * cols),) if config["stage_input"] else ()
        groups = (
            ceil_div(g.out_width, wgx * owb),
            ceil_div(g.out_height, wgy * ohb),
            g.batch * g.out_channels,
        )
        return KernelSpec(
            "conv2d_depthwise",
            kernel_buffers(self.workload),
            indent(body, 1),
            # The channel counts are arguments: convs that differ only in them are one
            # program (an EfficientNet stage's depthwise convs of 480 and 672 channels).
            Launch(groups, (wgx, wgy, 1), self._scalars()),
            local,
        )

    def _scalars(self) -> tuple[Scalar, ...]:
        g = self.geometry
        return (
            Scalar(IN_CHANNELS, "int", g.channels),
            Scalar(OUT_CHANNELS, "int", g.out_channels),
        )

    def reads_in_bounds(self, config: Config) -> bool:
        """Reads with no masks or clamps (conv_common.reads_in_bounds)."""
        height, width = config["wg_y"] * config["oh_block"], config["wg_x"] * config["ow_block"]
        return reads_in_bounds(self.geometry, config, height, width)

    def _staging(self, config: Config) -> str:
        """The group copies its zero-padded input patch to local memory (coalesced reads)."""
        g = self.geometry
        rows, cols = self.patch_shape(config)
        wgx, wgy = config["wg_x"], config["wg_y"]
        data = self.workload.nodes[0].inputs[0]
        top = f"GROUP_ID(1) * {wgy * config['oh_block'] * g.strides[0]} - {g.padding[0]}"
        left = f"GROUP_ID(0) * {wgx * config['ow_block'] * g.strides[1]} - {g.padding[1]}"
        return f"""\
for (int k = ty * {wgx} + tx; k < {rows * cols}; k += {wgx * wgy}) {{
  const int ih = {top} + k / {cols};
  const int iw = {left} + k % {cols};
  const int ih_in = ih < 0 ? 0 : ih < {g.height} ? ih : {g.height - 1};
  const int iw_in = iw < 0 ? 0 : iw < {g.width} ? iw : {g.width - 1};
  const float value = {data}[x_chan + ih_in * {g.width} + iw_in];
  patch[k] = ih == ih_in && iw == iw_in ? value : 0.0f;  // a select, not a branch
}}
BARRIER();"""
