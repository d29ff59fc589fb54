"""ONNX Einsum -> existing core ops: transposes, reshapes, matmul (or a broadcast multiply),
sums, and take for diagonals.

The operands are contracted left to right. Before that, a label that one operand holds twice
becomes its diagonal, and a label no other operand or the output holds is summed away. Each
pair then becomes one batched matmul: the labels both hold and later need are its batch axes,
those only one holds its rows or columns, the labels both hold and nothing later needs its
inner axis; with no such inner label, a broadcast multiply. Ellipses are labels of their own,
aligned from the right, so numpy broadcasting applies to them as to the others.
"""

import math
import string
from collections import Counter

import numpy as np

from .convert_base import ConvertContext, converts


class _Operand:
    """A core value and the label of each of its axes."""

    def __init__(self, value, labels: str):
        self.value, self.labels = value, labels

    def size(self, label: str) -> int:
        return self.value.shape[self.labels.index(label)]


@converts("Einsum")
def einsum(ctx: ConvertContext):
    operands = [ctx.input(i) for i in range(len(ctx.node.input))]
    terms, output = _parse(ctx, ctx.attr("equation"), [v.ndim for v in operands])
    items = [_diagonals(ctx, _Operand(v, t)) for v, t in zip(operands, terms, strict=True)]
    _check_sizes(ctx, items)
    for k, item in enumerate(items):  # a label only this operand holds is summed now
        elsewhere = output + "".join(other.labels for j, other in enumerate(items) if j != k)
        items[k] = _sum_out(ctx, item, [c for c in item.labels if c not in elsewhere])
    result = items[0]
    for k, item in enumerate(items[1:], start=2):
        later = output + "".join(other.labels for other in items[k:])
        result = _contract(ctx, result, item, later)
    result = _sum_out(ctx, result, [c for c in result.labels if c not in output])
    return _transposed(ctx, result, output).value


def _parse(ctx, equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """Terms and output as strings of labels; an ellipsis becomes one digit per axis."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ctx.error(f"equation {equation!r} has {len(terms)} terms for {len(ranks)} inputs")
    if not all(_labels(t) for t in [*terms, rhs]):
        raise ctx.error(f"equation {equation!r}: a term is not letters with at most one '...'")
    widths = []
    for term, rank in zip(terms, ranks, strict=True):
        named = len(term.replace("...", ""))
        if named > rank or ("..." not in term and named != rank):
            raise ctx.error(f"equation {equation!r}: term {term!r} does not fit rank {rank}")
        widths.append(rank - named)
    broad = max(widths, default=0)
    if broad > 10:
        raise ctx.unsupported(f"einsum ellipses of more than 10 axes ({broad})")
    dots = "".join(str(i) for i in range(broad))  # digits: never labels of the equation
    terms = [t.replace("...", dots[broad - w :]) for t, w in zip(terms, widths, strict=True)]
    if not arrow:  # implicit: the broadcast axes, then the labels held once, sorted
        counts = Counter("".join(terms))
        return terms, dots + "".join(sorted(c for c in counts if counts[c] == 1 and c.isalpha()))
    output = rhs.replace("...", dots)
    if set(output) - set("".join(terms)) or len(set(output)) != len(output):
        raise ctx.error(f"equation {equation!r}: output labels must be distinct input labels")
    return terms, output


def _labels(term: str) -> bool:
    return term.count("...") <= 1 and all(
        c in string.ascii_letters for c in term.replace("...", "")
    )


def _diagonals(ctx, item: _Operand) -> _Operand:
    """x[..., i, ..., i, ...] -> its diagonal on a last axis i: the two axes moved last and
    flattened, then every (n + 1)-th element taken."""
    while True:
        repeated = [c for c, n in Counter(item.labels).items() if n > 1]
        if not repeated:
            return item
        label = repeated[0]
        first = item.labels.index(label)
        second = item.labels.index(label, first + 1)
        n, m = item.value.shape[first], item.value.shape[second]
        if n != m:
            raise ctx.error(f"the diagonal of {label!r} has axes of sizes {n} and {m}")
        rest = [a for a in range(len(item.labels)) if a not in (first, second)]
        perm = [*rest, first, second]
        moved = item.value if perm == sorted(perm) else ctx.transpose(item.value, axes=perm)
        flat = ctx.reshape(moved, newshape=[*moved.shape[:-2], n * n])
        picks = ctx.const(np.arange(n, dtype=np.int64) * (n + 1), stem="diagonal")
        labels = "".join(item.labels[a] for a in rest) + label
        item = _Operand(ctx.take(flat, picks, axis=-1), labels)


def _check_sizes(ctx, items: list[_Operand]) -> None:
    sizes: dict[str, set[int]] = {}
    for item in items:
        for label, size in zip(item.labels, item.value.shape, strict=True):
            sizes.setdefault(label, set()).add(size)
    for label, found in sizes.items():
        if len(found - {1}) > 1:
            raise ctx.error(f"label {label!r} has sizes {sorted(found)}, which do not broadcast")


def _sum_out(ctx, item: _Operand, labels) -> _Operand:
    if not labels:
        return item
    axes = [item.labels.index(c) for c in labels]
    kept = "".join(c for c in item.labels if c not in labels)
    return _Operand(ctx.sum(item.value, axes=axes, keepdims=False), kept)


def _transposed(ctx, item: _Operand, labels: str) -> _Operand:
    if labels == item.labels:
        return item
    perm = [item.labels.index(c) for c in labels]
    return _Operand(ctx.transpose(item.value, axes=perm), labels)


def _reshaped(ctx, value, shape):
    return value if tuple(shape) == value.shape else ctx.reshape(value, newshape=list(shape))


def _contract(ctx, a: _Operand, b: _Operand, later: str) -> _Operand:
    shared = [c for c in a.labels if c in b.labels]
    inner = [c for c in shared if c not in later]
    # An inner label of size 1 on one side broadcasts: each side sums it alone.
    broadcast = [c for c in inner if a.size(c) != b.size(c)]
    a, b = _sum_out(ctx, a, broadcast), _sum_out(ctx, b, broadcast)
    shared = [c for c in shared if c not in broadcast]
    inner = [c for c in inner if c not in broadcast]
    batch = "".join(c for c in shared if c not in inner)
    rows = "".join(c for c in a.labels if c not in shared)
    cols = "".join(c for c in b.labels if c not in shared)
    labels = batch + rows + cols
    if not inner:  # an outer or elementwise product: a broadcast multiply
        left = _transposed(ctx, a, batch + rows).value
        right = _transposed(ctx, b, batch + cols).value
        left = _reshaped(ctx, left, left.shape + (1,) * len(cols))
        right = _reshaped(
            ctx, right, right.shape[: len(batch)] + (1,) * len(rows) + right.shape[len(batch) :]
        )
        return _Operand(ctx.multiply(left, right), labels)
    inner = "".join(inner)
    left = _transposed(ctx, a, batch + rows + inner)
    right = _transposed(ctx, b, batch + inner + cols)
    m, k = (math.prod(left.size(c) for c in part) for part in (rows, inner))
    n = math.prod(right.size(c) for c in cols)
    lead_a = left.value.shape[: len(batch)]
    lead_b = right.value.shape[: len(batch)]
    product = ctx.matmul(
        _reshaped(ctx, left.value, lead_a + (m, k)), _reshaped(ctx, right.value, lead_b + (k, n))
    )
    lead = product.shape[: len(batch)]
    shape = lead + tuple(a.size(c) for c in rows) + tuple(b.size(c) for c in cols)
    return _Operand(_reshaped(ctx, product, shape), labels)
