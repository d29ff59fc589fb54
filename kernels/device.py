"""What a config space needs to know about a device, and the device's stable fingerprint.

``DeviceLimits`` is plain data, so a space can reject impossible configs (too many work-items,
too much local memory) before anything is rendered or compiled, and tests can build limits for
devices that are not present (a CUDA GPU, an Apple GPU) to check renderings for them.
"""

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DeviceLimits:
    max_work_group_size: int
    max_work_item_sizes: tuple[int, int, int]
    local_mem_bytes: int
    compute_units: int = 1
    preferred_vector_width: int = 4  # float lanes of one native vector op
    warp_size: int = 1  # work-items that run in lock step (32 on NVIDIA, 1 on a CPU)
    max_registers_per_thread: int = 255
    # Work-groups per launch, per axis (CUDA's grid y and z are 16-bit; OpenCL has no such cap).
    max_groups: tuple[int, int, int] = (2**63 - 1,) * 3
    global_mem_bytes: int = 0  # device memory in all (0: not known)
    max_buffer_bytes: int = 0  # the largest single allocation (0: not known)

    def fits_work_group(self, shape: tuple[int, ...]) -> str | None:
        """None when ``shape`` is a legal work-group, else the reason it is not."""
        total = 1
        for axis, size in enumerate(shape):
            total *= size
            if size > self.max_work_item_sizes[axis]:
                return f"work-group axis {axis} is {size} > {self.max_work_item_sizes[axis]}"
        if total > self.max_work_group_size:
            return f"work-group size {total} > device maximum {self.max_work_group_size}"
        return None

    def fits_launch(self, groups: tuple[int, ...]) -> str | None:
        """None when ``groups`` work-groups per axis can be launched, else the reason."""
        for axis, (count, most) in enumerate(zip(groups, self.max_groups, strict=False)):
            if count > most:
                return f"{count} work-groups on axis {axis} > device maximum {most}"
        return None

    def fits_local_memory(self, nbytes: int) -> str | None:
        if nbytes > self.local_mem_bytes:
            return f"local memory {nbytes} B > device maximum {self.local_mem_bytes} B"
        return None


@dataclass(frozen=True)
class DeviceInfo:
    """A device's identity, stable across runs: the key that tuning logs are filed under."""

    backend: str  # "opencl" or "cuda"
    platform: str
    name: str
    driver_version: str
    limits: DeviceLimits

    def fingerprint(self) -> dict:
        return {
            "backend": self.backend,
            "platform": self.platform,
            "name": self.name,
            "driver_version": self.driver_version,
            "compute_units": self.limits.compute_units,
            "max_work_group_size": self.limits.max_work_group_size,
            "local_mem_bytes": self.limits.local_mem_bytes,
        }

    def to_json(self) -> dict:
        return asdict(self)


# Limits of the targets we render for without being able to run on them here.
CUDA_SM80 = DeviceLimits(
    1024,
    (1024, 1024, 64),
    48 * 1024,
    compute_units=108,
    preferred_vector_width=4,
    warp_size=32,
    max_registers_per_thread=255,
    max_groups=(2**31 - 1, 65535, 65535),
)
APPLE_M1 = DeviceLimits(
    1024, (1024, 1024, 1024), 32 * 1024, compute_units=8, preferred_vector_width=4, warp_size=32
)
