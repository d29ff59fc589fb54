"""Sample invocations of every core op: input types and attributes, including edge sizes.

Shared by the op tests here and, later, by the kernel tests: each case is run on random
inputs (never zeros) and compared against the op's numpy reference.
"""

from dataclasses import dataclass, field

import numpy as np

from coretune.graph.random import random_array

F = "float32"


@dataclass(frozen=True)
class OpCase:
    op: str
    inputs: tuple[tuple[tuple[int, ...], str], ...]
    attrs: dict = field(default_factory=dict)

    def arrays(self, seed=0):
        rng = np.random.default_rng(seed)
        out = []
        for shape, dtype in self.inputs:
            array = random_array(shape, dtype, rng)
            positive = self.op in ("log", "sqrt", "rsqrt") or (self.op, len(out)) in (
                ("batch_norm", 4),
                ("power", 0),
            )
            if positive and dtype.startswith("float"):
                array = np.abs(array) + np.asarray(0.5, dtype)  # keep the domain valid
            out.append(array)
        if self.op in ("mod", "fmod"):  # both signs, never a zero divisor
            out = [
                a if a.dtype.kind == "f" else a * rng.choice([-1, 1], a.shape).astype(a.dtype)
                for a in out
            ]
        if self.op == "take_along_axis":
            (shape, _), (index_shape, index_dtype) = self.inputs
            n = shape[self.attrs.get("axis", 0)]
            out[1] = rng.integers(-n, n, size=index_shape).astype(index_dtype)
        if self.op == "isnan":
            out[0].reshape(-1)[::3] = np.nan
        if self.op in ("gather_nd", "scatter_nd"):
            out[1] = self._index_rows(rng)
        if self.op == "take":
            out[1] = rng.integers(
                -self.inputs[0][0][self.attrs.get("axis", 0)],
                self.inputs[0][0][self.attrs.get("axis", 0)],
                size=self.inputs[1][0],
            ).astype(self.inputs[1][1])
        return out

    def _index_rows(self, rng):
        """Valid index rows for gather_nd/scatter_nd, about half of them negative; distinct
        where scatter_nd replaces (ONNX leaves repeated rows undefined there)."""
        (shape, _), (index_shape, index_dtype) = self.inputs[:2]
        lead = self.attrs.get("batch_dims", 0)
        sizes = shape[lead : lead + index_shape[-1]]
        count = int(np.prod(index_shape[:-1]))
        repeats = self.op == "gather_nd" or self.attrs.get("reduction", "none") != "none"
        flat = rng.choice(int(np.prod(sizes)), size=count, replace=repeats)
        rows = np.stack(np.unravel_index(flat, sizes), axis=-1)
        rows -= rng.integers(0, 2, rows.shape) * np.array(sizes, dtype=rows.dtype)
        return rows.reshape(index_shape).astype(index_dtype)

    def __str__(self):
        shapes = "x".join(str(list(s)) for s, _ in self.inputs)
        return f"{self.op}-{shapes}-{self.attrs}"


def f(*shape):
    return (tuple(shape), F)


UNARY = ["negative", "abs", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "erf", "relu"]
BINARY = [
    "add",
    "subtract",
    "multiply",
    "divide",
    "maximum",
    "minimum",
    "greater",
    "less",
    "equal",
    "greater_equal",
    "less_equal",
    "mod",
    "fmod",
    "power",
]
LOGICAL = ["logical_and", "logical_or", "logical_xor"]


def b(*shape):
    return (tuple(shape), "bool")


CASES = (
    [OpCase(op, (f(7, 13),)) for op in UNARY]
    + [
        OpCase(
            op,
            (
                f(
                    1,
                ),
            ),
        )
        for op in UNARY
    ]
    + [OpCase(op, (f(3, 1, 33), f(7, 1))) for op in BINARY]
    + [OpCase(op, (((13,), "int32"), ((13,), "int32"))) for op in ("add", "divide", "maximum")]
    + [OpCase(op, (((7, 1), "int64"), ((33,), "int64"))) for op in ("mod", "fmod")]
    + [OpCase(op, (((13,), "int32"), ((13,), "int32"))) for op in ("mod", "fmod", "less_equal")]
    + [OpCase(op, (b(7, 1), b(1, 13))) for op in LOGICAL]
    + [OpCase(op, (b(33), b(33))) for op in LOGICAL]
    + [OpCase("logical_not", (b(7, 13),)), OpCase("logical_not", (b(1),))]
    + [OpCase("isnan", (f(7, 13),)), OpCase("isnan", (f(1),))]
    + [
        OpCase(
            "leaky_relu",
            (
                f(
                    33,
                ),
            ),
            {"alpha": 0.2},
        ),
        OpCase("clip", (f(7, 13),), {"a_min": -0.5, "a_max": 0.5}),
        OpCase(
            "clip",
            (
                f(
                    7,
                ),
            ),
            {"a_max": 0.1},
        ),
        OpCase("cast", (f(7, 13),), {"dtype": "int32"}),
        OpCase(
            "cast",
            (
                f(
                    13,
                ),
            ),
            {"dtype": "float16"},
        ),
        OpCase(
            "cast",
            (
                f(
                    13,
                ),
            ),
            {"dtype": "float8_e4m3fn"},
        ),
        OpCase("where", (((7, 1), "bool"), f(1, 13), f(7, 13))),
        OpCase(
            "dense",
            (
                f(7, 13),
                f(33, 13),
                f(
                    33,
                ),
            ),
        ),
        OpCase("dense", (f(2, 3, 13), f(1, 13))),
        OpCase("matmul", (f(7, 13), f(13, 33))),
        OpCase("matmul", (f(2, 1, 7, 13), f(3, 13, 1))),
        OpCase(
            "matmul",
            (
                f(
                    13,
                ),
                f(2, 13, 7),
            ),
        ),
        OpCase("softmax", (f(7, 33),), {"axis": -1}),
        OpCase("softmax", (f(3, 13, 7),), {"axis": 1}),
        OpCase("log_softmax", (f(7, 33),), {}),
        OpCase("batch_norm", (f(2, 7, 5, 5), f(7), f(7), f(7), f(7)), {"epsilon": 1e-3}),
        OpCase("layer_norm", (f(7, 33), f(33), f(33))),
        OpCase("layer_norm", (f(2, 7, 13), f(7, 13)), {"axis": 1}),
        OpCase("flatten", (f(2, 3, 4, 5),), {"axis": 2}),
        OpCase("concatenate", (f(7, 1), f(7, 13), f(7, 33)), {"axis": 1}),
        OpCase("split", (f(33, 7),), {"sizes": (1, 13, 19)}),
        OpCase("expand_dims", (f(7, 13),), {"axes": (0, 3)}),
        OpCase("squeeze", (f(1, 7, 1, 13),), {"axes": (2,)}),
        OpCase("squeeze", (f(1, 7, 1, 13),), {}),
        OpCase("conv2d", (f(1, 3, 13, 13), f(7, 3, 3, 3), f(7)), {"padding": (1, 1, 1, 1)}),
        OpCase(
            "conv2d",
            (f(2, 4, 13, 7), f(6, 2, 3, 2)),
            {"strides": (2, 1), "padding": (0, 1, 2, 0), "dilation": (1, 2), "groups": 2},
        ),
        OpCase(
            "conv2d",
            (f(1, 7, 33, 33), f(7, 1, 3, 3)),
            {"groups": 7, "strides": (2, 2), "padding": (1, 1, 1, 1)},
        ),
        OpCase("conv2d", (f(1, 13, 7, 7), f(33, 13, 1, 1)), {}),
        OpCase(
            "conv2d_transpose",
            (f(1, 4, 7, 5), f(4, 3, 3, 3), f(3)),
            {"strides": (2, 2), "padding": (1, 1, 1, 1), "output_padding": (1, 0)},
        ),
        OpCase(
            "conv2d_transpose", (f(2, 4, 5, 5), f(4, 1, 2, 3)), {"groups": 2, "dilation": (2, 1)}
        ),
        OpCase("max_pool2d", (f(1, 3, 13, 13),), {"pool_size": (3, 3), "strides": (2, 2)}),
        OpCase(
            "max_pool2d",
            (f(2, 3, 7, 33),),
            {"pool_size": (2, 3), "strides": (2, 2), "padding": (1, 1, 0, 1), "ceil_mode": True},
        ),
        OpCase(
            "avg_pool2d",
            (f(1, 3, 13, 13),),
            {"pool_size": (3, 3), "strides": (2, 2), "padding": (1, 1, 1, 1)},
        ),
        OpCase(
            "avg_pool2d",
            (f(1, 3, 7, 7),),
            {
                "pool_size": (3, 3),
                "strides": (2, 2),
                "padding": (1, 1, 1, 1),
                "count_include_pad": True,
                "ceil_mode": True,
            },
        ),
        OpCase("global_avg_pool2d", (f(2, 7, 13, 1),)),
        OpCase("global_max_pool2d", (f(1, 33, 7, 7),)),
        OpCase("resize2d", (f(1, 3, 7, 13),), {"size": (14, 26)}),
        OpCase("resize2d", (f(1, 3, 7, 13),), {"size": (3, 33), "method": "linear"}),
        OpCase(
            "resize2d",
            (f(1, 1, 13, 7),),
            {"size": (7, 13), "method": "cubic", "coordinate_transformation_mode": "align_corners"},
        ),
        OpCase("reshape", (f(7, 13),), {"newshape": (13, -1)}),
        OpCase("transpose", (f(2, 7, 13),), {"axes": (2, 0, 1)}),
        OpCase("transpose", (f(7, 13),), {}),
        OpCase("take", (f(7, 13), ((3, 2), "int64")), {"axis": 1}),
        OpCase(
            "take",
            (
                f(
                    33,
                ),
                ((1,), "int32"),
            ),
            {},
        ),
        OpCase("take_along_axis", (f(7, 13), ((7, 5), "int64")), {"axis": 1}),
        OpCase("take_along_axis", (f(13, 7, 3), ((33, 7, 1), "int32")), {}),
        OpCase("take_along_axis", (f(7, 13), ((1, 13), "int64")), {"axis": -2}),
        OpCase("gather_nd", (f(7, 13, 5), ((3, 2), "int64"))),
        OpCase("gather_nd", (f(2, 7, 13), ((2, 3, 1), "int64")), {"batch_dims": 1}),
        OpCase("gather_nd", (f(7, 13), ((33, 2), "int64"))),
        OpCase("scatter_nd", (f(7, 13), ((5, 1), "int64"), f(5, 13))),
        OpCase("scatter_nd", (f(7, 13, 3), ((2, 3, 2), "int64"), f(2, 3, 3)), {"reduction": "add"}),
        OpCase("scatter_nd", (f(33), ((7, 1), "int64"), f(7)), {"reduction": "mul"}),
        OpCase("scatter_nd", (f(7, 13), ((13, 2), "int64"), f(13)), {"reduction": "max"}),
        OpCase(
            "scatter_nd",
            (((7, 13), "int32"), ((33, 2), "int64"), ((33,), "int32")),
            {"reduction": "min"},
        ),
        OpCase("tril", (f(2, 7, 13),)),
        OpCase("tril", (f(13, 7),), {"k": -2}),
        OpCase("triu", (f(2, 7, 13),), {"k": 3}),
        OpCase("triu", (((13, 7), "int64"),), {"k": -1}),
        OpCase(
            "strided_slice", (f(13, 33),), {"begin": (1, -3), "end": (12, 0), "strides": (3, -2)}
        ),
        OpCase("strided_slice", (f(7, 13),), {"begin": (2,), "end": (100,), "axes": (1,)}),
        OpCase("pad", (f(7, 13),), {"pad_width": (1, 2, 0, 3), "pad_value": 1.5}),
        OpCase("pad", (f(7, 13),), {"pad_width": (2, 1, 3, 0), "mode": "reflect"}),
        OpCase("pad", (f(1, 7),), {"pad_width": (0, 0, 3, 3), "mode": "edge"}),
        OpCase("broadcast_to", (f(7, 1),), {"shape": (2, 7, 13)}),
    ]
    + [
        OpCase(op, (f(7, 13, 3),), {"axes": (0, 2), "keepdims": True})
        for op in ("sum", "mean", "max", "min", "prod")
    ]
    + [
        OpCase(
            op,
            (
                f(
                    33,
                ),
            ),
            {},
        )
        for op in ("sum", "mean", "max", "min", "prod")
    ]
    + [
        OpCase(op, (f(7, 13),), {"axis": 1, "keepdims": k})
        for op in ("argmax", "argmin")
        for k in (False, True)
    ]
    + [
        OpCase("cumsum", (f(7, 13),), {"axis": 1}),
        OpCase("cumsum", (f(13, 7),), {"axis": 0, "exclusive": True, "reverse": True}),
        OpCase("cumsum", (f(33),), {"reverse": True}),
        OpCase("cumsum", (((7, 1, 13), "int32"),), {"axis": -1, "exclusive": True}),
        OpCase("cumsum", (((1,), "int64"),), {}),
    ]
)
