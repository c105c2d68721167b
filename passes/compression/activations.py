"""Activations on calibration data: the values inside a graph that importance scores, re-fits
and activation-aware factorization are computed from, taken from the reference interpreter."""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from ...ir.graph import Graph
from ...ir.interpreter import Interpreter


def capture(graph: Graph, names: Iterable[str], input_sets: Iterable[Mapping[str, np.ndarray]]
            ) -> list[dict[str, np.ndarray]]:
    """For each input set, the graph's outputs plus the named internal values."""
    probe = graph.clone()
    extra = [probe.value(n) for n in dict.fromkeys(names) if n not in probe.output_names()]
    probe.set_outputs(list(probe.outputs) + extra)
    run = Interpreter(probe)
    return [run(feed) for feed in input_sets]


def token_weights(feed: Mapping[str, np.ndarray], leading_shape: tuple[int, ...]) -> np.ndarray | None:
    """Per-row weights for activations whose leading dims are ``[batch, seq]``: the attention
    mask (padded positions count 0), or None when the inputs have no matching mask."""
    for name, x in feed.items():
        if "mask" in name.lower() and np.ndim(x) == 2 and tuple(np.shape(x)) == tuple(leading_shape[:2]):
            w = np.asarray(x, np.float64)
            return np.broadcast_to(w.reshape(w.shape + (1,) * (len(leading_shape) - 2)), leading_shape).reshape(-1)
    return None


def rows(array: np.ndarray, feed: Mapping[str, np.ndarray]) -> np.ndarray:
    """An activation ``[..., features]`` as float64 rows, padded positions dropped."""
    a = np.asarray(array, np.float64)
    flat = a.reshape(-1, a.shape[-1])
    w = token_weights(feed, a.shape[:-1]) if a.ndim >= 3 else None
    return flat if w is None else flat[w > 0]


def input_gram(graph: Graph, value_names: Iterable[str], input_sets: list[Mapping[str, np.ndarray]]
               ) -> dict[str, tuple[np.ndarray, int]]:
    """``X^T X`` (float64) and the row count of each named value over the calibration inputs —
    the second-moment statistics whitening and least-squares re-fits need (reused across the
    pipelines of a sweep while a ``PassMemo`` is active)."""
    from ..memo import memoized

    names, sets = list(dict.fromkeys(value_names)), list(input_sets)
    return memoized("input_gram", graph, sets, tuple(names), lambda: _input_gram(graph, names, sets))


def _input_gram(graph: Graph, names: list[str], input_sets: list[Mapping[str, np.ndarray]]
                ) -> dict[str, tuple[np.ndarray, int]]:
    out: dict[str, tuple[np.ndarray, int]] = {}
    for feed, values in zip(input_sets, capture(graph, names, input_sets)):
        for n in names:
            x = rows(values[n], feed)
            g, count = out.get(n, (0.0, 0))
            out[n] = (g + x.T @ x, count + x.shape[0])
    return out
