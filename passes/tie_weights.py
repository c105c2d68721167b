"""``tie-weights``: one copy of a weight a model reads in two layouts (``ir/tying.py``: an
embedding table and the transposed copy a tied output head holds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir.tying import tie_transposed_weights
from .base import Pass, PassResult, register_pass


@register_pass
@dataclass
class TieWeights(Pass):
    """Let an embedding gather from the transposed copy of its table that a tied output head
    holds, so the model keeps one copy (see the module doc)."""

    name: ClassVar[str] = "tie-weights"

    def run(self, graph, ctx) -> PassResult:
        tied = tie_transposed_weights(graph)
        return PassResult(bool(tied), {"tied": [f"{e} -> {t}" for e, t in tied]})
