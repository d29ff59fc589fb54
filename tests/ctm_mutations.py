"""Hostile ``.ctm`` files, made from valid ones, for the trust-boundary tests and the campaign
in benchmarks/fuzz_ctm.py.

Each case is one mutation of one saved model: a field of plan.json, manifest.json or
graph.json edited (numbers shrunk, grown, negated, retyped; lists emptied, cut, reversed,
repeated; keys dropped; values nested past any parser's depth), whole-plan edits (steps
dropped, reversed, emptied; every tensor in one buffer; buffers shrunk), .npy headers in
params.npz that claim huge or other shapes, big-endian parameters, byte flips anywhere in the
archive (its central directory included) and truncations. The one acceptable outcome besides a
correct run is coretune's ModelLoadError: a run that returns other numbers, any other
exception, a crash or a hang is a failure. ``make_case(model, mutation, seed)`` replays one.
"""

import io
import json
import random
import zipfile
from dataclasses import dataclass

import numpy as np

from . import onnx_models

MODELS = {
    "mlp": lambda: onnx_models.mlp(batch=4),
    "cnn": onnx_models.cnn,  # pads written in place, a residual read from a pad's interior
    "transformer": onnx_models.transformer_layer,
}
JSON_ENTRIES = ("plan.json", "manifest.json", "graph.json")
DEEP = 50_000  # nesting that exhausts a recursive parser


@dataclass(frozen=True)
class Saved:
    data: bytes  # the .ctm file
    inputs: dict
    outputs: list


@dataclass(frozen=True)
class Case:
    model: str
    mutation: str
    seed: int
    data: bytes
    note: str

    def replay(self) -> str:
        return f"make_case({self.model!r}, {self.mutation!r}, {self.seed})"


_SAVED: dict[str, Saved] = {}


def saved(model: str, device=None) -> Saved:
    """The model compiled for the default device, its .ctm bytes and its outputs."""
    if model not in _SAVED:
        import tempfile

        from coretune.module import compile as compile_module

        onnx_model, inputs = MODELS[model]()
        module = compile_module(onnx_model, device=device)
        with tempfile.NamedTemporaryFile(suffix=".ctm") as file:
            module.save(file.name)
            data = open(file.name, "rb").read()
        _SAVED[model] = Saved(data, inputs, module.run(**inputs))
    return _SAVED[model]


# ---- archive helpers ----------------------------------------------------------------------
def entries_of(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def archive_of(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


def _paths(value, prefix=()):
    """Every path into a JSON value, containers included."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _get(value, path):
    for key in path:
        value = value[key]
    return value


def _set(root, path, new):
    if not path:
        return new
    _get(root, path[:-1])[path[-1]] = new
    return root


def _edits(value, rng: random.Random) -> list:
    """Replacements of one JSON value: wrong sizes, types, shapes and depths."""
    deep = [0]
    for _ in range(200):  # deep, though not past json.dumps' own recursion
        deep = [deep]
    common = [None, "", "x" * 10_000, deep, {}, [], True]
    if isinstance(value, bool):
        return [not value, 1, "true", *common]
    if isinstance(value, int):
        return [0, 1, -1, value // 2, value + 1, value - 1, 2**50, -(2**62), 1e300, str(value)]
    if isinstance(value, float):
        return [0.0, -value, float("inf"), float("nan"), int(value), *common]
    if isinstance(value, str):
        return ["", value[:-1], value + "x", value.upper(), "os:system", "../x", 7, *common]
    if isinstance(value, list):
        variants = [[], value[:-1], value[1:], value[::-1], value + value[-1:], [value]]
        if len(value) > 1:
            shuffled = list(value)
            rng.shuffle(shuffled)
            variants.append(shuffled)
        return [*variants, *common]
    if isinstance(value, dict):
        dropped = dict(list(value.items())[1:])
        return [{}, dropped, {**value, "extra": 1}, list(value), *common]
    return common


# ---- mutations: each (entries, rng) -> (entries or raw bytes, note) -------------------------
def _json_field(entry: str):
    def mutate(entries, rng):
        data = json.loads(entries[entry])
        path = rng.choice(list(_paths(data)))
        new = rng.choice(_edits(_get(data, path), rng))
        entries[entry] = json.dumps(_set(data, path, new)).encode()
        return entries, f"{entry}{list(path)} = {str(new)[:60]}"

    return mutate


def _nested(entries, rng):
    entry = rng.choice(JSON_ENTRIES)
    opener = rng.choice(['{"a":', "[", '{"steps":['])
    entries[entry] = (opener * DEEP + "1").encode()
    return entries, f"{entry}: {opener!r} x {DEEP}"


def _plan_whole(entries, rng):
    plan = json.loads(entries["plan.json"])
    steps, buffers = plan["steps"], plan["buffer_bytes"]
    edits = {
        "steps reversed": lambda: plan.update(steps=steps[::-1]),
        "steps emptied": lambda: plan.update(steps=[]),
        "one step dropped": lambda: steps.pop(rng.randrange(len(steps))),
        "one step repeated": lambda: steps.insert(0, steps[rng.randrange(len(steps))]),
        "every tensor in buffer 0": lambda: plan.update(
            buffer_of=dict.fromkeys(plan["buffer_of"], 0)
        ),
        "buffer_of emptied": lambda: plan.update(buffer_of={}),
        "a buffer index out of range": lambda: plan["buffer_of"].update(
            {next(iter(plan["buffer_of"]), "t"): len(buffers) + 5}
        ),
        "buffers shrunk to 4 bytes": lambda: plan.update(buffer_bytes=[4] * len(buffers)),
        "buffers shrunk to 1 byte": lambda: plan.update(buffer_bytes=[1] * len(buffers)),
        "a 2**50-byte buffer": lambda: plan.update(buffer_bytes=[2**50, *buffers[1:]]),
        "buffers dropped": lambda: plan.update(buffer_bytes=[]),
    }
    name = rng.choice(sorted(edits))
    edits[name]()
    entries["plan.json"] = json.dumps(plan).encode()
    return entries, name


def _npy_entries(entries):
    with zipfile.ZipFile(io.BytesIO(entries["params.npz"])) as npz:
        return {info.filename: npz.read(info) for info in npz.infolist()}


def _npz_of(arrays: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as npz:
        for name, data in arrays.items():
            npz.writestr(name, data)
    return out.getvalue()


def _npy_header(entries, rng):
    """A .npy header that claims another shape or dtype than its data holds."""
    arrays = _npy_entries(entries)
    name = rng.choice(sorted(arrays))
    array = np.load(io.BytesIO(arrays[name]))
    claims = [(10**12,), (2**31, 2**31), (0,), (*array.shape, 2), (-1,), ()]
    shape = rng.choice(claims)
    header = {"descr": rng.choice(["<f4", "<f8", "|u1", "<i8"]), "fortran_order": False}
    header["shape"] = shape
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    arrays[name] = buffer.getvalue() + arrays[name][len(arrays[name]) - array.nbytes :]
    entries["params.npz"] = _npz_of(arrays)
    return entries, f"{name} claims {header}"


def _big_endian_param(entries, rng):
    """A valid file whose parameter is stored big-endian: it must load and run correctly."""
    arrays = _npy_entries(entries)
    name = rng.choice(sorted(arrays))
    array = np.load(io.BytesIO(arrays[name]))
    buffer = io.BytesIO()
    np.save(buffer, array.astype(array.dtype.newbyteorder(">")))
    arrays[name] = buffer.getvalue()
    entries["params.npz"] = _npz_of(arrays)
    return entries, f"{name} big-endian"


def _byte_flips(entries, rng):
    data = bytearray(archive_of(entries))
    central = data.rfind(b"PK\x01\x02")  # the central directory's first record
    spots = []
    for _ in range(rng.randint(1, 4)):
        where = (
            rng.randrange(central, len(data)) if rng.random() < 0.5 else rng.randrange(len(data))
        )
        data[where] ^= 1 << rng.randrange(8)
        spots.append(where)
    return bytes(data), f"bits flipped at {spots} (central directory at {central})"


def _truncate(entries, rng):
    data = archive_of(entries)
    cut = rng.randrange(len(data))
    return data[:cut], f"cut at {cut} of {len(data)}"


MUTATIONS = {
    "plan_field": _json_field("plan.json"),
    "manifest_field": _json_field("manifest.json"),
    "graph_field": _json_field("graph.json"),
    "plan_whole": _plan_whole,
    "nested_json": _nested,
    "npy_header": _npy_header,
    "big_endian_param": _big_endian_param,
    "byte_flips": _byte_flips,
    "truncate": _truncate,
}


def make_case(model: str, mutation: str, seed: int, device=None) -> Case:
    rng = random.Random(f"{model}/{mutation}/{seed}")
    result, note = MUTATIONS[mutation](entries_of(saved(model, device).data), rng)
    data = result if isinstance(result, bytes) else archive_of(result)
    return Case(model, mutation, seed, data, note)


@dataclass(frozen=True)
class Outcome:
    kind: str  # "refused", "correct", "wrong", "other"
    message: str


def run_case(case: Case, device, directory) -> Outcome:
    """Load the mutated file and, if it loads, run it on the model's inputs."""
    from coretune.errors import ModelLoadError
    from coretune.module import load

    path = directory / f"{case.model}-{case.mutation}-{case.seed}.ctm"
    path.write_bytes(case.data)
    try:
        module = load(path, device=device)
    except ModelLoadError as exc:
        return Outcome("refused", str(exc)[:300])
    except Exception as exc:
        return Outcome("other", f"load: {type(exc).__name__}: {str(exc)[:300]}")
    finally:
        path.unlink()
    original = saved(case.model, device)
    try:
        outputs = module.run(**original.inputs)
    except Exception as exc:
        return Outcome("other", f"run: {type(exc).__name__}: {str(exc)[:300]}")
    for got, want in zip(outputs, original.outputs, strict=True):
        scale = float(np.linalg.norm(want.astype(np.float64))) or 1.0
        error = float(np.linalg.norm((got - want).astype(np.float64))) / scale
        if got.shape != want.shape or not error <= 1e-4:
            return Outcome("wrong", f"ran and returned other outputs (relative error {error:.3g})")
    return Outcome("correct", "")
