"""conv2d_gemm: a 1 x 1 convolution (stride 1, no padding, one group) as the gemm template's
matrix product, an alternative the tuner measures against conv2d_direct per layer.

In NCHW such a conv is, per image, out[n] (C_out x H*W) = weight (C_out x C_in) @ x[n]
(C_in x H*W): A is the weight, B the image with its pixels as columns (rows contiguous), the
batch the third grid axis, the bias one value per row, and a column n the output pixel
(n / W, n % W). The gemm's register tiles, vectors along the pixels and k loops then apply
unchanged, with its device defaults; they suit other shapes than the direct conv's tiles do
(on PoCL, 2 AVX-512 cores, isolated layers: 1.2-1.4x the direct conv's default at 28 x 28
and 56 x 56 with 128-512 input channels, 0.65x at 14 x 14), so conv2d_direct stays the
untuned default and the tuning log decides.
"""

from functools import cached_property

from .conv_common import anchor_is_float
from .gemm import GemmTemplate
from .gemm_source import GemmGeometry

SMALL_IMAGE = 64  # pixels


class Conv2dGemmTemplate(GemmTemplate):
    name = "conv2d_gemm"

    @classmethod
    def matches(cls, workload) -> bool:
        if not anchor_is_float(workload, {"conv2d"}):
            return False
        node = workload.nodes[0]
        return (
            workload.types[node.inputs[1]].shape[2:] == (1, 1)
            and tuple(node.attrs["strides"]) == (1, 1)
            and not any(node.attrs["padding"])
            and node.attrs["groups"] == 1
        )

    @cached_property
    def geometry(self) -> GemmGeometry:
        node = self.workload.nodes[0]
        batch, channels, height, width = self.workload.types[node.inputs[0]].shape
        out_channels = self.workload.types[node.inputs[1]].shape[0]
        return GemmGeometry(
            a=node.inputs[1],
            b=node.inputs[0],
            bias=node.inputs[2] if len(node.inputs) > 2 else None,
            bias_per_column=False,
            bias_per_row=True,
            b_is_nk=False,
            batch_shape=(batch,),
            a_batch_strides=(0,),
            b_batch_strides=(channels * height * width,),
            m=out_channels,
            n=height * width,
            k=channels,
            row_shape=(out_channels,),
            has_col_axis=True,
            col_shape=(height, width),
        )

    def untuned_choice(self, limits) -> bool:
        """On CPUs, for images of at most 64 pixels (7 x 7 and smaller, the 1 x 1 images of
        squeeze-and-excitation blocks), where the direct conv's row tiles are mostly overhang;
        elsewhere the tuning log decides (see the module docstring)."""
        return limits.warp_size == 1 and self.geometry.n <= SMALL_IMAGE
