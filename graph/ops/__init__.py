"""The core-op declarations; importing this package registers every op."""

from . import conv, elemwise, indexing, nn, reduce, resize, transform  # noqa: F401
