"""The core-op registry: one ``OpDef`` per op, declared once in ``graph/ops``.

An OpDef is everything the rest of coretune knows about an op: its typed attributes, a shape
rule and a dtype rule (pure functions of input shapes/dtypes and attributes), a numpy
reference (the semantic ground truth for the reference executor, constant folding and every
kernel test) and its fusion pattern.
"""

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coretune.errors import AttrError, GraphError, ShapeError

from .dtypes import check_dtype

Shape = tuple[int, ...]


class Pattern(enum.IntEnum):
    """How an op may fuse (the ordering follows NNVM/TVM's OpPattern)."""

    ELEMWISE = 0  # out[i] = f(in[i]), same shape
    BROADCAST = 1  # elementwise with numpy broadcasting
    INJECTIVE = 2  # each output element reads a computable set of input elements
    REDUCTION = 3  # reduces along axes; may absorb injective ops before it
    OUT_ELEMWISE_FUSABLE = 4  # complex op (dense, conv) that absorbs an elementwise epilogue
    OPAQUE = 8  # does not fuse


_REQUIRED = object()

# kind -> (python types accepted, canonicaliser)
_KINDS: dict[str, tuple[tuple[type, ...], Callable[[Any], Any]]] = {
    "int": ((int, np.integer), int),
    "float": ((int, float, np.integer, np.floating), float),
    "bool": ((bool, np.bool_, int, np.integer), bool),
    "str": ((str,), str),
    "dtype": ((str,), check_dtype),
    "ints": ((list, tuple, np.ndarray), lambda v: tuple(int(x) for x in v)),
    "floats": ((list, tuple, np.ndarray), lambda v: tuple(float(x) for x in v)),
}


@dataclass(frozen=True)
class Attr:
    """A typed attribute. ``default=None`` with ``optional=True`` means 'absent'."""

    name: str
    kind: str
    default: Any = _REQUIRED
    choices: tuple = ()
    optional: bool = False
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def coerce(self, op: str, value: Any) -> Any:
        if value is None and self.optional:
            return None
        types, canon = _KINDS[self.kind]
        if isinstance(value, bool) and self.kind in ("int", "float"):
            raise AttrError(f"{op}: attribute {self.name!r} must be {self.kind}, got a bool")
        if not isinstance(value, types):
            raise AttrError(
                f"{op}: attribute {self.name!r} must be {self.kind}, got {type(value).__name__}"
            )
        try:
            value = canon(value)
        except (TypeError, ValueError, GraphError) as exc:
            raise AttrError(f"{op}: attribute {self.name!r}: {exc}") from None
        if self.choices and value not in self.choices:
            raise AttrError(
                f"{op}: attribute {self.name!r} must be one of {self.choices}, got {value!r}"
            )
        return value

    def describe(self) -> str:
        text = f"{self.name}: {self.kind}"
        if self.choices:
            text += " in {" + ", ".join(map(str, self.choices)) + "}"
        if not self.required:
            text += f" = {self.default!r}"
        return text


@dataclass(frozen=True)
class OpDef:
    """One core op. ``inputs`` names its operands: ``"bias?"`` is optional, ``"*xs"`` variadic.

    ``shape(in_shapes, **attrs)`` and ``dtype(in_dtypes, **attrs)`` return one entry per output;
    ``reference(*arrays, **attrs)`` returns a tuple of arrays. Rules raise ``ShapeError``.
    """

    name: str
    level: int
    pattern: Pattern
    inputs: tuple[str, ...]
    shape: Callable[..., list[Shape]]
    dtype: Callable[..., list[str]]
    reference: Callable[..., tuple[np.ndarray, ...]]
    attrs: tuple[Attr, ...] = ()
    doc: str = ""
    attr_index: dict[str, Attr] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "attr_index", {a.name: a for a in self.attrs})

    @property
    def variadic(self) -> bool:
        return any(i.startswith("*") for i in self.inputs)

    def arity(self) -> tuple[int, int | None]:
        """(fewest, most) operands; most is None for variadic ops."""
        fewest = sum(1 for i in self.inputs if not i.endswith("?") and not i.startswith("*"))
        return fewest, (None if self.variadic else len(self.inputs))

    def check_arity(self, count: int) -> None:
        fewest, most = self.arity()
        if count < max(fewest, 1 if self.variadic else 0) or (most is not None and count > most):
            want = f"{fewest}..{most}" if most != fewest else str(fewest)
            if most is None:
                want = f"at least {max(fewest, 1)}"
            raise GraphError(f"{self.name}: takes {want} inputs, got {count}")

    def normalize_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults, coerce kinds, reject unknown or missing attributes."""
        unknown = sorted(set(attrs) - set(self.attr_index))
        if unknown:
            raise AttrError(f"{self.name}: unknown attribute(s) {', '.join(unknown)}")
        out = {}
        for attr in self.attrs:
            if attr.name in attrs:
                out[attr.name] = attr.coerce(self.name, attrs[attr.name])
            elif attr.required:
                raise AttrError(f"{self.name}: missing required attribute {attr.name!r}")
            else:
                out[attr.name] = attr.default
        return out

    def infer(
        self, shapes: Sequence[Shape], dtypes: Sequence[str], attrs: dict[str, Any]
    ) -> list[tuple[Shape, str]]:
        self.check_arity(len(shapes))
        out_shapes = self.shape([tuple(s) for s in shapes], **attrs)
        out_dtypes = self.dtype(list(dtypes), **attrs)
        if len(out_shapes) != len(out_dtypes):
            raise GraphError(f"{self.name}: shape and dtype rules disagree on output count")
        return [(tuple(int(d) for d in s), t) for s, t in zip(out_shapes, out_dtypes, strict=True)]

    def evaluate(self, arrays: Sequence[np.ndarray], attrs: dict[str, Any]) -> list[np.ndarray]:
        """Run the numpy reference; outputs are cast to the dtypes the dtype rule promises."""
        out_dtypes = self.dtype([a.dtype.name for a in arrays], **attrs)
        with np.errstate(all="ignore"):
            results = self.reference(*arrays, **attrs)
        return [
            np.asarray(r).astype(t, copy=False) for r, t in zip(results, out_dtypes, strict=True)
        ]


_REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    if op.name in _REGISTRY:
        raise ValueError(f"core op {op.name!r} registered twice")
    _REGISTRY[op.name] = op
    return op


def get_op(name: str) -> OpDef:
    _load_ops()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise GraphError(f"unknown core op {name!r}") from None


def all_ops() -> list[OpDef]:
    _load_ops()
    return sorted(_REGISTRY.values(), key=lambda op: (op.level, op.name))


def _load_ops() -> None:
    from . import ops  # noqa: F401  (importing the package registers every op)


def shape_error(op: str, message: str) -> ShapeError:
    return ShapeError(f"{op}: {message}")
