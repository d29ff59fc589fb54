"""Single-op kernels on the default device: default config and best of 50 random configs,
beside numpy (OpenBLAS) measured in the same run, as a ratio.

Run with OpenBLAS at its best (this machine's OPENBLAS_* settings slow numpy down):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/ops.py
Kernels are timed with device events after warm-up; numpy with perf_counter. Each of 5
rounds times numpy, the default config and the best config back to back; the table shows
medians over rounds. Writes benchmarks/results/ops.md.
"""

import math
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from common import environment, header  # noqa: E402

from coretune.graph import GraphBuilder  # noqa: E402
from coretune.kernels import open_device  # noqa: E402
from coretune.kernels.templates import templates_for  # noqa: E402
from coretune.kernels.workload import Workload  # noqa: E402
from coretune.tuner.task import Task, workload_flops  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
RANDOM_CONFIGS = 50
ROUNDS = 5


def _graph(build):
    b = GraphBuilder()
    return Workload.from_graph(b.build(build(b)))


def _conv_numpy(x, w, pad):
    """im2col + one BLAS GEMM: how numpy does a conv at its best."""
    from numpy.lib.stride_tricks import sliding_window_view

    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = sliding_window_view(xp, w.shape[2:], axis=(2, 3))  # n c oh ow kh kw
    n, c, oh, ow, kh, kw = cols.shape
    patches = np.ascontiguousarray(cols.transpose(0, 2, 3, 1, 4, 5)).reshape(n * oh * ow, -1)
    return (patches @ w.reshape(w.shape[0], -1).T).reshape(n, oh, ow, -1).transpose(0, 3, 1, 2)


def _depthwise_numpy(x, w, pad):
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    height, width = xp.shape[2] - w.shape[2] + 1, xp.shape[3] - w.shape[3] + 1
    out = np.zeros((x.shape[0], x.shape[1], height, width), np.float32)
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            out += xp[:, :, i : i + height, j : j + width] * w[None, :, 0, i, j, None, None]
    return out


def _softmax_numpy(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _layer_norm_numpy(x, g, b):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * g + b


def _conv3x3_case(channels: int, size: int, depthwise: bool = False):
    """A 'same' 3x3 convolution of one image, channels -> channels (or per channel), as the
    compiler runs it: on an input padded beforehand (graph pass explicit_padding; the pad
    copy, ~20 us for 32x64x64 floats, is not timed here, nor is numpy's padding)."""
    groups = channels if depthwise else 1
    graph = _graph(
        lambda b: b.conv2d(
            b.input("x", (1, channels, size + 2, size + 2)),
            b.input("w", (channels, channels // groups, 3, 3)),
            groups=groups,
        )
    )
    numpy_conv = _depthwise_numpy if depthwise else _conv_numpy
    return graph, lambda x, w: numpy_conv(x, w, 0), "GFLOP/s"


def cases():
    """name -> (workload, numpy callable over the input arrays, unit)."""
    return {
        "dense 1024x1024x1024": (
            _graph(lambda b: b.dense(b.input("x", (1024, 1024)), b.input("w", (1024, 1024)))),
            lambda x, w: x @ w.T,
            "GFLOP/s",
        ),
        "dense 1x4096x4096": (
            _graph(lambda b: b.dense(b.input("x", (1, 4096)), b.input("w", (4096, 4096)))),
            lambda x, w: x @ w.T,
            "GB/s",
        ),
        "conv2d 3x3 1x64x56x56 -> 64": _conv3x3_case(64, 56),
        "conv2d 3x3 1x256x14x14 -> 256": _conv3x3_case(256, 14),
        "depthwise 3x3 1x32x112x112": _conv3x3_case(32, 112, depthwise=True),
        "softmax 4x128x128": (
            _graph(lambda b: b.softmax(b.input("x", (4, 128, 128)), axis=-1)),
            _softmax_numpy,
            "GB/s",
        ),
        "layer_norm 128x256": (
            _graph(
                lambda b: b.layer_norm(
                    b.input("x", (128, 256)), b.input("g", (256,)), b.input("b", (256,))
                )
            ),
            _layer_norm_numpy,
            "GB/s",
        ),
    }


def _work(workload, unit):
    if unit == "GFLOP/s":
        return workload_flops(workload) / 1e9
    total = sum(math.prod(t.shape) for _, t in workload.inputs)
    total += sum(math.prod(workload.types[o].shape) for o in workload.outputs)
    return total * 4 / 1e9  # every operand read or written once


class Kernel:
    def __init__(self, device, template, config, arrays):
        self.device = device
        compiled = device.compile(template.render(config, "opencl", device.limits))
        outs = [
            device.empty(math.prod(template.workload.types[o].shape) * 4)
            for o in template.workload.outputs
        ]
        self.compiled = compiled
        self.buffers = [device.upload(a) for a in template.prepare_weights(list(arrays))] + outs

    def seconds(self, number=3, repeat=3) -> float:
        return min(
            self.device.time(self.compiled, self.buffers, number=number, repeat=repeat, warmup=1)
        )


def _numpy_seconds(fn, arrays, repeat=5):
    fn(*arrays)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*arrays)
        times.append(time.perf_counter() - start)
    # OpenBLAS's threads spin for a while after a call; a kernel timed right after lost ~4%
    # (dense 1024^3 default config: 135.9 vs 139.0 GFLOP/s with this pause, 141.3 without numpy)
    time.sleep(0.2)
    return min(times)


def run_case(device, name, workload, numpy_fn, unit, rng):
    arrays = Task("", workload).inputs(seed=0)
    templates = [cls(workload) for cls in templates_for(workload)]
    # the template an untuned build runs (graph.executor._choose without logs)
    default = next((t for t in templates if t.untuned_choice(device.limits)), templates[0])
    default_kernel = Kernel(device, default, default.default_config(device.limits), arrays)
    # 50 random configs, split across the templates that compute this workload
    candidates = []
    for i, template in enumerate(templates):
        share = RANDOM_CONFIGS // len(templates) + (i < RANDOM_CONFIGS % len(templates))
        candidates += [(template, c) for c in template.space(device.limits).sample(share, rng)]
    scored = []
    for template, config in candidates:
        try:
            kernel = Kernel(device, template, config, arrays)
            scored.append((kernel.seconds(number=1, repeat=2), template, config, kernel))
        except Exception as exc:  # a config that fails is reported, never the winner
            print(f"  {template.name} {config}: {type(exc).__name__}", flush=True)
    _, best_template, best_config, best_kernel = min(scored, key=lambda s: s[0])
    rounds = {"numpy": [], "default": [], "best": []}
    for _ in range(ROUNDS):  # interleaved: the three are measured back to back each round
        rounds["numpy"].append(_numpy_seconds(numpy_fn, arrays))
        rounds["default"].append(default_kernel.seconds())
        rounds["best"].append(best_kernel.seconds())
    work = _work(workload, unit)
    rate = {k: work / float(np.median(v)) for k, v in rounds.items()}
    return {
        "name": name,
        "unit": unit,
        "numpy": rate["numpy"],
        "default": rate["default"],
        "best": rate["best"],
        "default_template": default.name,
        "best_template": best_template.name,
        "best_config": best_config.to_json(),
        "configs": len(scored),
    }


def main():
    device = open_device(None)
    rng = np.random.default_rng(0)
    rows = []
    for name, (workload, numpy_fn, unit) in cases().items():
        print(f"{name} ...", flush=True)
        row = run_case(device, name, workload, numpy_fn, unit, rng)
        print(
            f"  numpy {row['numpy']:.1f}  default {row['default']:.1f}  best {row['best']:.1f}"
            f" {unit}",
            flush=True,
        )
        rows.append(row)
    lines = [
        "| op | unit | numpy | default config | best of 50 random | default / numpy | "
        "best / numpy | best template: config |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['unit']} | {r['numpy']:.1f} | {r['default']:.1f} "
            f"({r['default_template']}) | {r['best']:.1f} | {r['default'] / r['numpy']:.2f} | "
            f"{r['best'] / r['numpy']:.2f} | {r['best_template']}: `{r['best_config']}` |"
        )
    report = (
        "# Single-op kernels vs numpy\n\n"
        + header(environment(device))
        + f"\n- numpy BLAS: {_blas()}\n\n"
        + "\n".join(lines)
        + "\n"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ops.md").write_text(report)
    print(report)


def _blas() -> str:
    try:
        from threadpoolctl import threadpool_info

        info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        return (
            ", ".join(
                f"{i['internal_api']} {i.get('version')} ({i.get('architecture')}, "
                f"{i['num_threads']} threads)"
                for i in info
            )
            or "unknown"
        )
    except ImportError:
        return "unknown (threadpoolctl not installed)"


if __name__ == "__main__":
    main()
