"""Analyses computed on demand and cached until a pass reports a change.

    ctx.analyses.get("flops")        # ir.analysis.GraphSummary
    ctx.analyses.get("uses")         # {value name: [(node name, input index), ...]}
    ctx.analyses.get("dominators")   # {node: immediate dominator node} (networkx)

``register_analysis(name)`` adds one. The manager calls ``invalidate()`` after every pass whose
result says it changed the graph (and whenever the graph object is a different one).
"""

from __future__ import annotations

from typing import Any, Callable

from ..ir.graph import Graph

_ANALYSES: dict[str, Callable[[Graph], Any]] = {}


def register_analysis(name: str) -> Callable:
    def wrap(fn: Callable[[Graph], Any]) -> Callable[[Graph], Any]:
        _ANALYSES[name] = fn
        return fn

    return wrap


@register_analysis("shapes")
def _shapes(graph: Graph) -> dict[str, Any]:
    return {v.name: v.type for v in graph.values()}


@register_analysis("flops")
def _flops(graph: Graph):
    from ..ir.analysis import summarize

    return summarize(graph)


@register_analysis("uses")
def _uses(graph: Graph) -> dict[str, list[tuple[str, int]]]:
    return {v.name: [(n.name, i) for n, i in v.uses] for v in graph.values()}


@register_analysis("nx")
def _nx(graph: Graph):
    return graph.to_networkx()


@register_analysis("dominators")
def _dominators(graph: Graph) -> dict:
    """Immediate dominators of the node graph, from a virtual entry feeding every node that
    has no node inputs (the entry itself is left out of the result)."""
    import networkx as nx

    g = nx.DiGraph(graph.to_networkx())
    entry = object()
    g.add_node(entry)
    for n in graph.nodes:
        if g.in_degree(n) == 0:
            g.add_edge(entry, n)
    idom = nx.immediate_dominators(g, entry)
    return {n: (None if d is entry else d) for n, d in idom.items() if n is not entry}


class AnalysisManager:
    def __init__(self):
        self._cache: dict[str, Any] = {}
        self._graph_id: int | None = None
        self.computed = 0  # how many analyses were computed (not served from the cache)

    def get(self, name: str, graph: Graph) -> Any:
        if name not in _ANALYSES:
            raise KeyError(f"unknown analysis {name!r}; known: {', '.join(sorted(_ANALYSES))}")
        if self._graph_id != id(graph):
            self.invalidate()
            self._graph_id = id(graph)
        if name not in self._cache:
            self._cache[name] = _ANALYSES[name](graph)
            self.computed += 1
        return self._cache[name]

    def invalidate(self) -> None:
        self._cache.clear()

    def cached(self) -> set[str]:
        return set(self._cache)
