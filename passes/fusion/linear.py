"""Dense layers: ``MatMul(X, W) [+ bias] [-> activation]`` and ``Gemm`` → ``Linear(X, W, B?)``.

Why: one op per dense layer lets codegen emit one packed-weight kernel with the bias and
activation in its epilogue, and lets compression passes find every weight matrix by op.

Pattern:

* ``MatMul(X, W)`` with ``W`` a 2-D float constant (a weight; a MatMul of two activations, such
  as attention scores, never matches);
* ``Gemm(A, B, C?)`` with ``transA=0`` and ``B`` a 2-D constant: ``transB`` and ``alpha`` are
  folded into a new weight constant, ``beta * C`` into the bias (only when ``C`` broadcasts to
  ``[N]``; a per-row ``C`` does not fuse);
* then, while the current value has exactly one user (and is not a graph output): an ``Add`` of a
  constant that broadcasts to ``[N]`` (either operand order, only when there is no bias yet) and
  one activation: ``Relu``, ``Gelu`` (erf → ``gelu``, tanh → ``gelu_tanh``) or ``Silu`` (the
  ``silu`` fusion runs first and turns ``x * sigmoid(x)`` into ``Silu``).

An activation behind a pure ``Reshape`` (GPT-2's ``addmm`` → ``view`` → ``gelu``) is absorbed too:
an elementwise op commutes with a reshape, so the Reshape then reads the Linear's output.
"""

from __future__ import annotations

import numpy as np

from optc.ir.graph import Graph, Node, Value

from ._match import epilogue_activation, sole_user, strip
from ._rewriter import Rule, apply_rule, require


def _weight(v: Value | None) -> np.ndarray | None:
    v = strip(v)
    if v is None or v.const is None or v.const.ndim != 2 or not v.dtype.is_float:
        return None
    return v.const


def _bias_vector(c: np.ndarray, n: int, out_rank: int | None) -> np.ndarray | None:
    """``c`` as a 1-D [n] bias, if adding ``c`` to a [..., n] tensor of ``out_rank`` is exactly
    adding that vector (no broadcast beyond the last axis, no rank growth)."""
    if out_rank is None or c.ndim > out_rank or (c.size not in (1, n)):
        return None
    if any(d != 1 for d in c.shape[:-1]):
        return None
    return np.ascontiguousarray(np.broadcast_to(c.reshape(-1), (n,)))


def _add_operand(add: Node, v: Value) -> Value | None:
    """The other operand of ``add`` when one operand is ``v``."""
    a, b = strip(add.input(0)), strip(add.input(1))
    if a is strip(v) and b is not strip(v):
        return b
    if b is strip(v) and a is not strip(v):
        return a
    return None


def _start(node: Node) -> tuple[Value, np.ndarray, np.ndarray | None]:
    """(X, W [K, N], bias or None) of a MatMul/Gemm that can become a Linear."""
    x = node.input(0)
    w = _weight(node.input(1))
    require(w is not None, "the weight is not a 2-D float constant (a product of two activations stays a MatMul)")
    require(x.dtype == node.input(1).dtype, "the input and the weight have different types")
    if node.op == "MatMul":
        require(x.shape is not None and len(x.shape) >= 1, "the input's rank is unknown")
        return x, w, None
    require(not node.attrs["transA"], "Gemm with transA")
    w = w.T if node.attrs["transB"] else w
    alpha = node.attrs["alpha"]
    if alpha != 1.0:
        w = w * np.asarray(alpha, dtype=w.dtype)
    bias = None
    c = strip(node.input(2))
    if c is not None and node.attrs["beta"] != 0.0:
        require(c.const is not None, "Gemm's C is not a constant")
        bias = _bias_vector(c.const, w.shape[1], 2)
        require(bias is not None, "Gemm's C is not one value per output column")
        if node.attrs["beta"] != 1.0:
            bias = bias * np.asarray(node.attrs["beta"], dtype=bias.dtype)
    return x, np.ascontiguousarray(w, dtype=w.dtype), bias


def _match(node: Node):
    x, w, bias = _start(node)
    tail = node.output
    if bias is None:
        add = sole_user(tail)
        other = _add_operand(add, tail) if add is not None and add.op == "Add" else None
        if other is not None and other.const is not None and other.dtype == tail.dtype:
            b = _bias_vector(other.const, w.shape[1], tail.type.rank if tail.shape is not None else None)
            if b is not None and add.output.type == tail.type:
                bias, tail = b, add.output
    act, reshape = sole_user(tail), None
    if act is not None and act.op == "Reshape" and act.input(0) is not None and strip(act.input(0)) is strip(tail):
        reshape, act = act, sole_user(act.output)
    if epilogue_activation(act) is None:
        act, reshape = None, None
    return x, w, bias, tail, act, reshape


def linear_rule() -> Rule:
    """A fresh rule: its derived (transposed/scaled Gemm) weights are shared within one run."""
    derived: dict[tuple, Value] = {}

    def weight(graph: Graph, node: Node, w: np.ndarray) -> Value:
        """The constant holding ``w``: the node's own, or one new constant per derived array
        (a transposed Gemm weight shared by several Gemms is transposed once)."""
        src = strip(node.input(1))
        if src.const is w:
            return src
        key = (id(src), node.attrs.get("transB"), node.attrs.get("alpha"))
        if key not in derived:
            derived[key] = graph.add_constant(w, graph.unique_name(f"{src.name}_kn"))
        return derived[key]

    def rewrite(graph: Graph, node: Node, found):
        x, w, bias, tail, act, reshape = found
        ins = [x, weight(graph, node, w)]
        if bias is not None:
            ins.append(graph.add_constant(bias, graph.unique_name(f"{node.name}_bias")))
        activation = epilogue_activation(act) if act is not None else "none"
        lin = graph.add_node("Linear", ins, {"activation": activation}, before=node, name=f"{node.name}_linear")
        if reshape is not None:  # the activation commutes with the reshape: the Reshape reads the Linear
            reshape.set_input(0, lin.output)
            return [(act.output, reshape.output)]
        return [(act.output if act is not None else tail, lin.output)]

    return Rule("linear", ("MatMul", "Gemm"), _match, rewrite)


def fuse_linear(graph: Graph) -> int:
    """Fuse MatMul/Gemm with a constant weight, its bias Add and activation into Linear."""
    return apply_rule(graph, linear_rule()).matched
