"""The .ctm trust boundary: nothing in a model file can make the executor read or write outside
a buffer, run steps out of order, return other numbers, or escape as a raw exception.

The file's plan is derived again on load and any difference refused; the targeted cases below
are the faults found on ea470bb (segfaults, aborts, silently wrong outputs, raw IndexError,
KeyError, RecursionError, MemoryError, NotImplementedError); the sampled campaign runs every
mutation of tests/ctm_mutations.py in a separate process, so a crash fails the test instead
of killing the run (benchmarks/fuzz_ctm.py runs >= 2,000 of them).
"""

import io
import json
import pathlib
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from coretune.errors import ModelLoadError
from coretune.module import load

from .ctm_mutations import archive_of, entries_of, saved

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _plan_edit(edit):
    def change(entries):
        plan = json.loads(entries["plan.json"])
        edit(plan)
        entries["plan.json"] = json.dumps(plan).encode()
        return entries

    return change


def _load(tmp_path, device, model, change):
    path = tmp_path / f"{model}.ctm"
    path.write_bytes(archive_of(change(entries_of(saved(model, device).data))))
    return load(path, device=device)


PLAN_EDITS = {
    "buffers shrunk to 4 bytes": lambda p: p.update(buffer_bytes=[4] * len(p["buffer_bytes"])),
    "buffers shrunk to 1 byte": lambda p: p.update(buffer_bytes=[1] * len(p["buffer_bytes"])),
    "a 2**50-byte buffer": lambda p: p["buffer_bytes"].__setitem__(0, 2**50),
    "buffer index out of range": lambda p: p["buffer_of"].update(
        dict.fromkeys(p["buffer_of"], len(p["buffer_bytes"]))
    ),
    "buffer_of emptied": lambda p: p.update(buffer_of={}),
    "every tensor in one buffer": lambda p: p.update(buffer_of=dict.fromkeys(p["buffer_of"], 0)),
    "a step dropped": lambda p: p["steps"].pop(1),
    "steps reversed": lambda p: p.update(steps=p["steps"][::-1]),
    "no steps": lambda p: p.update(steps=[]),
    "unshared bytes edited": lambda p: p.update(unshared_bytes=1),
}


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("edit", PLAN_EDITS)
def test_the_plan_in_the_file_must_be_the_plan_derived_from_its_graph(
    tmp_path, device, model, edit
):
    with pytest.raises(
        ModelLoadError, match="plan.json differs from the plan this coretune derives"
    ):
        _load(tmp_path, device, model, _plan_edit(PLAN_EDITS[edit]))


@pytest.mark.parametrize("entry", ["manifest.json", "graph.json", "plan.json"])
@pytest.mark.parametrize("opener", ['{"a":', "["])
def test_json_nested_past_the_parsers_depth_is_a_load_error(tmp_path, device, entry, opener):
    def nest(entries):
        entries[entry] = (opener * 50_000 + "1").encode()
        return entries

    with pytest.raises(ModelLoadError, match=f"{entry} is not valid JSON"):
        _load(tmp_path, device, "mlp", nest)


def test_a_npy_header_claiming_a_huge_shape_is_refused_before_allocating(tmp_path, device):
    def huge(entries):
        with zipfile.ZipFile(io.BytesIO(entries["params.npz"])) as npz:
            arrays = {i.filename: npz.read(i) for i in npz.infolist()}
        name = sorted(arrays)[0]
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
        )
        arrays[name] = header.getvalue() + arrays[name][-64:]
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as npz:
            for key, data in arrays.items():
                npz.writestr(key, data)
        entries["params.npz"] = out.getvalue()
        return entries

    with pytest.raises(ModelLoadError, match=r"claims shape \(1000000000000,\)"):
        _load(tmp_path, device, "mlp", huge)


def test_a_damaged_central_directory_is_a_load_error(tmp_path, device):
    data = bytearray(saved("mlp", device).data)
    central = data.find(b"PK\x01\x02")
    data[central + 10 : central + 12] = struct.pack("<H", 99)  # an unknown compression method
    path = tmp_path / "damaged.ctm"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="not a readable .ctm file"):
        load(path, device=device)


def test_big_endian_parameters_and_inputs_run_correctly(tmp_path, device):
    original = saved("cnn", device)

    def big_endian(entries):
        with zipfile.ZipFile(io.BytesIO(entries["params.npz"])) as npz:
            arrays = {i.filename[:-4]: np.load(io.BytesIO(npz.read(i))) for i in npz.infolist()}
        out = io.BytesIO()
        np.savez(out, **{k: a.astype(a.dtype.newbyteorder(">")) for k, a in arrays.items()})
        entries["params.npz"] = out.getvalue()
        return entries

    module = _load(tmp_path, device, "cnn", big_endian)
    swapped = {k: a.astype(a.dtype.newbyteorder(">")) for k, a in original.inputs.items()}
    for got, want in zip(module.run(**swapped), original.outputs, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


SAMPLE = """
import collections, json, pathlib, sys, tempfile
from coretune.kernels import open_device
from tests.ctm_mutations import MODELS, MUTATIONS, make_case, run_case
device, directory = open_device(None), pathlib.Path(tempfile.mkdtemp())
counts = collections.Counter()
for model in MODELS:
    for mutation in MUTATIONS:
        for seed in range(int(sys.argv[1])):
            outcome = run_case(make_case(model, mutation, seed, device), device, directory)
            counts[outcome.kind] += 1
            if outcome.kind not in ("refused", "correct"):
                print("FAILED", model, mutation, seed, outcome.kind, outcome.message)
print(json.dumps(counts))
"""


def test_a_sample_of_every_mutation_loads_correctly_or_is_refused():
    run = subprocess.run(
        [sys.executable, "-c", SAMPLE, "3"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, f"the loader process died ({run.returncode}):\n{run.stderr[-3000:]}"
    assert "FAILED" not in run.stdout, run.stdout
    counts = json.loads(run.stdout.strip().splitlines()[-1])
    assert counts["refused"] > 0 and counts["correct"] > 0
