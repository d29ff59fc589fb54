"""Concatenations in place: the parts of a concatenation stored straight into its output.

A concatenation copies every element of its inputs once per run (SqueezeNet's eight Fire
concatenations: 16 % of its device time). When each input is the one output of a kernel that
can store into a bigger buffer (placed stores, Workload.placed) and nothing else reads it,
its producer stores it at its offset in the concatenation's output instead, and the
concatenation runs nothing (a ConcatStep). The memory plan then gives the output its buffer
from the first producer's step on (passes.memory, ``placed``).
"""

import math
from dataclasses import dataclass

from .ir import Graph
from .passes import FusedGroup


@dataclass
class ConcatStep:
    """A concatenation whose parts its producers' kernels store into its output: no action."""

    group: FusedGroup


@dataclass(frozen=True)
class ConcatPart:
    """Where a part of an in-place concatenation lives in its output: at element
    ``offset + sum(index * strides)``."""

    concat: FusedGroup
    strides: tuple[int, ...]
    offset: int


def readers_and_producers(groups: list[FusedGroup]) -> tuple[dict, dict]:
    """tensor -> the groups that read it (each once, in order); tensor -> the group writing it."""
    readers: dict[str, list[FusedGroup]] = {}
    for group in groups:
        for name in dict.fromkeys(group.inputs):
            readers.setdefault(name, []).append(group)
    return readers, {name: group for group in groups for name in group.outputs}


def template_of(group: FusedGroup, templates: dict):
    """The template class of a kernel group, else None (views, pads, host steps)."""
    return None if group.kind in ("view", "pad") else templates.get(group.name)


def places(group: FusedGroup, templates: dict) -> bool:
    """Whether the kernel of ``group`` can store its one output into a bigger buffer."""
    cls = template_of(group, templates)
    return cls is not None and cls.places_output and len(group.outputs) == 1


def concats_in_place(graph: Graph, groups: list[FusedGroup], templates: dict, taken) -> dict:
    """The parts of concatenations that their producers store in place (tensor ->
    ConcatPart): concatenations alone in their group whose every input is a distinct kernel
    output (``templates``: kernel group name -> template class) that can be placed, read by
    the concatenation only, and not already placed elsewhere (``taken``: in a pad). Graph
    inputs, parameters and outputs own their memory; offsets must fit in 32 bits."""
    readers, producers = readers_and_producers(groups)
    found = {}
    for group in groups:
        if len(group.nodes) != 1 or group.nodes[0].op != "concatenate" or group.kind != "injective":
            continue
        node = group.nodes[0]
        output = node.outputs[0]
        shape = graph.types[output].shape
        parts = node.inputs
        if (
            len(set(parts)) != len(parts)
            or output in taken
            or math.prod(shape) >= 2**31
            or not all(
                _placeable(graph, t, group, producers, readers, templates, taken) for t in parts
            )
        ):
            continue
        axis = node.attrs["axis"] % len(shape)
        strides = tuple(math.prod(shape[a + 1 :]) for a in range(len(shape)))
        start = 0
        for part in parts:
            found[part] = ConcatPart(group, strides, start * strides[axis])
            start += graph.types[part].shape[axis]
    return found


def _placeable(graph, tensor, concat, producers, readers, templates, taken) -> bool:
    own_memory = tensor in graph.inputs or tensor in graph.params or tensor in graph.outputs
    return (
        not own_memory
        and tensor not in taken
        and tensor in producers
        and places(producers[tensor], templates)
        and readers[tensor] == [concat]
    )
