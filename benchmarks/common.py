"""Shared by the benchmark scripts: environment facts to print beside every table."""

import os
import platform
import sys
from datetime import date


def environment(device=None) -> dict:
    import numpy

    import coretune

    info = {
        "date": date.today().isoformat(),
        "coretune": coretune.__version__,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        # PoCL's worker pinning changes big kernels' times by up to 2x (README).
        "POCL_AFFINITY": os.environ.get("POCL_AFFINITY", "(unset)"),
    }
    if device is not None:
        fp = device.info.fingerprint()
        info["device"] = f"{fp['name']} ({fp['platform']}, driver {fp['driver_version']})"
        info.update(device.versions())  # pyopencl, or the CUDA binding
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def header(info: dict) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in info.items())
