"""Dialect renderers: one base, and per dialect (OpenCL C, CUDA C, Metal) a table of differences.

Templates write a kernel once, as a ``KernelSpec`` whose body uses a neutral vocabulary:
``GROUP_ID(d)``, ``LOCAL_ID(d)``, ``BARRIER()``, ``INF``, vector helpers ``VLOAD2/4(ptr, i)``,
``VSTORE2/4(v, ptr, i)``, constructors ``VEC2/4(...)``, and math names spelled as in C99
(``expf`` is written ``exp``). ``VEC8(...)`` builds a ``float8`` (lanes ``.s0``..``.s7``,
``+`` and ``*``): native in OpenCL (one AVX register on CPU devices), a struct elsewhere.
``VEC16(...)`` builds a ``float16`` (lanes ``.s0``..``.sf``) in OpenCL only: templates offer
16 lanes only on devices whose native vectors are that wide (AVX-512 CPUs), never on GPUs.
``exp``/``log``/``sqrt``/``tanh``/``erf`` also take ``float2/4/8`` (lane by lane where the
language has no such overload).
Rendering substitutes the dialect's spelling; it never imports a GPU library.
"""

import re
from dataclasses import dataclass, field

import numpy as np


def lane_names(lanes: int) -> tuple[str, ...]:
    """Member names of a vector's lanes (float8 has no x/y/z/w)."""
    return ("x", "y", "z", "w")[:lanes] if lanes <= 4 else tuple(f"s{i:x}" for i in range(lanes))


def lanewise(qualifier: str, functions: list[str], widths: list[int]) -> str:
    """Vector overloads of scalar math functions, lane by lane: the vector calls of fused
    elementwise chains (lower.batch_math) where the language has no such overload."""
    return "".join(
        f"{qualifier} inline float{w} {fn}(float{w} v) {{ return VEC{w}("
        + ", ".join(f"{fn}(v.{lane})" for lane in lane_names(w))
        + "); }\n"
        for w in widths
        for fn in functions
    )


@dataclass(frozen=True)
class Buffer:
    name: str
    ctype: str  # neutral element type: float, half, int, long, uchar, bool...
    output: bool = False


@dataclass(frozen=True)
class LocalArray:
    name: str
    ctype: str
    size: int


@dataclass(frozen=True)
class Table:
    """A read-only lookup table baked into the program (e.g. resize taps and weights)."""

    name: str
    ctype: str
    values: tuple


@dataclass(frozen=True)
class Scalar:
    """A by-value kernel argument after the buffers: an extent passed at launch instead of
    written into the source, so that kernels which differ only in it are one program (the
    1 x 1 convs of a dense block differ only in their input channels). Its name and type are
    part of the source; its value is part of the launch."""

    name: str
    ctype: str  # neutral: int or long
    value: int

    def argument(self):
        return _SCALAR_TYPES[self.ctype](self.value)


_SCALAR_TYPES = {"int": np.int32, "long": np.int64}


@dataclass(frozen=True)
class Launch:
    """Work-groups (blocks, threadgroups) per axis, work-items per group, per axis, and the
    values of the kernel's scalar arguments."""

    groups: tuple[int, int, int]
    local: tuple[int, int, int]
    scalars: tuple[Scalar, ...] = ()

    @property
    def global_size(self) -> tuple[int, int, int]:
        return tuple(g * w for g, w in zip(self.groups, self.local, strict=True))

    def scalar_arguments(self) -> list:
        """What a driver takes after the buffers: numpy scalars of the declared types."""
        return [s.argument() for s in self.scalars]


@dataclass(frozen=True)
class KernelSpec:
    name: str
    buffers: tuple[Buffer, ...]
    body: str
    launch: Launch
    local_arrays: tuple[LocalArray, ...] = ()
    helpers: str = ""  # device functions the body calls, in the neutral vocabulary
    tables: tuple[Table, ...] = ()


@dataclass(frozen=True)
class RenderedKernel:
    dialect: str
    source: str
    entry: str
    launch: Launch
    arg_order: tuple[str, ...]


_MATH = (
    "exp",
    "log",
    "sqrt",
    "tanh",
    "erf",
    "fabs",
    "fmax",
    "fmin",
    "floor",
    "ceil",
    "pow",
    "fma",
    "rsqrt",
)


@dataclass
class Renderer:
    """The base: assembles a kernel from a spec. Subclasses only fill in the tables."""

    dialect: str = ""
    preamble: str = ""
    kernel_prefix: str = ""
    global_qualifier: str = ""
    const_qualifier: str = "const "
    restrict: str = ""
    local_qualifier: str = ""
    table_qualifier: str = "const "
    barrier: str = ""
    group_id: tuple[str, str, str] = ("", "", "")
    local_id: tuple[str, str, str] = ("", "", "")
    infinity: str = "INFINITY"
    types: dict[str, str] = field(default_factory=dict)
    math: dict[str, str] = field(default_factory=dict)

    def render(self, spec: KernelSpec) -> RenderedKernel:
        params = [self.param(b, i) for i, b in enumerate(spec.buffers)]
        params += [
            self.scalar_param(s, len(spec.buffers) + i) for i, s in enumerate(spec.launch.scalars)
        ]
        params += self.implicit_params()
        signature = f"{self.kernel_signature(spec)} {spec.name}(" + ",\n    ".join(params) + ")"
        locals_ = "".join(
            f"  {self.local_qualifier}{self.ctype(a.ctype)} {a.name}[{a.size}];\n"
            for a in spec.local_arrays
        )
        body = self.translate(spec.body)
        helpers = self.translate(spec.helpers)
        tables = "".join(self.table(t) for t in spec.tables)
        source = f"{self.preamble}\n{tables}{helpers}\n{signature} {{\n{locals_}{body}\n}}\n"
        return RenderedKernel(
            self.dialect, source, spec.name, spec.launch, tuple(b.name for b in spec.buffers)
        )

    # ---- hooks that differ by more than a table entry ------------------------------------
    def kernel_signature(self, spec: KernelSpec) -> str:
        return self.kernel_prefix

    def param(self, buffer: Buffer, index: int) -> str:
        const = "" if buffer.output else self.const_qualifier
        ctype = self.ctype(buffer.ctype)
        return f"{self.global_qualifier}{const}{ctype}* {self.restrict}{buffer.name}"

    def scalar_param(self, scalar: Scalar, index: int) -> str:
        return f"const {self.ctype(scalar.ctype)} {scalar.name}"

    def implicit_params(self) -> list[str]:
        return []

    def table(self, table: Table) -> str:
        values = ", ".join(map(str, table.values))
        return (
            f"{self.table_qualifier}{self.ctype(table.ctype)} {table.name}"
            f"[{len(table.values)}] = {{{values}}};\n"
        )

    # ---- shared machinery ----------------------------------------------------------------
    def ctype(self, neutral: str) -> str:
        return self.types.get(neutral, neutral)

    def translate(self, code: str) -> str:
        code = re.sub(r"\bGROUP_ID\((\d)\)", lambda m: self.group_id[int(m[1])], code)
        code = re.sub(r"\bLOCAL_ID\((\d)\)", lambda m: self.local_id[int(m[1])], code)
        code = re.sub(r"\bBARRIER\(\)", self.barrier, code)
        code = re.sub(r"\bINF\b", self.infinity, code)
        code = re.sub(
            r"\b(" + "|".join(_MATH) + r")\(", lambda m: self.math.get(m[1], m[1]) + "(", code
        )
        if self.types:  # one pass: a spelling ("unsigned char") is never rewritten again
            names = "|".join(map(re.escape, self.types))
            code = re.sub(rf"\b({names})(\d?)\b(?!\()", lambda m: self.types[m[1]] + m[2], code)
        return code


class OpenCLRenderer(Renderer):
    def __init__(self):
        super().__init__(
            dialect="opencl",
            preamble="#define VEC2(a, b) ((float2)((a), (b)))\n"
            "#define VEC4(a, b, c, d) ((float4)((a), (b), (c), (d)))\n"
            "#define VEC8(a, b, c, d, e, f, g, h) "
            "((float8)((a), (b), (c), (d), (e), (f), (g), (h)))\n"
            "#define VEC16(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p) "
            "((float16)((a), (b), (c), (d), (e), (f), (g), (h), "
            "(i), (j), (k), (l), (m), (n), (o), (p)))\n"
            "#define VLOAD2(p, i) vload2(0, (p) + (i))\n"
            "#define VLOAD4(p, i) vload4(0, (p) + (i))\n"
            "#define VSTORE2(v, p, i) vstore2((v), 0, (p) + (i))\n"
            "#define VSTORE4(v, p, i) vstore4((v), 0, (p) + (i))\n",
            kernel_prefix="__kernel void",
            global_qualifier="__global ",
            restrict="restrict ",
            local_qualifier="__local ",
            table_qualifier="__constant ",
            barrier="barrier(CLK_LOCAL_MEM_FENCE)",
            group_id=("get_group_id(0)", "get_group_id(1)", "get_group_id(2)"),
            local_id=("get_local_id(0)", "get_local_id(1)", "get_local_id(2)"),
        )

    def kernel_signature(self, spec):
        size = ", ".join(map(str, spec.launch.local))
        return f"__kernel __attribute__((reqd_work_group_size({size}))) void"


# float8 where the language has none (CUDA, Metal): ``q`` is the function qualifier.
_FLOAT8_STRUCT = """\
struct float8 {{ float s0, s1, s2, s3, s4, s5, s6, s7; }};
{q} inline float8 VEC8(float a, float b, float c, float d, float e, float f, float g, float h) {{
  float8 v = {{a, b, c, d, e, f, g, h}}; return v; }}
{q} inline float8 operator+(float8 a, float8 b) {{
  return VEC8(a.s0 + b.s0, a.s1 + b.s1, a.s2 + b.s2, a.s3 + b.s3,
              a.s4 + b.s4, a.s5 + b.s5, a.s6 + b.s6, a.s7 + b.s7); }}
{q} inline float8 operator*(float8 a, float8 b) {{
  return VEC8(a.s0 * b.s0, a.s1 * b.s1, a.s2 * b.s2, a.s3 * b.s3,
              a.s4 * b.s4, a.s5 * b.s5, a.s6 * b.s6, a.s7 * b.s7); }}
"""

_CUDA_PREAMBLE = (
    """\
#define INFINITY_F __int_as_float(0x7f800000)
#define VEC2 make_float2
#define VEC4 make_float4
__device__ inline float2 operator+(float2 a, float2 b) { return make_float2(a.x + b.x, a.y + b.y); }
__device__ inline float2 operator*(float2 a, float2 b) { return make_float2(a.x * b.x, a.y * b.y); }
__device__ inline float4 operator+(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w); }
__device__ inline float4 operator*(float4 a, float4 b) {
  return make_float4(a.x * b.x, a.y * b.y, a.z * b.z, a.w * b.w); }
__device__ inline float2 VLOAD2(const float* p, long i) { return make_float2(p[i], p[i + 1]); }
__device__ inline float4 VLOAD4(const float* p, long i) {
  return make_float4(p[i], p[i + 1], p[i + 2], p[i + 3]); }
__device__ inline void VSTORE2(float2 v, float* p, long i) { p[i] = v.x; p[i + 1] = v.y; }
__device__ inline void VSTORE4(float4 v, float* p, long i) {
  p[i] = v.x; p[i + 1] = v.y; p[i + 2] = v.z; p[i + 3] = v.w; }
"""
    + _FLOAT8_STRUCT.format(q="__device__")
    + lanewise("__device__", ["expf", "logf", "sqrtf", "tanhf", "erff"], [2, 4, 8])
)


class CUDARenderer(Renderer):
    def __init__(self):
        super().__init__(
            dialect="cuda",
            preamble=_CUDA_PREAMBLE,
            kernel_prefix='extern "C" __global__ void',
            restrict="__restrict__ ",
            local_qualifier="__shared__ ",
            table_qualifier="__device__ const ",
            barrier="__syncthreads()",
            group_id=("blockIdx.x", "blockIdx.y", "blockIdx.z"),
            local_id=("threadIdx.x", "threadIdx.y", "threadIdx.z"),
            infinity="INFINITY_F",
            types={"long": "long long", "uchar": "unsigned char", "char": "signed char"},
            math={
                "exp": "expf",
                "log": "logf",
                "sqrt": "sqrtf",
                "tanh": "tanhf",
                "erf": "erff",
                "fabs": "fabsf",
                "fmax": "fmaxf",
                "fmin": "fminf",
                "floor": "floorf",
                "ceil": "ceilf",
                "pow": "powf",
                "fma": "fmaf",
                "rsqrt": "rsqrtf",
            },
        )

    def kernel_signature(self, spec):
        threads = spec.launch.local[0] * spec.launch.local[1] * spec.launch.local[2]
        return f'extern "C" __global__ void __launch_bounds__({threads})'


_METAL_PREAMBLE = (
    """\
#include <metal_stdlib>
using namespace metal;
#define VEC2(a, b) float2((a), (b))
#define VEC4(a, b, c, d) float4((a), (b), (c), (d))
#define VLOAD2(p, i) float2((p)[(i)], (p)[(i) + 1])
#define VLOAD4(p, i) float4((p)[(i)], (p)[(i) + 1], (p)[(i) + 2], (p)[(i) + 3])
#define VSTORE2(v, p, i) do { float2 _v = (v); (p)[(i)] = _v.x; (p)[(i) + 1] = _v.y; } while (0)
#define VSTORE4(v, p, i) do { float4 _v = (v); (p)[(i)] = _v.x; (p)[(i) + 1] = _v.y; \\
  (p)[(i) + 2] = _v.z; (p)[(i) + 3] = _v.w; } while (0)
// Metal has no erf: Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
static inline float ct_erf(float x) {
  float t = 1.0f / (1.0f + 0.3275911f * fabs(x));
  float y = 1.0f - (((((1.061405429f * t - 1.453152027f) * t) + 1.421413741f) * t
                     - 0.284496736f) * t + 0.254829592f) * t * exp(-x * x);
  return copysign(y, x);
}
"""
    + _FLOAT8_STRUCT.format(q="static")
    + lanewise("static", ["exp", "log", "sqrt", "tanh", "ct_erf"], [8])
    + lanewise("static", ["ct_erf"], [2, 4])
)


class MetalRenderer(Renderer):
    def __init__(self):
        super().__init__(
            dialect="metal",
            preamble=_METAL_PREAMBLE,
            kernel_prefix="kernel void",
            global_qualifier="device ",
            local_qualifier="threadgroup ",
            table_qualifier="constant ",
            barrier="threadgroup_barrier(mem_flags::mem_threadgroup)",
            group_id=("_group.x", "_group.y", "_group.z"),
            local_id=("_local.x", "_local.y", "_local.z"),
            math={"erf": "ct_erf", "fma": "fma"},
        )

    def param(self, buffer, index):
        return f"{super().param(buffer, index)} [[buffer({index})]]"

    def scalar_param(self, scalar, index):
        return f"constant {self.ctype(scalar.ctype)}& {scalar.name} [[buffer({index})]]"

    def implicit_params(self):
        return [
            "uint3 _group [[threadgroup_position_in_grid]]",
            "uint3 _local [[thread_position_in_threadgroup]]",
        ]


RENDERERS = {"opencl": OpenCLRenderer, "cuda": CUDARenderer, "metal": MetalRenderer}


def renderer_for(dialect: str) -> Renderer:
    try:
        return RENDERERS[dialect]()
    except KeyError:
        raise ValueError(f"unknown dialect {dialect!r}; known: {', '.join(RENDERERS)}") from None
