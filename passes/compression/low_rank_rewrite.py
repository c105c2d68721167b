"""The graph rewrite of low-rank substitution: a projection by ``W`` becomes two skinny
projections by ``A [in, r]`` and ``B [r, out]``, in the projection's own spelling:

    Linear(x, W, b){act}      ->  Linear(MatMul(x, A), B, b){act}
    MatMul(x, W) (+ Add b)    ->  MatMul(MatMul(x, A), B) (+ Add b)
    Gemm(x, W, C){transB}     ->  Gemm(MatMul(x, A), B, C){transB}   (alpha folded into A·B)

so the bias and the activation stay where codegen fuses them (the epilogue of the second
matmul). The factors are named after the weight: ``<w>.lr_a``, ``<w>.lr_b``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ...ir.graph import Graph
from .projections import Projection, find_projections


def factor_projection(graph: Graph, proj: Projection, a: np.ndarray, b: np.ndarray) -> None:
    """Rewrite one projection through factors ``a [in, r]``, ``b [r, out]`` (cast to the weight's
    dtype). Types downstream are stale until ``graph.infer_types()``."""
    node, w = proj.node, proj.weight
    dtype = w.const.dtype
    a_val = graph.add_constant(np.ascontiguousarray(a.astype(dtype)), graph.unique_name(f"{w.name}.lr_a"))
    b_arr = b.T if proj.transposed else b
    b_val = graph.add_constant(np.ascontiguousarray(b_arr.astype(dtype)), graph.unique_name(f"{w.name}.lr_b"))
    inner = graph.add_node("MatMul", [proj.input, a_val], name=f"{node.name}.lr", before=node,
                           output_names=[graph.unique_name(f"{w.name}.lr")])
    node.set_input(0, inner.output)
    node.set_input(1, b_val)
    if node.op == "Gemm":
        node.attrs = {**node.attrs, "alpha": 1.0}  # matrix() folded alpha into the factors
    if not w.uses and w not in graph.outputs:
        graph.remove_constant(w)


def apply_factors(graph: Graph, factors: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """Factor every projection whose weight is named in ``factors``; returns the names done (in
    graph order) and re-runs type inference."""
    done = []
    for proj in find_projections(graph):
        if proj.name in factors:
            a, b = factors[proj.name]
            factor_projection(graph, proj, a, b)
            done.append(proj.name)
    if done:
        graph.infer_types()
    return done
