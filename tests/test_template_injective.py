"""The injective template: fused elementwise/broadcast/injective chains on PoCL, nvcc, Metal."""

import numpy as np
import pytest

from coretune.graph import GraphBuilder
from coretune.kernels.device import APPLE_M1, CUDA_SM80
from coretune.kernels.space import InvalidConfig
from coretune.kernels.templates.injective import InjectiveTemplate
from coretune.kernels.workload import Workload

from .kernel_harness import (
    NVCC,
    assert_matches_reference,
    check_cuda_resources,
    metal_syntax_check,
    nvcc_compile,
    random_inputs,
    run_on_device,
)


def chain(shape_x, shape_y):
    b = GraphBuilder()
    x, y = b.input("x", shape_x), b.input("y", shape_y)
    z = b.relu(x * y) + 1.0
    z = b.transpose(z, axes=tuple(reversed(range(z.ndim))))
    return b.build(b.sigmoid(z) - b.tanh(z))


def movement(shape):
    b = GraphBuilder()
    x = b.input("x", shape)
    padded = b.pad(x, pad_width=(1, 2) * len(shape), mode="reflect" if min(shape) > 2 else "edge")
    cut = b.strided_slice(padded, begin=(-2,), end=(0,), strides=(-1,), axes=(0,))
    flat = b.reshape(cut, newshape=(-1,))
    idx = b.const(np.array([0, -1, 2, 1], dtype=np.int64) % max(1, flat.shape[0]))
    gathered = b.take(flat, idx)
    return b.build(b.concatenate(gathered, b.clip(flat, a_min=-0.5, a_max=0.5), axis=0))


def mixed_types(n):
    b = GraphBuilder()
    x = b.input("x", (n,))
    i = b.cast(b.abs(x) * 10.0, dtype="int32")
    cond = b.greater(x, b.const(0.0, "float32"))
    return b.build(b.where(cond, b.cast(i, dtype="float32"), b.exp(x)))


def math(shape_x, shape_y):
    """Every op batch_math evaluates a vector at a time (exp, log, sqrt, tanh, erf, rsqrt,
    sigmoid), fed by per-lane values and by an operand broadcast along the lanes."""
    b = GraphBuilder()
    x, y = b.input("x", shape_x), b.input("y", shape_y)
    positive = b.exp(b.tanh(x * y))  # whatever the random inputs (constants included)
    gelu = x * 0.5 * (b.erf(x * 0.7071067811865476) + 1.0)
    mixed = b.log(positive) * b.rsqrt(positive) + b.sqrt(positive) - b.exp(-b.abs(y))
    return b.build(gelu + mixed + b.sigmoid(b.tanh(x) * y))


def resampling(shape, size, **attrs):
    b = GraphBuilder()
    x = b.input("x", shape)
    first, _ = b.split(x, sizes=(1, shape[1] - 1), axis=1)
    return b.build(b.resize2d(b.relu(first), size=size, **attrs))


def channel_shuffle(shape, groups):
    """ShuffleNet's: concatenate, split the channels in groups, swap, merge back."""
    b = GraphBuilder()
    n, c, h, w = shape
    joined = b.concatenate(b.input("x", shape), b.input("y", shape), axis=1)
    grouped = b.reshape(joined, newshape=(n, groups, 2 * c // groups, h, w))
    swapped = b.transpose(grouped, axes=(0, 2, 1, 3, 4))
    return b.build(b.reshape(swapped, newshape=(n, 2 * c, h, w)))


def regrouped(shape, middle, last):
    """Reshapes that split, merge and keep axes, with size-1 axes in and out."""
    b = GraphBuilder()
    x = b.relu(b.reshape(b.input("x", shape), newshape=middle))
    x = b.transpose(x, axes=tuple(reversed(range(len(middle)))))
    return b.build(b.reshape(x, newshape=last) * 2.0)


def dense_block(batch, sizes, axis=1, computed_piece=False, plane=(5, 3)):
    """DenseNet's: many pieces concatenated, then batch norm's scale and shift and a relu.
    All pieces buffers: one read from the selected piece's buffer; one piece computed in the
    kernel (a relu): every piece read, the value selected. Rows of 8 (``plane`` (5, 8)): the
    lanes of a work-item share their channel (InjectiveTemplate.lane_indices)."""
    b = GraphBuilder()
    pieces = []
    for i, size in enumerate(sizes):
        shape = [batch, *plane]
        shape[axis] = size
        piece = b.input(f"x{i}", tuple(shape))
        pieces.append(b.relu(piece) if computed_piece and i == 1 else piece)
    joined = b.concatenate(*pieces, axis=axis)
    scale = [1, 1, 1]
    scale[axis] = sum(sizes)
    return b.build(b.relu(joined * b.input("scale", tuple(scale)) + 0.5))


WORKLOADS = [
    chain((1,), (1,)),
    chain((7, 13), (13,)),
    chain((33, 7, 1), (1, 13)),
    movement((7, 13)),
    movement((1, 33)),
    mixed_types(13),
    mixed_types(1),
    math((4, 13), (4, 1)),
    math((2, 33, 8), (8,)),
    resampling((1, 3, 7, 13), (13, 7), method="linear"),
    resampling(
        (2, 2, 1, 7),
        (3, 33),
        method="nearest",
        coordinate_transformation_mode="asymmetric",
        rounding_method="floor",
    ),
    resampling((1, 4, 13, 7), (33, 13), method="cubic", exclude_outside=True),
    resampling(
        (1, 2, 7, 7),
        (13, 13),
        method="linear",
        extrapolation_value=-1.0,
        coordinate_transformation_mode="tf_crop_and_resize",
        roi=(0.1, -0.2, 1.2, 0.9),
    ),
    channel_shuffle((1, 7, 13, 1), 7),
    channel_shuffle((2, 6, 7, 5), 2),
    regrouped((2, 1, 6, 5), (2, 3, 1, 2, 5), (5, 1, 12)),
    regrouped((33,), (3, 11), (1, 11, 3)),
    regrouped((4, 6), (2, 12), (6, 4)),
    dense_block(2, (1, 7, 13, 33)),
    dense_block(1, (7, 1, 13, 1, 33), axis=2),
    dense_block(3, (13, 7, 1), axis=0),
    dense_block(2, (7, 13, 1, 33), computed_piece=True),
    dense_block(2, (1, 7, 13, 33), plane=(5, 8)),
]
IDS = [
    "chain-1",
    "chain-7x13",
    "chain-33x7x13",
    "move-7x13",
    "move-1x33",
    "mixed-13",
    "mixed-1",
    "math-4x13",
    "math-2x33x8",
    "resize-linear",
    "resize-nearest",
    "resize-cubic",
    "resize-crop",
    "shuffle-1x7x13x1",
    "shuffle-2x6x7x5",
    "reshape-2x1x6x5",
    "reshape-33",
    "reshape-4x6",
    "concat-4-buffers",
    "concat-5-buffers-last-axis",
    "concat-3-buffers-first-axis",
    "concat-4-one-computed",
    "concat-4-buffers-plane-8",
]


def test_lanes_share_the_axes_whose_stride_they_divide(device):
    """Lanes 4 over (2, 54, 8): batch and channel (strides 432, 8) are lane 0's for every
    lane, so every lane chooses the concatenation's piece from one variable; the column is
    each lane's own. The batch, outermost, takes no modulo: the index is inside."""
    template = InjectiveTemplate(Workload.from_graph(WORKLOADS[-1]))
    config = {"work_group": 64, "items": 1, "lanes": 4}
    source = template.render(config, "opencl", device.limits).source
    assert source.count("/ 8) % 54") == 1 and source.count("= (i / 432);") == 1
    assert source.count(") % 8;") == 4


@pytest.mark.parametrize("graph", WORKLOADS, ids=IDS)
def test_default_and_random_configs_match_numpy(device, graph):
    template = InjectiveTemplate(Workload.from_graph(graph))
    space = template.space(device.limits)
    configs = [template.default_config(device.limits)]
    configs += space.sample(20, np.random.default_rng(7))
    for seed, config in enumerate(configs):
        arrays = random_inputs(template.workload, seed)
        assert_matches_reference(template, run_on_device(device, template, config, arrays), arrays)


def test_invalid_configs_are_rejected_with_a_reason(device):
    template = InjectiveTemplate(Workload.from_graph(chain((7, 13), (13,))))
    space = template.space(device.limits)
    assert "lanes must divide" in space.why_invalid({"work_group": 64, "items": 1, "lanes": 2})
    tiny = type(device.limits)(
        max_work_group_size=64, max_work_item_sizes=(64, 64, 64), local_mem_bytes=1024
    )
    with pytest.raises(InvalidConfig, match="work-group axis 0 is 128 > 64"):
        template.render({"work_group": 128, "items": 1, "lanes": 1}, "opencl", tiny)


RENDER_CHECKED = [1, 2, 3, 7, 11, 12, 14, 18, 21]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize(
    "graph", [WORKLOADS[i] for i in RENDER_CHECKED], ids=[IDS[i] for i in RENDER_CHECKED]
)
def test_cuda_rendering_compiles_with_nvcc(graph, tmp_path):
    template = InjectiveTemplate(Workload.from_graph(graph))
    configs = [template.default_config(CUDA_SM80)]
    configs += template.space(CUDA_SM80).sample(2, np.random.default_rng(1))
    for config in configs:
        report = nvcc_compile(template.render(config, "cuda", CUDA_SM80), tmp_path)
        check_cuda_resources(
            report, CUDA_SM80, template.local_mem_bytes(config), config["work_group"]
        )


@pytest.mark.parametrize(
    "graph", [WORKLOADS[i] for i in RENDER_CHECKED], ids=[IDS[i] for i in RENDER_CHECKED]
)
def test_metal_rendering_passes_a_syntax_check(graph, tmp_path):
    """Syntax check with a shim header and g++ -- not a Metal compile (no Metal here)."""
    template = InjectiveTemplate(Workload.from_graph(graph))
    for config in [
        template.default_config(APPLE_M1),
        *template.space(APPLE_M1).sample(2, np.random.default_rng(2)),
    ]:
        metal_syntax_check(template.render(config, "metal", APPLE_M1), tmp_path)
