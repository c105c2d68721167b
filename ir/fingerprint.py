"""Content fingerprints: equal fingerprints mean the same computation on the same numbers.

They key caches that outlive one graph object — a sweep's trials each start from a clone of the
same model, and a pass that reruns the reference interpreter on an unchanged graph can reuse
what an earlier trial computed (``passes/memo.py``). A fingerprint is the graph's text form with
every large constant replaced by a digest of its bytes. Digests are remembered per array object,
so clones (which share their constant arrays) cost a print, not a rehash of the weights.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Iterable, Mapping

import numpy as np

from .graph import Graph

_DIGESTS: dict[int, tuple[weakref.ref, str]] = {}


def array_digest(array: np.ndarray) -> str:
    """sha256 of dtype, shape and bytes; cached while the array object lives (a cached digest of a
    writeable array assumes it is not written in place, as graph constants are not)."""
    key = id(array)
    hit = _DIGESTS.get(key)
    if hit is not None and hit[0]() is array:
        return hit[1]
    h = hashlib.sha256()
    _update(h, array)
    digest = h.hexdigest()
    try:
        _DIGESTS[key] = (weakref.ref(array, lambda _, k=key: _DIGESTS.pop(k, None)), digest)
    except TypeError:  # not weak-referenceable: not cached
        pass
    return digest


def graph_fingerprint(graph: Graph) -> str:
    """A digest of ``graph``'s structure, types, attributes, metadata and constant contents."""
    from .text import elided_weights, print_graph

    h = hashlib.sha256(print_graph(graph, weights="elide").encode())
    for key, array in sorted(elided_weights(graph).items()):
        h.update(f"\n@{key}={array_digest(array)}".encode())
    return h.hexdigest()


def inputs_digest(input_sets: Iterable[Mapping[str, np.ndarray]]) -> str:
    """A digest of a list of input sets (names, dtypes, shapes and values, in order)."""
    h = hashlib.sha256()
    for feed in input_sets:
        for name in sorted(feed):
            h.update(f"|{name}:".encode())
            _update(h, feed[name])
        h.update(b";")
    return h.hexdigest()


def _update(h, array) -> None:
    a = np.asarray(array)
    h.update(f"{a.dtype.str}{a.shape}".encode())  # before ascontiguousarray, which makes 0-d arrays 1-d
    a = np.ascontiguousarray(a)
    if a.dtype.hasobject:  # strings and the like: their values, not their pointers
        h.update(repr(a.tolist()).encode())
    elif a.size:
        h.update(a.view(np.uint8).reshape(-1))
