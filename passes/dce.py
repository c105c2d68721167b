"""``dce``: dead-code elimination (``ir/folding.eliminate_dead_code``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir.folding import eliminate_dead_code
from .base import Pass, PassResult, register_pass


@register_pass
@dataclass
class DeadCodeElimination(Pass):
    """Remove nodes none of whose outputs are used (graph outputs count as uses) and unused
    constants."""

    name: ClassVar[str] = "dce"

    def run(self, graph, ctx) -> PassResult:
        nodes, consts = len(graph.nodes), len(graph.constants)
        changed = eliminate_dead_code(graph)
        return PassResult(changed, {"removed_nodes": nodes - len(graph.nodes),
                                    "removed_constants": consts - len(graph.constants)})
