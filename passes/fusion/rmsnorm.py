"""RMSNorm: ``x * rsqrt(mean(x**2, trailing axes) + eps) * w`` → ``RMSNormalization(x, w)``.

Pattern: anchored at ``ReduceMean(x**2)`` (``Pow(x, 2)`` or ``x * x``, keepdims, trailing axes),
``+ eps``, then the inverse square root in any spelling (``Reciprocal(Sqrt)``, ``1 / Sqrt``,
``Pow(-0.5)``, or ``x / Sqrt``), ``x * inv`` in either order, then an optional ``* w`` (either order;
through same-type Casts as the TorchScript exporter writes them). Check: constant scalar eps,
``w`` broadcasts over the normalized axes only; without ``w`` the scale is a ones constant (needs
static normalized dims).
"""

from __future__ import annotations

from optc.ir.graph import Graph

from ._match import affine, cleanup, is_scalar, normalized, ones_scale, operands, producer, reduce_mean_of, replace, same, scalar, strip, users


def fuse_rmsnorm(graph: Graph) -> int:
    """Fuse the decomposed RMS normalization into one RMSNormalization op."""
    count, renames = 0, []
    for r in list(graph.nodes):
        if r.op != "ReduceMean" or r not in graph.nodes:
            continue
        k = reduce_mean_of(r)
        sq = producer(r.input(0), "Pow", "Mul")
        if k is None or sq is None:
            continue
        if sq.op == "Pow" and is_scalar(sq.input(1), 2.0):
            x = strip(sq.input(0))
        elif sq.op == "Mul" and same(sq.input(0), sq.input(1)):
            x = strip(sq.input(0))
        else:
            continue
        if not x.dtype.is_float or x.type.rank is None:
            continue
        for add in users(r.output, "Add"):
            eps = next((scalar(o) for t, o in operands(add) if same(t, r.output) and scalar(o) is not None), None)
            if eps is None:
                continue
            n = normalized(add.output, x)
            if n is None:
                continue
            out, w, _ = affine(n, x, k, with_bias=False)
            if w is None:
                w = ones_scale(graph, x, k)
                if w is None:
                    continue
            node = graph.add_node("RMSNormalization", [x, w], {"axis": x.type.rank - k, "epsilon": eps},
                                  before=out.producer, name=f"{r.name}_rmsnorm")
            replace(out, node.output, renames)
            count += 1
            break
    return cleanup(graph, count, renames)
