"""conv2d_transpose: transposed convolution as a gather (no atomics) + fused epilogue.

Output pixel (oh, ow) receives input pixel (ih, iw) through tap (ky, kx) when
``oh + pad_top = ih * stride + ky * dilation`` (likewise for columns). Outputs are grouped
by phase ``(oh % stride, ow % stride)``: within one phase the same taps contribute, at
consecutive input rows and columns, so a work-item takes ``oh_block`` x ``ow_block`` outputs
of one phase (rows adjacent, columns interleaved by the work-group width for coalescing),
tests each tap's divisibility once (uniform across the group: the phase is per group), and
accumulates ``oc_block`` output channels in registers. Weights are (in, out/groups, kh, kw).
"""

from coretune.kernels.device import DeviceLimits

from ..epilogue import Epilogue
from ..render import KernelSpec, Launch
from ..space import Config, Knob, Restriction
from .conv_common import (
    UNROLL,
    WindowTemplate,
    anchor_is_float,
    ceil_div,
    covers,
    each_output,
    indent,
    index_type,
    kernel_buffers,
    shrink_until,
    store_output,
    store_outputs_batched,
    work_group_knobs,
)

MAX_ACCUMULATORS = 64


class Conv2dTransposeTemplate(WindowTemplate):
    name = "conv2d_transpose"

    @classmethod
    def matches(cls, workload) -> bool:
        return anchor_is_float(workload, {"conv2d_transpose"})

    @property
    def phase_extent(self) -> tuple[int, int]:
        """Outputs per phase along height and width (the largest phase)."""
        g = self.geometry
        return ceil_div(g.out_height, g.strides[0]), ceil_div(g.out_width, g.strides[1])

    def knobs(self):
        return [
            Knob("oc_block", (1, 2, 4, 8), "output channels per work-item"),
            Knob("oh_block", (1, 2, 4), "same-phase output rows per work-item"),
            Knob("ow_block", (1, 2, 4), "same-phase output columns per work-item"),
            Knob("ic_chunk", (1, 2, 4), "input channels unrolled under each tap"),
            *work_group_knobs(),
            Knob("wg_z", (1, 2, 4, 8), "work-items per group along output-channel blocks"),
        ]

    def restrictions(self):
        g = self.geometry
        ph, pw = self.phase_extent
        return [
            Restriction(
                "ic_chunk must divide the input channels per group",
                lambda c, _: g.in_per_group % c["ic_chunk"] == 0,
            ),
            Restriction(
                f"register tile must hold at most {MAX_ACCUMULATORS} accumulators",
                lambda c, _: c["oc_block"] * c["oh_block"] * c["ow_block"] <= MAX_ACCUMULATORS,
            ),
            covers("wg_x * ow_block", lambda c: c["wg_x"] * c["ow_block"], pw),
            covers("wg_y * oh_block", lambda c: c["wg_y"] * c["oh_block"], ph),
            covers("wg_z * oc_block", lambda c: c["wg_z"] * c["oc_block"], g.out_per_group),
        ]

    def work_group(self, config):
        return (config["wg_x"], config["wg_y"], config["wg_z"])

    def default_config(self, limits: DeviceLimits) -> Config:
        """4 channels x 2 x 2 outputs per work-item; CPUs put 8 channel blocks in a group,
        GPUs a 16 x 4 spatial group."""
        g = self.geometry
        ph, pw = self.phase_extent
        cpu = limits.warp_size == 1
        config = {
            "oc_block": 4,
            "oh_block": 2,
            "ow_block": 2,
            "ic_chunk": next(k for k in (4, 2, 1) if g.in_per_group % k == 0),
            "wg_x": 1 if cpu else 16,
            "wg_y": 1 if cpu else 4,
            "wg_z": 8 if cpu else 1,
        }
        shrink_until(config, ("wg_x", "ow_block"), lambda c: c["wg_x"] * c["ow_block"] < 2 * pw)
        shrink_until(config, ("wg_y", "oh_block"), lambda c: c["wg_y"] * c["oh_block"] < 2 * ph)
        shrink_until(
            config, ("wg_z", "oc_block"), lambda c: c["wg_z"] * c["oc_block"] < 2 * g.out_per_group
        )
        return self.space(limits).check(config)

    def _store(self, config: Config) -> str:
        """Bias, epilogue and guarded stores of output-channel block o's outputs: one by one,
        or 8 at a time where the epilogue calls vector math."""
        g = self.geometry
        og, (sh, sw) = g.out_per_group, g.strides
        ohb, owb, wgx = config["oh_block"], config["ow_block"], config["wg_x"]
        out_channel = f"g * {og} + oc_base + o"

        def output(i: str, j: str) -> tuple[str, tuple[str, ...], str]:
            oh, ow = (
                f"(qh_base + {i}) * {sh} + phase_h",
                f"(qw_base + {j} * {wgx}) * {sw} + phase_w",
            )
            guard = f"oc_base + o < {og} && {oh} < {g.out_height} && {ow} < {g.out_width}"
            return f"acc[(o * {ohb} + {i}) * {owb} + {j}]", ("n", out_channel, oh, ow), guard

        if ohb * owb > 1 and Epilogue(self.workload).vector_math:
            outputs = [output(str(i), str(j)) for i in range(ohb) for j in range(owb)]
            return store_outputs_batched(self.workload, outputs)
        acc, index, guard = output("i", "j")
        store = store_output(self.workload, acc, index, guard, out_channel)
        return each_output(store, ohb, owb)

    def spec(self, config: Config) -> KernelSpec:
        g = self.geometry
        ocb, ohb, owb, icc = (config[k] for k in ("oc_block", "oh_block", "ow_block", "ic_chunk"))
        wgx, wgy, wgz = config["wg_x"], config["wg_y"], config["wg_z"]
        kh, kw = g.kernel
        sh, sw = g.strides
        dh, dw = g.dilation
        pt, pl = g.padding[:2]
        cg, og = g.in_per_group, g.out_per_group
        ph, pw = self.phase_extent
        tiles_h, tiles_w = ceil_div(ph, wgy * ohb), ceil_div(pw, wgx * owb)
        tiles_c = ceil_div(og, wgz * ocb)
        data, weight = self.workload.nodes[0].inputs[:2]
        idx = index_type(self.workload)
        store = self._store(config)
        # Taps are tested with a non-negative numerator: phase + pad + (kh - 1) * dh * sh - ...
        bias_h, bias_w = (kh - 1) * dh * sh, (kw - 1) * dw * sw
        body = f"""\
const int tx = LOCAL_ID(0), ty = LOCAL_ID(1), tz = LOCAL_ID(2);
const int zblock = GROUP_ID(2);
const {idx} n = zblock / {g.groups * tiles_c};
const int g = (zblock / {tiles_c}) % {g.groups};
const int oc_base = ((zblock % {tiles_c}) * {wgz} + tz) * {ocb};
const int phase_h = GROUP_ID(1) / {tiles_h}, phase_w = GROUP_ID(0) / {tiles_w};
const int qh_base = ((GROUP_ID(1) % {tiles_h}) * {wgy} + ty) * {ohb};
const int qw_base = (GROUP_ID(0) % {tiles_w}) * {wgx * owb} + tx;
int w_oc[{ocb}];
{UNROLL}
for (int o = 0; o < {ocb}; ++o)  // tail channels read valid weights and store nothing
  w_oc[o] = (oc_base + o < {og} ? oc_base + o : {og - 1}) * {kh * kw};
float acc[{ocb * ohb * owb}];
{UNROLL}
for (int a = 0; a < {ocb * ohb * owb}; ++a) acc[a] = 0.0f;
for (int ky = 0; ky < {kh}; ++ky) {{
  const int num_h = phase_h + {pt + bias_h} - ky * {dh};  // >= 0
  if (num_h % {sh} != 0) continue;  // uniform across the work-group
  const int dy = num_h / {sh} - {bias_h // sh};
  int row_off[{ohb}];
  bool row_ok[{ohb}];
  {UNROLL}
  for (int i = 0; i < {ohb}; ++i) {{
    const int ih = qh_base + i + dy;
    row_ok[i] = ih >= 0 && ih < {g.height};
    row_off[i] = (ih < 0 ? 0 : ih < {g.height} ? ih : {g.height - 1}) * {g.width};
  }}
  for (int kx = 0; kx < {kw}; ++kx) {{
    const int num_w = phase_w + {pl + bias_w} - kx * {dw};
    if (num_w % {sw} != 0) continue;
    const int dx = num_w / {sw} - {bias_w // sw};
    int col_off[{owb}];
    bool col_ok[{owb}];
    {UNROLL}
    for (int j = 0; j < {owb}; ++j) {{
      const int iw = qw_base + j * {wgx} + dx;
      col_ok[j] = iw >= 0 && iw < {g.width};
      col_off[j] = iw < 0 ? 0 : iw < {g.width} ? iw : {g.width - 1};
    }}
    for (int c0 = 0; c0 < {cg}; c0 += {icc}) {{
      {UNROLL}
      for (int cc = 0; cc < {icc}; ++cc) {{
        const int c = g * {cg} + c0 + cc;
        const {idx} x_chan = (n * {g.channels} + c) * {g.height * g.width};
        const int w_tap = c * {og * kh * kw} + ky * {kw} + kx;
        float wv[{ocb}];
        {UNROLL}
        for (int o = 0; o < {ocb}; ++o) wv[o] = {weight}[w_tap + w_oc[o]];
        {UNROLL}
        for (int i = 0; i < {ohb}; ++i) {{
          {UNROLL}
          for (int j = 0; j < {owb}; ++j) {{
            const float value = {data}[x_chan + row_off[i] + col_off[j]];
            const float xv = row_ok[i] && col_ok[j] ? value : 0.0f;
            {UNROLL}
            for (int o = 0; o < {ocb}; ++o)
              acc[(o * {ohb} + i) * {owb} + j] += xv * wv[o];
          }}
        }}
      }}
    }}
  }}
}}
{UNROLL}
for (int o = 0; o < {ocb}; ++o) {{
{indent(store, 1)}
}}"""
        groups = (sw * tiles_w, sh * tiles_h, g.batch * g.groups * tiles_c)
        return KernelSpec(
            "conv2d_transpose",
            kernel_buffers(self.workload),
            indent(body, 1),
            Launch(groups, (wgx, wgy, wgz)),
        )
