"""Fused epilogues: the elementwise chain after a dense/matmul/conv/pool ("anchor") node.

A workload whose first node is the anchor may continue with elementwise and broadcasting ops
of the anchor's output shape: bias, any activation, batch-norm scale and shift, a residual add
with another input. The template computes the anchor's value in a register; the epilogue turns
it into the workload's output and stores it. (Reshape-like views need no kernel at all: the
executor aliases their buffers.)
"""

from coretune.graph.registry import Pattern, get_op

from .ctypes_ import BUFFER_TYPES, buffer_type
from .lower import OUTPUT_OFFSET, RULES, VECTOR_MATH, ElementwiseLowering, element_offset
from .workload import Workload


def epilogue_fusable(workload: Workload, anchor_ops: set[str]) -> bool:
    nodes = workload.nodes
    if not nodes or nodes[0].op not in anchor_ops or len(workload.outputs) != 1:
        return False
    shape = workload.types[nodes[0].outputs[0]].shape
    return (
        all(
            get_op(n.op).pattern <= Pattern.BROADCAST
            and n.op in RULES
            and workload.types[n.outputs[0]].shape == shape
            for n in nodes[1:]
        )
        and all(t.dtype in BUFFER_TYPES for t in workload.types.values())
        and workload.outputs[0] == nodes[-1].outputs[0]
    )


class Epilogue:
    """Emits the statements that finish and store one element of the anchor's output."""

    def __init__(self, workload: Workload):
        self.workload = workload
        self.anchor_out = workload.nodes[0].outputs[0]
        self.output = workload.outputs[0]
        self.shape = workload.types[self.anchor_out].shape
        self._producers = {t: n for n in workload.nodes[1:] for t in n.outputs}

    @property
    def inputs(self) -> list[str]:
        """Buffers the epilogue reads (bias, residual...), in workload input order."""
        used = {t for n in self.workload.nodes[1:] for t in n.inputs}
        return [name for name, _ in self.workload.inputs if name in used]

    @property
    def vector_math(self) -> bool:
        """Whether the chain calls math that store_lanes evaluates a vector at a time."""
        return any(n.op in VECTOR_MATH for n in self.workload.nodes[1:])

    def _canonical(self, index: tuple[str, ...]) -> tuple[str, ...]:
        # Broadcasting reads size-1 axes at index "0": bind the anchor under the same spelling.
        return tuple("0" if d == 1 else i for i, d in zip(index, self.shape, strict=True))

    def _lowering(self, prefix: str) -> ElementwiseLowering:
        w = self.workload
        layouts = dict(w.input_layouts)
        return ElementwiseLowering(
            w.types, self._producers, lambda n, i: f"{n}[{i}]", prefix, layouts
        )

    def store(self, acc: str, index: tuple[str, ...], prefix: str = "e") -> list[str]:
        """C statements: finish ``acc`` (the anchor at ``index``) and store it to the output."""
        index = self._canonical(index)
        lw = self._lowering(prefix)
        lw.bind(self.anchor_out, index, acc)
        value = lw.value(self.output, index)
        out_type = buffer_type(self.workload.types[self.output].dtype)
        return lw.lines + [f"{self.output}[{self.output_offset(index)}] = ({out_type})({value});"]

    def store_lanes(
        self,
        accs: list[str],
        reads: list[tuple[str, ...]],
        stores: list[tuple[str, ...]],
        guards: list[str],
        prefix: str = "e",
    ) -> list[str]:
        """``store`` for the lanes of a vector at once, so that the chain's math runs as one
        vector call per op (ElementwiseLowering.batch_math). Lane k finishes ``accs[k]`` with
        the epilogue's inputs read at ``reads[k]``, which must lie inside the output even for
        a lane outside it (clamped), and is stored at ``stores[k]`` if ``guards[k]`` holds
        (an empty guard: always)."""
        reads = [self._canonical(index) for index in reads]
        lw = self._lowering(prefix)
        for acc, index in zip(accs, reads, strict=True):
            lw.bind(self.anchor_out, index, lw.temp("float", acc))
        lw.batch_math(self.output, reads)
        values = [lw.value(self.output, index) for index in reads]
        out_type = buffer_type(self.workload.types[self.output].dtype)
        return lw.lines + [
            (f"if ({guard}) " if guard else "")
            + f"{self.output}[{self.output_offset(self._canonical(index))}] = "
            f"({out_type})({value});"
            for guard, index, value in zip(guards, stores, values, strict=True)
        ]

    def store_tile(self, outputs: list[tuple[str, tuple, tuple, str]]) -> list[str]:
        """``store_lanes`` over a register tile's outputs, given as (acc, read index, store
        index, guard), 8 at a time, each 8 in a scope of its own."""
        lines = []
        for start in range(0, len(outputs), 8):
            group = outputs[start : start + 8]
            accs, reads, stores, guards = (list(f) for f in zip(*group, strict=True))
            block = self.store_lanes(accs, reads, stores, guards)
            lines += ["{", *("  " + line for line in block), "}"]
        return lines

    def output_offset(self, index: tuple[str, ...]) -> str:
        """The element ``index`` of the output in its buffer: row-major, or placed, at the
        offset that the kernel argument OUTPUT_OFFSET holds (Template.checked_spec passes
        it), so that kernels storing into different places of their buffers are one program
        (the layers of a dense block, each storing its features after the last's)."""
        layout = self.workload.output_layout
        if layout is not None:
            layout = (layout[0], OUTPUT_OFFSET)
        return element_offset(index, self.shape, layout)
