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

from optc.ir.graph import Graph

from ._match import (affine, cleanup, const_axes, is_scalar, normalized, ones_scale, operands, producer, reduce_mean_of,
                     replace, same, scalar, strip, users)


def fuse_layernorm(graph: Graph) -> int:
    """Fuse the decomposed layer normalization into one LayerNormalization op."""
    count, renames = 0, []
    for r in list(graph.nodes):
        if r.op != "ReduceMean" or r not in graph.nodes:
            continue
        k = reduce_mean_of(r)
        x = strip(r.input(0))
        if k is None or not x.dtype.is_float or x.type.rank is None:
            continue
        done = False
        for sub in users(r.output, "Sub"):
            if done or not (same(sub.input(0), x) and same(sub.input(1), r.output)):
                continue
            d = sub.output
            for sq in users(d, "Pow", "Mul"):
                if sq.op == "Pow" and not is_scalar(sq.input(1), 2.0):
                    continue
                if sq.op == "Mul" and not (same(sq.input(0), d) and same(sq.input(1), d)):
                    continue
                for r2 in users(sq.output, "ReduceMean"):
                    if reduce_mean_of(r2) != k or sorted(a % x.type.rank for a in const_axes(r2)) != sorted(
                            a % x.type.rank for a in const_axes(r)):
                        continue
                    for add in users(r2.output, "Add"):
                        eps = next((scalar(o) for t, o in operands(add) if same(t, r2.output) and scalar(o) is not None), None)
                        n = None if eps is None else normalized(add.output, d)
                        if n is None:
                            continue
                        out, w, b = affine(n, x, k, with_bias=True)
                        if w is None:
                            w = ones_scale(graph, x, k)
                            if w is None:
                                continue
                        node = graph.add_node("LayerNormalization", [x, w, b], {"axis": x.type.rank - k, "epsilon": eps},
                                              before=out.producer, name=f"{r.name}_layernorm")
                        replace(out, node.output, renames)
                        count += 1
                        done = True
                        break
                    if done:
                        break
                if done:
                    break
    return cleanup(graph, count, renames)
