"""Scratch benchmark of the gemm template on the default OpenCL device (PoCL here).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/gemm_probe.py [--configs 50]
    ... benchmarks/gemm_probe.py --configs 30 --shape 1,4096,4096

Times the default config and random valid configs of dense M x N x K (1024^3 unless told;
device events, best of 3 after a warm-up) against numpy's A @ W.T in the same run. GB/s counts
each operand and the output once: the measure for memory-bound batch-1 dense.
"""

import argparse
import json
import time

import numpy as np

from coretune.graph import GraphBuilder
from coretune.kernels.opencl import OpenCLDevice
from coretune.kernels.space import Config
from coretune.kernels.templates.gemm import GemmTemplate
from coretune.kernels.workload import Workload


def dense(m, n, k):
    b = GraphBuilder()
    return b.build(b.dense(b.input("x", (m, k)), b.input("w", (n, k))))


def numpy_seconds(m, n, k, repeat=7):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    a @ w.T
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ w.T
        best = min(best, time.perf_counter() - start)
    return best


def kernel_seconds(device, template, config, buffers):
    compiled = device.compile(template.render(config, "opencl", device.limits))
    return min(device.time(compiled, buffers, number=1, repeat=3, warmup=1))


def survey(device, m, n, k, count, seed, configs=()):
    template = GemmTemplate(Workload.from_graph(dense(m, n, k)))
    rng = np.random.default_rng(seed)
    buffers = [
        device.upload(rng.standard_normal(s, dtype=np.float32)) for s in ((m, k), (n, k))
    ] + [device.empty(4 * m * n)]
    default = template.default_config(device.limits)
    results = [("default", default, kernel_seconds(device, template, default, buffers))]
    picks = [Config(c) for c in configs] or template.space(device.limits).sample(count, rng)
    for config in picks:
        results.append(("random", config, kernel_seconds(device, template, config, buffers)))
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", default="1024,1024,1024")
    parser.add_argument("--config", action="append", default=[], help="JSON config to time")
    args = parser.parse_args()
    m, n, k = map(int, args.shape.split(","))
    device = OpenCLDevice()
    configs = [json.loads(c) for c in args.config]
    results = survey(device, m, n, k, args.configs, args.seed, configs)
    flops, traffic = 2.0 * m * n * k, 4.0 * (m * k + n * k + m * n)
    np_s = numpy_seconds(m, n, k)
    print(f"numpy: {flops / np_s / 1e9:.1f} GFLOP/s  {traffic / np_s / 1e9:.1f} GB/s")
    for kind, config, seconds in sorted(results, key=lambda r: r[2])[:15] + [results[0]]:
        print(
            f"{kind:8s} {flops / seconds / 1e9:7.1f} GFLOP/s {traffic / seconds / 1e9:6.1f} GB/s"
            f"  ratio {np_s / seconds:.2f}  {json.dumps(config.to_json())}"
        )


if __name__ == "__main__":
    main()
