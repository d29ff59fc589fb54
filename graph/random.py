"""Random inputs for a graph: never zeros, in ranges that keep every core op finite."""

import numpy as np

from .dtypes import is_float
from .ir import Graph


def random_array(shape, dtype: str, rng: np.random.Generator) -> np.ndarray:
    if is_float(dtype):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    return rng.integers(1, 10, size=shape).astype(dtype)


def random_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: random_array(t.shape, t.dtype, rng) for name, t in graph.inputs.items()}
