"""The template registry: every template by name, and the ones that compute a workload."""

from .base import Template, TemplateMismatch
from .conv2d_depthwise import DepthwiseConv2dTemplate
from .conv2d_direct import Conv2dDirectTemplate
from .conv2d_gemm import Conv2dGemmTemplate
from .conv2d_transpose import Conv2dTransposeTemplate
from .conv2d_winograd import Conv2dWinogradTemplate
from .gemm import GemmTemplate
from .injective import InjectiveTemplate
from .pool import Pool2dTemplate
from .reduction import ReductionTemplate

# From general to specialised: where several templates compute a workload, the later one is
# the untuned default where it says it suits the device (Winograd over direct for 3x3 convs on
# GPUs, the depthwise kernel for depthwise convs); the tuner measures every applicable one.
TEMPLATES: dict[str, type[Template]] = {
    t.name: t
    for t in (
        InjectiveTemplate,
        ReductionTemplate,
        GemmTemplate,
        Pool2dTemplate,
        Conv2dTransposeTemplate,
        Conv2dDirectTemplate,
        Conv2dGemmTemplate,
        Conv2dWinogradTemplate,
        DepthwiseConv2dTemplate,
    )
}


def get_template(name: str) -> type[Template]:
    """A template by registry name, or by 'package.module:Class' for templates kept outside
    coretune (they are imported on demand, also in tuning worker processes)."""
    if name in TEMPLATES:
        return TEMPLATES[name]
    if ":" in name:
        import importlib

        module, _, cls = name.partition(":")
        try:
            return getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as exc:
            raise TemplateMismatch(f"cannot load template {name!r}: {exc}") from None
    raise TemplateMismatch(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}")


def templates_for(workload) -> list[type[Template]]:
    """Every template that computes ``workload``, most specialised first."""
    return [t for t in TEMPLATES.values() if t.matches(workload)][::-1]


__all__ = ["TEMPLATES", "Template", "TemplateMismatch", "get_template", "templates_for"]
