"""Mutations of valid ONNX models, for fuzzing the importer (tests/test_hostile_inputs.py and
benchmarks/fuzz_importer.py share them).

A case is fully determined by ``(seed model, mutation, case seed)``, so any failure found by the
long campaign replays with one call: ``make_case("mlp", "bit_flip", 1234)``. ``run_case`` imports
one case and classifies the outcome; the only acceptable ones are ``graph`` (a validated Graph)
and ``error`` (a CoretuneError with a non-empty message).
"""

import contextlib
import copy
import pathlib
import random
import re
import resource
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from coretune.errors import CoretuneError
from coretune.graph.exchange.importer import import_onnx

from .onnx_models import MODELS

_ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = _ROOT / "examples" / "tiny_net.onnx"
HUGE = (10**12, 2**40, 2**62, 2**63 - 1)  # element counts no import may allocate
EXTREME_INTS = (-(2**63), -(2**31), -7, -1, 0, 2**31, 2**62, 2**63 - 1)


# ---- seed models ----------------------------------------------------------------------------
def _shape_ops() -> onnx.ModelProto:
    """Ops whose int64 inputs are shapes (ConstantOfShape, Expand, Reshape, Slice, Pad): the
    place where a mutated constant asks for a huge tensor at import time."""
    ints = {
        "shape": [1, 8],
        "expand_to": [1, 8],
        "target": [2, 4],
        "starts": [0],
        "ends": [3],
        "axes": [1],
        "pads": [0, 1, 0, 1],
    }
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
    inits.append(numpy_helper.from_array(np.array([0.5], np.float32), "half"))
    fill = numpy_helper.from_array(np.array([2.0], np.float32))
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["twos"], value=fill, name="fill"),
        helper.make_node("Expand", ["half", "expand_to"], ["halves"], name="expand"),
        helper.make_node("Add", ["x", "twos"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "halves"], ["b"], name="mul"),
        helper.make_node("Reshape", ["b", "target"], ["c"], name="reshape"),
        helper.make_node("Slice", ["c", "starts", "ends", "axes"], ["d"], name="slice"),
        helper.make_node("Pad", ["d", "pads"], ["y"], name="pad"),
    ]
    graph = helper.make_graph(
        nodes,
        "shape_ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes  # the valid model, serialised
    input_shapes: dict | None = None


@cache
def seeds() -> dict[str, Seed]:
    found = {"tiny_net": Seed("tiny_net", EXAMPLE.read_bytes())}
    for name, build in MODELS.items():
        shapes = {"x": (2, 3, 4, 4)} if name == "dynamic_reshape" else None
        found[name] = Seed(name, build()[0].SerializeToString(), shapes)
    found["shape_ops"] = Seed("shape_ops", _shape_ops().SerializeToString())
    return found


# ---- mutations: (ModelProto or bytes, random.Random) -> bytes, description --------------------
def _bytes(fn):
    fn.on_bytes = True
    return fn


@_bytes
def bit_flip(data: bytes, rng: random.Random):
    out = bytearray(data)
    flips = [rng.randrange(len(out) * 8) for _ in range(rng.randint(1, 8))]
    for bit in flips:
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out), f"flip bits {flips}"


@_bytes
def truncate(data: bytes, rng: random.Random):
    cut = rng.randrange(len(data))
    return data[:cut], f"keep the first {cut} of {len(data)} bytes"


@_bytes
def splice(data: bytes, rng: random.Random):
    start, size = rng.randrange(len(data)), rng.randint(1, 16)
    junk = bytes(rng.randrange(256) for _ in range(size))
    return data[:start] + junk + data[start + size :], f"overwrite {size} bytes at {start}"


def _pick(rng, items):
    items = list(items)
    return rng.choice(items) if items else None


def attr_type(model, rng):
    node = _pick(rng, (n for n in model.graph.node if n.attribute))
    if node is None:
        return _add_attr(model, rng)
    attr = rng.choice(node.attribute)
    if rng.random() < 0.5:  # the type tag lies about the value fields
        old, attr.type = attr.type, rng.choice([t for t in range(1, 15) if t != attr.type])
        return model, f"{node.name}.{attr.name}: type {old} -> {attr.type}, value unchanged"
    value = rng.choice(
        [
            1.5,
            7,
            "abc",
            [1, 2],
            [1.5, 2.5],
            ["a", "b"],
            numpy_helper.from_array(np.ones(3, np.float32)),
        ]
    )
    new = helper.make_attribute(attr.name, value)
    attr.CopyFrom(new)
    return model, f"{node.name}.{attr.name} = {value!r} (type {new.type})"


def attr_value(model, rng):
    node = _pick(rng, (n for n in model.graph.node if n.attribute))
    if node is None:
        return _add_attr(model, rng)
    attr = rng.choice(node.attribute)
    if attr.type == AttributeProto.INT:
        attr.i = rng.choice(EXTREME_INTS)
    elif attr.type == AttributeProto.INTS:
        del attr.ints[:]
        attr.ints.extend(rng.choice(EXTREME_INTS) for _ in range(rng.randint(0, 6)))
    elif attr.type == AttributeProto.FLOAT:
        attr.f = rng.choice([float("nan"), float("inf"), -float("inf"), -1e38, 0.0])
    elif attr.type == AttributeProto.STRING:
        attr.s = rng.choice([b"", b"bogus", b"\xff\xfe", "é".encode()])
    elif attr.type == AttributeProto.TENSOR:
        attr.t.dims[:] = [rng.choice(HUGE)]
    else:
        node.attribute.remove(attr)
        return model, f"{node.name}: remove {attr.name}"
    return model, f"{node.name}.{attr.name} = {helper.get_attribute_value(attr)!r}"


def attr_shape(model, rng):
    """A list attribute (strides, pads, kernel_shape, perm...) given as one int, float or
    string, or an enumerated string (auto_pad, mode...) ONNX does not define."""
    kinds = (AttributeProto.INTS, AttributeProto.STRING)
    node = _pick(rng, (n for n in model.graph.node if any(a.type in kinds for a in n.attribute)))
    if node is None:
        return _add_attr(model, rng)
    attr = rng.choice([a for a in node.attribute if a.type in kinds])
    if attr.type == AttributeProto.STRING:
        value = rng.choice(["SAME", "same_upper", "", "NOTSET ", "linear2"])
    else:
        value = rng.choice([3, 0, 1.5, "abc"])
    attr.CopyFrom(helper.make_attribute(attr.name, value))
    return model, f"{node.name}.{attr.name} = {value!r}"


def declared_type(model, rng):
    """A graph output or value_info declared with another element type, rank or dim than the
    graph computes."""
    info = rng.choice([*model.graph.output, *model.graph.value_info])
    tensor_type = info.type.tensor_type
    choice = rng.choice(["elem", "rank", "dim"])
    if choice == "elem":
        tensor_type.elem_type = rng.choice(
            [TensorProto.INT64, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BOOL]
        )
    elif choice == "rank" or not tensor_type.shape.dim:
        tensor_type.shape.dim.add().dim_value = 1
    else:
        dim = rng.choice(tensor_type.shape.dim)
        dim.dim_value = (dim.dim_value or 1) + rng.randint(1, 5)
    return model, f"{info.name!r} declared {onnx.helper.printable_type(info.type)} ({choice})"


def _add_attr(model, rng):
    node = rng.choice(model.graph.node)
    node.attribute.append(helper.make_attribute("bogus", rng.choice([1, "x", [1.0]])))
    return model, f"{node.name}: add attribute 'bogus'"


def init_dims(model, rng):
    """An initializer whose dims claim a huge, negative, overflowing or inconsistent size."""
    init = _pick(rng, model.graph.initializer)
    if init is None:
        return model, "no initializer"
    count = int(np.prod(init.dims)) if init.dims else 1
    choice = rng.choice(["huge", "two_huge", "negative", "overflow", "scalar", "off_by_one"])
    dims = {
        "huge": [rng.choice(HUGE)],
        "two_huge": [10**6, 10**6],
        "negative": [-1, max(count, 1)],
        "overflow": [2**62, 4],
        "scalar": [],
        "off_by_one": [count + 1],
    }[choice]
    init.dims[:] = dims
    return model, f"initializer {init.name!r}: dims {list(init.dims)} ({choice})"


def init_reshape(model, rng):
    """An initializer with the same element count in another shape (wrong rank or layout)."""
    init = _pick(rng, (t for t in model.graph.initializer if len(t.dims) >= 1))
    if init is None:
        return model, "no initializer"
    count = int(np.prod(init.dims))
    dims = rng.choice([[count], [1, count], list(reversed(init.dims)), [count, 1, 1]])
    init.dims[:] = dims
    return model, f"initializer {init.name!r}: dims {dims}"


def init_data(model, rng):
    """Initializer data that disagrees with its header: cut raw data, another data type, or
    external data (never to be read from outside the model)."""
    init = _pick(rng, model.graph.initializer)
    if init is None:
        return model, "no initializer"
    choice = rng.choice(["cut", "dtype", "external"])
    if choice == "cut":
        raw = init.raw_data or numpy_helper.to_array(init).tobytes()
        init.ClearField("float_data")
        init.ClearField("int64_data")
        init.raw_data = raw[: rng.randrange(len(raw) + 1)]
        return model, f"initializer {init.name!r}: raw data cut to {len(init.raw_data)} bytes"
    if choice == "dtype":
        init.data_type = rng.choice([0, 2, 3, 7, 8, 9, 11, 16, 17, 23, 999])
        return model, f"initializer {init.name!r}: data_type {init.data_type}"
    location = rng.choice(["/etc/hostname", "../../../../etc/hostname", "absent.bin"])
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = TensorProto.EXTERNAL
    entry = init.external_data.add()
    entry.key, entry.value = "location", location
    return model, f"initializer {init.name!r}: external data at {location!r}"


def value_dims(model, rng):
    """A graph input's or output's declared shape: huge, negative, zero, or another rank."""
    info = rng.choice([*model.graph.input, *model.graph.output])
    shape = info.type.tensor_type.shape
    choice = rng.choice(["huge", "negative", "zero", "rank", "symbolic"])
    if choice == "rank":
        shape.dim.add().dim_value = 2
    elif shape.dim:
        dim = rng.choice(shape.dim)
        if choice == "symbolic":
            dim.dim_param = "n"
        else:
            dim.dim_value = {"huge": rng.choice(HUGE), "negative": -3, "zero": 0}[choice]
    return model, f"{info.name!r}: shape {[d.dim_value or d.dim_param for d in shape.dim]}"


def cycle(model, rng):
    """A node reading its own output, or the output of a node after it (via a rename)."""
    nodes = model.graph.node
    index = rng.randrange(len(nodes))
    node = nodes[index]
    if not node.input:
        return model, "node without inputs"
    slot = rng.randrange(len(node.input))
    later = [o for n in nodes[index:] for o in n.output]
    node.input[slot] = rng.choice(later)
    return model, f"{node.name}.input[{slot}] = {node.input[slot]!r}"


def duplicate_output(model, rng):
    nodes = model.graph.node
    if len(nodes) < 2:
        return model, "one node"
    a, b = rng.sample(range(len(nodes)), 2)
    nodes[a].output[0] = nodes[b].output[0]
    return model, f"{nodes[a].name} and {nodes[b].name} both write {nodes[b].output[0]!r}"


def remove_init(model, rng):
    init = _pick(rng, model.graph.initializer)
    if init is None:
        return model, "no initializer"
    model.graph.initializer.remove(init)
    return model, f"remove initializer {init.name!r}"


def remove_node(model, rng):
    node = rng.choice(model.graph.node)
    model.graph.node.remove(node)
    return model, f"remove node {node.name!r}"


def op_type(model, rng):
    node = rng.choice(model.graph.node)
    old, node.op_type = (
        node.op_type,
        rng.choice(
            ["Relu", "Conv", "Gemm", "Reshape", "Softmax", "Concat", "Slice", "Gather", "Pad"]
        ),
    )
    return model, f"{node.name}: {old} -> {node.op_type}"


def opset(model, rng):
    model.opset_import[0].version = rng.choice([-1, 0, 1, 7, 12, 99, 2**62])
    return model, f"opset {model.opset_import[0].version}"


def shape_constant(model, rng):
    """An int64 initializer (a shape, axes, pads...) scaled to huge or negative values."""
    init = _pick(rng, (t for t in model.graph.initializer if t.data_type == TensorProto.INT64))
    if init is None:
        return model, "no int64 initializer"
    values = numpy_helper.to_array(init).copy()
    if values.size == 0:
        return model, "empty"
    flat = values.reshape(-1)
    flat[rng.randrange(flat.size)] = rng.choice([10**6, 10**9, 2**40, 2**62, -(2**62), -5])
    if rng.random() < 0.5:
        flat[rng.randrange(flat.size)] = rng.choice([10**6, 2**31])
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    return model, f"{init.name!r} = {values.tolist()}"


MUTATIONS: dict[str, Callable] = {
    f.__name__: f
    for f in (
        bit_flip,
        truncate,
        splice,
        attr_type,
        attr_value,
        attr_shape,
        declared_type,
        init_dims,
        init_reshape,
        init_data,
        value_dims,
        cycle,
        duplicate_output,
        remove_init,
        remove_node,
        op_type,
        opset,
        shape_constant,
    )
}


@dataclass(frozen=True)
class Case:
    seed: str
    mutation: str
    case_seed: int
    data: bytes
    description: str
    input_shapes: dict | None

    def __str__(self) -> str:
        return f"make_case({self.seed!r}, {self.mutation!r}, {self.case_seed}): {self.description}"


def make_case(seed: str, mutation: str, case_seed: int) -> Case:
    source = seeds()[seed]
    rng = random.Random(f"{seed}/{mutation}/{case_seed}")
    fn = MUTATIONS[mutation]
    if getattr(fn, "on_bytes", False):
        data, description = fn(source.data, rng)
    else:
        model = onnx.ModelProto()
        model.ParseFromString(source.data)
        model, description = fn(copy.deepcopy(model), rng)
        data = model.SerializeToString()
    return Case(seed, mutation, case_seed, data, description, source.input_shapes)


# ---- importer bugs found by this fuzzer, not yet fixed ----------------------------------------
@dataclass(frozen=True)
class KnownBug:
    id: str
    summary: str
    pattern: str  # matched against Outcome.signature: "<builtin exception> at <file:fn>: msg"


_CT = r"graph/exchange/convert_tensor\.py"
# Importer bugs the fuzzer found, each (id, summary, signature pattern): all fixed so far (the
# importer turns malformed data into GraphError/ModelLoadError, refuses huge folded constants
# and implausible dims). A new finding goes here with a strict xfail test reproducing it.
KNOWN_BUGS: tuple = ()


# ---- running one case -----------------------------------------------------------------------
class Hang(Exception):  # noqa: N818
    """The case ran past its time bound."""


@contextlib.contextmanager
def bounded(seconds: float, extra_bytes: int = 2 << 30):
    """Raise Hang after ``seconds`` (SIGALRM: main thread only) and cap new data allocations
    at ``extra_bytes`` (RLIMIT_DATA), so a memory bomb surfaces as MemoryError, not swap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    used = _vm_data()
    cap = used + extra_bytes if hard == resource.RLIM_INFINITY else min(hard, used + extra_bytes)

    def on_alarm(signum, frame):
        raise Hang(f"no outcome within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _vm_data() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class Outcome:
    kind: str  # "graph", "error" (a CoretuneError), "other" (a bug) or "hang" (a bug)
    detail: str  # the error class, or the qualified class of the unexpected exception
    message: str
    seconds: float
    where: str = ""  # for an unexpected exception: the deepest coretune frame, file:function

    @property
    def acceptable(self) -> bool:
        return self.kind == "graph" or (self.kind == "error" and bool(self.message.strip()))

    @property
    def signature(self) -> str:
        return f"{self.detail} at {self.where}: {self.message}"

    def known_bug(self) -> str | None:
        """The id of the known importer bug this outcome reproduces, if any."""
        if self.kind != "other":
            return None
        return next((b.id for b in KNOWN_BUGS if re.search(b.pattern, self.signature)), None)


def run_case(case: Case, seconds: float = 30.0) -> Outcome:
    started = time.perf_counter()
    try:
        with bounded(seconds):
            graph = import_onnx(case.data, input_shapes=case.input_shapes)
            graph.validate()
        kind, detail, message = "graph", "Graph", ""
    except CoretuneError as exc:
        kind, detail, message = "error", type(exc).__name__, str(exc)
    except Hang as exc:
        kind, detail, message = "hang", "Hang", str(exc)
    except Exception as exc:  # noqa: BLE001  (any other exception is the finding)
        # The builtin base names numpy's _ArrayMemoryError plainly: MemoryError.
        detail = next(c.__name__ for c in type(exc).__mro__ if c.__module__ == "builtins")
        seconds = time.perf_counter() - started
        return Outcome("other", detail, str(exc)[:500], seconds, _deepest_frame(exc))
    return Outcome(kind, detail, message[:500], time.perf_counter() - started)


def _deepest_frame(exc: BaseException) -> str:
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if f.filename.startswith(str(_ROOT)) and "/tests/" not in f.filename
    ]
    if not frames:
        return "?"
    return f"{pathlib.Path(frames[-1].filename).relative_to(_ROOT)}:{frames[-1].name}"
