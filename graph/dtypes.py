"""Element types. A dtype is named by its numpy name ('float32', 'int64', 'float8_e4m3fn'...).

The narrow float and int types (bfloat16, float8, float4, int4, int2) come from ml_dtypes,
which onnx itself uses, so the reference semantics of a cast match ONNX's to the bit.
"""

import ml_dtypes
import numpy as np

from coretune.errors import GraphError

_NARROW = {
    name: np.dtype(getattr(ml_dtypes, name))
    for name in (
        "bfloat16",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "float4_e2m1fn",
        "int4",
        "uint4",
        "int2",
        "uint2",
    )
    if hasattr(ml_dtypes, name)
}
_STANDARD = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
]
DTYPES: dict[str, np.dtype] = {name: np.dtype(name) for name in _STANDARD} | _NARROW

FLOAT_DTYPES = frozenset(n for n, d in DTYPES.items() if n.startswith(("float", "bfloat")))
INT_DTYPES = frozenset(n for n in DTYPES if n.startswith(("int", "uint")))
# Types whose values a saturating cast must clip to the finite range (ONNX Cast saturate=1).
SATURATING_DTYPES = frozenset(n for n in FLOAT_DTYPES if n.startswith(("float8", "float4")))


def check_dtype(name: str) -> str:
    if name not in DTYPES:
        raise GraphError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}")
    return name


def to_numpy(name: str) -> np.dtype:
    return DTYPES[check_dtype(name)]


def dtype_name(dtype) -> str:
    """The coretune name of a numpy dtype (or anything np.dtype accepts)."""
    name = np.dtype(dtype).name
    return check_dtype(name)


def is_float(name: str) -> bool:
    return name in FLOAT_DTYPES


def is_int(name: str) -> bool:
    return name in INT_DTYPES


def native_order(array: np.ndarray) -> np.ndarray:
    """``array`` in this machine's byte order: kernels and numpy's reference read raw bytes,
    and a big-endian '>f4' array still calls its dtype float32."""
    if array.dtype.byteorder in ("=", "|") or array.dtype.isnative:
        return array
    return array.astype(array.dtype.newbyteorder("="))
