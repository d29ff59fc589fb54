"""A model's kernels built on several cores: helper processes that fill PoCL's kernel cache.

PoCL compiles a kernel's work-group function at the kernel's first launch, 20-300 ms of LLVM
each (SqueezeNet's 38 kernels: 4.0 s of its 5.3 s cold compile), and one process compiles one
at a time: two contexts launched from two threads took as long as one. Its disk cache
(POCL_CACHE_DIR) is shared by processes, keyed by the program's source and options and the
launch's shape. So the kernels are split into consecutive parts, each built as one program:
a helper process per part after the first builds its part's program, says so, then launches
each of its kernels once on zero-filled buffers of the sizes the model binds, last kernel
first. Meanwhile this process builds the first part, then the others (from the cache, where a
helper has built them), and runs the model once (the executor's warm-up): going forward, it
finds in the cache what the helpers have built by then and compiles the rest itself, so a slow
or dead helper costs time, never a result. Zeros are what the warm-up runs on as well: valid
for every kernel (an index 0 is in range).
"""

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

# Below this many kernels per part, a helper's start (~0.2 s) costs more than it saves: each
# kernel's work-group function is 150-300 ms of LLVM, so even 3 are worth a helper (SqueezeNet,
# 14 distinct kernels: one part 5.1-5.3 s, two parts of 7 3.7-4.1 s; PoCL, 2 EPYC cores).
MIN_KERNELS_PER_PART = 3
BUILT = "built"  # the line a helper prints once its program is in the cache (build_helper.py)


def part_count(kernels: int) -> int:
    """How many parts to build ``kernels`` kernels in: one per core (CORETUNE_BUILD_JOBS
    overrides), at least MIN_KERNELS_PER_PART kernels each."""
    jobs = os.environ.get("CORETUNE_BUILD_JOBS", "").strip()
    if jobs.isdigit():
        cores = int(jobs)
    elif hasattr(os, "sched_getaffinity"):  # the cores this process may run on (Linux)
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    return max(1, min(cores, kernels // MIN_KERNELS_PER_PART))


def split(items: list, parts: int) -> list[list]:
    """``items`` in ``parts`` consecutive runs whose lengths differ by one at most."""
    size, extra = divmod(len(items), parts)
    runs, start = [], 0
    for part in range(parts):
        end = start + size + (part < extra)
        runs.append(items[start:end])
        start = end
    return runs


@dataclass(frozen=True)
class HelperLaunch:
    """One launch a helper makes: a kernel of its program, its shape, its buffers' sizes and
    its scalar arguments (neutral type, value)."""

    name: str
    global_size: tuple[int, ...]
    local_size: tuple[int, ...]
    arg_bytes: tuple[int, ...]
    scalars: tuple[tuple[str, int], ...] = ()


class BuildHelper:
    """A helper process building one program and launching its kernels (``launches``, in the
    order given) on the device at ``device_index`` of pyopencl's device list."""

    python = sys.executable  # the interpreter it runs in

    def __init__(self, device_index: int, device_name: str, source: str, options, launches):
        job = {
            "device_index": device_index,
            "device_name": device_name,
            "source": source,
            "options": list(options),
            "launches": [asdict(launch) for launch in launches],
        }
        # A file, not stdin: a job of a few hundred kB would block a pipe until the child reads.
        handle, self._job_path = tempfile.mkstemp(prefix="coretune-build-", suffix=".json")
        with os.fdopen(handle, "w") as file:
            json.dump(job, file)
        try:
            self._process = subprocess.Popen(
                [self.python, "-m", "coretune.kernels.build_helper", self._job_path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:  # no such interpreter, no processes left: this process builds it all
            self._process = None

    def wait_built(self, timeout: float) -> bool:
        """Wait until the helper's program is in the cache; False if it failed or took over
        ``timeout`` seconds (the caller then builds the program itself)."""
        if self._process is None:
            return False
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self._process.stdout], [], [], left)
            if not readable:
                break
            line = self._process.stdout.readline()
            if not line:  # it exited
                return False
            if line.strip() == BUILT:
                return True
        return False

    def close(self) -> None:
        """Stop the helper (what it has not built by now, the warm-up has built itself)."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            self._process.stdout.close()
        try:
            os.unlink(self._job_path)
        except FileNotFoundError:
            pass
