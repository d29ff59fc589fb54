"""A template rigged to fail on purpose, one knob value per failure kind (tuner tests only)."""

from coretune.kernels.render import KernelSpec
from coretune.kernels.space import Knob
from coretune.kernels.templates.injective import InjectiveTemplate

NAME = "tests.rigged_template:RiggedTemplate"


class RiggedTemplate(InjectiveTemplate):
    name = NAME

    def knobs(self):
        return super().knobs() + [
            Knob("fault", ("none", "compile", "hang", "wrong", "crash"), "the failure to inject")
        ]

    def spec(self, config):
        return with_fault(super().spec(config), config["fault"])


def with_fault(spec: KernelSpec, fault: str) -> KernelSpec:
    """``spec`` with one failure injected: none, compile, hang, wrong or crash."""
    if fault == "none":
        return spec
    body = {
        "compile": "  this is not C;\n",
        # A volatile read each iteration: the compiler may not remove the loop.
        "hang": "  volatile int spin = 0;\n  while (spin == 0) { }\n",
        "wrong": "",
        # Kills the device worker (SIGILL), as a driver crash would.
        "crash": "  __builtin_trap();\n",
    }[fault] + spec.body
    if fault == "wrong":
        body += f"\n  if (GROUP_ID(0) == 0 && LOCAL_ID(0) == 0) {spec.buffers[-1].name}[0] += 1.0f;"
    return KernelSpec(
        spec.name, spec.buffers, body, spec.launch, spec.local_arrays, spec.helpers, spec.tables
    )
