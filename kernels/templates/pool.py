"""max_pool2d / avg_pool2d (float32, NCHW) + fused epilogue, with the reference's semantics.

Each work-item computes ``oh_block`` adjacent rows x ``ow_block`` columns (interleaved by the
work-group width, so neighbouring work-items read neighbouring memory) of one channel.
Semantics follow graph/ops/conv.py exactly: padding never wins a max (and a window that
holds only padding gives -inf) and NaN propagates as in numpy; the average divides by the
taps inside the data, or inside data + explicit padding with ``count_include_pad``, never
counting the overhang that ``ceil_mode`` adds past the padding.
"""

from coretune.kernels.device import DeviceLimits

from ..epilogue import Epilogue
from ..render import KernelSpec, Launch
from ..space import Config, Knob
from .conv_common import (
    NO_UNROLL,
    UNROLL,
    WindowTemplate,
    anchor_is_float,
    ceil_div,
    each_output,
    indent,
    index_type,
    kernel_buffers,
    row_tile_restrictions,
    shrink_until,
    store_output,
    store_outputs_batched,
    work_group_knobs,
)

MAX_ACCUMULATORS = 32
POOL_OPS = {"max_pool2d", "avg_pool2d"}


class Pool2dTemplate(WindowTemplate):
    name = "pool2d"

    @classmethod
    def matches(cls, workload) -> bool:
        return anchor_is_float(workload, POOL_OPS)

    def knobs(self):
        return [
            Knob("oh_block", (1, 2, 4), "output rows per work-item"),
            Knob("ow_block", (1, 2, 4), "output columns per work-item (interleaved)"),
            Knob("unroll_window", (False, True), "fully unroll the pool window loops"),
            *work_group_knobs(),
        ]

    def restrictions(self):
        return row_tile_restrictions(self.geometry, MAX_ACCUMULATORS)

    def work_group(self, config):
        return (config["wg_x"], config["wg_y"], 1)

    def default_config(self, limits: DeviceLimits) -> Config:
        """A 16 x 4 group of work-items, 2 rows each: pooling is bandwidth-bound, so the
        group reads wide contiguous rows."""
        g = self.geometry
        config = {
            "oh_block": 2,
            "ow_block": 1,
            "unroll_window": g.kernel[0] * g.kernel[1] <= 25,
            "wg_x": 16,
            "wg_y": 4,
        }
        shrink_until(
            config, ("wg_x", "ow_block"), lambda c: c["wg_x"] * c["ow_block"] < 2 * g.out_width
        )
        shrink_until(
            config, ("wg_y", "oh_block"), lambda c: c["wg_y"] * c["oh_block"] < 2 * g.out_height
        )
        return self.space(limits).check(config)

    def _store(self, config: Config, is_max: bool) -> str:
        """The epilogue and guarded stores of the work-item's outputs: one by one, or 8 at a
        time where the epilogue calls vector math."""
        g, owb, wgx = self.geometry, config["ow_block"], config["wg_x"]

        def output(i: str, j: str) -> tuple[str, tuple[str, ...], str]:
            value = f"acc[{i} * {owb} + {j}]"
            if not is_max:
                value += f" / (float)(row_count[{i}] * col_count[{j}])"
            oh, ow = f"oh_base + {i}", f"ow_base + {j} * {wgx}"
            return value, ("n", "c", oh, ow), f"{oh} < {g.out_height} && {ow} < {g.out_width}"

        ohb = config["oh_block"]
        if ohb * owb > 1 and Epilogue(self.workload).vector_math:
            outputs = [output(str(i), str(j)) for i in range(ohb) for j in range(owb)]
            return store_outputs_batched(self.workload, outputs)
        store = store_output(self.workload, *output("i", "j"))
        return each_output(store, ohb, owb)

    def spec(self, config: Config) -> KernelSpec:
        g = self.geometry
        node = self.workload.nodes[0]
        is_max = node.op == "max_pool2d"
        ohb, owb, wgx, wgy = (config[k] for k in ("oh_block", "ow_block", "wg_x", "wg_y"))
        kh, kw = g.kernel
        sh, sw = g.strides
        dh, dw = g.dilation
        pt, pl, pb, pr = g.padding
        idx = index_type(self.workload)
        window = UNROLL if config["unroll_window"] else NO_UNROLL
        data = node.inputs[0]
        # The divisor's row/column ranges: the data, or the data plus the explicit padding.
        if not is_max and node.attrs["count_include_pad"]:
            rows, cols = (-pt, g.height + pb), (-pl, g.width + pr)
        else:
            rows, cols = (0, g.height), (0, g.width)
        if is_max:
            init = "-INF"
            # numpy's maximum: NaN wins, whichever side it is on.
            update = "acc[a] = (value > acc[a] || value != value) ? value : acc[a];"
        else:
            init = "0.0f"
            update = "acc[a] += value;"
        ow = f"ow_base + j * {wgx}"
        store = self._store(config, is_max)
        body = f"""\
const int tx = LOCAL_ID(0), ty = LOCAL_ID(1);
const int c = GROUP_ID(2) % {g.channels};
const {idx} n = GROUP_ID(2) / {g.channels};
const {idx} x_chan = (n * {g.channels} + c) * {g.height * g.width};
const int oh_base = (GROUP_ID(1) * {wgy} + ty) * {ohb};
const int ow_base = GROUP_ID(0) * {wgx * owb} + tx;
float acc[{ohb * owb}];
{UNROLL}
for (int a = 0; a < {ohb * owb}; ++a) acc[a] = {init};
int row_count[{ohb}];
{UNROLL}
for (int i = 0; i < {ohb}; ++i) row_count[i] = 0;
int col_count[{owb}];
{UNROLL}
for (int j = 0; j < {owb}; ++j) col_count[j] = 0;
{window}
for (int kx = 0; kx < {kw}; ++kx) {{
  {UNROLL}
  for (int j = 0; j < {owb}; ++j) {{
    const int iw = ({ow}) * {sw} - {pl} + kx * {dw};
    col_count[j] += iw >= {cols[0]} && iw < {cols[1]};
  }}
}}
{window}
for (int ky = 0; ky < {kh}; ++ky) {{
  {UNROLL}
  for (int i = 0; i < {ohb}; ++i) {{
    const int ih = (oh_base + i) * {sh} - {pt} + ky * {dh};
    row_count[i] += ih >= {rows[0]} && ih < {rows[1]};
    if (ih < 0 || ih >= {g.height}) continue;
    {window}
    for (int kx = 0; kx < {kw}; ++kx) {{
      {UNROLL}
      for (int j = 0; j < {owb}; ++j) {{
        const int iw = ({ow}) * {sw} - {pl} + kx * {dw};
        if (iw >= 0 && iw < {g.width}) {{
          const float value = {data}[x_chan + ih * {g.width} + iw];
          const int a = i * {owb} + j;
          {update}
        }}
      }}
    }}
  }}
}}
{store}"""
        groups = (
            ceil_div(g.out_width, wgx * owb),
            ceil_div(g.out_height, wgy * ohb),
            g.batch * g.channels,
        )
        return KernelSpec(
            node.op, kernel_buffers(self.workload), indent(body, 1), Launch(groups, (wgx, wgy, 1))
        )
