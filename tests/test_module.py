"""coretune.compile / Module.run / save / load, and .ctm files that are damaged or hostile."""

import io
import json
import pathlib
import zipfile

import numpy as np
import pytest

import coretune
from coretune.errors import InputError, ModelLoadError
from coretune.graph import run_reference
from coretune.graph.random import random_inputs
from coretune.module import compile as compile_module
from coretune.module import load

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "tiny_net.onnx"


@pytest.fixture(scope="module")
def saved(tmp_path_factory, device):
    module = compile_module(str(EXAMPLE), device=device)
    path = tmp_path_factory.mktemp("ctm") / "tiny.ctm"
    module.save(path)
    return module, path


def test_compiled_module_matches_the_reference_before_and_after_save(saved, device):
    module, path = saved
    graph = coretune.import_onnx(str(EXAMPLE))
    inputs = random_inputs(graph, seed=3)
    want = run_reference(graph, inputs)[0]
    got = module.run(**inputs)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    again = load(path, device=device).run(**inputs)[0]
    np.testing.assert_array_equal(again, got)
    summary = module.summary()
    assert summary["planned_bytes"] <= summary["unshared_bytes"]


def test_inputs_are_checked(saved):
    module, _ = saved
    with pytest.raises(InputError, match="shape"):
        module.run(input=np.zeros((1, 3, 31, 32), np.float32))
    with pytest.raises(InputError, match="dtype"):
        module.run(input=np.zeros((1, 3, 32, 32), np.float64))
    with pytest.raises(InputError, match="missing input 'input'"):
        module.run(image=np.zeros((1, 3, 32, 32), np.float32))


def _rewrite(path, tmp_path, change):
    """A copy of the .ctm with its entries passed through ``change(dict) -> dict``."""
    with zipfile.ZipFile(path) as archive:
        entries = {i.filename: archive.read(i) for i in archive.infolist()}
    entries = change(entries)
    out = tmp_path / "edited.ctm"
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out


def _json_edit(name, edit):
    def change(entries):
        data = json.loads(entries[name])
        edit(data)
        entries[name] = json.dumps(data).encode()
        return entries

    return change


def test_truncated_and_foreign_files_are_clear_errors(saved, tmp_path, device):
    _, path = saved
    cut = tmp_path / "cut.ctm"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="not a readable .ctm"):
        load(cut, device=device)
    with pytest.raises(ModelLoadError, match="not a readable .ctm"):
        load(EXAMPLE, device=device)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: {**e, "extra.py": b"print('hi')"}, "unexpected entries \\['extra.py'\\]"),
        (lambda e: {k: v for k, v in e.items() if k != "plan.json"}, "missing \\['plan.json'\\]"),
        (lambda e: {**e, "../escape.json": b"{}"}, "unexpected entries"),
        (_json_edit("manifest.json", lambda m: m.update(version=99)), "format version 99"),
    ],
)
def test_hostile_or_damaged_entries_are_rejected(saved, tmp_path, device, change, message):
    _, path = saved
    with pytest.raises(ModelLoadError, match=message):
        load(_rewrite(path, tmp_path, change), device=device)


def test_pickled_parameters_are_refused(saved, tmp_path, device):
    _, path = saved

    def pickled(entries):
        buffer = io.BytesIO()
        np.savez(buffer, **{"stem.w": np.array([{"evil": 1}], dtype=object)})
        entries["params.npz"] = buffer.getvalue()
        return entries

    with pytest.raises(ModelLoadError):
        load(_rewrite(path, tmp_path, pickled), device=device)


def test_parameter_shapes_must_agree_with_the_graph(saved, tmp_path, device):
    _, path = saved

    def reshaped(entries):
        with np.load(io.BytesIO(entries["params.npz"])) as npz:
            params = {k: npz[k] for k in npz.files}
        name = next(iter(params))
        params[name] = params[name].reshape(-1)[:1].copy()
        buffer = io.BytesIO()
        np.savez(buffer, **params)
        entries["params.npz"] = buffer.getvalue()
        return entries

    with pytest.raises(ModelLoadError, match="parameter"):
        load(_rewrite(path, tmp_path, reshaped), device=device)


def _first_kernel(edit):
    def change(plan):
        kernel = next(step for step in plan["steps"] if step["kind"] == "kernel")
        edit(kernel)

    return _json_edit("plan.json", change)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda k: k.update(source=k["source"].replace("{", "{ /* injected */", 1)),
            r"plan.json differs from the plan this coretune derives .*\(steps\[\d+\]\.source\)",
        ),
        (lambda k: k.update(template="os:system"), "unknown template 'os:system'"),
    ],
)
def test_kernel_code_from_the_file_is_never_used(saved, tmp_path, device, edit, message):
    """Kernels are re-rendered from template + config; edited source or a template named as an
    importable path is rejected, so nothing in the file can run code."""
    module, path = saved
    assert module.plan.kernels, "the example should compile to at least one kernel"
    with pytest.raises(ModelLoadError, match=message):
        load(_rewrite(path, tmp_path, _first_kernel(edit)), device=device)


def test_layers_sharing_one_compiled_kernel_keep_their_own_arguments(device):
    """Two identical layers render the same source, so they share one cached program; the
    executor binds each step's arguments once, which must not let one layer's weights leak
    into the other's launch. The graph outputs are written and read in place each run."""
    from coretune.graph import GraphBuilder

    rng = np.random.default_rng(5)
    b = GraphBuilder()
    h = b.input("x", (7, 33))
    for layer in range(3):
        w = b.param(f"w{layer}", rng.standard_normal((33, 33)).astype(np.float32) / 6)
        h = b.relu(b.dense(h, w))
    graph = b.build(h)
    module = compile_module(graph, device=device)
    sources = [step.source for step in module.plan.kernels]
    assert len(sources) == 3 and len(set(sources)) == 1, "the layers should share one kernel"
    for seed in (1, 2):  # a second run must not see the first run's inputs or outputs
        inputs = random_inputs(graph, seed=seed)
        want = run_reference(graph, inputs)[0]
        got = module.run(**inputs)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_pads_match_the_reference_run_after_run(device, tmp_path):
    """Constant pads of the last two axes fill their buffer's border once. Their interior is
    written in place where the padded tensor has no other reader: a graph input by a rectangle
    write (ranks 1, 2 and 4, a non-zero pad value, an integer tensor), a pool by its own stores;
    elsewhere by a rectangle copy each run (a pool read twice). The border must survive the
    runs and the buffer reuse around it."""
    from coretune.graph import GraphBuilder

    b = GraphBuilder()
    x = b.input("x", (2, 3, 7, 13))
    v = b.input("v", (33,))
    m = b.input("m", (1, 7))
    k = b.input("k", (3, 5), dtype="int32")
    padded = b.pad(x, pad_width=(0, 0, 0, 0, 2, 1, 0, 3), pad_value=-0.5)
    pooled = b.max_pool2d(padded, pool_size=(3, 3))  # reads the border
    again = b.pad(pooled, pad_width=(0, 0, 0, 0, 1, 1, 1, 1))  # a graph output, read on
    shared = b.max_pool2d(again, pool_size=(2, 2))
    outputs = [
        b.pad(v, pad_width=(4, 1)),
        b.pad(m, pad_width=(1, 0, 2, 2), pad_value=7.0),
        b.pad(k, pad_width=(0, 0, 1, 1)),
        again,
        b.relu(again),
        b.pad(shared, pad_width=(0, 0, 0, 0, 1, 2, 3, 0), pad_value=2.0),
        shared * 3.0,
    ]
    graph = b.build(*outputs)
    module = compile_module(graph, device=device)
    summary = module.summary()
    assert (summary["pads_in_place"], summary["pad_copies"]) == (5, 1)
    path = tmp_path / "pads.ctm"
    module.save(path)
    loaded = load(path, device=device)
    for seed in (1, 2):
        inputs = random_inputs(graph, seed=seed)
        want = run_reference(graph, inputs)
        for got in (module.run(**inputs), loaded.run(**inputs)):
            for g, w in zip(got, want, strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_residual_blocks_read_their_shortcut_where_the_pad_holds_it(device, tmp_path):
    """A tensor that a conv's pad and a residual add both read lives in the pad's interior: a
    graph input written there by its rectangle write, a conv's output stored there; the
    residual add in the next conv's epilogue reads it there. No pad copies remain; the
    module matches the reference run after run, and after save/load."""
    from coretune.graph import GraphBuilder

    b = GraphBuilder()
    rng = np.random.default_rng(5)

    def conv(x, name, channels):
        weight = b.param(f"{name}.w", rng.standard_normal((channels, 5, 3, 3), np.float32) / 4)
        bias = b.param(f"{name}.b", rng.standard_normal(channels, np.float32))
        return b.conv2d(x, weight, bias, padding=(1, 1, 1, 1))

    x = b.input("x", (1, 5, 13, 13))
    h = b.relu(conv(x, "conv1", 5) + x)  # x: read by conv1's pad and by its epilogue
    r = b.relu(conv(h, "conv2", 5))  # h: read by conv2's pad...
    out = b.relu(conv(r, "conv3", 5) + h)  # ... and by conv3's epilogue
    graph = b.build(b.max_pool2d(out, pool_size=(2, 2)))
    module = compile_module(graph, device=device)
    summary = module.summary()
    assert (summary["pads_in_place"], summary["pad_copies"]) == (3, 0)
    assert [k.placed for k in module.plan.kernels] == [True, True, False, False]
    path = tmp_path / "residual.ctm"
    module.save(path)
    loaded = load(path, device=device)
    for seed in (1, 2):
        inputs = random_inputs(graph, seed=seed)
        (want,) = run_reference(graph, inputs)
        for (got,) in (module.run(**inputs), loaded.run(**inputs)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_a_pad_step_in_place_is_derived_never_taken_from_the_file(device, tmp_path):
    """Whether a pad is written in place decides how its producer's kernel is rendered: load
    derives it as compile does, and a file that says otherwise is rejected."""
    from coretune.graph import GraphBuilder

    b = GraphBuilder()
    pooled = b.max_pool2d(b.input("x", (1, 3, 9, 9)), pool_size=(2, 2))
    padded = b.pad(pooled, pad_width=(0, 0, 0, 0, 1, 1, 1, 1))
    graph = b.build(b.max_pool2d(padded, pool_size=(3, 3)))
    module = compile_module(graph, device=device)
    assert [k.placed for k in module.plan.kernels] == [True, False]
    path = tmp_path / "placed.ctm"
    module.save(path)

    def flip(plan):
        pad = next(step for step in plan["steps"] if step["kind"] == "pad")
        pad["in_place"] = not pad["in_place"]

    with pytest.raises(ModelLoadError, match=r"\(steps\[\d+\]\.in_place\)"):
        load(_rewrite(path, tmp_path, _json_edit("plan.json", flip)), device=device)


def test_a_pad_step_must_name_a_pad_copy(saved, tmp_path, device):
    def retarget(plan):
        kernel = next(step for step in plan["steps"] if step["kind"] == "kernel")
        plan["steps"].append({"kind": "pad", "nodes": kernel["nodes"][:1]})

    with pytest.raises(ModelLoadError, match=r"\(steps has \d+ entries, not \d+\)"):
        load(_rewrite(saved[1], tmp_path, _json_edit("plan.json", retarget)), device=device)


def test_compile_launches_every_kernel_once_so_the_first_run_builds_nothing(device):
    """PoCL builds a kernel's work-group function at its first launch: compile runs the model
    once on zeros, so that cost is paid there, not by the user's first run."""
    from coretune.graph import GraphBuilder

    class CountingDevice:
        def __init__(self, inner):
            self.inner, self.launches = inner, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def bind(self, compiled, buffers):
            bound, outer = self.inner.bind(compiled, buffers), self

            class Counted:
                def launch(self, timed=True):
                    outer.launches += 1
                    return bound.launch(timed)

            return Counted()

    b = GraphBuilder()
    x = b.input("x", (3, 7))
    graph = b.build(b.softmax(b.relu(b.dense(x, b.param("w", np.ones((5, 7), np.float32))))))
    counting = CountingDevice(device)
    module = compile_module(graph, device=counting)
    assert counting.launches == len(module.plan.kernels) >= 2
    assert set(module.build_times()) == {"build_seconds", "warm_up_seconds"}
    (probabilities,) = module.run(x=np.random.default_rng(0).standard_normal((3, 7), np.float32))
    assert counting.launches == 2 * len(module.plan.kernels)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_a_model_s_kernels_are_built_as_one_program():
    """A driver's build costs mostly per program (PoCL): compile builds them together."""
    from coretune.graph import GraphBuilder
    from coretune.kernels import open_device

    b = GraphBuilder()
    x = b.input("x", (5, 13))
    w = b.param("w", np.random.default_rng(1).standard_normal((7, 13), np.float32))
    graph = b.build(b.softmax(b.sigmoid(b.dense(x, w))))
    module = compile_module(graph, device=open_device(None))  # its own, empty program cache
    bound = [p for kind, p in module._executor._actions if kind == "kernel"]
    assert len(bound) >= 2
    assert len({k.kernel.program.int_ptr for k in bound}) == 1


def test_a_split_read_by_several_consumers_runs_as_kernels_not_on_the_host(device):
    """An attention's q, k, v split: its pieces are slices fused into their consumers."""
    from coretune.graph import GraphBuilder

    b = GraphBuilder()
    x = b.input("x", (7, 39))
    q, k, v = b.split(x, axis=1, sizes=(13, 13, 13))
    graph = b.build(b.relu(q), b.sigmoid(k) * v, k + 1.0)
    module = compile_module(graph, device=device)
    assert module.summary()["host_steps"] == []
    inputs = random_inputs(graph, seed=3)
    for got, want in zip(module.run(**inputs), run_reference(graph, inputs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
