"""Graph passes, each a small unit: simplification, constant and batch-norm folding, fusion,
memory planning."""

from .fold_batch_norm import fold_batch_norm
from .fold_constants import fold_constants
from .fuse import FusedGroup, fuse
from .memory import MemoryPlan, plan_memory
from .simplify import remove_dead_code, remove_identities


def optimize(graph):
    """The standard pipeline before fusion: fold constants, drop identities, fold batch norms."""
    graph = fold_constants(graph)
    graph = remove_identities(graph)
    return fold_batch_norm(graph)


__all__ = [
    "FusedGroup",
    "MemoryPlan",
    "fold_batch_norm",
    "fold_constants",
    "fuse",
    "optimize",
    "plan_memory",
    "remove_dead_code",
    "remove_identities",
]
