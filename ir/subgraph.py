"""Subgraphs: the bodies of control-flow ops (``If`` branches, ``Loop`` and ``Scan`` bodies).

A subgraph is an ordinary ``Graph`` held by a node attribute of kind ``AttrKind.GRAPH``. It is
*closed*: it never uses a value of the enclosing graph directly. What an ONNX subgraph reads
from the outer scope by name becomes a **capture** — one of the subgraph's last
``num_captures`` inputs — and the node passes the captured outer values as its **trailing
inputs**, one group per subgraph attribute, in the order the op's schema declares them::

    If(%cond, <then captures...>, <else captures...>) {then_branch=..., else_branch=...}
    Loop(%M, %cond, %v0..., <body captures...>) {body=...}

So every use of an outer value is an ordinary node input: SSA, use lists, DCE, CSE,
``Graph.clone``, ``replace_all_uses_with`` and the verifier need no special case, and a pass
that does not understand the op treats it as an opaque node.
"""

from __future__ import annotations

from typing import Iterator

from .graph import Graph, Node, Value
from .schema import AttrKind, get_schema

__all__ = ["subgraphs", "capture_count", "explicit_inputs", "capture_groups", "walk", "has_subgraphs"]


def subgraphs(node: Node) -> list[tuple[str, Graph]]:
    """``(attribute name, subgraph)`` of each subgraph attribute of ``node``, in schema order."""
    schema = get_schema(node.op)
    if schema is None:
        return []
    out = []
    for key, spec in schema.attrs.items():
        if spec.kind is AttrKind.GRAPH:
            g = node.attrs.get(key)
            if isinstance(g, Graph):
                out.append((key, g))
    return out


def has_subgraphs(node: Node) -> bool:
    return bool(subgraphs(node))


def capture_count(node: Node) -> int:
    """How many trailing inputs of ``node`` are captures of its subgraphs."""
    return sum(g.num_captures for _, g in subgraphs(node))


def explicit_inputs(node: Node) -> tuple[Value | None, ...]:
    """The node's inputs without the captures (what the ONNX node lists)."""
    ins = node.inputs
    return ins[:max(len(ins) - capture_count(node), 0)]


def capture_groups(node: Node) -> list[tuple[str, Graph, tuple[Value | None, ...]]]:
    """``(attribute, subgraph, outer values bound to its captures)`` for each subgraph."""
    ins = node.inputs
    pos = max(len(ins) - capture_count(node), 0)
    out = []
    for key, g in subgraphs(node):
        out.append((key, g, ins[pos:pos + g.num_captures]))
        pos += g.num_captures
    return out


def walk(graph: Graph) -> Iterator[Graph]:
    """``graph`` and every subgraph nested in it (depth first)."""
    yield graph
    for node in graph.nodes:
        for _, g in subgraphs(node):
            yield from walk(g)
