"""Fused epilogues with transcendental math: scalar calls vs one vector call per 8 outputs.

A GEMM, direct, depthwise or transposed conv with Gelu (erf), tanh, sigmoid or SiLU after it, each
rendered twice: as the compiler renders it (Epilogue.store_lanes: the math of 8 outputs in one
vector call) and as before, lane by lane, each from its default config (the same config but
for the depthwise conv, whose CPU default changes with such an epilogue). Kernels timed with
device events after a warm-up, the variants interleaved round by round; medians of the rounds.

    POCL_AFFINITY=1 python benchmarks/epilogue_math.py [--rounds 5]

POCL_AFFINITY=1 pins PoCL's worker threads: unpinned, both share one core for stretches of
hundreds of launches on this VM and a kernel's time doubles (README, "Big kernels").
Writes benchmarks/results/epilogue_math.md.
"""

import argparse
import pathlib
import statistics
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import environment, header  # noqa: E402

from coretune.graph import GraphBuilder  # noqa: E402
from coretune.graph.executor import _choose  # noqa: E402
from coretune.kernels import open_device  # noqa: E402
from coretune.kernels.epilogue import Epilogue  # noqa: E402
from coretune.kernels.templates import templates_for  # noqa: E402
from coretune.kernels.workload import Workload  # noqa: E402

M, N, K = 128, 3072, 768  # a BERT-base FFN's first dense at sequence length 128


def dense(activation):
    b = GraphBuilder()
    x, w, bias = b.input("x", (M, K)), b.input("w", (N, K)), b.input("b", (N,))
    return b.build(activation(b, b.dense(x, w, bias)))


def conv_silu(channels, size, groups=1):
    b = GraphBuilder()
    x = b.input("x", (1, channels, size + 2, size + 2))
    w = b.input("w", (channels, channels // groups, 3, 3))
    y = b.conv2d(x, w, b.input("b", (channels,)), groups=groups)
    return b.build(y * b.sigmoid(y))


def decoder_output():
    """A generator's last layer: 64 -> 3 channels, 4x4 stride 2, 64x64 -> 128x128, tanh."""
    b = GraphBuilder()
    x, w = b.input("x", (1, 64, 64, 64)), b.input("w", (64, 3, 4, 4))
    y = b.conv2d_transpose(x, w, b.input("b", (3,)), strides=(2, 2), padding=(1, 1, 1, 1))
    return b.build(b.tanh(y))


CASES = {
    # No math in the epilogue: both variants are one kernel, so its ratio is the noise floor.
    f"dense {M}x{N}x{K} + bias (no math: noise floor)": dense(lambda b, y: y),
    f"dense {M}x{N}x{K} + bias + Gelu (erf)": dense(
        lambda b, y: y * 0.5 * (b.erf(y * 0.7071067811865476) + 1.0)
    ),
    f"dense {M}x{N}x{K} + bias + tanh": dense(lambda b, y: b.tanh(y)),
    f"dense {M}x{N}x{K} + bias + sigmoid": dense(lambda b, y: b.sigmoid(y)),
    "conv2d 3x3 64x56x56 (unpadded 58x58 input) + bias + SiLU": conv_silu(64, 56),
    "depthwise 3x3 32x112x112 (unpadded input) + bias + SiLU": conv_silu(32, 112, groups=32),
    "conv_transpose 4x4 s2 64x64x64 -> 3x128x128 + bias + tanh": decoder_output(),
}


def compiled(device, template, lanewise: bool):
    """The default config as the compiler renders it, or both as they were lane by lane."""
    if not lanewise:
        config = template.default_config(device.limits)
        return device.compile(template.render(config, "opencl", device.limits))
    batched = Epilogue.vector_math
    Epilogue.vector_math = property(lambda self: False)
    try:
        config = template.default_config(device.limits)
        return device.compile(template.render(config, "opencl", device.limits))
    finally:
        Epilogue.vector_math = batched


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = open_device(None)
    rng = np.random.default_rng(0)
    runs = {}
    for name, graph in CASES.items():
        workload = Workload.from_graph(graph)
        untuned = _choose(templates_for(workload), workload, device.limits, {}, None, "")
        template = untuned[0](workload)  # the executor's pick for the device, untuned
        shapes = [t.shape for _, t in workload.inputs]
        buffers = [device.upload(rng.standard_normal(s, dtype=np.float32)) for s in shapes]
        out = workload.types[workload.outputs[0]]
        buffers.append(device.empty(4 * int(np.prod(out.shape))))
        for variant, lanewise in (("vector", False), ("scalar", True)):
            runs[(name, variant)] = (compiled(device, template, lanewise), buffers, template.name)
    seconds = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, (kernel, buffers, _) in runs.items():
            seconds[key].append(min(device.time(kernel, buffers, number=2, repeat=2, warmup=1)))
    rows = []
    for name in CASES:
        vector, scalar = (statistics.median(seconds[(name, v)]) for v in ("vector", "scalar"))
        template = runs[(name, "vector")][2]
        rows.append(
            f"| {name} | {template} | {scalar * 1e6:,.0f} us | {vector * 1e6:,.0f} us "
            f"| {scalar / vector:.2f}x |"
        )
    info = environment(device)
    text = "\n".join(
        [
            "# Fused epilogue math: lane by lane vs one vector call per 8 outputs",
            "",
            header(info),
            "",
            f"Default configs; device events, best of 2x2 launches per round, median of "
            f"{args.rounds} interleaved rounds (`benchmarks/epilogue_math.py`).",
            "",
            "| kernel | template | lane by lane | vector calls | speedup |",
            "|---|---|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    (ROOT / "benchmarks" / "results" / "epilogue_math.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
