"""``fold-shapes``: shape computations (``Shape → Gather → Unsqueeze → Concat → Reshape``) into
constants where the shapes are known (``ir/folding.py``; symbolic contents tracked by type
inference)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from ..ir.folding import eliminate_dead_code, fold_shape_node
from .base import Pass, PassResult, register_pass


@register_pass
@dataclass
class FoldShapes(Pass):
    """Fold shape-computation chains: integer values whose contents are statically known become
    constants; Reshape/Expand targets with symbolic dims become constants (0/-1 for Reshape, 1
    for Expand) where exact; removes what that leaves dead."""

    name: ClassVar[str] = "fold-shapes"

    def run(self, graph, ctx) -> PassResult:
        counts: Counter = Counter()
        for node in list(graph.nodes):
            if node in graph.nodes:
                what = fold_shape_node(graph, node)
                if what:
                    counts[what] += 1
        removed = len(graph.nodes)
        if counts:
            eliminate_dead_code(graph)
        removed -= len(graph.nodes)
        report = {"values_folded": counts["value"], "reshape_targets": counts["reshape"],
                  "expand_targets": counts["expand"], "removed": removed}
        return PassResult(bool(counts), report)
