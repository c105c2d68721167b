"""Shape constants that structured pruning has to rewrite: the head count in a split reshape,
the feature width in a flattening reshape, the sizes of the Split that cuts a fused QKV
projection. An edit names one integer entry (node, input, element) and the quantity it stands
for; the pruning pass computes the new value and ``apply_edits`` writes new constants (shared
shape constants are never modified, the node gets its own copy).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ...ir.graph import Graph, Node, Value


class StructureError(Exception):
    """A block whose structure the analysis cannot follow (the message is the reason)."""


@dataclass(frozen=True)
class ShapeEdit:
    """One integer entry of a constant input: ``node.input(index).const.flat[element]``,
    standing for ``kind`` (e.g. ``heads:q``, ``width:q+k+v``, ``offset:k``) with value ``old``."""

    node: Node
    index: int
    element: int
    kind: str
    old: int
    via: tuple[Node, int] | None = None  # (consumer, input) when ``node`` is a Concat building its shape

    def describe(self) -> str:
        return f"{self.node.name}[{self.index}][{self.element}]={self.old} ({self.kind})"


def entry_source(shape: Value, position: int) -> tuple[Node, int, int] | None:
    """Where entry ``position`` of a 1-D shape value lives: ``(node, input index, element)`` of
    a constant feeding a node — the consumer when ``shape`` itself is a constant (None then:
    the caller knows the consumer), or a constant piece of the ``Concat`` that builds it."""
    p = shape.producer
    if p is None or p.op != "Concat":
        return None
    offset = 0
    for i, piece in enumerate(p.inputs):
        if piece is None or piece.shape is None or len(piece.shape) != 1 or not isinstance(piece.shape[0], int):
            return None
        n = piece.shape[0]
        if offset <= position < offset + n:
            if piece.is_constant:
                return p, i, position - offset
            return None
        offset += n
    return None


def shape_entry(node: Node, index: int, position: int, kind: str, expect: int) -> ShapeEdit | None:
    """The edit for entry ``position`` of ``node``'s shape input ``index`` if it holds
    ``expect``; None when it holds -1 or 0 (inferred, nothing to rewrite). Raises
    ``StructureError`` when the entry is not a constant or holds something else."""
    shape = node.input(index)
    if shape is None:
        raise StructureError(f"{node.name}: no shape input")
    if shape.is_constant:
        flat = shape.const.reshape(-1)
        if position >= flat.size:
            raise StructureError(f"{node.name}: shape has no entry {position}")
        val = int(flat[position])
        where = (node, index, position)
    else:
        src = entry_source(shape, position)
        if src is None:
            sym = shape.sym
            if sym is not None and position < len(sym) and sym[position] in (-1, 0):
                return None
            raise StructureError(f"{node.name}: shape entry {position} is computed at run time")
        n, i, e = src
        val = int(n.input(i).const.reshape(-1)[e])
        where = src
    if val in (-1, 0):
        return None
    if val != expect:
        raise StructureError(f"{node.name}: shape entry {position} is {val}, expected {expect}")
    return ShapeEdit(where[0], where[1], where[2], kind, val, None if where[0] is node else (node, index))


def apply_edits(graph: Graph, edits: Iterable[ShapeEdit], value_of: Callable[[ShapeEdit], int]) -> int:
    """Write every edit's new value (``value_of(edit)``) into a fresh constant per (node, input);
    returns how many entries changed."""
    grouped: dict[tuple[int, int], list[ShapeEdit]] = {}
    nodes: dict[int, Node] = {}
    private: dict[tuple[int, int], Node] = {}
    for e in edits:
        if e.via is not None and len(e.node.output.uses) > 1:  # a shared Concat: give the consumer its own
            consumer, ci = e.via
            key = (id(consumer), ci)
            if key not in private:
                private[key] = graph.add_node("Concat", list(e.node.inputs), dict(e.node.attrs), before=consumer)
                consumer.set_input(ci, private[key].output)
            e = dataclasses.replace(e, node=private[key])
        grouped.setdefault((id(e.node), e.index), []).append(e)
        nodes[id(e.node)] = e.node
    changed = 0
    for (nid, index), group in grouped.items():
        node = nodes[nid]
        old = node.input(index)
        arr = np.array(old.const, copy=True)
        flat = arr.reshape(-1)
        for e in group:
            new = int(value_of(e))
            if new != int(flat[e.element]):
                flat[e.element] = new
                changed += 1
        if not np.array_equal(arr, old.const):
            node.set_input(index, graph.add_constant(arr, graph.unique_name(old.name)))
            if not old.uses and old not in graph.outputs:
                graph.remove_constant(old)
    return changed


def trace_features_back(value: Value, kind: str) -> tuple[Value, list[ShapeEdit], list[Node]]:
    """Follow ``value`` up through reshapes that keep the last (feature) axis; returns the
    first value that is not such a reshape's output, the width edits on the way and the
    reshape nodes."""
    edits, nodes = [], []
    while value.producer is not None and value.producer.op == "Reshape":
        r = value.producer
        x = r.input(0)
        if x.shape is None or value.shape is None or x.shape[-1] != value.shape[-1] or not isinstance(value.shape[-1], int):
            break
        e = shape_entry(r, 1, len(value.shape) - 1, kind, int(value.shape[-1]))
        if e is not None:
            edits.append(e)
        nodes.append(r)
        value = x
    return value, edits, nodes


def trace_features_forward(value: Value, kind: str) -> tuple[Value, list[ShapeEdit], list[Node]]:
    """Follow ``value`` down through single-use reshapes that keep the last axis."""
    edits, nodes = [], []
    g = value.graph
    while value not in g.outputs:
        uses = [u for u in value.uses if u[0].op != "Shape"]
        if len(uses) != 1:
            break
        n, i = uses[0]
        if n.op != "Reshape" or i != 0:
            break
        y = n.output
        if y.shape is None or value.shape is None or y.shape[-1] != value.shape[-1] or not isinstance(y.shape[-1], int):
            break
        e = shape_entry(n, 1, len(y.shape) - 1, kind, int(y.shape[-1]))
        if e is not None:
            edits.append(e)
        nodes.append(n)
        value = y
    return value, edits, nodes
