"""``cse``: common-subexpression elimination by structural hashing.

Two nodes are the same computation when they have the same op, attributes, number of outputs
and inputs (the same values; constants are equal by dtype, shape and contents). Constants equal
by value are merged first, so ``Add(x, c1)`` and ``Add(x, c2)`` with equal ``c1``/``c2`` merge too.
Inputs of commutative binary ops are ordered canonically. The later duplicate is replaced by
the earlier one, so node order stays topological.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..ir.graph import Graph, Node
from .base import Pass, PassResult, option, register_pass
from .rewrite import forward, remove_if_dead

_COMMUTATIVE = {"Add", "Mul", "And", "Or", "Xor", "Equal", "BitwiseAnd", "BitwiseOr", "BitwiseXor"}
# Ops whose results are not a function of their inputs.
_IMPURE = {"Dropout", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
           "Multinomial", "Bernoulli"}


def _attr_key(v: Any) -> Any:
    if isinstance(v, Graph):
        # A subgraph (If/Loop/Scan body) is compared by its full text: equal bodies merge,
        # different ones never do.
        from ..ir.text import print_graph

        return ("graph", hashlib.sha1(print_graph(v, weights="inline").encode()).hexdigest())
    if isinstance(v, np.ndarray):
        return ("nd", v.dtype.str, v.shape, hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest())
    if isinstance(v, (list, tuple)):
        return tuple(_attr_key(x) for x in v)
    if isinstance(v, float) and v != v:
        return ("nan",)
    return (type(v).__name__, v if not hasattr(v, "value") else repr(v))


def _const_key(arr: np.ndarray) -> tuple:
    a = np.ascontiguousarray(arr)  # hashed through a byte view: tobytes copied SmolLM2's 540 MB (1.5 s)
    return (a.dtype.str, a.shape, hashlib.sha1(a.reshape(-1).view(np.uint8)).hexdigest())


def merge_constants(graph: Graph) -> int:
    seen: dict[tuple, Any] = {}
    merged = 0
    for v in list(graph.constants.values()):
        key = _const_key(v.const)
        first = seen.get(key)
        if first is None:
            seen[key] = v
            continue
        if v in graph.outputs or not np.array_equal(first.const, v.const, equal_nan=v.dtype.is_float):
            continue
        v.replace_all_uses_with(first)
        graph.remove_constant(v)
        merged += 1
    return merged


def _node_key(node: Node) -> tuple:
    ins = tuple(None if v is None else id(v) for v in node.inputs)
    if node.op in _COMMUTATIVE and len(ins) == 2:
        ins = tuple(sorted(ins, key=lambda x: -1 if x is None else x))
    attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
    return (node.op, attrs, ins, len(node.outputs))


@register_pass
@dataclass
class CommonSubexpressionElimination(Pass):
    """Merge nodes computing the same op with the same attributes on the same inputs
    (constants compared by value)."""

    name: ClassVar[str] = "cse"
    constants: bool = option(True, "also merge constants that are equal by value")

    def run(self, graph, ctx) -> PassResult:
        merged_constants = merge_constants(graph) if self.constants else 0
        seen: dict[tuple, Node] = {}
        merged = 0
        for node in list(graph.nodes):
            if node not in graph.nodes or node.op in _IMPURE:
                continue
            key = _node_key(node)
            first = seen.get(key)
            if first is None:
                seen[key] = node
                continue
            done = True
            for old, new in zip(node.outputs, first.outputs):
                if old.uses or old in graph.outputs:
                    done &= forward(graph, old, new)
            if done:
                remove_if_dead(graph, node)
                merged += 1
        return PassResult(bool(merged or merged_constants),
                          {"merged_nodes": merged, "merged_constants": merged_constants})
