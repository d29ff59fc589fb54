"""Graph passes, each a small unit: simplification, constant and batch-norm folding, fusion,
memory planning."""

from .explicit_padding import explicit_padding
from .fold_batch_norm import fold_batch_norm
from .fold_constants import fold_constants
from .fuse import FusedGroup, fuse, is_copy_pad
from .memory import MemoryPlan, plan_memory
from .simplify import remove_dead_code, remove_identities, split_into_slices
from .subsample import subsample_pointwise_convs


def optimize(graph):
    """The standard pipeline before fusion: fold constants, drop identities, splits as slices,
    fold batch norms, pad dense convolutions' inputs explicitly, subsample strided 1 x 1
    convolutions' inputs explicitly."""
    graph = fold_constants(graph)
    graph = split_into_slices(remove_identities(graph))
    return subsample_pointwise_convs(explicit_padding(fold_batch_norm(graph)))


__all__ = [
    "FusedGroup",
    "MemoryPlan",
    "explicit_padding",
    "fold_batch_norm",
    "fold_constants",
    "fuse",
    "is_copy_pad",
    "optimize",
    "plan_memory",
    "remove_dead_code",
    "remove_identities",
    "split_into_slices",
    "subsample_pointwise_convs",
]
