"""Element types as kernels see them, and C literals."""

import math

from coretune.errors import CoretuneError

# dtype -> neutral C type of a buffer element. bool travels as uchar: OpenCL forbids bool buffers.
BUFFER_TYPES = {
    "float32": "float",
    "int32": "int",
    "int64": "long",
    "bool": "uchar",
    "uint8": "uchar",
    "int8": "char",
}
# dtype -> C type of a value in registers
VALUE_TYPES = {**BUFFER_TYPES, "bool": "bool"}


class UnsupportedKernelType(CoretuneError):
    """A dtype that kernels do not handle (the graph runs it on the reference executor)."""


def buffer_type(dtype: str) -> str:
    try:
        return BUFFER_TYPES[dtype]
    except KeyError:
        raise UnsupportedKernelType(f"kernels do not handle dtype {dtype}") from None


def value_type(dtype: str) -> str:
    buffer_type(dtype)
    return VALUE_TYPES[dtype]


def literal(value, dtype: str) -> str:
    """A C literal of ``dtype``; infinities and NaN spelled so every dialect accepts them."""
    if dtype == "float32":
        value = float(value)
        if math.isnan(value):
            return "(INF - INF)"
        if math.isinf(value):
            return "INF" if value > 0 else "(-INF)"
        return f"{value!r}f" if "e" in repr(value) or "." in repr(value) else f"{value!r}.0f"
    if dtype == "bool":
        return "true" if value else "false"
    if dtype == "int64":
        return f"{int(value)}L"
    return str(int(value))
