"""conv2d_gemm: a 1 x 1 convolution (stride 1, no padding, one group) as the gemm template's
matrix product, an alternative the tuner measures against conv2d_direct per layer.

In NCHW such a conv is, per image, out[n] (C_out x H*W) = weight (C_out x C_in) @ x[n]
(C_in x H*W): A is the weight, B the image with its pixels as columns (rows contiguous), the
batch the third grid axis, the bias one value per row, and a column n the output pixel
(n / W, n % W). The gemm's register tiles, vectors along the pixels and k loops then apply
unchanged. Which of the two is faster depends on the layer (default configs on PoCL, 2
AVX-512 cores, ResNet-50's and EfficientNet-B0's layers): the gemm wins on images of at most
64 pixels (1.2-2.0x: the direct conv's row tiles there are mostly overhang) and, with float16
vectors of pixels on AVX-512, on 14 x 14 to 56 x 56 images (1.2-1.8x per layer; whole models
1.04-1.09x over float16 only where 16 divides the pixels) unless the epilogue calls exp (SiLU:
0.5-0.65x). So an untuned build takes it there (untuned_choice); the tuning log decides
everywhere else, and on GPUs.
"""

from functools import cached_property

from ..epilogue import Epilogue
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
            extents_are_arguments=True,
        )

    def _cpu_start(self, limits) -> dict:
        """On AVX-512 (16-float native vectors), for images of 16 pixels or more: 4 channels x
        16 pixels per work-item, 4 channels per group (one column of work-items: PoCL runs
        them in turn over the same image rows; the last vector of a row that does not divide
        into 16 starts at the last whole one, see GemmSource.shifted). 155-189 GFLOP/s on
        ResNet-50's 1 x 1 layers at 56 x 56 and 28 x 28, against 95-120 for the direct conv's
        default and 77-137 for float8 (PoCL, 2 AVX-512 cores)."""
        start = super()._cpu_start(limits)
        if self._float16_pixels(limits):
            start.update(vector=16, tile_n=16, tile_m=4, wg_n=1)
        return start

    def _float16_pixels(self, limits) -> bool:
        return limits.preferred_vector_width >= 16 and self.geometry.n >= 16

    def _float16_default(self, limits) -> bool:
        """Float16 pixels, and an epilogue without exp/tanh/erf math: with SiLU the default
        ran 0.49-0.65x the direct conv's (EfficientNet-B0's expansions at 28-112 pixels wide)."""
        return self._float16_pixels(limits) and not Epilogue(self.workload).vector_math

    def untuned_choice(self, limits) -> bool:
        """On CPUs: for images of at most 64 pixels (7 x 7 and smaller, the 1 x 1 images of
        squeeze-and-excitation blocks), where the direct conv's row tiles are mostly
        overhang, and where float16 vectors of pixels apply (see _cpu_start); elsewhere the
        tuning log decides (see the module docstring)."""
        if limits.warp_size != 1:
            return False
        return self.geometry.n <= SMALL_IMAGE or self._float16_default(limits)
