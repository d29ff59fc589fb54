"""The pieces of the reduction template: folds, per-op reductions and row geometry.

A *fold* is how the elements of one row collapse into a small state held in registers: its
variables with their identities, the statement that folds in one element, and the statement
that merges two partial states (work-item accumulators, then the work-group tree). Every merge
is order-independent, so the kernel may split a row among work-items any way it likes and
still produce numpy's answer: argmax/argmin break ties on the index itself (first, or last
with ``select_last_index``), not on which partial state came first.

``RowGeometry`` sees the reduction's input as rows: the kept axes enumerate rows, the reduced
axes a row's elements. Adjacent axes of the same kind merge into runs, so a contiguous
reduction costs one multiply-add per element however many axes it spans.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

from coretune.graph.ops.common import normalize_axes, normalize_axis

from ..ctypes_ import literal
from ..render import lane_names


@dataclass(frozen=True)
class Fold:
    """State variables (name, ctype, identity) and C statement templates over them.

    In ``update`` ``{s}`` is the state's prefix, ``{x}`` the element and ``{j}`` its index in
    the row. ``combine`` merges state ``{o}`` into ``{s}``; by default it is ``update`` applied
    to the other state's value and index (true of every fold whose state is one element)."""

    variables: tuple[tuple[str, str, str], ...]
    update: str
    combine: str = ""
    # Folds 2, 4 or 8 elements at once (state prefix, element variables -> statements), so
    # their math runs as one vector call; ``block_pad`` is an element that changes nothing.
    block: Callable[[str, list[str]], list[str]] | None = None
    block_pad: str = ""

    def declare(self, s: str) -> list[str]:
        return [f"{ctype} {s}_{name} = {identity};" for name, ctype, identity in self.variables]

    def fold(self, s: str, x: str, j: str) -> str:
        return self.update.format(s=s, x=x, j=j)

    def merge(self, s: str, o: str) -> str:
        if self.combine:
            return self.combine.format(s=s, o=o)
        return self.update.format(s=s, x=f"{o}_v", j=f"{o}_i")


SUM = Fold((("v", "float", "0.0f"),), "{s}_v += {x};")
PROD = Fold((("v", "float", "1.0f"),), "{s}_v *= {x};")
# numpy's max/min propagate NaN: a NaN element always wins, and once kept stays kept.
MAX = Fold((("v", "float", "(-INF)"),), "{s}_v = ({x} > {s}_v || {x} != {x}) ? {x} : {s}_v;")
MIN = Fold((("v", "float", "INF"),), "{s}_v = ({x} < {s}_v || {x} != {x}) ? {x} : {s}_v;")


def arg_fold(largest: bool, last: bool) -> Fold:
    """argmax/argmin as numpy: NaN beats any number (the first NaN is the answer), and equal
    values (NaNs among themselves too) go to the smaller index, or the larger one with
    ``last``. The identity's index loses every tie, so an empty partial state never wins."""
    cmp, tie = (">" if largest else "<"), (">" if last else "<")
    beats = (
        f"{{x}} {cmp} {{s}}_v || ({{x}} != {{x}} && {{s}}_v == {{s}}_v) || "
        f"(({{x}} == {{s}}_v || ({{x}} != {{x}} && {{s}}_v != {{s}}_v)) && {{j}} {tie} {{s}}_i)"
    )
    extreme = "(-INF)" if largest else "INF"
    lost_tie = "(-1)" if last else "2147483647"
    return Fold(
        (("v", "float", extreme), ("i", "int", lost_tie)),
        f"if ({beats}) {{{{ {{s}}_v = {{x}}; {{s}}_i = {{j}}; }}}}",
    )


def softmax_block(s: str, xs: list[str]) -> list[str]:
    """The online softmax update for a block of elements: the block's max first, then the
    block's exp(x - max) as one vector call. The max stays -inf while every element is, and
    the exps are then taken against 0 (giving 0, or NaN for a NaN element: numpy's answer)."""
    width, lanes = len(xs), lane_names(len(xs))
    exps = ", ".join(f"{x} - bb" for x in xs)
    return [
        "{",
        f"  float bm = {s}_m;",
        *(f"  bm = {x} > bm ? {x} : bm;" for x in xs),
        "  const float bb = bm == -INF ? 0.0f : bm;",
        f"  const float{width} be = exp(VEC{width}({exps}));",
        f"  {s}_s = {s}_s * exp({s}_m - bb) + ({' + '.join(f'be.{lane}' for lane in lanes)});",
        f"  {s}_m = bm;",
        "}",
    ]


# Online softmax: the running max m and the sum s of exp(x - m), rescaled when m grows, so a
# row is read once for both. -inf elements add nothing (exp(-inf - m) is 0 for finite m; when
# m is -inf too, exp(nan) must not poison s). A NaN element turns s into NaN, like numpy.
ONLINE_SOFTMAX = Fold(
    (("m", "float", "(-INF)"), ("s", "float", "0.0f")),
    "if ({x} > {s}_m) {{ {s}_s = {s}_s * exp({s}_m - {x}) + 1.0f; {s}_m = {x}; }}"
    " else if ({x} != -INF) {{ {s}_s += exp({x} - {s}_m); }}",
    "{{ float mx = {o}_m > {s}_m ? {o}_m : {s}_m;"
    " {s}_s = ({s}_s == 0.0f ? 0.0f : {s}_s * exp({s}_m - mx))"
    " + ({o}_s == 0.0f ? 0.0f : {o}_s * exp({o}_m - mx)); {s}_m = mx; }}",
    softmax_block,
    "(-INF)",
)

# Welford's running mean and sum of squared deviations, merged with Chan et al.'s formula:
# one read of the row, no cancellation of large squares.
WELFORD = Fold(
    (("n", "float", "0.0f"), ("mean", "float", "0.0f"), ("m2", "float", "0.0f")),
    "{{ {s}_n += 1.0f; float wd = {x} - {s}_mean; {s}_mean += wd / {s}_n;"
    " {s}_m2 += wd * ({x} - {s}_mean); }}",
    "{{ float wn = {s}_n + {o}_n; float wd = {o}_mean - {s}_mean;"
    " float wf = wn > 0.0f ? {o}_n / wn : 0.0f; {s}_mean += wd * wf;"
    " {s}_m2 += {o}_m2 + wd * wd * {s}_n * wf; {s}_n = wn; }}",
)


@dataclass(frozen=True)
class Reduction:
    """One core reduction op: which axes it folds, how, and what it makes of the state.

    ``per_element`` reductions (softmax, layer_norm) write every element of the row from the
    final state ``a`` and the element ``{x}``; the others write one value per row. ``finish``
    computes row constants once; ``result`` is a C expression (``{g}``/``{b}``: gamma/beta)."""

    fold: Fold
    axes: tuple[int, ...]
    result: str
    finish: str = ""
    per_element: bool = False
    # ``result`` as (per-element argument, vector builtin, per-element result) over ``{x}``
    # and {0}, for writing 2, 4 or 8 elements with one vector call (lower.VECTOR_MATH).
    vector_result: tuple[str, str, str] | None = None


REDUCE_OPS = {
    "sum": SUM,
    "mean": SUM,
    "global_avg_pool2d": SUM,
    "prod": PROD,
    "max": MAX,
    "global_max_pool2d": MAX,
    "min": MIN,
}
# Ops along one axis, or (layer_norm) along the trailing axes from one.
AXIS_OPS = {"argmax", "argmin", "softmax", "log_softmax", "layer_norm"}
OPS = set(REDUCE_OPS) | AXIS_OPS


def reduction_of(op: str, attrs: dict, shape: tuple[int, ...], beta: bool = False) -> Reduction:
    """The reduction a core op node computes on an input of ``shape`` (``beta``: layer_norm
    has a shift)."""
    rank = len(shape)
    if op in ("global_avg_pool2d", "global_max_pool2d"):
        axes = (2, 3)
    elif op in REDUCE_OPS:
        axes = normalize_axes(op, attrs["axes"], rank)
    elif op == "layer_norm":
        axes = tuple(range(normalize_axis(op, attrs["axis"], rank), rank))
    else:
        axes = (normalize_axis(op, attrs["axis"], rank),)
    length = math.prod(shape[a] for a in axes)
    inverse = literal(1.0 / max(length, 1), "float32")
    if op in REDUCE_OPS:
        averaged = op in ("mean", "global_avg_pool2d")
        return Reduction(REDUCE_OPS[op], axes, f"a_v * {inverse}" if averaged else "a_v")
    if op in ("argmax", "argmin"):
        fold = arg_fold(op == "argmax", attrs["select_last_index"])
        return Reduction(fold, axes, "(long)a_i")
    if op == "softmax":
        return Reduction(
            ONLINE_SOFTMAX,
            axes,
            "exp({x} - a_m) * inv_s",
            "float inv_s = 1.0f / a_s;",
            per_element=True,
            vector_result=("({x} - a_m)", "exp", "{0} * inv_s"),
        )
    if op == "log_softmax":
        return Reduction(
            ONLINE_SOFTMAX, axes, "({x} - a_m) - log_s", "float log_s = log(a_s);", per_element=True
        )
    eps = literal(attrs["epsilon"], "float32")
    return Reduction(
        WELFORD,
        axes,
        "({x} - a_mean) * rstd * {g}" + (" + {b}" if beta else ""),
        f"float rstd = 1.0f / sqrt(a_m2 * {inverse} + {eps});",
        per_element=True,
    )


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def prev_pow2(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def indent(lines: list[str], by: int = 2) -> list[str]:
    return [" " * by + line for line in lines]


def times(expr: str, factor: int) -> str:
    """``expr`` scaled by a constant, without the noise of ``* 1``."""
    return expr if factor == 1 else f"{expr} * {factor}"


def unflatten(flat: str, sizes) -> list[str]:
    """Row-major multi-index of ``flat`` (known to be < prod(sizes)) as pure C expressions."""
    total = stride = math.prod(sizes)
    out = []
    for d in sizes:
        stride //= d
        if d == 1:
            out.append("0")
            continue
        expr = f"({flat})" if stride == 1 else f"(({flat}) / {stride})"
        out.append(expr if stride * d == total else f"({expr} % {d})")
    return out


@dataclass(frozen=True)
class RowGeometry:
    shape: tuple[int, ...]
    reduced: tuple[int, ...]

    def axes(self, reduced: bool) -> list[int]:
        return [a for a in range(len(self.shape)) if (a in self.reduced) == reduced]

    @property
    def rows(self) -> int:
        return math.prod(self.shape[a] for a in self.axes(False))

    @property
    def length(self) -> int:
        return math.prod(self.shape[a] for a in self.axes(True))

    @property
    def contiguous(self) -> bool:
        """A row's elements are adjacent in memory (its innermost axis is reduced)."""
        inner = [a for a, d in enumerate(self.shape) if d > 1]
        return not inner or inner[-1] in self.reduced

    def runs(self, reduced: bool) -> list[tuple[int, int]]:
        """(size, stride) of each maximal group of adjacent axes of one kind, outermost first;
        size-1 axes are skipped (they never break adjacency)."""
        runs: list[list] = []  # [kind, size, stride]
        for a, d in enumerate(self.shape):
            if d == 1:
                continue
            kind, stride = a in self.reduced, math.prod(self.shape[a + 1 :])
            if runs and runs[-1][0] == kind:
                runs[-1][1:] = [runs[-1][1] * d, stride]
            else:
                runs.append([kind, d, stride])
        return [(size, stride) for kind, size, stride in runs if kind == reduced]

    def offset(self, reduced: bool, flat: str) -> str:
        """Linear offset in the input of a row (``reduced=False``) or of an element within
        a row, from its flat index."""
        runs = self.runs(reduced)
        indices = unflatten(flat, [size for size, _ in runs])
        terms = [i if s == 1 else f"{i} * {s}" for i, (_, s) in zip(indices, runs, strict=True)]
        return " + ".join(terms) or "0"

    def axis_indices(self, reduced: bool, flat: str) -> dict[int, str]:
        """Each axis of one kind's index (size-1 axes: "0"), from the flat index."""
        axes = self.axes(reduced)
        return dict(zip(axes, unflatten(flat, [self.shape[a] for a in axes]), strict=True))
