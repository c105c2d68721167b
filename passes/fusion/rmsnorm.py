"""RMSNorm: ``x * rsqrt(mean(x**2, trailing axes) + eps) * w`` → ``RMSNormalization(x, w)``.

Pattern: anchored at ``ReduceMean(x**2)`` (``Pow(x, 2)`` or ``x * x``, keepdims, trailing axes),
``+ eps``, then the inverse square root in any spelling (``Reciprocal(Sqrt)``, ``1 / Sqrt``,
``Pow(-0.5)``, or ``x / Sqrt``), ``x * inv`` in either order, then an optional ``* w`` (either order;
through same-type Casts as the TorchScript exporter writes them). Check: constant scalar eps,
``w`` broadcasts over the normalized axes only; without ``w`` the scale is a ones constant (needs
static normalized dims).
"""

from __future__ import annotations

from optc.ir.graph import Graph, Node

from ._match import (affine, epsilon_of, first, is_scalar, normalized, ones_scale, producer, reduce_mean_of, same,
                     static_tail, strip, users)
from ._rewriter import Rule, apply_rule, require


def _squared(r: Node):
    """x for a mean of ``Pow(x, 2)`` or ``x * x``."""
    sq = producer(r.input(0), "Pow", "Mul")
    if sq is not None and sq.op == "Pow" and is_scalar(sq.input(1), 2.0):
        return strip(sq.input(0))
    if sq is not None and sq.op == "Mul" and same(sq.input(0), sq.input(1)):
        return strip(sq.input(0))
    return None


def _match(r: Node):
    k = reduce_mean_of(r)
    require(k is not None, "not a mean over trailing axes that keeps its dims")
    x = _squared(r)
    require(x is not None, "not a mean of a square (x**2 or x * x)")
    require(x.dtype.is_float and x.type.rank is not None, "the squared input is not a float tensor of known rank")
    found = first((eps, n) for add in users(r.output, "Add") for eps in [epsilon_of(add, r.output)] if eps is not None
                  for n in [normalized(add.output, x)] if n is not None)
    require(found is not None, "x is not divided by sqrt(mean(x**2) + constant eps)")
    eps, n = found
    out, w, _ = affine(n, x, k, with_bias=False)
    require(w is not None or static_tail(x, k), "no scale, and the normalized dims are not static (for a ones scale)")
    return x, k, eps, out, w


def _rewrite(graph: Graph, r: Node, found):
    x, k, eps, out, w = found
    w = w if w is not None else ones_scale(graph, x, k)
    node = graph.add_node("RMSNormalization", [x, w], {"axis": x.type.rank - k, "epsilon": eps},
                          before=out.producer, name=f"{r.name}_rmsnorm")
    return [(out, node.output)]


RULE = Rule("rmsnorm", ("ReduceMean",), _match, _rewrite)


def fuse_rmsnorm(graph: Graph) -> int:
    """Fuse the decomposed RMS normalization into one RMSNormalization op."""
    return apply_rule(graph, RULE).matched
