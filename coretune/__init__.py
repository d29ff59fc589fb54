"""coretune: ONNX in, core ops, tuned kernels out."""

from importlib.metadata import PackageNotFoundError, version

from .errors import CoretuneError, GraphError, InputError, ModelLoadError, UnsupportedModelError

try:
    __version__ = version("coretune")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


def import_onnx(model, input_shapes=None):
    """Read an ONNX model (path, bytes or ModelProto) into a core-op Graph."""
    from .graph.exchange.importer import import_onnx as _import

    return _import(model, input_shapes=input_shapes)


def export_onnx(graph, opset=None):
    """Write a core-op Graph as a checked ONNX ModelProto."""
    from .graph.exchange.exporter import export_onnx as _export

    return _export(graph, opset=opset)


def compile(model, device=None, logs=None):  # noqa: A001 - the public verb
    """Compile an ONNX model (path or ModelProto) or a core-op Graph into a runnable Module,
    taking each kernel's best config from the tuning logs for this device."""
    from .module import compile as _compile

    return _compile(model, device=device, logs=logs)


def load(path, device=None):
    """Load a .ctm model file (validated; no code from the file is executed)."""
    from .module import load as _load

    return _load(path, device=device)


__all__ = [
    "CoretuneError",
    "GraphError",
    "InputError",
    "ModelLoadError",
    "UnsupportedModelError",
    "__version__",
    "compile",
    "export_onnx",
    "import_onnx",
    "load",
]
