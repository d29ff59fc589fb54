"""conv2d_winograd: Winograd F(2x2, 3x3) for 3x3 stride-1 undilated conv2d, in one kernel.

Per 2x2 output tile, Winograd's minimal filtering replaces 36 multiply-adds per input channel
by 16: ``Y = A^T [sum_c (G g_c G^T) . (B^T d_c B)] A``. The weight transform ``U = G g G^T``
is input-independent, so it is done once on the host by ``prepare_weights`` (the executor
calls it on the workload's input arrays when it loads the weights; params are constants, so
that is once per model). The kernel does the rest in one launch: each work-item loads the
4 x (2 * tile_block + 2) input patch of ``tile_block`` adjacent tiles, transforms it
(additions only), accumulates the elementwise products for ``oc_block`` output channels over
all input channels in registers, then applies the output transform and the fused epilogue.
Transformed weights are laid out (groups, in/group, out/group, 16): one work-item's 16
values are contiguous and work-items of a group share them (broadcast reads).
"""

import numpy as np

from coretune.kernels.device import DeviceLimits

from ..epilogue import Epilogue
from ..render import Buffer, KernelSpec, Launch
from ..space import Config, Knob, Restriction
from .conv_common import (
    NO_UNROLL,
    UNROLL,
    WindowTemplate,
    anchor_is_float,
    ceil_div,
    covers,
    indent,
    index_type,
    kernel_buffers,
    shrink_until,
    store_output,
    store_outputs_batched,
    work_group_knobs,
)

MAX_ACCUMULATORS = 128  # 16 per tile and output channel

# F(2x2, 3x3) transforms (Lavin & Gray 2015).
WEIGHT_TRANSFORM = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def _input_transform(d, v) -> list[str]:
    """v = B^T d B for a 4x4 tile; ``d(r, s)`` and ``v(k)`` spell the C elements."""
    lines = []
    for s in range(4):
        col = [d(r, s) for r in range(4)]
        lines += [
            f"tmp[{s}] = {col[0]} - {col[2]};",
            f"tmp[{4 + s}] = {col[1]} + {col[2]};",
            f"tmp[{8 + s}] = {col[2]} - {col[1]};",
            f"tmp[{12 + s}] = {col[1]} - {col[3]};",
        ]
    for r in range(4):
        t = [f"tmp[{4 * r + s}]" for s in range(4)]
        lines += [
            f"{v(4 * r)} = {t[0]} - {t[2]};",
            f"{v(4 * r + 1)} = {t[1]} + {t[2]};",
            f"{v(4 * r + 2)} = {t[2]} - {t[1]};",
            f"{v(4 * r + 3)} = {t[1]} - {t[3]};",
        ]
    return lines


def _output_transform(m, y) -> list[str]:
    """y = A^T m A: the 2x2 outputs of a 4x4 tile of products ``m(k)``."""
    lines = []
    for c in range(4):
        lines += [
            f"tmp[{c}] = {m(c)} + {m(4 + c)} + {m(8 + c)};",
            f"tmp[{4 + c}] = {m(4 + c)} - {m(8 + c)} - {m(12 + c)};",
        ]
    for r in range(2):
        lines += [
            f"{y(2 * r)} = tmp[{4 * r}] + tmp[{4 * r + 1}] + tmp[{4 * r + 2}];",
            f"{y(2 * r + 1)} = tmp[{4 * r + 1}] - tmp[{4 * r + 2}] - tmp[{4 * r + 3}];",
        ]
    return lines


class Conv2dWinogradTemplate(WindowTemplate):
    name = "conv2d_winograd"

    @classmethod
    def matches(cls, workload) -> bool:
        if not anchor_is_float(workload, {"conv2d"}):
            return False
        node = workload.nodes[0]
        weight = node.inputs[1]
        return (
            workload.types[weight].shape[2:] == (3, 3)
            and tuple(node.attrs["strides"]) == (1, 1)
            and tuple(node.attrs["dilation"]) == (1, 1)
            and weight not in node.inputs[:1] + node.inputs[2:]
            and all(weight not in n.inputs for n in workload.nodes[1:])
        )

    @property
    def tiles(self) -> tuple[int, int]:
        return ceil_div(self.geometry.out_height, 2), ceil_div(self.geometry.out_width, 2)

    def constant_inputs(self) -> list[str]:
        return [self.workload.nodes[0].inputs[1]]

    def prepare_weights(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """The workload's input arrays (in order) -> the arrays the kernel's buffers take:
        the weight (O, C/g, 3, 3) becomes U = G g G^T laid out (g, C/g, O/g, 16)."""
        g = self.geometry
        position = [name for name, _ in self.workload.inputs].index(
            self.workload.nodes[0].inputs[1]
        )
        weight = np.asarray(arrays[position], dtype=np.float64)
        u = np.einsum("ij,ocjk,lk->ocil", WEIGHT_TRANSFORM, weight, WEIGHT_TRANSFORM)
        u = u.reshape(g.groups, g.out_per_group, g.in_per_group, 16).transpose(0, 2, 1, 3)
        prepared = list(arrays)
        prepared[position] = np.ascontiguousarray(u, dtype=np.float32).reshape(-1)
        return prepared

    def knobs(self):
        return [
            Knob("oc_block", (1, 2, 4, 8), "output channels per work-item"),
            Knob("tile_block", (1, 2, 4), "adjacent 2x2 tiles per work-item along the width"),
            Knob("ic_chunk", (1, 2, 4), "input channels unrolled per loop iteration"),
            *work_group_knobs(),
            Knob("wg_z", (1, 2, 4, 8, 16), "work-items per group along output-channel blocks"),
        ]

    def restrictions(self):
        g = self.geometry
        tiles_h, tiles_w = self.tiles
        return [
            Restriction(
                "ic_chunk must divide the input channels per group",
                lambda c, _: g.in_per_group % c["ic_chunk"] == 0,
            ),
            Restriction(
                f"register tile must hold at most {MAX_ACCUMULATORS} accumulators",
                lambda c, _: 16 * c["oc_block"] * c["tile_block"] <= MAX_ACCUMULATORS,
            ),
            covers("wg_x * tile_block", lambda c: c["wg_x"] * c["tile_block"], tiles_w),
            covers("wg_y", lambda c: c["wg_y"], tiles_h),
            covers("wg_z * oc_block", lambda c: c["wg_z"] * c["oc_block"], g.out_per_group),
        ]

    def work_group(self, config):
        return (config["wg_x"], config["wg_y"], config["wg_z"])

    def untuned_choice(self, limits: DeviceLimits) -> bool:
        """Not on CPUs: there conv2d_direct reading a pre-padded input as whole vectors was
        measured ~2x faster (PoCL, 8- and 32-channel 3 x 3 convs); GPUs keep Winograd's
        2.25x fewer multiplications as their untuned choice."""
        return limits.warp_size > 1

    def default_config(self, limits: DeviceLimits) -> Config:
        """One tile per work-item; on CPUs 8 output channels each (more reuse of the
        transformed input) and 4 channel blocks per group sharing the cached patch, on GPUs
        4 channels each and an 8 x 8 spatial group for coalesced loads."""
        g = self.geometry
        tiles_h, tiles_w = self.tiles
        cpu = limits.warp_size == 1
        config = {
            "oc_block": 8 if cpu else 4,
            "tile_block": 1,
            "ic_chunk": 1,
            "wg_x": 1 if cpu else 8,
            "wg_y": 1 if cpu else 8,
            "wg_z": 4 if cpu else 1,
        }
        shrink_until(
            config, ("wg_x", "tile_block"), lambda c: c["wg_x"] * c["tile_block"] < 2 * tiles_w
        )
        shrink_until(config, ("wg_y",), lambda c: c["wg_y"] < 2 * tiles_h)
        shrink_until(
            config, ("wg_z", "oc_block"), lambda c: c["wg_z"] * c["oc_block"] < 2 * g.out_per_group
        )
        return self.space(limits).check(config)

    def _store(self) -> str:
        """Bias, epilogue and guarded stores of the tile's 2 x 2 outputs ``y``: one by one,
        or all 4 at once where the epilogue calls vector math."""
        g, og = self.geometry, self.geometry.out_per_group
        out_channel = f"g * {og} + oc_base + o"

        def output(q: str) -> tuple[str, tuple[str, ...], str]:
            oh, ow = f"2 * th + {q} / 2", f"2 * (tw0 + t) + {q} % 2"
            guard = f"oc_base + o < {og} && {oh} < {g.out_height} && {ow} < {g.out_width}"
            return f"y[{q}]", ("n", out_channel, oh, ow), guard

        if Epilogue(self.workload).vector_math:
            return store_outputs_batched(self.workload, [output(str(q)) for q in range(4)])
        acc, index, guard = output("q")
        store = store_output(self.workload, acc, index, guard, out_channel)
        return f"{UNROLL}\nfor (int q = 0; q < 4; ++q) {{\n{indent(store, 1)}\n}}"

    def spec(self, config: Config) -> KernelSpec:
        g = self.geometry
        ocb, tb, icc = config["oc_block"], config["tile_block"], config["ic_chunk"]
        wgx, wgy, wgz = config["wg_x"], config["wg_y"], config["wg_z"]
        cg, og = g.in_per_group, g.out_per_group
        tiles_h, tiles_w = self.tiles
        tiles_c = ceil_div(og, wgz * ocb)
        cols = 2 * tb + 2
        data, weight = self.workload.nodes[0].inputs[:2]
        idx = index_type(self.workload)
        forward = _input_transform(
            lambda r, s: f"patch[{r * cols} + 2 * t + {s}]", lambda k: f"v[t * 16 + {k}]"
        )
        backward = _output_transform(
            lambda k: f"acc[(o * {tb} + t) * 4 + {k // 4}].{'xyzw'[k % 4]}", lambda k: f"y[{k}]"
        )
        store = self._store()
        body = f"""\
const int tx = LOCAL_ID(0), ty = LOCAL_ID(1), tz = LOCAL_ID(2);
const int zblock = GROUP_ID(2);
const {idx} n = zblock / {g.groups * tiles_c};
const int g = (zblock / {tiles_c}) % {g.groups};
const int oc_base = ((zblock % {tiles_c}) * {wgz} + tz) * {ocb};
const int th = GROUP_ID(1) * {wgy} + ty;
const int tw0 = (GROUP_ID(0) * {wgx} + tx) * {tb};
// Patch offsets clamped into the image, and whether each tap is inside it: every channel
// then loads unconditionally and selects zero for padding (no branches in the loop).
int tap_off[{4 * cols}];
bool tap_ok[{4 * cols}];
{UNROLL}
for (int r = 0; r < 4; ++r) {{
  const int ih = 2 * th - {g.padding[0]} + r;
  {UNROLL}
  for (int s = 0; s < {cols}; ++s) {{
    const int iw = 2 * tw0 - {g.padding[1]} + s;
    tap_ok[r * {cols} + s] = ih >= 0 && ih < {g.height} && iw >= 0 && iw < {g.width};
    tap_off[r * {cols} + s] = (ih < 0 ? 0 : ih < {g.height} ? ih : {g.height - 1}) * {g.width}
        + (iw < 0 ? 0 : iw < {g.width} ? iw : {g.width - 1});
  }}
}}
int u_oc[{ocb}];
{UNROLL}
for (int o = 0; o < {ocb}; ++o)  // tail channels read valid weights and store nothing
  u_oc[o] = (oc_base + o < {og} ? oc_base + o : {og - 1}) * 4;
float4 acc[{ocb * tb * 4}];  // 4x4 products per tile as four float4 rows
{UNROLL}
for (int a = 0; a < {ocb * tb * 4}; ++a) acc[a] = VEC4(0.0f, 0.0f, 0.0f, 0.0f);
float tmp[16];
{NO_UNROLL}
for (int c0 = 0; c0 < {cg}; c0 += {icc}) {{
  {UNROLL}
  for (int cc = 0; cc < {icc}; ++cc) {{
    const {idx} x_chan = (n * {g.channels} + g * {cg} + c0 + cc) * {g.height * g.width};
    float patch[{4 * cols}];
    {UNROLL}
    for (int k = 0; k < {4 * cols}; ++k) {{
      const float value = {data}[x_chan + tap_off[k]];
      patch[k] = tap_ok[k] ? value : 0.0f;
    }}
    float v[{tb * 16}];
    float4 v_rows[{tb * 4}];
    {UNROLL}
    for (int t = 0; t < {tb}; ++t) {{
{indent(chr(10).join(forward), 3)}
      {UNROLL}
      for (int r = 0; r < 4; ++r)
        v_rows[t * 4 + r] = VEC4(v[t * 16 + 4 * r], v[t * 16 + 4 * r + 1],
                                 v[t * 16 + 4 * r + 2], v[t * 16 + 4 * r + 3]);
    }}
    const int u_chan = ((g * {cg} + c0 + cc) * {og}) * 4;
    {UNROLL}
    for (int o = 0; o < {ocb}; ++o) {{
      {UNROLL}
      for (int r = 0; r < 4; ++r) {{
        const float4 u_row = {weight}[u_chan + u_oc[o] + r];
        {UNROLL}
        for (int t = 0; t < {tb}; ++t)
          acc[(o * {tb} + t) * 4 + r] = acc[(o * {tb} + t) * 4 + r] + u_row * v_rows[t * 4 + r];
      }}
    }}
  }}
}}
{UNROLL}
for (int o = 0; o < {ocb}; ++o) {{
  {UNROLL}
  for (int t = 0; t < {tb}; ++t) {{
    float y[4];
{indent(chr(10).join(backward), 2)}
{indent(store, 2)}
  }}
}}"""
        groups = (ceil_div(tiles_w, wgx * tb), ceil_div(tiles_h, wgy), g.batch * g.groups * tiles_c)
        # The transformed weights travel as float4 rows: one aligned vector load each.
        buffers = tuple(
            Buffer(b.name, "float4") if b.name == weight else b
            for b in kernel_buffers(self.workload)
        )
        return KernelSpec(
            "conv2d_winograd", buffers, indent(body, 1), Launch(groups, (wgx, wgy, wgz))
        )
