"""The helper process of parallel_build.py: ``python -m coretune.kernels.build_helper JOB``
builds the job's program, prints BUILT, then launches each of its kernels once on zero-filled
buffers, so that PoCL's disk cache holds their work-group functions. (A module of its own: the
package does not import it, so ``-m`` runs its only copy.)"""

import json
import sys

from coretune.kernels.parallel_build import BUILT


def _serve(job: dict) -> None:
    """The helper: build the program, say so, launch each kernel once."""
    import numpy as np
    import pyopencl as cl

    from coretune.kernels.opencl import list_devices
    from coretune.kernels.render import Scalar

    device = list_devices()[job["device_index"]]
    if device.name.strip() != job["device_name"]:
        sys.exit(f"device {job['device_index']} is {device.name!r}, not {job['device_name']!r}")
    context = cl.Context([device])
    queue = cl.CommandQueue(context)
    program = cl.Program(context, job["source"]).build(job["options"])
    print(BUILT, flush=True)
    zero = np.zeros(1, np.uint8)
    for launch in job["launches"]:
        buffers = [cl.Buffer(context, cl.mem_flags.READ_WRITE, n) for n in launch["arg_bytes"]]
        for buffer, nbytes in zip(buffers, launch["arg_bytes"], strict=True):
            cl.enqueue_fill_buffer(queue, buffer, zero, 0, nbytes)
        kernel = cl.Kernel(program, launch["name"])
        scalars = [Scalar("", ctype, value).argument() for ctype, value in launch["scalars"]]
        kernel.set_args(*buffers, *scalars)
        cl.enqueue_nd_range_kernel(queue, kernel, launch["global_size"], launch["local_size"])
        queue.finish()


if __name__ == "__main__":
    with open(sys.argv[1]) as job_file:
        _serve(json.load(job_file))
