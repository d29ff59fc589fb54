"""coretune as an ONNX backend (``onnx.backend.base``), so ONNX's own test suite can run it.

    rep = coretune.backend.prepare(model, "CPU")
    outputs = rep.run([x])

The core IR needs static shapes, and constant shapes, axes and pads, so a rep imports the
model when it first sees an input signature: the input shapes, plus the values of the inputs
that feed such slots (``constant_inputs``; ONNX's node tests feed Reshape's shape that way).
It keeps one core graph per signature.
"""

from collections.abc import Callable, Mapping

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, namedtupledict

from .errors import CoretuneError, InputError
from .graph.exchange.convert_base import onnx_dtype
from .graph.exchange.importer import constant_inputs, import_onnx, load_model
from .graph.ir import Graph
from .graph.reference import run_reference

Executor = Callable[[Graph, dict[str, np.ndarray]], list[np.ndarray]]

_MODULES: dict[tuple[int, str], tuple[Graph, object]] = {}
_DEVICES: dict[str, object] = {}


def compiled_on(spec: str | None) -> Executor:
    """An executor that compiles each graph for device ``spec`` (once per graph) and runs it."""

    def run_compiled(graph: Graph, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        from .module import compile as compile_module

        entry = _MODULES.get((id(graph), str(spec)))
        if entry is None or entry[0] is not graph:
            entry = (graph, compile_module(graph, device=_device(spec)))
            _MODULES[(id(graph), str(spec))] = entry
        return entry[1].run(**inputs)

    return run_compiled


def _device(spec: str | None):
    if str(spec) not in _DEVICES:
        from .kernels import open_device

        _DEVICES[str(spec)] = open_device(spec)
    return _DEVICES[str(spec)]


# Device type -> how a graph runs there: the one place a new device plugs in. "OPENCL" is the
# default OpenCL device, "CUDA" the first CUDA GPU.
EXECUTORS: dict[str, Executor] = {
    "CPU": run_reference,
    "OPENCL": compiled_on(None),
    "CUDA": compiled_on("cuda:0"),
}


def _device_type(device: str) -> str:
    return str(device).split(":")[0].upper()


class CoretuneRep(BackendRep):
    """A prepared model: runs it on one device, importing once per input signature."""

    def __init__(self, model: onnx.ModelProto, device: str = "CPU"):
        self.model = model
        self.device = _device_type(device)
        self._execute = EXECUTORS[self.device]
        graph = model.graph
        initializers = {t.name for t in graph.initializer}
        self._inputs = [i.name for i in graph.input]
        self._runtime_inputs = [n for n in self._inputs if n not in initializers]
        self._outputs = [o.name for o in graph.output]
        self._output_dtypes = [onnx_dtype(o.type.tensor_type.elem_type) for o in graph.output]
        self._frozen = constant_inputs(model)
        self._graphs: dict[tuple, Graph] = {}

    def graph_for(
        self, shapes: Mapping[str, tuple[int, ...]], values: Mapping[str, np.ndarray] | None = None
    ) -> Graph:
        """The core graph for these input shapes and frozen input values (imported once)."""
        values = dict(values or {})
        key = (
            tuple(sorted((n, tuple(s)) for n, s in shapes.items() if n not in values)),
            tuple(sorted((n, a.dtype.name, a.shape, a.tobytes()) for n, a in values.items())),
        )
        if key not in self._graphs:
            self._graphs[key] = import_onnx(
                self.model,
                input_shapes={n: s for n, s in shapes.items() if n not in values},
                input_values=values,
            )
        return self._graphs[key]

    def import_declared(self) -> None:
        """Import for the declared input shapes now, when they are static and no input value
        is needed, so that an unsupported model already fails at prepare time."""
        shapes = _static_shapes(self.model)
        if shapes is not None and not self._frozen:
            self.graph_for(shapes)

    def run(self, inputs, **kwargs) -> tuple:
        feeds = self._feeds(inputs)
        frozen = {n: a for n, a in feeds.items() if n in self._frozen}
        graph = self.graph_for({n: a.shape for n, a in feeds.items()}, frozen)
        results = self._execute(graph, {n: a for n, a in feeds.items() if n not in frozen})
        outputs = [
            r if t is None or r.dtype.name == t else r.astype(t)
            for r, t in zip(results, self._output_dtypes, strict=True)
        ]
        return namedtupledict("Outputs", self._outputs)(*outputs)

    def _feeds(self, inputs) -> dict[str, np.ndarray]:
        """Name the runtime inputs: a dict by name, a list by position (all graph inputs, or
        only those that are not initializers), or one array for a one-input model."""
        if isinstance(inputs, Mapping):
            unknown = sorted(set(inputs) - set(self._inputs))
            if unknown:
                raise InputError(
                    f"unknown input(s) {', '.join(unknown)}; the model takes "
                    f"{', '.join(self._runtime_inputs) or 'none'}"
                )
            return {n: np.asarray(a) for n, a in inputs.items()}
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        inputs = list(inputs)
        for names in (self._runtime_inputs, self._inputs):
            if len(inputs) == len(names):
                return {n: np.asarray(a) for n, a in zip(names, inputs, strict=True)}
        raise InputError(
            f"got {len(inputs)} input(s); the model takes "
            f"{len(self._runtime_inputs)} ({', '.join(self._runtime_inputs)})"
        )


def _unavailable(device: str) -> str:
    """Why graphs cannot run on ``device`` here ('' when they can): an unknown device type, or
    a GPU type whose device does not open on this machine."""
    kind = _device_type(device)
    if kind not in EXECUTORS:
        return f"coretune's ONNX backend runs on {', '.join(EXECUTORS)}"
    if kind == "CUDA":
        from .kernels import DeviceError

        try:
            _device("cuda:0")
        except DeviceError as exc:
            return str(exc)
    return ""


class CoretuneBackend(Backend):
    @classmethod
    def supports_device(cls, device: str) -> bool:
        return not _unavailable(device)

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> CoretuneRep:
        reason = _unavailable(device)
        if reason:
            raise CoretuneError(f"device {device!r} is not supported here: {reason}")
        rep = CoretuneRep(load_model(model), device)
        rep.import_declared()
        return rep

    @classmethod
    def run_node(
        cls, node: onnx.NodeProto, inputs, device: str = "CPU", outputs_info=None, **kwargs
    ) -> tuple:
        """Run one node by wrapping it in a one-node model typed by the given inputs."""
        names = [n for n in node.input if n]
        arrays = [np.asarray(a) for a in inputs]
        infos = [
            onnx.helper.make_tensor_value_info(
                n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape
            )
            for n, a in zip(names, arrays, strict=True)
        ]
        outs = [onnx.helper.make_empty_tensor_value_info(n) for n in node.output if n]
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        model = onnx.helper.make_model(
            onnx.helper.make_graph([node], f"run_node_{node.op_type}", infos, outs),
            opset_imports=[onnx.helper.make_opsetid("", opset)],
        )
        # ONNX's shape inference types the outputs, as the checker requires.
        model = onnx.shape_inference.infer_shapes(model)
        return cls.prepare(model, device).run(arrays)


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]] | None:
    """Declared input shapes when every dimension is static, else None."""
    initializers = {t.name for t in model.graph.initializer}
    shapes = {}
    for info in model.graph.input:
        if info.name in initializers:
            continue
        tensor_type = info.type.tensor_type
        dims = tensor_type.shape.dim
        if not tensor_type.HasField("shape") or not all(d.HasField("dim_value") for d in dims):
            return None
        shapes[info.name] = tuple(d.dim_value for d in dims)
    return shapes


prepare = CoretuneBackend.prepare
run_model = CoretuneBackend.run_model
run_node = CoretuneBackend.run_node
supports_device = CoretuneBackend.supports_device
