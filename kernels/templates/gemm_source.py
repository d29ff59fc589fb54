"""Kernel source of the gemm template: C = A @ B (+ epilogue), one register tile per work-item.

Three inner loops share one prologue and one epilogue:

* ``direct_kn`` (B is (K, N), rows contiguous: matmul): per k, ``tile_m`` scalars of A times
  ``tile_n / vector`` vectors of a B row; accumulators are vectors along n.
* ``direct_nk`` (B is (N, K), the dense weight: rows of B are columns of C): A rows and B rows
  are both contiguous along k, so both are read as vectors along k into vector partial sums,
  reduced across lanes once at the end.
* ``staged``: the group copies an A tile and a B tile of ``tile_k`` steps into local memory
  (coalesced whatever the B layout), then every work-item computes as ``direct_kn`` from there.

Loads never go out of bounds: rows and columns past the edge are clamped to the last one (their
results are computed and dropped), k past the end reads zeros (staged) or runs a scalar tail.
In ``direct_kn`` a vector of columns that would hang over the last column starts at the last
whole vector instead, so its loads stay whole vectors (1 x 1 convs: 7 x 7 and 14 x 14 images
have no whole number of float8/float16 vectors); the lanes it recomputes are stored again,
with the same values.
"""

from dataclasses import dataclass

from ..epilogue import Epilogue
from ..lower import row_major_strides
from ..render import Scalar, lane_names
from ..space import Config
from .conv_common import (
    LANE_LOOP,
    UNROLL,
    indent,
    splat,
    vector_lanes,
    vector_load,
    vector_type,
)


@dataclass(frozen=True)
class GemmGeometry:
    """Everything the source needs, as plain integers: batch, M, N, K, strides, names."""

    a: str
    b: str
    bias: str | None
    bias_per_column: bool  # bias of shape (N,), else one value (or per row, below)
    b_is_nk: bool  # B stored (N, K) (dense weight) instead of (K, N)
    batch_shape: tuple[int, ...]  # the output's batch axes (matmul broadcasting)
    a_batch_strides: tuple[int, ...]  # per output batch axis; 0 where A broadcasts
    b_batch_strides: tuple[int, ...]
    m: int
    n: int
    k: int
    row_shape: tuple[int, ...]  # output axes that the row index m unflattens to
    has_col_axis: bool  # False for matmul with a 1-D B: the output has no n axis
    col_shape: tuple[int, ...] = ()  # output axes that n unflattens to, if several (conv H, W)
    bias_per_row: bool = False  # bias of shape (M,): a convolution's, per output channel
    # M and K passed as kernel arguments (M_ARGUMENT, K_ARGUMENT) in direct_kn: gemms that
    # differ only in them are then one program (a dense block's 1 x 1 convs, whose input
    # channels grow by layer; the squeeze-and-excitation convs of an EfficientNet)
    extents_are_arguments: bool = False

    @property
    def batch(self) -> int:
        size = 1
        for d in self.batch_shape:
            size *= d
        return size

    def output_index(self, batch_index: tuple[str, ...], m: str, n: str) -> tuple[str, ...]:
        cols = unflatten(n, self.col_shape) if self.col_shape else (n,) if self.has_col_axis else ()
        return batch_index + unflatten(m, self.row_shape) + cols

    def bias_index(self, m: str, n: str) -> str:
        return n if self.bias_per_column else m if self.bias_per_row else "0"


M_ARGUMENT, K_ARGUMENT = "m_len", "k_len"


def unflatten(flat: str, shape: tuple[int, ...]) -> tuple[str, ...]:
    """The row-major index over ``shape`` of element ``flat``, which is inside it (a row or
    column of C; outside, the index goes unused), so the outermost axis needs no modulo.
    (With that modulo, the loop over a vector's lanes, LANE_LOOP, compiled twice as fast on
    PoCL but ran slower: ResNet-50 0.93x, MobileNetV3-L 0.86x.)"""
    index, outermost = [], True
    for d, s in zip(shape, row_major_strides(shape), strict=True):
        quotient = f"{flat} / {s}" if s > 1 else flat
        index.append("0" if d == 1 else f"({quotient})" if outermost else f"({quotient}) % {d}")
        outermost = outermost and d == 1
    return tuple(index)


def clamp(expr: str, last: int | str, needed: bool) -> str:
    """``expr`` capped at ``last`` for loads near an edge (a ternary: integer ``min`` is
    spelled differently per dialect); left alone where the tiles divide evenly."""
    return f"({expr} < {last} ? {expr} : {last})" if needed else f"({expr})"


class GemmSource:
    def __init__(self, g: GemmGeometry, c: Config, index: str, epilogue: Epilogue):
        self.g, self.c, self.idx, self.epilogue = g, c, index, epilogue
        self.tm, self.tn, self.vec = c["tile_m"], c["tile_n"], c["vector"]
        self.wg_m, self.wg_n, self.wg_k = c["wg_m"], c["wg_n"], c["wg_k"]
        self.threads_mn = self.wg_m * self.wg_n  # work-items per k slice
        self.bm, self.bn = self.wg_m * self.tm, self.wg_n * self.tn
        self.mode = "staged" if c["stage_local"] else "direct_nk" if g.b_is_nk else "direct_kn"
        # width of an accumulator along n: vectors of columns, except direct_nk (vectors of k)
        self.cols_per_acc = 1 if self.mode == "direct_nk" else self.vec
        self.accs_per_row = self.tn // self.cols_per_acc
        self.batch_index = tuple(f"batch{axis}" for axis in range(len(g.batch_shape)))
        # Vectors of B rows that would hang over the last column start at the last whole
        # vector instead: loads stay whole vectors, and the lanes they recompute are stored
        # again with the same values (see output_column).
        self.shifted = self.mode == "direct_kn" and self.vec < g.n and g.n % self.vec != 0
        # Where M and K are arguments, the source names them; every choice that depends on
        # their values (whether a loop runs, a leftover loop, ragged rows) still shows in
        # the text, so kernels whose sources match agree on all of them.
        self.arguments = g.extents_are_arguments and self.mode == "direct_kn"
        self.m = M_ARGUMENT if self.arguments else str(g.m)
        self.k = K_ARGUMENT if self.arguments else str(g.k)

    def scalars(self) -> tuple[Scalar, ...]:
        if not self.arguments:
            return ()
        return (Scalar(M_ARGUMENT, "int", self.g.m), Scalar(K_ARGUMENT, "int", self.g.k))

    # ---- pieces -------------------------------------------------------------------------
    def column(self, j: str, lane: str = "0") -> str:
        """Column of accumulator j, lane ``lane``, relative to the group's first column.
        Interleaved: neighbouring work-items own neighbouring vectors (coalesced on GPUs);
        blocked: a work-item owns ``tile_n`` contiguous columns."""
        w = self.cols_per_acc
        if self.c["interleave_n"]:
            col = f"(({j}) * {self.wg_n} + tx) * {w}" if w > 1 else f"({j}) * {self.wg_n} + tx"
        else:
            col = f"tx * {self.tn} + ({j}) * {w}" if w > 1 else f"tx * {self.tn} + ({j})"
        return col if lane == "0" else f"{col} + {lane}"

    def output_column(self, j: str, lane: str) -> str:
        """Column of C that accumulator j's lane ``lane`` holds (a vector that would hang
        over the edge was moved back to end at it: ``shifted``)."""
        if not self.shifted:
            return f"n_group + {self.column(j, lane)}"
        start = clamp(f"n_group + {self.column(j)}", self.g.n - self.vec, True)
        return f"{start} + {lane}"

    def prologue(self) -> str:
        g, idx = self.g, self.idx
        lines = ["const int tx = LOCAL_ID(0), ty = LOCAL_ID(1);"]
        if self.mode == "staged" or self.wg_k > 1:  # they share local memory
            lines.append(f"const int tid = ty * {self.wg_n} + tx;")
        if self.wg_k > 1:
            lines.append("const int kz = LOCAL_ID(2);  // this work-item's slice of k")
        for name, d, s in zip(
            self.batch_index, g.batch_shape, row_major_strides(g.batch_shape), strict=True
        ):
            expr = (
                "0"
                if d == 1
                else f"((int)GROUP_ID(2) / {s}) % {d}"
                if s > 1
                else (f"(int)GROUP_ID(2) % {d}")
            )
            lines.append(f"const int {name} = {expr};")
        for name, strides in (("a_base", g.a_batch_strides), ("b_base", g.b_batch_strides)):
            terms = [
                f"({idx})batch{i} * {s}"
                for i, (s, d) in enumerate(zip(strides, g.batch_shape, strict=True))
                if s and d > 1  # batch index 0: no term (its stride may depend on K)
            ]
            lines.append(f"const {idx} {name} = {' + '.join(terms) or '0'};")
        lines.append(f"const int m_group = GROUP_ID(1) * {self.bm};")
        lines.append(f"const int m_first = m_group + ty * {self.tm};")
        lines.append(f"const int n_group = GROUP_ID(0) * {self.bn};")
        vt = vector_type(self.vec)
        count = self.tm * self.accs_per_row
        lines += [
            f"{vt} acc[{count}];",
            UNROLL,
            f"for (int a = 0; a < {count}; ++a) acc[a] = {splat('0.0f', self.vec)};",
        ]
        return "\n".join(lines)

    def row_offsets(self) -> str:
        g = self.g
        ragged = g.m % self.bm != 0
        return f"""\
{self.idx} a_row[{self.tm}];
{UNROLL}
for (int i = 0; i < {self.tm}; ++i) \
a_row[i] = a_base + ({self.idx}){clamp("m_first + i", f"{self.m} - 1", ragged)} * {self.k};"""

    def fma_block(self, a_type: str, a_load: str, b_value: str) -> str:
        """Load ``tile_m`` values of A, then acc[i][j] += a[i] * b(j) over the register tile."""
        rows = self.accs_per_row
        a_value = "av[i]" if a_type == vector_type(self.vec) else splat("av[i]", self.vec)
        return f"""\
{a_type} av[{self.tm}];
{UNROLL}
for (int i = 0; i < {self.tm}; ++i) av[i] = {a_load};
{UNROLL}
for (int j = 0; j < {rows}; ++j) {{
  const {vector_type(self.vec)} bv = {b_value};
  {UNROLL}
  for (int i = 0; i < {self.tm}; ++i) acc[i * {rows} + j] = acc[i * {rows} + j] + {a_value} * bv;
}}"""

    # ---- the three inner loops ------------------------------------------------------------
    def direct_kn(self) -> str:
        g, idx, vec, rows = self.g, self.idx, self.vec, self.accs_per_row
        ragged = g.n % self.bn != 0
        if g.n % vec == 0 or self.shifted:  # whole vectors: clamp a vector's first column
            col = clamp(f"n_group + {self.column('j')}", g.n - vec, ragged or self.shifted)
            offsets = f"""\
{idx} b_col[{rows}];
{UNROLL}
for (int j = 0; j < {rows}; ++j) b_col[j] = b_base + {col};"""

            def b_load(k):
                return vector_load(g.b, f"b_col[j] + ({idx})({k}) * {g.n}", vec)
        else:  # fewer columns than lanes: clamp lane by lane (no vector load)
            col = clamp(f"n_group + {self.column('j', 'v')}", g.n - 1, True)
            offsets = f"""\
{idx} b_col[{rows * vec}];
{UNROLL}
for (int j = 0; j < {rows}; ++j) {{
  {UNROLL}
  for (int v = 0; v < {vec}; ++v) b_col[j * {vec} + v] = b_base + {col};
}}"""

            def b_load(k):
                return vector_lanes(
                    lambda v: f"{g.b}[b_col[j * {vec} + {v}] + ({idx})({k}) * {g.n}]", vec
                )

        def step(k):
            return self.fma_block("float", f"{g.a}[a_row[i] + {k}]", b_load(k))

        return f"""\
{self.row_offsets()}
{offsets}
{self.k_loops(step, 1, g.k, self.k)}"""

    def direct_nk(self) -> str:
        g, idx, vec, tn = self.g, self.idx, self.vec, self.tn
        ragged = g.n % self.bn != 0
        col = clamp(f"n_group + {self.column('j')}", g.n - 1, ragged)

        def step(k):
            return self.fma_block(
                vector_type(vec),
                vector_load(g.a, f"a_row[i] + {k}", vec),
                vector_load(g.b, f"b_row[j] + {k}", vec),
            )

        main = g.k - g.k % vec
        lane_sum = " + ".join(f"acc[a].{lane}" for lane in lane_names(vec)) if vec > 1 else "acc[a]"
        tail = f"""\
float sum[{self.tm * tn}];
{UNROLL}
for (int a = 0; a < {self.tm * tn}; ++a) sum[a] = {lane_sum};"""
        if main < g.k:
            first = f"{main} + kz" if self.wg_k > 1 else str(main)
            tail += f"""
for (int k = {first}; k < {g.k}; k += {self.wg_k}) {{
  {UNROLL}
  for (int j = 0; j < {tn}; ++j) {{
    const float bv = {g.b}[b_row[j] + k];
    {UNROLL}
    for (int i = 0; i < {self.tm}; ++i) sum[i * {tn} + j] += {g.a}[a_row[i] + k] * bv;
  }}
}}"""
        return f"""\
{self.row_offsets()}
{idx} b_row[{tn}];
{UNROLL}
for (int j = 0; j < {tn}; ++j) b_row[j] = b_base + ({idx}){col} * {g.k};
{self.k_loops(step, vec, main)}
{tail}"""

    def k_loops(self, step, stride: int, end: int, end_text: str = "") -> str:
        """``step(k)`` for k in [0, end) by ``stride`` (``end`` a multiple of it), unrolled
        ``unroll_k`` times; the leftover steps (fewer than one unrolled round) follow in a loop
        of their own. With ``wg_k`` > 1 the work-items of a k slice take every ``wg_k``-th
        step, neighbours on neighbouring k (coalesced). ``end_text`` spells ``end`` where it
        is a kernel argument: the rounds' end is then computed from it in the kernel."""
        split, unroll = self.wg_k, self.c["unroll_k"]
        own = split * stride  # from one of a work-item's steps to its next
        first = f"kz * {stride}" if split > 1 else "0"
        rounds = own * unroll
        rounds_end = end // rounds * rounds
        end_text = end_text or str(end)
        rounds_text = (
            str(rounds_end)
            if end_text == str(end)
            else end_text
            if rounds_end == end
            else f"{end_text} / {rounds} * {rounds}"
        )
        code = []
        if rounds_end:
            code.append(f"""\
for (int k = {first}; k < {rounds_text}; k += {rounds}) {{
  {UNROLL}
  for (int u = 0; u < {unroll}; ++u) {{
{indent(step(f"(k + {own} * u)"), 2)}
  }}
}}""")
        if rounds_end < end:
            start = f"{rounds_text} + {first}" if split > 1 else rounds_text
            code.append(f"""\
for (int k = {start}; k < {end_text}; k += {own}) {{
{indent(step("k"), 1)}
}}""")
        return "\n".join(code)

    def staged(self) -> str:
        g, idx, tk, vec = self.g, self.idx, self.c["tile_k"], self.vec
        threads = self.threads_mn
        # Rows padded to an odd pitch: the transposing stores spread over all banks.
        a_pitch, b_pitch = self.bm + 1, self.bn + 1
        k_ragged = g.k % tk != 0
        row = clamp("m_group + r", g.m - 1, g.m % self.bm != 0)
        col = clamp("n_group + q", g.n - 1, g.n % self.bn != 0)

        def guarded(load):
            return f"k0 + kk < {g.k} ? {load} : 0.0f" if k_ragged else load

        a_load = guarded(f"{g.a}[a_base + ({idx}){row} * {g.k} + k0 + kk]")
        if g.b_is_nk:  # consecutive work-items read consecutive k of one B row
            b_split = f"const int q = e / {tk}, kk = e % {tk};"
            b_load = guarded(f"{g.b}[b_base + ({idx}){col} * {g.k} + k0 + kk]")
        else:
            b_split = f"const int kk = e / {self.bn}, q = e % {self.bn};"
            b_load = guarded(f"{g.b}[b_base + ({idx})(k0 + kk) * {g.n} + {col}]")
        b_value = vector_lanes(
            lambda v: f"b_tile[kk * {b_pitch} + {self.column('j', str(v))}]", vec
        )
        return f"""\
for (int k0 = 0; k0 < {g.k}; k0 += {tk}) {{
  for (int e = tid; e < {self.bm * tk}; e += {threads}) {{
    const int r = e / {tk}, kk = e % {tk};
    a_tile[kk * {a_pitch} + r] = {a_load};
  }}
  for (int e = tid; e < {self.bn * tk}; e += {threads}) {{
    {b_split}
    b_tile[kk * {b_pitch} + q] = {b_load};
  }}
  BARRIER();
  #pragma unroll {self.c["unroll_k"]}
  for (int kk = 0; kk < {tk}; ++kk) {{
{indent(self.fma_block("float", f"a_tile[kk * {a_pitch} + ty * {self.tm} + i]", b_value), 2)}
  }}
  BARRIER();  // everyone is done reading the tiles before they are overwritten
}}"""

    def for_each_output(self, body, position: bool = True, numbered: bool = False) -> str:
        """``body(value)`` for each output element of the register tile, with its ``m`` and
        ``n`` (``position``) and its number ``e`` in the tile (``numbered``) defined."""
        w = self.cols_per_acc
        if self.mode == "direct_nk":
            setup = "// the partial sums along k were reduced into sum[]"
            value = f"sum[i * {self.tn} + j]"
        else:
            names = ", ".join(f"tile.{lane}" for lane in lane_names(w)) if w > 1 else "tile"
            setup = (
                f"const {vector_type(w)} tile = acc[i * {self.accs_per_row} + j];\n"
                f"const float lane[{w}] = {{{names}}};"
            )
            value = "lane[v]"
        names = [f"const int e = (i * {self.accs_per_row} + j) * {w} + v;"] if numbered else []
        if position:
            names += [
                "const int m = m_first + i;",
                f"const int n = {self.output_column('j', 'v')};",
            ]
        return f"""\
{UNROLL}
for (int i = 0; i < {self.tm}; ++i) {{
  {UNROLL}
  for (int j = 0; j < {self.accs_per_row}; ++j) {{
{indent(setup, 2)}
    {LANE_LOOP}
    for (int v = 0; v < {w}; ++v) {{
{indent(chr(10).join(names + [body(value)]), 3)}
    }}
  }}
}}"""

    def inside(self, m: str, n: str) -> str:
        """The condition that output (m, n) is inside C; empty where the tiles divide C evenly
        and it always is. (Each guard was a branch per stored lane: without them, a kernel's
        64 unrolled stores took PoCL ~35 % less time to compile, and they run no branches.)"""
        checks = [f"{m} < {self.m}"] if self.g.m % self.bm else []
        checks += [f"{n} < {self.g.n}"] if self.g.n % self.bn else []
        return " && ".join(checks)

    def finish(self, value: str) -> str:
        """Bias, epilogue and store of output (m, n), if it is inside C."""
        g = self.g
        lines = [f"float anchor_value = {value};"]
        if g.bias:
            lines.append(f"anchor_value += {g.bias}[{g.bias_index('m', 'n')}];")
        lines += self.epilogue.store("anchor_value", g.output_index(self.batch_index, "m", "n"))
        guard = self.inside("m", "n")
        return (f"if ({guard}) " if guard else "") + "{\n" + indent("\n".join(lines), 1) + "\n}"

    def finish_tile(self) -> str:
        """``finish`` for the whole register tile, unrolled here, its outputs taken 8 at a time
        so that the epilogue's math runs as one vector call per op (Epilogue.store_lanes). An
        output outside C reads the epilogue's inputs at the nearest position inside and
        stores nothing."""
        g, w = self.g, self.cols_per_acc
        lines, outputs = [], []
        for i in range(self.tm):
            lines += [
                f"const int m{i} = m_first + {i};",
                f"const int m{i}_in = m{i} < {self.m} ? m{i} : {self.m} - 1;",
            ]
        for j in range(self.accs_per_row):
            for v in range(w):
                n = f"n{j}_{v}"
                lines += [
                    f"const int {n} = {self.output_column(str(j), str(v))};",
                    f"const int {n}_in = {n} < {g.n} ? {n} : {g.n - 1};",
                ]
        for i in range(self.tm):
            for j in range(self.accs_per_row):
                for v, lane in enumerate(lane_names(w) if w > 1 else [""]):
                    if self.mode == "direct_nk":
                        value = f"sum[{i * self.tn + j}]"
                    else:
                        value = f"acc[{i * self.accs_per_row + j}]" + (f".{lane}" if w > 1 else "")
                    m, n = f"m{i}", f"n{j}_{v}"
                    if g.bias:
                        value += f" + {g.bias}[{g.bias_index(f'{m}_in', f'{n}_in')}]"
                    outputs.append(
                        (
                            value,
                            g.output_index(self.batch_index, f"{m}_in", f"{n}_in"),
                            g.output_index(self.batch_index, m, n),
                            self.inside(m, n),
                        )
                    )
        return "\n".join(lines + self.epilogue.store_tile(outputs))

    def store(self) -> str:
        if self.wg_k == 1 and self.epilogue.vector_math:
            return self.finish_tile()
        if self.wg_k == 1:
            return self.for_each_output(self.finish)
        # The k slices publish their partial sums; each then finishes every wg_k-th output.
        elements, threads = self.tm * self.tn, self.threads_mn
        publish = self.for_each_output(
            lambda value: f"partial[(kz * {elements} + e) * {threads} + tid] = {value};",
            position=False,
            numbered=True,
        )
        combine = f"""\
if (e % {self.wg_k} == kz) {{
  float total = partial[e * {threads} + tid];
  for (int q = 1; q < {self.wg_k}; ++q) total += partial[(q * {elements} + e) * {threads} + tid];
{indent(self.finish("total"), 1)}
}}"""
        return f"{publish}\nBARRIER();\n{self.for_each_output(lambda _: combine, numbered=True)}"

    def body(self) -> str:
        inner = getattr(self, self.mode)()
        return "\n".join((self.prologue(), inner, self.store()))
