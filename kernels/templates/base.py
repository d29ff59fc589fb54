"""The template interface every kernel template implements."""

import dataclasses

from coretune.errors import CoretuneError

from ..device import DeviceLimits
from ..lower import OUTPUT_OFFSET
from ..render import KernelSpec, RenderedKernel, Scalar, renderer_for
from ..space import Config, ConfigSpace, InvalidConfig, Knob, Restriction
from ..workload import Workload


class TemplateMismatch(CoretuneError):
    """The workload is not one this template computes."""


class Template:
    """A parameterised kernel for a family of workloads.

    Subclasses declare ``name``, ``matches``, their knobs and restrictions, the work-group and
    local memory a config uses, a heuristic default, and ``spec`` (the kernel, dialect-neutral).
    """

    name: str = ""
    # Every store of the output goes through the Epilogue, and so does every read of the
    # epilogue's own inputs (a residual...): the output may be placed in a bigger buffer
    # (Workload.output_layout), and those inputs read from one (Workload.input_layouts), e.g.
    # the interior of a padded buffer.
    places_output: bool = False

    def __init__(self, workload: Workload):
        if not self.matches(workload):
            raise TemplateMismatch(f"{self.name} does not compute {workload.key_string()[:200]}")
        if workload.output_layout is not None and not self.places_output:
            raise TemplateMismatch(f"{self.name} stores its output row-major only")
        self.workload = workload
        for name, _ in workload.input_layouts:
            if not self.reads_placed(name):
                raise TemplateMismatch(f"{self.name} reads its input {name} row-major only")

    def reads_placed(self, name: str) -> bool:
        """Whether input ``name`` may be read from a bigger buffer (Workload.input_layouts):
        an input of the epilogue alone, in a template whose epilogue does all its reads."""
        return self.places_output and name not in self.workload.nodes[0].inputs

    @classmethod
    def matches(cls, workload: Workload) -> bool:
        raise NotImplementedError

    def knobs(self) -> list[Knob]:
        raise NotImplementedError

    def restrictions(self) -> list[Restriction]:
        return []

    def work_group(self, config: Config) -> tuple[int, ...]:
        raise NotImplementedError

    def local_mem_bytes(self, config: Config) -> int:
        return 0

    def default_config(self, limits: DeviceLimits) -> Config:
        raise NotImplementedError

    def spec(self, config: Config) -> KernelSpec:
        raise NotImplementedError

    def untuned_choice(self, limits: DeviceLimits) -> bool:
        """Whether the executor may pick this template, with its default config, for a
        workload no tuning log covers (among several that match, the most specialised such
        template is taken)."""
        return True

    def constant_inputs(self) -> list[str]:
        """Workload inputs that must be constants (prepare_weights transforms them)."""
        return []

    def prepare_weights(self, arrays: list) -> list:
        """The workload's input arrays (in order) -> the arrays the kernel's buffers take.
        Templates that pre-transform constant weights on the host (Winograd) override this;
        the executor calls it when it loads the params (once per model)."""
        return arrays

    # ---- shared ---------------------------------------------------------------------------
    def key(self) -> dict:
        return {"template": self.name, "workload": self.workload.key()}

    def space(self, limits: DeviceLimits) -> ConfigSpace:
        return ConfigSpace(
            self.knobs(), self.restrictions(), limits, self.work_group, self.local_mem_bytes
        )

    def checked_spec(self, config, limits: DeviceLimits) -> KernelSpec:
        """The kernel of a config that fits the device; an invalid one is rejected with its
        reason (the launch's group counts are known only once the spec is made)."""
        spec = self.spec(self.space(limits).check(config))
        too_many = limits.fits_launch(spec.launch.groups)
        if too_many:
            raise InvalidConfig(f"{self.name}: {too_many}")
        if self.workload.output_layout is not None:  # placed: its offset is an argument
            offset = Scalar(OUTPUT_OFFSET, "int", self.workload.output_layout[1])
            launch = dataclasses.replace(spec.launch, scalars=(*spec.launch.scalars, offset))
            spec = dataclasses.replace(spec, launch=launch)
        return spec

    def render(self, config, dialect: str, limits: DeviceLimits) -> RenderedKernel:
        """Render a config for a dialect; an invalid config is rejected with its reason."""
        return renderer_for(dialect).render(self.checked_spec(config, limits))
