"""Concatenations in place: the parts of a concatenation stored straight into its output.

A concatenation copies every element of its inputs once per run (SqueezeNet's eight Fire
concatenations: 16 % of its device time). When each input is the one output of a kernel that
can store into a bigger buffer (placed stores, Workload.placed) and nothing else reads it,
its producer stores it at its offset in the concatenation's output instead, and the
concatenation runs nothing (a ConcatStep). The memory plan then gives the output its buffer
from the first producer's step on (passes.memory, ``placed``).

A chain of concatenations each extending the one before (passes.fuse.concat_chains: a
DenseNet block, where layer i concatenates the block's input and every feature map before
it, up to 32 parts) is one buffer: the parts are stored into the last concatenation's
output, and each earlier one is a prefix of it that its readers read in place. Without it,
DenseNet-121's 58 dense layers each read all their parts again through a concatenation.
"""

import math
from dataclasses import dataclass

from .ir import Graph
from .passes import FusedGroup
from .passes.fuse import concat_chains


@dataclass
class ConcatStep:
    """A concatenation whose parts its producers' kernels store into its output: no action.
    ``holder``: the tensor whose buffer holds its output (its own, or the last one's of its
    chain, of which it is a prefix)."""

    group: FusedGroup
    holder: str


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
    """Where the parts of concatenations that run no kernel live (tensor -> ConcatPart):
    for a concatenation alone in its group whose every input is a distinct kernel output
    (``templates``: kernel group name -> template class) that can be placed, read by the
    concatenation only, and not already placed elsewhere (``taken``: in a pad), its parts;
    for a chain of concatenations, the parts of its last one (read by the chain only, but
    for the first part: a prefix), and the outputs of the others, at offset 0. Graph
    inputs, parameters and outputs own their memory; offsets must fit in 32 bits."""
    readers, producers = readers_and_producers(groups)
    group_of = {g.name: g for g in groups}
    found, chained = {}, set()
    for chain in concat_chains(graph):
        links = [group_of.get(node.name) for node in chain]
        if any(link is None or len(link.nodes) != 1 for link in links):
            continue
        last = links[-1]
        allowed = {t: links for t in last.inputs}  # the groups that may read each part
        first = last.inputs[0]
        allowed[first] = links + readers[first]  # at offset 0, a prefix: read it in place
        if any(link.outputs[0] in taken for link in links) or not all(
            _placeable(graph, t, allowed[t], producers, readers, templates, taken)
            for t in last.inputs
        ):
            continue
        found.update(_parts(graph, last))
        for link in links[:-1]:
            found[link.outputs[0]] = ConcatPart(last, found[last.inputs[0]].strides, 0)
        chained.update(link.name for link in links)
    for group in groups:
        if (
            len(group.nodes) != 1
            or group.nodes[0].op != "concatenate"
            or group.kind != "injective"
            or group.name in chained
        ):
            continue
        node = group.nodes[0]
        output = node.outputs[0]
        parts = node.inputs
        if (
            len(set(parts)) != len(parts)
            or output in taken
            or math.prod(graph.types[output].shape) >= 2**31
            or not all(
                _placeable(graph, t, [group], producers, readers, templates, taken) for t in parts
            )
        ):
            continue
        found.update(_parts(graph, group))
    return found


def _parts(graph: Graph, concat: FusedGroup) -> dict:
    """Each part of a concatenation at its offset in the output."""
    node = concat.nodes[0]
    shape = graph.types[node.outputs[0]].shape
    axis = node.attrs["axis"] % len(shape)
    strides = tuple(math.prod(shape[a + 1 :]) for a in range(len(shape)))
    start, found = 0, {}
    for part in node.inputs:
        found[part] = ConcatPart(concat, strides, start * strides[axis])
        start += graph.types[part].shape[axis]
    return found


def concat_holders(groups: list[FusedGroup], in_place: dict) -> dict[str, str]:
    """Concatenation group name -> the tensor whose buffer holds its output, for those that
    run no kernel (``in_place``: concats_in_place's answer)."""
    holders = {part.concat.name: part.concat.outputs[0] for part in in_place.values()}
    for group in groups:  # the links of a chain before its last, prefixes of its output
        if (
            group.nodes[0].op == "concatenate"
            and group.outputs[0] in in_place
            and all(t in in_place for t in group.inputs)
        ):
            holders[group.name] = in_place[group.outputs[0]].concat.outputs[0]
    return holders


def _placeable(graph, tensor, concats, producers, readers, templates, taken) -> bool:
    own_memory = tensor in graph.inputs or tensor in graph.params or tensor in graph.outputs
    return (
        not own_memory
        and tensor not in taken
        and tensor in producers
        and places(producers[tensor], templates)
        and all(r in concats for r in readers[tensor])
    )
