"""Projections: the linear maps by a constant weight that compression rewrites.

One view over the three spellings a dense layer has in the IR — ``Linear(X, W, B)`` (after
fusion), ``MatMul(X, W)`` optionally followed by ``Add(·, bias)``, and ``Gemm(X, W, C)`` — so
head pruning, FFN pruning and low-rank substitution work before and after ``fuse``. Weights are
always presented in MatMul orientation ``[in, out]``; ``replace_weight`` writes them back in the
node's own orientation. Constants are never modified in place (``Graph.clone`` shares arrays).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from ...ir.graph import Graph, Node, Value


@dataclass
class Projection:
    """``y = x @ W + b`` (then the ``Linear``'s activation, if any) with a constant ``W``."""

    node: Node  # Linear, MatMul or Gemm
    weight: Value
    bias: Value | None
    bias_add: Node | None  # the Add after a MatMul, when the bias is a separate node

    @property
    def input(self) -> Value:
        return self.node.input(0)

    @property
    def output(self) -> Value:
        """The value consumers see: after the bias (and the Linear's activation)."""
        return self.bias_add.output if self.bias_add is not None else self.node.output

    @property
    def transposed(self) -> bool:
        return self.node.op == "Gemm" and bool(self.node.attrs["transB"])

    @property
    def activation(self) -> str:
        return self.node.attrs.get("activation", "none") if self.node.op == "Linear" else "none"

    @property
    def name(self) -> str:
        """The weight's name: what reports and users call the layer."""
        return self.weight.name

    def matrix(self) -> np.ndarray:
        """W as ``[in, out]`` (Gemm's alpha applied)."""
        w = self.weight.const.T if self.transposed else self.weight.const
        if self.node.op == "Gemm" and self.node.attrs["alpha"] != 1.0:
            w = w * np.asarray(self.node.attrs["alpha"], w.dtype)
        return w

    def bias_vector(self) -> np.ndarray | None:
        """b as ``[out]`` (Gemm's beta applied), or None."""
        if self.bias is None:
            return None
        b = np.broadcast_to(self.bias.const, self.bias.const.shape[:-1] + (self.out_features,)).reshape(-1, self.out_features)[0]
        if self.node.op == "Gemm" and self.node.attrs["beta"] != 1.0:
            b = b * np.asarray(self.node.attrs["beta"], b.dtype)
        return b

    @property
    def in_features(self) -> int:
        return int(self.weight.const.shape[1 if self.transposed else 0])

    @property
    def out_features(self) -> int:
        return int(self.weight.const.shape[0 if self.transposed else 1])

    @property
    def parameters(self) -> int:
        return int(self.weight.const.size + (self.bias.const.size if self.bias is not None else 0))


def _const_2d(v: Value | None) -> bool:
    return v is not None and v.is_constant and v.const.ndim == 2 and v.dtype.is_float


def _bias_of(mm: Node, n_out: int) -> tuple[Value, Node] | None:
    """The per-output-feature constant added right after a MatMul, if its only use is that Add."""
    out = mm.output
    if len(out.uses) != 1 or out in mm.graph.outputs:
        return None
    add, _ = out.uses[0]
    if add.op != "Add":
        return None
    other = add.input(1) if add.input(0) is out else add.input(0)
    if other is None or not other.is_constant or other.const.size != n_out or other.const.shape[-1:] != (n_out,):
        return None
    return other, add


def as_projection(node: Node) -> Projection | None:
    """The projection ``node`` computes, or None when it is not a linear map by a constant."""
    if node.op == "Linear" and _const_2d(node.input(1)):
        b = node.input(2)
        return Projection(node, node.input(1), b if b is not None and b.is_constant else None, None)
    if node.op == "MatMul" and _const_2d(node.input(1)) and node.input(0) is not None and not node.input(0).is_constant:
        found = _bias_of(node, int(node.input(1).const.shape[1]))
        return Projection(node, node.input(1), *(found or (None, None)))
    if node.op == "Gemm" and _const_2d(node.input(1)) and not node.attrs["transA"]:
        c = node.input(2)
        n_out = int(node.input(1).const.shape[0 if node.attrs["transB"] else 1])
        if c is not None and not (c.is_constant and c.const.size == n_out):
            return None  # a bias that is not a per-feature constant is not a plain projection
        return Projection(node, node.input(1), c, None)
    return None


def find_projections(graph: Graph) -> list[Projection]:
    """Every projection in the graph, in node order."""
    return [p for p in map(as_projection, graph.nodes) if p is not None]


def producer_projection(value: Value) -> Projection | None:
    """The projection whose output is ``value`` (looking through the bias Add), or None."""
    node = value.producer
    if node is None:
        return None
    if node.op == "Add":
        for v in node.inputs:
            if v is not None and v.producer is not None and v.producer.op == "MatMul":
                p = as_projection(v.producer)
                if p is not None and p.bias_add is node:
                    return p
        return None
    p = as_projection(node)
    return p if p is not None and p.bias_add is None else None


def _swap_constant(graph: Graph, node: Node, index: int, array: np.ndarray) -> Value:
    old = node.input(index)
    new = graph.add_constant(np.ascontiguousarray(array.astype(old.const.dtype, copy=False)),
                             graph.unique_name(old.name))
    node.set_input(index, new)
    if not old.uses and old not in graph.outputs:
        graph.remove_constant(old)
        graph.rename_value(new, old.name)  # keep the weight's name: reports and users know it
    return new


def replace_weight(graph: Graph, proj: Projection, weight: np.ndarray, bias: np.ndarray | None = None) -> Projection:
    """Give ``proj`` a new ``[in, out]`` weight (and ``[out]`` bias, required exactly when it has
    one), in the node's orientation. Types downstream are stale until ``graph.infer_types()``."""
    if (bias is None) != (proj.bias is None):
        raise ValueError(f"{proj.name}: the bias must be replaced together with the weight")
    if proj.node.op == "Gemm":  # alpha/beta were folded into matrix()/bias_vector()
        proj.node.attrs = {**proj.node.attrs, "alpha": 1.0, "beta": 1.0}
    w = _swap_constant(graph, proj.node, 1, weight.T if proj.transposed else weight)
    b = None
    if bias is not None:
        node, index = (proj.bias_add, [v is proj.bias for v in proj.bias_add.inputs].index(True)) \
            if proj.bias_add is not None else (proj.node, 2)
        b = _swap_constant(graph, node, index, bias.reshape(proj.bias.const.shape[:-1] + (bias.shape[-1],)))
    return Projection(proj.node, w, b, proj.bias_add)


def name_patterns(text: str) -> list[str]:
    """A pass's ``include``/``exclude`` option ``a|b*`` as patterns; a plain word matches as a
    substring."""
    return [p if any(c in p for c in "*?[") else f"*{p}*" for p in filter(None, (s.strip() for s in text.split("|")))]


def name_matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)
