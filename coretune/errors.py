"""The one exception family coretune raises for anything a user can get wrong.

Every error a user can cause (a bad model file, an unsupported op, a wrong input shape, a
config that breaks a device limit) is a ``CoretuneError``; anything else escaping is a bug.
"""


class CoretuneError(Exception):
    """Base of every error coretune raises on purpose."""


class ModelLoadError(CoretuneError):
    """A model file could not be read or parsed (truncated, not ONNX, not a .ctm)."""


class UnsupportedModelError(CoretuneError):
    """A model uses ops or features outside what coretune supports; lists every offender."""


class GraphError(CoretuneError):
    """A graph is malformed: unknown op, bad attribute, shape mismatch, cycle, dangling input."""


class ShapeError(GraphError):
    """An op's shape or dtype rule rejected its inputs."""


class AttrError(GraphError):
    """An attribute is missing, of the wrong type or out of range."""


class InputError(CoretuneError):
    """Runtime inputs do not match the graph (name, shape or dtype)."""
