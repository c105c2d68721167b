"""LayerNorm from its decomposed form → ``LayerNormalization(x, w, b)``:
``d = x - mean(x); y = d / sqrt(mean(d**2) + eps) * w + b`` over trailing axes.

Pattern: anchored at ``ReduceMean(x)`` (keepdims, trailing axes), ``Sub(x, mean)``, the variance
``ReduceMean(Pow(d, 2) | d * d)`` over the same axes, ``+ eps``, the inverse square root in any
spelling (``/ Sqrt``, ``* Reciprocal(Sqrt)``, ``* (1 / Sqrt)``, ``* Pow(-0.5)``), then optional
``* w`` and ``+ b`` (either operand order). Check: constant scalar eps, same axes for both means,
``w``/``b`` broadcast over the normalized axes only. A graph already holding
``LayerNormalization`` has nothing to match.
"""

from __future__ import annotations

from optc.ir.graph import Graph, Node

from ._match import (affine, const_axes, epsilon_of, first, is_scalar, normalized, ones_scale, reduce_mean_of, same,
                     static_tail, strip, users)
from ._rewriter import Rule, apply_rule, require


def _is_square(sq: Node, d) -> bool:
    return (is_scalar(sq.input(1), 2.0) if sq.op == "Pow" else same(sq.input(0), d) and same(sq.input(1), d))


def _match(r: Node):
    k = reduce_mean_of(r)
    require(k is not None, "not a mean over trailing axes that keeps its dims")
    x = strip(r.input(0))
    require(x.dtype.is_float and x.type.rank is not None, "the mean's input is not a float tensor of known rank")
    axes = sorted(a % x.type.rank for a in const_axes(r))
    deviations = [s.output for s in users(r.output, "Sub") if same(s.input(0), x) and same(s.input(1), r.output)]
    require(bool(deviations), "the mean is not subtracted from its own input (x - mean(x))")
    variances = [(d, r2) for d in deviations for sq in users(d, "Pow", "Mul") if _is_square(sq, d)
                 for r2 in users(sq.output, "ReduceMean")
                 if reduce_mean_of(r2) == k and sorted(a % x.type.rank for a in const_axes(r2)) == axes]
    require(bool(variances), "no mean of the squared deviation over the same axes")
    normalized_values = [(eps, n) for d, r2 in variances for add in users(r2.output, "Add")
                         for eps in [epsilon_of(add, r2.output)] if eps is not None
                         for n in [normalized(add.output, d)] if n is not None]
    require(bool(normalized_values), "the deviation is not divided by sqrt(variance + constant eps)")
    found = first((eps, out, w, b) for eps, n in normalized_values for out, w, b in [affine(n, x, k, with_bias=True)]
                  if w is not None or static_tail(x, k))
    require(found is not None, "no scale, and the normalized dims are not static (for a ones scale)")
    eps, out, w, b = found
    return x, k, eps, out, w, b


def _rewrite(graph: Graph, r: Node, found):
    x, k, eps, out, w, b = found
    w = w if w is not None else ones_scale(graph, x, k)
    node = graph.add_node("LayerNormalization", [x, w, b], {"axis": x.type.rank - k, "epsilon": eps},
                          before=out.producer, name=f"{r.name}_layernorm")
    return [(out, node.output)]


RULE = Rule("layernorm", ("ReduceMean",), _match, _rewrite)


def fuse_layernorm(graph: Graph) -> int:
    """Fuse the decomposed layer normalization into one LayerNormalization op."""
    return apply_rule(graph, RULE).matched
