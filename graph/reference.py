"""The numpy reference executor: runs any graph with each op's reference implementation."""

from collections.abc import Mapping

import numpy as np

from coretune.errors import CoretuneError, InputError

from .dtypes import native_order
from .ir import Graph, TensorType
from .registry import get_op


def check_inputs(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Match runtime inputs to the graph by name, shape and dtype; one error lists every miss."""
    problems = []
    unknown = sorted(set(inputs) - set(graph.inputs))
    if unknown:
        problems.append(
            f"unknown input(s) {', '.join(unknown)}; the graph takes "
            f"{', '.join(graph.inputs) or 'none'}"
        )
    arrays = {}
    for name, want in graph.inputs.items():
        if name not in inputs:
            problems.append(f"missing input {name!r} ({want})")
            continue
        array = native_order(np.asarray(inputs[name]))
        if array.dtype.name != want.dtype:
            problems.append(f"input {name!r} has dtype {array.dtype.name}, expected {want.dtype}")
        elif tuple(array.shape) != want.shape:
            problems.append(f"input {name!r} has shape {tuple(array.shape)}, expected {want.shape}")
        arrays[name] = array
    if problems:
        raise InputError("; ".join(problems))
    return arrays


def run_reference(
    graph: Graph, inputs: Mapping[str, np.ndarray] | None = None, **kw_inputs: np.ndarray
) -> list[np.ndarray]:
    """Evaluate ``graph`` with numpy; returns its outputs in graph order."""
    if not graph.types:
        graph.validate()
    env: dict[str, np.ndarray] = dict(graph.params)
    env.update(check_inputs(graph, {**(inputs or {}), **kw_inputs}))
    for node in graph.nodes:
        try:
            results = get_op(node.op).evaluate([env[i] for i in node.inputs], node.attrs)
        except CoretuneError:
            raise
        except (ValueError, IndexError, TypeError) as exc:  # e.g. a gather index out of range
            raise CoretuneError(f"node {node.name!r} ({node.op}) failed: {exc}") from None
        for name, value in zip(node.outputs, results, strict=True):
            expected = graph.types[name]
            if TensorType.of(value) != expected:
                raise CoretuneError(
                    f"node {node.name!r} ({node.op}): reference produced "
                    f"{TensorType.of(value)}, its rules promised {expected}"
                )
            env[name] = value
    return [env[name] for name in graph.outputs]
